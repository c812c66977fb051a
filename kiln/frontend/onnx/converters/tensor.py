"""Constants and shapes: Constant, ConstantOfShape, Shape, Size, Range, EyeLike, OneHot,
Identity and (inference) Dropout. Most of these fold to constants at import."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kiln.frontend.onnx.context import (
    FOLD_LIMIT,
    MAX_ELEMENTS,
    NodeContext,
    Ref,
    check_constant,
    check_size,
    const_ref,
    elements,
    fill_ref,
)
from kiln.frontend.onnx.converters.reduce import along
from kiln.frontend.onnx.dtypes import to_kiln_dtype
from kiln.frontend.onnx.registry import converter
from kiln.frontend.onnx.validate import Spec, at_least, axis, between, count, flag
from kiln.ir.dims import Sym, as_dim
from kiln.ir.types import TensorType, to_numpy_dtype


def _one_value(n: NodeContext) -> str | None:
    given = sorted(n.attrs)
    return None if len(given) == 1 else f"must have exactly one value attribute, has {given}"


@converter("Constant", 13, 19, 21, 23, 24, 25, spec=Spec(checks=(_one_value,)))
def constant(n: NodeContext) -> Ref:
    a = n.attrs
    if "value" in a:
        value = np.asarray(a["value"])
        to_kiln_dtype(_onnx_dtype(value), "the Constant's value")
    elif "value_float" in a:
        value = np.asarray(a["value_float"], np.float32)
    elif "value_floats" in a:
        value = np.asarray(a["value_floats"], np.float32)
    elif "value_int" in a:
        value = np.asarray(a["value_int"], np.int64)
    elif "value_ints" in a:
        value = np.asarray(a["value_ints"], np.int64)
    else:
        raise n.unsupported(f"Constant with attribute(s) {sorted(a)} (strings and sparse "
                            "tensors) is not supported")
    # a tensor keeps its ONNX name as a parameter; a scalar becomes a full node where used
    return const_ref(value, name=n.node.output[0], named=value.size > 1)


def _onnx_dtype(array: np.ndarray) -> int:
    from onnx.helper import np_dtype_to_tensor_dtype

    try:
        return np_dtype_to_tensor_dtype(array.dtype)
    except (KeyError, ValueError, TypeError):
        return 0


def _one_element(n: NodeContext) -> str | None:
    value = n.attr("value")
    if value is None or np.asarray(value).size == 1:
        return None
    return f"its value must be a tensor of one element, got shape {list(np.shape(value))}"


@converter("ConstantOfShape", 9, 20, 21, 23, 24, 25,
           spec=Spec(ranks={0: (1, 1)}, values={0: at_least(0)}, checks=(_one_element,)))
def constant_of_shape(n: NodeContext) -> Ref:
    shape = n.ints(0, "shape")
    value = np.asarray(n.attr("value", np.zeros(1, np.float32)))
    dtype = to_kiln_dtype(_onnx_dtype(value), "ConstantOfShape's value")
    t = TensorType(shape, dtype)
    check_size(t, "its output")
    if not t.is_static or elements(t) > FOLD_LIMIT:  # a fill, made only if needed (Ref)
        return fill_ref(t, value)
    return const_ref(np.full(shape, value.reshape(-1)[0], value.dtype))


@converter("Shape", 13, 15, 19, 21, 23, 24, 25)
def shape(n: NodeContext) -> Ref:
    dims = n.x.shape
    start, end = n.attr("start", 0), n.attr("end", None)
    dims = dims[slice(start, end)]
    if all(isinstance(d, int) for d in dims):
        return const_ref(np.asarray(dims, np.int64).reshape(len(dims)))
    return const_ref(np.asarray(dims, dtype=object))


@converter("Size", 13, 19, 21, 23, 24, 25)
def size(n: NodeContext) -> Ref:
    if not n.x.type.is_static:
        raise n.unsupported(f"Size of {n.x.type} is a product of symbolic dims")
    return const_ref(np.int64(n.x.type.size))


def _range_size(n: NodeContext) -> str | None:
    """A constant range of at most MAX_ELEMENTS values."""
    if not all(r.const is not None for r in n.inputs[:3]):
        return None
    if any(r.const.dtype == object for r in n.inputs[:3]):
        return None  # a bound that is a symbolic size: arange checks what it can
    start, limit, delta = (r.const.reshape(-1)[0].item() for r in n.inputs[:3])
    if delta == 0:
        return "delta must not be 0"
    size = math.ceil((limit - start) / delta) if all(
        math.isfinite(v) for v in (start, limit, delta)) else math.inf
    if size > MAX_ELEMENTS:
        return f"range({start}, {limit}, {delta}) would hold {size} values; kiln's tensors " \
               f"hold at most {MAX_ELEMENTS}"
    return None


def _bound(n: NodeContext, i: int) -> Any:
    """Range's input ``i``: a number, or the symbolic size a shape computation gave."""
    arr = n.const(i)
    if arr.dtype == object and arr.size == 1:
        return as_dim(arr.reshape(-1)[0])
    return n.scalar_input(i)


@converter("Range", 11, 27, spec=Spec(ranks={0: (0, 0), 1: (0, 0), 2: (0, 0)},
                                      checks=(_range_size,)))
def range_(n: NodeContext) -> Ref:
    start, limit, delta = (_bound(n, i) for i in range(3))
    dtype = n.x.dtype
    if dtype in ("int32", "int64"):  # (a symbolic size stays one: arange up to it)
        start, limit, delta = (v if isinstance(v, Sym) else int(v)
                               for v in (start, limit, delta))
    return n.op("arange", start=start, stop=limit, step=delta, dtype=dtype)


@converter("EyeLike", 9, 22)
def eye_like(n: NodeContext) -> Ref:
    x = n.x
    if x.rank != 2 or not x.type.is_static:
        raise n.unsupported(f"EyeLike needs a static 2-D input, got {x.type}")
    dtype = to_kiln_dtype(n.attr("dtype"), "EyeLike's dtype") if "dtype" in n.attrs else x.dtype
    check_constant(x.type.size, "EyeLike's output")
    eye = np.eye(*x.shape, k=int(n.attr("k", 0)), dtype=to_numpy_dtype(dtype))
    return const_ref(eye)


@converter("OneHot", 11, 28, spec=Spec(
    ranks={1: (0, 1), 2: (1, 1)}, attrs={"axis": axis(extra=1)},
    values={1: between(1, MAX_ELEMENTS), 2: count("off and on", lambda n: 2)}))
def one_hot(n: NodeContext) -> Ref:
    """Compares indices with 0..depth-1 along ``axis``: out-of-range indices give a row of
    off values, as ONNX says (kiln's one_hot would raise)."""
    idx, values = n.inputs[0], n.inputs[2]
    depth = int(n.scalar_input(1))
    check_constant(depth, "OneHot's positions")
    rank = idx.rank + 1
    axis = int(n.attr("axis", -1)) % rank
    idx = n.cast(idx, "int64")
    idx = n.op("where", n.op("less", idx, np.int64(0)), n.op("add", idx, np.int64(depth)), idx)
    hit = n.op("equal", n.op("unsqueeze", idx, axes=(axis,)),
               along(np.arange(depth, dtype=np.int64), axis, rank))
    off = n.op("gather", values, np.int64(0))
    on = n.op("gather", values, np.int64(1))
    return n.op("where", hit, on, off)


@converter("Identity", 13, 14, 16, 19, 21, 23, 24, 25)
def identity(n: NodeContext) -> Ref:
    return n.x


@converter("Dropout", 13, 22)
def dropout(n: NodeContext) -> list[Ref]:
    """Inference (or a ratio of 0): the output is the input and the mask all true."""
    training, ratio = n.input(2), n.input(1)
    if training is not None and (not training.is_const or bool(training.const.reshape(-1)[0])):
        if ratio is None or not ratio.is_const or ratio.const.reshape(-1)[0] != 0:
            raise n.unsupported("Dropout in training mode: its random mask cannot match other "
                                "runtimes (kiln imports inference graphs)")
    outs = [n.x]
    if n.wants_output(1):
        mask = n.op("full", shape=tuple(_static(n, d) for d in n.x.shape), value=True,
                    dtype="bool")
        outs.append(mask)
    return outs


def _static(n: NodeContext, d) -> int:
    if not isinstance(d, int):
        raise n.unsupported(f"Dropout's mask of symbolic shape (dim {d!r}) is not supported")
    return d


_WINDOWS = {  # cosine-sum windows: w[n] = sum_k c_k cos(2 pi k n / N)
    "HannWindow": (0.5, -0.5), "HammingWindow": (25 / 46, -21 / 46),
    "BlackmanWindow": (0.42, -0.5, 0.08)}


def _window(n: NodeContext) -> Ref:
    size = int(n.scalar_input(0))
    check_constant(size, f"{n.node.op_type}'s values")
    period = size if n.attr("periodic", 1) else size - 1
    k = np.arange(size, dtype=np.float64)
    w = sum(c * np.cos(2 * np.pi * j * k / period) for j, c in enumerate(_WINDOWS[n.node.op_type]))
    dtype = to_kiln_dtype(n.attr("output_datatype", 1), "the window's output_datatype")
    return const_ref(np.asarray(w).astype(to_numpy_dtype(dtype)))


for _op in _WINDOWS:
    converter(_op, 17, spec=Spec(ranks={0: (0, 1)}, attrs={"periodic": flag},
                                 values={0: between(0, MAX_ELEMENTS)}))(_window)
