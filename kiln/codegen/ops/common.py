"""Helpers shared by the TE builders: broadcasting, constants, and fast float32 math.

The fast functions are TVM topi's polynomial forms written on expressions (so that they
compose inside one ``te.compute``), which LLVM vectorizes inline; ``te.exp``/``tanh``/``erf``
compile to scalar libm calls even in vectorized loops. Measured over 2M random float32 inputs
against float64 references: fast_exp max relative error 3.1e-7 on [-87, 88]; fast_tanh max
absolute error 3.2e-7; fast_erf max absolute error 3.8e-7. Other dtypes use the exact
intrinsics (float16/bfloat16 computing in float32).
"""

from __future__ import annotations

import math
from typing import Sequence

from tvm import te, tirx

from kiln.codegen.lower import Tiling, te_extent
from kiln.errors import KilnError
from kiln.ir.types import HALF_DTYPES, TensorType, is_float


def const(value, dtype: str):
    """A constant of ``dtype`` (inf and nan allowed for floats)."""
    if dtype == "bool":
        return tirx.const(bool(value), "bool")
    return tirx.const(value, dtype)


def dtype_of(x) -> str:
    """The dtype name of a tensor element or an expression."""
    return str(x.dtype if hasattr(x, "dtype") else x.ty)


def shape_of(t) -> tuple:
    """A TE tensor's shape: ints, and TIR expressions for symbolic sizes."""
    return tuple(te_extent(d) for d in t.shape)


def bcast(t, out_shape: Sequence[int]):
    """``f(*idx)`` reading ``t`` at output index ``idx`` under numpy broadcasting."""
    shape = shape_of(t)
    offset = len(out_shape) - len(shape)

    def read(*idx):
        sub = [0 if shape[i] == 1 and out_shape[offset + i] != 1 else idx[offset + i]
               for i in range(len(shape))]
        return t[tuple(sub)] if sub else t[()]

    return read


def flat_index(idx, shape) -> object:
    """Row-major flat position of ``idx`` in ``shape``."""
    flat = 0
    for i, d in zip(idx, shape):
        flat = flat * d + i
    return flat


def unflat_index(flat, shape) -> list:
    """Inverse of ``flat_index``."""
    out = []
    for d in reversed(shape):
        out.append(flat % d if d != 1 else 0)
        flat = flat // d if d != 1 else flat
    return out[::-1]


def reshape(t, shape: Sequence[int], name: str = "reshape"):
    """``t`` viewed in ``shape`` (same element count, row-major order)."""
    src = shape_of(t)
    shape = tuple(shape)
    if src == shape:
        return te.compute(shape, lambda *i: t[i] if i else t[()], name=name)
    if all(d == 1 for d in src):
        return te.compute(shape, lambda *i: t[(0,) * len(src)] if src else t[()], name=name)

    def fn(*idx):
        src_idx = unflat_index(flat_index(idx, shape), src)
        return t[tuple(src_idx)]

    return te.compute(shape, fn, name=name)


def elementwise(out: TensorType, fn, *inputs, name: str):
    """``out[idx] = fn(*(x[bcast idx] for x in inputs))``."""
    shape = tuple(out.shape)
    readers = [bcast(x, shape) for x in inputs]
    return te.compute(shape, lambda *i: fn(*(r(*i) for r in readers)), name=name)


# -- NaN tests, NaN-propagating max and min ---------------------------------------------------
# TVM lowers max(a, b) to ``a > b ? a : b`` (min alike), which drops a NaN in ``a``: relu(NaN)
# would be 0. kiln propagates NaN as numpy, PyTorch and onnxruntime do (docs/ops.md,
# "Non-finite values"). A bound that is a constant needs no extra instruction: ``x < lo ? lo :
# x`` is one max with the operands swapped. Two variables need a NaN test.

# (bits of the float as an unsigned int, exponent-all-ones pattern of +inf, |x| mask)
_FLOAT_BITS = {
    "float16": ("uint16", 0x7C00, 0x7FFF),
    "bfloat16": ("uint16", 0x7F80, 0x7FFF),
    "float32": ("uint32", 0x7F800000, 0x7FFFFFFF),
    "float64": ("uint64", 0x7FF0000000000000, 0x7FFFFFFFFFFFFFFF),
}


def isnan(x):
    """x is NaN, as a compare of its bits (|bits| > the bits of inf): ``tirx.isnan`` makes TVM's
    vectorizer fall back to a scalar loop, and ``x != x`` is folded to false by its
    simplifier; this form stays two vector instructions. A constant is tested here (CUDA C
    cannot take the address of a literal to reinterpret it)."""
    if isinstance(x, tirx.FloatImm):
        return tirx.const(math.isnan(x.value), "bool")
    bits, inf, magnitude = _FLOAT_BITS[dtype_of(x)]
    return (tirx.reinterpret(bits, x) & tirx.const(magnitude, bits)) > tirx.const(inf, bits)


def isfinite(x):
    """x is neither NaN nor +-inf (bits compared as in ``isnan``, for the same reasons)."""
    if isinstance(x, tirx.FloatImm):
        return tirx.const(math.isfinite(x.value), "bool")
    bits, inf, magnitude = _FLOAT_BITS[dtype_of(x)]
    return (tirx.reinterpret(bits, x) & tirx.const(magnitude, bits)) < tirx.const(inf, bits)


def at_least(x, lo):
    """max(x, lo) for a bound ``lo`` that is not NaN; a NaN ``x`` stays NaN."""
    return tirx.max(lo, x)  # TVM: lo > x ? lo : x, one read of x (chains stay linear)


def at_most(x, hi):
    """min(x, hi) for a bound ``hi`` that is not NaN; a NaN ``x`` stays NaN."""
    return tirx.min(hi, x)  # hi < x ? hi : x


def clamp(x, lo, hi):
    """x limited to [lo, hi] (bounds not NaN); a NaN ``x`` stays NaN."""
    return at_most(at_least(x, lo), hi)


def maximum(a, b):
    """numpy's maximum: NaN if either is NaN, else the larger. ``a`` is tested for NaN and
    ``b`` read once (``a > b ? a : b`` passes a NaN ``b``): an operand that is an inlined
    expression belongs in ``b``, or a chain of k fused maxima holds 2**k copies of it."""
    if not is_float(dtype_of(a)):
        return tirx.max(a, b)
    return tirx.Select(isnan(a), a, tirx.max(a, b))


def minimum(a, b):
    """numpy's minimum: NaN if either is NaN, else the smaller; ``b`` read once, as in
    ``maximum``."""
    if not is_float(dtype_of(a)):
        return tirx.min(a, b)
    return tirx.Select(isnan(a), a, tirx.min(a, b))


def sum_dtype(dtype: str) -> str:
    """The type a sum of ``dtype`` products accumulates in: float32 for 16-bit floats."""
    return "float32" if dtype in HALF_DTYPES else dtype


def widen(x):
    """``x`` in ``sum_dtype``: what sums of products multiply, so that they accumulate in
    float32 (the consumer rounds the sum to the output type)."""
    return x.astype("float32") if dtype_of(x) in HALF_DTYPES else x


def _via_f32(fn, x):
    """Apply a float32-only formula to float16/bfloat16 by widening."""
    dtype = dtype_of(x)
    if dtype in ("float16", "bfloat16"):
        return fn(x.astype("float32")).astype(dtype)
    return fn(x)


def _fast_exp_f32(x):
    c = lambda v: tirx.const(v, "float32")  # noqa: E731
    xc = tirx.max(tirx.min(x, c(88.3762626647950)), c(-88.3762626647949))
    n = tirx.floor(xc * c(1.44269504088896341) + c(0.5))
    r = xc - n * c(0.693147181)
    p = c(1.9875691500e-4)
    for coef in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
                 5.0000001201e-1):
        p = p * r + c(coef)
    y = p * r * r + r + c(1.0)
    scale = tirx.reinterpret("float32", (n.astype("int32") + 127) << 23)
    # max(e, x) is e for every number x (e^x > x): TVM writes it ``e > x ? e : x``, which
    # passes a NaN x through (xc lost it in the clamp)
    out = tirx.max(scale * y, x)
    # beyond fast_exp's clamp: overflow to inf as exp does
    return tirx.Select(x > c(88.72283935546875), c(float("inf")), out)


def exp(x):
    """e^x: fast polynomial for float32 (rel. error 3.1e-7), exact intrinsic otherwise."""
    if dtype_of(x) == "float32":
        return _fast_exp_f32(x)
    return _via_f32(_fast_exp_f32, x) if dtype_of(x) in ("float16", "bfloat16") else tirx.exp(x)


# Beyond these, float32 tanh and erf round to exactly +-1; the rational forms stop just
# short of it on some devices (OpenCL without FMA contraction: erf(-4) = -0.99999994), and
# then gelu(-inf) = -inf * 0.5 * (1 + erf) was -inf instead of NaN. Past them, +-1 exactly.
TANH_ONE, ERF_ONE = 9.1, 3.9


def _saturated(x, at: float, rational):
    """``rational(x)`` inside (-at, at), exactly -1 / +1 beyond (NaN stays NaN)."""
    c = lambda v: tirx.const(v, "float32")  # noqa: E731
    inner = rational(clamp(x, c(-at), c(at)))
    return tirx.Select(x >= c(at), c(1.0), tirx.Select(x <= c(-at), c(-1.0), inner))


def _fast_tanh_f32(x):
    return _saturated(x, TANH_ONE, _tanh_rational)


def _tanh_rational(x):
    c = lambda v: tirx.const(v, "float32")  # noqa: E731
    x = clamp(x, c(-9.0), c(9.0))
    x2 = x * x
    p = c(-2.76076847742355e-16)
    for coef in (2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
                 1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03):
        p = p * x2 + c(coef)
    q = c(1.19825839466702e-06)
    for coef in (1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03):
        q = q * x2 + c(coef)
    return x * p / q


def tanh(x):
    """tanh: fast rational form for float32 (abs. error 3.2e-7)."""
    if dtype_of(x) in ("float32", "float16", "bfloat16"):
        return _via_f32(_fast_tanh_f32, x)
    return tirx.tanh(x)


def _fast_erf_f32(x):
    return _saturated(x, ERF_ONE, _erf_rational)


def _erf_rational(x):
    c = lambda v: tirx.const(v, "float32")  # noqa: E731
    x = clamp(x, c(-4.0), c(4.0))
    x2 = x * x
    p = c(-2.72614225801306e-10)
    for coef in (2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
                 -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02):
        p = p * x2 + c(coef)
    q = c(-1.45660718464996e-05)
    for coef in (-2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
                 -1.42647390514189e-02):
        q = q * x2 + c(coef)
    return x * p / q


def erf(x):
    """erf: fast rational form for float32 (abs. error 3.8e-7)."""
    if dtype_of(x) in ("float32", "float16", "bfloat16"):
        return _via_f32(_fast_erf_f32, x)
    return tirx.erf(x)


def sigmoid(x):
    """1 / (1 + e^-x), with e^-x from the fast exp (saturates cleanly at both ends)."""
    one = const(1.0, dtype_of(x))
    return one / (one + exp(-x))


def log(x):
    return tirx.log(x)


def tiling(attrs) -> Tiling:
    """The target strategy's ``Tiling`` of this op (``lower.py`` puts it in ``_tiling``)."""
    t = attrs.get("_tiling")
    if t is None:
        raise KilnError("a TE builder ran without a tiling: lower ops through lower_group, "
                        "which asks the target's schedule strategy for one")
    return t


def target_lanes(attrs) -> int:
    """Vector lanes of the op's output dtype on the target."""
    return tiling(attrs).lanes


def largest_divisor(n: int, at_most: int) -> int:
    for d in range(min(n, at_most), 0, -1):
        if n % d == 0:
            return d
    return 1




# -- symbolic extents ---------------------------------------------------------------------
# A symbolic size reaches a builder as a TIR expression of the kernel's int32 size
# arguments. Builders compute with it as with an int; where a heuristic needs a number (a
# register tile, a row block, whether to fold batches) it takes NOMINAL_SIZE, the size a
# served batch x sequence typically has. Correctness never depends on it: padding and
# predicates cover every actual size.
NOMINAL_SIZE = 128


def is_static(d) -> bool:
    """Whether an extent is a plain int (not a symbolic size's expression)."""
    return isinstance(d, int)


def nominal(d) -> int:
    """An extent's value for heuristics: itself if static, else ``NOMINAL_SIZE``."""
    return d if isinstance(d, int) else NOMINAL_SIZE


def nominal_prod(dims) -> int:
    """The product of extents for heuristics (symbolic ones at ``NOMINAL_SIZE``)."""
    return math.prod(nominal(d) for d in dims)


def ceil_div(a, b: int):
    """``ceil(a / b)`` for an int or a symbolic extent ``a`` and a positive int ``b``."""
    return -(-a // b) if isinstance(a, int) else tirx.floordiv(a + (b - 1), b)
