"""TE builders of elementwise ops and activations (broadcasting as numpy does)."""

from __future__ import annotations

import math

import numpy as np
import tvm_ffi
from tvm import te, tirx

from kiln.codegen.lower import lowering
from kiln.codegen.ops import common as c
from kiln.codegen.ops.checks import checked_divisor
from kiln.codegen.ops.common import const, dtype_of, elementwise
from kiln.ir.types import is_float


def _binary(op: str, fn):
    @lowering(op)
    def build(inputs, attrs, out_types):
        return elementwise(out_types[0], fn, *inputs, name=op)

    return build


def _sign(x):
    one, zero = const(1, dtype_of(x)), const(0, dtype_of(x))
    rest = tirx.Select(c.isnan(x), x, zero) if is_float(dtype_of(x)) else zero
    return tirx.Select(x > zero, one, tirx.Select(x < zero, -one, rest))


def _not_equal(a, b):
    """``a != b`` true for NaN too (TVM emits an ordered compare, false when one is NaN)."""
    if is_float(dtype_of(a)):
        return tirx.Or(a != b, tirx.Or(c.isnan(a), c.isnan(b)))
    return a != b


def _ints_if_bool(fn):
    """LLVM codegen compares bools as floats (an invalid fcmp): compare them as int8."""

    def wrapped(a, b):
        if dtype_of(a) == "bool":
            a, b = a.astype("int8"), b.astype("int8")
        return fn(a, b)

    return wrapped


def _read_of(x):
    """(tensor, indices) that ``x`` reads (a te TensorSlice or a ProducerLoad), else None."""
    for attr in ("tensor", "producer"):
        t = getattr(x, attr, None)
        if t is not None:
            return t, x.indices
    return None


def _computed(x) -> bool:
    """Whether ``x`` reads a computed stage (one that fusion inlines), not a group input."""
    read = _read_of(x)
    return read is not None and isinstance(read[0].op, te.ComputeOp)


def _inlined_read_once(fn):
    """``fn(a, b)`` (maximum, minimum) reads ``b`` once and ``a`` twice: an operand computed in
    the same fused group goes to ``b``, so a chain of fused ops stays linear in size."""

    def wrapped(a, b):
        if _computed(a) and not _computed(b):
            return fn(b, a)
        return fn(a, b)

    return wrapped


def _same_load(a, b) -> bool:
    """Whether ``a`` and ``b`` read the same tensor at the same indices."""
    ra, rb = _read_of(a), _read_of(b)
    return (ra is not None and rb is not None and ra[0].same_as(rb[0])
            and bool(tvm_ffi.structural_equal(list(ra[1]), list(rb[1]))))


def _nan_aware(fn, nan_result):
    """TVM's simplifier folds ``x == x`` to true and ``x != x`` to false, which NaN breaks: a
    float compared with itself is an isnan test (what ONNX's IsNaN imports as)."""

    def wrapped(a, b):
        if is_float(dtype_of(a)) and _same_load(a, b):
            return nan_result(c.isnan(a))
        return fn(a, b)

    return wrapped


_BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "pow": lambda a, b: tirx.power(a, b),
    "maximum": _inlined_read_once(c.maximum),
    "minimum": _inlined_read_once(c.minimum),
    "equal": _nan_aware(_ints_if_bool(lambda a, b: a == b), tirx.Not),
    "not_equal": _nan_aware(_ints_if_bool(_not_equal), lambda nan: nan),
    "less": _ints_if_bool(lambda a, b: a < b),
    "less_equal": _ints_if_bool(lambda a, b: a <= b),
    "greater": _ints_if_bool(lambda a, b: a > b),
    "greater_equal": _ints_if_bool(lambda a, b: a >= b),
    "logical_and": tirx.And,
    "logical_or": tirx.Or,
    "logical_xor": _ints_if_bool(lambda a, b: a != b),
}

_UNARY = {
    "neg": lambda x: -x if dtype_of(x) != "bool" else x,
    "abs": tirx.abs,
    "sign": _sign,
    "exp": c.exp,
    "log": tirx.log,
    "sqrt": tirx.sqrt,
    "rsqrt": lambda x: const(1.0, dtype_of(x)) / tirx.sqrt(x),
    "reciprocal": lambda x: const(1.0, dtype_of(x)) / x,
    "sin": tirx.sin,
    "cos": tirx.cos,
    "erf": c.erf,
    "floor": tirx.floor,
    "ceil": tirx.ceil,
    "round": tirx.nearbyint,  # half to even under the default rounding mode, as numpy
    "logical_not": tirx.Not,
    "identity": lambda x: x,
    "relu": lambda x: c.at_least(x, const(0, dtype_of(x))),
    "sigmoid": c.sigmoid,
    "tanh": c.tanh,
    "silu": lambda x: x * c.sigmoid(x),
    "hardswish": lambda x: x * _clip(x + const(3, dtype_of(x)), 0, 6) / const(6, dtype_of(x)),
}

for _op, _fn in _BINARY.items():
    _binary(_op, _fn)
for _op, _fn in _UNARY.items():
    _binary(_op, _fn)


@lowering("div")
def div(inputs, attrs, out_types):
    a, b = inputs
    if is_float(dtype_of(a)):
        return elementwise(out_types[0], lambda x, y: x / y, a, b, name="div")
    return elementwise(out_types[0], _int_div, a, checked_divisor(b, c.tiling(attrs).raises),
                       name="div")


def _int_div(a, b):
    """C division, truncating toward zero, of a nonzero divisor; INT_MIN / -1 wraps to INT_MIN
    as in numpy (x86's idiv would trap on it)."""
    dt = dtype_of(a)
    if dt.startswith("uint"):
        return tirx.truncdiv(a, b)
    minus_one = b == const(-1, dt)
    q = tirx.truncdiv(a, tirx.Select(minus_one, const(1, dt), b))
    return tirx.Select(minus_one, _wrapping_neg(a), q)


def _wrapping_neg(x):
    """-x, and INT_MIN for INT_MIN: TVM emits integer arithmetic with no-wrap flags (LLVM
    poison on overflow, unsigned too), so the one overflowing case is a select of its own."""
    lowest = tirx.min_value(dtype_of(x))
    return tirx.Select(x == lowest, lowest, -x)


@lowering("where")
def where(inputs, attrs, out_types):
    return elementwise(out_types[0], tirx.Select, *inputs, name="where")


@lowering("cast")
def cast(inputs, attrs, out_types):
    dtype = attrs["dtype"]
    x = inputs[0]
    if dtype == "bool":
        fn = lambda v: _not_equal(v, const(0, dtype_of(x)))  # noqa: E731  (NaN is true)
    elif is_float(dtype_of(x)) and not is_float(dtype):
        fn = lambda v: _float_to_int(v, dtype)  # noqa: E731
    else:
        fn = lambda v: v.astype(dtype)  # noqa: E731
    return elementwise(out_types[0], fn, x, name="cast")


def _float_to_int(v, dtype: str):
    """Truncation toward zero that saturates at ``dtype``'s bounds, NaN giving 0 (as the
    interpreter's cast; LLVM's fptosi is undefined outside the range)."""
    if dtype_of(v) in ("float16", "bfloat16"):
        v = v.astype("float32")  # exact, and the bounds below are float32 constants
    fdt, info = dtype_of(v), np.iinfo(dtype)
    low = const(float(info.min), fdt)
    if np.finfo(fdt).nmant + 1 >= info.bits:
        # the bounds are exact floats: clamp, and read v only twice (a chain of casts, as
        # in requantizations, inlines each operand into the next: six reads a cast grew
        # three of them 200-fold, and TVM took 20 s over such a kernel)
        clamped = tirx.min(tirx.max(v, low), const(float(info.max), fdt))
        return tirx.Select(c.isnan(v), const(0, dtype), clamped.astype(dtype))
    top = const(float(info.max + 1), fdt)  # a power of two
    inside = tirx.all(v >= low, v < top)  # false for NaN
    exact = tirx.Select(inside, v, const(0, fdt)).astype(dtype)  # no fptosi out of range
    zero = const(0, fdt)
    beyond = tirx.Select(v > zero, const(int(info.max), dtype),
                         tirx.Select(v < zero, const(int(info.min), dtype), const(0, dtype)))
    return tirx.Select(inside, exact, beyond)


def _clip(x, lo, hi):
    if lo is not None:
        x = c.at_least(x, const(lo, dtype_of(x)))
    if hi is not None:
        x = c.at_most(x, const(hi, dtype_of(x)))
    return x


@lowering("clip")
def clip(inputs, attrs, out_types):
    return elementwise(out_types[0], lambda x: _clip(x, attrs["min"], attrs["max"]), *inputs,
                       name="clip")


@lowering("hardtanh")
def hardtanh(inputs, attrs, out_types):
    fn = lambda x: _clip(x, attrs["min_val"], attrs["max_val"])  # noqa: E731
    return elementwise(out_types[0], fn, *inputs, name="hardtanh")


@lowering("leaky_relu")
def leaky_relu(inputs, attrs, out_types):
    def fn(x):
        dt = dtype_of(x)
        return tirx.Select(x >= const(0, dt), x, x * const(attrs["alpha"], dt))

    return elementwise(out_types[0], fn, *inputs, name="leaky_relu")


@lowering("elu")
def elu(inputs, attrs, out_types):
    def fn(x):
        dt = dtype_of(x)
        zero = const(0, dt)
        neg = const(attrs["alpha"], dt) * (c.exp(c.at_most(x, zero)) - const(1, dt))
        return tirx.Select(x > zero, x, neg)

    return elementwise(out_types[0], fn, *inputs, name="elu")


@lowering("gelu")
def gelu(inputs, attrs, out_types):
    def fn(x):
        half, one = const(0.5, dtype_of(x)), const(1.0, dtype_of(x))
        if attrs["approximate"] == "tanh":
            k = const(math.sqrt(2 / math.pi), dtype_of(x))
            inner = k * (x + const(0.044715, dtype_of(x)) * x * x * x)
            return half * x * (one + c.tanh(inner))
        return half * x * (one + c.erf(x * const(1 / math.sqrt(2), dtype_of(x))))

    return elementwise(out_types[0], fn, *inputs, name="gelu")


@lowering("softplus")
def softplus(inputs, attrs, out_types):
    def fn(x):
        dt = dtype_of(x)
        beta, thr = const(attrs["beta"], dt), const(attrs["threshold"], dt)
        bx = x * beta
        soft = tirx.log1p(c.exp(c.at_most(bx, thr))) / beta
        return tirx.Select(bx > thr, x, soft)

    return elementwise(out_types[0], fn, *inputs, name="softplus")


@lowering("heaviside")
def heaviside(inputs, attrs, out_types):
    def fn(x):
        zero, one = const(0, dtype_of(x)), const(1, dtype_of(x))
        at_zero = const(attrs["value_at_zero"], dtype_of(x))
        at_zero = tirx.Select(c.isnan(x), x, at_zero)  # NaN stays NaN, as np.heaviside
        return tirx.Select(x > zero, one, tirx.Select(x < zero, zero, at_zero))

    return elementwise(out_types[0], fn, *inputs, name="heaviside")

