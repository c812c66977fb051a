"""Compiled == interpreted on non-finite and extreme values (NaN, +-inf, -0.0, huge, tiny,
denormal), op by op and fused into matmul/conv epilogues; out-of-range indices and zero
integer divisors raise InputError, compiled and interpreted (docs/ops.md, "Non-finite
values" and "Out-of-range indices")."""

from __future__ import annotations

import numpy as np
import pytest

import kiln
from kiln.codegen.build import build
from kiln.errors import InputError
from kiln.fuzz import mismatch
from kiln.ir import GraphBuilder, TensorType, interpret
from tests.codegen.cases import (
    ELEMWISE,
    EXACT,
    FAST_MATH,
    GEMM,
    REDUCE,
    Case,
    case_graph,
    compiled_and_interpreted,
)

F32 = np.float32
SPECIAL = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1e38, -1e38, 3e38, 1e-38, 1e-42,
                    -1e-42, 1.0, -1.0, 0.5, -2.5, 4.0, 100.0, -100.0, 3e9, -3e9], F32)
# ops whose zero results must keep their sign too (a select, not arithmetic, makes them;
# not maximum/minimum of -0.0 and 0.0: numpy's own loops differ there by dtype)
SIGNED_ZERO = {"relu", "clip", "hardtanh", "neg", "abs", "identity", "floor", "ceil", "round",
               "sign", "leaky_relu", "where"}


def check(cases: list[Case]) -> None:
    """Build ``cases`` as one graph, run it and compare each output with the interpreter: NaN
    and inf exactly, the sign of zeros too for SIGNED_ZERO ops."""
    for case, g, w in compiled_and_interpreted(cases):
        why = mismatch(w, g, *case.tol)
        assert why is None, f"{case.label()}: {why}"
        if case.op in SIGNED_ZERO and w.dtype.kind == "f":
            zeros = (w == 0) & (g == 0)
            assert np.array_equal(np.signbit(w[zeros]), np.signbit(g[zeros])), case.label()


UNARY = ["neg", "abs", "sign", "exp", "log", "sqrt", "rsqrt", "reciprocal", "sin", "cos", "erf",
         "floor", "ceil", "round", "relu", "sigmoid", "tanh", "silu", "hardswish", "identity"]
WITH_ATTRS = [
    ("leaky_relu", {"alpha": 0.2}), ("elu", {"alpha": 0.7}), ("gelu", {}),
    ("gelu", {"approximate": "tanh"}), ("softplus", {"beta": 2.0, "threshold": 5.0}),
    ("heaviside", {"value_at_zero": 0.5}), ("hardtanh", {"min_val": -1.0, "max_val": 0.5}),
    ("clip", {"min": -1.0, "max": 1.0}), ("clip", {"min": 0.0}), ("clip", {"max": 0.0}),
]


def test_unary_ops_and_activations_on_special_values():
    # 40 values: two 16-lane vectors and a tail of 8 (the non-finite values are in both)
    x = np.concatenate([SPECIAL, SPECIAL[::-1]])[None, :]
    cases = [Case(op, [x], tol=FAST_MATH) for op in UNARY]
    cases += [Case(op, [x], attrs, tol=FAST_MATH) for op, attrs in WITH_ATTRS]
    check(cases)


BINARY = ["add", "sub", "mul", "div", "pow", "maximum", "minimum"]
COMPARE = ["equal", "not_equal", "less", "less_equal", "greater", "greater_equal"]


def test_binary_ops_on_every_pair_of_special_values():
    a = np.repeat(SPECIAL[:, None], len(SPECIAL), 1)
    b = np.repeat(SPECIAL[None, :], len(SPECIAL), 0)
    cases = [Case(op, [a, b], tol=ELEMWISE) for op in BINARY]
    cases += [Case(op, [a, b], tol=EXACT) for op in COMPARE]
    cases.append(Case("where", [a > b, a, b], tol=EXACT))
    cases.append(Case("not_equal", [a, a], tol=EXACT))  # x != x: the isnan test of ONNX
    check(cases)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_other_float_dtypes_follow_the_same_rules(dtype):
    import ml_dtypes

    with np.errstate(over="ignore"):  # float16 holds the huge values as inf
        x = SPECIAL.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)[None, :]
    y, rows = x[:, ::-1].copy(), np.concatenate([x, x[:, ::-1]])
    tol = (2e-2, 2e-2) if dtype == "bfloat16" else (1e-3, 1e-3)
    cases = [Case(op, [x], tol=tol) for op in ("relu", "sign", "abs", "neg", "sigmoid", "tanh",
                                               "exp", "erf", "gelu", "silu", "hardswish")]
    cases += [Case("clip", [x], {"min": -1.0, "max": 1.0}, tol=EXACT),
              Case("hardtanh", [x], tol=EXACT), Case("heaviside", [x], tol=EXACT),
              Case("cast", [x], {"dtype": "int32"}, tol=EXACT)]
    cases += [Case(op, [x, y], tol=tol) for op in ("maximum", "minimum", "not_equal")]
    cases += [Case(op, [rows], {"axes": (1,)}, tol=tol) for op in ("max", "min")]
    cases.append(Case("softmax", [rows], {"axis": -1}, tol=tol))
    if dtype != "bfloat16":  # (kiln compiles no argmax of bfloat16)
        cases += [Case(op, [rows], {"axis": -1}, tol=EXACT) for op in ("argmax", "argmin")]
    check(cases)


BOUNDS = np.array([2.0**31, -2.0**31, 2.0**31 - 128, 2.0**63, -2.0**63, 2.0**64, 255.5, 256.0,
                   -0.5, -0.99, 127.9, 128.0, -128.9, -129.0, 65504.0], F32)


@pytest.mark.parametrize("src", ["float16", "float32", "float64"])
def test_float_to_int_casts_saturate_and_nan_is_zero(src):
    with np.errstate(over="ignore"):  # float16 holds the big bounds as inf
        x = np.concatenate([SPECIAL, BOUNDS]).astype(src)
    cases = [Case("cast", [x], {"dtype": dt}, tol=EXACT)
             for dt in ("int8", "uint8", "int32", "int64", "bool")]
    cases += [Case("cast", [x], {"dtype": dt}, tol=(4e-3, 0.0))  # one rounding
              for dt in ("float16", "bfloat16", "float32") if dt != src]
    check(cases)
    want = interpret(case_graph(cases[2:3])[0], {"c0_0": x})[0]
    assert want[0] == 0 and want[1] == 2**31 - 1 and want[2] == -2**31  # NaN, inf, -inf


def _rows(n: int) -> np.ndarray:
    """Rows of length ``n`` holding NaN first, in the middle and last; all -inf; all +inf;
    +inf and -inf; signed zeros; huge values; ordinary values."""
    rng = np.random.default_rng(n)
    rows = rng.standard_normal((10, n)).astype(F32)
    rows[0, 0] = rows[1, n // 2] = rows[2, n - 1] = np.nan
    rows[1, n // 3] = rows[2, 0] = np.nan  # a second NaN: argmax takes the first
    rows[3], rows[4] = -np.inf, np.inf
    rows[5, ::2], rows[5, 1::2] = np.inf, -np.inf
    rows[6] = np.where(np.arange(n) % 2 == 0, -0.0, 0.0)
    rows[7, :3] = [3e38, -3e38, 1e38]
    rows[8, -1] = -np.inf
    return rows


@pytest.mark.parametrize("n", [7, 77])  # 77: lane partials and a ragged tail
def test_reductions_on_special_values(n):
    x = _rows(n)
    keep = {"axes": (1,), "keepdims": True}
    cases = [Case(op, [x], keep, tol=REDUCE) for op in ("max", "min", "sum", "mean", "prod")]
    cases.append(Case("logsumexp", [x[[0, 1, 3, 4, 6, 8, 9]]], keep, tol=REDUCE))
    cases += [Case(op, [x], {"axis": -1}, tol=REDUCE) for op in ("softmax", "log_softmax")]
    cases += [Case(op, [x], {"axis": a}, tol=EXACT) for op in ("argmax", "argmin")
              for a in (-1, 0)]
    cases += [Case(op, [x.T.copy()], {"axes": (0,)}, tol=REDUCE) for op in ("max", "min")]
    check(cases)


def test_argmax_of_a_row_holding_nan_is_its_first_nan():
    x = np.array([[1, np.nan, 5, np.nan], [-np.inf] * 4, [np.inf, 2, np.inf, np.nan]], F32)
    graph, feeds, _ = case_graph([Case("argmax", [x], {"axis": -1}),
                                  Case("argmin", [x], {"axis": -1})])
    for got in (interpret(graph, feeds), build(graph).run(feeds)):
        assert got[0].tolist() == [1, 0, 3] and got[1].tolist() == [1, 0, 3]


def _clamp_chain(n: int):
    """x through n fused maximum/relu/minimum/clip ops, each max/min with the input y."""
    b = GraphBuilder("chain")
    v, y = b.input("x", TensorType((20, 20))), b.input("y", TensorType((20, 20)))
    steps = [lambda v: b.op("maximum", [v, y]), lambda v: b.op("relu", [v]),
             lambda v: b.op("minimum", [y, v]), lambda v: b.op("clip", [v], {"min": -1e38})]
    for i in range(n):
        (v,) = steps[i % 4](v)
    b.output(v)
    return b.build()


def test_a_chain_of_fused_clamps_reads_its_input_once():
    """Each NaN test reads its operand once more: the operand computed in the fused kernel
    must not be the tested one, or a chain of k ops holds 2**k copies of its input (the
    compile fuzzer stalled on one such graph)."""
    feeds = {"x": np.repeat(SPECIAL[:, None], 20, 1), "y": np.repeat(SPECIAL[None, :], 20, 0)}
    reads = {}
    for n in (4, 8):
        graph = kiln.optimize(_clamp_chain(n), 2)
        res = build(graph)
        (script,) = [f.script() for f in res.module.functions.values()]
        reads[n] = script.count("x[")
        why = mismatch(interpret(graph, feeds)[0], res.run(feeds)[0], *EXACT)
        assert why is None, f"{n} ops: {why}"
    assert reads[8] == reads[4]


def _image(c: int, h: int, seed: int = 0) -> np.ndarray:
    """[1, c, h, h] with NaN, +inf and -inf at scattered positions (window starts, middles,
    ends and the borders)."""
    x = np.random.default_rng(seed).standard_normal((1, c, h, h)).astype(F32)
    flat = x.reshape(-1)
    flat[::11] = np.nan
    flat[3::17] = np.inf
    flat[5::23] = -np.inf
    x[0, -1] = -np.inf  # a channel of only -inf: its max is -inf
    return x


def test_pools_propagate_nan():
    x = _image(3, 9)
    cases = [Case("max_pool2d", [x], {"kernel_shape": k, "strides": s, "pads": p}, tol=REDUCE)
             for k, s, p in (((2, 2), (1, 1), (0, 0, 0, 0)), ((3, 3), (2, 2), (1, 1, 1, 1)),
                             ((3, 3), (1, 1), (1, 1, 1, 1)))]
    cases += [Case("avg_pool2d", [x], {"kernel_shape": (3, 3), "strides": (2, 2),
                                       "pads": (1, 1, 1, 1)}, tol=REDUCE),
              Case("global_avg_pool2d", [x], tol=REDUCE)]
    check(cases)


def _sprinkled(rng, shape, scale=0.5) -> np.ndarray:
    """Normal values with a few NaN, +-inf, -0.0 and denormals; no huge finite ones: a sum
    of those overflows in one order and not in another (docs/ops.md)."""
    a = (rng.standard_normal(shape) * scale).astype(F32)
    flat = a.reshape(-1)
    picks = rng.choice(flat.size, size=max(1, flat.size // 25), replace=False)
    flat[picks] = rng.choice(np.array([np.nan, np.inf, -np.inf, -0.0, 1e-42], F32), picks.size)
    return a


def test_convolutions_matmuls_and_normalizations_on_special_values():
    """Sums of products, inputs and weights holding NaN and inf: zero padding multiplies
    the weights (0 * inf is NaN, as numpy, onnxruntime and PyTorch's conv2d), a transposed
    convolution multiplies only the taps it scatters (as PyTorch)."""
    rng = np.random.default_rng(4)
    x = _sprinkled(rng, (1, 8, 9, 9))
    conv = [({"pads": (1, 1, 1, 1)}, (16, 8, 3, 3)), ({}, (16, 8, 1, 1)),
            ({"pads": (1, 1, 1, 1), "groups": 8}, (8, 1, 3, 3)),
            ({"pads": (1, 1, 1, 1), "groups": 2}, (6, 4, 3, 3)),
            ({"strides": (2, 2), "pads": (2, 2, 2, 2), "dilations": (2, 2)}, (4, 8, 3, 3))]
    cases = [Case("conv2d", [x, _sprinkled(rng, w), _sprinkled(rng, w[:1])], attrs, tol=GEMM,
                  consts=(1, 2)) for attrs, w in conv]
    # 8 groups of 2 -> 4 channels: blocks of 16 output channels hold 4 groups, whose weight
    # is zero between them (an inf of one group must not make the others NaN)
    x16 = _sprinkled(rng, (1, 16, 6, 6))
    cases.append(Case("conv2d", [x16, _sprinkled(rng, (32, 2, 3, 3))],
                      {"pads": (1, 1, 1, 1), "groups": 8}, tol=GEMM, consts=(1,)))
    cases.append(Case("conv1d", [x[:, :, 0], _sprinkled(rng, (5, 8, 3))], {"pads": (1, 1)},
                      tol=GEMM, consts=(1,)))
    cases.append(Case("conv_transpose2d", [x, _sprinkled(rng, (8, 3, 3, 3))],
                      {"strides": (2, 2), "pads": (1, 1, 1, 1)}, tol=GEMM, consts=(1,)))
    a, b = _sprinkled(rng, (2, 5, 40)), _sprinkled(rng, (40, 33))
    cases += [Case("matmul", [a, b], tol=GEMM, consts=(1,)),
              Case("matmul", [a, b], tol=GEMM),
              Case("matmul", [a[0], b[:, :1]], tol=GEMM),
              Case("matmul", [a, _sprinkled(rng, (2, 40, 7))], tol=GEMM)]
    ch = [_sprinkled(rng, (8,)) for _ in range(4)]
    ch[3] = np.abs(ch[3])  # a variance
    cases += [Case("batch_norm", [x, *ch], tol=REDUCE),
              Case("layer_norm", [a, _sprinkled(rng, (40,)), _sprinkled(rng, (40,))],
                   tol=REDUCE),
              Case("lrn", [x], {"size": 3}, tol=REDUCE),
              Case("mean", [a], {"axes": (2,)}, tol=REDUCE)]
    check(cases)


def _cnn(channels: int = 16):
    """conv + bias + relu -> max pool -> 1x1 conv + clip -> max pool -> spatial max and argmax."""
    rng = np.random.default_rng(1)
    b = GraphBuilder("cnn")
    x = b.input("x", TensorType((1, channels, 10, 10)))

    def w(*shape):
        return b.param(f"w{len(b.params)}", (rng.standard_normal(shape) * 0.2).astype(F32))

    (y,) = b.op("conv2d", [x, w(32, channels, 3, 3), w(32)], {"pads": (1, 1, 1, 1)})
    (y,) = b.op("relu", [y])
    (p,) = b.op("max_pool2d", [y], {"kernel_shape": (2, 2), "strides": (2, 2)})
    (z,) = b.op("conv2d", [p, w(32, 32, 1, 1)])
    (z,) = b.op("clip", [z], {"min": 0.0, "max": 6.0})
    (q,) = b.op("max_pool2d", [z], {"kernel_shape": (3, 3), "strides": (1, 1),
                                    "pads": (1, 1, 1, 1)})
    (m,) = b.op("max", [q], {"axes": (2, 3)})
    (a,) = b.op("argmax", [m], {"axis": -1})
    b.output(y, p, q, m, a)
    # NaN, inf in a few pixels only: the 3x3 conv spreads each to its neighbours, not further
    xs = rng.standard_normal((1, channels, 10, 10)).astype(F32)
    xs[0, 0, 2, 2], xs[0, 3, 7, 1], xs[0, 5, 5, 8] = np.nan, np.inf, -np.inf
    return b.build(), {"x": xs}


def _mlp():
    """matmul + bias + relu, matmul + clip, maximum with an input, softmax, argmax."""
    rng = np.random.default_rng(2)
    b = GraphBuilder("mlp")
    x = b.input("x", TensorType((6, 40)))
    other = b.input("other", TensorType((6, 33)))
    (y,) = b.op("matmul", [x, b.param("w1", (rng.standard_normal((40, 33)) * .2).astype(F32))])
    (y,) = b.op("add", [y, b.param("b1", rng.standard_normal(33).astype(F32))])
    (r,) = b.op("relu", [y])
    (h,) = b.op("hardtanh", [y])
    (mx,) = b.op("maximum", [y, other])
    (z,) = b.op("matmul", [r, b.param("w2", (rng.standard_normal((33, 10)) * .2).astype(F32))])
    (z,) = b.op("clip", [z], {"min": -1.0, "max": 1.0})
    (s,) = b.op("softmax", [z])
    (a,) = b.op("argmax", [z], {"axis": -1})
    b.output(r, h, mx, z, s, a)
    xs = rng.standard_normal((6, 40)).astype(F32)
    xs[1, 3], xs[3, 0], xs[4, 39] = np.nan, np.inf, -np.inf
    others = rng.standard_normal((6, 33)).astype(F32)
    others[0, :5] = [np.nan, np.inf, -np.inf, -0.0, 3e38]
    return b.build(), {"x": xs, "other": others}


@pytest.mark.parametrize("make", [_cnn, _mlp])
@pytest.mark.parametrize("opt_level", [2, 3])
def test_fused_epilogues_propagate_nan(make, opt_level):
    graph, feeds = make()
    optimized = kiln.optimize(graph, opt_level, layout_budget=0)
    ops = {n.op for n in optimized.nodes}
    assert "fused" in ops  # relu/clip run in the matmul/conv kernel
    if make is _cnn and opt_level == 3:
        assert "max_pool2d_nchwc" in ops  # the blocked pool
    want = interpret(graph, feeds)
    got = kiln.compile(graph, opt_level=opt_level, layout_budget=0).run(feeds)
    for i, (w, g) in enumerate(zip(want, got)):
        assert np.isnan(w).any() if w.dtype.kind == "f" else True
        why = mismatch(w, g, *GEMM)
        assert why is None, f"output {i}: {why}"


# -- out-of-range indices and zero divisors ------------------------------------------------------

TABLE = np.arange(50, dtype=F32).reshape(10, 5)


def _raises_everywhere(cases: list[Case], match: str) -> None:
    """The interpreter, the in-process build and the compiled artifact all raise InputError
    matching ``match``."""
    graph, feeds, _ = case_graph(cases)
    with pytest.raises(InputError, match=match):
        interpret(graph, feeds)
    with pytest.raises(InputError, match=match):
        build(graph).run(feeds)
    with pytest.raises(InputError, match=match):
        kiln.compile(graph, opt_level=2).run(feeds)


@pytest.mark.parametrize("op, args, attrs, bad", [
    ("gather", [TABLE, np.array([[1, 2], [10, 0]], np.int64)], {"axis": 0},
     r"10 is out of range for size 10 \(-10..9\) at \[1, 0\]"),
    ("gather", [TABLE, np.array([[3, -11]], np.int32)], {"axis": 0},
     r"-11 is out of range for size 10 \(-10..9\) at \[0, 1\]"),
    ("gather", [TABLE, np.array(5, np.int64)], {"axis": 1},
     r"5 is out of range for size 5 \(-5..4\) at \[\]"),
    ("take_along_axis", [TABLE, np.array([[0]] * 9 + [[-6]], np.int64)], {"axis": 1},
     r"-6 is out of range for size 5 \(-5..4\) at \[9, 0\]"),
    ("one_hot", [np.array([0, 2, 3], np.int64)], {"depth": 3},
     r"3 is out of range for size 3 \(-3..2\) at \[2\]"),
])
def test_out_of_range_indices_raise_input_error(op, args, attrs, bad):
    """The same message compiled as interpreted: the node, the index, the valid range."""
    consts = (0,) if op != "one_hot" else ()
    _raises_everywhere([Case(op, args, attrs, consts=consts)],
                       rf"^node %0 \({op}\): {op} index {bad}$")


def test_embedding_lookup_with_an_epilogue_checks_its_ids():
    """An embedding (gather of a table's rows) scaled in the same kernel: valid ids, negative
    ones included, give the interpreter's rows; one bad id raises InputError naming it."""
    b = GraphBuilder("embed")
    ids = b.input("ids", TensorType((2, 3), "int64"))
    (e,) = b.op("gather", [b.param("table", TABLE), ids], {"axis": 0})
    (e,) = b.op("mul", [e, b.op("full", [], {"shape": (), "value": 2.0})[0]])
    b.output(e)
    graph = b.build()
    assert "fused" in {n.op for n in kiln.optimize(graph, 2).nodes}
    model = kiln.compile(graph, opt_level=2)
    good = {"ids": np.array([[0, 9, -1], [-10, 4, 5]], np.int64)}
    np.testing.assert_array_equal(model.run(good)[0], interpret(graph, good)[0])
    bad = {"ids": np.array([[0, 9, -1], [4, 12, 5]], np.int64)}
    message = r"gather index 12 is out of range for size 10 \(-10..9\) at \[1, 1\]"
    with pytest.raises(InputError, match=message):
        model.run(bad)
    with pytest.raises(InputError, match=message):
        interpret(graph, bad)
    np.testing.assert_array_equal(model.run(good)[0], interpret(graph, good)[0])  # still fine


def test_an_index_computed_in_the_kernel_is_checked_too():
    """A scalar index made by ``full`` is copied into the fused kernel: the kernel checks it,
    and the error names the gather alone of the kernel's nodes."""
    b = GraphBuilder("row")
    x = b.input("x", TensorType((5, 4)))
    (i,) = b.op("full", [], {"shape": (), "value": 7, "dtype": "int64"})
    (g,) = b.op("gather", [x, i], {"axis": 0})
    b.output(b.op("mul", [g, b.op("full", [], {"shape": (), "value": 2.0})[0]])[0])
    graph = b.build()
    assert [n.op for n in kiln.optimize(graph, 2).nodes] == ["fused"]
    feeds = {"x": np.ones((5, 4), F32)}
    with pytest.raises(InputError, match=r"^node %1 \(gather\): gather index is out of range "
                                         r"for size 5 \(-5..4\)$"):
        kiln.compile(graph, opt_level=2).run(feeds)


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int32", "int64"])
def test_integer_division_by_zero_raises_input_error(dtype):
    a = np.array([7, 100, 5], dtype)
    _raises_everywhere([Case("div", [a, np.array([2, 0, 1], dtype)])],
                       r"^node %0 \(div\): integer division by zero: divisor 0 at \[1\]$")


def test_integer_division_truncates_and_the_lowest_value_over_minus_one_wraps():
    cases = []
    for dtype in ("int8", "int32", "int64"):
        low = np.iinfo(dtype).min
        a = np.array([7, -7, 7, -7, low, low, 0], dtype)
        b = np.array([2, 2, -2, -2, -1, 1, -1], dtype)
        cases.append(Case("div", [a, b], tol=EXACT))
    check(cases)


def test_a_zero_divisor_computed_inside_a_fused_kernel_raises():
    b = GraphBuilder("intdiv")
    x, y, z = (b.input(n, TensorType((4,), "int32")) for n in "xyz")
    (d,) = b.op("sub", [y, z])
    (q,) = b.op("div", [x, d])
    b.output(q)
    graph = b.build()
    assert [n.op for n in kiln.optimize(graph, 2).nodes] == ["fused"]
    model = kiln.compile(graph, opt_level=2)
    feeds = {"x": np.array([9, 8, 7, 6], np.int32), "y": np.array([3, 2, 5, 1], np.int32),
             "z": np.array([1, 2, 3, 4], np.int32)}
    with pytest.raises(InputError, match="integer division by zero"):
        model.run(feeds)
    feeds["z"][1] = 0
    np.testing.assert_array_equal(model.run(feeds)[0], interpret(graph, feeds)[0])
