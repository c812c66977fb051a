"""CUDA C -> one fat binary with nvcc, and what ptxas says about each kernel.

TVM 0.27's CUDA code generator keeps the kernels as CUDA C, which its runtime would compile
when the module is loaded (with NVRTC, on the GPU machine). kiln compiles them at build time
instead (``device_module``): ``nvcc --fatbin`` with SASS for every architecture of the target
and PTX for the newest (a newer GPU JITs it), ``-Xptxas -v`` to record each kernel's
registers, shared memory and spills. nvcc is found on PATH, in ``$CUDA_HOME/bin``, or from
PyPI's ``nvidia-cuda-nvcc``.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

from kiln.errors import KilnError

NVCC_SECONDS = 600

_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\w+)'")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def find_nvcc() -> str:
    """The nvcc to use, or a KilnError that says how to get one."""
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    try:  # PyPI's nvidia-cuda-nvcc
        import nvidia.cuda_nvcc as pkg  # type: ignore[import-not-found]

        for base in getattr(pkg, "__path__", []):
            if (Path(base) / "bin" / "nvcc").is_file():
                return str(Path(base) / "bin" / "nvcc")
    except ImportError:
        pass
    raise KilnError("compiling for CUDA needs nvcc, and none was found (PATH, $CUDA_HOME, "
                    "PyPI's nvidia-cuda-nvcc): install the CUDA toolkit or "
                    "`pip install nvidia-cuda-nvcc`")


def nvcc_command(nvcc: str, source: str, output: str, archs: tuple[str, ...]) -> list[str]:
    """The nvcc command line: SASS for each arch, PTX for the newest."""
    cmd = [nvcc, "--fatbin", "-O3", "-Xptxas", "-v", "-o", output, source]
    numbers = sorted({a[3:] for a in archs}, key=lambda s: int(re.sub(r"\D", "", s)))
    for n in numbers:
        cmd += ["-gencode", f"arch=compute_{n},code=sm_{n}"]
    cmd += ["-gencode", f"arch=compute_{numbers[-1]},code=compute_{numbers[-1]}"]
    return cmd


def parse_ptxas(text: str) -> dict[str, dict[str, dict[str, int]]]:
    """``{kernel: {arch: {"registers", "smem_bytes", "spill_bytes"}}}`` from ptxas -v."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    current: dict[str, int] | None = None
    for line in text.splitlines():
        entry = _ENTRY.search(line)
        if entry:
            current = out.setdefault(entry.group(1), {}).setdefault(
                entry.group(2), {"registers": 0, "smem_bytes": 0, "spill_bytes": 0})
            continue
        if current is None:
            continue
        used, smem, spill = _USED.search(line), _SMEM.search(line), _SPILL.search(line)
        if used:
            current["registers"] = int(used.group(1))
        if smem:
            current["smem_bytes"] = int(smem.group(1))
        if spill:
            current["spill_bytes"] = int(spill.group(1)) + int(spill.group(2))
    return out


def compile_fatbin(code: str, archs: tuple[str, ...]) -> tuple[bytes, dict]:
    """(fat binary, ptxas figures per kernel) of the CUDA C ``code``."""
    nvcc = find_nvcc()
    with tempfile.TemporaryDirectory(prefix="kiln-nvcc-") as tmp:
        source, output = os.path.join(tmp, "kernels.cu"), os.path.join(tmp, "kernels.fatbin")
        Path(source).write_text(code)
        try:
            done = subprocess.run(nvcc_command(nvcc, source, output, archs), capture_output=True,
                                  text=True, timeout=NVCC_SECONDS, check=False)
        except subprocess.TimeoutExpired:
            raise KilnError(f"nvcc took more than {NVCC_SECONDS} s on the kernels") from None
        if done.returncode != 0:
            errors = [ln for ln in done.stderr.splitlines() if "error" in ln.lower()]
            first = (errors or done.stderr.strip().splitlines() or ["no output"])[0]
            raise KilnError(f"nvcc could not compile the generated CUDA code: {first[:400]}")
        return Path(output).read_bytes(), parse_ptxas(done.stderr)


#: device functions the generated code may call: a failed input check (``ops/checks.py``)
#: calls ``kiln_trap_<dtype>()``, which aborts the kernel (the launch then fails);
#: ``kiln_keep(v)`` is ``v``, opaque to TVM's simplifier (``schedules/gpu``)
PRELUDE = "".join(
    f"__device__ __forceinline__ {t} kiln_keep({t} v) {{ return v; }}\n"
    for t in ("float", "double")) + "".join(
    f"__device__ __noinline__ {ctype} kiln_trap_{dtype}() {{ __trap(); return 0; }}\n"
    for dtype, ctype in (("int8", "signed char"), ("int16", "short"), ("int32", "int"),
                         ("int64", "long long"), ("uint8", "unsigned char"),
                         ("uint16", "unsigned short"), ("uint32", "unsigned int"),
                         ("uint64", "unsigned long long")))


#: TVM's LLVM code computes max(a, b) as ``a > b ? a : b`` (and min alike), and kiln's NaN
#: rules build on it: relu is max(0, x), which keeps a NaN x (docs/ops.md). CUDA's max and
#: min are fmaxf/fminf, which drop a NaN, so kernels get TVM's LLVM meaning instead. Put
#: after TVM's #includes (the headers use max and min themselves).
MIN_MAX = """
template <typename T> __device__ __forceinline__ T kiln_max(T a, T b) { return a > b ? a : b; }
template <typename T> __device__ __forceinline__ T kiln_min(T a, T b) { return a < b ? a : b; }
#define max kiln_max
#define min kiln_min
"""


def with_device_functions(source: str, first_code: str = 'extern "C"') -> str:
    """``source`` with ``PRELUDE`` on top and ``MIN_MAX`` just before its first kernel."""
    at = source.find(first_code)
    if at < 0:
        raise KilnError("the generated CUDA code declares no kernel (extern \"C\")")
    return PRELUDE + source[:at] + MIN_MAX + source[at:]


def _string(data: bytes) -> bytes:
    """A string as TVM's module serialization writes it: u64 length, then the bytes."""
    return struct.pack("<Q", len(data)) + data


def device_module(host, archs: tuple[str, ...]) -> tuple[bytes, str, dict]:
    """Compile the CUDA module that ``tvm.compile`` imported into ``host`` (its CUDA C, which
    TVM's runtime would otherwise compile when loaded, with NVRTC) into a fat binary, and
    detach it from ``host``, whose library then holds the host code alone.

    Returns (the device module as the runtime's ``ffi.Module.load_from_bytes.cuda`` reads it,
    the CUDA source, ptxas figures per kernel). That serialization is the format string, the
    function table, then the code; kiln keeps TVM's table and swaps the source for the
    binary (any format but "cuda" is loaded with cuModuleLoadData).
    """
    import numpy as np
    import tvm_ffi

    cuda = [m for m in host.imports if m.kind == "cuda"]
    if len(cuda) != 1:
        raise KilnError(f"TVM produced {len(cuda)} CUDA modules for a cuda target; kiln "
                        "expects one (TVM 0.27's CUDA code generator)")
    source = str(cuda[0].inspect_source(""))
    packed = np.from_dlpack(tvm_ffi.get_global_func("runtime.ModulePackImportsToTensor")(host))
    blob = packed.tobytes()
    head = _string(b"cuda")
    start = blob.find(head)
    payload = None
    while start != -1:  # the kind "cuda", the payload's length, the payload (fmt "cuda" first)
        at = start + len(head)
        (length,) = struct.unpack_from("<Q", blob, at)
        body = blob[at + 8: at + 8 + length]
        if body.startswith(head):
            payload = body
            break
        start = blob.find(head, start + 1)
    tail = _string(source.encode())
    if payload is None or not payload.endswith(tail):
        raise KilnError("TVM's serialized CUDA module is not laid out as kiln expects (format, "
                        "function table, source): this TVM version is not supported for cuda")
    table = payload[len(head): len(payload) - len(tail)]
    binary, ptxas = compile_fatbin(with_device_functions(source), archs)
    tvm_ffi.get_global_func("ffi.ModuleClearImports")(host)
    return _string(b"fatbin") + table + _string(binary), source, ptxas
