"""Module forms of activations, with PyTorch's arguments and reprs.

``inplace`` is accepted for compatibility and has no effect: traced graphs have no aliasing.
"""

from __future__ import annotations

from typing import Any

from kiln.errors import KilnError
from kiln.frontend import ops
from kiln.frontend.dsl import Tensor, as_tensor
from kiln.frontend.nn import functional as F
from kiln.frontend.nn.module import Module


def _inplace(inplace: bool, sep: str = "") -> str:
    return f"{sep}inplace=True" if inplace else ""


class ReLU(Module):
    """max(x, 0)."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x: Any) -> Tensor:
        return ops.relu(x)

    def extra_repr(self) -> str:
        return _inplace(self.inplace)


class LeakyReLU(Module):
    """x if x >= 0 else negative_slope * x."""

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False):
        super().__init__()
        self.negative_slope, self.inplace = negative_slope, inplace

    def forward(self, x: Any) -> Tensor:
        return ops.leaky_relu(x, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}{_inplace(self.inplace, ', ')}"


class ELU(Module):
    """x if x > 0 else alpha * (exp(x) - 1)."""

    def __init__(self, alpha: float = 1.0, inplace: bool = False):
        super().__init__()
        self.alpha, self.inplace = alpha, inplace

    def forward(self, x: Any) -> Tensor:
        return ops.elu(x, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}{_inplace(self.inplace, ', ')}"


class GELU(Module):
    """x * Phi(x); ``approximate='tanh'`` uses the tanh approximation."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise KilnError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: Any) -> Tensor:
        return ops.gelu(x, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class Hardtanh(Module):
    """clip(x, min_val, max_val)."""

    def __init__(self, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False):
        super().__init__()
        if max_val <= min_val:
            raise KilnError(f"Hardtanh: max_val {max_val} must exceed min_val {min_val}")
        self.min_val, self.max_val, self.inplace = min_val, max_val, inplace

    def forward(self, x: Any) -> Tensor:
        return ops.hardtanh(x, self.min_val, self.max_val)

    def extra_repr(self) -> str:
        return f"min_val={self.min_val}, max_val={self.max_val}{_inplace(self.inplace, ', ')}"


class ReLU6(Hardtanh):
    """clip(x, 0, 6)."""

    def __init__(self, inplace: bool = False):
        super().__init__(0.0, 6.0, inplace)

    def extra_repr(self) -> str:
        return _inplace(self.inplace)


class _Simple(Module):
    """An activation without arguments: ``_fn`` names the kiln.nn.functional function."""

    _fn: str

    def forward(self, x: Any) -> Tensor:
        return getattr(F, self._fn)(x)


class Sigmoid(_Simple):
    """1 / (1 + exp(-x))."""

    _fn = "sigmoid"


class Tanh(_Simple):
    """tanh(x)."""

    _fn = "tanh"


class _SimpleInplace(_Simple):
    """One that PyTorch lets compute in place (``inplace`` is kept for the repr; a traced
    graph has no in-place ops)."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def extra_repr(self) -> str:
        return _inplace(self.inplace)


class Hardswish(_SimpleInplace):
    """x * relu6(x + 3) / 6 (MobileNetV3)."""

    _fn = "hardswish"


class Hardsigmoid(_SimpleInplace):
    """relu6(x + 3) / 6."""

    _fn = "hardsigmoid"


class SiLU(_SimpleInplace):
    """x * sigmoid(x) (swish)."""

    _fn = "silu"


class Mish(_SimpleInplace):
    """x * tanh(softplus(x))."""

    _fn = "mish"


class Softplus(Module):
    """log(1 + exp(beta * x)) / beta, linear above ``threshold``."""

    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        super().__init__()
        self.beta, self.threshold = beta, threshold

    def forward(self, x: Any) -> Tensor:
        return ops.softplus(x, self.beta, self.threshold)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, threshold={self.threshold}"


def _softmax_dim(dim: int | None, x: Tensor) -> int:
    """PyTorch's legacy rule when ``dim`` is None: 0 for rank 0, 1 or 3, else 1."""
    if dim is not None:
        return dim
    return 0 if x.ndim in (0, 1, 3) else 1


class Softmax(Module):
    """exp(x) / sum(exp(x)) along ``dim``."""

    def __init__(self, dim: int | None = None):
        super().__init__()
        self.dim = dim

    def forward(self, x: Any) -> Tensor:
        x = as_tensor(x)
        return ops.softmax(x, _softmax_dim(self.dim, x))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    """log(softmax(x)) along ``dim``, computed stably."""

    def forward(self, x: Any) -> Tensor:
        x = as_tensor(x)
        return ops.log_softmax(x, _softmax_dim(self.dim, x))


__all__ = ["ReLU", "LeakyReLU", "ELU", "GELU", "Hardtanh", "ReLU6", "Sigmoid", "Tanh", "SiLU",
           "Hardswish", "Hardsigmoid", "Mish", "Softplus", "Softmax", "LogSoftmax"]
