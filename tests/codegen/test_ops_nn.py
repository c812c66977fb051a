"""Compiled == interpreted for data-movement, neural-network and input-less ops."""

from __future__ import annotations

import numpy as np
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from tests.codegen.cases import EXACT, FAST_MATH, GEMM, REDUCE, Case, check_cases, randn
from tests.codegen.test_ops import shapes

# few examples and no shrinking: every example costs a tvm.compile
FEW = settings(max_examples=4, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])


@FEW
@given(st.data())
def test_shape_ops(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    shape = data.draw(shapes(1, 4, 7))
    rank = len(shape)
    x = randn(rng, shape)
    axis = data.draw(st.integers(-rank, rank - 1))
    perm = tuple(data.draw(st.permutations(range(rank))))
    sizes = [rng.integers(1, 4) for _ in range(2)]
    parts = [randn(rng, shape[:axis % rank] + (int(s),) + shape[axis % rank + 1:])
             for s in sizes]
    n_ax = shape[axis % rank]
    idx = rng.integers(-n_ax, n_ax, data.draw(shapes(0, 2, 4))).astype("int64")
    along = rng.integers(0, n_ax, shape[:axis % rank] + (3,) + shape[axis % rank + 1:])
    start = data.draw(st.integers(-n_ax - 1, n_ax))
    step = data.draw(st.sampled_from([1, 2, -1, -2]))
    pads = tuple(data.draw(st.integers(0, 2)) for _ in range(2 * rank))
    reflect = tuple(min(p, d - 1) for p, d in zip(pads, shape + shape))
    cases = [
        Case("reshape", [x], {"shape": (-1,)}, tol=EXACT),
        Case("reshape", [x], {"shape": (int(np.prod(shape[:1])), -1)}, tol=EXACT),
        Case("flatten", [x], {"start_dim": 0, "end_dim": -1}, tol=EXACT),
        Case("unsqueeze", [x], {"axes": (0, rank + 1)}, tol=EXACT),
        Case("squeeze", [x[None]], {"axes": (0,)}, tol=EXACT),
        Case("transpose", [x], {"perm": perm}, tol=EXACT),
        Case("transpose", [x], tol=EXACT),
        Case("concat", [parts[0], x, parts[1]], {"axis": axis}, tol=EXACT),
        Case("split", [x], {"axis": axis, "sizes": (n_ax // 2, n_ax - n_ax // 2)}, tol=EXACT),
        Case("slice", [x], {"starts": (start,), "ends": (2**31 - 1 if step > 0 else -2**31,),
                            "axes": (axis,), "steps": (step,)}, tol=EXACT),
        Case("gather", [x, idx], {"axis": axis}, tol=EXACT),
        Case("take_along_axis", [x, along.astype("int32")], {"axis": axis}, tol=EXACT),
        Case("expand", [x[..., :1]], {"shape": (2,) + shape}, tol=EXACT),
        Case("pad", [x], {"pads": pads, "value": 1.5}, tol=EXACT),
        Case("pad", [x], {"pads": pads, "mode": "edge"}, tol=EXACT),
        Case("pad", [x], {"pads": reflect, "mode": "reflect"}, tol=EXACT),
        Case("one_hot", [idx], {"depth": n_ax}, tol=EXACT),
        Case("identity", [x], tol=EXACT),
    ]
    if rank >= 2:
        k = data.draw(st.integers(-2, 2))
        cases += [Case("tril", [x], {"k": k}, tol=EXACT), Case("triu", [x], {"k": k}, tol=EXACT)]
    check_cases(cases)


@FEW
@given(st.data())
def test_convolutions(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    n, c, o = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 20)), \
        data.draw(st.integers(1, 20))
    h, w = data.draw(st.integers(5, 16)), data.draw(st.integers(5, 40))
    k = data.draw(st.sampled_from([1, 3, 5]))
    s = data.draw(st.integers(1, 2))
    p = tuple(data.draw(st.integers(0, k // 2)) for _ in range(4))
    d = data.draw(st.integers(1, 2)) if k <= 3 else 1
    attrs = {"strides": (s, s), "pads": p, "dilations": (d, d)}
    x, wt, b = randn(rng, (n, c, h, w)), randn(rng, (o, c, k, k)), randn(rng, (o,))
    g = data.draw(st.sampled_from([g for g in (2, 3, 4) if c % g == 0] or [1]))
    og = g * data.draw(st.integers(1, 3))
    cases = [
        Case("conv2d", [x, wt, b], attrs, tol=GEMM, consts=(1, 2)),
        Case("conv2d", [x, wt], attrs, tol=GEMM),
        Case("conv2d", [x, randn(rng, (og, c // g, k, k))], {**attrs, "groups": g}, tol=GEMM,
             consts=(1,)),
        Case("conv2d", [x, randn(rng, (c, 1, k, k)), randn(rng, (c,))], {**attrs, "groups": c},
             tol=GEMM, consts=(1,)),  # depthwise, packed
        Case("conv2d", [x, randn(rng, (c, 1, k, k))], {**attrs, "groups": c}, tol=GEMM),
        Case("conv1d", [x[:, :, 0], wt[:, :, 0], b],
             {"strides": (s,), "pads": p[:2], "dilations": (d,)}, tol=GEMM, consts=(1,)),
        Case("conv_transpose2d", [x, randn(rng, (c, 3, k, k)), randn(rng, (3,))],
             {"strides": (s, s), "pads": p, "dilations": (d, d)}, tol=GEMM, consts=(1,)),
    ]
    check_cases(cases)


@FEW
@given(st.data())
def test_pools_and_norms(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    n, c = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 12))
    h, w = data.draw(st.integers(4, 15)), data.draw(st.integers(6, 40))  # dilated windows fit
    k = data.draw(st.integers(2, 3))
    s = data.draw(st.integers(1, 3))
    p = tuple(data.draw(st.integers(0, k // 2)) for _ in range(4))
    ceil = data.draw(st.booleans())
    x = randn(rng, (n, c, h, w))
    pool = {"kernel_shape": (k, k), "strides": (s, s), "pads": p, "ceil_mode": ceil}
    ch = (c,)
    bn = [x, randn(rng, ch), randn(rng, ch), randn(rng, ch), rng.uniform(0.5, 2, ch)]
    axis = data.draw(st.integers(-3, -1))
    norm_shape = x.shape[axis:]
    cases = [
        Case("max_pool2d", [x], {**pool, "dilations": (1, data.draw(st.integers(1, 2)))},
             tol=EXACT),
        Case("avg_pool2d", [x], {**pool, "count_include_pad": data.draw(st.booleans())},
             tol=REDUCE),
        Case("global_avg_pool2d", [x], tol=REDUCE),
        Case("batch_norm", [bn[0]] + [a.astype("float32") for a in bn[1:]], tol=REDUCE,
             consts=(1, 2, 3, 4)),
        Case("layer_norm", [x, randn(rng, norm_shape), randn(rng, norm_shape)], {"axis": axis},
             tol=REDUCE, consts=(1, 2)),
        Case("layer_norm", [x], {"axis": axis, "epsilon": 1e-3}, tol=REDUCE),
        Case("lrn", [x], {"size": data.draw(st.integers(1, 5))}, tol=REDUCE),
        Case("dropout", [x], {"p": 0.3, "training": True, "seed": 7}, tol=FAST_MATH),
        Case("dropout", [x], {"p": 0.3}, tol=EXACT),
    ]
    check_cases(cases)


@FEW
@given(st.data())
def test_constants(data):
    shape = data.draw(shapes(0, 3, 9))
    seed = data.draw(st.integers(0, 2**32 - 1))
    cases = [
        Case("full", [], {"shape": shape, "value": 2.5}, tol=EXACT),
        Case("full", [], {"shape": shape, "value": 3, "dtype": "int32"}, tol=EXACT),
        Case("arange", [], {"start": -3, "stop": 17, "step": 3}, tol=EXACT),
        Case("dims", [], {"values": (3, 5, 7)}, tol=EXACT),
        Case("arange", [], {"start": 0.5, "stop": 2.0, "step": 0.25, "dtype": "float32"},
             tol=EXACT),
        Case("random_uniform", [], {"shape": shape, "low": -2.0, "high": 3.0, "seed": seed},
             tol=EXACT),
        Case("random_normal", [], {"shape": shape, "mean": 1.0, "std": 2.0, "seed": seed},
             tol=(1e-6, 1e-6)),
    ]
    check_cases(cases)


def test_long_rows_are_summed_without_float32_drift():
    """A norm or sum over 262144 elements (an instance norm's plane): float32 lane sums of
    16384 values each drifted by 3.5e-6 on O(1) outputs; long rows accumulate in float64."""
    from kiln.codegen.build import build
    from kiln.ir import GraphBuilder, TensorType

    shape = (1, 2, 512, 512)
    x = (np.random.default_rng(0).standard_normal(shape) * 2 + 3).astype(np.float32)
    b = GraphBuilder("long_rows")
    xv = b.input("x", TensorType(shape))
    (y,) = b.op("layer_norm", [xv], {"axis": 2, "epsilon": 1e-5})
    (s,) = b.op("sum", [xv], {"axes": [2, 3]})
    b.output(y, s)
    got_y, got_s = build(b.build()).run({"x": x})
    x64 = x.astype(np.float64)
    mean, var = x64.mean((2, 3), keepdims=True), x64.var((2, 3), keepdims=True)
    np.testing.assert_allclose(got_y, (x64 - mean) / np.sqrt(var + 1e-5), rtol=0, atol=1e-6)
    np.testing.assert_allclose(got_s, x64.sum((2, 3)), rtol=1e-7)
