"""Code generation: kiln Graph -> TVM TE -> scheduled TIR -> one compiled library.

``build`` lowers every node (a fused node being one group) to a PrimFunc, schedules it for the
target (a CPU, or a CUDA GPU) and compiles all of them with one ``tvm.compile``; ``compile``
also writes the artifact and loads it with the runtime (a GPU artifact: where it runs).
Imports TVM lazily, so ``import kiln.codegen`` is cheap.
"""

from __future__ import annotations

import importlib

from kiln.runtime.threads import set_thread_defaults

set_thread_defaults()  # before TVM's thread pool starts (kernels run at compile time too)

_LAZY = {
    "build": "kiln.codegen.build",
    "export": "kiln.codegen.build",
    "BuildResult": "kiln.codegen.build",
    "KernelCall": "kiln.codegen.build",
    "compile": "kiln.codegen.api",
    "optimize": "kiln.codegen.api",
    "pass_context": "kiln.codegen.layout_tuning",
    "CompiledModel": "kiln.codegen.api",
    "write": "kiln.codegen.api",
    "host_target": "kiln.targets",
    "portable_target": "kiln.targets",
    "CpuTarget": "kiln.targets",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'kiln.codegen' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
