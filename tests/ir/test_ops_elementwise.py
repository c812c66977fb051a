"""Elementwise, activation, reduction and matmul ops against PyTorch.

Table-driven: every op of elementwise.py, activation.py, reduce.py and linalg.py has a row with
an independent oracle (PyTorch, or hand math where PyTorch has no such op). Each case builds a
one-node graph with GraphBuilder and runs ``interpret``, so the registry, type inference and
the numpy reference are tested together, on inputs and shapes drawn by hypothesis. Type
inference is also checked on symbolic shapes, and every error path names the op, the inputs
and their types.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kiln.errors import AttributeError_, ShapeError, UnsupportedOpError
from kiln.ir import OPS, GraphBuilder, TensorType, interpret

TOL = {"float16": (1e-2, 1e-2), "float32": (1e-5, 1e-5), "float64": (1e-9, 1e-12)}
FLOATS = ("float16", "float32", "float64")


def run(op: str, arrays: list[np.ndarray], attrs: dict | None = None) -> np.ndarray:
    """One node through the builder (inference) and the interpreter (reference)."""
    b = GraphBuilder()
    xs = [b.input(f"x{i}", TensorType.of(a)) for i, a in enumerate(arrays)]
    (y,) = b.op(op, xs, attrs or {})
    b.output(y)
    with np.errstate(all="ignore"):
        (out,) = interpret(b.build(), {f"x{i}": a for i, a in enumerate(arrays)})
    assert out.dtype.name == y.type.dtype
    assert out.shape == y.type.shape
    n = OPS[op].flops([x.type for x in xs], [y.type], b.build().nodes[0].attrs)
    assert isinstance(n, int) and n >= 0
    return out


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.copy())  # a copy stays 0-d; np.ascontiguousarray would not


def close(got: np.ndarray, want: torch.Tensor, dtype: str | None = None) -> None:
    """Floats within the dtype's tolerance (NaN and inf positions must agree); else exact."""
    want = want.numpy()
    assert got.shape == want.shape
    if got.dtype.kind == "f":
        rtol, atol = TOL[dtype or got.dtype.name]
        np.testing.assert_allclose(got, want.astype(got.dtype), rtol=rtol, atol=atol)
    else:
        np.testing.assert_array_equal(got, want.astype(got.dtype))


def shapes(min_dims=0, max_dims=4, min_side=1, max_side=4):
    """Array shapes; empty ones are tested on their own (drawn, they crowd out the rest)."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side,
                            max_side=max_side)


def elements(dtype: str, lo: float = -10, hi: float = 10, special=()) -> st.SearchStrategy:
    """Values of ``dtype`` in [lo, hi] (ints: the whole range clipped to it), plus ``special``."""
    if dtype == "bool":
        return st.booleans()
    if dtype.startswith(("int", "uint")):
        info = np.iinfo(dtype)
        return st.integers(max(int(lo), info.min), min(int(hi), info.max))
    width = int(dtype[5:])
    base = st.floats(lo, hi, width=width)
    return st.one_of(base, st.sampled_from(special)) if special else base


def array(draw, dtype: str, shape, lo=-10, hi=10, special=()) -> np.ndarray:
    return draw(hnp.arrays(dtype, shape, elements=elements(dtype, lo, hi, special)))


# -- unary ops ---------------------------------------------------------------------------------

ZEROS = (0.0, -0.0)
HALVES = (-2.5, -1.5, -0.5, 0.5, 1.5, 2.5)


@dataclass
class Unary:
    op: str
    oracle: Callable  # (torch tensor, **complete attrs) -> torch tensor
    lo: float = -10
    hi: float = 10
    attrs: st.SearchStrategy = field(default_factory=lambda: st.just({}))
    dtypes: tuple[str, ...] = FLOATS
    special: tuple = ZEROS
    f16: tuple[float, float] | None = None  # a narrower range for float16, if its output would
    # overflow at 65504 (only where the true result would: not for softplus, say)


def maybe(**attrs: st.SearchStrategy) -> st.SearchStrategy:
    """Either no attributes (the defaults) or all of them drawn."""
    return st.one_of(st.just({}), st.fixed_dictionaries(attrs))


def _clip_oracle(x, min, max):
    return x.clone() if min is None and max is None else torch.clamp(x, min, max)


@st.composite
def _bounds(draw, names=("min_val", "max_val"), ints=False):
    number = st.integers(-5, 5) if ints else st.floats(-5, 5)
    lo, hi = sorted(draw(st.lists(number, min_size=2, max_size=2)))
    return {names[0]: lo, names[1]: hi}


@st.composite
def _clip_attrs(draw, ints=False):
    bounds = draw(_bounds(("min", "max"), ints))
    return {k: v for k, v in bounds.items() if draw(st.booleans())}


INTS = ("int8", "int32", "int64")

UNARY = [
    Unary("neg", torch.neg, dtypes=FLOATS + INTS + ("uint8",)),
    Unary("abs", torch.abs, dtypes=FLOATS + INTS),
    Unary("sign", torch.sign, dtypes=FLOATS + INTS),
    Unary("exp", torch.exp, -20, 20, f16=(-8, 8)),
    Unary("log", torch.log, -1, 100),  # NaN below 0, -inf at 0: positions must agree
    Unary("sqrt", torch.sqrt, -1, 100),
    Unary("rsqrt", torch.rsqrt, -1, 100),
    Unary("reciprocal", torch.reciprocal),
    Unary("sin", torch.sin, -100, 100),
    Unary("cos", torch.cos, -100, 100),
    Unary("erf", torch.special.erf, -5, 5),
    Unary("floor", torch.floor, special=HALVES),
    Unary("ceil", torch.ceil, special=HALVES),
    Unary("round", torch.round, special=HALVES),  # half to even
    Unary("identity", torch.clone, dtypes=FLOATS + INTS + ("bool",)),
    Unary("clip", _clip_oracle, attrs=_clip_attrs()),
    Unary("clip", _clip_oracle, attrs=_clip_attrs(ints=True), dtypes=INTS),
    Unary("relu", F.relu),
    Unary("leaky_relu", lambda x, alpha: F.leaky_relu(x, alpha),
          attrs=maybe(alpha=st.floats(-2, 2))),
    Unary("elu", lambda x, alpha: F.elu(x, alpha), attrs=maybe(alpha=st.floats(0, 3))),
    Unary("sigmoid", torch.sigmoid, -100, 100),
    Unary("tanh", torch.tanh, -20, 20),
    Unary("gelu", lambda x, approximate: F.gelu(x, approximate=approximate),
          attrs=maybe(approximate=st.sampled_from(["none", "tanh"]))),
    Unary("silu", F.silu, -50, 50),
    Unary("hardswish", F.hardswish, -10, 10),
    Unary("softplus", lambda x, beta, threshold: F.softplus(x, beta, threshold), -30, 30,
          attrs=maybe(beta=st.floats(0.25, 4), threshold=st.floats(0.5, 30))),
    Unary("heaviside", lambda x, value_at_zero: torch.heaviside(x, torch.tensor(value_at_zero,
                                                                             dtype=x.dtype)),
          attrs=maybe(value_at_zero=st.floats(-2, 2))),
    Unary("hardtanh", lambda x, min_val, max_val: F.hardtanh(x, min_val, max_val),
          attrs=st.one_of(st.just({}), _bounds())),
]


@pytest.mark.parametrize("case", UNARY, ids=lambda c: f"{c.op}-{c.dtypes[0]}")
@given(data=st.data())
def test_unary(case: Unary, data):
    dtype = data.draw(st.sampled_from(case.dtypes), label="dtype")
    lo, hi = case.f16 if dtype == "float16" and case.f16 else (case.lo, case.hi)
    x = array(data.draw, dtype, shapes(), lo, hi, case.special if dtype in FLOATS else ())
    attrs = data.draw(case.attrs, label="attrs")
    got = run(case.op, [x], attrs)
    full = {k: attrs.get(k, d) for k, d in OPS[case.op].attrs.items()}
    close(got, case.oracle(t(x), **full))


@pytest.mark.parametrize("case", UNARY, ids=lambda c: f"{c.op}-{c.dtypes[0]}")
def test_unary_on_empty_arrays(case: Unary):
    for shape in [(0,), (2, 0, 3)]:
        assert run(case.op, [np.zeros(shape, case.dtypes[0])]).shape == shape


def test_round_is_half_to_even():
    x = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5], np.float32)
    np.testing.assert_array_equal(run("round", [x]), [-2, -2, -0, 0, 2, 2, 4])


def test_gelu_matches_its_formulas():
    x = np.linspace(-6, 6, 49, dtype=np.float64)
    erf = np.vectorize(math.erf)
    np.testing.assert_allclose(run("gelu", [x]), 0.5 * x * (1 + erf(x / math.sqrt(2))),
                               rtol=1e-12, atol=1e-15)
    tanh = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(run("gelu", [x], {"approximate": "tanh"}), tanh, rtol=1e-12)


# -- binary arithmetic -------------------------------------------------------------------------


@dataclass
class Binary:
    op: str
    oracle: Callable
    dtypes: tuple[str, ...]
    lo: float = -10
    hi: float = 10
    rhs: tuple[float, float] | None = None  # the second input's range, if not lo..hi
    special: tuple = ZEROS + (math.inf, -math.inf, math.nan)


ARITH_DTYPES = ("float32", "float64", "float16", "int32", "int8", "uint8", "int64")

BINARY = [
    Binary("add", torch.add, ARITH_DTYPES + ("bool",)),
    Binary("sub", torch.sub, ARITH_DTYPES),
    Binary("mul", torch.mul, ARITH_DTYPES + ("bool",)),
    Binary("div", torch.div, FLOATS),
    Binary("pow", torch.pow, FLOATS, -4, 4, special=ZEROS),
    Binary("pow", torch.pow, ("int32", "int64"), -5, 5, rhs=(0, 5)),
    Binary("maximum", torch.maximum, ARITH_DTYPES + ("bool",)),
    Binary("minimum", torch.minimum, ARITH_DTYPES + ("bool",)),
    Binary("equal", torch.eq, FLOATS + INTS + ("bool",), special=ZEROS + (math.nan, math.inf)),
    Binary("not_equal", torch.ne, FLOATS + INTS + ("bool",), special=ZEROS + (math.nan,)),
    Binary("less", torch.lt, FLOATS + INTS, -2, 2, special=ZEROS + (math.nan, -math.inf)),
    Binary("less_equal", torch.le, FLOATS + INTS, -2, 2, special=ZEROS + (math.nan,)),
    Binary("greater", torch.gt, FLOATS + INTS, -2, 2, special=ZEROS + (math.nan, math.inf)),
    Binary("greater_equal", torch.ge, FLOATS + INTS, -2, 2, special=ZEROS + (math.nan,)),
    Binary("logical_and", torch.logical_and, ("bool",)),
    Binary("logical_or", torch.logical_or, ("bool",)),
    Binary("logical_xor", torch.logical_xor, ("bool",)),
]


@pytest.mark.parametrize("case", BINARY, ids=lambda c: f"{c.op}-{c.dtypes[0]}")
@given(data=st.data())
def test_binary(case: Binary, data):
    dtype = data.draw(st.sampled_from(case.dtypes), label="dtype")
    sa, sb = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=4, max_side=3),
                       label="shapes").input_shapes
    special = case.special if dtype in FLOATS else ()
    rlo, rhi = case.rhs or (case.lo, case.hi)
    a = array(data.draw, dtype, sa, case.lo, case.hi, special)
    b = array(data.draw, dtype, sb, rlo, rhi, special)
    got = run(case.op, [a, b])
    if case.op.startswith(("equal", "not_", "less", "greater", "logical")):
        assert got.dtype == np.bool_
    close(got, case.oracle(t(a), t(b)), dtype)


def test_logical_not():
    x = np.array([[True, False], [False, False]])
    np.testing.assert_array_equal(run("logical_not", [x]), torch.logical_not(t(x)).numpy())


@given(data=st.data())
def test_integer_div_truncates_toward_zero(data):
    dtype = data.draw(st.sampled_from(INTS + ("uint8",)), label="dtype")
    info = np.iinfo(dtype)
    sa, sb = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=4),
                       label="shapes").input_shapes
    # the most negative value over -1 overflows (torch traps on it for int64); nothing else
    ints = st.integers(info.min + (info.min < 0), info.max)
    a = data.draw(hnp.arrays(dtype, sa, elements=ints))
    b = data.draw(hnp.arrays(dtype, sb, elements=ints.filter(lambda v: v != 0)))
    close(run("div", [a, b]), torch.div(t(a), t(b), rounding_mode="trunc"))


def test_integer_div_examples():
    a = np.array([7, -7, 7, -7, 0, 2**62 + 1, -(2**62) - 3], np.int64)
    b = np.array([2, 2, -2, -2, 5, 1, 2], np.int64)
    # exact beyond 2**53, where a float quotient would round
    np.testing.assert_array_equal(run("div", [a, b]), [3, -3, -3, 3, 0, 2**62 + 1, -(2**61) - 1])


# -- where, cast -------------------------------------------------------------------------------


@given(data=st.data())
def test_where(data):
    dtype = data.draw(st.sampled_from(("float32", "int32", "bool")), label="dtype")
    sc, sa, sb = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=3, max_dims=4,
                                                             max_side=3)).input_shapes
    cond = data.draw(hnp.arrays(np.bool_, sc))
    a, b = array(data.draw, dtype, sa), array(data.draw, dtype, sb)
    close(run("where", [cond, a, b]), torch.where(t(cond), t(a), t(b)))


CASTS = FLOATS + ("int8", "uint8", "int32", "int64", "bool")


@given(data=st.data())
def test_cast(data):
    src = data.draw(st.sampled_from(CASTS), label="src")
    dst = data.draw(st.sampled_from(CASTS), label="dst")
    # float -> int is defined only inside the target's range; int -> int wraps in both
    lo, hi = (0, 200) if dst == "uint8" else (-100, 100) if dst.startswith("int") else (-1e4, 1e4)
    if src in FLOATS:
        lo, hi = max(lo, -60000), min(hi, 60000)
    x = array(data.draw, src, shapes(max_side=3), lo, hi, ZEROS if src in FLOATS else ())
    got = run("cast", [x], {"dtype": dst})
    assert got.dtype.name == dst
    close(got, t(x).to(getattr(torch, dst)))


def test_cast_float_to_int_truncates_and_to_bool_tests_nonzero():
    x = np.array([-2.7, -0.5, -0.0, 0.0, 0.5, 2.7], np.float32)
    np.testing.assert_array_equal(run("cast", [x], {"dtype": "int32"}), [-2, 0, 0, 0, 0, 2])
    np.testing.assert_array_equal(run("cast", [x], {"dtype": "bool"}), x != 0)


# -- reductions --------------------------------------------------------------------------------


def _prod(x, dim, keepdim):
    for d in sorted(dim, reverse=True):  # torch.prod takes one dim at a time
        x = torch.prod(x, dim=d, keepdim=keepdim)
    return x


REDUCE = {
    "sum": (torch.sum, FLOATS[1:] + ("int32", "int64"), -10, 10),
    "mean": (torch.mean, FLOATS[1:], -10, 10),
    "prod": (_prod, FLOATS[1:] + ("int32",), -2, 2),
    "max": (torch.amax, FLOATS[1:] + INTS, -10, 10),
    "min": (torch.amin, FLOATS[1:] + INTS, -10, 10),
    "logsumexp": (torch.logsumexp, FLOATS[1:], -50, 50),
}


@st.composite
def axes_for(draw, rank: int):
    """None, or a nonempty set of axes, each written positive or negative."""
    if rank == 0 or draw(st.booleans()):
        return None
    axes = draw(st.lists(st.integers(0, rank - 1), min_size=1, max_size=rank, unique=True))
    return tuple(a - rank if draw(st.booleans()) else a for a in axes)


@pytest.mark.parametrize("op", REDUCE)
@given(data=st.data())
def test_reduce(op, data):
    oracle, dtypes, lo, hi = REDUCE[op]
    dtype = data.draw(st.sampled_from(dtypes), label="dtype")
    x = array(data.draw, dtype, shapes(max_dims=4, max_side=3), lo, hi)  # empty: see below
    axes = data.draw(axes_for(x.ndim), label="axes")
    keepdims = data.draw(st.booleans(), label="keepdims")
    attrs = {"axes": axes, "keepdims": keepdims} if axes is not None or keepdims else {}
    got = run(op, [x], attrs)
    dims = tuple(range(x.ndim)) if axes is None else tuple(a % x.ndim for a in axes)
    if dims:
        want = oracle(t(x), dim=dims, keepdim=keepdims)
    else:  # a scalar: nothing to reduce
        want = t(x).clone()
    if dtype == "float32" and op in ("sum", "mean"):
        # float32 sums differ by summation order: compare on the scale of the terms
        scale = float(np.abs(x.astype(np.float64)).sum())
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6 * (1 + scale))
    else:
        close(got, want)


@pytest.mark.parametrize("op", REDUCE)
def test_reduce_over_no_axes_is_the_identity(op):
    # axes=() reduces nothing (numpy's rule; torch's dim=() would reduce everything)
    x = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
    np.testing.assert_allclose(run(op, [x], {"axes": ()}), x, rtol=1e-6)


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")
def test_empty_reductions():
    x = np.zeros((2, 0), np.float32)
    np.testing.assert_array_equal(run("sum", [x], {"axes": (1,)}), [0, 0])
    np.testing.assert_array_equal(run("prod", [x], {"axes": (1,)}), [1, 1])
    np.testing.assert_array_equal(run("logsumexp", [x], {"axes": (1,)}), [-np.inf, -np.inf])
    assert np.isnan(run("mean", [x], {"axes": (1,)})).all()
    assert run("softmax", [x], {"axis": 1}).shape == (2, 0)
    assert run("log_softmax", [x], {"axis": -1}).shape == (2, 0)


def test_logsumexp_of_infinities():
    x = np.array([[-np.inf, -np.inf], [1, np.inf], [-np.inf, 2]], np.float32)
    close(run("logsumexp", [x], {"axes": (1,)}), torch.logsumexp(t(x), 1))


@pytest.mark.parametrize("op, oracle", [("argmax", torch.argmax), ("argmin", torch.argmin)])
@given(data=st.data())
def test_arg_reduce(op, oracle, data):
    dtype = data.draw(st.sampled_from(("float32", "float64", "int32", "int8")), label="dtype")
    # few distinct values, so ties are common: both pick the first; NaN counts as the extreme
    special = (0.0, 1.0, math.nan) if dtype in FLOATS else ()
    x = array(data.draw, dtype, shapes(min_dims=1), -2, 2, special)
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1), label="axis")
    keepdims = data.draw(st.booleans(), label="keepdims")
    got = run(op, [x], {"axis": axis, "keepdims": keepdims})
    assert got.dtype == np.int64
    close(got, oracle(t(x), dim=axis, keepdim=keepdims))


@pytest.mark.parametrize("op, oracle", [("softmax", torch.softmax),
                                        ("log_softmax", torch.log_softmax)])
@given(data=st.data())
def test_softmax(op, oracle, data):
    dtype = data.draw(st.sampled_from(FLOATS[1:]), label="dtype")
    x = array(data.draw, dtype, shapes(min_dims=1), -50, 50)
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1), label="axis")
    attrs = {} if axis == -1 and data.draw(st.booleans()) else {"axis": axis}
    close(run(op, [x], attrs), oracle(t(x), dim=axis))


# -- matmul ------------------------------------------------------------------------------------


@given(data=st.data())
def test_matmul(data):
    dtype = data.draw(st.sampled_from(("float32", "float64", "int32", "int64")), label="dtype")
    ba, bb = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3),
                       label="batch").input_shapes
    m, n = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    k = data.draw(st.integers(0, 4), label="k")
    sa = (k,) if data.draw(st.booleans(), label="a 1-D") else ba + (m, k)
    sb = (k,) if data.draw(st.booleans(), label="b 1-D") else bb + (k, n)
    a, b = array(data.draw, dtype, sa, -4, 4), array(data.draw, dtype, sb, -4, 4)
    close(run("matmul", [a, b]), torch.matmul(t(a), t(b)))


@given(data=st.data())
def test_matmul_integer(data):
    """8-bit (or int32) operands, exact int32 sums: the largest products of K = 300 too."""
    da, db = (data.draw(st.sampled_from(("uint8", "int8", "int32")), label=n) for n in "ab")
    batch = data.draw(st.sampled_from(((), (2,), (2, 1))), label="batch")
    m, n = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    k = data.draw(st.sampled_from((0, 3, 300)), label="k")
    extreme = data.draw(st.booleans(), label="extreme values")

    def operand(dtype, shape):
        info = np.iinfo(dtype)
        if extreme:
            return np.full(shape, info.max if dtype == "uint8" else info.min, dtype)
        lo, hi = max(info.min, -300), min(info.max, 300)
        return np.random.default_rng(k).integers(lo, hi + 1, shape).astype(dtype)

    a, b = operand(da, batch + (m, k)), operand(db, (k, n))
    got = run("matmul_integer", [a, b])
    want = torch.matmul(torch.from_numpy(a.astype(np.int64)), torch.from_numpy(b.astype(np.int64)))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want.numpy().astype(np.int32))


# -- type inference on symbolic shapes ---------------------------------------------------------


def infer(op: str, *types: TensorType, **attrs) -> TensorType:
    b = GraphBuilder()
    xs = [b.input(f"x{i}", ty) for i, ty in enumerate(types)]
    (y,) = b.op(op, xs, attrs)
    return y.type


@st.composite
def symbolic_broadcast(draw):
    """Two broadcastable shapes with some dims renamed to symbols, and their broadcast."""
    sa, sb = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=4,
                                                    max_side=3)).input_shapes
    out = list(np.broadcast_shapes(sa, sb))
    sa, sb, rank = list(sa), list(sb), len(out)
    for i in range(rank):
        if out[i] != 1 and draw(st.booleans()):
            sym = f"S{i}"
            for s in (sa, sb):  # rename the dim wherever it is not a broadcast 1
                j = len(s) - rank + i
                if j >= 0 and s[j] != 1:
                    s[j] = sym
            out[i] = sym
    return tuple(sa), tuple(sb), tuple(out)


@given(symbolic_broadcast(), st.sampled_from(["add", "pow", "maximum", "less"]))
def test_symbolic_broadcast(shapes_, op):
    sa, sb, want = shapes_
    got = infer(op, TensorType(sa), TensorType(sb))
    assert got.shape == want
    assert got.dtype == ("bool" if op == "less" else "float32")
    assert infer(op, TensorType(sb), TensorType(sa)).shape == want


@pytest.mark.parametrize(
    "a, b, want",
    [
        (("N",), (1,), ("N",)),
        ((1,), ("N",), ("N",)),
        (("N",), ("N",), ("N",)),
        (("N", 1), (1, "M"), ("N", "M")),
        ((), ("N", 2), ("N", 2)),
        (("B", 1, 3), ("T", 1), ("B", "T", 3)),
    ],
)
def test_symbolic_broadcast_cases(a, b, want):
    assert infer("add", TensorType(a), TensorType(b)).shape == want
    assert infer("where", TensorType(a, "bool"), TensorType(a), TensorType(b)).shape == want


@pytest.mark.parametrize("a, b", [(("N",), (3,)), ((3,), ("N",)), (("N",), ("M",)),
                                  (("N", 2), (2, 2))])
def test_symbolic_broadcast_mismatch(a, b):
    msg = f"shapes {a} and {b} do not broadcast"
    with pytest.raises(ShapeError, match=re.escape(msg)):
        infer("add", TensorType(a), TensorType(b))


@pytest.mark.parametrize(
    "a, b, want",
    [
        (("B", "N", "K"), ("K", 4), ("B", "N", 4)),
        (("K",), ("K",), ()),
        (("K",), ("B", "K", 2), ("B", 2)),
        (("B", 1, 2, 3), (5, 3, 2), ("B", 5, 2, 2)),
        (("N", 3), (3,), ("N",)),
    ],
)
def test_symbolic_matmul(a, b, want):
    assert infer("matmul", TensorType(a), TensorType(b)).shape == want


@pytest.mark.parametrize(
    "op, shape, attrs, want",
    [
        ("sum", ("N", 3, "T"), {"axes": (0,)}, (3, "T")),
        ("mean", ("N", 3, "T"), {"axes": (0, -1), "keepdims": True}, (1, 3, 1)),
        ("max", ("N", 3), {}, ()),
        ("argmax", ("N", 3), {"axis": 0}, (3,)),
        ("argmin", ("N", 3), {"keepdims": True}, ("N", 1)),
        ("softmax", ("N", "T"), {"axis": 0}, ("N", "T")),
    ],
)
def test_symbolic_reduce(op, shape, attrs, want):
    got = infer(op, TensorType(shape), **attrs)
    assert got.shape == want
    assert got.dtype == ("int64" if op.startswith("arg") else "float32")


# -- error paths -------------------------------------------------------------------------------

B2 = TensorType((2,), "bool")
F23, F4, I23 = TensorType((2, 3)), TensorType((4,)), TensorType((2, 3), "int32")
F0 = TensorType(())

ERRORS = [
    ("add", [F23, I23], {}, ShapeError,
     r"add(%x0: float32[2, 3], %x1: int32[2, 3]) at m.py:3: dtypes differ"),
    ("matmul", [F23, I23], {}, ShapeError, r"matmul(%x0: float32[2, 3], %x1: int32[2, 3])"),
    ("add", [F23, F4], {}, ShapeError,
     r"add(%x0: float32[2, 3], %x1: float32[4]) at m.py:3: shapes (2, 3) and (4,) do not"),
    ("where", [B2, F23, F23], {}, ShapeError, r"shapes (2,) and (2, 3) and (2, 3) do not"),
    ("exp", [B2], {}, ShapeError, r"exp(%x0: bool[2]) at m.py:3: needs a floating-point"),
    ("relu", [I23], {}, ShapeError, r"relu(%x0: int32[2, 3]) at m.py:3: needs a floating"),
    ("neg", [B2], {}, ShapeError, r"neg(%x0: bool[2]) at m.py:3: needs a numeric input"),
    ("sub", [B2, B2], {}, ShapeError, r"sub(%x0: bool[2], %x1: bool[2]) at m.py:3: needs num"),
    ("div", [B2, B2], {}, ShapeError, r"div(%x0: bool[2], %x1: bool[2])"),
    ("pow", [B2, B2], {}, ShapeError, r"pow(%x0: bool[2], %x1: bool[2])"),
    ("mean", [I23], {}, ShapeError, r"mean(%x0: int32[2, 3]) at m.py:3: needs a floating"),
    ("sum", [B2], {}, ShapeError, r"sum(%x0: bool[2]) at m.py:3: cannot reduce a bool"),
    ("matmul", [B2, B2], {}, ShapeError, r"matmul(%x0: bool[2], %x1: bool[2])"),
    ("logical_and", [F23, F23], {}, ShapeError, r"logical_and(%x0: float32[2, 3], %x1: float32"),
    ("where", [F23, F23, F23], {}, ShapeError, r"where's condition must be bool, got float32"),
    ("relu", [F23], {"alpha": 0.1}, AttributeError_,
     r"relu(%x0: float32[2, 3]) at m.py:3: unknown attribute(s) ['alpha'] (known: none)"),
    ("leaky_relu", [F23], {"slope": 0.1}, AttributeError_,
     r"leaky_relu(%x0: float32[2, 3]) at m.py:3: unknown attribute(s) ['slope'] (known: alpha)"),
    ("split", [F4], {"axis": 0}, AttributeError_,
     r"split(%x0: float32[4]) at m.py:3: missing required attribute 'sizes'"),
    ("cast", [F23], {"dtype": "float17"}, AttributeError_,
     r"cast(%x0: float32[2, 3]) at m.py:3: unknown dtype 'float17'"),
    ("gelu", [F23], {"approximate": "fast"}, ShapeError, r"gelu(%x0: float32[2, 3]) at m.py:3: "),
    ("clip", [F23], {"min": 2.0, "max": 1.0}, ShapeError, r"clip min 2.0 > max 1.0"),
    ("clip", [I23], {"min": 0.5}, ShapeError, r"clip(%x0: int32[2, 3]) at m.py:3: clip bounds"),
    ("hardtanh", [F23], {"min_val": 1.0, "max_val": -1.0}, ShapeError,
     r"hardtanh(%x0: float32[2, 3]) at m.py:3: hardtanh min_val 1.0 > max_val -1.0"),
    ("softmax", [F23], {"axis": 2}, ShapeError,
     r"softmax(%x0: float32[2, 3]) at m.py:3: axis 2 is out of range for rank 2"),
    ("log_softmax", [F23], {"axis": -3}, ShapeError, r"axis -3 is out of range for rank 2"),
    ("argmax", [F23], {"axis": 2}, ShapeError, r"argmax(%x0: float32[2, 3]) at m.py:3: axis 2"),
    ("argmin", [F0], {}, ShapeError, r"argmin(%x0: float32[]) at m.py:3: axis -1 is out of"),
    ("argmax", [F0], {"axis": 0}, ShapeError, r"axis 0 is out of range for rank 0"),
    ("sum", [F0], {"axes": (0,)}, ShapeError, r"sum(%x0: float32[]) at m.py:3: axis 0 is out"),
    ("sum", [F23], {"axes": (0, -2)}, ShapeError, r"repeated axis in (0, -2)"),
    ("prod", [F23], {"axes": (5,)}, ShapeError, r"prod(%x0: float32[2, 3]) at m.py:3: axis 5"),
    ("max", [TensorType((2, 0))], {"axes": (1,)}, ShapeError,
     r"max(%x0: float32[2, 0]) at m.py:3: max/min over an empty axis"),
    ("argmax", [TensorType((0, 2))], {"axis": 0}, ShapeError, r"argmax/argmin over an empty axis"),
    ("matmul", [F23, F4], {}, ShapeError,
     r"matmul(%x0: float32[2, 3], %x1: float32[4]) at m.py:3: contraction dimensions differ: "
     r"3 (last of the first input) vs 4"),
    ("matmul", [TensorType(("N", "K")), TensorType(("M", 2))], {}, ShapeError,
     r"contraction dimensions differ: K"),
    ("matmul", [F0, F4], {}, ShapeError, r"matmul needs inputs of rank >= 1"),
    ("add", [F23], {}, ShapeError, r"add(%x0: float32[2, 3]) at m.py:3: takes 2 inputs, got 1"),
    ("add", [F23, F23, F23], {}, ShapeError, r"takes 2 inputs, got 3"),
    ("relu", [F23, F23], {}, ShapeError, r"relu(%x0: float32[2, 3], %x1: float32[2, 3]) at "
                                         r"m.py:3: takes 1 inputs, got 2"),
    ("where", [B2, F4], {}, ShapeError, r"where(%x0: bool[2], %x1: float32[4]) at m.py:3: takes 3"),
    ("sum", [], {}, ShapeError, r"sum() at m.py:3: takes 1 inputs, got 0"),
    ("frobnicate", [F23], {}, UnsupportedOpError, r"unknown op 'frobnicate'"),
]


@pytest.mark.parametrize("op, types, attrs, exc, msg", ERRORS, ids=lambda v: None)
def test_errors_name_the_op_inputs_and_shapes(op, types, attrs, exc, msg):
    b = GraphBuilder()
    xs = [b.input(f"x{i}", ty) for i, ty in enumerate(types)]
    with pytest.raises(exc, match=re.escape(msg)):
        b.op(op, xs, attrs, origin="m.py:3")


# -- coverage ----------------------------------------------------------------------------------

MODULES = {f"kiln.ir.ops.{m}" for m in ("elementwise", "activation", "reduce", "linalg")}
TESTED = ({c.op for c in UNARY} | {c.op for c in BINARY} | set(REDUCE)
          | {"logical_not", "where", "cast", "argmax", "argmin", "softmax", "log_softmax",
             "matmul", "matmul_integer"})


def test_every_op_has_an_oracle():
    ops = {name for name, d in OPS.items() if d.reference.__module__ in MODULES}
    assert ops - TESTED == set(), "ops without a row in this file's tables"
    assert TESTED - ops == set()

