"""A loaded artifact with symbolic sizes: one artifact, every batch size and sequence length.

Its kernels take their extents at run time (the sizes follow their tensors as int32
arguments; TVM's own argument checks compare each tensor's shape with them). Per call size
(the sizes its inputs give: ``kiln/runtime/sizes.py``) the runtime makes the static manifest
of that size, plans its memory and binds an ordinary ``Model`` to it; the last few call
sizes stay bound (``KEEP_SIZES``), so a server alternating between a few sizes pays the
binding (about a millisecond for BERT-base) only on a size's first call. Constants are
shared by all of them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Mapping, Sequence

import numpy as np

from kiln.errors import InputError
from kiln.runtime.executor import (
    KernelProfile,
    Model,
    Signature,
    TensorInfo,
    _aligned_copy,
    numpy_dtype,
)
from kiln.runtime.sizes import bind_inputs, concrete_manifest, variant_manifests

#: call sizes kept bound (each holds its own memory arena)
KEEP_SIZES = 4


class DynamicModel(Signature):
    """A loaded artifact whose inputs have symbolic dims. Made by ``kiln.runtime.load``;
    runs like a ``Model``, at any sizes within the bounds it was compiled for."""

    def __init__(self, manifest: dict[str, Any], library: Any,
                 constants: dict[str, np.ndarray], notes: list[str] | None = None) -> None:
        self._manifest = manifest
        self._library = library
        self.notes: list[str] = list(notes or [])
        self._consts = {n: _aligned_copy(a) for n, a in constants.items()}
        self._inputs = tuple(_info(s) for s in manifest["inputs"])
        self._outputs = tuple(_info(s) for s in manifest["outputs"])
        self._dtypes = {s.name: numpy_dtype(s.dtype) for s in self._inputs}
        self._bound: OrderedDict[tuple, Model] = OrderedDict()
        # specializations: a call whose sizes include one's runs its kernels
        self._variants = variant_manifests(manifest)
        self._lock = threading.Lock()
        self._last: Model | None = None

    @property
    def sizes(self) -> dict[str, Any]:
        """The symbolic sizes: their names, bounds and requirements (the manifest's)."""
        return self._manifest["sizes"]

    def model_for(self, inputs: Mapping[str, np.ndarray]) -> Model:
        """The static ``Model`` of the call size that ``inputs`` give (bound on first use)."""
        self._check(inputs)
        sizes = bind_inputs(self._manifest, {n: a.shape for n, a in inputs.items()})
        key = tuple(sorted(sizes.items()))
        with self._lock:
            model = self._bound.get(key)
            if model is None:
                chosen = next((vm for fixed, vm in self._variants
                               if all(sizes.get(n) == v for n, v in fixed.items())),
                              self._manifest)
                concrete = concrete_manifest(chosen, sizes)
                consts = {n: self._consts[n] for n in concrete["constants"]}
                model = Model(concrete, self._library, consts, self.notes,
                              copy_constants=False)
                self._bound[key] = model
                while len(self._bound) > KEEP_SIZES:
                    self._bound.popitem(last=False)
            self._bound.move_to_end(key)
            self._last = model
            return model

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run on ``{input name: array}`` of any sizes the model allows; returns the
        outputs in order (new arrays)."""
        return self.model_for(inputs).run(inputs)

    def benchmark(self, inputs: dict[str, np.ndarray], repeat: int = 100) -> float:
        return self.model_for(inputs).benchmark(inputs, repeat)

    def timings(self, inputs: dict[str, np.ndarray], repeat: int = 100) -> list[float]:
        return self.model_for(inputs).timings(inputs, repeat)

    def profile(self, inputs: dict[str, np.ndarray], repeat: int = 20) -> list[KernelProfile]:
        return self.model_for(inputs).profile(inputs, repeat)

    def memory_report(self) -> dict[str, int]:
        """The memory report of the call size run last."""
        if self._last is None:
            raise InputError("a model with symbolic sizes plans its memory per call size: "
                             "run it once before asking for its memory report")
        return self._last.memory_report()

    # -- state carried from one step to the next (a training step at any batch size) ------
    # A static Model keeps it in double buffers of its own (``kiln/runtime/state.py``); here
    # each call size has its own Model, so the state lives in arrays the steps pass in and
    # take back: a copy per step, the price of a last batch smaller than the others.

    def bind_state(self, pairs: Sequence[tuple[str, str]],
                   initial: Mapping[str, np.ndarray]) -> None:
        """As ``Model.bind_state``: each (output, input) pair feeds that output of one
        ``step`` back as that input of the next. Bound inputs must have static shapes."""
        inputs = {s.name: s for s in self._inputs}
        outputs = [s.name for s in self._outputs]
        state = {}
        for out, inp in pairs:
            if out not in outputs or inp not in inputs:
                raise InputError(f"bind_state: ({out!r}, {inp!r}) must pair an output of "
                                 f"{outputs} with an input of {list(inputs)}")
            sig = inputs[inp]
            if not all(isinstance(d, int) for d in sig.shape):
                raise InputError(f"bind_state: input {inp!r} has symbolic shape "
                                 f"{list(sig.shape)}; only inputs of static shape carry state")
            value = initial.get(inp)
            if not isinstance(value, np.ndarray) or value.dtype != self._dtypes[inp] \
                    or value.shape != sig.shape:
                raise InputError(f"bind_state: the initial {inp!r} must be a "
                                 f"{sig.dtype}{list(sig.shape)} array")
            state[inp] = np.ascontiguousarray(value).copy()
        with self._lock:
            self._pairs = [(out, inp) for out, inp in pairs]
            self._state = state

    def step(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run with the bound state on the other inputs (any sizes the model allows);
        returns the outputs that are not bound, in order."""
        pairs = self._bound_pairs()
        outs = self.run({**inputs, **self._state})
        names = [s.name for s in self._outputs]
        for out, inp in pairs:
            self._state[inp] = outs[names.index(out)]
        bound = {out for out, _ in pairs}
        return [o for name, o in zip(names, outs) if name not in bound]

    def read_state(self, name: str) -> np.ndarray:
        """A copy of the current value of bound input ``name`` (or of its output)."""
        pairs = self._bound_pairs()
        inp = next((i for o, i in pairs if name in (o, i)), None)
        if inp is None:
            raise InputError(f"{name!r} is not bound; bound: {[i for _, i in pairs]}")
        return self._state[inp].copy()

    def write_state(self, name: str, value: np.ndarray) -> None:
        """Set the current value of bound input ``name`` (exact dtype and shape)."""
        current = self.read_state(name)
        if not isinstance(value, np.ndarray) or value.dtype != current.dtype \
                or value.shape != current.shape:
            raise InputError(f"write_state: {name!r} takes a {current.dtype}"
                             f"{list(current.shape)} array")
        inp = next(i for o, i in self._bound_pairs() if name in (o, i))
        self._state[inp] = value.copy()

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(i for _, i in getattr(self, "_pairs", ()))

    def _bound_pairs(self) -> list[tuple[str, str]]:
        pairs = getattr(self, "_pairs", None)
        if pairs is None:
            raise InputError("no state is bound: call bind_state([(output, input), ...], "
                             "initial) before step / read_state / write_state")
        return pairs

    def _check(self, inputs: Mapping[str, np.ndarray]) -> None:
        if not isinstance(inputs, dict):
            raise InputError(f"run() takes a dict {{input name: array}}, got "
                             f"{type(inputs).__name__}")
        names = [s.name for s in self._inputs]
        missing = [n for n in names if n not in inputs]
        if missing or len(inputs) != len(names):
            raise InputError(f"the model takes inputs {names}; missing {missing}, unexpected "
                             f"{sorted(set(inputs) - set(names), key=str)}")
        for sig in self._inputs:
            array = inputs[sig.name]
            if not isinstance(array, np.ndarray):
                raise InputError(f"input {sig.name!r} must be a numpy array, got "
                                 f"{type(array).__name__}")
            if array.dtype != self._dtypes[sig.name]:
                raise InputError(f"input {sig.name!r} has dtype {array.dtype}, expected "
                                 f"{sig.dtype}")


def _info(sig: dict[str, Any]) -> TensorInfo:
    return TensorInfo(sig["name"], tuple(sig["shape"]), sig["dtype"])
