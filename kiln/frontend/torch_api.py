"""PyTorch's module-level functions and dtypes with PyTorch's signatures, so that model code
written against ``torch`` runs on kiln with ``import kiln as torch`` (``kiln.flatten(x, 1)``,
``kiln.cat(xs, dim=1)``, ``kiln.float32``). Inside a trace, like every kiln op; the
tensor-creating ones (``zeros``, ``arange``) make graph constants there too.
"""

from __future__ import annotations

import builtins
from typing import Any, Sequence

from kiln.frontend import ops
from kiln.frontend.dsl import Tensor

# dtypes as model code names them
float32 = float = "float32"
float16 = half = "float16"
bfloat16 = "bfloat16"
float64 = double = "float64"
int64 = long = "int64"
int32 = int = "int32"
int8, uint8 = "int8", "uint8"
bool = "bool"

# the same arguments as PyTorch's
exp, log, sin, cos, sqrt, rsqrt = ops.exp, ops.log, ops.sin, ops.cos, ops.sqrt, ops.rsqrt
tanh, sigmoid, relu, abs, matmul, where = ops.tanh, ops.sigmoid, ops.relu, ops.abs, \
    ops.matmul, ops.where
cat, stack, chunk, split = ops.cat, ops.stack, ops.chunk, ops.split
squeeze, unsqueeze = ops.squeeze, ops.unsqueeze


def flatten(input: Any, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    """``torch.flatten``: from axis 0 by default (``nn.Flatten`` starts at 1)."""
    return ops.flatten(input, start_dim, end_dim)


def transpose(input: Any, dim0: int, dim1: int) -> Tensor:
    """``torch.transpose``: swap two axes."""
    return ops.swapaxes(input, dim0, dim1)


def reshape(input: Any, shape: Sequence) -> Tensor:
    return ops.reshape(input, shape)


def softmax(input: Any, dim: int) -> Tensor:
    return ops.softmax(input, dim)


def clamp(input: Any, min: Any = None, max: Any = None) -> Tensor:
    return ops.clip(input, min, max)


def _size(size: tuple) -> tuple:
    return tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) else size


def zeros(*size: Any, dtype: str = "float32") -> Tensor:
    return ops.zeros(_size(size), dtype)


def ones(*size: Any, dtype: str = "float32") -> Tensor:
    return ops.ones(_size(size), dtype)


def arange(start: Any, end: Any = None, step: Any = 1, dtype: str | None = None) -> Tensor:
    """``torch.arange``: int64 for whole-number bounds, else float32."""
    if end is None:
        start, end = 0, start
    if dtype is None:
        whole = all(isinstance(v, builtins.int) for v in (start, end, step))
        dtype = "int64" if whole else "float32"
    return ops.arange(start, end, step, dtype)


__all__ = [
    "abs", "arange", "bfloat16", "bool", "cat", "chunk", "clamp", "cos", "double", "exp",
    "flatten", "float", "float16", "float32", "float64", "half", "int", "int32", "int64", "int8",
    "log", "long", "matmul", "ones", "relu", "reshape", "rsqrt", "sigmoid", "sin", "softmax",
    "split", "sqrt", "squeeze", "stack", "tanh", "transpose", "uint8", "unsqueeze", "where",
    "zeros",
]
