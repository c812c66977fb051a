"""kiln compare and kiln bisect find bugs planted through test-only hooks: a wrong lowering
(LOWERINGS), a wrong pass rewrite (PASSES) and a wrong fused group."""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import pytest

import kiln
from kiln import nn, ops
from kiln.cli import main
from kiln.codegen.lower import LOWERINGS, fused_body
from kiln.debug import bisect, compare
from kiln.ir import parse
from kiln.passes.manager import PASSES
from tests.debug_model import Net
from tests.onnx.util import torch_export

RNG = np.random.default_rng(0)


def net_graph():
    return kiln.trace(Net(), x=kiln.TensorSpec((3, 8)))


FEEDS = {"x": RNG.standard_normal((3, 8)).astype(np.float32)}


@pytest.fixture
def wrong_tanh(monkeypatch):
    """tanh's lowering computes 2 * tanh: a codegen bug in one op."""
    import kiln.codegen.ops  # noqa: F401  (registers the lowerings)

    right = LOWERINGS["tanh"]

    def wrong(inputs, attrs, out_types):
        from tvm import te

        y = right(inputs, attrs, out_types)
        return te.compute(y.shape, lambda *i: y(*i) * 2, name="wrong_tanh")

    monkeypatch.setitem(LOWERINGS, "tanh", wrong)


def _replace_op(graph, old: str, new: str):
    """``graph`` with its first ``old`` node (fused bodies included) made a ``new`` one."""
    nodes = list(graph.nodes)
    for i, node in enumerate(nodes):
        if node.op == old:
            nodes[i] = dataclasses.replace(node, op=new)
            return dataclasses.replace(graph, nodes=tuple(nodes)), True
        body = fused_body(node)
        if body is not None:
            fixed, done = _replace_op(body, old, new)
            if done:
                attrs = {k: fixed if v is body else v for k, v in node.attrs.items()}
                nodes[i] = dataclasses.replace(node, attrs=attrs)
                return dataclasses.replace(graph, nodes=tuple(nodes)), True
    return graph, False


def test_compare_names_the_kernel_and_node_of_a_wrong_lowering(wrong_tanh, tmp_path):
    result = compare(net_graph(), FEEDS, save=tmp_path)
    assert not result.ok
    bad = result.first_divergence
    assert bad.index == 1 and "tanh" in bad.func  # fc2's matmul + add + tanh
    assert any("tanh" in s and "debug_model.py" in s for s in bad.sources)
    assert [k.ok for k in result.kernels[:1]] == [True]
    assert "first divergence: kernel #1" in result.summary()
    # the saved kernel reproduces alone: the interpreter gives the reference's output, the
    # compiled node does not (the bug is still planted)
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    graph = parse((folder / "node.txt").read_text())
    feeds = {v.name: np.load(folder / "inputs" / f"{v.name}.npy") for v in graph.inputs}
    out = graph.outputs[0].name
    want = np.load(folder / "reference" / f"{out}.npy")
    np.testing.assert_allclose(kiln.interpret(graph, feeds)[0], want, rtol=1e-5, atol=1e-6)
    got = kiln.compile(graph, opt_level=0).run(feeds)[0]
    np.testing.assert_allclose(got, 2 * want, rtol=1e-5, atol=1e-6)
    assert "wrong_tanh" in (folder / "kernel.tir.txt").read_text()


def test_compare_finds_nothing_in_a_correct_build():
    result = compare(net_graph(), FEEDS, opt_level=3)
    assert result.ok and result.first_divergence is None
    assert all(o.max_abs is not None and o.max_abs < 1e-5
               for k in result.kernels for o in k.outputs)


def test_compare_lays_blocked_values_back_out():
    """At O3 a conv chain runs in NCHW{c}c: its values are compared laid out as NCHW."""
    class Conv(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(16, 32, 3, padding=1)
            self.b = nn.Conv2d(32, 32, 3, padding=1)

        def forward(self, x):
            return self.b(ops.relu(self.a(x)))

    graph = kiln.trace(Conv(), x=kiln.TensorSpec((1, 16, 8, 8)))
    feeds = {"x": RNG.standard_normal((1, 16, 8, 8)).astype(np.float32)}
    result = compare(graph, feeds, opt_level=3)
    assert result.ok
    notes = [o.note for k in result.kernels for o in k.outputs]
    assert any(n.startswith("laid out from NCHW") for n in notes), notes


def test_compare_against_onnxruntime_names_the_onnx_node(wrong_tanh):
    import torch

    class Torch(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 8)

        def forward(self, x):
            return torch.tanh(self.fc(x)) + 1

    data = torch_export(Torch(), (np.zeros((3, 8), np.float32),), ["x"])
    graph = kiln.from_onnx(data)
    import onnx

    model = onnx.load_from_string(data)
    result = compare(graph, FEEDS, reference="onnxruntime", onnx_model=model)
    bad = result.first_divergence
    assert bad is not None and any("Tanh" in s for s in bad.sources), bad


def test_bisect_blames_a_wrong_pass_rewrite(monkeypatch):
    simplify = PASSES["simplify"]

    def wrong_simplify(graph, ctx=None):
        return _replace_op(simplify(graph, ctx), "sigmoid", "relu")[0]

    monkeypatch.setitem(PASSES, "simplify", wrong_simplify)
    result = bisect(net_graph(), FEEDS)
    assert result.culprit == "simplify"
    assert result.passes[result.step] == "simplify"
    assert "simplify" not in result.passes[: result.step]  # its first run
    report = result.report()
    assert re.search(r"-.*sigmoid", report) and re.search(r"\+.*relu", report)


def test_bisect_blames_one_fused_group(monkeypatch):
    fuse = PASSES["fuse"]

    def wrong_fuse(graph, ctx=None):
        return _replace_op(fuse(graph, ctx), "tanh", "sigmoid")[0]

    monkeypatch.setitem(PASSES, "fuse", wrong_fuse)
    result = bisect(net_graph(), FEEDS)
    assert result.culprit == "fuse"
    (group,) = result.groups
    assert "fc2" in group and group.endswith("matmul -> add -> sigmoid")
    assert re.search(r"\+.*sigmoid", result.report())  # the group fused, its nodes unfused


def test_bisect_blames_codegen_for_a_wrong_lowering(wrong_tanh):
    result = bisect(net_graph(), FEEDS)
    assert result.culprit == "codegen"
    assert any("tanh" in s for s in result.kernel.sources)


def test_bisect_finds_nothing_in_a_correct_build():
    result = bisect(net_graph(), FEEDS)
    assert result.culprit is None and result.builds == 1
    assert "no difference" in result.report()


MODEL = os.path.join(os.path.dirname(__file__), "debug_model.py")


def test_cli_compare_and_bisect_exit_1_on_a_difference(wrong_tanh, capsys, tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, FEEDS["x"])
    ref = f"{MODEL}:Net"
    assert main(["compare", ref, "--input", f"x={x}", "--save", str(tmp_path / "r")]) == 1
    out = capsys.readouterr().out
    assert "first divergence: kernel #1" in out and "BAD" in out
    assert main(["bisect", ref, "--input", "x=3x8"]) == 1
    assert "the generated code is wrong" in capsys.readouterr().out


def test_cli_compare_says_when_inputs_are_random(capsys):
    assert main(["compare", f"{MODEL}:Net", "--input", "x=3x8"]) == 0
    out = capsys.readouterr().out
    assert "random inputs (seed 0) for x" in out and "no divergence" in out


def test_compare_against_another_version_of_the_model():
    """--reference-model: where two exports of a model part ways (here: fc2's weights
    changed in the second one)."""
    import onnx
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8),
                                torch.nn.Tanh(), torch.nn.Linear(8, 4))
    first = torch_export(model, (FEEDS["x"],), ["x"])
    with torch.no_grad():
        model[2].weight[0, 0] += 1.0
    second = onnx.load_from_string(torch_export(model, (FEEDS["x"],), ["x"]))
    result = compare(kiln.from_onnx(first), FEEDS, reference="onnxruntime", onnx_model=second)
    bad = result.first_divergence
    assert bad is not None and bad.index == 1, result.table()
    assert result.kernels[0].ok


class ThreeConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(16, 32, 3, padding=1)
        self.b = nn.Conv2d(32, 32, 3, padding=1)
        self.c = nn.Conv2d(32, 32, 1)

    def forward(self, x):
        return self.c(ops.relu(self.b(ops.relu(self.a(x)))))


def test_bisect_blames_one_blocked_convolution(monkeypatch):
    """A layout rewrite that packs conv b's weights wrong (negated) whenever it blocks b."""
    layout = PASSES["layout"]

    def wrong_layout(graph, ctx=None):
        out = layout(graph, ctx)
        bad = next((n for n in out.nodes if n.op == "conv2d_nchwc" and "[b (" in n.origin),
                   None)
        if bad is None:
            return out
        weights = dict(out.weights)
        weights[bad.inputs[1].name] = -weights[bad.inputs[1].name]
        return dataclasses.replace(out, weights=weights)

    monkeypatch.setitem(PASSES, "layout", wrong_layout)
    graph = kiln.trace(ThreeConvs(), x=kiln.TensorSpec((1, 16, 8, 8)))
    feeds = {"x": RNG.standard_normal((1, 16, 8, 8)).astype(np.float32)}
    result = bisect(graph, feeds, opt_level=3)
    assert result.culprit == "layout", result.report()
    (conv,) = result.groups
    assert "[b (Conv2d)]" in conv, result.report()
    assert "blocked convolution to blame" in result.report()
