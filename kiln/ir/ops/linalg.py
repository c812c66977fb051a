"""Matrix multiplication with numpy's batching and broadcasting rules."""

from __future__ import annotations

import numpy as np

from kiln.ir.ops.registry import ANCHOR, LOW, broadcast_shapes, fail, numel, register, same_dtype
from kiln.ir.types import TensorType


def _matmul(types, attrs):
    a, b = types
    dtype = same_dtype(types)
    if dtype == "bool":
        fail("matmul of bool tensors; cast them first")
    if a.rank == 0 or b.rank == 0:
        fail("matmul needs inputs of rank >= 1")
    sa = a.shape if a.rank > 1 else (1,) + a.shape
    sb = b.shape if b.rank > 1 else b.shape + (1,)
    if sa[-1] != sb[-2]:
        fail(f"contraction dimensions differ: {sa[-1]} (last of the first input) vs "
             f"{sb[-2]} (second-to-last of the second)")
    batch = broadcast_shapes(sa[:-2], sb[:-2])
    shape = batch + ((sa[-2],) if a.rank > 1 else ()) + ((sb[-1],) if b.rank > 1 else ())
    return TensorType(shape, dtype)


def _matmul_flops(in_types, out_types, attrs):
    k = in_types[0].shape[-1]
    return 2 * numel(out_types[0].shape) * (k if isinstance(k, int) else 1)


@register("matmul", kind=ANCHOR,
          precision=LOW, epilogue=True, infer=_matmul, arity=2, flops=_matmul_flops)
def matmul(a, b):
    return np.matmul(a, b)
