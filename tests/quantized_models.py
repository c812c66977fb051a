"""Small quantized ONNX models for the int8 tests, made as a user makes them: a PyTorch
model exported to ONNX, then ``onnxruntime.quantization.quantize_static`` calibrated on a
few random inputs (QDQ or QOperator form, int8 or uint8 activations, per tensor or per
channel weights)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import torch

SHAPE = (1, 3, 12, 12)


class QuantNet(torch.nn.Module):
    """A stem conv (padded), a depthwise conv, a strided conv with a residual add, a
    flatten and two matmuls (a Linear: ONNX Gemm, and a plain MatMul)."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.depthwise = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.down = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(32 * 6 * 6, 40)
        self.w = torch.nn.Parameter(torch.randn(40, 10) / 6)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        y = torch.relu(self.depthwise(y)) + y
        y = torch.relu(self.down(y))
        return torch.relu(self.fc(y.flatten(1))) @ self.w


def inputs(seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)}


def float_model() -> onnx.ModelProto:
    torch.manual_seed(0)
    buf = io.BytesIO()
    with warnings.catch_warnings():  # (the TorchScript exporter's deprecation)
        warnings.simplefilter("ignore")
        torch.onnx.export(QuantNet().eval(), (torch.from_numpy(inputs(0)["x"]),), buf,
                          input_names=["x"], output_names=["y"], dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def quantized(tmp_path, *, fmt: str = "QDQ", activations: str = "QInt8",
              weights: str = "QInt8", per_channel: bool = False) -> onnx.ModelProto:
    """``float_model`` quantized by onnxruntime's static quantization."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([inputs(seed) for seed in range(1, 9)])

        def get_next(self):
            return next(self.feeds, None)

    src, dst = tmp_path / "float.onnx", tmp_path / "quantized.onnx"
    onnx.save(float_model(), src)
    quantize_static(str(src), str(dst), Calibration(), quant_format=getattr(QuantFormat, fmt),
                    activation_type=getattr(QuantType, activations),
                    weight_type=getattr(QuantType, weights), per_channel=per_channel)
    return onnx.load(dst)
