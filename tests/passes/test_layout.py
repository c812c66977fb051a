"""The layout pass (O3): Before/Expected in the text IR (blocked conv chains, transforms only at
the edges, cancelled pairs), block choices per residual group, and O3 == O0 in the
interpreter on real models."""

import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.ir import interpret, parse, verify
from kiln.passes.layout import (
    Candidate,
    LayoutOptions,
    block_layout,
    cancel_transforms,
    heuristic_block,
)
from kiln.passes.manager import PASSES, optimize

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))


def _weights(text: str, seed: int = 0) -> dict:
    """Random float32 weights for every ``param`` line of ``text``."""
    rng = np.random.default_rng(seed)
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("param %"):
            name, t = line[len("param %"):].split(": ")
            shape = tuple(int(d) for d in t[len("float32["):-1].split(", "))
            a = rng.standard_normal(shape).astype(np.float32)
            out[name] = np.abs(a) + 0.5 if name.startswith("var") else a
    return out


def graph(text: str):
    text = textwrap.dedent(text)
    return verify(parse(text, _weights(text)))


def same_results(a, b, rtol=1e-4, atol=1e-4):
    rng = np.random.default_rng(1)
    feeds = {v.name: rng.standard_normal(v.type.shape).astype(v.dtype) for v in a.inputs}
    for x, y in zip(interpret(a, feeds), interpret(b, feeds)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def laid_out(g, options=None):
    out, report = block_layout(g, options)
    verify(out)
    same_results(g, out)
    return out, report


CHAIN = """
    graph g(%x: float32[1, 8, 6, 6]) {
      param %w1: float32[16, 8, 3, 3]
      param %b1: float32[16]
      param %w2: float32[16, 16, 1, 1]
      param %fc: float32[16, 4]
      %c1: float32[1, 16, 6, 6] = conv2d(%x, %w1, %b1) {pads=(1, 1, 1, 1)}
      %r1: float32[1, 16, 6, 6] = relu(%c1)
      %c2: float32[1, 16, 6, 6] = conv2d(%r1, %w2)
      %a: float32[1, 16, 6, 6] = add(%c2, %r1)
      %r2: float32[1, 16, 6, 6] = relu(%a)
      %p: float32[1, 16, 3, 3] = max_pool2d(%r2) {kernel_shape=(2, 2), strides=(2, 2)}
      %m: float32[1, 16, 1, 1] = global_avg_pool2d(%p)
      %f: float32[1, 16] = flatten(%m)
      %y: float32[1, 4] = matmul(%f, %fc)
      return %y, %p
    }"""


def test_conv_chain_stays_blocked_with_transforms_only_at_the_edges():
    out, report = laid_out(graph(CHAIN))
    expected = """\
        graph g(%x: float32[1, 8, 6, 6]) {
          param %fc: float32[16, 4]
          param %w1.8i16o: float32[1, 1, 3, 3, 8, 16]
          param %b1.nchw16c: float32[1, 1, 1, 1, 16]
          param %w2.16i16o: float32[1, 1, 1, 1, 16, 16]
          %x.nchw8c: float32[1, 1, 6, 6, 8] = layout_transform(%x) {src_layout="NCHW", dst_layout="NCHW8c"}
          %c1.conv: float32[1, 1, 6, 6, 16] = conv2d_nchwc(%x.nchw8c, %w1.8i16o) {pads=(1, 1, 1, 1)}
          %c1: float32[1, 1, 6, 6, 16] = add(%c1.conv, %b1.nchw16c)
          %r1: float32[1, 1, 6, 6, 16] = relu(%c1)
          %c2: float32[1, 1, 6, 6, 16] = conv2d_nchwc(%r1, %w2.16i16o)
          %a: float32[1, 1, 6, 6, 16] = add(%c2, %r1)
          %r2: float32[1, 1, 6, 6, 16] = relu(%a)
          %p.nchwc: float32[1, 1, 3, 3, 16] = max_pool2d_nchwc(%r2) {kernel_shape=(2, 2), strides=(2, 2)}
          %p: float32[1, 16, 3, 3] = layout_transform(%p.nchwc) {src_layout="NCHW16c", dst_layout="NCHW"}
          %m: float32[1, 16, 1, 1] = global_avg_pool2d(%p)
          %f: float32[1, 16] = flatten(%m)
          %y: float32[1, 4] = matmul(%f, %fc)
          return %y, %p
        }"""  # noqa: E501
    # p is an output, so it is transformed back anyway: the global pool reads that (blocked,
    # it would add a transform of its own result)
    assert str(out) == textwrap.dedent(expected)
    # the weight and bias transforms folded into constants (their values checked above)
    assert [(c.value, c.in_block, c.choice.block, c.choice.source) for c in report.choices] == [
        ("c1", 8, 16, "heuristic"), ("c2", 16, 16, "heuristic")]
    assert report.transforms == 2


INVERTED_RESIDUAL = """
    graph g(%x: float32[1, 16, 8, 8]) {
      param %we: float32[32, 16, 1, 1]
      param %wd: float32[32, 1, 3, 3]
      param %bd: float32[32]
      param %wp: float32[16, 32, 1, 1]
      %e: float32[1, 32, 8, 8] = conv2d(%x, %we)
      %r1: float32[1, 32, 8, 8] = clip(%e) {min=0.0, max=6.0}
      %d: float32[1, 32, 8, 8] = conv2d(%r1, %wd, %bd) {pads=(1, 1, 1, 1), groups=32}
      %r2: float32[1, 32, 8, 8] = clip(%d) {min=0.0, max=6.0}
      %p: float32[1, 16, 8, 8] = conv2d(%r2, %wp)
      %y: float32[1, 16, 8, 8] = add(%p, %x)
      return %y
    }"""


def test_depthwise_convs_stay_blocked_between_the_pointwise_ones():
    """A MobileNet block (expand, depthwise, project, residual) converts only at its edges;
    the depthwise conv runs blocked in the block its input and output share."""
    out, report = laid_out(graph(INVERTED_RESIDUAL))
    ops = Counter(n.op for n in out.nodes)
    assert ops["depthwise_conv2d_nchwc"] == 1 and ops["conv2d_nchwc"] == 2
    assert ops["conv2d"] == 0 and report.transforms == 2  # x in, y out
    (dw,) = [n for n in out.nodes if n.op == "depthwise_conv2d_nchwc"]
    block = dw.inputs[0].shape[-1]
    assert dw.inputs[1].shape == (32 // block, 1, 3, 3, block)


def test_a_wide_conv_without_a_full_vector_block_stays_nchw():
    """1000 output channels (a classifier conv) only divide into 8-channel blocks, half an
    AVX-512 vector: that conv stays NCHW; 24 (or 72, 88, 120) channels in 8-blocks stay
    blocked."""
    out, report = laid_out(graph("""
        graph g(%x: float32[1, 32, 6, 6]) {
          param %w1: float32[24, 32, 1, 1]
          param %w2: float32[1000, 24, 1, 1]
          %a: float32[1, 24, 6, 6] = conv2d(%x, %w1)
          %r: float32[1, 24, 6, 6] = relu(%a)
          %b: float32[1, 1000, 6, 6] = conv2d(%r, %w2)
          return %b
        }"""))
    ops = Counter(n.op for n in out.nodes)
    assert ops["conv2d_nchwc"] == 1 and ops["conv2d"] == 1
    assert [c.value for c in report.choices] == ["a"]


def test_transform_pairs_cancel_and_chains_collapse():
    g = graph("""
        graph g(%x: float32[1, 16, 2, 2]) {
          %a: float32[1, 2, 2, 2, 8] = layout_transform(%x) {src_layout="NCHW", dst_layout="NCHW8c"}
          %b: float32[1, 16, 2, 2] = layout_transform(%a) {src_layout="NCHW8c", dst_layout="NCHW"}
          %c: float32[1, 4, 2, 2, 4] = layout_transform(%a) {src_layout="NCHW8c", dst_layout="NCHW4c"}
          %d: float32[1, 4, 2, 2, 4] = relu(%c)
          %y: float32[1, 16, 2, 2] = relu(%b)
          return %y, %d
        }""")  # noqa: E501
    expected = textwrap.dedent("""\
        graph g(%x: float32[1, 16, 2, 2]) {
          %c: float32[1, 4, 2, 2, 4] = layout_transform(%x) {src_layout="NCHW", dst_layout="NCHW4c"}
          %d: float32[1, 4, 2, 2, 4] = relu(%c)
          %y: float32[1, 16, 2, 2] = relu(%x)
          return %y, %d
        }""")  # noqa: E501
    out = verify(PASSES["dce"](cancel_transforms(g)))
    assert str(out) == expected
    same_results(g, out)
    assert str(laid_out(g)[0]) == expected  # the pass does the same


def test_a_value_read_in_nchw_is_transformed_back_once():
    out, report = laid_out(graph("""
        graph g(%x: float32[1, 16, 4, 4]) {
          param %w: float32[16, 16, 3, 3]
          %c: float32[1, 16, 4, 4] = conv2d(%x, %w) {pads=(1, 1, 1, 1)}
          %s: float32[1, 16, 4, 4] = softmax(%c) {axis=1}
          %t: float32[1, 16, 4, 4] = sigmoid(%c)
          %r: float32[1, 16, 4, 4] = relu(%c)
          %y: float32[1, 16, 4, 4] = add(%s, %r)
          return %y, %t
        }"""))
    # softmax needs c in NCHW: one transform back, which sigmoid and relu read too (blocked,
    # they would each add a transform: of t to the output, of r or s for the add)
    assert [n.op for n in out.nodes] == ["layout_transform", "conv2d_nchwc", "layout_transform",
                                         "softmax", "sigmoid", "relu", "add"]


def test_broadcasts_other_than_per_channel_stay_nchw():
    out, _ = laid_out(graph("""
        graph g(%x: float32[1, 16, 4, 4], %m: float32[1, 1, 4, 4], %s: float32[16, 1, 1]) {
          param %w: float32[16, 16, 1, 1]
          %c: float32[1, 16, 4, 4] = conv2d(%x, %w)
          %a: float32[1, 16, 4, 4] = mul(%c, %s)
          %y: float32[1, 16, 4, 4] = add(%a, %m)
          return %y
        }"""))
    kinds = {n.op: n.outputs[0].type.rank for n in out.nodes}
    assert kinds["mul"] == 5 and kinds["add"] == 4  # per-channel scale blocked; [1,1,H,W] not


def test_groups_conv_and_unsupported_shapes_stay_nchw():
    out, report = laid_out(graph("""
        graph g(%x: float32[1, 16, 4, 4]) {
          param %dw: float32[16, 1, 3, 3]
          param %w: float32[12, 16, 1, 1]
          %d: float32[1, 16, 4, 4] = conv2d(%x, %dw) {pads=(1, 1, 1, 1), groups=16}
          %y: float32[1, 12, 4, 4] = conv2d(%d, %w)
          return %y
        }"""))
    assert [n.op for n in out.nodes] == ["conv2d", "conv2d"] and not report.choices


def test_ops_on_channels_no_block_divides_stay_nchw():
    out, _ = laid_out(graph("""
        graph g(%x: float32[1, 3, 8, 8], %w2: float32[16, 16, 1, 1]) {
          param %w: float32[16, 3, 3, 3]
          %r: float32[1, 3, 8, 8] = relu(%x)
          %c: float32[1, 16, 8, 8] = conv2d(%r, %w) {pads=(1, 1, 1, 1)}
          %y: float32[1, 16, 8, 8] = conv2d(%c, %w2)
          return %y
        }"""))
    # relu on 3 channels stays NCHW; a conv whose weight is not a constant too
    assert [n.op for n in out.nodes] == ["relu", "layout_transform", "conv2d_nchwc",
                                         "layout_transform", "conv2d"]


def test_densenet_concat_and_pre_activation_batch_norm_stay_blocked():
    out, report = laid_out(graph("""
        graph g(%x: float32[1, 8, 4, 4]) {
          param %w1: float32[16, 8, 3, 3]
          param %w2: float32[16, 8, 1, 1]
          param %w3: float32[8, 32, 1, 1]
          param %gamma: float32[32]
          param %beta: float32[32]
          param %mean: float32[32]
          param %var: float32[32]
          %a: float32[1, 16, 4, 4] = conv2d(%x, %w1) {pads=(1, 1, 1, 1)}
          %b: float32[1, 16, 4, 4] = conv2d(%x, %w2)
          %c: float32[1, 32, 4, 4] = concat(%a, %b) {axis=1}
          %n: float32[1, 32, 4, 4] = batch_norm(%c, %gamma, %beta, %mean, %var)
          %r: float32[1, 32, 4, 4] = relu(%n)
          %y: float32[1, 8, 4, 4] = conv2d(%r, %w3)
          return %y
        }"""))
    ops = [n.op for n in out.nodes]
    assert ops.count("layout_transform") == 2 and "batch_norm" not in ops
    concat = next(n for n in out.nodes if n.op == "concat")
    assert concat.attrs["axis"] == 1 and concat.outputs[0].type.rank == 5
    assert report.transforms == 2


def test_a_branch_into_nchw_ops_stays_nchw():
    """A residual add whose other operand and whose reader are NCHW (grouped convs, as in a
    ShuffleNet unit) runs NCHW: blocked, it would need two transforms instead of none."""
    out, _ = laid_out(graph("""
        graph g(%x: float32[1, 16, 4, 4]) {
          param %w: float32[16, 16, 3, 3]
          param %g1: float32[16, 4, 1, 1]
          param %g2: float32[16, 4, 1, 1]
          %c: float32[1, 16, 4, 4] = conv2d(%x, %w) {pads=(1, 1, 1, 1)}
          %r: float32[1, 16, 4, 4] = relu(%c)
          %g: float32[1, 16, 4, 4] = conv2d(%r, %g1) {groups=4}
          %a: float32[1, 16, 4, 4] = add(%g, %r)
          %y: float32[1, 16, 4, 4] = conv2d(%a, %g2) {groups=4}
          return %y
        }"""))
    assert [(n.op, n.outputs[0].type.rank) for n in out.nodes] == [
        ("layout_transform", 5), ("conv2d_nchwc", 5), ("relu", 5), ("layout_transform", 4),
        ("conv2d", 4), ("add", 4), ("conv2d", 4)]


def _fake_chooser(times: dict[int, dict[int, float]]):
    """Candidates by output channels: {O: {block: seconds}}."""
    def choose(problems):
        return {p: [Candidate(b, (1, 2), t, "measured") for b, t in times[p.o].items()]
                for p in problems}
    return choose


RESIDUAL = """
    graph g(%x: float32[1, 32, 4, 4]) {
      param %w1: float32[32, 32, 3, 3]
      param %w2: float32[64, 32, 1, 1]
      param %w3: float32[64, 64, 1, 1]
      %c1: float32[1, 32, 4, 4] = conv2d(%x, %w1) {pads=(1, 1, 1, 1)}
      %c2: float32[1, 64, 4, 4] = conv2d(%c1, %w2)
      %c3: float32[1, 64, 4, 4] = conv2d(%c2, %w3)
      %y: float32[1, 64, 4, 4] = add(%c2, %c3)
      return %y
    }"""


def test_a_residual_group_takes_the_block_with_the_least_summed_time():
    g = graph(RESIDUAL)
    # c2 (O=64) and c3 (O=64) share one block through the add; c1 (O=32) is on its own
    chooser = _fake_chooser({32: {16: 2.0, 32: 1.0}, 64: {16: 1.0, 32: 1.2}})
    out, report = laid_out(g, LayoutOptions(chooser=chooser))
    blocks = {c.value: (c.in_block, c.choice.block) for c in report.choices}
    assert blocks == {"c1": (16, 32), "c2": (32, 16), "c3": (16, 16)}
    assert all(c.choice.tile == (1, 2) for c in report.choices)
    assert all(n.attrs["tile"] == (1, 2) for n in out.nodes if n.op == "conv2d_nchwc")
    assert report.transforms == 2  # x in, y out: none between layers
    # a group follows the sum of its members' times, not one member's
    c2_alone = _fake_chooser({32: {16: 2.0, 32: 1.0}, 64: {16: 1.0, 32: 0.1}})
    _, report = laid_out(g, LayoutOptions(chooser=c2_alone))
    assert {c.value: c.choice.block for c in report.choices} == {"c1": 32, "c2": 32, "c3": 32}


def test_convs_left_unmeasured_follow_the_measured_ones_of_their_group():
    def chooser(problems):  # only c2 (32 -> 64 channels) measured, as if the budget ran out
        return {p: [Candidate(16, None, 1.0, "measured"), Candidate(32, (1, 2), 0.5, "measured")]
                if (p.c, p.o) == (32, 64) else [Candidate(16)] for p in problems}

    _, report = laid_out(graph(RESIDUAL), LayoutOptions(chooser=chooser))
    picked = {c.value: (c.choice.block, c.choice.tile, c.choice.source) for c in report.choices}
    assert picked == {"c1": (16, None, "heuristic"), "c2": (32, (1, 2), "measured"),
                      "c3": (32, None, "heuristic")}


def test_budget_zero_is_the_documented_heuristic():
    assert [heuristic_block(c, 16) for c in (64, 48, 24, 40, 8, 96, 12)] == \
        [16, 16, 8, 8, 8, 16, None]
    assert heuristic_block(64, 8) == 8 and heuristic_block(96, 32) == 32
    # two vectors with a 7-pixel tile where they divide O, else one vector, codegen's tile
    _, report = laid_out(graph(RESIDUAL), LayoutOptions(lanes=16))
    assert [(c.value, c.in_block, c.choice.block, c.choice.tile, c.choice.source)
            for c in report.choices] == [("c1", 16, 32, (1, 4), "heuristic"),
                                         ("c2", 32, 32, (1, 4), "heuristic"),
                                         ("c3", 32, 32, (1, 4), "heuristic")]
    _, report = laid_out(graph(RESIDUAL), LayoutOptions(lanes=8))
    assert {(c.choice.block, c.choice.tile) for c in report.choices} == {(16, (1, 4))}
    _, report = laid_out(graph(CHAIN))  # 16 output channels: one vector
    assert {(c.choice.block, c.choice.tile) for c in report.choices} == {(16, None)}


def test_registered_pass_is_graph_to_graph_and_idempotent():
    g = graph(CHAIN)
    once = PASSES["layout"](g)
    assert str(once) == str(block_layout(g)[0])
    assert str(PASSES["layout"](once)) == str(once)


@pytest.mark.parametrize("model, shape", [("resnet_block", (1, 64, 8, 8)),
                                          ("vgg_tiny", (2, 3, 32, 32)),
                                          ("lenet5_mnist", (1, 1, 28, 28))])
def test_o3_matches_o0_in_the_interpreter(model, shape):
    import lenet
    import resnet
    import vgg

    factory = {"resnet_block": resnet.resnet_block, "vgg_tiny": vgg.vgg_tiny,
               "lenet5_mnist": lenet.lenet5_mnist}[model]
    m = factory()
    m.eval()
    g = kiln.trace(m, name=model, x=kiln.TensorSpec(shape))
    o3 = optimize(g, 3, verify=True)
    same_results(g, o3, rtol=1e-4, atol=1e-5)
    flat = Counter(n.op for f in o3.nodes for n in (f.attrs["graph"].nodes if f.op == "fused"
                                                     else [f]))
    assert flat["conv2d_nchwc"] >= 1 and flat["layout_transform"] == 2


def test_resnet50_is_blocked_end_to_end():
    import resnet

    m = resnet.resnet50()
    m.eval()
    g = optimize(kiln.trace(m, x=kiln.TensorSpec((1, 3, 224, 224))), 1)
    out, report = block_layout(g)
    ops = Counter(n.op for n in out.nodes)
    assert ops["conv2d"] == 0 and ops["conv2d_nchwc"] == 53
    assert ops["layout_transform"] == 2  # the image in, the pooled features out
    assert ops["max_pool2d_nchwc"] == ops["global_avg_pool2d_nchwc"] == 1
    assert len(report.choices) == 53
