"""nn ops (convolutions, pooling, normalizations, dropout) against torch.nn.functional.

Every case builds a one-node graph with GraphBuilder and runs it with ``interpret``, so the
registry, type inference and the numpy reference are tested together. Shapes are also checked
against torch's on hypothesis-drawn geometries: where torch rejects a geometry, kiln must too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from kiln.errors import AttributeError_, ShapeError
from kiln.ir import OPS, GraphBuilder, TensorType, interpret
from kiln.ir.ops.constant import random_bits

RTOL, ATOL = 1e-4, 1e-5


def graph(op: str, types: list[TensorType], attrs: dict):
    b = GraphBuilder()
    xs = [b.input(f"x{i}", t) for i, t in enumerate(types)]
    (y,) = b.op(op, xs, attrs)
    b.output(y)
    return b.build(), y.type


def infer(op: str, types: list[TensorType], **attrs) -> TensorType:
    return graph(op, types, attrs)[1]


def run(op: str, arrays: list[np.ndarray], **attrs) -> np.ndarray:
    """Run ``op`` on ``arrays`` through the interpreter; the result must be float32."""
    g, _ = graph(op, [TensorType.of(a) for a in arrays], attrs)
    (out,) = interpret(g, {f"x{i}": a for i, a in enumerate(arrays)})
    assert out.dtype == np.float32
    return out


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def close(got: np.ndarray, want: torch.Tensor) -> None:
    assert got.shape == tuple(want.shape)
    np.testing.assert_allclose(got, want.numpy(), rtol=RTOL, atol=ATOL)


def t(a: np.ndarray | None) -> torch.Tensor | None:
    return None if a is None else torch.from_numpy(a)


# -- convolutions ------------------------------------------------------------------------------

# x shape, w shape, bias, strides, pads (begins, ends), dilations, groups
CONV2D = [
    ((2, 3, 7, 8), (4, 3, 3, 3), False, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ((2, 3, 7, 8), (4, 3, 3, 3), True, (2, 2), (1, 1, 1, 1), (1, 1), 1),
    ((1, 2, 9, 6), (3, 2, 3, 2), True, (2, 1), (0, 1, 1, 2), (1, 1), 1),  # asymmetric pads
    ((1, 2, 10, 11), (2, 2, 3, 2), False, (1, 2), (2, 2, 2, 2), (2, 3), 1),  # dilation
    ((2, 4, 6, 6), (6, 2, 3, 3), True, (1, 1), (1, 1, 1, 1), (1, 1), 2),  # groups
    ((2, 5, 8, 8), (5, 1, 3, 3), True, (2, 2), (1, 1, 1, 1), (1, 1), 5),  # depthwise
    ((1, 3, 5, 5), (6, 1, 3, 3), False, (1, 1), (0, 0, 0, 0), (1, 1), 3),  # depth multiplier
    ((2, 3, 4, 5), (7, 3, 1, 1), True, (1, 1), (0, 0, 0, 0), (1, 1), 1),  # 1x1
    ((1, 2, 3, 3), (2, 2, 5, 5), False, (1, 1), (1, 1, 1, 1), (1, 1), 1),  # kernel > input
]


@pytest.mark.parametrize("xs, ws, bias, strides, pads, dilations, groups", CONV2D)
def test_conv2d_matches_torch(xs, ws, bias, strides, pads, dilations, groups):
    x, w = rand(*xs, seed=1), rand(*ws, seed=2)
    b = rand(ws[0], seed=3) if bias else None
    got = run("conv2d", [x, w] + ([b] if bias else []), strides=strides, pads=pads,
              dilations=dilations, groups=groups)
    top, left, bottom, right = pads
    xp = F.pad(t(x), (left, right, top, bottom))
    close(got, F.conv2d(xp, t(w), t(b), stride=strides, dilation=dilations, groups=groups))


@pytest.mark.parametrize("xs, ws, bias, strides, pads, dilations, groups", CONV2D)
def test_conv2d_integer_matches_torch(xs, ws, bias, strides, pads, dilations, groups):
    """uint8 x int8 summed exactly in int32, the input padded with ``pad_value`` (torch: pad
    the int64 input with it, then convolve in float64, exact for these sums)."""
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, xs).astype(np.uint8)
    w = rng.integers(-128, 128, ws).astype(np.int8)
    g, _ = graph("conv2d_integer", [TensorType.of(x), TensorType.of(w)],
                 dict(strides=strides, pads=pads, dilations=dilations, groups=groups,
                      pad_value=77))
    (got,) = interpret(g, {"x0": x, "x1": w})
    top, left, bottom, right = pads
    xp = F.pad(torch.from_numpy(x.astype(np.float64)), (left, right, top, bottom), value=77.0)
    want = F.conv2d(xp, torch.from_numpy(w.astype(np.float64)), stride=strides,
                    dilation=dilations, groups=groups)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want.numpy().astype(np.int64))


def test_conv2d_integer_takes_integers_only():
    with pytest.raises(ShapeError, match="x must be int8, uint8 or int32, got float32"):
        infer("conv2d_integer", [TensorType((1, 2, 4, 4)), TensorType((3, 2, 1, 1), "int8")])
    with pytest.raises(AttributeError_, match="pad_value must be an int"):
        infer("conv2d_integer", [TensorType((1, 2, 4, 4), "uint8"),
                                 TensorType((3, 2, 1, 1), "int8")], pad_value=0.5)


CONV1D = [
    ((2, 3, 10), (4, 3, 3), True, (1,), (0, 0), (1,), 1),
    ((2, 3, 10), (4, 3, 3), False, (2,), (1, 2), (1,), 1),
    ((1, 4, 12), (4, 2, 3), True, (3,), (2, 2), (2,), 2),
    ((1, 6, 9), (6, 1, 4), False, (1,), (3, 0), (1,), 6),
]


@pytest.mark.parametrize("xs, ws, bias, strides, pads, dilations, groups", CONV1D)
def test_conv1d_matches_torch(xs, ws, bias, strides, pads, dilations, groups):
    x, w = rand(*xs, seed=1), rand(*ws, seed=2)
    b = rand(ws[0], seed=3) if bias else None
    got = run("conv1d", [x, w] + ([b] if bias else []), strides=strides, pads=pads,
              dilations=dilations, groups=groups)
    xp = F.pad(t(x), pads)
    close(got, F.conv1d(xp, t(w), t(b), stride=strides, dilation=dilations, groups=groups))


# x shape, w shape [C, O/groups, kh, kw], bias, strides, pads, output_padding, dilations, groups
CONV_T = [
    ((2, 3, 4, 5), (3, 2, 3, 3), True, (1, 1), (0, 0, 0, 0), (0, 0), (1, 1), 1),
    ((2, 3, 4, 5), (3, 2, 3, 3), False, (2, 2), (1, 1, 1, 1), (1, 1), (1, 1), 1),
    ((1, 2, 3, 4), (2, 3, 2, 3), True, (3, 2), (1, 0, 1, 0), (2, 1), (1, 1), 1),
    ((1, 2, 5, 5), (2, 2, 3, 3), True, (1, 2), (2, 1, 2, 1), (0, 1), (2, 2), 1),  # dilation
    ((1, 2, 4, 4), (2, 2, 3, 3), False, (2, 1), (0, 0, 0, 0), (1, 1), (1, 2), 1),  # op < dil
    ((2, 4, 3, 3), (4, 3, 3, 2), True, (2, 2), (1, 0, 1, 0), (1, 0), (1, 1), 2),  # groups
    ((1, 3, 4, 4), (3, 1, 3, 3), True, (2, 2), (1, 1, 1, 1), (0, 0), (1, 1), 3),  # depthwise
    ((1, 2, 4, 5), (2, 3, 3, 3), True, (2, 2), (0, 1, 2, 0), (1, 0), (1, 1), 1),  # asymmetric
]


@pytest.mark.parametrize("xs, ws, bias, strides, pads, out_pad, dilations, groups", CONV_T)
def test_conv_transpose2d_matches_torch(xs, ws, bias, strides, pads, out_pad, dilations, groups):
    x, w = rand(*xs, seed=1), rand(*ws, seed=2)
    b = rand(ws[1] * groups, seed=3) if bias else None
    got = run("conv_transpose2d", [x, w] + ([b] if bias else []), strides=strides, pads=pads,
              output_padding=out_pad, dilations=dilations, groups=groups)
    top, left, bottom, right = pads
    symmetric = (top, left) == (bottom, right)
    want = F.conv_transpose2d(t(x), t(w), t(b), stride=strides, output_padding=out_pad,
                              padding=(top, left) if symmetric else 0, groups=groups,
                              dilation=dilations)
    if not symmetric:  # torch pads symmetrically only: crop its unpadded result
        want = want[..., top:want.shape[2] - bottom, left:want.shape[3] - right]
    close(got, want)


def test_conv_bias_is_optional_and_batch_may_be_symbolic():
    x, w, b = rand(3, 2, 5, 5), rand(4, 2, 3, 3, seed=1), rand(4, seed=2)
    assert infer("conv2d", [TensorType(("N", 2, 5, 5)), TensorType.of(w)]) == TensorType(
        ("N", 4, 3, 3))
    bld = GraphBuilder()
    xv = bld.input("x", TensorType(("N", 2, 5, 5)))
    (y,) = bld.op("conv2d", [xv, bld.param("w", w), bld.param("b", b)])
    bld.output(y)
    (out,) = interpret(bld.build(), {"x": x})
    close(out, F.conv2d(t(x), t(w), t(b)))


# -- pooling -----------------------------------------------------------------------------------

# x shape, kernel, strides, pads (symmetric, as torch), dilations, ceil_mode
MAX_POOL = [
    ((2, 3, 8, 8), (2, 2), None, (0, 0), (1, 1), False),
    ((2, 3, 7, 9), (3, 3), (2, 2), (1, 1), (1, 1), False),
    ((1, 2, 7, 7), (3, 3), (2, 2), (0, 0), (1, 1), True),  # last window hangs past the input
    ((1, 2, 5, 5), (2, 2), (2, 2), (1, 1), (1, 1), True),  # ceil window dropped (starts in pad)
    ((1, 2, 9, 10), (3, 2), (2, 3), (1, 1), (2, 2), False),  # dilation
    ((1, 2, 9, 10), (3, 3), (2, 2), (1, 0), (2, 1), True),
    ((2, 1, 6, 6), (3, 1), (1, 1), (1, 0), (1, 1), False),
]


@pytest.mark.parametrize("xs, kernel, strides, pads, dilations, ceil_mode", MAX_POOL)
def test_max_pool2d_matches_torch(xs, kernel, strides, pads, dilations, ceil_mode):
    x = rand(*xs)
    got = run("max_pool2d", [x], kernel_shape=kernel, strides=strides, pads=pads + pads,
              dilations=dilations, ceil_mode=ceil_mode)
    close(got, F.max_pool2d(t(x), kernel, strides, pads, dilations, ceil_mode=ceil_mode))


def test_max_pool2d_asymmetric_pads_are_minus_infinity():
    x = rand(1, 2, 6, 7) - 10  # all negative: zero padding would win the max
    got = run("max_pool2d", [x], kernel_shape=(3, 3), strides=(2, 2), pads=(0, 1, 1, 0))
    want = F.max_pool2d(F.pad(t(x), (1, 0, 0, 1), value=-float("inf")), 3, 2)
    close(got, want)


# x shape, kernel, strides, pads (symmetric)
AVG_POOL = [
    ((2, 3, 8, 8), (2, 2), None, (0, 0)),
    ((2, 3, 7, 9), (3, 3), (2, 2), (1, 1)),
    ((1, 2, 6, 6), (3, 3), (2, 2), (1, 1)),  # ceil: last window hangs past the padded input
    ((1, 2, 5, 5), (2, 2), (2, 2), (1, 1)),  # ceil: last window dropped
    ((1, 2, 7, 8), (3, 2), (3, 3), (1, 1)),
    ((1, 1, 4, 9), (2, 4), (1, 3), (1, 2)),
]


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("xs, kernel, strides, pads", AVG_POOL)
def test_avg_pool2d_matches_torch(xs, kernel, strides, pads, ceil_mode, count_include_pad):
    x = rand(*xs)
    got = run("avg_pool2d", [x], kernel_shape=kernel, strides=strides, pads=pads + pads,
              ceil_mode=ceil_mode, count_include_pad=count_include_pad)
    close(got, F.avg_pool2d(t(x), kernel, strides, pads, ceil_mode=ceil_mode,
                            count_include_pad=count_include_pad))


def test_avg_pool2d_asymmetric_pads_count_zeros():
    x = rand(1, 2, 6, 7)
    got = run("avg_pool2d", [x], kernel_shape=(3, 2), strides=(2, 2), pads=(1, 0, 0, 1))
    close(got, F.avg_pool2d(F.pad(t(x), (0, 1, 1, 0)), (3, 2), 2))


@pytest.mark.parametrize("xs", [(2, 3, 5, 7), (1, 4, 1, 1), (3, 1, 8, 2)])
def test_global_avg_pool2d_matches_torch(xs):
    x = rand(*xs)
    close(run("global_avg_pool2d", [x]), F.adaptive_avg_pool2d(t(x), 1))


def test_pools_take_symbolic_batch_and_channels():
    assert infer("global_avg_pool2d", [TensorType(("N", "C", "H", "W"))]) == TensorType(
        ("N", "C", 1, 1))
    x = TensorType(("N", "C", 6, 7))
    assert infer("max_pool2d", [x], kernel_shape=(2, 2)) == TensorType(("N", "C", 3, 3))
    assert infer("avg_pool2d", [x], kernel_shape=(3, 3), strides=(1, 2), ceil_mode=True) == (
        TensorType(("N", "C", 4, 3)))


# -- normalization and dropout -----------------------------------------------------------------


@pytest.mark.parametrize("xs", [(4, 3), (2, 3, 5), (2, 3, 4, 5)])
@pytest.mark.parametrize("eps", [1e-5, 0.1])
def test_batch_norm_matches_torch(xs, eps):
    c = xs[1]
    x, scale, bias, mean = rand(*xs), rand(c, seed=1), rand(c, seed=2), rand(c, seed=3)
    var = np.abs(rand(c, seed=4)) + np.float32(0.1)
    got = run("batch_norm", [x, scale, bias, mean, var], epsilon=eps)
    close(got, F.batch_norm(t(x), t(mean), t(var), t(scale), t(bias), training=False, eps=eps))


@pytest.mark.parametrize("n_params", [0, 1, 2])
@pytest.mark.parametrize("xs, axis", [((2, 3, 4, 5), -1), ((2, 3, 4, 5), -2), ((2, 3, 4, 5), 1),
                                      ((6, 8), 0), ((7,), -1)])
def test_layer_norm_matches_torch(xs, axis, n_params):
    x = rand(*xs) * np.float32(3) + np.float32(1)
    norm = xs[axis % len(xs):]
    params = [rand(*norm, seed=1), rand(*norm, seed=2)][:n_params]
    got = run("layer_norm", [x, *params], axis=axis, epsilon=1e-5)
    w, b = (params + [None, None])[:2]
    close(got, F.layer_norm(t(x), norm, t(w), t(b), eps=1e-5))


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("xs", [(2, 7, 5), (2, 6, 3, 4), (1, 5, 2, 3, 2)])
def test_lrn_matches_torch(size, xs):
    x = rand(*xs)
    got = run("lrn", [x], size=size, alpha=0.5, beta=0.75, bias=2.0)
    close(got, F.local_response_norm(t(x), size, alpha=0.5, beta=0.75, k=2.0))


def test_lrn_defaults_match_torch():
    x = rand(2, 8, 3, 3) * np.float32(20)
    close(run("lrn", [x], size=3), F.local_response_norm(t(x), 3))


def test_dropout_is_a_copy_when_not_training():
    x = rand(3, 4)
    out = run("dropout", [x], p=0.9, seed=5)
    np.testing.assert_array_equal(out, x)
    assert not np.shares_memory(out, x)


@pytest.mark.parametrize("p", [0.0, 0.25, 0.5, 0.9])
def test_dropout_mask_follows_random_bits(p):
    x = np.abs(rand(8, 16, 32)) + np.float32(0.5)  # no zeros: a zero in the output is a drop
    out = run("dropout", [x], p=p, training=True, seed=7)
    uniform = (random_bits(7, x.size) >> 8).astype(np.float64) * 2.0**-24
    keep = (uniform >= p).reshape(x.shape)
    np.testing.assert_array_equal(out != 0, keep)
    np.testing.assert_allclose(out[keep], x[keep] / np.float32(1 - p), rtol=1e-6)
    assert abs(keep.mean() - (1 - p)) < 0.03
    np.testing.assert_array_equal(out, run("dropout", [x], p=p, training=True, seed=7))
    if p > 0:
        assert not np.array_equal(out, run("dropout", [x], p=p, training=True, seed=8))


# -- FLOP estimates ----------------------------------------------------------------------------


def flops(op: str, types: list[TensorType], **attrs) -> int:
    g, out = graph(op, types, attrs)
    return OPS[op].flops(types, [out], dict(g.nodes[0].attrs))


def test_flop_estimates():
    x, w = TensorType((2, 4, 8, 8)), TensorType((6, 2, 3, 3))
    assert flops("conv2d", [x, w], pads=(1, 1, 1, 1), groups=2) == 2 * (2 * 6 * 8 * 8) * 2 * 9
    assert flops("max_pool2d", [x], kernel_shape=(2, 2)) == (2 * 4 * 4 * 4) * 4
    assert flops("dropout", [x]) == 0


# -- type inference against torch on drawn geometries ------------------------------------------

small = st.integers(1, 3)


def torch_shape(fn) -> tuple[int, ...] | None:
    """fn()'s output shape, or None where torch rejects the geometry."""
    try:
        return tuple(fn().shape)
    except RuntimeError:
        return None


def check_inference(want: tuple | None, op: str, types: list[TensorType], attrs: dict, n):
    # kiln also rejects the empty outputs torch gives conv_transpose2d (it rejects only < 0)
    if want is None or 0 in want[2:]:
        with pytest.raises((ShapeError, AttributeError_)):
            infer(op, types, **attrs)
    else:
        assert infer(op, types, **attrs) == TensorType((n,) + want[1:])


@given(n=st.sampled_from([2, "N"]), cpg=small, opg=small, g=small, h=st.integers(1, 9),
       w=st.integers(1, 9), k=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       s=st.tuples(small, small), p=st.tuples(st.integers(0, 2), st.integers(0, 2)),
       d=st.tuples(st.integers(1, 2), st.integers(1, 2)))
def test_conv2d_inference_matches_torch(n, cpg, opg, g, h, w, k, s, p, d):
    x, wt = torch.zeros(2, cpg * g, h, w), torch.zeros(opg * g, cpg, *k)
    want = torch_shape(lambda: F.conv2d(x, wt, stride=s, padding=p, dilation=d, groups=g))
    types = [TensorType((n, cpg * g, h, w)), TensorType(tuple(wt.shape))]
    check_inference(want, "conv2d", types, dict(strides=s, pads=p + p, dilations=d, groups=g), n)


@given(n=st.sampled_from([1, "B"]), cpg=small, opg=small, g=small, h=st.integers(1, 5),
       w=st.integers(1, 5), k=st.tuples(small, small), s=st.tuples(small, small),
       p=st.tuples(st.integers(0, 2), st.integers(0, 2)),
       op=st.tuples(st.integers(0, 2), st.integers(0, 2)), d=st.tuples(small, small))
def test_conv_transpose2d_inference_matches_torch(n, cpg, opg, g, h, w, k, s, p, op, d):
    x, wt = torch.zeros(1, cpg * g, h, w), torch.zeros(cpg * g, opg, *k)
    want = torch_shape(lambda: F.conv_transpose2d(x, wt, stride=s, padding=p, output_padding=op,
                                                  groups=g, dilation=d))
    types = [TensorType((n, cpg * g, h, w)), TensorType(tuple(wt.shape))]
    attrs = dict(strides=s, pads=p + p, output_padding=op, dilations=d, groups=g)
    check_inference(want, "conv_transpose2d", types, attrs, n)


@given(n=st.sampled_from([1, "N"]), h=st.integers(1, 9), w=st.integers(1, 9),
       k=st.tuples(st.integers(1, 4), st.integers(1, 4)), s=st.tuples(small, small),
       p=st.tuples(st.integers(0, 2), st.integers(0, 2)),
       d=st.tuples(st.integers(1, 2), st.integers(1, 2)), ceil_mode=st.booleans(),
       avg=st.booleans())
def test_pool_inference_matches_torch(n, h, w, k, s, p, d, ceil_mode, avg):
    x, types = torch.zeros(1, 2, h, w), [TensorType((n, 2, h, w))]
    attrs = dict(kernel_shape=k, strides=s, pads=p + p, ceil_mode=ceil_mode)
    if avg:
        want = torch_shape(lambda: F.avg_pool2d(x, k, s, p, ceil_mode=ceil_mode))
        check_inference(want, "avg_pool2d", types, attrs, n)
    else:
        want = torch_shape(lambda: F.max_pool2d(x, k, s, p, d, ceil_mode=ceil_mode))
        check_inference(want, "max_pool2d", types, {**attrs, "dilations": d}, n)


# -- errors ------------------------------------------------------------------------------------

X, W3 = TensorType((2, 8, 6, 6)), TensorType((4, 4, 3, 3))
TW = TensorType((8, 2, 3, 3))  # conv_transpose2d weight for X
ERRORS = [
    ("conv2d", [TensorType((8, 6, 6)), W3], {}, ShapeError, r"x must have rank 4"),
    ("conv2d", [TensorType((2, 8, "H", 6)), W3], {}, ShapeError,
     r"spatial dimension H of x must be static, got symbolic dimension 'H'"),
    ("conv2d", [TensorType((2, "C", 6, 6)), W3], {}, ShapeError,
     r"input channels per group but x has C channels"),
    ("conv2d", [TensorType((2, "C", 6, 6)), W3], {"groups": 2}, ShapeError,
     r"channel dimension .* 'C'"),
    ("conv2d", [X.with_dtype("int32"), W3.with_dtype("int32")], {}, ShapeError,
     "floating-point"),
    ("conv2d", [X, W3.with_dtype("float64")], {"groups": 2}, ShapeError, "dtypes differ"),
    ("conv2d", [X, TensorType((4, 4, 3))], {"groups": 2}, ShapeError, "weight must have rank 4"),
    ("conv2d", [X, TensorType(("O", 4, 3, 3))], {"groups": 2}, ShapeError,
     "dimension 0 of the weight must be static, got symbolic dimension 'O'"),
    ("conv2d", [X, W3], {"groups": 2, "strides": (1,)}, AttributeError_,
     r"strides must be a tuple of 2 ints"),
    ("conv2d", [X, W3], {"groups": 2, "strides": (1, 0)}, AttributeError_,
     "strides must be positive"),
    ("conv2d", [X, W3], {"groups": 2, "dilations": (0, 1)}, AttributeError_,
     "dilations must be positive"),
    ("conv2d", [X, W3], {"groups": 2, "pads": (0, -1, 0, 0)}, AttributeError_,
     "pads must be non-negative"),
    ("conv2d", [X, W3], {"groups": 0}, AttributeError_, "groups must be a positive int"),
    ("conv2d", [X, W3], {"groups": 3}, ShapeError, "groups=3 does not divide the 8 channels"),
    ("conv2d", [X, TensorType((4, 3, 3, 3))], {"groups": 2}, ShapeError,
     "weight has 3 input channels per group but x has 8 channels and groups=2"),
    ("conv2d", [X, TensorType((3, 4, 3, 3))], {"groups": 2}, ShapeError,
     "does not divide the weight's 3 output channels"),
    ("conv2d", [X, W3, TensorType((3,))], {"groups": 2}, ShapeError, r"bias must have shape \[4\]"),
    ("conv2d", [X, TensorType((4, 8, 7, 3))], {}, ShapeError, "output spatial size"),
    ("conv2d", [X, W3, TensorType((4,)), TensorType((4,))], {"groups": 2}, ShapeError,
     "takes 2..3 inputs"),
    ("conv1d", [X, TensorType((4, 8, 3))], {}, ShapeError, r"x must have rank 3 \(\[N, C, W\]\)"),
    ("conv_transpose2d", [X, TW], {"strides": (2, 2), "output_padding": (2, 0)}, AttributeError_,
     "output_padding .* smaller than either the stride"),
    ("conv_transpose2d", [X, TensorType((4, 2, 3, 3))], {}, ShapeError,
     "weight has 4 input channels"),
    ("conv_transpose2d", [X, TW], {"groups": 3}, ShapeError, "does not divide the 8 channels"),
    ("conv_transpose2d", [X, TW, TensorType((2,))], {"groups": 2}, ShapeError,
     r"bias must have shape \[4\] \(the output channels\)"),
    ("conv_transpose2d", [X, TW], {"pads": (4, 4, 4, 4)}, ShapeError, "output spatial size"),
    ("max_pool2d", [X], {}, AttributeError_, "missing required attribute 'kernel_shape'"),
    ("max_pool2d", [X], {"kernel_shape": (3, 3), "pads": (2, 1, 1, 1)}, AttributeError_,
     "at most half the kernel"),
    ("max_pool2d", [X], {"kernel_shape": (7, 7)}, ShapeError, "output spatial size"),
    ("max_pool2d", [X], {"kernel_shape": (2, 2), "ceil_mode": 1}, AttributeError_,
     "ceil_mode must be a bool"),
    ("max_pool2d", [TensorType(("N", 8, 6, "W"))], {"kernel_shape": (2, 2)}, ShapeError,
     "spatial dimension W of x must be static"),
    ("avg_pool2d", [X], {"kernel_shape": (2, 2), "count_include_pad": None}, AttributeError_,
     "count_include_pad must be a bool"),
    ("avg_pool2d", [X], {"kernel_shape": (2,)}, AttributeError_, "kernel_shape must be a tuple"),
    ("global_avg_pool2d", [TensorType((2, 8, 6))], {}, ShapeError, "x must have rank 4"),
    ("batch_norm", [TensorType((8,))] * 5, {}, ShapeError, "rank >= 2"),
    ("batch_norm", [X] + [TensorType((8,))] * 3 + [TensorType((4,))], {}, ShapeError,
     r"var must have shape \[8\]"),
    ("layer_norm", [X, TensorType((6, 6))], {}, ShapeError, r"weight must have shape \[6\]"),
    ("layer_norm", [X, TensorType((6, 6)), TensorType((6,))], {"axis": -2}, ShapeError,
     r"bias must have shape \[6, 6\]"),
    ("layer_norm", [X], {"axis": 4}, ShapeError, "axis 4 is out of range"),
    ("layer_norm", [TensorType(())], {}, ShapeError, "rank >= 1"),
    ("lrn", [X], {"size": 0}, AttributeError_, "size must be a positive int"),
    ("lrn", [TensorType((2, 8))], {"size": 3}, ShapeError, "rank >= 3"),
    ("dropout", [X], {"p": 1.0}, AttributeError_, r"p must be a number in \[0, 1\)"),
    ("dropout", [X], {"p": -0.1}, AttributeError_, r"p must be a number in \[0, 1\)"),
    ("dropout", [X], {"training": "yes"}, AttributeError_, "training must be a bool"),
    ("dropout", [X], {"seed": 1.5}, AttributeError_, "seed must be an int"),
    ("dropout", [X], {"seed": 2**32}, AttributeError_, r"seed must be an int in \[0, 2\*\*32\)"),
]


@pytest.mark.parametrize("op, types, attrs, exc, match", ERRORS)
def test_errors(op, types, attrs, exc, match):
    with pytest.raises(exc, match=match):
        infer(op, types, **attrs)
