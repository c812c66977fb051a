"""PyTorch's normalization layers: BatchNorm1d/2d, LayerNorm, LocalResponseNorm.

Parameter and buffer names, shapes and dtypes are PyTorch's (batch norm keeps
``running_mean``, ``running_var`` and an int64 scalar ``num_batches_tracked``), so state dicts
load as they are.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from kiln.errors import KilnError
from kiln.frontend import ops
from kiln.frontend.dsl import Tensor, as_tensor
from kiln.frontend.nn import functional as F
from kiln.frontend.nn import init
from kiln.frontend.nn.layers import _describe, _new, _shape_error
from kiln.frontend.nn.module import Buffer, Module


class _BatchNorm(Module):
    """Batch norm over channel axis 1.

    In eval mode (kiln's default) it uses the running statistics, as an inference graph. In
    training mode, or with ``track_running_stats=False``, it normalizes with the batch's own
    mean and biased variance, as PyTorch does; a traced graph is a pure function, so it
    returns the output only and does not update the running statistics.
    """

    _ranks: tuple[int, ...] = (4,)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, dtype: str = "float32",
                 *, bias: bool = True):
        super().__init__()
        if num_features <= 0:
            raise KilnError(f"{type(self).__name__}: num_features must be positive, "
                            f"got {num_features}")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = _new((num_features,), dtype)
            self.bias = _new((num_features,), dtype) if bias else None
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype))
            self.register_buffer("running_var", np.ones(num_features, dtype))
            self.num_batches_tracked = Buffer(np.array(0, np.int64))
        else:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.data = np.zeros_like(self.running_mean.data)
            self.running_var.data = np.ones_like(self.running_var.data)
            self.num_batches_tracked.data = np.array(0, np.int64)

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def forward(self, x: Any) -> Tensor:
        x = as_tensor(x)
        if x.ndim not in self._ranks or x.shape[1] != self.num_features:
            want = " or ".join(f"{r}-D" for r in self._ranks)
            raise _shape_error(self, f"input {_describe(x)} must be {want} with "
                                     f"{self.num_features} channels on axis 1")
        if not self.training and self.track_running_stats:
            return ops.batch_norm(x, self.running_mean, self.running_var, self.weight,
                                  self.bias, eps=self.eps)
        axes = (0,) + tuple(range(2, x.ndim))
        centred = x - ops.mean(x, axes, keepdims=True)
        var = ops.mean(centred * centred, axes, keepdims=True)
        y = centred * ops.rsqrt(var + self.eps)
        if self.affine:
            shape = (-1,) + (1,) * (x.ndim - 2)
            y = y * ops.reshape(self.weight, shape)
            if self.bias is not None:
                y = y + ops.reshape(self.bias, shape)
        return y

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, bias={self.bias is not None}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch norm over [N, C] or [N, C, L]."""

    _ranks = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch norm over [N, C, H, W]."""

    _ranks = (4,)


class LayerNorm(Module):
    """Normalize over the trailing ``normalized_shape`` dims (biased variance), then scale
    by ``weight`` and shift by ``bias`` (both of shape ``normalized_shape``)."""

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True, dtype: str = "float32"):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
        self.normalized_shape = tuple(shape)
        self.eps, self.elementwise_affine = eps, elementwise_affine
        if elementwise_affine:
            self.weight = _new(self.normalized_shape, dtype)
            self.bias = _new(self.normalized_shape, dtype) if bias else None
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            init.ones_(self.weight)
        if self.bias is not None:
            init.zeros_(self.bias)

    def forward(self, x: Any) -> Tensor:
        x = as_tensor(x)
        n = len(self.normalized_shape)
        if x.ndim < n or tuple(x.shape[x.ndim - n:]) != self.normalized_shape:
            raise _shape_error(self, f"input {_describe(x)} must end in normalized_shape "
                                     f"{list(self.normalized_shape)}")
        return ops.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None}")


class LocalResponseNorm(Module):
    """AlexNet's normalization across channels: x / (k + alpha/size * sum x^2)^beta."""

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
        super().__init__()
        if not isinstance(size, int) or size < 1:
            raise KilnError(f"LocalResponseNorm: size must be a positive int, got {size!r}")
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: Any) -> Tensor:
        return ops.local_response_norm(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


__all__ = ["BatchNorm1d", "BatchNorm2d", "LayerNorm", "LocalResponseNorm"]


class GroupNorm(Module):
    """Normalize each of ``num_groups`` channel groups over its channels and positions (per
    sample), then scale and shift per channel (``weight``, ``bias`` of ``num_channels``)."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5,
                 affine: bool = True, dtype: str = "float32"):
        super().__init__()
        if num_channels % num_groups:
            raise KilnError(f"GroupNorm({num_groups}, {num_channels}): num_channels must be "
                            "divisible by num_groups")
        self.num_groups, self.num_channels, self.eps, self.affine = (
            num_groups, num_channels, eps, affine)
        if affine:
            self.weight = _new((num_channels,), dtype)
            self.bias = _new((num_channels,), dtype)
            init.ones_(self.weight)
            init.zeros_(self.bias)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: Any) -> Tensor:
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class InstanceNorm2d(GroupNorm):
    """Each channel of each sample normalized over its positions; PyTorch's defaults (no
    affine parameters, no running statistics)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = False, track_running_stats: bool = False,
                 dtype: str = "float32"):
        if track_running_stats:
            raise KilnError("InstanceNorm2d(track_running_stats=True) is not supported: "
                            "kiln normalizes with each input's own statistics")
        super().__init__(num_features, num_features, eps, affine, dtype)
