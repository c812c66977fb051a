"""kiln's deployable runtime: load a compiled artifact and run it.

Needs only numpy and apache-tvm-ffi (plus the libtvm_runtime.so that each artifact carries);
never the compiler, never ``tvm``. Names load lazily, so ``import kiln.runtime`` is cheap and
tvm_ffi is imported by the first ``load``.

    model = kiln.runtime.load("mlp.kiln")
    (y,) = model.run({"x": x})
"""

from __future__ import annotations

import importlib

# public name -> module that defines it
_LAZY = {
    "load": "kiln.runtime.loader",
    "Model": "kiln.runtime.executor",
    "TensorInfo": "kiln.runtime.executor",
    "KernelProfile": "kiln.runtime.executor",
    "write_artifact": "kiln.runtime.writer",
    "pack": "kiln.runtime.writer",
    "copy_artifact": "kiln.runtime.writer",
    "plan_memory": "kiln.runtime.planner",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'kiln.runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
