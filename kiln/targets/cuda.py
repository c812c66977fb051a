"""The CUDA target: NVIDIA GPUs, compiled on any machine (no GPU needed to build).

Kernels are CUDA C from TVM's code generator, compiled by ``nvcc`` into one fat binary with
machine code (SASS) for every architecture in ``archs`` and PTX for the newest, so a newer
GPU can still JIT it. The host side (argument checks, kernel launches) is LLVM code for this
machine's CPU, as on the CPU target. The NCHWc layout pass is a CPU choice and is skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from kiln.errors import KilnError

#: what ``"cuda"`` builds for: Ampere (A100) and Hopper (H100/H200)
DEFAULT_ARCHS = ("sm_80", "sm_90")
_ARCH = re.compile(r"sm_[1-9][0-9]+[a-z]?")
#: shared memory a block may use without opting in: 48 KiB on every architecture since sm_70
SHARED_MEMORY_BYTES = 48 * 1024


@dataclass(frozen=True)
class CudaTarget:
    """A CUDA code-generation target: the GPU architectures the fat binary holds code for
    and the most threads per block its schedules may use. Its schedules are
    ``kiln/codegen/schedules/gpu``."""

    kind: ClassVar[str] = "cuda"

    archs: tuple[str, ...] = DEFAULT_ARCHS
    max_threads_per_block: int = 1024
    num_cores: int = 1  # host-side work runs on one thread
    features: tuple[str, ...] = ()  # nothing asked of the host CPU beyond x86-64

    def __post_init__(self) -> None:
        if not self.archs or not all(isinstance(a, str) and _ARCH.fullmatch(a)
                                     for a in self.archs):
            raise KilnError(f"CUDA architectures must be names like 'sm_80', 'sm_90', got "
                            f"{list(self.archs)!r}")
        if min(int(re.sub(r"\D", "", a)) for a in self.archs) < 70:
            raise KilnError(f"CUDA architectures before sm_70 are not supported (nvcc 13 "
                            f"dropped them), got {list(self.archs)!r}")

    @property
    def arch(self) -> str:
        """The oldest architecture listed: TVM generates code that each of them can run."""
        return min(self.archs, key=_arch_number)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``target``: kind, the architectures, the block size limit."""
        return {"kind": "cuda", "arch": self.arch, "archs": list(self.archs),
                "max_threads_per_block": self.max_threads_per_block}

    def tvm_target(self):
        """TVM's cuda target (code for the oldest architecture, so every GPU listed can run
        it) with this machine's CPU as the host."""
        import tvm

        from kiln.targets.cpu import host_target

        host = host_target(num_cores=1).to_dict()
        try:
            return tvm.target.Target({"kind": "cuda", "arch": self.arch,
                                      "max_num_threads": self.max_threads_per_block,
                                      "max_shared_memory_per_block": SHARED_MEMORY_BYTES,
                                      "host": host})
        except Exception as e:  # noqa: BLE001  (TVM's errors for a malformed target)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise KilnError(f"TVM refuses the target {self.to_dict()}: {first}") from None

    def uses_pass(self, name: str) -> bool:
        """Every pass but the NCHWc layout (a CPU cache-blocking choice)."""
        return name != "layout"

    def slow_precision(self, dtype: str) -> str | None:
        """sm_80 and later multiply bf16 and fp16 at least as fast as float32."""
        return None

    def lanes(self, dtype: str = "float32") -> int:
        """One element per thread: GPU kernels are not vectorized by lanes."""
        return 1


def _arch_number(arch: str) -> int:
    return int(re.sub(r"\D", "", arch))


def cuda_target_of(spec: Mapping[str, Any]) -> CudaTarget:
    """A CudaTarget from a dict ``{"kind": "cuda", "arch": "sm_90"}`` (``"arch":
    "sm_80,sm_90"`` or ``"archs": [...]`` for several; ``resolve_target`` makes this dict of
    the text form ``"cuda -arch=sm_90"``)."""
    d = dict(spec)
    d.pop("kind", None)
    archs: Any = d.pop("archs", None)
    arch = d.pop("arch", None)
    if archs is None:
        archs = DEFAULT_ARCHS if arch is None else arch
    if isinstance(archs, str):
        archs = [a.strip() for a in archs.split(",") if a.strip()]
    if not isinstance(archs, (list, tuple)):
        raise KilnError(f"target option 'archs' must list architectures, got {archs!r}")
    threads = d.pop("max_threads_per_block", d.pop("max_num_threads", 1024))
    try:
        threads = int(threads)
    except (TypeError, ValueError):
        raise KilnError(f"target option 'max_threads_per_block' must be a number, got "
                        f"{threads!r}") from None
    if not 32 <= threads <= 1024:
        raise KilnError(f"target option 'max_threads_per_block' must be 32..1024, got {threads}")
    d.pop("host", None), d.pop("keys", None), d.pop("tag", None)
    if d:
        raise KilnError(f"unknown CUDA target options {sorted(d)}: kiln takes 'arch' (or "
                        "'archs') and 'max_threads_per_block'")
    return CudaTarget(tuple(dict.fromkeys(archs)), threads)
