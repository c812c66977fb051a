"""Elementwise ops: arithmetic, comparisons and logic with numpy broadcasting, unary math,
``where``, ``cast`` and ``clip``. Binary ops need equal dtypes (kiln never promotes silently).
"""

from __future__ import annotations

import numpy as np

from kiln.errors import AttributeError_, InputError
from kiln.ir.ops.registry import (
    ELEMENTWISE,
    KEEP,
    broadcast_shapes,
    elementwise_flops,
    fail,
    register,
    same_as_input,
    same_dtype,
)
from kiln.ir.types import DTYPES, TensorType, is_float, to_numpy_dtype


def _binary(types, attrs):
    return TensorType(broadcast_shapes(*(t.shape for t in types)), same_dtype(types))


def _arith(types, attrs):
    """sub, div, pow: numpy has no bool form of these (add, mul, maximum, minimum do)."""
    if types[0].dtype == "bool":
        fail("needs numeric inputs, got bool")
    return _binary(types, attrs)


def _compare(types, attrs):
    same_dtype(types)
    return TensorType(broadcast_shapes(*(t.shape for t in types)), "bool")


def _logical(types, attrs):
    for t in types:
        if t.dtype != "bool":
            fail(f"logical ops take bool inputs, got {t.dtype}")
    return TensorType(broadcast_shapes(*(t.shape for t in types)), "bool")


def _numeric(types, attrs):
    if types[0].dtype == "bool":
        fail("needs a numeric input, got bool")
    return types[0]


_flops = elementwise_flops(1)

# -- binary arithmetic -------------------------------------------------------------------------


@register("add", kind=ELEMENTWISE, infer=_binary, arity=2, flops=_flops)
def add(a, b):
    return np.add(a, b)


@register("sub", kind=ELEMENTWISE, infer=_arith, arity=2, flops=_flops)
def sub(a, b):
    return np.subtract(a, b)


@register("mul", kind=ELEMENTWISE, infer=_binary, arity=2, flops=_flops)
def mul(a, b):
    return np.multiply(a, b)


@register("div", kind=ELEMENTWISE, infer=_arith, arity=2, flops=_flops)
def div(a, b):
    """True division for floats (IEEE: x / 0 is +-inf or NaN); for integers, C-style division
    truncating toward zero, where a zero divisor is an InputError (as onnxruntime and PyTorch
    raise) and INT_MIN / -1 wraps to INT_MIN."""
    if np.issubdtype(a.dtype, np.integer):
        if (b == 0).any():
            at = [int(i) for i in np.argwhere(b == 0)[0]]
            raise InputError(f"integer division by zero: divisor 0 at {at}")
        # exact in integers (a float quotient loses int64 digits above 2**53): floor, then
        # step back toward zero where the division was inexact and the signs differ
        q, r = np.divmod(a, b)
        return np.where((r != 0) & ((a < 0) != (b < 0)), q + 1, q).astype(a.dtype)
    return np.true_divide(a, b)


@register("pow", kind=ELEMENTWISE, precision=KEEP, infer=_arith, arity=2, flops=_flops)
def pow_(a, b):
    return np.power(a, b)


@register("maximum", kind=ELEMENTWISE, infer=_binary, arity=2, flops=_flops)
def maximum(a, b):
    return np.maximum(a, b)


@register("minimum", kind=ELEMENTWISE, infer=_binary, arity=2, flops=_flops)
def minimum(a, b):
    return np.minimum(a, b)


# -- comparisons and logic ---------------------------------------------------------------------


@register("equal", kind=ELEMENTWISE, infer=_compare, arity=2, flops=_flops)
def equal(a, b):
    return np.equal(a, b)


@register("not_equal", kind=ELEMENTWISE, infer=_compare, arity=2, flops=_flops)
def not_equal(a, b):
    return np.not_equal(a, b)


@register("less", kind=ELEMENTWISE, infer=_compare, arity=2, flops=_flops)
def less(a, b):
    return np.less(a, b)


@register("less_equal", kind=ELEMENTWISE, infer=_compare, arity=2, flops=_flops)
def less_equal(a, b):
    return np.less_equal(a, b)


@register("greater", kind=ELEMENTWISE, infer=_compare, arity=2, flops=_flops)
def greater(a, b):
    return np.greater(a, b)


@register("greater_equal", kind=ELEMENTWISE, infer=_compare, arity=2, flops=_flops)
def greater_equal(a, b):
    return np.greater_equal(a, b)


@register("logical_and", kind=ELEMENTWISE, infer=_logical, arity=2, flops=_flops)
def logical_and(a, b):
    return np.logical_and(a, b)


@register("logical_or", kind=ELEMENTWISE, infer=_logical, arity=2, flops=_flops)
def logical_or(a, b):
    return np.logical_or(a, b)


@register("logical_xor", kind=ELEMENTWISE, infer=_logical, arity=2, flops=_flops)
def logical_xor(a, b):
    return np.logical_xor(a, b)


@register("logical_not", kind=ELEMENTWISE, infer=_logical, arity=1, flops=_flops)
def logical_not(a):
    return np.logical_not(a)


# -- unary math --------------------------------------------------------------------------------


@register("neg", kind=ELEMENTWISE, infer=_numeric, flops=_flops)
def neg(x):
    return np.negative(x)


@register("abs", kind=ELEMENTWISE, infer=_numeric, flops=_flops)
def abs_(x):
    return np.abs(x)


@register("sign", kind=ELEMENTWISE, infer=_numeric, flops=_flops)
def sign(x):
    return np.sign(x)


@register("exp", kind=ELEMENTWISE, infer=same_as_input(floats=True), flops=_flops)
def exp(x):
    return np.exp(x)


@register("log", kind=ELEMENTWISE, infer=same_as_input(floats=True), flops=_flops)
def log(x):
    return np.log(x)


@register("sqrt", kind=ELEMENTWISE, infer=same_as_input(floats=True), flops=_flops)
def sqrt(x):
    return np.sqrt(x)


@register("rsqrt", kind=ELEMENTWISE, infer=same_as_input(floats=True), flops=elementwise_flops(2))
def rsqrt(x):
    return (1 / np.sqrt(x)).astype(x.dtype)


@register("reciprocal", kind=ELEMENTWISE, infer=same_as_input(floats=True), flops=_flops)
def reciprocal(x):
    return np.reciprocal(x)


@register("sin", kind=ELEMENTWISE, infer=same_as_input(floats=True), flops=_flops)
def sin(x):
    return np.sin(x)


@register("cos", kind=ELEMENTWISE, infer=same_as_input(floats=True), flops=_flops)
def cos(x):
    return np.cos(x)


@register("erf", kind=ELEMENTWISE, infer=same_as_input(floats=True), flops=_flops)
def erf(x):
    from math import erf as _erf

    return np.vectorize(_erf, otypes=[np.float64])(x).astype(x.dtype)


@register("floor", kind=ELEMENTWISE, infer=same_as_input(floats=True), flops=_flops)
def floor(x):
    return np.floor(x)


@register("ceil", kind=ELEMENTWISE, infer=same_as_input(floats=True), flops=_flops)
def ceil(x):
    return np.ceil(x)


@register("round", kind=ELEMENTWISE, infer=same_as_input(floats=True), flops=_flops)
def round_(x):
    """Round half to even, as numpy, PyTorch and ONNX do."""
    return np.round(x)


# -- selection, casts, clipping ----------------------------------------------------------------


def _where(types, attrs):
    cond, a, b = types
    if cond.dtype != "bool":
        fail(f"where's condition must be bool, got {cond.dtype}")
    return TensorType(broadcast_shapes(cond.shape, a.shape, b.shape), same_dtype([a, b]))


@register("where", kind=ELEMENTWISE, infer=_where, arity=3, flops=_flops)
def where(cond, a, b):
    return np.where(cond, a, b)


def _cast(types, attrs):
    if attrs["dtype"] not in DTYPES:  # an AttributeError_, so the message names the node
        raise AttributeError_(f"unknown dtype {attrs['dtype']!r}; kiln knows {', '.join(DTYPES)}")
    return types[0].with_dtype(attrs["dtype"])


@register("cast", kind=ELEMENTWISE, infer=_cast, attrs={"dtype": "float32"}, flops=lambda i, o,
          a: 0)
def cast(x, dtype):
    """Float to int truncates toward zero, saturating at the integer type's bounds, and NaN
    becomes 0 (C leaves both undefined); to bool is ``x != 0`` (NaN is true)."""
    target = to_numpy_dtype(dtype)
    if is_float(x.dtype.name) and np.issubdtype(target, np.integer):
        return _saturating_int(x, target)
    return x.astype(target)


def _saturating_int(x: np.ndarray, target: np.dtype) -> np.ndarray:
    info = np.iinfo(target)
    wide = x.astype(np.float64)  # exact for every float dtype
    top = float(info.max + 1)  # a power of two: exact
    inside = (wide >= info.min) & (wide < top)
    out = np.where(inside, wide, 0).astype(target)
    out = np.where(wide >= top, np.asarray(info.max, target), out)
    return np.where(wide < info.min, np.asarray(info.min, target), out)


def _clip(types, attrs):
    t = _numeric(types, attrs)
    lo, hi = attrs["min"], attrs["max"]
    if lo is not None and hi is not None and lo > hi:
        fail(f"clip min {lo} > max {hi}")
    if not is_float(t.dtype) and any(isinstance(v, float) for v in (lo, hi)):
        fail(f"clip bounds {lo}, {hi} must be ints for {t.dtype}")
    return t


@register("clip", kind=ELEMENTWISE, infer=_clip, attrs={"min": None, "max": None}, flops=_flops)
def clip(x, min, max):
    """Bounds are attributes; None means unbounded on that side. NaN stays NaN, and a value
    equal to a bound is kept as it is (-0.0 clipped at 0.0 stays -0.0)."""
    out = x
    if min is not None:
        out = np.where(out < min, np.asarray(min, x.dtype), out)
    if max is not None:
        out = np.where(out > max, np.asarray(max, x.dtype), out)
    return out


@register("identity", kind=ELEMENTWISE, infer=same_as_input(), flops=lambda i, o, a: 0)
def identity(x):
    return x.copy()

