"""Reductions, ArgMax/ArgMin, Softmax, LogSoftmax, Hardmax, LpNormalization and CumSum."""

from __future__ import annotations

import numpy as np

from kiln.frontend.onnx.context import NodeContext, Ref, check_constant
from kiln.frontend.onnx.converters.shape import static
from kiln.frontend.onnx.registry import converter
from kiln.frontend.onnx.validate import Spec, axes, axis, flag, one_of
from kiln.ir.types import is_float, to_numpy_dtype


def _axes(n: NodeContext) -> tuple[int, ...] | None:
    """The reduced axes: None for all, () for none (noop_with_empty_axes)."""
    if "axes" in n.attrs:  # before opset 18 (ReduceSum: 13) axes are an attribute
        axes = tuple(n.attrs["axes"])
    else:
        axes = n.ints(1, "axes", default=())
    if axes:
        return axes
    return () if n.attr("noop_with_empty_axes", 0) else None


def _reduce(n: NodeContext, op: str, x: Ref | None = None) -> Ref:
    x = n.x if x is None else x
    axes = _axes(n)
    if axes == ():
        return x
    keepdims = bool(n.attr("keepdims", 1))
    if op in ("max", "min") and any(x.shape[a] == 0 for a in axes or range(x.rank)):
        return _empty_extreme(n, x, op, axes, keepdims)
    if x.dtype == "bool":  # ReduceMax/Min-20 take bool: any / all
        return n.cast(n.op(op, n.cast(x, "uint8"), axes=axes, keepdims=keepdims), "bool")
    if op in ("mean", "logsumexp") and not is_float(x.dtype):  # ONNX allows int inputs
        y = n.op(op, n.cast(x, "float64"), axes=axes, keepdims=keepdims)
        return n.cast(y, x.dtype)
    return n.op(op, x, axes=axes, keepdims=keepdims)


def _empty_extreme(n: NodeContext, x: Ref, op: str, axes, keepdims: bool) -> Ref:
    """ONNX's max (min) over nothing: -inf (inf), or the dtype's lowest (highest) value."""
    axes = {a % x.rank for a in (axes or range(x.rank))}
    shape = tuple(1 if a in axes else d for a, d in enumerate(x.shape) if keepdims or a not in axes)
    if x.dtype == "bool":
        value = op == "min"
    elif is_float(x.dtype):
        value = float("-inf") if op == "max" else float("inf")
    else:
        info = np.iinfo(to_numpy_dtype(x.dtype))
        value = int(info.min if op == "max" else info.max)
    return n.op("full", shape=shape, value=value, dtype=x.dtype)


_REDUCE = Spec(ranks={1: (1, 1)}, attrs={"axes": axes(), "keepdims": flag,
                                         "noop_with_empty_axes": flag}, values={1: axes()})


def _reduction(onnx_op: str, kiln_op: str, versions: tuple[int, ...]) -> None:
    def convert(n: NodeContext) -> Ref:
        return _reduce(n, kiln_op)

    converter(onnx_op, *versions, spec=_REDUCE)(convert)


for _onnx, _kiln, _versions in (
    ("ReduceSum", "sum", (13,)), ("ReduceMean", "mean", (13, 18)),
    ("ReduceProd", "prod", (13, 18)), ("ReduceMax", "max", (13, 18, 20)),
    ("ReduceMin", "min", (13, 18, 20)), ("ReduceLogSumExp", "logsumexp", (13, 18, 28)),
):
    _reduction(_onnx, _kiln, _versions)


@converter("ReduceL1", 13, 18, spec=_REDUCE)
def reduce_l1(n: NodeContext) -> Ref:
    return _reduce(n, "sum", n.op("abs", n.x))


@converter("ReduceL2", 13, 18, spec=_REDUCE)
def reduce_l2(n: NodeContext) -> Ref:
    total = _reduce(n, "sum", n.op("mul", n.x, n.x))
    if is_float(total.dtype):
        return n.op("sqrt", total)
    return n.cast(n.op("sqrt", n.cast(total, "float64")), total.dtype)


@converter("ReduceSumSquare", 13, 18, spec=_REDUCE)
def reduce_sum_square(n: NodeContext) -> Ref:
    return _reduce(n, "sum", n.op("mul", n.x, n.x))


@converter("ReduceLogSum", 13, 18, 28, spec=_REDUCE)
def reduce_log_sum(n: NodeContext) -> Ref:
    return n.op("log", _reduce(n, "sum"))


def _arg(n: NodeContext, op: str) -> Ref:
    x, axis, keepdims = n.x, int(n.attr("axis", 0)), bool(n.attr("keepdims", 1))
    if not n.attr("select_last_index", 0):
        return n.op(op, x, axis=axis, keepdims=keepdims)
    # the last extreme: the first one of the reversed axis, counted from the end
    size = static(n, x.shape[axis], "the axis of select_last_index")
    flipped = n.op("slice", x, starts=(-1,), ends=(-(2**63),), axes=(axis,), steps=(-1,))
    idx = n.op(op, flipped, axis=axis, keepdims=keepdims)
    return n.op("sub", n.const_like(size - 1, idx), idx)


_ARG = Spec(attrs={"axis": axis(), "keepdims": flag, "select_last_index": flag})


@converter("ArgMax", 13, spec=_ARG)
def argmax(n: NodeContext) -> Ref:
    return _arg(n, "argmax")


@converter("ArgMin", 13, spec=_ARG)
def argmin(n: NodeContext) -> Ref:
    return _arg(n, "argmin")


_ALONG_AXIS = Spec(attrs={"axis": axis()})


@converter("Softmax", 13, spec=_ALONG_AXIS)
def softmax(n: NodeContext) -> Ref:
    return n.op("softmax", n.x, axis=int(n.attr("axis", -1)))


@converter("LogSoftmax", 13, spec=_ALONG_AXIS)
def log_softmax(n: NodeContext) -> Ref:
    return n.op("log_softmax", n.x, axis=int(n.attr("axis", -1)))


def along(values: np.ndarray, axis: int, rank: int) -> np.ndarray:
    """A 1-D array shaped to broadcast along ``axis`` of a rank-``rank`` tensor."""
    shape = [1] * rank
    shape[axis % rank] = len(values)
    return values.reshape(shape)


@converter("Hardmax", 13, spec=_ALONG_AXIS)
def hardmax(n: NodeContext) -> Ref:
    x, axis = n.x, int(n.attr("axis", -1))
    best = n.op("argmax", x, axis=axis, keepdims=True)
    size = static(n, x.shape[axis], "Hardmax's axis")
    check_constant(size, "Hardmax's positions")
    positions = along(np.arange(size, dtype=np.int64), axis, x.rank)
    return n.cast(n.op("equal", best, positions), x.dtype)


@converter("LpNormalization", 1, 22, spec=Spec(attrs={"axis": axis(), "p": one_of(1, 2)}))
def lp_normalization(n: NodeContext) -> Ref:
    x, axis, p = n.x, int(n.attr("axis", -1)), int(n.attr("p", 2))
    if p == 1:
        norm = n.op("sum", n.op("abs", x), axes=(axis,), keepdims=True)
    else:
        norm = n.op("sqrt", n.op("sum", n.op("mul", x, x), axes=(axis,), keepdims=True))
    zero = n.op("equal", norm, n.const_like(0, norm))  # 0 / 0 is 0 here
    return n.op("where", zero, n.const_like(0, x), n.op("div", x, norm))


@converter("CumSum", 11, 14, spec=Spec(ranks={0: (1, None), 1: (0, 1)},
                                        attrs={"exclusive": flag, "reverse": flag},
                                        values={1: axes()}))
def cumsum(n: NodeContext) -> Ref:
    """A matmul with a triangular matrix of ones along the summed axis."""
    x = n.x
    axis = n.scalar_input(1) % x.rank
    size = x.shape[axis]
    if not isinstance(size, int):
        raise n.unsupported(f"CumSum needs a static size along axis {axis}, got {x.type}")
    check_constant(size * size, f"CumSum's [{size}, {size}] triangular matrix")
    i, j = np.arange(size)[:, None], np.arange(size)[None, :]
    exclusive, reverse = n.attr("exclusive", 0), n.attr("reverse", 0)
    keep = (i >= j) if reverse else (i <= j)  # out[j] = sum of x[i] over the kept i
    if exclusive:
        keep &= i != j
    perm = [d for d in range(x.rank) if d != axis] + [axis]
    moved = n.op("transpose", x, perm=tuple(perm)) if axis != x.rank - 1 else x
    summed = n.op("matmul", moved, keep.astype(to_numpy_dtype(x.dtype)))
    if axis == x.rank - 1:
        return summed
    back = tuple(int(k) for k in np.argsort(perm))
    return n.op("transpose", summed, perm=back)
