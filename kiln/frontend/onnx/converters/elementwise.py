"""Elementwise ONNX ops: arithmetic, comparisons, logic, unary math, Where, Cast, Clip, Mod."""

from __future__ import annotations

import math

from kiln.frontend.onnx.context import NodeContext, Ref
from kiln.frontend.onnx.dtypes import to_kiln_dtype
from kiln.frontend.onnx.registry import converter
from kiln.frontend.onnx.validate import Spec, flag
from kiln.ir.types import is_float

# ONNX op -> (kiln op, schema versions); all of these map one to one
_BINARY = {
    "Add": ("add", (13, 14)), "Sub": ("sub", (13, 14)), "Mul": ("mul", (13, 14)),
    "Div": ("div", (13, 14)),
    "Equal": ("equal", (13, 19)), "Less": ("less", (13,)), "LessOrEqual": ("less_equal", (12, 16)),
    "Greater": ("greater", (13,)), "GreaterOrEqual": ("greater_equal", (12, 16)),
    "And": ("logical_and", (7,)), "Or": ("logical_or", (7,)), "Xor": ("logical_xor", (7,)),
}
_UNARY = {
    "Abs": ("abs", (13,)), "Neg": ("neg", (13,)), "Sign": ("sign", (13,)),
    "Exp": ("exp", (13,)), "Log": ("log", (13,)), "Sqrt": ("sqrt", (13,)),
    "Reciprocal": ("reciprocal", (13,)), "Sin": ("sin", (7, 22)), "Cos": ("cos", (7, 22)),
    "Erf": ("erf", (13,)), "Floor": ("floor", (13,)), "Ceil": ("ceil", (13,)),
    "Round": ("round", (11, 22)), "Not": ("logical_not", (1,)),
}


def _register_simple() -> None:
    for onnx_op, (kiln_op, versions) in _BINARY.items():
        def binary(n: NodeContext, op: str = kiln_op) -> Ref:
            return n.op(op, n.inputs[0], n.inputs[1])

        converter(onnx_op, *versions)(binary)
    for onnx_op, (kiln_op, versions) in _UNARY.items():
        def unary(n: NodeContext, op: str = kiln_op) -> Ref:
            return n.op(op, n.x)

        converter(onnx_op, *versions)(unary)


_register_simple()


@converter("Pow", 13, 15)
def pow_(n: NodeContext) -> Ref:
    """Pow's exponent may have another dtype than its base; the result has the base's."""
    x, y = n.inputs
    if x.dtype == y.dtype:
        return n.op("pow", x, y)
    if is_float(x.dtype) or not is_float(y.dtype):
        return n.op("pow", x, n.cast(y, x.dtype))
    return n.cast(n.op("pow", n.cast(x, y.dtype), y), x.dtype)


def _variadic(n: NodeContext, op: str) -> Ref:
    out = n.inputs[0]
    for other in n.inputs[1:]:
        out = n.op(op, out, other)
    return out


@converter("Max", 13)
def max_(n: NodeContext) -> Ref:
    return _variadic(n, "maximum")


@converter("Min", 13)
def min_(n: NodeContext) -> Ref:
    return _variadic(n, "minimum")


@converter("Sum", 13)
def sum_(n: NodeContext) -> Ref:
    return _variadic(n, "add")


@converter("Mean", 13)
def mean(n: NodeContext) -> Ref:
    total = _variadic(n, "add")
    return n.op("div", total, n.const_like(len(n.inputs), total)) if len(n.inputs) > 1 else total


# -- unary math kiln has no op for -------------------------------------------------------------


@converter("Tan", 7, 22)
def tan(n: NodeContext) -> Ref:
    return n.op("div", n.op("sin", n.x), n.op("cos", n.x))


@converter("Sinh", 9, 22)
def sinh(n: NodeContext) -> Ref:
    x = n.x
    return n.op("mul", n.op("sub", n.op("exp", x), n.op("exp", n.op("neg", x))), 0.5)


@converter("Cosh", 9, 22)
def cosh(n: NodeContext) -> Ref:
    x = n.x
    return n.op("mul", n.op("add", n.op("exp", x), n.op("exp", n.op("neg", x))), 0.5)


@converter("Asinh", 9, 22)
def asinh(n: NodeContext) -> Ref:
    x = n.x  # log(x + sqrt(x^2 + 1))
    return n.op("log", n.op("add", x, n.op("sqrt", n.op("add", n.op("mul", x, x), 1.0))))


@converter("Acosh", 9, 22)
def acosh(n: NodeContext) -> Ref:
    x = n.x  # log(x + sqrt(x^2 - 1))
    return n.op("log", n.op("add", x, n.op("sqrt", n.op("sub", n.op("mul", x, x), 1.0))))


@converter("Atanh", 9, 22)
def atanh(n: NodeContext) -> Ref:
    x = n.x  # log((1 + x) / (1 - x)) / 2
    ratio = n.op("div", n.op("add", x, 1.0), n.op("sub", n.const_like(1.0, x), x))
    return n.op("mul", n.op("log", ratio), 0.5)


@converter("IsNaN", 13, 20)
def isnan(n: NodeContext) -> Ref:
    return n.op("not_equal", n.x, n.x)


@converter("IsInf", 10, 20, spec=Spec(attrs={"detect_positive": flag,
                                              "detect_negative": flag}))
def isinf(n: NodeContext) -> Ref:
    x = n.x
    pos, neg = n.attr("detect_positive", 1), n.attr("detect_negative", 1)
    hits = []
    if pos:
        hits.append(n.op("equal", x, n.const_like(math.inf, x)))
    if neg:
        hits.append(n.op("equal", x, n.const_like(-math.inf, x)))
    if not hits:  # detects nothing: all false
        return n.op("greater", x, n.const_like(math.inf, x))
    return hits[0] if len(hits) == 1 else n.op("logical_or", *hits)


# -- selection, casts, clipping ----------------------------------------------------------------


@converter("Where", 9, 16)
def where(n: NodeContext) -> Ref:
    return n.op("where", *n.inputs)


@converter("Cast", 13, 19, 21, 23, 24, 25, 28)
def cast(n: NodeContext) -> Ref:
    dtype = to_kiln_dtype(n.attr("to"), "Cast's target 'to'")
    return n.cast(n.x, dtype)


@converter("CastLike", 15, 19, 21, 23, 24, 25)
def cast_like(n: NodeContext) -> Ref:
    return n.cast(n.x, n.inputs[1].dtype)


@converter("Clip", 13, spec=Spec(ranks={1: (0, 0), 2: (0, 0)}))
def clip(n: NodeContext) -> Ref:
    x, lo, hi = n.x, n.input(1), n.input(2)
    if all(r is None or r.is_const for r in (lo, hi)):
        bounds = [None if r is None else r.const.reshape(-1)[0].item() for r in (lo, hi)]
        if bounds[0] is None or bounds[1] is None or bounds[0] <= bounds[1]:
            return n.op("clip", x, min=bounds[0], max=bounds[1])
    out = x  # bounds computed in the graph (or min > max, where ONNX gives max)
    if lo is not None:
        out = n.op("maximum", out, lo)
    if hi is not None:
        out = n.op("minimum", out, hi)
    return out


def _trunc(n: NodeContext, q: Ref) -> Ref:
    """Rounding toward zero of a float tensor."""
    return n.op("where", n.op("less", q, n.const_like(0, q)), n.op("ceil", q), n.op("floor", q))


@converter("Mod", 13, 28, spec=Spec(attrs={"fmod": flag}))
def mod(n: NodeContext) -> Ref:
    """fmod=0: a - floor(a / b) * b (the sign of the divisor, Python's %); fmod=1:
    a - trunc(a / b) * b (the sign of the dividend, C's fmod)."""
    a, b = n.inputs
    fmod = bool(n.attr("fmod", 0))
    if is_float(a.dtype):
        q = n.op("div", a, b)
        q = _trunc(n, q) if fmod else n.op("floor", q)
        rem = n.op("sub", a, n.op("mul", b, q))
        # a finite a over an infinite b: a itself (or, for fmod=0 and signs that differ, b)
        inf = n.const_like(math.inf, a)
        edge = n.op("logical_and", n.op("equal", n.op("abs", b), inf),
                    n.op("less", n.op("abs", a), inf))
        keep = a
        if not fmod:
            zero = n.const_like(0, a)
            same = n.op("equal", n.op("less", a, zero), n.op("less", b, zero))
            keep = n.op("where", n.op("logical_or", same, n.op("equal", a, zero)), a, b)
        return n.op("where", edge, keep, rem)
    rem = n.op("sub", a, n.op("mul", b, n.op("div", a, b)))  # kiln's int div truncates
    if fmod:
        return rem
    zero = n.const_like(0, rem)
    fix = n.op("logical_and", n.op("not_equal", rem, zero),
               n.op("not_equal", n.op("less", rem, zero), n.op("less", b, zero)))
    return n.op("where", fix, n.op("add", rem, b), rem)
