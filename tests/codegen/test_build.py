"""build / export / compile: fused groups, packing, deduplication, errors, the artifact."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.codegen.build import build
from kiln.codegen.lower import ABSENT, GROUP_OPS, LOWERINGS, _ensure_registered
from kiln.errors import KilnError, UnsupportedOpError
from kiln.ir import OPS, GraphBuilder, TensorType, interpret
from kiln.ir.graph import Graph, Node, Value


def _fused(pattern: str, body: Graph, inputs, builder: GraphBuilder):
    outs = builder.op("fused", inputs, {"graph": body, "pattern": pattern})
    return outs


def _dense_gelu_body(m: int, k: int, n: int) -> Graph:
    b = GraphBuilder("body")
    x = b.input("x", TensorType((m, k)))
    w = b.input("w", TensorType((k, n)))
    bias = b.input("b", TensorType((n,)))
    (y,) = b.op("matmul", [x, w])
    (y,) = b.op("add", [y, bias])
    (y,) = b.op("gelu", [y])
    b.output(y)
    return b.build()


def _attention_body(shape) -> Graph:
    b = GraphBuilder("body")
    s = b.input("s", TensorType(shape))
    mask = b.input("mask", TensorType(shape[-2:]))
    (scale,) = b.op("full", [], {"shape": (), "value": 0.125})
    (y,) = b.op("mul", [s, scale])
    (y,) = b.op("add", [y, mask])
    (y,) = b.op("softmax", [y])
    b.output(y)
    return b.build()


def test_coverage_every_op_lowered_or_listed():
    """Every op of the IR has a TE lowering, or is listed with the reason it has none."""
    _ensure_registered()
    missing = sorted(set(OPS) - set(LOWERINGS) - set(ABSENT) - set(GROUP_OPS))
    assert not missing, f"ops without a lowering and without a reason in ABSENT: {missing}"
    assert not set(ABSENT) & set(LOWERINGS)


def test_fused_groups_are_one_kernel_each():
    rng = np.random.default_rng(0)
    m, k, n = 37, 50, 70
    b = GraphBuilder("fused")
    x = b.input("x", TensorType((m, k)))
    w = b.param("w", rng.standard_normal((k, n)).astype("float32"))
    bias = b.param("bias", rng.standard_normal(n).astype("float32"))
    (h,) = _fused("dense_bias_gelu", _dense_gelu_body(m, k, n), [x, w, bias], b)
    scores = b.input("scores", TensorType((2, 3, 17, 17)))
    mask = b.param("mask", np.triu(np.full((17, 17), -1e4, "float32"), 1))
    (p,) = _fused("scale_mask_softmax", _attention_body((2, 3, 17, 17)), [scores, mask], b)
    b.output(h, p)
    g = b.build()
    res = build(g)
    assert [k.func for k in res.kernels] == ["k0_fused_dense_bias_gelu",
                                             "k1_fused_scale_mask_softmax"]
    args = res.kernels[0].args
    assert args[0] == "x" and args[1].startswith("w.packed") and args[2:] == ["bias", "0"]
    assert len(res.kernels[0].sources) == 3 and res.kernels[0].flops == 2 * m * k * n + 9 * m * n
    feeds = {"x": rng.standard_normal((m, k)).astype("float32"),
             "scores": rng.standard_normal((2, 3, 17, 17)).astype("float32")}
    for got, want in zip(res.run(feeds), interpret(g, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # the epilogue is computed from the register tile: one loop nest, no global gemm buffer
    script = res.module["k0_fused_dense_bias_gelu"].script()
    assert 'scope="local"' in script and "T.parallel" in script


def test_identical_kernels_compile_once():
    rng = np.random.default_rng(1)
    b = GraphBuilder("repeat")
    h = b.input("x", TensorType((8, 32)))
    for i in range(3):
        w = b.param(f"w{i}", rng.standard_normal((32, 32)).astype("float32"))
        (h,) = b.op("matmul", [h, w])
        (h,) = b.op("tanh", [h])
    b.output(h)
    g = b.build()
    res = build(g)
    assert len(res.kernels) == 6 and len(res.module.functions) == 2
    feeds = {"x": rng.standard_normal((8, 32)).astype("float32")}
    np.testing.assert_allclose(res.run(feeds)[0], interpret(g, feeds)[0], rtol=1e-4, atol=1e-5)


def test_symbolic_sizes_must_come_from_an_input_dimension():
    b = GraphBuilder("sym")
    x = b.input("x", TensorType(("2*batch", 4)))
    (y,) = b.op("relu", [x])
    b.output(y)
    with pytest.raises(KilnError, match=r"\['batch'\], which no input has as a dimension"):
        build(b.build())


def test_symbolic_dims_on_cuda_ask_for_concrete_shapes():
    b = GraphBuilder("sym")
    x = b.input("x", TensorType(("batch", 4)))
    (y,) = b.op("relu", [x])
    b.output(y)
    with pytest.raises(KilnError, match="cuda target needs concrete shapes"):
        build(b.build(), target="cuda")


def test_unsupported_ops_are_all_listed():
    x = Value("x", TensorType((2, 3)))
    nodes = tuple(Node(op, (x,), {}, (Value(f"y{i}", TensorType((2, 3))),), origin=f"m.py:{i}")
                  for i, op in enumerate(["no_such_op_a", "relu", "no_such_op_b"]))
    g = Graph("bad", (x,), (), nodes, (nodes[-1].outputs[0],))
    with pytest.raises(UnsupportedOpError) as err:
        build(g)
    msg = str(err.value)
    assert "2 node(s)" in msg and "no_such_op_a" in msg and "no_such_op_b" in msg
    assert "m.py:0" in msg and "float32[2, 3]" in msg


def test_compile_runs_through_the_runtime(tmp_path):
    from kiln.codegen.api import compile

    rng = np.random.default_rng(2)
    b = GraphBuilder("mlp")
    x = b.input("x", TensorType((3, 20)))
    w = b.param("w", rng.standard_normal((20, 5)).astype("float32"))
    (y,) = b.op("matmul", [x, w])
    (y,) = b.op("log_softmax", [y])
    b.output(y, x)
    g = b.build()
    model = compile(g, opt_level=2)
    feeds = {"x": rng.standard_normal((3, 20)).astype("float32")}
    for got, want in zip(model.run(feeds), interpret(g, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    manifest = model.model.manifest
    # only the packed weight is shipped, not the original
    assert len(manifest["constants"]) == 1 and manifest["constants"][0].startswith("w.packed")
    assert "avx512f" in manifest["cpu_features"] or manifest["target"].get("mcpu") != "znver4"
    saved = model.save(tmp_path / "mlp.kiln")
    from kiln.runtime import load

    again = load(saved).run(feeds)
    np.testing.assert_array_equal(again[0], model.run(feeds)[0])


def test_graph_without_kernels_still_compiles():
    from kiln.codegen.api import compile

    b = GraphBuilder("passthrough")
    x = b.input("x", TensorType((2, 2)))
    c = b.param("c", np.eye(2, dtype="float32"))
    b.output(x, c)
    model = compile(b.build())
    got = model.run({"x": np.ones((2, 2), "float32")})
    np.testing.assert_array_equal(got[1], np.eye(2))
