"""kiln.to_onnx: every kiln op exports to a model onnx.checker accepts and onnxruntime runs to
kiln.interpret's results; fused graphs, symbolic dims and random graphs too."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from hypothesis import given

import kiln
from kiln.errors import KilnError
from kiln.frontend.onnx.export_ops import EXPORTERS
from kiln.fuzz import graphs as fused_graphs
from kiln.ir import GraphBuilder, TensorType
from kiln.ir.ops import OPS
from tests.onnx.util import assert_close, ort_run
from tests.strategies import graph_inputs, graphs

F = "float32"


def T(*shape, dtype: str = F) -> TensorType:
    return TensorType(shape, dtype)


# (case id, op, input types, attributes, input kind: normal / positive / int / bool / index)
OP_CASES = [
    ("add", "add", [T(2, 3), T(3)], {}, None),
    ("add_bool", "add", [T(4, dtype="bool"), T(4, dtype="bool")], {}, None),
    ("sub", "sub", [T(2, 3), T(2, 1)], {}, None),
    ("mul_bool", "mul", [T(4, dtype="bool"), T(4, dtype="bool")], {}, None),
    ("div", "div", [T(2, 3), T(2, 3)], {}, "positive"),
    ("div_int", "div", [T(6, dtype="int64"), T(6, dtype="int64")], {}, "nonzero_int"),
    ("pow", "pow", [T(2, 3), T(2, 3)], {}, "positive"),
    ("maximum", "maximum", [T(2, 3), T(1, 3)], {}, None),
    ("minimum", "minimum", [T(2, 3), T(2, 3)], {}, None),
    ("maximum_bool", "maximum", [T(4, dtype="bool"), T(4, dtype="bool")], {}, None),
    *[(op, op, [T(2, 3), T(3)], {}, None) for op in (
        "equal", "not_equal", "less", "less_equal", "greater", "greater_equal")],
    *[(op, op, [T(5, dtype="bool"), T(5, dtype="bool")], {}, None) for op in (
        "logical_and", "logical_or", "logical_xor")],
    ("logical_not", "logical_not", [T(5, dtype="bool")], {}, None),
    *[(op, op, [T(2, 3)], {}, None) for op in (
        "neg", "abs", "sign", "exp", "sin", "cos", "erf", "floor", "ceil", "round", "relu",
        "sigmoid", "tanh", "silu", "hardswish", "identity")],
    *[(op, op, [T(2, 3)], {}, "positive") for op in ("log", "sqrt", "rsqrt", "reciprocal")],
    ("where", "where", [T(2, 3, dtype="bool"), T(2, 3), T(3)], {}, None),
    ("cast_int", "cast", [T(2, 3)], {"dtype": "int32"}, None),
    ("cast_bool", "cast", [T(2, 3)], {"dtype": "bool"}, None),
    ("cast_float", "cast", [T(2, 3, dtype="int64")], {"dtype": "float64"}, "int"),
    ("clip", "clip", [T(2, 3)], {"min": -0.5, "max": 0.5}, None),
    ("clip_max", "clip", [T(2, 3)], {"max": 0.25}, None),
    ("clip_int", "clip", [T(6, dtype="int32")], {"min": 1, "max": 3}, "int"),
    ("leaky_relu", "leaky_relu", [T(2, 3)], {"alpha": 0.2}, None),
    ("elu", "elu", [T(2, 3)], {"alpha": 0.5}, None),
    ("gelu", "gelu", [T(2, 3)], {}, None),
    ("gelu_tanh", "gelu", [T(2, 3)], {"approximate": "tanh"}, None),
    ("softplus", "softplus", [T(2, 3)], {}, None),
    ("softplus_beta", "softplus", [T(2, 3)], {"beta": 2.0, "threshold": 1.0}, None),
    ("softplus_no_threshold", "softplus", [T(2, 3)], {"threshold": math.inf}, None),
    ("heaviside", "heaviside", [T(2, 3)], {"value_at_zero": 0.5}, "with_zeros"),
    ("hardtanh", "hardtanh", [T(2, 3)], {"min_val": -0.3, "max_val": 0.7}, None),
    *[(f"{op}_{i}", op, [T(2, 3, 4)], attrs, None) for op in (
        "sum", "mean", "prod", "max", "min", "logsumexp") for i, attrs in enumerate([
            {}, {"axes": (1,)}, {"axes": (0, -1), "keepdims": True}, {"axes": ()}])],
    ("argmax", "argmax", [T(2, 3, 4)], {"axis": 1}, None),
    ("argmin", "argmin", [T(2, 3, 4)], {"axis": -1, "keepdims": True}, None),
    ("softmax", "softmax", [T(2, 3, 4)], {"axis": 1}, None),
    ("log_softmax", "log_softmax", [T(2, 3, 4)], {}, None),
    ("matmul", "matmul", [T(2, 3, 4), T(4, 5)], {}, None),
    ("matmul_vec", "matmul", [T(4), T(2, 4, 3)], {}, None),
    ("matmul_integer", "matmul_integer", [T(2, 3, 4, dtype="uint8"), T(4, 5, dtype="int8")],
     {}, "int"),
    ("matmul_integer_i32", "matmul_integer", [T(3, 4, dtype="int32"), T(4, 5, dtype="int8")],
     {}, "int"),
    ("reshape", "reshape", [T(2, 3, 4)], {"shape": (4, -1)}, None),
    ("reshape_symbolic", "reshape", [T("N", 6)], {"shape": ("N", 2, 3)}, None),
    ("reshape_two_symbols", "reshape", [T("B", "L", 6)], {"shape": ("B", "L", 2, 3)}, None),
    ("transpose", "transpose", [T(2, 3, 4)], {"perm": (2, 0, 1)}, None),
    ("transpose_reverse", "transpose", [T(2, 3, 4)], {}, None),
    ("concat", "concat", [T(2, 3), T(2, 1), T(2, 2)], {"axis": 1}, None),
    ("split", "split", [T(2, 5)], {"axis": 1, "sizes": (2, 3)}, None),
    ("slice", "slice", [T(6, 5)], {"starts": (1, -1), "ends": (5, -(2**63)), "axes": (0, 1),
                                   "steps": (2, -2)}, None),
    ("slice_sentinel", "slice", [T(6, 5)], {"starts": (2,), "ends": (2**62,)}, None),
    ("gather", "gather", [T(5, 3), T(2, 2, dtype="int64")], {"axis": 0}, "index"),
    ("take_along_axis", "take_along_axis", [T(3, 1, 4), T(3, 5, 2, dtype="int64")],
     {"axis": 2}, "index"),
    ("expand", "expand", [T(3, 1)], {"shape": (2, 3, 4)}, None),
    ("expand_symbolic", "expand", [T("N", 1)], {"shape": ("N", 4)}, None),
    ("squeeze", "squeeze", [T(1, 3, 1)], {}, None),
    ("squeeze_axes", "squeeze", [T(1, 3, 1)], {"axes": (-1,)}, None),
    ("unsqueeze", "unsqueeze", [T(2, 3)], {"axes": (0, -1)}, None),
    ("pad", "pad", [T(2, 3)], {"pads": (1, 0, 2, 1), "value": 1.5}, None),
    ("pad_reflect", "pad", [T(3, 4)], {"pads": (1, 2, 1, 0), "mode": "reflect"}, None),
    ("pad_edge", "pad", [T(3, 4)], {"pads": (0, 2, 1, 1), "mode": "edge"}, None),
    ("flatten", "flatten", [T(2, 3, 4, 5)], {"start_dim": 1, "end_dim": 2}, None),
    ("flatten_symbolic", "flatten", [T("N", 3, 4)], {}, None),
    ("tril", "tril", [T(2, 4, 4)], {"k": -1}, None),
    ("triu", "triu", [T(4, 5)], {"k": 1}, None),
    ("one_hot", "one_hot", [T(2, 3, dtype="int64")], {"depth": 4}, "index"),
    ("full", "full", [], {"shape": (2, 3), "value": 1.5}, None),
    ("full_scalar_int", "full", [], {"shape": (), "value": 7, "dtype": "int64"}, None),
    ("arange", "arange", [], {"start": 1, "stop": 10, "step": 3}, None),
    ("dims", "dims", [], {"values": (2, 3)}, None),
    ("random_uniform", "random_uniform", [], {"shape": (3, 4), "seed": 5}, None),
    ("random_normal", "random_normal", [], {"shape": (3, 4), "seed": 7}, None),
    ("conv1d", "conv1d", [T(2, 4, 9), T(6, 2, 3), T(6)],
     {"strides": (2,), "pads": (1, 2), "groups": 2}, None),
    ("conv2d", "conv2d", [T(1, 3, 8, 8), T(4, 3, 3, 3)],
     {"strides": (2, 1), "pads": (1, 0, 1, 2), "dilations": (1, 2)}, None),
    ("conv2d_integer", "conv2d_integer",
     [T(1, 4, 6, 6, dtype="uint8"), T(6, 2, 3, 3, dtype="int8")],
     {"strides": (2, 1), "pads": (1, 0, 1, 2), "groups": 2, "pad_value": 9}, "int"),
    ("conv2d_integer_0", "conv2d_integer",
     [T(1, 3, 5, 5, dtype="uint8"), T(2, 3, 3, 3, dtype="uint8")],
     {}, "int"),
    ("conv_transpose2d", "conv_transpose2d", [T(1, 4, 5, 5), T(4, 3, 3, 3), T(6)],
     {"strides": (2, 2), "pads": (1, 1, 0, 1), "output_padding": (1, 0), "groups": 2}, None),
    ("max_pool2d", "max_pool2d", [T(1, 2, 7, 7)],
     {"kernel_shape": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1)}, None),
    ("max_pool2d_ceil", "max_pool2d", [T(1, 2, 8, 8)],
     {"kernel_shape": (3, 3), "strides": (2, 2), "ceil_mode": True}, None),
    ("avg_pool2d", "avg_pool2d", [T(1, 2, 7, 7)],
     {"kernel_shape": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1),
      "count_include_pad": False}, None),
    ("avg_pool2d_pad", "avg_pool2d", [T(1, 2, 6, 6)],
     {"kernel_shape": (2, 2), "pads": (1, 1, 1, 1)}, None),
    ("global_avg_pool2d", "global_avg_pool2d", [T(2, 3, 4, 5)], {}, None),
    ("batch_norm", "batch_norm", [T(2, 3, 4, 4), T(3), T(3), T(3), T(3)], {}, "positive"),
    ("layer_norm", "layer_norm", [T(2, 3, 4), T(4), T(4)], {}, None),
    ("layer_norm_plain", "layer_norm", [T(2, 3, 4)], {"axis": 1, "epsilon": 1e-3}, None),
    ("lrn", "lrn", [T(1, 6, 3, 3)], {"size": 3}, None),
    ("lrn_even", "lrn", [T(1, 6, 3, 3)], {"size": 4, "bias": 2.0}, None),
    ("dropout", "dropout", [T(2, 3)], {}, None),
    ("dropout_training", "dropout", [T(4, 5)], {"p": 0.3, "training": True, "seed": 3}, None),
    ("layout_transform", "layout_transform", [T(2, 16, 3, 4)],
     {"src_layout": "NCHW", "dst_layout": "NCHW8c"}, None),
    ("layout_transform_reblock", "layout_transform", [T(1, 2, 3, 3, 8)],
     {"src_layout": "NCHW8c", "dst_layout": "NCHW4c"}, None),
    ("layout_transform_weight", "layout_transform", [T(16, 8, 3, 3)],
     {"src_layout": "OIHW", "dst_layout": "OIHW4i8o"}, None),
    ("conv2d_nchwc", "conv2d_nchwc", [T(1, 2, 7, 7, 4), T(2, 2, 3, 3, 4, 8)],
     {"strides": (2, 1), "pads": (1, 0, 1, 2), "tile": (1, 4)}, None),
    ("depthwise_conv2d_nchwc", "depthwise_conv2d_nchwc", [T(1, 2, 7, 7, 8), T(2, 1, 3, 3, 8)],
     {"strides": (2, 1), "pads": (1, 0, 1, 2), "dilations": (1, 2)}, None),
    ("max_pool2d_nchwc", "max_pool2d_nchwc", [T(1, 2, 7, 7, 8)],
     {"kernel_shape": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1)}, None),
    ("avg_pool2d_nchwc", "avg_pool2d_nchwc", [T(1, 2, 6, 6, 4)],
     {"kernel_shape": (2, 2), "pads": (1, 1, 1, 1), "count_include_pad": False}, None),
    ("global_avg_pool2d_nchwc", "global_avg_pool2d_nchwc", [T(2, 3, 4, 5, 8)], {}, None),
]


def _data(t: TensorType, kind: str | None, rng: np.random.Generator, sizes: dict) -> np.ndarray:
    shape = tuple(sizes.get(d, 3) if isinstance(d, str) else d for d in t.shape)
    if t.dtype == "bool":
        return rng.random(shape) < 0.5
    if t.dtype == "uint8":
        return rng.integers(0, 256, shape).astype(t.dtype)
    if t.dtype.startswith("int"):
        if kind == "index":
            return rng.integers(-2, 2, shape).astype(t.dtype)
        values = rng.integers(-9, 10, shape)
        if kind == "nonzero_int":
            values = np.where(values == 0, 3, values)
        return values.astype(t.dtype)
    x = rng.standard_normal(shape)
    if kind == "positive":
        x = np.abs(x) + 0.5
    if kind == "with_zeros":
        x[..., 0] = 0
    return x.astype(t.dtype)


def _graph(op: str, types: list[TensorType], attrs: dict):
    b = GraphBuilder(op)
    inputs = [b.input(f"x{i}", t) for i, t in enumerate(types)]
    outs = b.op(op, inputs, attrs)
    b.output(*outs)
    return b.build()


@pytest.mark.parametrize("opset", [17])
@pytest.mark.parametrize("case", OP_CASES, ids=[c[0] for c in OP_CASES])
def test_op_exports(case, opset):
    _, op, types, attrs, kind = case
    graph = _graph(op, types, attrs)
    rng = np.random.default_rng(0)
    feeds = {v.name: _data(v.type, kind, rng, {}) for v in graph.inputs}
    model = kiln.to_onnx(graph, opset=opset)
    onnx.checker.check_model(model, full_check=True)
    assert_close(ort_run(model, feeds), kiln.interpret(graph, feeds), rtol=1e-5, atol=1e-6)


VERSIONED = {"gelu", "gelu_tanh", "hardswish", "layer_norm", "layer_norm_plain", "mean_1", "max_2",
             "logsumexp_0", "tril", "triu", "lrn_even"}


@pytest.mark.parametrize("opset", [13, 18, 21])
@pytest.mark.parametrize("case", [c for c in OP_CASES if c[0] in VERSIONED],
                         ids=lambda c: c[0])
def test_opset_dependent_exports(case, opset):
    """Ops whose ONNX form changed over opsets export right at each."""
    test_op_exports(case, opset)


def test_every_op_has_an_export():
    missing = sorted(set(OPS) - set(EXPORTERS) - {"fused"})  # fused nodes are inlined
    assert not missing, f"kiln ops without an ONNX export: {missing}"
    covered = {c[1] for c in OP_CASES}
    assert sorted(set(OPS) - covered - {"fused"}) == []


def test_symbolic_dims_become_dim_params():
    b = GraphBuilder("sym")
    x = b.input("x", T("batch", 4))
    w = b.param("w", np.ones((4, 2), np.float32))
    b.output(b.op("relu", [b.op("matmul", [x, w])[0]])[0])
    model = kiln.to_onnx(b.build())
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 4
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [t.name for t in model.graph.initializer] == ["w"]
    for n in (1, 5):
        feeds = {"x": np.ones((n, 4), np.float32)}
        assert ort_run(model, feeds)[0].shape == (n, 2)


def test_size_expressions_export_as_computed_shapes():
    """A reshape to (2*N, S, 3) reads N and S from the input's shape and computes 2*N; the
    output's dim_param is the expression, and it imports back as one."""
    def fn(x):
        return kiln.ops.reshape(x, (x.size(0) * 2, x.size(1), 3))

    graph = kiln.trace(fn, x=kiln.TensorSpec(("N", "S", 6)))
    assert str(graph.outputs[0].type) == "float32[2*N, S, 3]"
    model = kiln.to_onnx(graph)
    assert [d.dim_param or d.dim_value for d in
            model.graph.output[0].type.tensor_type.shape.dim] == ["2*N", "S", 3]
    for n, s in [(1, 1), (3, 2)]:
        x = np.arange(6 * n * s, dtype=np.float32).reshape(n, s, 6)
        (got,) = ort_run(model, {"x": x})
        np.testing.assert_array_equal(got, x.reshape(2 * n, s, 3))
    assert kiln.from_onnx(model).outputs[0].type == graph.outputs[0].type


def test_fused_graphs_inline():
    """After fusion (O2) the fused nodes' sub-graphs export inline."""
    from tests.onnx.util import example

    model = example("mlp").MLP((6, 8, 3), softmax=True)
    graph = kiln.trace(model, x=kiln.TensorSpec(("N", 6)))
    fused = kiln.optimize(graph, "O2")
    assert any(n.op == "fused" for n in fused.nodes)
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 6)).astype(np.float32)}
    proto = kiln.to_onnx(fused)
    assert_close(ort_run(proto, feeds), kiln.interpret(graph, feeds))


def test_writes_file_and_rejects_bad_opset(tmp_path):
    graph = _graph("relu", [T(2)], {})
    path = tmp_path / "relu.onnx"
    kiln.to_onnx(graph, path)
    assert onnx.load(str(path)).graph.node[0].op_type == "Relu"
    with pytest.raises(KilnError, match="exports opsets 13"):
        kiln.to_onnx(graph, opset=11)


@given(graphs(weird_floats=False))
def test_random_graphs_match_onnxruntime(graph):
    """Random graphs (symbolic dims, odd names) export, run in onnxruntime and import back
    to the same results."""
    if any(v.name == "" for v in graph.inputs):
        return  # ONNX reserves the empty name for omitted inputs
    feeds = graph_inputs(graph)
    want = kiln.interpret(graph, feeds)
    proto = kiln.to_onnx(graph)
    names = [i.name for i in proto.graph.input]
    assert names == [v.name for v in graph.inputs]
    _close(ort_run(proto, feeds), want)
    _close(kiln.interpret(kiln.from_onnx(proto), feeds), want)


@given(fused_graphs())
def test_fused_random_graphs_match_onnxruntime(graph):
    from kiln.fuzz import random_inputs

    feeds = random_inputs(graph)
    want = kiln.interpret(graph, feeds)
    fused = kiln.optimize(graph, "O2")
    _close(ort_run(kiln.to_onnx(fused), feeds), want, rtol=1e-3, atol=1e-4)


def _close(got, want, rtol=1e-4, atol=1e-5):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, equal_nan=True)
