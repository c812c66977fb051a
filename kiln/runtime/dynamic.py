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
from kiln.runtime.executor import KernelProfile, Model, TensorInfo, _aligned_copy, numpy_dtype
from kiln.runtime.sizes import bind_inputs, concrete_manifest

#: call sizes kept bound (each holds its own memory arena)
KEEP_SIZES = 4


class DynamicModel:
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
        self._lock = threading.Lock()
        self._last: Model | None = None

    @property
    def inputs(self) -> tuple[TensorInfo, ...]:
        """The graph inputs, their shapes with the symbolic sizes by name."""
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorInfo, ...]:
        return self._outputs

    @property
    def manifest(self) -> dict[str, Any]:
        return self._manifest

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
                concrete = concrete_manifest(self._manifest, sizes)
                model = Model(concrete, self._library, self._consts, self.notes,
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

    def bind_state(self, pairs: Sequence[tuple[str, str]],
                   initial: Mapping[str, np.ndarray]) -> None:
        raise InputError("bind_state needs a model compiled with static shapes; this one has "
                         f"symbolic sizes {self.sizes['names']}")

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
