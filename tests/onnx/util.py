"""Helpers for the ONNX tests: onnxruntime as the second oracle, PyTorch's exporter, and the
model zoo's example files."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort

import kiln
from kiln.ir import Graph
from tests.examples_util import EXAMPLES, example  # noqa: F401  (re-exported)

ort.set_default_logger_severity(3)  # no warnings about unused initializers


def ort_run(model: onnx.ModelProto | bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def torch_export(model, args: tuple, input_names: list[str], dynamic_axes=None,
                 opset: int = 17) -> bytes:
    """``model`` exported by PyTorch's TorchScript-based exporter (the dynamo exporter needs
    the onnxscript package, which kiln does not depend on)."""
    import torch

    model.eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(torch.from_numpy(a) for a in args), f,
                          input_names=input_names, dynamic_axes=dynamic_axes,
                          opset_version=opset, dynamo=False)
    return f.getvalue()


def assert_close(got: list[np.ndarray], want: list[np.ndarray], rtol: float = 1e-4,
                 atol: float = 1e-5) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape and g.dtype == w.dtype, (i, g.shape, w.shape, g.dtype, w.dtype)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=f"output {i}")


def import_and_compare(data: bytes | onnx.ModelProto, feeds: dict[str, np.ndarray],
                       rtol: float = 1e-4, atol: float = 1e-5, **kw) -> Graph:
    """Import with kiln, interpret, and match onnxruntime on the same model."""
    graph = kiln.verify(kiln.from_onnx(data, **kw))
    assert_close(kiln.interpret(graph, feeds), ort_run(data, feeds), rtol, atol)
    return graph


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
