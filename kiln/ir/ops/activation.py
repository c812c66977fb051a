"""Activation functions, written as their textbook formulas (float inputs only)."""

from __future__ import annotations

import math

import numpy as np

from kiln.ir.ops.elementwise import clip, erf
from kiln.ir.ops.registry import (
    ELEMENTWISE,
    KEEP,
    elementwise_flops,
    fail,
    register,
    same_as_input,
)

_float = same_as_input(floats=True)


def _c(value, x):
    """A Python scalar as a 0-d array of x's dtype, so results keep that dtype."""
    return np.asarray(value, dtype=x.dtype)


@register("relu", kind=ELEMENTWISE, infer=_float, flops=elementwise_flops(1))
def relu(x):
    """x < 0 ? 0 : x: NaN stays NaN and -0.0 stays -0.0 (as PyTorch; np.maximum's sign of a
    zero depends on its loop)."""
    return np.where(x < 0, _c(0, x), x)


@register("leaky_relu", kind=ELEMENTWISE, infer=_float, attrs={"alpha": 0.01},
          flops=elementwise_flops(2))
def leaky_relu(x, alpha):
    return np.where(x >= 0, x, x * _c(alpha, x))


@register("elu", kind=ELEMENTWISE, infer=_float, attrs={"alpha": 1.0}, flops=elementwise_flops(3))
def elu(x, alpha):
    return np.where(x > 0, x, _c(alpha, x) * np.expm1(np.minimum(x, _c(0, x))))


@register("sigmoid", kind=ELEMENTWISE, infer=_float, flops=elementwise_flops(4))
def sigmoid(x):
    # 1 / (1 + e^-x), evaluated without overflow for large |x|
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


@register("tanh", kind=ELEMENTWISE, infer=_float, flops=elementwise_flops(4))
def tanh(x):
    return np.tanh(x)


def _gelu_infer(types, attrs):
    if attrs["approximate"] not in ("none", "tanh"):
        fail(f"gelu approximate must be 'none' or 'tanh', got {attrs['approximate']!r}")
    return _float(types, attrs)


@register("gelu", kind=ELEMENTWISE, infer=_gelu_infer, attrs={"approximate": "none"},
          flops=elementwise_flops(8))
def gelu(x, approximate):
    """Exact: x * Phi(x) with the erf; 'tanh': the approximation of Hendrycks and Gimpel."""
    if approximate == "tanh":
        inner = _c(math.sqrt(2 / math.pi), x) * (x + _c(0.044715, x) * x**3)
        return _c(0.5, x) * x * (1 + np.tanh(inner))
    return _c(0.5, x) * x * (1 + erf(x / _c(math.sqrt(2), x)))


@register("silu", kind=ELEMENTWISE, infer=_float, flops=elementwise_flops(5))
def silu(x):
    return x * sigmoid(x)


@register("softplus", kind=ELEMENTWISE,
          precision=KEEP, infer=_float, attrs={"beta": 1.0, "threshold": 20.0},
          flops=elementwise_flops(4))
def softplus(x, beta, threshold):
    """log(1 + e^(beta x)) / beta, linear above ``threshold`` (as PyTorch)."""
    bx = x * _c(beta, x)
    # log(1 + e^bx) as max(bx, 0) + log1p(e^-|bx|): e^bx would overflow float16 above bx = 11
    soft = (np.maximum(bx, _c(0, x)) + np.log1p(np.exp(-np.abs(bx)))) / _c(beta, x)
    return np.where(bx > threshold, x, soft)


@register("heaviside", kind=ELEMENTWISE, infer=_float, attrs={"value_at_zero": 1.0},
          flops=elementwise_flops(1))
def heaviside(x, value_at_zero):
    """The perceptron's step: 1 for x > 0, 0 for x < 0, ``value_at_zero`` at 0."""
    return np.heaviside(x, _c(value_at_zero, x)).astype(x.dtype)


@register("hardswish", kind=ELEMENTWISE, infer=_float, flops=elementwise_flops(4))
def hardswish(x):
    """x * relu6(x + 3) / 6 (MobileNetV3; PyTorch's formula, ONNX HardSwish)."""
    return x * clip(x + _c(3, x), 0, 6) / _c(6, x)


def _hardtanh_infer(types, attrs):
    if attrs["min_val"] > attrs["max_val"]:
        fail(f"hardtanh min_val {attrs['min_val']} > max_val {attrs['max_val']}")
    return _float(types, attrs)


@register("hardtanh", kind=ELEMENTWISE, infer=_hardtanh_infer,
          attrs={"min_val": -1.0, "max_val": 1.0},
          flops=elementwise_flops(2))
def hardtanh(x, min_val, max_val):
    """clip's rule: NaN stays NaN, a value equal to a bound stays as it is (np.clip would
    compute bfloat16 in float32)."""
    return clip(x, min_val, max_val)
