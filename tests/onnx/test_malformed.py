"""Malformed ONNX models: each one a KilnError that names the node and what is wrong, never
a Python error from inside the importer; and the campaign (campaigns/onnx_models.py) that
generates thousands of them, on a fixed slice of its cases."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln.errors import AttributeError_, KilnError, ShapeError, UnsupportedOpError
from kiln.frontend.onnx.registry import CONVERTERS, SPECS
from tests.examples_util import module_at
from tests.onnx.util import ort_run

FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64
ROOT = pathlib.Path(__file__).resolve().parents[2]


def vi(name: str, shape, elem=FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def init(name: str, array) -> TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def model(nodes, inputs, outputs, inits=(), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=8)


def mlp(**matmul_attrs) -> onnx.ModelProto:
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    return model([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm", **matmul_attrs),
                  helper.make_node("Relu", ["h"], ["y"], name="relu")],
                 [vi("x", [2, 4])], [vi("y", [2, 3])], [init("w", w)])


def conv(**attrs) -> onnx.ModelProto:
    w = np.ones((3, 2, 3, 3), np.float32)
    return model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", **attrs)],
                 [vi("x", [1, 2, 5, 5])], [vi("y", [1, 3, 3, 3])], [init("w", w)])


def refuses(m: onnx.ModelProto | bytes, error: type, *fragments: str) -> str:
    """Import ``m``; it must raise ``error`` (not merely a KilnError wrapping a Python
    error) whose message holds every fragment. Returns the message."""
    with pytest.raises(KilnError) as info:
        kiln.from_onnx(m)
    text = str(info.value)
    assert isinstance(info.value, error), (type(info.value), text)
    assert "conversion failed" not in text, text
    for fragment in fragments:
        assert fragment in text, text
    return text


def raw(m: onnx.ModelProto, old: str, new: bytes) -> bytes:
    """``m`` serialized with the string ``old`` replaced by the bytes ``new`` (protobuf's
    Python API refuses to hold invalid UTF-8, so it is written into the bytes)."""
    assert len(old.encode()) == len(new)
    data = m.SerializeToString()
    assert old.encode() in data
    return data.replace(old.encode(), new)


# -- text that is not UTF-8 ---------------------------------------------------------------------


@pytest.mark.parametrize("old, new, where", [
    ("Relu", b"R\xfflu", "ONNX node #1: field op_type"),
    ("relu", b"re\xc3\x28", "ONNX node #1: field name"),
    ("mm", b"\xed\xa0", "ONNX node #0: field name"),
])
def test_non_utf8_names_are_refused_naming_the_field(old, new, where):
    refuses(raw(mlp(), old, new), KilnError, where, "is not UTF-8 text")


def test_non_utf8_string_attribute_and_dim_param():
    m = conv(auto_pad="VALID")
    refuses(raw(m, "VALID", b"V\xffLID"), KilnError, "ONNX node #0: field attribute[0].s")
    m = mlp()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    refuses(raw(m, "batch", b"bat\xf8h"), KilnError, "graph.input[0]", "dim_param")


# -- arity, attributes, ranges --------------------------------------------------------------------


def test_a_matmul_missing_an_input_names_the_node():
    m = mlp()
    del m.graph.node[0].input[1]
    refuses(m, ShapeError, "ONNX node 'mm' (#0) MatMul", "takes 2 inputs, got 1")
    m = mlp()
    m.graph.node[0].input[1] = ""
    refuses(m, ShapeError, "'mm'", "input 1 (B) is required, but omitted")


def test_too_many_outputs_and_inputs():
    m = mlp()
    m.graph.node[1].output.append("extra")
    refuses(m, ShapeError, "'relu'", "has 1 outputs, got 2")
    m = mlp()
    m.graph.node[1].input.append("x")
    refuses(m, ShapeError, "'relu'", "takes 1 inputs, got 2")


@pytest.mark.parametrize("attr, error, fragment", [
    (helper.make_attribute("axis", 1.5), AttributeError_, "'axis' is FLOAT, but ONNX declares "
                                                          "it INT"),
    (helper.make_attribute("bogus", 1), AttributeError_, "unknown attribute 'bogus'"),
    (helper.make_attribute("axis", 5), AttributeError_, "axis=5: out of range for rank 2"),
    (onnx.AttributeProto(name="axis", type=onnx.AttributeProto.INT, ref_attr_name="a"),
     AttributeError_, "refers to 'a' of an enclosing function"),
])
def test_softmax_attributes(attr, error, fragment):
    node = helper.make_node("Softmax", ["x"], ["y"], name="sm")
    node.attribute.append(attr)
    m = model([node], [vi("x", [2, 3])], [vi("y", [2, 3])])
    refuses(m, error, "'sm'", fragment)


def test_required_attribute_missing_and_given_twice():
    m = model([helper.make_node("Concat", ["x", "x"], ["y"], name="cat")],
              [vi("x", [2, 3])], [vi("y", [4, 3])])
    refuses(m, AttributeError_, "'cat'", "required attribute(s) axis missing")
    m.graph.node[0].attribute.extend([helper.make_attribute("axis", 0),
                                      helper.make_attribute("axis", 1)])
    refuses(m, AttributeError_, "'cat'", "attribute 'axis' is given twice")


def test_input_dtype_outside_the_type_constraint():
    m = model([helper.make_node("Gather", ["x", "i"], ["y"], name="g")],
              [vi("x", [3, 2]), vi("i", [2], FLOAT)], [vi("y", [2, 2])])
    refuses(m, ShapeError, "'g'", "input 1 (indices) is float32; ONNX allows int32, int64")


def test_conv_kernel_shape_that_contradicts_the_weight():
    refuses(conv(kernel_shape=[2, 2]), ShapeError, "'conv'",
            "kernel_shape [2, 2] contradicts the weight float32[3, 2, 3, 3]")


@pytest.mark.parametrize("attrs, fragment", [
    ({"pads": [-1, 0, 0, 0]}, "pads=[-1, 0, 0, 0]: values must be at least 0"),
    ({"strides": [1]}, "strides=[1]: must hold 2 values"),
    ({"dilations": [0, 1]}, "values must be at least 1"),
    ({"group": 0}, "group=0: must be at least 1"),
    ({"auto_pad": "SAME"}, "auto_pad='SAME': must be one of"),
])
def test_conv_attribute_ranges(attrs, fragment):
    refuses(conv(**attrs), AttributeError_, "'conv'", fragment)


def test_gemm_flags_and_gather_indices_out_of_range():
    m = model([helper.make_node("Gemm", ["a", "b"], ["y"], name="gemm", transA=2)],
              [vi("a", [2, 2]), vi("b", [2, 2])], [vi("y", [2, 2])])
    refuses(m, AttributeError_, "'gemm'", "transA=2: must be 0 or 1")
    m = model([helper.make_node("Gather", ["x", "i"], ["y"], name="pick", axis=1)],
              [vi("x", [2, 4])], [vi("y", [2, 2])], [init("i", np.array([1, 4]))])
    refuses(m, ShapeError, "'pick'", "index 4 is out of range for axis 1")


def test_lstm_weights_and_activations_that_do_not_fit():
    def lstm(w_rows: int, **attrs):
        node = helper.make_node("LSTM", ["x", "w", "r"], ["y"], name="lstm", hidden_size=2,
                                **attrs)
        return model([node], [vi("x", [3, 1, 2])], [vi("y", [3, 1, 1, 2])],
                     [init("w", np.zeros((1, w_rows, 2), np.float32)),
                      init("r", np.zeros((1, 8, 2), np.float32))], opset=14)

    refuses(lstm(7), ShapeError, "'lstm'", "input 1 ('w') is float32[1, 7, 2]",
            "make it [1, 8, 2]")
    refuses(lstm(8, activations=["Sigmoid"]), ShapeError, "'lstm'",
            "takes 3 activation(s) per direction")


def test_huge_sizes_are_refused_before_anything_is_allocated():
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2**40, 3])],
              [vi("y", [2**40, 3])])
    refuses(m, ShapeError, "graph input 'x'", "kiln's tensors hold at most")
    m = model([helper.make_node("Resize", ["x", "", "s"], ["y"], name="up", mode="linear")],
              [vi("x", [1, 1, 2, 10**7])], [vi("y", [1, 1, 4, 2 * 10**7])],
              [init("s", np.array([1, 1, 2, 2], np.float32))])
    refuses(m, ShapeError, "'up'", "interpolation matrix")


def one_node(op: str, shape, inputs=(), inits=(), **attrs) -> onnx.ModelProto:
    """A model of one ``op`` node named 'n' on input x of ``shape``."""
    node = helper.make_node(op, ["x", *inputs], ["y"], name="n", **attrs)
    return model([node], [vi("x", shape)], [vi("y", None)], inits)


@pytest.mark.parametrize("m, error, fragment", [  # what earlier campaign runs found
    (one_node("LRN", [1, 4, 2, 2], size=2**31 - 1), AttributeError_, "must be in [1, 65536]"),
    (one_node("ConstantOfShape", None, inits=[init("s", np.array([2**62, 8]))]),
     ShapeError, "holds 36893488147419103232 elements"),
    (one_node("Hardmax", ["N", 3], axis=0), UnsupportedOpError, "Hardmax's axis must be static"),
    (one_node("Resize", [1, 1, 0, 3], ["", "s"], [init("s", np.ones(4, np.float32) * 2)]),
     ShapeError, "cannot resize an empty axis"),
    (one_node("RNN", [0, 1, 2], ["w", "r"], [init("w", np.zeros((1, 3, 2), np.float32)),
                                             init("r", np.zeros((1, 3, 3), np.float32))]),
     ShapeError, "a sequence of 0 steps"),
    (one_node("DepthToSpace", [1, 4, "H", 2], blocksize=2), UnsupportedOpError,
     "the height must be static"),
    (one_node("OneHot", [2], ["d", "v"], [init("d", np.array(2**31 - 1)),
                                          init("v", np.array([0.0, 1.0], np.float32))]),
     UnsupportedOpError, "OneHot's positions would be a constant of 2147483647 elements"),
])
def test_cases_the_campaign_found(m, error, fragment):
    if m.graph.node[0].op_type == "ConstantOfShape":  # its input is the initializer itself
        m.graph.node[0].input[:] = ["s"]
        del m.graph.input[:]
    refuses(m, error, "'n'", fragment)


def test_celu_with_a_negative_alpha_matches_onnxruntime():
    """Celu was alpha * elu(x / alpha), which is ONNX's formula only for alpha > 0."""
    m = one_node("Celu", [2, 3], alpha=-1.5)
    m.graph.output[0].CopyFrom(vi("y", [2, 3]))
    x = np.linspace(-3, 3, 6, dtype=np.float32).reshape(2, 3)
    got = kiln.interpret(kiln.from_onnx(m), {"x": x})
    np.testing.assert_allclose(got[0], ort_run(m, {"x": x})[0], rtol=1e-6, atol=1e-6)


# -- tensors, declared types, names ---------------------------------------------------------------


def test_initializer_whose_data_does_not_fit_its_dims():
    m = mlp()
    m.graph.initializer[0].raw_data = m.graph.initializer[0].raw_data[:-4]
    refuses(m, KilnError, "initializer 'w' cannot be read (its dims [4, 3]")
    m = mlp()
    m.graph.initializer[0].data_type = 99
    refuses(m, UnsupportedOpError, "initializer 'w' has element type data type 99")


def test_declared_types_that_contradict_initializers_and_outputs():
    m = mlp()
    m.graph.input.append(vi("w", [4, 4]))
    refuses(m, ShapeError, "initializer 'w' is float32[4, 3], but the model declares "
                           "shape [4, 4]")
    m = mlp()
    m.graph.output[0].type.sequence_type.elem_type.tensor_type.elem_type = FLOAT
    refuses(m, ShapeError, "'relu'", "declares a sequence_type, not a tensor")


def test_names_defined_twice_and_dangling_edges():
    m = mlp()
    m.graph.input.append(vi("x", [2, 4]))
    refuses(m, KilnError, "graph input(s) 'x' defined more than once")
    m = mlp()
    m.graph.node[1].output[0] = "h"
    refuses(m, KilnError, "output 'h' is already defined")
    m = mlp()
    m.graph.node[0].input[0] = "h"  # reads the output of a later node: a cycle
    refuses(m, KilnError, "input 'h' is not a graph input, an initializer or an output of an "
                          "earlier node")


def test_opsets_and_versions():
    m = mlp()
    m.opset_import.append(helper.make_opsetid("ai.onnx", 11))
    refuses(m, KilnError, "imports the default domain 2 times (opsets 17, 11)")
    m = mlp()
    m.ir_version = 99
    refuses(m, UnsupportedOpError, "IR version 99, newer than")
    m = model([helper.make_node("Einsum", ["x", "x"], ["y"], name="e", equation="ij,ij->ij")],
              [vi("x", [2, 2])], [vi("y", [2, 2])], opset=11)
    refuses(m, UnsupportedOpError, "'e' (#0) Einsum (opset 11)", "no op 'Einsum' at opset 11")


def test_truncated_and_empty_bytes():
    data = mlp().SerializeToString()
    refuses(data[: len(data) // 2], KilnError, "not a readable ONNX model")
    refuses(b"", KilnError, "has no graph")


def test_every_converter_with_a_spec_is_registered():
    """Specs are keyed by op type; one without a converter would never be checked."""
    assert set(SPECS) <= set(CONVERTERS)


def test_a_valid_model_still_matches_onnxruntime():
    m = conv(kernel_shape=[3, 3], pads=[0, 0, 0, 0])
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 5)).astype(np.float32)
    got = kiln.interpret(kiln.from_onnx(m), {"x": x})
    np.testing.assert_allclose(got[0], ort_run(m, {"x": x})[0], rtol=1e-5, atol=1e-5)


# -- the campaign -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def campaign():
    return module_at(ROOT / "campaigns" / "onnx_models.py", "onnx_models")


def test_campaign_cases_are_deterministic(campaign):
    assert campaign.make_case(7, 123) == campaign.make_case(7, 123)
    assert campaign.make_case(7, 123)[1] != campaign.make_case(8, 123)[1]


def test_campaign_slice_has_no_bad_case(campaign):
    """Cases 34-99 of seed 0 (every base model, mutated), in this process: each refused
    with a deliberate KilnError, or compiled and run."""
    bad = []
    for case in range(34, 100):
        desc, data = campaign.make_case(0, case)
        cls, detail = campaign.run_case(data, case)
        if cls in campaign.BAD:
            bad.append(f"case {case} ({desc}): {cls}: {detail}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_hardmax_before_opset_13_keeps_its_meaning(axis):
    """Hardmax-11 works on its input flattened at axis; onnx's version converter keeps the
    node unchanged, which made it Hardmax-13 along axis only (a wrong answer)."""
    m = model([helper.make_node("Hardmax", ["x"], ["y"], axis=axis)], [vi("x", [2, 3, 4])],
              [vi("y", [2, 3, 4])], opset=12)
    x = np.random.default_rng(5).standard_normal((2, 3, 4)).astype(np.float32)
    with pytest.warns(UserWarning, match="converted to opset 13"):
        graph = kiln.from_onnx(m)
    np.testing.assert_array_equal(kiln.interpret(graph, {"x": x})[0], ort_run(m, {"x": x})[0])
