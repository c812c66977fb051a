"""The int8 pass on quantized models made by onnxruntime's quantize_static: which matmuls
and convolutions become integer ops, and that the graph still computes what it did.

The integer sums are exact where the float graph rounded, so a requantized value can move
by one quantization step where it lay on a rounding boundary: outputs are compared within
one step of the output's scale, and almost all of them must be equal."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import kiln
from kiln.ir import GraphBuilder, TensorType, interpret, parse, verify
from kiln.passes.context import PassContext
from kiln.passes.manager import optimize
from kiln.targets import resolve_target
from tests.quantized_models import inputs, quantized

VNNI = resolve_target("llvm -mcpu=znver4")  # AVX512-VNNI, no AMX
NO_VNNI = resolve_target("llvm -mcpu=skylake-avx512")


def run_pass(graph, target=VNNI):
    return optimize(graph, ["int8"], ctx=PassContext(target=target), verify=True)


def ops(graph) -> list[str]:
    return [n.op for n in graph.nodes]


def output_step(model) -> float:
    """The scale of the last DequantizeLinear: one quantization step of the output."""
    from onnx import numpy_helper

    last = [n for n in model.graph.node if n.op_type == "DequantizeLinear"][-1]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return float(inits[last.input[1]])


def within_one_step(got, want, step):
    diff = np.abs(got.astype(np.float64) - want)
    assert diff.max() <= step * 1.01, f"off by {diff.max() / step:.2f} steps"
    assert np.mean(diff == 0) >= 0.9


@pytest.mark.parametrize("kind", [dict(), dict(activations="QUInt8", per_channel=True)],
                         ids=["int8-per-tensor", "uint8-per-channel"])
def test_every_quantized_matmul_and_conv_becomes_integer(tmp_path, kind):
    model = quantized(tmp_path, **kind)
    graph = kiln.from_onnx(model)
    after = run_pass(graph)
    assert ops(after).count("conv2d_integer") == 2
    assert ops(after).count("matmul_integer") == 2
    assert "matmul" not in ops(after)
    (depthwise,) = [n for n in after.nodes if n.op == "conv2d"]  # no native grouped kernel
    assert depthwise.attrs["groups"] == 16
    for seed in range(3):
        feeds = inputs(100 + seed)
        (want,), (got,) = interpret(graph, feeds), interpret(after, feeds)
        within_one_step(got, want, output_step(model))


def test_int8_activations_are_shifted_once_per_value(tmp_path):
    """The kernels multiply unsigned bytes: an int8 activation is read + 128 as uint8, one
    such value per quantized tensor however many ops read it."""
    after = run_pass(kiln.from_onnx(quantized(tmp_path)))
    shifted = [n for n in after.nodes if n.op == "cast" and n.attrs["dtype"] == "uint8"]
    assert len(shifted) == len({n.inputs[0] for n in shifted}) == 4  # (2 convs, 2 matmuls)
    assert all(n.inputs[0].dtype == "uint8" for n in after.nodes if n.op.endswith("_integer"))


def test_weights_that_do_not_fit_int8_stay_float(tmp_path):
    """uint8 weights with a zero point far from 128 have w - zero beyond int8: those ops
    keep their float form, and the graph still computes the same."""
    model = quantized(tmp_path, activations="QUInt8", weights="QUInt8")
    graph = kiln.from_onnx(model)
    after = run_pass(graph)
    assert ops(after).count("conv2d") > 1  # (which ones depends on the weights' ranges)
    feeds = inputs(7)
    within_one_step(interpret(after, feeds)[0], interpret(graph, feeds)[0], output_step(model))


def test_targets_without_vnni_keep_the_float_form(tmp_path):
    graph = kiln.from_onnx(quantized(tmp_path))
    assert run_pass(graph, NO_VNNI) is graph
    assert "conv2d_integer" not in ops(kiln.optimize(graph, 2, target=NO_VNNI))


def test_the_pipelines_run_it_first_and_disable_skips_it(tmp_path):
    graph = kiln.from_onnx(quantized(tmp_path))
    for level in (1, 2, 3):
        optimized = kiln.optimize(graph, level, target=VNNI)
        inner = [op for n in optimized.nodes for op in (
            [m.op for m in n.attrs["graph"].nodes] if n.op == "fused" else [n.op])]
        assert inner.count("conv2d_integer") == 2
    disabled = optimize(graph, 2, ctx=PassContext(target=VNNI), disable=["int8"])
    assert "conv2d_integer" not in str(disabled)


QDQ_MATMUL = """
graph q(%x: float32[4, 6]) {
  param %w: int8[6, 5]
  param %sw: float32[5]
  param %zx: float32[]
  param %sx: float32[]
  %xq: uint8[4, 6] = cast(%x) {dtype="uint8"}
  %xf: float32[4, 6] = cast(%xq) {dtype="float32"}
  %xc: float32[4, 6] = sub(%xf, %zx)
  %xd: float32[4, 6] = mul(%xc, %sx)
  %wf: float32[6, 5] = cast(%w) {dtype="float32"}
  %wd: float32[6, 5] = mul(%wf, %sw)
  %y: float32[4, 5] = matmul(%xd, %wd)
  return %y
}
"""


def test_a_hand_written_pattern_is_exact():
    """(x - 3) * 0.5 @ w * sw[n], per column: the integer form is exact here (the scales are
    powers of two), so the results are equal, not close."""
    rng = np.random.default_rng(0)
    weights = {"w": rng.integers(-128, 128, (6, 5)).astype(np.int8),
               "sw": np.array([0.25, 0.5, 1.0, 2.0, 0.125], np.float32),
               "zx": np.array(3.0, np.float32), "sx": np.array(0.5, np.float32)}
    graph = verify(parse(QDQ_MATMUL, weights))
    after = run_pass(graph)
    assert ops(after).count("matmul_integer") == 1
    x = {"x": rng.integers(0, 256, (4, 6)).astype(np.float32)}
    np.testing.assert_array_equal(interpret(after, x)[0], interpret(graph, x)[0])
    per_tensor_scale = dict(weights, sw=np.full(5, 0.5, np.float32))
    after = run_pass(verify(parse(QDQ_MATMUL, per_tensor_scale)))
    scale = [n for n in after.nodes if n.op == "mul"][-1].inputs[1]
    assert scale.type.shape == ()  # one scale for all columns


# -- hypothesis: random quantized layers -------------------------------------------------------


def _dequantized(b, q, zero, scale):
    f = b.op("cast", [q], {"dtype": "float32"})[0]
    if zero is not None:
        f = b.op("sub", [f, b.param(b.free_name("zero"), np.array(zero, np.float32))])[0]
    return b.op("mul", [f, b.param(b.free_name("scale"), np.asarray(scale, np.float32))])[0]


def _quantized(b, v, zero, scale, dtype):
    info = np.iinfo(dtype)
    y = b.op("round", [b.op("div", [v, b.param(b.free_name("scale"),
                                                np.array(scale, np.float32))])[0]])[0]
    y = b.op("add", [y, b.param(b.free_name("zero"), np.array(zero, np.float32))])[0]
    y = b.op("clip", [y], {"min": float(info.min), "max": float(info.max)})[0]
    return b.op("cast", [y], {"dtype": dtype})[0]


@st.composite
def quantized_layers(draw):
    """A QDQ layer as quantize_static writes it: x quantized (int8 or uint8, any zero point),
    a weight int8 per tensor or per output channel (or uint8 of zero point 128), a conv
    (stride, padding, dilation) or a matmul (batched rows, a Gemm's transposed weight), a
    bias, a ReLU or not, the output requantized and dequantized."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    dtype = draw(st.sampled_from(["uint8", "int8"]))
    info = np.iinfo(dtype)
    zx = draw(st.integers(int(info.min), int(info.max)))
    sx = draw(st.sampled_from([0.02, 0.1, 0.37]))
    conv = draw(st.booleans())
    c, o = draw(st.integers(1, 9)), draw(st.integers(1, 20))
    b = GraphBuilder("qlayer")
    if conv:
        k = draw(st.sampled_from([1, 2, 3]))
        shape = (1, c, draw(st.integers(k, 9)), draw(st.integers(k, 9)))
        w_shape = (o, c, k, k)
        attrs = {"strides": (draw(st.integers(1, 2)),) * 2,
                 "pads": tuple(draw(st.integers(0, k - 1)) for _ in range(4)),
                 "dilations": (1, draw(st.integers(1, 2)))}
    else:
        shape = (*draw(st.sampled_from([(), (2,)])), draw(st.integers(1, 7)), c)
        w_shape = (c, o)
    x = b.input("x", TensorType(shape, "float32"))
    q = _quantized(b, x, zx, sx, dtype)
    per_channel = draw(st.booleans())
    scale_shape = ((o, 1, 1, 1) if conv else (1, o)) if per_channel else ()
    sw = rng.uniform(0.001, 0.05, scale_shape).astype(np.float32)
    unsigned_w = draw(st.booleans())
    w_q = rng.integers(-128, 128, w_shape)
    w_q = (w_q + 128).astype(np.uint8) if unsigned_w else w_q.astype(np.int8)
    w = _dequantized(b, b.param("w", w_q), 128 if unsigned_w else None, sw)
    xd = _dequantized(b, q, zx, sx)
    if conv:
        bias = [b.param("bias", rng.standard_normal(o).astype(np.float32))]
        y = b.op("conv2d", [xd, w, *bias], attrs)[0]
    else:
        if draw(st.booleans()):  # a Gemm's transB: the weight stored [o, c]
            wt = b.param("wt", np.ascontiguousarray(w_q.T))
            w = b.op("transpose", [_dequantized(b, wt, 128 if unsigned_w else None,
                                                sw.T if per_channel else sw)])[0]
        y = b.op("matmul", [xd, w])[0]
    if draw(st.booleans()):
        y = b.op("relu", [y])[0]
    sy = draw(st.sampled_from([0.05, 0.3]))
    out = _dequantized(b, _quantized(b, y, 3, sy, "uint8"), 3, sy)
    b.output(out)
    data = rng.uniform(-3, 3, shape).astype(np.float32)
    return b.build(), {"x": data}, sy


@given(quantized_layers())
def test_random_quantized_layers_keep_their_meaning(case):
    graph, feeds, step = case
    after = run_pass(graph)
    assert "conv2d" not in ops(after) and "matmul" not in ops(after)
    diff = np.abs(interpret(after, feeds)[0].astype(np.float64) - interpret(graph, feeds)[0])
    assert diff.max() <= step * 1.01
