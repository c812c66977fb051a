"""kiln: a neural-network compiler.

The public API is small and loaded lazily, so that ``import kiln.runtime`` (the deployable
part) never pulls in the compiler, TVM or the frontends. ``pip install kiln`` installs the
runtime alone (numpy, apache-tvm-ffi); ``pip install "kiln[compiler]"`` adds the compiler's
dependencies (apache-tvm, onnx, networkx). Without them, the names that need them raise a
KilnError saying how to install them.
"""

from __future__ import annotations

import importlib
import importlib.util

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
    "ops": ("kiln.ops", None),
    "grad": ("kiln.passes.autodiff", "grad"),
    "compile": ("kiln.codegen.api", "compile"),
    "load": ("kiln.runtime", "load"),
    "optimize": ("kiln.codegen.api", "optimize"),
    "Trainer": ("kiln.train", "Trainer"),
    "make_train_step": ("kiln.train", "make_train_step"),
    "nn": ("kiln.nn", None),
    "from_onnx": ("kiln.frontend.onnx.importer", "from_onnx"),
    "to_onnx": ("kiln.frontend.onnx.exporter", "to_onnx"),
    "compare": ("kiln.debug", "compare"),
    "bisect": ("kiln.debug", "bisect"),
    # PyTorch's module-level functions and dtypes, so that ``import kiln as torch`` runs
    # model code as written (``torch.flatten(x, 1)``, ``torch.float32``)
    "abs": ("kiln.frontend.torch_api", "abs"),
    "arange": ("kiln.frontend.torch_api", "arange"),
    "bfloat16": ("kiln.frontend.torch_api", "bfloat16"),
    "bool": ("kiln.frontend.torch_api", "bool"),
    "cat": ("kiln.frontend.torch_api", "cat"),
    "chunk": ("kiln.frontend.torch_api", "chunk"),
    "clamp": ("kiln.frontend.torch_api", "clamp"),
    "cos": ("kiln.frontend.torch_api", "cos"),
    "double": ("kiln.frontend.torch_api", "double"),
    "exp": ("kiln.frontend.torch_api", "exp"),
    "flatten": ("kiln.frontend.torch_api", "flatten"),
    "float": ("kiln.frontend.torch_api", "float"),
    "float16": ("kiln.frontend.torch_api", "float16"),
    "float32": ("kiln.frontend.torch_api", "float32"),
    "float64": ("kiln.frontend.torch_api", "float64"),
    "half": ("kiln.frontend.torch_api", "half"),
    "int": ("kiln.frontend.torch_api", "int"),
    "int32": ("kiln.frontend.torch_api", "int32"),
    "int64": ("kiln.frontend.torch_api", "int64"),
    "int8": ("kiln.frontend.torch_api", "int8"),
    "log": ("kiln.frontend.torch_api", "log"),
    "long": ("kiln.frontend.torch_api", "long"),
    "matmul": ("kiln.frontend.torch_api", "matmul"),
    "ones": ("kiln.frontend.torch_api", "ones"),
    "relu": ("kiln.frontend.torch_api", "relu"),
    "reshape": ("kiln.frontend.torch_api", "reshape"),
    "rsqrt": ("kiln.frontend.torch_api", "rsqrt"),
    "sigmoid": ("kiln.frontend.torch_api", "sigmoid"),
    "sin": ("kiln.frontend.torch_api", "sin"),
    "softmax": ("kiln.frontend.torch_api", "softmax"),
    "split": ("kiln.frontend.torch_api", "split"),
    "sqrt": ("kiln.frontend.torch_api", "sqrt"),
    "squeeze": ("kiln.frontend.torch_api", "squeeze"),
    "stack": ("kiln.frontend.torch_api", "stack"),
    "tanh": ("kiln.frontend.torch_api", "tanh"),
    "transpose": ("kiln.frontend.torch_api", "transpose"),
    "uint8": ("kiln.frontend.torch_api", "uint8"),
    "unsqueeze": ("kiln.frontend.torch_api", "unsqueeze"),
    "where": ("kiln.frontend.torch_api", "where"),
    "zeros": ("kiln.frontend.torch_api", "zeros"),
}

# what `pip install "kiln[compiler]"` adds to the runtime: import name -> distribution
COMPILER_DEPENDENCIES = {"tvm": "apache-tvm", "onnx": "onnx", "networkx": "networkx"}
COMPILER_INSTALL = 'pip install "kiln[compiler]"'
# public names that cannot work without one of them (checked before they load: kiln.compile
# would otherwise fail only after tracing and optimizing, deep inside the build)
_NEEDS = {"compile": "tvm", "from_onnx": "onnx", "to_onnx": "onnx", "compare": "tvm",
          "bisect": "tvm"}


def compiler_not_installed(what: str, module: str):
    """The KilnError for ``what`` (e.g. "kiln.compile") needing ``module``, a compiler
    dependency that is not installed."""
    from kiln.errors import KilnError

    return KilnError(
        f"the compiler is not installed: {what} needs {COMPILER_DEPENDENCIES[module]}; "
        f"{COMPILER_INSTALL} (this install is the runtime alone: kiln.runtime.load runs "
        f"compiled artifacts)")


def compiler_error(error: BaseException, what: str):
    """``compiler_not_installed`` when ``error`` is a ModuleNotFoundError for a compiler
    dependency, else None (then the caller re-raises ``error``)."""
    if isinstance(error, ModuleNotFoundError):
        root = (error.name or "").partition(".")[0]
        if root in COMPILER_DEPENDENCIES:
            return compiler_not_installed(what, root)
    return None


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'kiln' has no attribute {name!r}")
    module, attr = _LAZY[name]
    need = _NEEDS.get(name)
    if need is not None and importlib.util.find_spec(need) is None:
        raise compiler_not_installed(f"kiln.{name}", need)
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        error = compiler_error(e, f"kiln.{name}")
        if error is None:
            raise
        raise error from e
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
