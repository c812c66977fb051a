"""Matrix multiplication with numpy's batching and broadcasting rules: ``matmul`` in the
operands' type, ``matmul_integer`` of 8-bit (or int32) integers summed in int32 (what the
int8 pass, ``kiln/passes/int8.py``, makes of a quantized model's matmuls)."""

from __future__ import annotations

import numpy as np

from kiln.ir.ops.registry import ANCHOR, LOW, broadcast_shapes, fail, numel, register, same_dtype
from kiln.ir.types import TensorType


def _matmul(types, attrs):
    dtype = same_dtype(types)
    if dtype == "bool":
        fail("matmul of bool tensors; cast them first")
    return TensorType(_matmul_shape(*types), dtype)


def _matmul_shape(a: TensorType, b: TensorType) -> tuple:
    if a.rank == 0 or b.rank == 0:
        fail("matmul needs inputs of rank >= 1")
    sa = a.shape if a.rank > 1 else (1,) + a.shape
    sb = b.shape if b.rank > 1 else b.shape + (1,)
    if sa[-1] != sb[-2]:
        fail(f"contraction dimensions differ: {sa[-1]} (last of the first input) vs "
             f"{sb[-2]} (second-to-last of the second)")
    batch = broadcast_shapes(sa[:-2], sb[:-2])
    return batch + ((sa[-2],) if a.rank > 1 else ()) + ((sb[-1],) if b.rank > 1 else ())


def _matmul_flops(in_types, out_types, attrs):
    k = in_types[0].shape[-1]
    return 2 * numel(out_types[0].shape) * (k if isinstance(k, int) else 1)


@register("matmul", kind=ANCHOR,
          precision=LOW, epilogue=True, infer=_matmul, arity=2, flops=_matmul_flops)
def matmul(a, b):
    return np.matmul(a, b)


INTEGER_OPERANDS = ("int8", "uint8", "int32")


def _matmul_integer(types, attrs):
    for t, which in zip(types, ("first", "second")):
        if t.dtype not in INTEGER_OPERANDS:
            fail(f"the {which} input must be int8, uint8 or int32, got {t.dtype}")
    return TensorType(_matmul_shape(*types), "int32")


def integer_sum_product(a: np.ndarray, b: np.ndarray, product) -> np.ndarray:
    """``product(a, b)`` of integer arrays, exact, wrapped to int32: in float64 (BLAS) when
    both are 8-bit (every sum of up to 2^38 products of 8-bit values is exact there), else
    in int64."""
    wide = np.float64 if a.itemsize == b.itemsize == 1 else np.int64
    return product(a.astype(wide), b.astype(wide)).astype(np.int64).astype(np.int32)


@register("matmul_integer", kind=ANCHOR, epilogue=True, infer=_matmul_integer, arity=2,
          flops=_matmul_flops)
def matmul_integer(a, b):
    """Sum of products of integers in int32 (ONNX's MatMulInteger without zero points)."""
    return integer_sum_product(a, b, np.matmul)
