"""Compiled == interpreted for every lowered op, over hypothesis-drawn small shapes.

Each test draws one batch of cases (one per op of a family) and compiles them as ONE graph,
so an example costs one tvm.compile; ``max_examples`` stays small.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from tests.codegen.cases import (
    ELEMWISE,
    EXACT,
    FAST_MATH,
    GEMM,
    REDUCE,
    Case,
    check_cases,
    positive,
    randn,
)

# few examples and no shrinking: every example costs a tvm.compile
FEW = settings(max_examples=4, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])


def shapes(min_rank=1, max_rank=4, max_side=9, min_side=1):
    return st.lists(st.integers(min_side, max_side), min_size=min_rank, max_size=max_rank).map(
        tuple)


def broadcast_partner(draw, shape):
    """A shape that broadcasts against ``shape`` (some dims set to 1, some leading dropped)."""
    drop = draw(st.integers(0, len(shape)))
    out = [1 if draw(st.booleans()) else d for d in shape[drop:]]
    return tuple(out)


UNARY = {
    "neg": FAST_MATH, "abs": EXACT, "sign": EXACT, "exp": FAST_MATH, "sin": ELEMWISE,
    "cos": ELEMWISE, "erf": FAST_MATH, "floor": EXACT, "ceil": EXACT, "round": EXACT,
    "relu": EXACT, "sigmoid": FAST_MATH, "tanh": FAST_MATH, "silu": FAST_MATH,
    "identity": EXACT, "heaviside": EXACT, "hardswish": ELEMWISE,
}
POSITIVE = {"log": ELEMWISE, "sqrt": ELEMWISE, "rsqrt": ELEMWISE, "reciprocal": ELEMWISE}
WITH_ATTRS = [
    ("leaky_relu", {"alpha": 0.2}), ("elu", {"alpha": 0.7}), ("gelu", {}),
    ("gelu", {"approximate": "tanh"}), ("softplus", {"beta": 2.0, "threshold": 5.0}),
    ("hardtanh", {"min_val": -0.5, "max_val": 0.7}), ("clip", {"min": -0.3, "max": 0.4}),
    ("clip", {"max": 0.1}), ("cast", {"dtype": "int32"}), ("cast", {"dtype": "bool"}),
]


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
@FEW
@given(st.data())
def test_unary_and_activations(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    shape = data.draw(shapes(0, 4, 40))
    cases = [Case(op, [randn(rng, shape, scale=2.0)], tol=tol) for op, tol in UNARY.items()]
    cases += [Case(op, [positive(rng, shape)], tol=tol) for op, tol in POSITIVE.items()]
    cases += [Case(op, [randn(rng, shape, scale=2.0)], attrs, tol=FAST_MATH)
              for op, attrs in WITH_ATTRS]
    x = randn(rng, shape)
    x.flat[: min(x.size, 3)] = 0.0  # heaviside/sign at exactly zero
    cases.append(Case("heaviside", [x], {"value_at_zero": 0.5}, tol=EXACT))
    cases.append(Case("exp", [np.array([-100.0, 0.0, 88.0, 89.0, 100.0], "float32")],
                      tol=FAST_MATH))  # overflow to inf, underflow to 0
    check_cases(cases)


BINARY = ["add", "sub", "mul", "maximum", "minimum"]
COMPARE = ["equal", "not_equal", "less", "less_equal", "greater", "greater_equal"]


@FEW
@given(st.data())
def test_binary_broadcasting(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    shape = data.draw(shapes(1, 4, 12))
    other = broadcast_partner(data.draw, shape)
    a, b = (shape, other) if data.draw(st.booleans()) else (other, shape)
    cases = [Case(op, [randn(rng, a), randn(rng, b)]) for op in BINARY]
    cases.append(Case("div", [randn(rng, a), positive(rng, b)]))
    cases.append(Case("pow", [positive(rng, a), randn(rng, b)], tol=(2e-6, 1e-6)))
    ints = [rng.integers(-50, 50, a).astype("int64"), rng.integers(1, 9, b).astype("int64")]
    ints[1] *= rng.choice([-1, 1], b)
    cases += [Case(op, ints, tol=EXACT) for op in ("add", "sub", "mul", "div", "maximum")]
    xs = [rng.integers(-2, 2, a).astype("float32"), rng.integers(-2, 2, b).astype("float32")]
    cases += [Case(op, xs, tol=EXACT) for op in COMPARE]
    bools = [rng.random(a) < 0.5, rng.random(b) < 0.5]
    cases += [Case(op, bools, tol=EXACT) for op in ("logical_and", "logical_or", "logical_xor")]
    cases.append(Case("logical_not", [bools[0]], tol=EXACT))
    cases.append(Case("where", [bools[0], randn(rng, b), randn(rng, shape)], tol=EXACT))
    cases.append(Case("add", [randn(rng, a), randn(rng, b)], consts=(1,)))
    check_cases(cases)


@FEW
@given(st.data())
def test_reductions(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    shape = data.draw(shapes(1, 4, 12))
    rank = len(shape)
    axes = tuple(sorted(set(data.draw(st.lists(st.integers(0, rank - 1), min_size=1,
                                               max_size=rank)))))
    keep = data.draw(st.booleans())
    axis = data.draw(st.integers(-rank, rank - 1))
    x = randn(rng, shape)
    # a float32 sum of n terms of size ~1 carries ~sqrt(n) * 1e-7 of rounding either way
    n_red = int(np.prod([shape[a] for a in axes]))
    sum_tol = (REDUCE[0], REDUCE[1] * max(1.0, np.sqrt(n_red)))
    cases = [Case(op, [x], {"axes": axes, "keepdims": keep}, tol=sum_tol)
             for op in ("sum", "mean", "max", "min", "logsumexp")]
    cases.append(Case("prod", [positive(rng, shape, low=0.8, high=1.2)],
                      {"axes": axes, "keepdims": keep}, tol=REDUCE))
    cases.append(Case("sum", [x], {"axes": None},
                      tol=(REDUCE[0], REDUCE[1] * np.sqrt(x.size))))
    cases.append(Case("sum", [rng.integers(-9, 9, shape).astype("int32")], {"axes": axes},
                      tol=EXACT))
    cases += [Case(op, [x], {"axis": axis}, tol=REDUCE) for op in ("softmax", "log_softmax")]
    ties = rng.integers(0, 3, shape).astype("float32")  # argmax must take the first maximum
    cases += [Case(op, [ties], {"axis": axis, "keepdims": keep}, tol=EXACT)
              for op in ("argmax", "argmin")]
    check_cases(cases)


def test_long_rows_use_lanes():
    """Rows long enough for the lane-split reductions, ragged and whole."""
    rng = np.random.default_rng(0)
    cases = []
    for n in (32, 77, 1000):
        x = randn(rng, (3, n), scale=3.0)
        cases += [Case(op, [x], {"axis": -1}, tol=REDUCE) for op in ("softmax", "log_softmax")]
        cases += [Case(op, [x], {"axes": (1,)}, tol=REDUCE)
                  for op in ("sum", "max", "min", "logsumexp")]
        cases.append(Case("layer_norm", [x, randn(rng, (n,)), randn(rng, (n,))], tol=REDUCE))
    cases.append(Case("sum", [randn(rng, (2, 5, 40))], {"axes": (1, 2)}, tol=REDUCE))
    check_cases(cases)


@FEW
@given(st.data())
def test_matmul(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    m, k, n = (data.draw(st.integers(1, 70)) for _ in range(3))
    batch = data.draw(shapes(0, 2, 3))
    cases = [
        Case("matmul", [randn(rng, (m, k)), randn(rng, (k, n))], tol=GEMM, consts=(1,)),
        Case("matmul", [randn(rng, (*batch, m, k)), randn(rng, (k, n))], tol=GEMM,
             consts=(1,)),
        Case("matmul", [randn(rng, (*batch, m, k)), randn(rng, (*batch, k, n))], tol=GEMM),
        Case("matmul", [randn(rng, (m, k)), randn(rng, (*batch, k, n))], tol=GEMM),
        Case("matmul", [randn(rng, (k,)), randn(rng, (k, n))], tol=GEMM, consts=(1,)),
        Case("matmul", [randn(rng, (m, k)), randn(rng, (k,))], tol=GEMM),
        Case("matmul", [randn(rng, (k,)), randn(rng, (k,))], tol=GEMM),
        Case("matmul", [randn(rng, (m, k)), randn(rng, (k, 1))], tol=GEMM, consts=(1,)),
        Case("matmul", [rng.integers(-5, 5, (m, k)), rng.integers(-5, 5, (k, n))], tol=EXACT),
    ]
    check_cases(cases)


def test_other_dtypes_and_empty_tensors():
    """float64 and float16 through the main kernels; zero-size outputs compile and run."""
    rng = np.random.default_rng(3)
    cases = []
    for dt, tol in (("float64", (1e-12, 1e-12)), ("float16", (2e-2, 2e-2))):
        x, w = randn(rng, (5, 40), dt), randn(rng, (40, 19), dt)
        cases += [Case("matmul", [x, w], tol=tol, consts=(1,)),
                  Case("softmax", [x], tol=tol), Case("tanh", [x], tol=tol),
                  Case("layer_norm", [x], tol=tol),
                  Case("conv2d", [randn(rng, (1, 3, 9, 9), dt), randn(rng, (4, 3, 3, 3), dt)],
                       {"pads": (1, 1, 1, 1)}, tol=tol, consts=(1,))]
    x = randn(rng, (3, 4))
    cases += [Case("split", [x], {"axis": 1, "sizes": (0, 4)}, tol=EXACT),
              Case("relu", [randn(rng, (0, 5))], tol=EXACT),
              Case("sum", [randn(rng, (2, 0))], {"axes": (1,)}, tol=EXACT)]
    check_cases(cases)
