"""Code-generation targets: what each decides, and how a user names one.

A target is a plug-in. It tells the passes which of them apply (``uses_pass``: NCHWc layout
tuning is a CPU choice), tells code generation its vector width (``lanes``) and, through its
``kind``, which schedule strategies lower each op (``kiln/codegen/schedules/<kind>``), and
gives TVM its target (``tvm_target``) and the manifest its description (``to_dict``).
``CpuTarget`` (``kiln/targets/cpu.py``) and ``CudaTarget`` (``kiln/targets/cuda.py``) are
the two kiln has. This package imports
nothing of kiln but its errors, and TVM only when ``tvm_target`` is called.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Protocol, runtime_checkable

from kiln.errors import KilnError
from kiln.targets.cpu import (
    MCPU_FEATURES,
    CpuTarget,
    cpu_flags,
    cpu_target_of,
    host_target,
    portable_target,
)
from kiln.targets.cuda import CudaTarget, cuda_target_of

__all__ = ["MCPU_FEATURES", "CpuTarget", "CudaTarget", "Target", "cpu_flags", "host_target",
           "portable_target", "resolve_target"]


@runtime_checkable
class Target(Protocol):
    """What the passes and code generation ask of a target."""

    kind: str  # names the schedule strategy set: "cpu" or "cuda"
    num_cores: int
    features: tuple[str, ...]  # what the generated code needs from the machine

    def uses_pass(self, name: str) -> bool:
        """Does pass ``name`` apply when compiling for this target?"""
        ...

    def lanes(self, dtype: str = "float32") -> int:
        """Elements of ``dtype`` per vector register."""
        ...

    def slow_precision(self, dtype: str) -> str | None:
        """Why ``dtype`` ("bfloat16", "float16") would be no faster than float32 here (None:
        it has fast instructions for it)."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """The dict form TVM's Target accepts; also the manifest's ``target``."""
        ...

    def tvm_target(self) -> Any:
        """The ``tvm.target.Target`` for ``tvm.compile``."""
        ...


def resolve_target(target: Any = None) -> Target:
    """A Target from what a user writes: None/"llvm"/"host" (this machine), "portable",
    "x86-64-v3"-style levels, a dict like ``{"kind": "llvm", "mcpu": "znver4"}`` (or that
    dict as JSON text), TVM's text form ``"llvm -mcpu=znver4 -num-cores=4"``, ``"cuda"``
    (``"cuda -arch=sm_90"``, ``{"kind": "cuda", "archs": ["sm_80", "sm_90"]}``), a
    ``tvm.target.Target``, or a Target."""
    if target is None or target in ("llvm", "host", "native"):
        return host_target()
    if isinstance(target, str) and target.lstrip().startswith("{"):
        return resolve_target(_json_target(target))
    if isinstance(target, str) and target.split()[:1] == ["cuda"]:
        return cuda_target_of(_text_target(target))
    if isinstance(target, str) and " " in target.strip() and target.split()[0] == "llvm":
        return resolve_target(_text_target(target))
    if isinstance(target, Target) and not isinstance(target, (str, Mapping)):
        return target
    if target == "portable":
        return portable_target()
    if hasattr(target, "export") and not isinstance(target, Mapping):  # a tvm.target.Target
        spec = dict(target.export())
        if spec.get("kind") == "cuda":  # TVM lists every device attribute: keep the arch
            spec = {"kind": "cuda", "arch": spec.get("arch", "sm_80")}
        return resolve_target(spec)
    if isinstance(target, str) and target.startswith("x86-64"):
        return portable_target(target)
    if isinstance(target, Mapping):
        if target.get("kind") == "cuda":
            return cuda_target_of(target)
        if target.get("kind", "llvm") != "llvm":
            raise KilnError(f"codegen supports llvm (CPU) and cuda targets, got {target!r}")
        return cpu_target_of(target)
    raise KilnError(
        f"cannot make a target of {target!r}: use 'llvm' (this machine), 'portable', "
        "'x86-64-v3'-style levels, 'llvm -mcpu=NAME', 'cuda' ('cuda -arch=sm_90'), or a dict "
        "like {'kind': 'llvm', 'mcpu': 'znver4'}"
    )


def _json_target(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise KilnError(f"target {text!r} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise KilnError(f"a JSON target must be an object, got {text!r}")
    return value


def _text_target(text: str) -> dict:
    """TVM's text form 'llvm -mcpu=znver4 -mattr=+avx2,+fma -num-cores=4' (or 'cuda
    -arch=sm_90') as the dict."""
    kind, *options = text.split()
    out: dict[str, Any] = {"kind": kind}
    for option in options:
        key, eq, value = option.lstrip("-").partition("=")
        if not option.startswith("-") or not eq or not key:
            raise KilnError(f"target {text!r}: expected -KEY=VALUE options, got {option!r}")
        if key == "mattr":
            out[key] = value.split(",")
        elif key == "num-cores":
            if not value.isdigit():
                raise KilnError(f"target {text!r}: -num-cores takes a number, got {value!r}")
            out[key] = int(value)
        else:
            out[key] = value
    return out
