"""Compiling with symbolic sizes: one artifact runs every batch size and sequence length.

Each compiled model is checked against the interpreter at several sizes of the same
artifact; the runtime refuses sizes outside the bounds, inconsistent sizes and sizes too
small for the model's slices with errors that name the dimension."""

import sys
from pathlib import Path

import numpy as np
import pytest

import kiln
import kiln.runtime
from kiln import nn, ops
from kiln.errors import ArtifactError, InputError
from kiln.ir.graph import GraphBuilder
from kiln.ir.types import TensorType

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))

RTOL, ATOL = 1e-4, 1e-4


def check_sizes(compiled, graph, feeds_list):
    for feeds in feeds_list:
        want = kiln.interpret(graph, feeds)
        got = compiled.run(feeds)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.norm, self.l2 = nn.Linear(16, 40), nn.LayerNorm(40), nn.Linear(40, 7)

    def forward(self, x):
        return ops.softmax(self.l2(ops.relu(self.norm(self.l1(x)))), axis=-1)


@pytest.mark.parametrize("level", [0, 2])
def test_mlp_at_every_batch_size(level):
    graph = kiln.trace(MLP(), x=kiln.TensorSpec(("N", 16)))
    compiled = kiln.compile(graph, opt_level=level)
    rng = np.random.default_rng(0)
    check_sizes(compiled, graph, [{"x": rng.standard_normal((n, 16)).astype(np.float32)}
                                  for n in (1, 3, 17, 3, 64)])


@pytest.mark.parametrize("name", ["Bert", "GPT"])
def test_transformers_at_every_batch_and_sequence(name):
    """Padding-free BERT (positions up to L, the first token pooled) and GPT (a causal mask
    of L x L) at several (N, L) from one artifact."""
    import transformer

    model = getattr(transformer, name)()
    graph = kiln.trace(model, ids=kiln.TensorSpec(("N", "L"), "int64"))
    compiled = kiln.compile(graph, opt_level=2)
    rng = np.random.default_rng(1)
    check_sizes(compiled, graph, [{"ids": rng.integers(0, 1000, (n, seq)).astype(np.int64)}
                                  for n, seq in ((1, 1), (2, 7), (3, 16), (1, 33))])


@pytest.mark.parametrize("level", [2, 3])
def test_cnn_at_every_batch_size(level):
    """A residual block at O3 runs in blocked conv layouts at a symbolic batch."""
    import resnet

    graph = kiln.trace(resnet.resnet_block(), x=kiln.TensorSpec(("N", 64, 8, 8)))
    compiled = kiln.compile(graph, opt_level=level, layout_budget=0, layout_cache=False)
    if level == 3:
        assert any("nchw" in str(n.attrs.get("dst_layout", "")) or "nchw" in n.op
                   for n in compiled.graph.nodes) or "layout" in compiled.reports
    rng = np.random.default_rng(2)
    check_sizes(compiled, graph, [{"x": rng.standard_normal((n, 64, 8, 8)).astype(np.float32)}
                                  for n in (1, 3, 2)])


def test_size_arithmetic_compiles():
    """``x.size(0) * 2`` is a size expression, not the string 'NN'; the compiled reshape
    computes it per call."""
    def f(x):
        y = ops.reshape(x, (x.size(0) * 2, -1))
        return ops.concat([y, y * 2.0], axis=0)

    graph = kiln.trace(f, x=kiln.TensorSpec(("N", 6)))
    assert str(graph.outputs[0].type) == "float32[4*N, 3]"
    compiled = kiln.compile(graph)
    check_sizes(compiled, graph, [{"x": np.arange(n * 6, dtype=np.float32).reshape(n, 6)}
                                  for n in (1, 5)])


def test_an_input_dim_may_be_an_expression_of_another_inputs_size():
    b = GraphBuilder("pair")
    x = b.input("x", TensorType(("N", 3)))
    y = b.input("y", TensorType(("2*N", 3)))
    (xx,) = b.op("concat", [x, x], {"axis": 0})
    (s,) = b.op("add", [xx, y])
    b.output(s)
    graph = b.build()
    compiled = kiln.compile(graph)
    rng = np.random.default_rng(3)
    check_sizes(compiled, graph, [{"x": rng.standard_normal((n, 3)).astype(np.float32),
                                   "y": rng.standard_normal((2 * n, 3)).astype(np.float32)}
                                  for n in (1, 4)])
    with pytest.raises(InputError, match=r"dimension 0 must be 8 \(2\*N with N=4\)"):
        compiled.run({"x": np.zeros((4, 3), np.float32), "y": np.zeros((7, 3), np.float32)})


def test_bounds_inconsistent_sizes_and_too_short_slices_are_input_errors(tmp_path):
    def first_token(x, m):
        return x[:, 0] + ops.sum(m, axis=1)

    graph = kiln.trace(first_token, x=kiln.TensorSpec(("N", "L")),
                       m=kiln.TensorSpec(("N", "L")))
    compiled = kiln.compile(graph, bounds={"N": (1, 8)})
    ok = {"x": np.ones((2, 3), np.float32), "m": np.ones((2, 3), np.float32)}
    np.testing.assert_allclose(compiled.run(ok)[0], [4.0, 4.0])
    with pytest.raises(InputError, match="size N is 9, outside the range 1..8"):
        compiled.run({"x": np.ones((9, 3), np.float32), "m": np.ones((9, 3), np.float32)})
    with pytest.raises(InputError, match=r"dimension 1 is L = 4, but L = 3 in input 'x'"):
        compiled.run({"x": np.ones((2, 3), np.float32), "m": np.ones((2, 4), np.float32)})
    with pytest.raises(InputError, match="needs L to be at least 1; with L=0 it is 0"):
        compiled.run({"x": np.ones((2, 0), np.float32), "m": np.ones((2, 0), np.float32)})
    with pytest.raises(InputError, match="needs L to be at least 1"):
        kiln.interpret(graph, {"x": np.ones((2, 0), np.float32),
                               "m": np.ones((2, 0), np.float32)})
    # saved and loaded by the runtime alone: the same model, the same checks
    path = compiled.save(tmp_path / "first.kiln")
    loaded = kiln.runtime.load(path)
    assert loaded.sizes["names"] == ["L", "N"] and loaded.sizes["bounds"] == {"N": [1, 8]}
    np.testing.assert_allclose(loaded.run(ok)[0], [4.0, 4.0])
    assert loaded.memory_report()["peak_bytes"] >= 0
    with pytest.raises(InputError, match="outside the range"):
        loaded.run({"x": np.ones((9, 3), np.float32), "m": np.ones((9, 3), np.float32)})


def test_a_manifest_whose_sizes_no_input_gives_is_rejected(tmp_path):
    import json

    from kiln.runtime import format as fmt

    graph = kiln.trace(lambda x: ops.relu(x), x=kiln.TensorSpec(("N", 4)))
    path = kiln.compile(graph).save(tmp_path / "relu.kiln")
    manifest = json.loads((Path(path) / fmt.MANIFEST).read_text())
    manifest["sizes"]["names"].append("M")
    with pytest.raises(ArtifactError, match=r"names \['M'\], which no input has"):
        fmt.validate_manifest(manifest)
    manifest["sizes"]["names"].remove("M")
    manifest["values"][manifest["inputs"][0]["name"]]["shape"] = ["N + M", 4]
    manifest["inputs"][0]["shape"] = ["N + M", 4]
    with pytest.raises(ArtifactError):
        fmt.validate_manifest(manifest)


def test_symbolic_onnx_model_with_a_position_buffer_and_mask_matches_onnxruntime(tmp_path):
    """An exported encoder as Hugging Face writes them: positions sliced out of a buffer up
    to the sequence length, an additive mask made from the attention mask, dynamic batch
    and sequence axes. One kiln artifact against onnxruntime at three sizes."""
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tokens = torch.nn.Embedding(50, 16)
            self.positions = torch.nn.Embedding(32, 16)
            self.register_buffer("position_ids", torch.arange(32).unsqueeze(0))
            self.qkv, self.out = torch.nn.Linear(16, 48), torch.nn.Linear(16, 16)
            self.norm = torch.nn.LayerNorm(16)

        def forward(self, input_ids, attention_mask):
            n, seq = input_ids.shape
            x = self.tokens(input_ids) + self.positions(self.position_ids[:, :seq])
            q, k, v = (t.view(n, seq, 2, 8).transpose(1, 2)
                       for t in self.qkv(x).chunk(3, dim=-1))
            pad = (1.0 - attention_mask[:, None, None, :].float()) * -1e4
            scores = q @ k.transpose(-1, -2) / 8 ** 0.5 + pad
            ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, seq, 16)
            return self.norm(x + self.out(ctx))

    torch.manual_seed(0)
    model = Encoder().eval()
    ids, mask = torch.randint(0, 50, (2, 5)), torch.ones(2, 5, dtype=torch.int64)
    onnx_path = tmp_path / "enc.onnx"
    torch.onnx.export(model, (ids, mask), str(onnx_path), input_names=["input_ids",
                      "attention_mask"], dynamic_axes={"input_ids": {0: "batch", 1: "seq"},
                      "attention_mask": {0: "batch", 1: "seq"}}, opset_version=17,
                      dynamo=False)
    graph = kiln.from_onnx(str(onnx_path))
    assert [str(v.type) for v in graph.inputs] == ["int64[batch, seq]"] * 2
    compiled = kiln.compile(graph, opt_level=2, bounds={"seq": (1, 32)})
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(4)
    for n, seq in ((1, 1), (3, 9), (2, 32)):
        feeds = {"input_ids": rng.integers(0, 50, (n, seq)).astype(np.int64),
                 "attention_mask": np.ones((n, seq), np.int64)}
        feeds["attention_mask"][0, seq // 2 + 1:] = 0
        want = session.run(None, feeds)[0]
        np.testing.assert_allclose(compiled.run(feeds)[0], want, rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="size seq is 33, outside the range 1..32"):
        compiled.run({"input_ids": np.zeros((1, 33), np.int64),
                      "attention_mask": np.ones((1, 33), np.int64)})
    # exported back to ONNX, the sizes stay symbolic (sizes used as data read from Shape)
    again = kiln.to_onnx(graph)
    dims = again.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "seq"]
    session = ort.InferenceSession(again.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, feeds)[0], want, rtol=1e-4, atol=1e-4)


def test_rows_of_every_length_from_one_artifact():
    """Symbolic innermost extents: whole vectors, a partial last one, shorter than one
    vector (the loop partitioning of the vector loops must never store past a row)."""
    def f(x, y):
        s = ops.softmax(x * 0.5 + y, axis=-1)
        return s, ops.sum(ops.exp(x) * y, axis=-1), ops.transpose(x, (0, 2, 1)) * 2.0

    graph = kiln.trace(f, x=kiln.TensorSpec((2, 3, "S")), y=kiln.TensorSpec((2, 3, "S")))
    compiled = kiln.compile(graph, opt_level=2)
    rng = np.random.default_rng(5)
    check_sizes(compiled, graph, [{"x": rng.standard_normal((2, 3, s)).astype(np.float32),
                                   "y": rng.standard_normal((2, 3, s)).astype(np.float32)}
                                  for s in (1, 2, 15, 16, 17, 31, 32, 33, 100)])


def test_training_at_a_symbolic_batch_takes_a_smaller_last_batch():
    """The compiled training step of a symbolic batch: one artifact trains on batches of 8
    and a last batch of 3, carrying the parameters and optimizer state, as the interpreter
    does."""
    from kiln.passes.optim import SGD
    from kiln.train import Trainer

    def trainer(backend):
        nn.manual_seed(0)
        # a convolution too: its weight gradient sums over the batch as channels
        model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(),
                              nn.Linear(2 * 4 * 4, 8), nn.ReLU(), nn.Linear(8, 3))
        return Trainer(model, "cross_entropy", SGD(lr=0.1, momentum=0.9),
                       inputs={"x": kiln.TensorSpec(("N", 1, 4, 4))}, backend=backend)

    rng = np.random.default_rng(6)
    batches = [(rng.standard_normal((n, 1, 4, 4)).astype(np.float32),
                rng.integers(0, 3, n).astype(np.int64)) for n in (8, 8, 3, 8)]
    compiled, reference = trainer("compiled"), trainer("interpret")
    for x, y in batches:
        np.testing.assert_allclose(compiled.step(y, x=x), reference.step(y, x=x), rtol=1e-4)
    for name, value in reference.state.items():
        np.testing.assert_allclose(compiled.state[name], value, rtol=1e-4, atol=1e-5)


def test_bf16_at_a_symbolic_size_says_it_needs_static_sizes():
    from kiln.errors import UnsupportedOpError
    from kiln.targets import resolve_target

    if "avx512_bf16" not in resolve_target("llvm").features:
        pytest.skip("this CPU has no AVX512-BF16: bf16 compiles in float32 here")
    graph = kiln.trace(MLP(), x=kiln.TensorSpec(("N", 16)))
    with pytest.raises(UnsupportedOpError, match="native GEMM, which needs static sizes"):
        kiln.compile(graph, precision="bf16")


def test_a_specialization_runs_where_a_call_has_its_size(tmp_path, capsys):
    """specialize={"L": [1]}: a GPT step of one token runs on kernels built for L = 1 (in
    the same library, chosen by the runtime); other lengths on the symbolic ones."""
    import transformer

    from kiln.cli import main

    graph = kiln.trace(transformer.GPT(), ids=kiln.TensorSpec(("N", "L"), "int64"))
    compiled = kiln.compile(graph, specialize={"L": [1]})  # (= [{"L": 1}])
    assert [v["sizes"] for v in compiled.build.variants] == [{"L": 1}]
    rng = np.random.default_rng(7)
    feeds = [{"ids": rng.integers(0, 1000, (n, seq)).astype(np.int64)}
             for n, seq in ((2, 1), (1, 4), (3, 1))]
    check_sizes(compiled, graph, feeds)
    path = compiled.save(tmp_path / "gpt.kiln")
    loaded = kiln.runtime.load(path)
    one = loaded.model_for(feeds[0]).manifest["kernels"]
    four = loaded.model_for(feeds[1]).manifest["kernels"]
    assert all(k["func"].startswith("s0_") for k in one)
    assert not any(k["func"].startswith("s0_") for k in four)
    check_sizes(loaded, graph, feeds)
    # the same from the command line
    src = ROOT / "examples" / "transformer.py"
    assert main(["compile", f"{src}:gpt", "--input", "ids=N,L:int64", "--specialize", "L=1",
                 "-o", str(tmp_path / "cli.kiln"), "-q"]) == 0
    assert "specialized for L=1" in capsys.readouterr().out
