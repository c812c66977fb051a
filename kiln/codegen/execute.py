"""Run a BuildResult's kernels in this process, with TVM's own (aligned) tensors.

This is the compiler's test harness and ``compile()``'s fallback, not the deployable runtime
(``kiln/runtime`` runs artifacts with numpy + tvm_ffi only). No memory planning: every value
gets its own buffer.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from kiln.ir.types import to_numpy_dtype
from kiln.runtime.executor import kernel_check_error


def run_in_process(result, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Call every kernel in order; returns fresh numpy arrays for the outputs."""
    env = _run(result, inputs)
    return [env[name].numpy().copy() for name in result.outputs]


def run_values(result, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Call every kernel in order; returns every value the kernels read or wrote (inputs,
    constants, intermediates, outputs) by name, as numpy arrays: a debug run, each value in
    a buffer of its own (``kiln.compare``)."""
    return {name: t.numpy().copy() for name, t in _run(result, inputs).items()}


def _run(result, inputs: Mapping[str, np.ndarray]) -> dict[str, object]:
    import tvm

    from kiln.codegen.build import check_inputs
    from kiln.ir.interpreter import resolve

    arrays, sizes = check_inputs(result, inputs)
    if result.natives:
        from kiln.codegen.native import load_in_process

        load_in_process(result.natives)
    dev = tvm.cpu()
    env: dict[str, object] = {}

    def tensor(name: str):
        if name not in env:
            if name in arrays:
                src = np.array(arrays[name], order="C")
            elif name in result.constants:
                src = np.array(result.constants[name], order="C")
            else:
                t = result.values[name]
                src = np.zeros(resolve(t, sizes), to_numpy_dtype(t.dtype))
            env[name] = tvm.runtime.tensor(src, dev)
        return env[name]

    for k in result.kernels:
        fn = result.executable[k.func]
        args = [tensor(a) for a in k.args]
        try:
            fn(*args, *(sizes[n] for n in k.sizes))
        except Exception as e:  # a kernel's input check: the InputError the runtime gives
            checked = kernel_check_error(e, k.sources, args[: len(args) - k.num_outputs])
            if checked is None:
                raise
            raise checked from e
    for name in result.outputs:
        tensor(name)
    return env
