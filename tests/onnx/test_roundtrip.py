"""Round trips: DSL -> ONNX -> kiln gives the DSL graph's results; ONNX -> kiln -> ONNX passes
the checker and onnxruntime gives the original model's results."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import kiln
from tests.onnx.test_models import CASES
from tests.onnx.util import assert_close, example, ort_run, rand, torch_export


def _ids(*shape):
    return np.random.default_rng(0).integers(0, 50, shape).astype(np.int64)


def _pad_mask():
    return np.arange(6)[None, :] >= np.array([[6], [3]])


DSL = {
    "mlp_worked_example": lambda: (example("mlp").worked_example(),
                                   {"x": np.array([[1.0, 0.5, 0.3]], np.float32)}, {}),
    "mlp_symbolic_batch": lambda: (example("mlp").MLP((6, 8, 3)), {"x": rand(4, 6)},
                                   {"x": ("N", 6)}),
    "lenet": lambda: (example("lenet").LeNet5(), {"x": rand(1, 1, 32, 32)}, {}),
    "resnet_block": lambda: (example("resnet").BasicBlock(8, 8), {"x": rand(2, 8, 6, 6)}, {}),
    "lstm": lambda: (example("lstm").LSTMClassifier(input_size=4, hidden_size=6),
                     {"x": rand(5, 2, 4)}, {"x": (5, "N", 4)}),
    "gru": lambda: (example("lstm").GRUClassifier(input_size=4, hidden_size=6),
                    {"x": rand(5, 2, 4)}, {}),
    "causal_encoder": lambda: (example("transformer").CausalEncoder(16, 2, 32),
                               {"x": rand(2, 6, 16), "padding_mask": _pad_mask()}, {}),
    "bert": lambda: (example("transformer").Bert(50, 16, 16, 2, 1, 32),
                     {"ids": _ids(2, 6), "padding_mask": _pad_mask()}, {}),
    "gpt": lambda: (example("transformer").GPT(50, 16, 16, 2, 1), {"ids": _ids(2, 6)}, {}),
}


@pytest.mark.parametrize("opset", [17])
@pytest.mark.parametrize("name", sorted(DSL))
def test_dsl_to_onnx_to_kiln(name, opset):
    model, feeds, shapes = DSL[name]()
    specs = {k: kiln.TensorSpec(shapes.get(k, v.shape), v.dtype.name) for k, v in feeds.items()}
    graph = kiln.trace(model, **specs)
    want = kiln.interpret(graph, feeds)
    proto = kiln.to_onnx(graph, opset=opset)
    onnx.checker.check_model(proto, full_check=True)
    assert_close(ort_run(proto, feeds), want, rtol=1e-4, atol=1e-5)
    back = kiln.verify(kiln.from_onnx(proto))
    assert [v.type for v in back.inputs] == [v.type for v in graph.inputs]
    assert_close(kiln.interpret(back, feeds), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("opset", [13, 21])
@pytest.mark.parametrize("name", ["gpt", "lstm"])
def test_dsl_round_trip_other_opsets(name, opset):
    test_dsl_to_onnx_to_kiln(name, opset)


@pytest.mark.parametrize("name", sorted(CASES))
def test_onnx_to_kiln_to_onnx(name):
    import torch

    torch.manual_seed(0)
    model, feeds = CASES[name]()
    data = torch_export(model, tuple(feeds.values()), list(feeds))
    again = kiln.to_onnx(kiln.from_onnx(data))
    onnx.checker.check_model(again, full_check=True)
    assert_close(ort_run(again, feeds), ort_run(data, feeds), rtol=1e-4, atol=1e-5)
