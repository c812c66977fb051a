"""kiln.from_onnx: parameters, folding, symbolic dims, opset handling, recurrent ops against
onnxruntime, and the errors for everything a model can get wrong."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import kiln
from kiln.errors import InputError, KilnError, ShapeError, UnsupportedOpError
from kiln.frontend.onnx.registry import CONVERTERS
from tests.onnx.util import assert_close, import_and_compare, ort_run, rand

FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64


def vi(name: str, shape, elem=FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def model(nodes, inputs, outputs, inits=(), opset: int = 17, value_info=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits),
                              value_info=list(value_info))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def init(name: str, array) -> TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def test_initializers_are_named_parameters_and_origins_name_nodes():
    w, b = rand(40, 30), rand(40, seed=1)
    m = model([helper.make_node("Gemm", ["x", "W", "B"], ["y"], name="fc", transB=1),
               helper.make_node("Relu", ["y"], ["z"])],
              [vi("x", [2, 30])], [vi("z", [2, 40])], [init("W", w), init("B", b)])
    graph = import_and_compare(m, {"x": rand(2, 30)})
    assert [v.name for v in graph.params] == ["W", "B"]
    assert {n.origin for n in graph.nodes} == {"onnx:fc", "onnx:#1 Relu"}
    assert graph.outputs[0].name == "z"


def test_shape_computations_fold():
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape leaves one reshape node."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "one"], ["d"], axis=0),
             helper.make_node("Unsqueeze", ["d", "zero"], ["du"]),
             helper.make_node("Concat", ["minus", "du"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    inits = [init("one", np.int64(1)), init("zero", np.array([0])),
             init("minus", np.array([-1]))]
    m = model(nodes, [vi("x", [2, 3, 4])], [vi("y", [8, 3])], inits)
    graph = import_and_compare(m, {"x": rand(2, 3, 4)})
    assert [n.op for n in graph.nodes] == ["reshape"] and not graph.params


def test_symbolic_dims_survive_shape_computations():
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "axes"], ["nu"]),
             helper.make_node("Concat", ["nu", "rest"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    inits = [init("zero", np.int64(0)), init("axes", np.array([0])),
             init("rest", np.array([12]))]
    m = model(nodes, [vi("x", ["batch size", 3, 4])], [vi("y", ["batch size", 12])], inits)
    graph = kiln.from_onnx(m)
    assert graph.inputs[0].shape == ("batch_size", 3, 4)
    assert graph.outputs[0].shape == ("batch_size", 12)
    for n in (1, 4):
        feeds = {"x": rand(n, 3, 4)}
        assert_close(kiln.interpret(graph, feeds), ort_run(m, feeds))


def test_shape_arithmetic_on_symbols_gives_size_expressions():
    """[N, S, 8] -> [N*S, 8] and -> [N, 4*S, 2] with the sizes computed by Shape, Gather,
    Mul and Div nodes (what exporters write for flatten and head splits), no input_shapes."""
    g = [helper.make_node("Shape", ["x"], ["s"]),
         helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
         helper.make_node("Gather", ["s", "i1"], ["t"], axis=0),
         helper.make_node("Mul", ["n", "t"], ["nt"]),
         helper.make_node("Concat", ["nt", "eight"], ["shape"], axis=0),
         helper.make_node("Reshape", ["x", "shape"], ["y"]),
         helper.make_node("Mul", ["t", "eight"], ["t8"]),
         helper.make_node("Div", ["t8", "two"], ["t4"]),
         helper.make_node("Concat", ["n", "t4", "two"], ["shape2"], axis=0),
         helper.make_node("Reshape", ["x", "shape2"], ["z"])]
    inits = [init("i0", np.array([0])), init("i1", np.array([1])), init("two", np.array([2])),
             init("eight", np.array([8]))]
    m = model(g, [vi("x", ["N", "S", 8])], [vi("y", [None, 8]), vi("z", [None, None, 2])],
              inits)
    graph = kiln.from_onnx(m)
    assert [str(v.type) for v in graph.outputs] == ["float32[N*S, 8]", "float32[N, 4*S, 2]"]
    for n, s in [(1, 1), (2, 6), (3, 5)]:
        feeds = {"x": rand(n, s, 8)}
        assert_close(kiln.interpret(graph, feeds), ort_run(m, feeds))


def test_expression_dim_params_read_back_as_expressions():
    m = model([helper.make_node("Identity", ["x"], ["y"])],
              [vi("x", ["N", "2*N + 1", "seq-len"])], [vi("y", ["N", "2*N + 1", "seq-len"])])
    graph = kiln.from_onnx(m)
    assert str(graph.inputs[0].type) == "float32[N, 2*N + 1, seq_len]"
    assert kiln.from_onnx(m, input_shapes={"N": 3}).inputs[0].shape == (3, 7, "seq_len")
    with pytest.raises(InputError, match=r"dimension 2\*N \+ 1 is 5 with N=2, got 4"):
        kiln.interpret(graph, {"x": rand(2, 4, 1)})


def _two_inputs():
    return model([helper.make_node("Add", ["x", "y"], ["z"])],
                 [vi("x", ["N", 3]), vi("y", ["N", 3])], [vi("z", ["N", 3])])


def test_input_shapes_fix_inputs_and_dims():
    by_input = kiln.from_onnx(_two_inputs(), input_shapes={"x": (2, 3)})
    assert [v.shape for v in by_input.inputs] == [(2, 3), (2, 3)]  # N is 2 everywhere
    by_dim = kiln.from_onnx(_two_inputs(), input_shapes={"N": 5})
    assert by_dim.outputs[0].shape == (5, 3)
    with pytest.raises(ShapeError, match="contradicts the model's float32"):
        kiln.from_onnx(_two_inputs(), input_shapes={"x": (2, 4)})
    with pytest.raises(KilnError, match="neither an input of the model"):
        kiln.from_onnx(_two_inputs(), input_shapes={"q": (1,)})


def test_model_local_functions_are_inlined():
    body = helper.make_function("custom", "Double", ["a"], ["b"],
                                [helper.make_node("Add", ["a", "a"], ["b"])],
                                [helper.make_opsetid("", 17)])
    graph = helper.make_graph([helper.make_node("Double", ["x"], ["y"], domain="custom")], "g",
                              [vi("x", [3])], [vi("y", [3])])
    m = helper.make_model(graph, functions=[body], opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)])
    graph = import_and_compare(m, {"x": rand(3)})
    assert [n.op for n in graph.nodes] == ["add"]


def test_old_opsets_are_converted_with_a_warning():
    m = model([helper.make_node("Unsqueeze", ["x"], ["y"], axes=[0]),
               helper.make_node("Softmax", ["y"], ["z"], axis=1)],
              [vi("x", [2, 3])], [vi("z", [1, 2, 3])], opset=11)
    with pytest.warns(UserWarning, match="opset 11.*converted to opset 13"):
        import_and_compare(m, {"x": rand(2, 3)})


def test_all_unsupported_ops_are_listed_at_once():
    nodes = [helper.make_node("TopK", ["x", "k"], ["v", "i"], name="top"),
             helper.make_node("Relu", ["v"], ["r"]),
             helper.make_node("NonZero", ["r"], ["nz"]),
             helper.make_node("NonZero", ["x"], ["nz2"], name="again")]
    m = model(nodes, [vi("x", [4]), vi("k", [1], INT64), vi("u", [2], TensorProto.UINT16)],
              [vi("nz", None, INT64), vi("nz2", None, INT64)])
    with pytest.raises(UnsupportedOpError) as e:
        kiln.from_onnx(m)
    text = str(e.value)
    assert "2 ONNX op(s)" in text
    assert "TopK (opset 17)" in text and "'top' (#0)" in text
    assert "NonZero (opset 17)" in text and "#2, 'again' (#3)" in text
    assert "input 'u' has element type UINT16" in text


def test_a_changed_op_version_is_refused(monkeypatch):
    """An op whose schema at the model's opset is newer than kiln's converters is
    unsupported, not converted with the older converter."""
    monkeypatch.setitem(CONVERTERS, "Relu", {13: CONVERTERS["Relu"][13]})
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2])], [vi("y", [2])],
              opset=14)
    with pytest.raises(UnsupportedOpError, match="opset 14 uses Relu-14; kiln converts "
                                                  "versions 13"):
        kiln.from_onnx(m)


def test_converters_cover_every_version_from_opset_13():
    """Each converted op has a converter for every schema version in effect at opsets 13 up
    to the newest onnx knows, so no opset in that range falls back on an older one."""
    history: dict[str, set[int]] = {}
    for s in onnx.defs.get_all_schemas_with_history():
        if s.domain == "":
            history.setdefault(s.name, set()).add(s.since_version)
    gaps = {}
    for op, table in CONVERTERS.items():
        versions = sorted(history[op])
        first = max([v for v in versions if v <= 13], default=versions[0])
        missing = [v for v in versions if v >= first and v not in table]
        if missing or set(table) - history[op]:
            gaps[op] = (missing, sorted(set(table) - history[op]))
    assert not gaps


def test_errors_name_the_node_op_and_input_types():
    m = model([helper.make_node("Reshape", ["x", "s"], ["y"], name="bad_reshape")],
              [vi("x", [2, 3])], [vi("y", [4, 2])], [init("s", np.array([4, 2]))])
    with pytest.raises(ShapeError) as e:
        kiln.from_onnx(m)
    assert "ONNX node 'bad_reshape' (#0) Reshape-14(x: float32[2, 3], s: int64[2])" in str(e.value)


def test_shape_inputs_must_be_known_at_import():
    m = model([helper.make_node("Reshape", ["x", "s"], ["y"])],
              [vi("x", [2, 3]), vi("s", [2], INT64)], [vi("y", [3, 2])])
    with pytest.raises(UnsupportedOpError, match="needs its shape input 's' to be known at "
                                                  "import"):
        kiln.from_onnx(m)


def test_declared_shapes_that_contradict_inference():
    m = model([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["y"], ["z"])],
              [vi("x", [2, 3])], [vi("z", [2, 3])], value_info=[vi("y", [3, 3])])
    with pytest.raises(ShapeError, match="shape contradiction: kiln infers float32.2, 3. for "
                                         "output 'y', but the model declares shape .3, 3."):
        kiln.from_onnx(m)


# -- malformed input ----------------------------------------------------------------------------


def _good_bytes() -> bytes:
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2])], [vi("y", [2])])
    return m.SerializeToString()


@pytest.mark.parametrize("data,match", [
    (_good_bytes()[:-7], "not a readable ONNX model|no graph"),
    (b"\xff\xfe garbage \x00\x01", "not a readable ONNX model|no graph"),
    (numpy_helper.from_array(np.ones(3, np.float32)).SerializeToString(), "no graph"),
    (b"", "no graph"),
])
def test_malformed_files(tmp_path, data, match):
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    with pytest.raises(KilnError, match=match):
        kiln.from_onnx(str(path))


def test_missing_file_and_wrong_argument():
    with pytest.raises(KilnError, match="no such ONNX file"):
        kiln.from_onnx("/nonexistent/model.onnx")
    with pytest.raises(KilnError, match="takes a path, bytes or an onnx.ModelProto"):
        kiln.from_onnx(42)


def test_dangling_input_and_missing_initializer():
    m = model([helper.make_node("Add", ["x", "W"], ["y"], name="add")], [vi("x", [2])],
              [vi("y", [2])])
    with pytest.warns(UserWarning, match="onnx.checker rejects this model"), \
            pytest.raises(KilnError, match="Add-14.*input 'W' is not a graph input, an "
                                           "initializer or an output of an earlier node"):
        kiln.from_onnx(m)


def test_output_never_computed():
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2])],
              [vi("y", [2]), vi("nowhere", [2])])
    with pytest.warns(UserWarning), pytest.raises(KilnError, match="'nowhere' is not computed"):
        kiln.from_onnx(m)


# -- ops with tricky semantics, against onnxruntime or onnx's reference --------------------------


def _rnn_model(op: str, hidden: int, dirs: int, inputs: dict, **attrs):
    names = ["X", "W", "R", "B", "", "initial_h"] + (["initial_c", "P"] if op == "LSTM" else [])
    names = [n if n in inputs or n == "" else "" for n in names]
    while names and names[-1] == "":
        names.pop()
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, names, outs, hidden_size=hidden,
                            direction=["forward", "bidirectional"][dirs - 1], **attrs)
    x = inputs["X"]
    if attrs.get("layout", 0):
        (batch, seq, _), y, state = x.shape, [0, 1, 2, 3], [0, 1, 2]
    else:
        (seq, batch, _), y, state = x.shape, [1, 2, 0, 3], [1, 0, 2]
    y_shape = [[batch, seq, dirs, hidden][i] for i in y]
    h_shape = [[batch, dirs, hidden][i] for i in state]
    shapes = [y_shape, h_shape, h_shape]
    inits = [init(k, v) for k, v in inputs.items() if k != "X"]
    return model([node], [vi("X", list(x.shape))], [vi(o, s) for o, s in zip(outs, shapes)],
                 inits)


@pytest.mark.parametrize("op,attrs,extra", [
    ("LSTM", {}, ()),
    ("LSTM", {"layout": 1}, ("initial_h", "initial_c")),
    ("LSTM", {}, ("initial_h", "initial_c", "P")),
    ("GRU", {}, ()),
    ("GRU", {"linear_before_reset": 1}, ("initial_h",)),
    ("RNN", {"activations": ["Relu", "Tanh"]}, ("initial_h",)),
])
def test_recurrent_ops_match_onnxruntime(op, attrs, extra):
    gates, hidden, dirs, seq, batch, size = {"LSTM": 4, "GRU": 3, "RNN": 1}[op], 5, 2, 4, 3, 6
    rng = np.random.default_rng(0)

    def r(*shape):
        return (rng.standard_normal(shape) * 0.5).astype(np.float32)

    layout = attrs.get("layout", 0)
    inputs = {"X": r(batch, seq, size) if layout else r(seq, batch, size),
              "W": r(dirs, gates * hidden, size), "R": r(dirs, gates * hidden, hidden),
              "B": r(dirs, 2 * gates * hidden)}
    state = (batch, dirs, hidden) if layout else (dirs, batch, hidden)
    for name in extra:
        inputs[name] = r(dirs, 3 * hidden) if name == "P" else r(*state)
    m = _rnn_model(op, hidden, dirs, inputs, **attrs)
    feeds = {"X": inputs["X"]}
    if not layout:
        import_and_compare(m, feeds)
        return
    # onnxruntime has no batch-first recurrent ops; onnx's reference evaluator has
    want = ReferenceEvaluator(m).run(None, feeds)
    assert_close(kiln.interpret(kiln.from_onnx(m), feeds), want)


def test_even_size_lrn_follows_onnx():
    """ONNX's even-size window (channels c-1 .. c+2 for size 4) differs from kiln's
    (PyTorch's, c-2 .. c+1). onnxruntime rejects even sizes and onnx's reference evaluator
    sums the wrong axis, so the spec's formula, written out, is the oracle."""
    m = model([helper.make_node("LRN", ["x"], ["y"], size=4, alpha=0.1, beta=0.75, bias=1.0)],
              [vi("x", [2, 6, 2, 2])], [vi("y", [2, 6, 2, 2])])
    x = rand(2, 6, 2, 2)
    sq = np.stack([np.sum(x[:, max(0, c - 1):c + 3] ** 2, axis=1) for c in range(6)], 1)
    want = x / (1.0 + 0.1 / 4 * sq) ** 0.75
    assert_close(kiln.interpret(kiln.from_onnx(m), {"x": x}), [want.astype(np.float32)])


def test_negative_pads_crop_and_expand_broadcasts_both_ways():
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"]),
             helper.make_node("Expand", ["p", "shape"], ["y"])]
    inits = [init("pads", np.array([1, -1, -2, 2])), init("shape", np.array([2, 1, 1]))]
    m = model(nodes, [vi("x", [4, 3])], [vi("y", [2, 3, 4])], inits)
    graph = import_and_compare(m, {"x": rand(4, 3)})
    assert [n.op for n in graph.nodes] == ["slice", "pad", "expand"]


def test_symbolic_constant_of_shape_broadcasts_away():
    """PyTorch's 'expand with -1' pattern: ConstantOfShape of a symbolic shape feeding a
    broadcasting op is the scalar it is filled with."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("ConstantOfShape", ["s"], ["ones"],
                              value=numpy_helper.from_array(np.ones(1, np.float32))),
             helper.make_node("Mul", ["x", "ones"], ["y"])]
    m = model(nodes, [vi("x", ["N", 3])], [vi("y", ["N", 3])])
    graph = import_and_compare(m, {"x": rand(4, 3)})
    assert graph.outputs[0].shape == ("N", 3)
    # alone, it is a ``full`` of the symbolic shape, sized when the model runs
    alone = model(nodes[:2], [vi("x", ["N", 3])], [vi("ones", ["N", 3])])
    graph = import_and_compare(alone, {"x": rand(4, 3)})
    assert graph.outputs[0].shape == ("N", 3)
    out = kiln.compile(graph).run({"x": rand(2, 3)})[0]
    np.testing.assert_array_equal(out, np.ones((2, 3), np.float32))


def test_onnx_model_round_trips_through_kiln():
    """ONNX -> kiln -> ONNX: the re-export passes the checker and onnxruntime agrees."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    inits = [init("w", rand(4, 3, 3, 3)), init("fc", rand(5, 16, seed=2))]
    m = model(nodes, [vi("x", ["N", 3, 4, 4])], [vi("y", ["N", 5])], inits)
    again = kiln.to_onnx(kiln.from_onnx(m))
    onnx.checker.check_model(again, full_check=True)
    feeds = {"x": rand(2, 3, 4, 4)}
    assert_close(ort_run(again, feeds), ort_run(m, feeds))
    assert again.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
