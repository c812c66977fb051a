"""The executor: a loaded artifact's buffers, bound once, and its kernel calls.

At load, every buffer is allocated 64-byte aligned and wrapped as a tvm_ffi tensor once:
constants (copied in once), the arena of intermediates (per the memory plan), and one buffer
per small graph input and output. A run then costs little more than the kernel calls:

- Inputs are validated (names, dtypes, shapes, C-contiguity), then copied into their buffers.
  An input of at least ``ZERO_COPY_BYTES`` that is already 64-byte aligned and writeable is
  passed zero-copy instead (kernels never write inputs); an unaligned one is copied into a
  buffer made on first need and kept.
- Small outputs are computed into their buffers and returned as copies; outputs of at least
  ``ZERO_COPY_BYTES`` are computed straight into fresh aligned arrays. Either way the caller
  owns every returned array: no later run writes it.

A Model serializes its runs with a lock (the buffers are shared); use one Model per thread for
parallel runs.

State that one run hands to the next (a training step's parameters and optimizer state) can
stay in the runtime: ``bind_state`` pairs outputs with the inputs they feed, ``step`` runs on
the other inputs only, and ``read_state`` copies a value out when asked (``kiln.runtime.state``
explains the double buffering).
"""

from __future__ import annotations

import ctypes
import re
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import tvm_ffi

from kiln.errors import ArtifactError, InputError, KilnError
from kiln.runtime.format import ALIGNMENT, STORAGE_DTYPES, split_args, storage_dtype, value_nbytes

#: inputs and outputs at least this big bypass the per-model buffers (see module docstring)
ZERO_COPY_BYTES = 1 << 16
#: a kernel's own input checks (indices in range, integer divisors nonzero) start the message
#: of a failure with this and "[op] "; the message holds {value} and {at} for the offending
#: element and ends with the checked input's "(in dtype[shape])" (kiln/codegen/ops/checks.py)
KERNEL_CHECK = "kiln check: "


@dataclass(frozen=True)
class TensorInfo:
    """Name, static shape and dtype of a graph input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class KernelProfile:
    """Timing of one kernel call: median seconds over the repeats, and its FLOP rate."""

    func: str
    sources: tuple[str, ...]
    seconds: float
    flops: int
    gflops: float | None


def numpy_dtype(dtype: str) -> np.dtype:
    """The numpy dtype of kiln dtype ``dtype``: bfloat16 is ml_dtypes' (imported only for a
    model that takes or returns bfloat16; its bits are what the kernels see)."""
    if dtype != "bfloat16":
        return np.dtype(dtype)
    try:
        import ml_dtypes
    except ImportError:
        raise ArtifactError("this model takes or returns bfloat16 arrays, which numpy has no "
                            "dtype for: pip install ml_dtypes") from None
    return np.dtype(ml_dtypes.bfloat16)


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype | str) -> np.ndarray:
    """An uninitialized C-contiguous array whose data is 64-byte aligned (``dtype``: a numpy
    dtype, or a kiln dtype name)."""
    dtype = numpy_dtype(dtype) if isinstance(dtype, str) else np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    offset = -raw.ctypes.data % ALIGNMENT
    return raw[offset:offset + nbytes].view(dtype).reshape(shape)


class Signature:
    """What every loaded model tells of itself: its inputs, outputs and manifest."""

    _inputs: tuple[TensorInfo, ...]
    _outputs: tuple[TensorInfo, ...]
    _manifest: dict[str, Any]

    @property
    def inputs(self) -> tuple[TensorInfo, ...]:
        """The graph inputs that ``run`` takes, in order (a symbolic size by its name)."""
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorInfo, ...]:
        """The graph outputs that ``run`` returns, in order."""
        return self._outputs

    @property
    def manifest(self) -> dict[str, Any]:
        """The artifact's manifest (read-only by convention)."""
        return self._manifest


class Model(Signature):
    """A loaded artifact, ready to run. Made by ``kiln.runtime.load``."""

    def __init__(self, manifest: dict[str, Any], library: Any,
                 constants: dict[str, np.ndarray], notes: list[str] | None = None,
                 copy_constants: bool = True) -> None:
        self._manifest = manifest
        self.notes: list[str] = list(notes or [])
        values = manifest["values"]
        self._inputs = tuple(_info(s) for s in manifest["inputs"])
        self._outputs = tuple(_info(s) for s in manifest["outputs"])
        self._dtypes = {s.name: numpy_dtype(s.dtype) for s in self._inputs}
        for s in self._outputs:
            numpy_dtype(s.dtype)  # a model returning bfloat16 needs ml_dtypes: say so now
        self._lock = threading.Lock()
        # (a DynamicModel hands each call size's Model its own aligned copies, shared)
        self._consts = {n: _aligned_copy(a) if copy_constants else a
                        for n, a in constants.items()}
        self._arena, views = _arena(manifest["memory"], values)
        written = {o for k in manifest["kernels"] for o in split_args(k)[1]}
        # Each value is bound to a static tensor, or to a per-run slot (a big input passed
        # zero-copy, or a big output made fresh per run), numbered by its index in `_slots`.
        self._slots: list[tuple[TensorInfo, bool]] = []  # (value, is an input)
        self._buffers: dict[str, np.ndarray] = {}  # small inputs and outputs
        self._staged: dict[str, np.ndarray] = {}  # buffers for big unaligned inputs
        tensors: dict[str, Any] = {n: tvm_tensor(a, values[n]["dtype"])
                                   for n, a in {**self._consts, **views}.items()}
        slot_of: dict[str, int] = {}
        input_names = {s.name for s in self._inputs}
        for sig in self._inputs + tuple(s for s in self._outputs if s.name in written):
            if sig.name in tensors or sig.name in slot_of:
                continue
            if value_nbytes(values[sig.name]) >= ZERO_COPY_BYTES:
                slot_of[sig.name] = len(self._slots)
                self._slots.append((sig, sig.name in input_names))
            else:
                self._buffers[sig.name] = aligned_empty(sig.shape, sig.dtype)
                tensors[sig.name] = tvm_tensor(self._buffers[sig.name], sig.dtype)
        self._small_inputs = [(s.name, self._buffers[s.name]) for s in self._inputs
                              if s.name in self._buffers]
        self._collectors = [_collector(s.name, i, self._outputs, slot_of, self._buffers,
                                       input_names, self._consts)
                            for i, s in enumerate(self._outputs)]
        self._written, self._slot_of = written, slot_of
        self._state: Any = None  # a kiln.runtime.state.BoundState once bind_state is called
        self._calls = []
        for k in manifest["kernels"]:
            try:
                func = library[k["func"]]
            except Exception:
                raise ArtifactError(f"kernels.so has no function {k['func']!r}, which the "
                                    "manifest calls; the artifact is inconsistent: rebuild "
                                    "it with `kiln compile`") from None
            # a model with symbolic sizes passes this call size's after the tensors
            args = [tensors.get(a) for a in k["args"]] + list(k.get("size_values", ()))
            dynamic = tuple((i, slot_of[a]) for i, a in enumerate(k["args"]) if a in slot_of)
            self._calls.append((func, args, dynamic))
        self._library = library  # keeps the functions' module alive

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the model on ``{input name: array}``; return the outputs in order.

        Arrays must have exactly the dtype and shape of ``self.inputs`` and be C-contiguous;
        anything else raises InputError. The returned arrays are new on every call.
        """
        self._check(inputs)
        with self._lock:
            dyn = self._bind(inputs)
            self._call(dyn)
            return self._collect(inputs, dyn)

    def bind_state(self, pairs: Sequence[tuple[str, str]],
                   initial: Mapping[str, np.ndarray]) -> None:
        """Keep state in the runtime: each ``(output name, input name)`` pair feeds that output
        of one ``step`` back as that input of the next, inside the runtime's own buffers.

        ``initial`` gives each bound input's first value (exact dtype and shape; copied in).
        Binding again replaces the previous binding and its values. ``run`` is unaffected:
        it still takes every input and returns every output.
        """
        from kiln.runtime.state import BoundState

        with self._lock:
            self._state = BoundState(self, pairs, initial)

    def step(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run with the bound state (see ``bind_state``) on the other inputs; return the
        outputs that are not bound, in order. The bound outputs become the next step's
        inputs without leaving the runtime."""
        state = self._bound()
        self._check(inputs, state.free_inputs)
        with self._lock:
            return state.step(inputs)

    def read_state(self, name: str) -> np.ndarray:
        """A copy of the current value of bound input ``name`` (or of the output bound to
        it): what the next ``step`` reads."""
        state = self._bound()
        with self._lock:
            return state.current(state.state_index(name)).copy()

    def write_state(self, name: str, value: np.ndarray) -> None:
        """Set the current value of bound input ``name`` (exact dtype and shape)."""
        from kiln.runtime.state import check_array

        state = self._bound()
        with self._lock:
            k = state.state_index(name)
            check_array(name, value, self._inputs_by_name()[state.pairs[k][1]], "value of")
            state.current(k)[...] = value

    @property
    def state_names(self) -> tuple[str, ...]:
        """The bound inputs, in the order of ``bind_state``'s pairs (empty if none)."""
        return tuple(i for _, i in self._state.pairs) if self._state else ()

    def _bound(self) -> Any:
        if self._state is None:
            raise InputError("no state is bound: call bind_state([(output, input), ...], "
                             "initial) before step / read_state / write_state")
        return self._state

    def _inputs_by_name(self) -> dict[str, TensorInfo]:
        return {s.name: s for s in self._inputs}

    def memory_report(self) -> dict[str, int]:
        """Bytes of memory: the planned arena vs one buffer per intermediate, and the rest."""
        memory = self._manifest["memory"]
        return {
            "peak_bytes": memory["peak_bytes"],
            "naive_bytes": memory["naive_bytes"],
            "arena_bytes": self._arena.nbytes,
            "intermediates": len(memory["assign"]),
            "buffers": len(memory["buffers"]),
            "constant_bytes": sum(a.nbytes for a in self._consts.values()),
            "io_buffer_bytes": sum(a.nbytes for a in self._buffers.values()),
        }

    def benchmark(self, inputs: dict[str, np.ndarray], repeat: int = 100) -> float:
        """Median seconds of ``run(inputs)`` over ``repeat`` runs, after one warm-up run."""
        return median_seconds(lambda: self.run(inputs), repeat)

    def timings(self, inputs: dict[str, np.ndarray], repeat: int = 100) -> list[float]:
        """Seconds of each of ``repeat`` runs of ``run(inputs)``, after one warm-up run (for
        a spread: ``kiln bench`` prints the median, min, 90th percentile and max)."""
        return run_times(lambda: self.run(inputs), repeat)

    def profile(self, inputs: dict[str, np.ndarray], repeat: int = 20) -> list[KernelProfile]:
        """Time each kernel: one warm-up call, then the median of ``repeat`` calls.

        Kernels are timed in order, each once all before it have run, so every one sees the
        data a real run gives it (timings of some kernels depend on the data).
        """
        self._check(inputs)
        records = []
        with self._lock:
            dyn = self._bind(inputs)
            for (func, args, dynamic), k in zip(self._calls, self._manifest["kernels"]):
                args = _with_slots(args, dynamic, dyn)
                func(*args)
                times = []
                for _ in range(max(1, repeat)):
                    start = time.perf_counter()
                    func(*args)
                    times.append(time.perf_counter() - start)
                seconds = statistics.median(times)
                flops = int(k.get("flops", 0))
                rate = flops / seconds / 1e9 if flops and seconds > 0 else None
                records.append(KernelProfile(k["func"], tuple(k.get("sources", ())),
                                             seconds, flops, rate))
        return records

    # -- the per-run path: keep it lean ------------------------------------------------------

    def _check(self, inputs: dict[str, np.ndarray],
               expected: tuple[TensorInfo, ...] | None = None) -> None:
        expected = self._inputs if expected is None else expected  # step: the unbound ones
        if not isinstance(inputs, dict):
            raise InputError(f"run() takes a dict {{input name: array}}, got "
                             f"{type(inputs).__name__}")
        for sig in expected:
            array = inputs.get(sig.name)
            if not isinstance(array, np.ndarray) or array.dtype != self._dtypes[sig.name] \
                    or array.shape != sig.shape or not array.flags.c_contiguous:
                self._explain(inputs, sig, expected)
        if len(inputs) != len(expected):
            unexpected = sorted(set(inputs) - {s.name for s in expected}, key=str)
            raise InputError(f"unexpected input(s) {unexpected}; the model takes "
                             f"{[s.name for s in expected]}")

    def _explain(self, inputs: dict[str, np.ndarray], sig: TensorInfo,
                 expected: tuple[TensorInfo, ...]) -> None:
        want = f"{sig.dtype}{list(sig.shape)}"
        if sig.name not in inputs:
            raise InputError(f"missing input {sig.name!r} ({want}); the model takes "
                             f"{[s.name for s in expected]}, got {sorted(inputs, key=str)}")
        array = inputs[sig.name]
        if not isinstance(array, np.ndarray):
            raise InputError(f"input {sig.name!r} must be a numpy array ({want}), got "
                             f"{type(array).__name__}")
        if array.dtype != self._dtypes[sig.name]:
            module = "ml_dtypes" if sig.dtype == "bfloat16" else "np"
            raise InputError(f"input {sig.name!r} has dtype {array.dtype}, expected "
                             f"{sig.dtype} (convert it with .astype({module}.{sig.dtype}))")
        if array.shape != sig.shape:
            raise InputError(f"input {sig.name!r} has shape {list(array.shape)}, expected "
                             f"{list(sig.shape)} (shapes are fixed at compile time)")
        raise InputError(f"input {sig.name!r} is not C-contiguous (strides "
                         f"{array.strides}); pass np.ascontiguousarray(x)")

    def _bind(self, inputs: dict[str, np.ndarray]) -> list[tuple[np.ndarray, Any]]:
        """Copy small inputs in; return (array, tensor) for each slot of this run."""
        for name, buffer in self._small_inputs:
            buffer[...] = inputs[name]
        dyn = []
        for sig, is_input in self._slots:
            array = self._slot_array(sig, is_input, inputs)
            dyn.append((array, tvm_tensor(array, sig.dtype)))
        return dyn

    def _slot_array(self, sig: TensorInfo, is_input: bool,
                    inputs: dict[str, np.ndarray]) -> np.ndarray:
        """This run's array for a slot: a fresh output, or the input (staged if unaligned)."""
        if not is_input:
            return aligned_empty(sig.shape, sig.dtype)
        array = inputs[sig.name]
        if array.ctypes.data % ALIGNMENT or not array.flags.writeable:
            staged = self._staged.get(sig.name)
            if staged is None:
                staged = self._staged[sig.name] = aligned_empty(sig.shape, sig.dtype)
            staged[...] = array
            array = staged
        return array

    def _call(self, dyn: list[tuple[np.ndarray, Any]]) -> None:
        for i, (func, args, dynamic) in enumerate(self._calls):
            call_args = _with_slots(args, dynamic, dyn) if dynamic else args
            try:
                func(*call_args)
            except Exception as e:
                raise self._kernel_error(i, self._manifest["kernels"][i], e, call_args) from e

    @staticmethod
    def _kernel_error(i: int, kernel: dict[str, Any], e: Exception,
                      args: Sequence[Any] = ()) -> KilnError:
        """An InputError if the kernel's own input check failed (see ``kernel_check_error``;
        ``args``: its arguments, to find the offending element), else an ArtifactError."""
        inputs = list(args)[: len(split_args(kernel)[0])]
        checked = kernel_check_error(e, kernel.get("sources", ()), inputs)
        return checked or ArtifactError(f"kernel #{i} {kernel['func']} failed: {e}")

    def _collect(self, inputs: dict[str, np.ndarray], dyn: list) -> list[np.ndarray]:
        results: list[np.ndarray] = []
        for kind, key in self._collectors:
            if kind == "buffer":
                results.append(key.copy())
            elif kind == "slot":
                results.append(dyn[key][0])  # made fresh in this run
            elif kind == "copy":  # a repeated output
                results.append(results[key].copy())
            else:  # "input" or "const"
                results.append((inputs[key] if kind == "input" else key).copy())
        return results


def _collector(name: str, index: int, outputs: tuple[TensorInfo, ...], slots: dict[str, int],
               buffers: dict[str, np.ndarray], inputs: set[str],
               consts: dict[str, np.ndarray]) -> tuple[str, Any]:
    """How ``run`` makes output ``index`` (named ``name``): a (kind, key) pair."""
    first = next(i for i, s in enumerate(outputs) if s.name == name)
    if first < index:
        return "copy", first
    if name in inputs:
        return "input", name
    if name in consts:  # (a dtype numpy lacks is held as its bits: give the real one)
        return "const", consts[name].view(numpy_dtype(outputs[index].dtype))
    if name in slots:
        return "slot", slots[name]
    return "buffer", buffers[name]


def median_seconds(call: Callable[[], Any], repeat: int) -> float:
    """Median seconds of ``call()`` over ``repeat`` calls, after one warm-up call."""
    return statistics.median(run_times(call, repeat))


def run_times(call: Callable[[], Any], repeat: int) -> list[float]:
    """Seconds of each of ``repeat`` calls of ``call()``, after one warm-up call."""
    call()
    times = []
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def _with_slots(args: list[Any], dynamic: tuple, dyn: list[Any]) -> list[Any]:
    args = list(args)
    for position, slot in dynamic:
        args[position] = dyn[slot][1]
    return args


def _info(sig: dict[str, Any]) -> TensorInfo:
    return TensorInfo(sig["name"], tuple(sig["shape"]), sig["dtype"])


# DLPack's type code of bfloat16 (kDLBfloat), and where a DLTensor keeps its type code: after
# the data pointer (8 bytes), the device (two int32) and ndim (int32)
_DL_BFLOAT, _DL_CODE_OFFSET = 4, 20
_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype, _capsule_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object,
                                                                         ctypes.c_char_p]


def tvm_tensor(array: np.ndarray, dtype: str) -> Any:
    """``array`` as a tvm_ffi tensor of kiln dtype ``dtype``, sharing its memory. numpy
    cannot export a dtype it lacks (bfloat16: ml_dtypes' arrays, or their bits as uint16):
    the DLPack capsule of its bits is relabeled with the real type code before tvm_ffi
    takes it."""
    if dtype not in STORAGE_DTYPES:
        return tvm_ffi.from_dlpack(array)
    assert dtype == "bfloat16" and array.dtype.itemsize == 2
    capsule = array.view(STORAGE_DTYPES[dtype]).__dlpack__()
    header = _capsule_pointer(capsule, b"dltensor")
    ctypes.c_uint8.from_address(header + _DL_CODE_OFFSET).value = _DL_BFLOAT
    return tvm_ffi.from_dlpack(capsule)


def _aligned_copy(array: np.ndarray) -> np.ndarray:
    out = aligned_empty(array.shape, array.dtype)
    out[...] = array
    return out


def _arena(memory: dict[str, Any], values: dict[str, Any]) -> tuple[np.ndarray, dict]:
    """One aligned arena for all planned buffers, and a view of it per intermediate."""
    offsets, total = [], 0
    for buffer in memory["buffers"]:
        offsets.append(total)
        total += -(-buffer["nbytes"] // ALIGNMENT) * ALIGNMENT
    arena = aligned_empty((total,), np.uint8)
    views = {}
    for name, buf in memory["assign"].items():
        info = values[name]
        nbytes = value_nbytes(info)
        start = offsets[buf]
        views[name] = arena[start:start + nbytes].view(storage_dtype(info["dtype"])) \
            .reshape(info["shape"])
    return arena, views


def kernel_check_error(error: Exception, sources: Sequence[str], inputs: Sequence[Any]
                       ) -> InputError | None:
    """The InputError for a kernel whose input check failed (None for any other failure):
    the nodes of the kernel and the check's message, its ``{value}`` and ``{at}`` filled with
    the first offending element of the checked input (``inputs``: the kernel's input
    tensors, numpy or DLPack), worded as the interpreter words it."""
    text = str(error).strip()
    if not text.startswith(KERNEL_CHECK):
        return None
    message = text[len(KERNEL_CHECK):].splitlines()[0]
    op = _OP.match(message)
    if op:
        message = message[op.end():]
        # the nodes of the op that checked (a fused kernel lists all of its nodes)
        sources = [s for s in sources if f"({op.group(1)})" in s or f"({op.group(1)} " in s
                   ] or sources
    checked = _CHECKED.search(message)
    found = _offending_element(message, checked, inputs) if checked else None
    if checked:
        message = message[:checked.start()].rstrip()
    if found:
        message = message.replace("{value}", str(found[0])).replace("{at}", str(found[1]))
    else:  # the checked tensor was computed in the kernel: no input to point into
        message = message.replace(" {value}", "").replace(" at {at}", "")
    return InputError(f"{'; '.join(sources) or 'a kernel'}: {message}")


_OP = re.compile(r"\[(\w+)\] ")
_CHECKED = re.compile(r"\(in (\w+)\[([\d, ]*)\]\)$")
_SIZE = re.compile(r"out of range for size (\d+)")


def _offending_element(message: str, checked: re.Match, inputs: Sequence[Any]
                       ) -> tuple[Any, list[int]] | None:
    """(value, position) of the first element that fails the check the message states
    (an index range, or a nonzero divisor), in the first input of the checked dtype and
    shape that holds one; None if none does."""
    dtype = checked.group(1)
    shape = tuple(int(d) for d in checked.group(2).split(",") if d.strip())
    size = _SIZE.search(message)
    for tensor in inputs:
        array = tensor if isinstance(tensor, np.ndarray) else np.from_dlpack(tensor)
        if array.dtype.name != dtype or array.shape != shape:
            continue
        n = int(size.group(1)) if size else 0
        bad = ((array < -n) | (array >= n)) if size else (array == 0)
        if bad.any():
            at = [int(i) for i in np.argwhere(bad)[0]]
            return array[tuple(at)], at
    return None
