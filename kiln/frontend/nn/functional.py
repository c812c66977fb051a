"""``kiln.nn.functional``: ``torch.nn.functional``'s names and arguments for the ops kiln has,
so that model code written against ``F`` ports by changing its import.

Each function adds nodes to the graph being traced (``kiln.ops`` underneath). The first
argument is PyTorch's ``input``; axes are ``dim``.
"""

from __future__ import annotations

from typing import Any, Sequence

from kiln.errors import TraceError
from kiln.frontend import ops
from kiln.frontend.dsl import Tensor, as_tensor

# the ones whose arguments already are PyTorch's
linear, conv1d, conv2d, conv_transpose2d = ops.linear, ops.conv1d, ops.conv2d, \
    ops.conv_transpose2d
max_pool2d, avg_pool2d, adaptive_avg_pool2d = ops.max_pool2d, ops.avg_pool2d, \
    ops.adaptive_avg_pool2d
relu, sigmoid, tanh, silu, hardswish = ops.relu, ops.sigmoid, ops.tanh, ops.silu, ops.hardswish
leaky_relu, elu, gelu, softplus, hardtanh = ops.leaky_relu, ops.elu, ops.gelu, ops.softplus, \
    ops.hardtanh
layer_norm, local_response_norm, pad, embedding = ops.layer_norm, ops.local_response_norm, \
    ops.pad, ops.embedding


def softmax(input: Any, dim: int = -1) -> Tensor:
    return ops.softmax(input, dim)


def log_softmax(input: Any, dim: int = -1) -> Tensor:
    return ops.log_softmax(input, dim)


def relu6(input: Any) -> Tensor:
    return ops.hardtanh(input, 0.0, 6.0)


def hardsigmoid(input: Any) -> Tensor:
    """``relu6(x + 3) / 6``."""
    return ops.clip(ops.add(ops.div(input, 6.0), 0.5), 0.0, 1.0)


def mish(input: Any) -> Tensor:
    """``x * tanh(softplus(x))``."""
    return ops.mul(input, ops.tanh(ops.softplus(input)))


def dropout(input: Any, p: float = 0.5, training: bool = True) -> Tensor:
    """PyTorch's default is ``training=True``; a traced inference graph passes False (or
    uses ``nn.Dropout`` in eval mode)."""
    return ops.dropout(input, p, training)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5) -> Tensor:
    return ops.batch_norm(input, running_mean, running_var, weight, bias, training,
                          momentum, eps)


def group_norm(input: Any, num_groups: int, weight: Any = None, bias: Any = None,
               eps: float = 1e-5) -> Tensor:
    """Normalize each group of ``num_groups`` channel groups over its channels and spatial
    positions (per sample), then scale and shift per channel."""
    x = as_tensor(input)
    n, c, *spatial = x.shape
    if not isinstance(c, int) or c % num_groups:
        raise TraceError(f"group_norm: {num_groups} groups do not divide the channels of "
                         f"{x.type}")
    grouped = ops.reshape(x, (n, num_groups, c // num_groups, *spatial))
    y = ops.reshape(ops.layer_norm(grouped, (c // num_groups, *spatial), eps=eps), x.shape)
    per_channel = (c,) + (1,) * len(spatial)
    if weight is not None:
        y = ops.mul(y, ops.reshape(weight, per_channel))
    if bias is not None:
        y = ops.add(y, ops.reshape(bias, per_channel))
    return y


def instance_norm(input: Any, weight: Any = None, bias: Any = None,
                  eps: float = 1e-5) -> Tensor:
    """Each channel of each sample normalized over its spatial positions (no running
    statistics: PyTorch's default for InstanceNorm)."""
    return group_norm(input, as_tensor(input).shape[1], weight, bias, eps)


def pixel_shuffle(input: Any, upscale_factor: int) -> Tensor:
    """``[N, C*r*r, H, W] -> [N, C, H*r, W*r]``."""
    x, r = as_tensor(input), upscale_factor
    n, c, h, w = x.shape
    y = ops.reshape(x, (n, c // (r * r), r, r, h, w))
    y = ops.transpose(y, (0, 1, 4, 2, 5, 3))
    return ops.reshape(y, (n, c // (r * r), h * r, w * r))


def interpolate(input: Any, size: Sequence[int] | None = None,
                scale_factor: float | Sequence[float] | None = None,
                mode: str = "nearest") -> Tensor:
    """Nearest-neighbour upsampling of [N, C, H, W] by whole factors (``scale_factor``, or a
    ``size`` that is a multiple of the input's)."""
    x = as_tensor(input)
    if mode != "nearest":
        raise TraceError(f"interpolate mode {mode!r}: kiln upsamples with mode='nearest' "
                         "by whole factors only")
    n, c, h, w = x.shape
    if size is not None:
        size = (size, size) if isinstance(size, int) else tuple(size)
        factors = (size[0] / h, size[1] / w)
    elif scale_factor is not None:
        factors = (scale_factor, scale_factor) if isinstance(scale_factor, (int, float)) \
            else tuple(scale_factor)
    else:
        raise TraceError("interpolate needs size or scale_factor")
    if any(float(f) != int(f) or f < 1 for f in factors):
        raise TraceError(f"interpolate by {factors}: kiln upsamples by whole factors only")
    sh, sw = (int(f) for f in factors)
    y = ops.expand(ops.reshape(x, (n, c, h, 1, w, 1)), (n, c, h, sh, w, sw))
    return ops.reshape(y, (n, c, h * sh, w * sw))


def normalize(input: Any, p: float = 2.0, dim: int = 1, eps: float = 1e-12) -> Tensor:
    """``x / max(||x||_p, eps)`` along ``dim`` (p = 2)."""
    if p != 2:
        raise TraceError(f"normalize with p={p}: kiln has the 2-norm")
    norm = ops.sqrt(ops.sum(ops.mul(input, input), dim, True))
    return ops.div(input, ops.maximum(norm, eps))


def one_hot(tensor: Any, num_classes: int) -> Tensor:
    """Int64 one-hot vectors, as PyTorch's."""
    return ops.one_hot(tensor, num_classes, "int64")


__all__ = [
    "adaptive_avg_pool2d", "avg_pool2d", "batch_norm", "conv1d", "conv2d", "conv_transpose2d",
    "dropout", "elu", "embedding", "gelu", "group_norm", "hardsigmoid", "hardswish", "hardtanh",
    "instance_norm", "interpolate", "layer_norm", "leaky_relu", "linear", "local_response_norm",
    "log_softmax", "max_pool2d", "mish", "normalize", "one_hot", "pad", "pixel_shuffle", "relu",
    "relu6", "sigmoid", "silu", "softmax", "softplus", "tanh"
]
