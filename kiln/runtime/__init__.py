"""kiln's deployable runtime: load a compiled artifact and run it.

Needs only numpy and apache-tvm-ffi (plus the libtvm_runtime.so that each artifact carries);
never the compiler, never ``tvm``: ``pip install kiln`` installs exactly this (the compiler
is ``pip install "kiln[compiler]"``). Names load lazily, so ``import kiln.runtime`` is cheap
and tvm_ffi is imported by the first ``load``.

    model = kiln.runtime.load("mlp.kiln")
    (y,) = model.run({"x": x})
"""

from __future__ import annotations

import importlib
import os
import sys
import threading

# public name -> module that defines it
_LAZY = {
    "load": "kiln.runtime.loader",
    "Model": "kiln.runtime.executor",
    "GpuModel": "kiln.runtime.gpu",
    "TensorInfo": "kiln.runtime.executor",
    "KernelProfile": "kiln.runtime.executor",
    "write_artifact": "kiln.runtime.writer",
    "pack": "kiln.runtime.writer",
    "sign_artifact": "kiln.runtime.writer",
    "copy_artifact": "kiln.runtime.writer",
    "plan_memory": "kiln.runtime.planner",
}
# the modules above that import tvm_ffi
_NEED_TVM_FFI = {"kiln.runtime.loader", "kiln.runtime.executor"}

# KILN_RUNTIME_TORCH=1: let tvm_ffi import torch even when the runtime imports tvm_ffi first
TORCH_ENV = "KILN_RUNTIME_TORCH"

__all__ = sorted(_LAZY)

_import_lock = threading.Lock()


def import_tvm_ffi():
    """Import tvm_ffi for the runtime, without torch unless something already imported it.

    ``import tvm_ffi`` imports torch whenever torch is installed (1-3 s, more than all the
    rest of ``import kiln.runtime`` + ``load``), for its torch dtype, CUDA stream and DLPack
    helpers, and apache-tvm-ffi has no setting to skip that (0.1.14.post1 and its main
    branch). The runtime takes numpy arrays only. So when torch is not imported yet (then
    it costs nothing) and ``KILN_RUNTIME_TORCH=1`` is not set, torch is hidden while
    tvm_ffi imports, as if torch were not installed (a configuration tvm_ffi supports).
    torch itself stays importable, and torch tensors still pass to tvm_ffi functions,
    as fast (torch's own DLPack exchange API, torch >= 2.10); what this process's tvm_ffi
    then lacks is converting ``torch.dtype`` objects and ``tvm_ffi.use_torch_stream``.
    Import torch before kiln.runtime, or set ``KILN_RUNTIME_TORCH=1``, to keep them.
    (While tvm_ffi imports, about 0.1 s, another thread's ``import torch`` would fail.)
    """
    with _import_lock:
        if ("tvm_ffi" not in sys.modules and "torch" not in sys.modules
                and os.environ.get(TORCH_ENV) != "1"):
            sys.modules["torch"] = None  # `import torch` raises ImportError
            try:
                import tvm_ffi  # noqa: F401
            finally:
                if "torch" in sys.modules and sys.modules["torch"] is None:
                    del sys.modules["torch"]
    import tvm_ffi

    return tvm_ffi


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'kiln.runtime' has no attribute {name!r}")
    if _LAZY[name] in _NEED_TVM_FFI:
        import_tvm_ffi()
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
