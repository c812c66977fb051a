"""kiln: a neural-network compiler.

The public API is small and loaded lazily, so that ``import kiln.runtime`` (the deployable
part) never pulls in the compiler, TVM or the frontends.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> (module, attribute)
_LAZY = {
    "KilnError": ("kiln.errors", "KilnError"),
    "TensorType": ("kiln.ir.types", "TensorType"),
    "Graph": ("kiln.ir.graph", "Graph"),
    "interpret": ("kiln.ir.interpreter", "interpret"),
    "verify": ("kiln.ir.verifier", "verify"),
    "TensorSpec": ("kiln.frontend.dsl", "TensorSpec"),
    "Tensor": ("kiln.frontend.dsl", "Tensor"),
    "trace": ("kiln.frontend.dsl", "trace"),
    "ops": ("kiln.frontend.ops", None),
    "grad": ("kiln.passes.autodiff", "grad"),
    "compile": ("kiln.codegen.api", "compile"),
    "load": ("kiln.runtime", "load"),
    "optimize": ("kiln.codegen.api", "optimize"),
    "Trainer": ("kiln.train", "Trainer"),
    "make_train_step": ("kiln.train", "make_train_step"),
    "nn": ("kiln.frontend.nn", None),
    "from_onnx": ("kiln.frontend.onnx.importer", "from_onnx"),
    "to_onnx": ("kiln.frontend.onnx.exporter", "to_onnx"),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'kiln' has no attribute {name!r}")
    module, attr = _LAZY[name]
    mod = importlib.import_module(module)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
