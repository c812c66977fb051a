"""Compile-time re-layout of constant operands (weights), computed with numpy.

A rule ``PACKERS[(op, input position)](node, array, attrs) -> PackPlan | None`` returns the
re-laid-out array, a name suffix (the packed constant is stored as ``"<name>.<suffix>"``) and
private attributes that tell the op's TE builder which layout it reads. The kernel then
takes the packed constant instead of the original.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from kiln.codegen.ops.common import tiling
from kiln.codegen.ops.gemm_native import BF16, U8S8, native
from kiln.ir.graph import Node


@dataclass(frozen=True)
class PackPlan:
    suffix: str
    array: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)


PACKERS: dict[tuple[str, int], Callable[[Node, np.ndarray, dict], PackPlan | None]] = {}


def packer(op: str, position: int):
    def wrap(fn):
        PACKERS[(op, position)] = fn
        return fn

    return wrap


def plan_packing(node: Node, position: int, array: np.ndarray, attrs: dict) -> PackPlan | None:
    """The packing of input ``position`` of ``node`` (a constant), or None to read it as is."""
    fn = PACKERS.get((node.op, position))
    return fn(node, array, attrs) if fn is not None else None


def pack_gemm_b(b: np.ndarray, nb: int) -> np.ndarray:
    """[..., K, N] -> [..., ceil(N/nb), K, nb], zero-padded: each tile's K rows contiguous."""
    *batch, k, n = b.shape
    n_pad = -(-n // nb) * nb
    padded = np.zeros((*batch, k, n_pad), dtype=b.dtype)
    padded[..., :n] = b
    tiles = padded.reshape(*batch, k, n_pad // nb, nb)
    return np.ascontiguousarray(np.moveaxis(tiles, -2, -3))


@packer("matmul", 1)
def _matmul_b(node: Node, array: np.ndarray, attrs: dict) -> PackPlan | None:
    if native(attrs, node.inputs[0].dtype, array.dtype.name) is BF16:
        if array.ndim != 2:
            return None  # a batch of weights: packed per call
        return PackPlan("bf16pairs", BF16.pack_b(array), {"_bf16_b": True})
    if array.ndim < 2 or array.shape[-1] == 1 or not tiling(attrs).blocked:
        return None  # matrix-vector (a reduction reads the vector as is), or plain computes
    nb = tiling(attrs).gemm_cols(array.shape[-1])
    return PackPlan(f"packed{nb}", pack_gemm_b(array, nb), {"_packed_b": nb})


@packer("matmul_integer", 1)
def _matmul_integer_b(node: Node, array: np.ndarray, attrs: dict) -> PackPlan | None:
    if array.ndim != 2 or native(attrs, node.inputs[0].dtype, array.dtype.name) is not U8S8:
        return None  # a batch of weights, or no native kernel: read as it lies
    return PackPlan("u8s8quads", U8S8.pack_b(array), {"_native_b": True})


__all__ = ["PackPlan", "PACKERS", "packer", "plan_packing", "pack_gemm_b"]
