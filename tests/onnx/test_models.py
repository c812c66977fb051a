"""Real models: PyTorch twins of the model zoo exported with PyTorch's exporter, imported with
kiln.from_onnx, interpreted and compiled, against onnxruntime on the same file; an ImageNet
CNN written in kiln's DSL, exported and imported back; and the CNNs that ship with onnx."""

from __future__ import annotations

import glob
import os
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import kiln
from tests.onnx.torch_twins import GPT, Bert, EncoderLayer, LeNet, Recurrent, ResBlock
from tests.onnx.util import assert_close, example, import_and_compare, ort_run, rand, torch_export

tnn = torch.nn


def _seeded(model: tnn.Module, seed: int = 0) -> tnn.Module:
    """Batch-norm statistics that are not the identity, so folding them matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (tnn.BatchNorm1d, tnn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
    return model.eval()


def _ids(shape, vocab=50, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, shape).astype(np.int64)


CASES = {
    "mlp": lambda: (tnn.Sequential(tnn.Linear(8, 16), tnn.ReLU(), tnn.Linear(16, 4),
                                   tnn.Softmax(-1)), {"x": rand(3, 8)}),
    "lenet": lambda: (LeNet(), {"x": rand(2, 1, 32, 32)}),
    "resnet_block": lambda: (_seeded(ResBlock()), {"x": rand(1, 8, 8, 8)}),
    "lstm": lambda: (Recurrent("LSTM"), {"x": rand(5, 2, 6)}),
    "gru": lambda: (Recurrent("GRU"), {"x": rand(5, 2, 6)}),
    "encoder_layer": lambda: (EncoderLayer(), {"x": rand(2, 5, 16)}),
    "encoder_layer_pre_norm": lambda: (EncoderLayer(norm_first=True), {"x": rand(2, 5, 16)}),
    "bert": lambda: (Bert(), {"ids": _ids((2, 7)),
                              "padding_mask": np.arange(7)[None, :] >= np.array([[7], [4]])}),
    "gpt": lambda: (GPT(), {"ids": _ids((2, 7))}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_torch_export_imports(name):
    torch.manual_seed(0)
    model, feeds = CASES[name]()
    data = torch_export(model, tuple(feeds.values()), list(feeds))
    graph = import_and_compare(data, feeds)
    assert all(n.origin.startswith("onnx:") for n in graph.nodes)


@pytest.mark.parametrize("name", sorted(CASES))
def test_torch_export_compiles(name):
    """The same files compiled with kiln.compile (O2) and run by kiln's runtime match
    onnxruntime too."""
    torch.manual_seed(0)
    model, feeds = CASES[name]()
    data = torch_export(model, tuple(feeds.values()), list(feeds))
    compiled = kiln.compile(kiln.from_onnx(data), opt_level=2)
    assert_close(compiled.run(feeds), ort_run(data, feeds))


def test_symbolic_batch_survives():
    """A dynamic batch stays a symbolic dim; the graph runs at two batch sizes."""
    model = tnn.Sequential(tnn.Conv2d(3, 4, 3, padding=1), tnn.ReLU(), tnn.Flatten(),
                           tnn.Linear(4 * 6 * 6, 5))
    data = torch_export(model, (rand(2, 3, 6, 6),), ["x"], {"x": {0: "batch"}})
    graph = kiln.from_onnx(data)
    assert graph.inputs[0].shape == ("batch", 3, 6, 6)
    assert graph.outputs[0].shape == ("batch", 5)
    for n in (1, 3):
        feeds = {"x": rand(n, 3, 6, 6, seed=n)}
        assert_close(kiln.interpret(graph, feeds), ort_run(data, feeds))


def test_symbolic_batch_lstm_zero_state():
    """PyTorch makes an LSTM's zero state with ConstantOfShape of the symbolic batch."""
    data = torch_export(Recurrent("LSTM"), (rand(4, 2, 6),), ["x"], {"x": {1: "batch"}})
    graph = import_and_compare(data, {"x": rand(4, 3, 6)})
    assert graph.inputs[0].shape == (4, "batch", 6)


def test_symbolic_attention_runs_at_any_batch():
    """Multi-head attention reshapes to batch * heads: a size expression (``batch*4``), so
    the model imports with its symbolic batch and runs at any batch; fixing it works too."""
    data = torch_export(EncoderLayer(), (rand(2, 5, 16),), ["x"], {"x": {0: "batch"}})
    graph = kiln.from_onnx(data)
    assert graph.inputs[0].shape == ("batch", 5, 16)
    assert any(isinstance(d, kiln.ir.Sym) and not d.is_name
               for v in graph.all_values() for d in v.type.shape)
    for batch in (1, 3):
        feeds = {"x": rand(batch, 5, 16)}
        assert_close(kiln.interpret(graph, feeds), ort_run(data, feeds))
    fixed = import_and_compare(data, {"x": rand(3, 5, 16)}, input_shapes={"batch": 3})
    assert fixed.inputs[0].shape == (3, 5, 16)


# -- an ImageNet CNN written in kiln's DSL ------------------------------------------------------


@pytest.mark.parametrize("name,size", [("resnet18", 64)])
def test_imagenet_cnn_round_trip(name, size):
    """The DSL model exported to ONNX matches onnxruntime there, and imports back to the
    same results."""
    module = example("resnet" if name.startswith("resnet") else name)
    model = getattr(module, name if hasattr(module, name) else "AlexNet")()
    graph = kiln.trace(model, x=kiln.TensorSpec((1, 3, size, size)))
    feeds = {"x": rand(1, 3, size, size)}
    want = kiln.interpret(graph, feeds)
    proto = kiln.to_onnx(graph)
    assert_close(ort_run(proto, feeds), want, rtol=1e-3, atol=1e-4)
    back = kiln.verify(kiln.from_onnx(proto))
    assert {v.name for v in back.params} <= {v.name for v in graph.params}
    assert_close(kiln.interpret(back, feeds), want, rtol=1e-4, atol=1e-5)


LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


RUN_LIGHT = {"light_squeezenet", "light_resnet50", "light_shufflenet", "light_zfnet512"}


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(LIGHT, "*.onnx"))),
                         ids=os.path.basename)
def test_onnx_light_models(path):
    """onnx's 'light' CNNs (opset 9, weights made by ConstantOfShape) convert up to opset 13
    with a warning; the cheaper ones give the outputs stored beside them."""
    with pytest.warns(UserWarning, match="converted to opset 13"):
        graph = kiln.verify(kiln.from_onnx(path))
    if os.path.basename(path)[:-5] not in RUN_LIGHT:
        return  # the others take seconds each in the numpy interpreter
    v = graph.inputs[0]
    n = int(np.prod(v.shape))
    x = (np.arange(n).reshape(v.shape) / n).astype(np.float32)  # onnx's runner's input
    want = numpy_helper.to_array(onnx.load_tensor(path.replace(".onnx", "_output_0.pb")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = kiln.interpret(graph, {v.name: x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-6)


def with_random_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """A light model with its ConstantOfShape weights replaced by seeded random initializers
    (1-D ones, biases and batch-norm statistics, in [0.5, 1.5]; the others He-scaled normal),
    and its final Softmax cut off: with constant weights every output is the same, and with
    random ones the softmax saturates, so neither would show a wrong kernel."""
    rng = np.random.default_rng(seed)
    g = model.graph
    shapes = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    nodes = []
    for node in g.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in shapes:
            nodes.append(node)
            continue
        shape = tuple(int(d) for d in shapes[node.input[0]])
        a = rng.uniform(0.5, 1.5, shape) if len(shape) <= 1 else \
            rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        g.initializer.append(numpy_helper.from_array(a.astype(np.float32), node.output[0]))
        # IR version 3: an initializer is also a graph input
        g.input.append(onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT,
                                                          shape))
    if nodes[-1].op_type == "Softmax" and nodes[-1].output[0] == g.output[0].name:
        g.output[0].name = nodes.pop().input[0]
    del g.node[:]
    g.node.extend(nodes)
    return model


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(LIGHT, "*.onnx"))),
                         ids=os.path.basename)
def test_onnx_light_models_compiled_with_random_weights(path):
    """Every light CNN (AlexNet, DenseNet-121, Inception v1/v2, ResNet-50, ShuffleNet,
    SqueezeNet, VGG-19, ZFNet-512) with random weights: imported, compiled at O2 and run by
    kiln's runtime, its logits match onnxruntime's on the same file."""
    data = with_random_weights(onnx.load(path)).SerializeToString()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the opset 9 -> 13 conversion warning
        graph = kiln.from_onnx(data)
    v = graph.inputs[0]
    x = np.random.default_rng(1).standard_normal(v.shape).astype(np.float32)
    (want,) = ort_run(data, {v.name: x})
    (got,) = kiln.compile(graph, opt_level=2).run({v.name: x})
    assert want.std() > 1e-3 * np.abs(want).max()  # the logits differ: a real check
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())
