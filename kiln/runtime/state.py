"""State kept in a Model's own buffers from one run to the next: ``Model.bind_state``.

A training step maps (data, state) to (loss, next state). Binding output ``o`` to input ``i``
makes the runtime feed each run's ``o`` back as the next run's ``i`` without the caller seeing
either. Each bound pair gets two runtime-owned, 64-byte aligned buffers A and B: one run's
kernels read ``i`` from A and write ``o`` into B, the next run's read B and write A. The
kernels' argument lists for both parities are made once, at bind time, so a step costs no copy
of any state value and no allocation for it; the parity flips after each run. An output that
no kernel writes (an input or a constant passed through) is copied into its pair's next buffer
after the run, inside the runtime. ``Model.read_state`` copies a value out on request only.

This module is the mechanics; ``kiln.runtime.executor.Model`` holds the API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from kiln.errors import InputError
from kiln.runtime.executor import (
    TensorInfo,
    _with_slots,
    aligned_empty,
    numpy_dtype,
    tvm_tensor,
)

if TYPE_CHECKING:
    from kiln.runtime.executor import Model


class BoundState:
    """The bound pairs of one Model, their double buffers and the step's call lists."""

    def __init__(self, model: Model, pairs: Sequence[tuple[str, str]],
                 initial: Mapping[str, np.ndarray]) -> None:
        inputs = {s.name: s for s in model.inputs}
        outputs = {s.name: s for s in model.outputs}
        self.pairs = _check_pairs(pairs, inputs, outputs)
        self.model = model
        self.index = {i: k for k, (_, i) in enumerate(self.pairs)}  # input name -> pair
        self.index.update({o: k for k, (o, _) in enumerate(self.pairs) if o not in inputs})
        bound_in = {i: k for k, (_, i) in enumerate(self.pairs)}
        written = {o: k for k, (o, _) in enumerate(self.pairs) if o in model._written}
        # pairs whose output no kernel writes: (pair, how the runtime gets its value)
        self._copies = [(k, _source(o, model, bound_in)) for k, (o, _) in enumerate(self.pairs)
                        if o not in written]
        self.free_inputs = tuple(s for s in model.inputs if s.name not in bound_in)
        self._check_initial(initial, inputs)
        self.buffers = [(aligned_empty(inputs[i].shape, inputs[i].dtype),
                         aligned_empty(inputs[i].shape, inputs[i].dtype)) for _, i in self.pairs]
        for (a, b), (_, i) in zip(self.buffers, self.pairs):
            a[...] = initial[i]
            b[...] = 0
        self.parity = 0
        tensors = [tuple(tvm_tensor(x, inputs[i].dtype) for x in pair)
                   for pair, (_, i) in zip(self.buffers, self.pairs)]
        self._calls = tuple(self._bound_calls(model, tensors, bound_in, written, p)
                            for p in (0, 1))
        names = set(bound_in) | set(written)
        self._small = [(n, buf) for n, buf in model._small_inputs if n not in bound_in]
        self._slots = [(k, sig, is_input) for k, (sig, is_input) in enumerate(model._slots)
                       if sig.name not in names]
        bound_out = {o for o, _ in self.pairs}
        self.free_outputs = tuple(s for s in model.outputs if s.name not in bound_out)
        self._collect = [_source(s.name, model, bound_in, written) for s in self.free_outputs]

    def _check_initial(self, initial: Mapping[str, np.ndarray],
                       inputs: dict[str, TensorInfo]) -> None:
        names = [i for _, i in self.pairs]
        missing = [n for n in names if n not in initial]
        extra = sorted(set(initial) - set(names), key=str)
        if missing or extra:
            raise InputError(f"bind_state: initial values are needed for exactly the bound "
                             f"inputs {names}; missing {missing}, unexpected {extra}")
        for n in names:
            check_array(n, initial[n], inputs[n], "initial value")

    @staticmethod
    def _bound_calls(model: Model, tensors: list, bound_in: dict[str, int],
                     written: dict[str, int], parity: int) -> list[tuple]:
        """Model._calls with bound inputs reading buffer ``parity`` of their pair and bound
        outputs writing the other one."""
        calls = []
        for (func, args, dynamic), kernel in zip(model._calls, model.manifest["kernels"]):
            args = list(args)
            for position, name in enumerate(kernel["args"]):
                if name in bound_in:
                    args[position] = tensors[bound_in[name]][parity]
                elif name in written:
                    args[position] = tensors[written[name]][1 - parity]
            dynamic = tuple((pos, slot) for pos, slot in dynamic
                            if args[pos] is None)  # slots of bound values are now static
            calls.append((func, args, dynamic))
        return calls

    def state_index(self, name: str) -> int:
        """The pair that ``name`` (a bound input, or its output) belongs to."""
        k = self.index.get(name)
        if k is None:
            raise InputError(f"{name!r} is not bound state; the bound pairs (output -> input) "
                             f"are {[f'{o} -> {i}' for o, i in self.pairs]}")
        return k

    def current(self, k: int) -> np.ndarray:
        """The buffer that the next run reads for pair ``k`` (runtime-owned: do not keep)."""
        return self.buffers[k][self.parity]

    def step(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One run (the caller holds the Model's lock and has checked ``feeds``)."""
        model, parity = self.model, self.parity
        for name, buffer in self._small:
            buffer[...] = feeds[name]
        dyn: list[Any] = [None] * len(model._slots)
        for k, sig, is_input in self._slots:
            array = model._slot_array(sig, is_input, feeds)
            dyn[k] = (array, tvm_tensor(array, sig.dtype))
        for i, (func, args, dynamic) in enumerate(self._calls[parity]):
            call_args = _with_slots(args, dynamic, dyn) if dynamic else args
            try:
                func(*call_args)
            except Exception as e:
                k = model.manifest["kernels"][i]
                raise model._kernel_error(i, k, e, call_args) from e
        for k, source in self._copies:
            self.buffers[k][1 - parity][...] = self._value(source, feeds, dyn)
        results = [self._value(source, feeds, dyn).copy() for source in self._collect]
        self.parity = 1 - parity
        return results

    def _value(self, source: tuple[str, Any], feeds: dict[str, np.ndarray],
               dyn: list[Any]) -> np.ndarray:
        kind, key = source
        if kind == "array":
            return key
        if kind == "feed":
            return feeds[key]
        if kind == "slot":
            return dyn[key][0]
        return self.buffers[key][self.parity if kind == "current" else 1 - self.parity]


def _source(name: str, model: Model, bound_in: dict[str, int],
            written: dict[str, int] | None = None) -> tuple[str, Any]:
    """Where value ``name`` is after a run: ("next"/"current", pair), ("feed", name), ("slot",
    index) or ("array", a runtime-owned array)."""
    if written and name in written:
        return "next", written[name]
    if name in bound_in:
        return "current", bound_in[name]
    if name in model._dtypes:  # an input
        return "feed", name
    if name in model._consts:
        return "array", model._consts[name]
    if name in model._slot_of:
        return "slot", model._slot_of[name]
    return "array", model._buffers[name]


def _check_pairs(pairs: Sequence[tuple[str, str]], inputs: dict[str, TensorInfo],
                 outputs: dict[str, TensorInfo]) -> list[tuple[str, str]]:
    checked: list[tuple[str, str]] = []
    seen_out: set[str] = set()
    seen_in: set[str] = set()
    for pair in pairs:
        try:
            out, inp = pair
        except (TypeError, ValueError):
            raise InputError(f"bind_state: each pair is (output name, input name), got "
                             f"{pair!r}") from None
        if out not in outputs:
            raise InputError(f"bind_state: {out!r} is not an output; outputs: {list(outputs)}")
        if inp not in inputs:
            raise InputError(f"bind_state: {inp!r} is not an input; inputs: {list(inputs)}")
        o, i = outputs[out], inputs[inp]
        if (o.shape, o.dtype) != (i.shape, i.dtype):
            raise InputError(f"bind_state: output {out!r} ({o.dtype}{list(o.shape)}) cannot "
                             f"feed input {inp!r} ({i.dtype}{list(i.shape)})")
        if out in seen_out or inp in seen_in:
            raise InputError(f"bind_state: ({out!r}, {inp!r}) binds an output or an input "
                             "a second time")
        seen_out.add(out)
        seen_in.add(inp)
        checked.append((out, inp))
    return checked


def check_array(name: str, array: Any, sig: TensorInfo, what: str) -> None:
    """Raise InputError unless ``array`` is a numpy array of ``sig``'s dtype and shape."""
    if not isinstance(array, np.ndarray):
        raise InputError(f"{what} {name!r} must be a numpy array ({sig.dtype}"
                         f"{list(sig.shape)}), got {type(array).__name__}")
    if array.dtype != numpy_dtype(sig.dtype) or array.shape != sig.shape:
        raise InputError(f"{what} {name!r} is {array.dtype}{list(array.shape)}, expected "
                         f"{sig.dtype}{list(sig.shape)}")
