"""The int8 pass on quantized models made by onnxruntime's quantize_static: which matmuls
and convolutions become integer ops, and that the graph still computes what it did.

The integer sums are exact where the float graph rounded, so a requantized value can move
by one quantization step where it lay on a rounding boundary: outputs are compared within
one step of the output's scale, and almost all of them must be equal."""

from __future__ import annotations

import numpy as np
import pytest

import kiln
from kiln.ir import interpret, parse, verify
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
