"""Kernels kiln writes in C, for instructions TVM 0.27 cannot emit (AVX512-BF16, AMX) or
does not select (AVX512-VNNI's vpdpbusd).

A TE builder calls one through an extern stage named after its C function (``NATIVES``);
the build finds those stages (``natives_of``), compiles the C files with the machine's C
compiler (``objects``: cached by content, beside the layout cache) and links them into the
kernel library with TVM's export. The kernels run on TVM's own thread pool
(``TVMBackendParallelLaunch``), like TVM's parallel loops. ``load_in_process`` makes them
callable from kernels run in this process without an export (``BuildResult.run``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable

from kiln.errors import KilnError

_HERE = Path(__file__).parent
#: C function a kernel calls -> (its source file, the compiler flags it needs)
NATIVES: dict[str, tuple[str, tuple[str, ...]]] = {
    "kiln_gemm_bf16": ("gemm_bf16.c", ("-mavx512f", "-mavx512bw", "-mavx512bf16",
                                       "-mamx-tile", "-mamx-bf16")),
    "kiln_gemm_u8s8": ("gemm_u8s8.c", ("-mavx512f", "-mavx512bw", "-mavx512vnni",
                                       "-mamx-tile", "-mamx-int8")),
}
_COMMON_FLAGS = ("-O3", "-fPIC", "-std=gnu11", "-Wall")


def natives_of(tensors: Iterable) -> set[str]:
    """The native functions the TE graph of ``tensors`` calls (its extern stages)."""
    from tvm import te

    found, seen, todo = set(), set(), [t.op for t in tensors]
    while todo:
        op = todo.pop()
        if op.__chandle__() in seen:  # (Python wrappers come and go; handles stay)
            continue
        seen.add(op.__chandle__())
        if isinstance(op, te.ExternOp) and op.name in NATIVES:
            found.add(op.name)
        todo.extend(t.op for t in op.input_tensors)
    return found


def _cache_dir() -> Path:
    root = os.environ.get("KILN_CACHE_DIR") or Path.home() / ".cache" / "kiln"
    return Path(root) / "native"


def _compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise KilnError("kiln's bfloat16 and int8 kernels are C: this machine needs a C "
                        "compiler (gcc 11 or later, or set CC); compile with precision='fp32' "
                        "(and, for a quantized model, disable='int8') otherwise")
    return cc


def _built(name: str, suffix: str, extra: tuple[str, ...]) -> Path:
    """The object (``.o``) or shared library (``.so``) of native function ``name``, built
    once per source, flags and compiler, and cached."""
    source, flags = NATIVES[name]
    cc = _compiler()
    text = (_HERE / source).read_bytes() + b"".join(
        h.read_bytes() for h in sorted(_HERE.glob("*.h")))  # (the headers it includes)
    args = (*_COMMON_FLAGS, *flags, *extra)
    key = hashlib.sha256(text + repr((cc, args)).encode()).hexdigest()[:20]
    path = _cache_dir() / f"{name}-{key}{suffix}"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        out = Path(tmp) / path.name
        run = subprocess.run([cc, *args, str(_HERE / source), "-o", str(out)],
                             capture_output=True, text=True)
        if run.returncode != 0:
            first = (run.stderr.strip().splitlines() or ["(no output)"])[0]
            raise KilnError(f"compiling kiln's native kernel {source} with {cc} failed (it "
                            f"needs gcc 11 or later for AMX, AVX512-BF16 and AVX512-VNNI): {first}")
        os.replace(out, path)  # atomic: a concurrent build sees the whole file or none
    return path


def objects(names: Iterable[str]) -> list[str]:
    """Object files to link into a kernel library that calls the natives ``names``."""
    return [str(_built(n, ".o", ("-c",))) for n in sorted(names)]


_loaded: dict[str, ctypes.CDLL] = {}


def load_in_process(names: Iterable[str]) -> None:
    """Load the natives ``names`` into this process with global symbols, so that TVM's JIT
    resolves a kernel's calls to them."""
    for n in names:
        if n not in _loaded:
            path = _built(n, ".so", ("-shared",))
            _loaded[n] = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
