"""The CPU target: host detection, a portable choice, and the TVM target they stand for.

LLVM's own host detection is unreliable on virtual machines (it takes this AMD EPYC KVM guest
for a Rocket Lake, and ``mcpu=native`` falls back to a generic CPU), so kiln reads the CPU flags
from ``/proc/cpuinfo`` and picks ``mcpu`` itself. Measured on the 2-core AVX-512 CI machine
(fp32 GEMM 1024^3, kiln's schedule, 1 thread): znver4 237, sapphirerapids 236, x86-64-v4 235,
skylake-avx512 232 GFLOP/s: the explicitly vectorized kernels do not care. Code that LLVM
vectorizes by itself (elementwise tails, fast_exp) was 1.6x faster with 512-bit vectors, which
``skylake-avx512``/``x86-64-v4`` avoid unless ``-prefer-256-bit`` is switched off: every AVX-512
choice below carries ``mattr: ["-prefer-256-bit"]``.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from kiln.errors import KilnError

# CPU features each mcpu lets LLVM use, as /proc/cpuinfo spells them (what an artifact needs).
_V2 = ("sse4_1", "sse4_2", "ssse3", "popcnt", "cx16")
_V3 = _V2 + ("avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "movbe", "abm")
_V4 = _V3 + ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")
_ZEN4 = _V4 + (
    "avx512ifma", "avx512vbmi", "avx512_vbmi2", "avx512_vnni", "avx512_bitalg",
    "avx512_vpopcntdq", "avx512_bf16", "gfni", "vaes", "vpclmulqdq",
)
_SPR = _ZEN4 + ("avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")

MCPU_FEATURES: dict[str, tuple[str, ...]] = {
    "x86-64": (),
    "x86-64-v2": _V2,
    "x86-64-v3": _V3,
    "haswell": _V3,
    "x86-64-v4": _V4,
    "skylake-avx512": _V4,
    "znver4": _ZEN4,
    "znver5": _ZEN4,
    "sapphirerapids": _SPR,
}

# Vector register width (bits) each mcpu gives kiln's explicit vectorization.
_VECTOR_BITS = {"x86-64": 128, "x86-64-v2": 128, "x86-64-v3": 256, "haswell": 256}


@dataclass(frozen=True)
class CpuTarget:
    """A CPU code-generation target: what TVM gets, and what the code needs from the CPU.
    Its schedules are ``kiln/codegen/schedules/cpu``; every pass applies (NCHWc layout
    tuning included)."""

    kind: ClassVar[str] = "cpu"

    mcpu: str = ""
    mattr: tuple[str, ...] = ()
    num_cores: int = 1
    features: tuple[str, ...] = ()
    vector_bits: int = 128
    mtriple: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The dict form TVM's Target accepts, and the manifest's ``target``."""
        out: dict[str, Any] = {"kind": "llvm"}
        if self.mtriple:
            out["mtriple"] = self.mtriple
        if self.mcpu:
            out["mcpu"] = self.mcpu
        if self.mattr:
            out["mattr"] = list(self.mattr)
        out["num-cores"] = self.num_cores
        out.update(self.extra)
        return out

    def tvm_target(self):
        """The ``tvm.target.Target`` for ``tvm.compile``; a KilnError for a CPU LLVM does not
        know (LLVM would only warn and compile for a generic CPU) or a target TVM refuses."""
        import tvm
        from tvm.target import codegen

        triple = self.mtriple or codegen.llvm_get_system_triple()
        if self.mcpu and not codegen.llvm_is_valid_cpu(self.mcpu, triple):
            raise KilnError(f"LLVM knows no CPU {self.mcpu!r} for {triple}: use one of "
                            f"{', '.join(MCPU_FEATURES)} or another CPU name LLVM knows "
                            "(llc -mcpu=help lists them)")
        try:
            return tvm.target.Target(self.to_dict())
        except Exception as e:  # noqa: BLE001  (TVM's errors for a malformed target)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise KilnError(f"TVM refuses the target {self.to_dict()}: {first}") from None

    def uses_pass(self, name: str) -> bool:
        """Every pass applies on the CPU."""
        return True

    def slow_precision(self, dtype: str) -> str | None:
        """bfloat16 needs AVX512-BF16 (a dot product of bf16 pairs into float32); float16 has
        no instruction that multiplies it into a float32 sum on any x86 CPU (AVX512-FP16
        accumulates in float16), so kiln's float16 kernels only convert: never faster."""
        if dtype == "bfloat16":
            return None if "avx512_bf16" in self.features else (
                f"this CPU target ({self.mcpu or 'generic'}) has no AVX512-BF16 "
                "(vdpbf16ps), so bfloat16 kernels would convert to float32 and be slower")
        if dtype == "float16":
            return ("x86 CPUs have no float16 dot product that accumulates in float32 "
                    "(AVX512-FP16 sums in float16), so float16 kernels would only convert "
                    "to float32 and be slower")
        return None

    def lanes(self, dtype: str = "float32") -> int:
        """Elements of ``dtype`` per vector register; float16/bfloat16 as float32, which
        they compute in (TVM widens them), so that vectors do not straddle channel blocks
        of a multiple of 16 (a bf16 epilogue of 144 channels ran 3x slower in 32 lanes)."""
        bits = {"float64": 64, "int64": 64, "int8": 8, "uint8": 8, "bool": 8}.get(dtype, 32)
        return max(1, self.vector_bits // bits)


def cpu_flags(cpuinfo: str | None = None) -> tuple[str, set[str]]:
    """(vendor_id, flags) of the first processor in /proc/cpuinfo (empty when unreadable)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return "", set()
    vendor, flags = "", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return vendor, flags


def _num_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _x86(mcpu: str, num_cores: int) -> CpuTarget:
    bits = _VECTOR_BITS.get(mcpu, 512)
    mattr = ("-prefer-256-bit",) if bits == 512 else ()
    return CpuTarget(mcpu, mattr, num_cores, MCPU_FEATURES[mcpu], bits)


def host_target(cpuinfo: str | None = None, num_cores: int | None = None) -> CpuTarget:
    """The best target for this machine, chosen from its /proc/cpuinfo flags."""
    cores = num_cores or _num_cores()
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        # Not measured yet: LLVM's defaults for the host triple, 128-bit vectors.
        return CpuTarget(num_cores=cores, vector_bits=128)
    vendor, flags = cpu_flags(cpuinfo)
    if vendor == "AuthenticAMD":
        candidates = ("znver4", "x86-64-v4", "x86-64-v3", "x86-64-v2")
    elif vendor == "GenuineIntel":
        candidates = ("sapphirerapids", "x86-64-v4", "x86-64-v3", "x86-64-v2")
    else:
        candidates = ("x86-64-v4", "x86-64-v3", "x86-64-v2")
    for mcpu in candidates:
        if set(MCPU_FEATURES[mcpu]) <= flags:
            return _x86(mcpu, cores)
    return _x86("x86-64", cores)


def portable_target(level: str = "x86-64-v3", num_cores: int | None = None) -> CpuTarget:
    """A target for any x86-64 CPU of ``level`` (v2, v3 = AVX2 + FMA, v4 = AVX-512)."""
    if level not in ("x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4"):
        raise KilnError(f"unknown portable level {level!r}; use x86-64, x86-64-v2/v3/v4")
    return _x86(level, num_cores or _num_cores())


def host_arch() -> str:
    """This machine's architecture as target triples spell it (x86_64, aarch64, ...)."""
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def check_triple(triple: str) -> None:
    """A KilnError unless kiln can build for ``triple``: this machine's architecture on
    Linux. An artifact's kernels are linked by this machine's C compiler and loaded by kiln's
    runtime, so kiln does not cross-compile to other architectures or systems."""
    parts = triple.split("-")
    if len(parts) < 2 or not all(re.fullmatch(r"[A-Za-z0-9_.]+", p) for p in parts):
        raise KilnError(f"{triple!r} is not a target triple (ARCH-VENDOR-OS[-ENV], such as "
                        f"{host_arch()}-pc-linux-gnu)")
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(parts[0].lower(), parts[0].lower())
    if arch != host_arch() or "linux" not in (p.lower() for p in parts[1:]):
        raise KilnError(
            f"target triple {triple!r} is not supported: kiln builds for the machine it runs "
            f"on, {host_arch()} Linux (a triple such as {host_arch()}-pc-linux-gnu, or none); "
            "its kernels are linked by this machine's C compiler and loaded by kiln's "
            "runtime, so there is no cross-compilation to other architectures or systems")


def _option(d: dict, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = d.pop(key, default)
    if not isinstance(value, kind) or isinstance(value, bool):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        raise KilnError(f"target option {key!r} must be a {' or '.join(k.__name__ for k in kinds)}"
                        f", got {value!r}")
    return value


def cpu_target_of(spec: Mapping[str, Any]) -> CpuTarget:
    """A CpuTarget from TVM's dict form ``{"kind": "llvm", "mcpu": ..., "mattr": [...],
    "num-cores": n, "mtriple": ...}`` (other keys are passed on to TVM)."""
    d = dict(spec)
    d.pop("kind", None)
    mcpu = _option(d, "mcpu", str, "")
    mattr = tuple(_option(d, "mattr", (list, tuple), ()))
    if not all(isinstance(a, str) and a[:1] in ("+", "-") and len(a) > 1 for a in mattr):
        raise KilnError(f"target option 'mattr' must list features as '+name' or '-name', "
                        f"got {list(mattr)}")
    cores = _option(d, "num-cores", int, _num_cores())
    if cores < 1:
        raise KilnError(f"target option 'num-cores' must be at least 1, got {cores}")
    mtriple = _option(d, "mtriple", str, "")
    if mtriple:
        check_triple(mtriple)
    d.pop("keys", None), d.pop("tag", None)
    feats = MCPU_FEATURES.get(mcpu, ())
    bits = _VECTOR_BITS.get(mcpu, 512 if "avx512f" in feats else 128)
    return CpuTarget(mcpu, mattr, cores, feats, bits, mtriple, d)
