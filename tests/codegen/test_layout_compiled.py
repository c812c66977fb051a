"""Compiled blocked-layout ops and O3 models == the interpreter; the layout tuner's cache
(hit, miss, keys, budget 0, unusable files) and one real measurement."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.codegen import layout_tuning as tuning
from kiln.codegen.build import build
from kiln.ir import GraphBuilder, TensorType, interpret
from kiln.ir.ops.layout import relayout
from kiln.passes.layout_choice import ConvProblem
from kiln.targets import host_target

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))


def _check(graph, feeds, rtol=1e-4, atol=1e-4):
    res = build(graph)
    for got, want in zip(res.run(feeds), interpret(graph, feeds)):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    return res


def test_layout_ops_compile_to_the_interpreters_results():
    rng = np.random.default_rng(0)
    b = GraphBuilder("layout_ops")
    x = b.input("x", TensorType((2, 16, 9, 11)))
    outs = []

    def t(v, src, dst):
        return b.op("layout_transform", [v], {"src_layout": src, "dst_layout": dst})[0]

    x8 = t(x, "NCHW", "NCHW8c")
    outs += [t(x8, "NCHW8c", "NCHW4c"), t(x, "NCHW", "NHWC2c"), t(x8, "NCHW8c", "NCHW")]
    convs = [  # (out channels, kernel, strides, pads, dilations, tile, weight layout)
        (16, 3, (1, 1), (1, 1, 1, 1), (1, 1), None, "OIHW8i16o"),
        (32, 3, (2, 2), (0, 1, 2, 0), (1, 1), (2, 4), "OIHW8i32o"),  # tile does not divide
        (8, 1, (1, 1), (0, 0, 0, 0), (1, 1), (3, 5), "OIHW8i8o"),
        (16, 3, (1, 2), (2, 2, 2, 2), (2, 2), (1, 1), "OIHW8i16o"),
    ]
    for o, k, s, p, d, tile, wl in convs:
        w = b.param(f"w{len(outs)}", relayout(
            rng.standard_normal((o, 16, k, k)).astype(np.float32), "OIHW", wl))
        y = b.op("conv2d_nchwc", [x8, w], {"strides": s, "pads": p, "dilations": d,
                                            "tile": tile})[0]
        outs.append(b.op("relu", [y])[0])
    for k, s, p, d in ((3, (1, 1), (1, 1, 1, 1), (1, 1)), (3, (2, 2), (0, 1, 2, 1), (1, 1)),
                       (5, (1, 2), (2, 2, 2, 2), (2, 1)), (7, (1, 1), (3, 3, 3, 3), (1, 1))):
        w = b.param(f"w{len(outs)}", relayout(
            rng.standard_normal((16, 1, k, k)).astype(np.float32), "OIHW", "OIHW8o"))
        y = b.op("depthwise_conv2d_nchwc", [x8, w],
                 {"strides": s, "pads": p, "dilations": d})[0]
        outs.append(b.op("relu", [y])[0])  # fused: written from the register tile
    pooled = outs[-1]
    outs += [
        b.op("max_pool2d_nchwc", [pooled], {"kernel_shape": (3, 3), "strides": (2, 2),
                                            "pads": (1, 1, 1, 1), "ceil_mode": True})[0],
        b.op("avg_pool2d_nchwc", [pooled], {"kernel_shape": (3, 2), "pads": (1, 1, 1, 1),
                                            "count_include_pad": False})[0],
        b.op("avg_pool2d_nchwc", [x8], {"kernel_shape": (2, 2), "strides": (1, 2)})[0],
        b.op("global_avg_pool2d_nchwc", [pooled])[0],
    ]
    b.output(*outs)
    _check(b.build(), {"x": rng.standard_normal((2, 16, 9, 11)).astype(np.float32)})


def _model(name):
    import lenet
    import resnet
    import vgg

    factory, shape = {"resnet_block": (resnet.resnet_block, (1, 64, 14, 14)),
                      "vgg_tiny": (vgg.vgg_tiny, (2, 3, 32, 32)),
                      "lenet5_mnist": (lenet.lenet5_mnist, (1, 1, 28, 28))}[name]
    m = factory()
    m.eval()
    return kiln.trace(m, name=name, x=kiln.TensorSpec(shape)), shape


@pytest.mark.parametrize("name", ["resnet_block", "vgg_tiny", "lenet5_mnist"])
def test_o3_compiled_matches_o0(name):
    g, shape = _model(name)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    want = interpret(g, {"x": x})[0]
    compiled = kiln.compile(g, opt_level=3, layout_budget=0, layout_cache=False)
    np.testing.assert_allclose(compiled.run({"x": x})[0], want, rtol=1e-4, atol=1e-4)
    manifest = json.loads((compiled.artifact / "manifest.json").read_text())
    choices = manifest["tuning"]["layout"]["choices"]
    assert choices and all(c["source"] == "heuristic" for c in choices)
    o2 = kiln.compile(g, opt_level=2)
    assert len(compiled.build.kernels) <= len(o2.build.kernels) + 2  # + the edge transforms


def test_optimize_gives_the_graph_that_compile_builds(tmp_path, fake_measure):
    """kiln.optimize and kiln.compile make one PassContext the same way: same graph."""
    g, _ = _model("resnet_block")
    cache = tmp_path / "layout.json"
    dumped = []
    kiln.compile(g, opt_level=3, layout_cache=cache, dump_after=["fuse"], dump=dumped.append)
    assert len(fake_measure) == 1  # compile measured; optimize below reads the cache
    optimized = kiln.optimize(g, 3, layout_cache=cache)
    assert dumped == [f"// after fuse\n{optimized}"]
    assert any(n.op == "layout_transform" for n in optimized.nodes)


def test_the_target_decides_which_passes_apply():
    """A target without the NCHWc layout pass (as a GPU target will be) gets O3 without it."""
    from dataclasses import dataclass

    from kiln.passes.manager import optimize, pipeline

    @dataclass(frozen=True)
    class NoLayout(type(host_target())):
        def uses_pass(self, name):
            return name != "layout"

    g, _ = _model("resnet_block")
    target = NoLayout(num_cores=1, vector_bits=512)
    assert "layout" in pipeline(3) and "layout" not in pipeline(3, target)
    assert not any(n.op == "layout_transform" for n in optimize(g, 3, target=target).nodes)
    assert any(n.op == "layout_transform" for n in optimize(g, 3).nodes)


def test_o3_mobilenet_block_compiles_to_the_interpreters_results():
    """Expand, depthwise (stride 1 and 2), project, residual, at O3: all blocked."""
    import textwrap

    from kiln.ir import parse
    from tests.passes.test_layout import INVERTED_RESIDUAL, _weights

    for stride in (1, 2):
        text = textwrap.dedent(INVERTED_RESIDUAL)
        if stride == 2:  # no residual: the block halves the image
            text = (text.replace("groups=32}", "groups=32, strides=(2, 2)}")
                    .replace("%d: float32[1, 32, 8, 8]", "%d: float32[1, 32, 4, 4]")
                    .replace("%r2: float32[1, 32, 8, 8]", "%r2: float32[1, 32, 4, 4]")
                    .replace("%p: float32[1, 16, 8, 8]", "%p: float32[1, 16, 4, 4]")
                    .replace("%y: float32[1, 16, 8, 8] = add(%p, %x)",
                             "%y: float32[1, 16, 4, 4] = relu(%p)"))
        g = parse(text, _weights(text))
        x = np.random.default_rng(stride).standard_normal((1, 16, 8, 8)).astype(np.float32)
        compiled = kiln.compile(g, opt_level=3, layout_budget=0, layout_cache=False)
        assert any("depthwise_conv2d_nchwc" in s for k in compiled.build.kernels
                   for s in [k.func])
        np.testing.assert_allclose(compiled.run({"x": x})[0], interpret(g, {"x": x})[0],
                                   rtol=1e-4, atol=1e-4)


# -- the tuner's cache -------------------------------------------------------------------------

P1 = ConvProblem(1, 16, 8, 8, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
P2 = ConvProblem(1, 32, 8, 8, 32, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1))


@pytest.fixture
def fake_measure(monkeypatch):
    """``measure`` without compiling: 32-channel blocks are the fastest; records calls."""
    calls = []

    def measure(work, target):
        calls.append([(p, c.block, c.tile) for p, c in work])
        return [1e-3 / c.block + (1e-5 if c.tile else 0) for _, c in work]

    monkeypatch.setattr(tuning, "measure", measure)
    return calls


def _choose(path, budget=60.0, target=None, problems=(P1, P2, P1)):
    return tuning.measuring_chooser(target or host_target(), budget, path)(list(problems))


def test_cache_miss_measures_then_a_hit_does_not(tmp_path, fake_measure):
    path = tmp_path / "layout.json"
    first = _choose(path)
    assert len(fake_measure) == 1 and {p for p, _, _ in fake_measure[0]} == {P1, P2}
    assert all(c.source == "measured" and c.seconds for cs in first.values() for c in cs)
    assert min(first[P1], key=lambda c: c.seconds).block == 32
    stored = json.loads(path.read_text())
    assert len(stored) == 2
    key = json.loads(next(iter(stored)))
    assert set(key) == {"op", "problem", "ic", "candidates", "target", "threads", "kiln"}
    second = _choose(path)
    assert len(fake_measure) == 1  # nothing measured again
    assert {c.source for cs in second.values() for c in cs} == {"cache"}
    assert [(c.block, c.tile, c.seconds) for c in second[P1]] == \
        [(c.block, c.tile, c.seconds) for c in first[P1]]


def test_cache_keys_hold_the_target_threads_and_kiln_version(tmp_path, fake_measure, monkeypatch):
    path = tmp_path / "layout.json"
    tgt = host_target()
    _choose(path, target=tgt)
    other = host_target(num_cores=tgt.num_cores + 1)
    assert tuning.cache_key(P1, other) != tuning.cache_key(P1, tgt)
    _choose(path, target=other)
    assert len(fake_measure) == 2
    monkeypatch.setattr(kiln, "__version__", "999.0")
    _choose(path, target=tgt)
    assert len(fake_measure) == 3
    monkeypatch.setattr(tuning, "pool_threads", lambda: 64)  # timed with another pool size
    _choose(path, target=tgt)
    assert len(fake_measure) == 4
    assert len(json.loads(path.read_text())) == 8


def test_budget_zero_measures_nothing_but_uses_the_cache(tmp_path, fake_measure):
    path = tmp_path / "layout.json"
    out = _choose(path, budget=0, problems=[P1])
    assert not fake_measure and [c.source for c in out[P1]] == ["heuristic"]
    assert out[P1][0].block == 32 and out[P1][0].tile == (1, 4)  # O=32: two vectors
    _choose(path, problems=[P1])
    assert [c.source for c in _choose(path, budget=0, problems=[P1])[P1]][0] == "cache"


def test_a_small_budget_measures_the_biggest_convs_first(tmp_path, fake_measure, monkeypatch):
    import time

    monkeypatch.setattr(tuning, "BATCH_KERNELS", 1)  # one problem per batch
    monkeypatch.setattr(tuning, "COMPILE_GUESS_S", 0.2)
    fast = tuning.measure

    def slow(work, target):  # 0.2 s per kernel, as the guess says
        time.sleep(0.2 * len(work))
        return fast(work, target)

    monkeypatch.setattr(tuning, "measure", slow)
    big = ConvProblem(1, 64, 16, 16, 64, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    # the first batch (4 candidates) is estimated at 4 x 0.25 s: it fits, a second does not
    out = tuning.measuring_chooser(host_target(), 1.5, tmp_path / "c.json")([P2, big])
    assert len(fake_measure) == 1 and {p for p, _, _ in fake_measure[0]} == {big}
    assert out[big][0].source == "measured" and out[P2][0].source == "heuristic"


def test_unusable_cache_files_are_not_errors(tmp_path, fake_measure):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = _choose(blocker / "layout.json")  # cannot be created
    assert out[P1][0].source == "measured"
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{not json")
    assert _choose(corrupt)[P1][0].source == "measured"
    assert len(json.loads(corrupt.read_text())) == 2  # rewritten whole
    assert _choose(False)[P1][0].source == "measured" and len(fake_measure) == 3


def test_foreign_cache_entries_and_failed_measurements_fall_back(tmp_path, fake_measure,
                                                                 monkeypatch):
    path = tmp_path / "layout.json"
    path.write_text(json.dumps({tuning.cache_key(P1, host_target()): [{"block": "x"}]}))
    assert _choose(path, problems=[P1])[P1][0].source == "measured"  # measured again

    def broken(work, target):
        raise RuntimeError("TVM refused\nthe last line")

    monkeypatch.setattr(tuning, "measure", broken)
    notes: list[str] = []
    out = tuning.measuring_chooser(host_target(), 60, False, notes=notes)([P2])
    assert out[P2][0].source == "heuristic"
    assert "failed" in notes[0] and "the last line" in notes[0]
    assert "0 measured, 1 heuristic" in notes[-1]


def test_cache_location(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))
    assert tuning.cache_path() == tmp_path / "layout.json"
    assert tuning.cache_path(tmp_path / "x.json") == tmp_path / "x.json"
    assert tuning.cache_path(False) is None
    monkeypatch.delenv("KILN_CACHE_DIR")
    assert tuning.cache_path() == Path.home() / ".cache" / "kiln" / "layout.json"


def test_a_real_measurement_and_the_manifest(tmp_path):
    g, shape = _model("resnet_block")
    cache = tmp_path / "layout.json"
    compiled = kiln.compile(g, opt_level=3, layout_budget=30, layout_cache=cache)
    choices = json.loads((compiled.artifact / "manifest.json").read_text())["tuning"]["layout"]
    assert {c["source"] for c in choices["choices"]} == {"measured"}
    assert all(c["seconds"] > 0 for c in choices["choices"])
    entry = next(iter(json.loads(cache.read_text()).values()))
    assert len(entry) == len(tuning.candidates(P1, 16)) and all(e["seconds"] for e in entry)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(compiled.run({"x": x})[0], interpret(g, {"x": x})[0],
                               rtol=1e-4, atol=1e-4)
