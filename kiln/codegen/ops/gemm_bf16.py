"""The bfloat16 GEMM stage: ``C[batch, M, Np] = A[batch, M, K] @ B[batch, K, N]`` on
bfloat16 operands, summed in float32 and rounded to bfloat16 once, computed by kiln's native
kernel (``codegen/native/gemm_bf16.c``, AMX or AVX512-BF16) through an extern stage (what
the interpreter does for a bf16 matmul: its sums rounded). The caller computes its epilogue
from C (TVM stages, scheduled as usual).

Layouts the native kernel reads: A rows of K elements, K a multiple of ``K_BLOCK`` (an AMX
tile row); B in panels of 16 columns of bf16 pairs, ``[..., Np/16, Kp/2, 16, 2]``
(``pack_b_bf16``: at compile time for a weight, by a ``pack`` stage for a computed B). A is
passed in place when it is a kernel input of a multiple of ``K_BLOCK`` columns, else copied,
zero-padded, by a ``pack`` stage.
"""

from __future__ import annotations

from math import prod

import numpy as np
from tvm import te, tirx

from kiln.codegen.ops.common import const, tiling

K_BLOCK = 32  # K elements per AMX tile row (64 bytes of bf16)
PANEL = 16  # columns per B panel (one zmm of float32 accumulators)
NATIVE = "kiln_gemm_bf16"


def native(attrs, *dtypes: str) -> bool:
    """Does an op of operands of ``dtypes`` (with the target strategy's tiling in ``attrs``)
    multiply on the native GEMM? bfloat16 operands on a target with AVX512-BF16."""
    return tiling(attrs).bf16_dot and all(d == "bfloat16" for d in dtypes)


def padded_k(k: int) -> int:
    return -(-k // K_BLOCK) * K_BLOCK


def pack_b_bf16(b: np.ndarray) -> np.ndarray:
    """[..., K, N] -> [..., Np/16, Kp/2, 16, 2], zero-padded to Kp (a multiple of 32) rows and
    Np (a multiple of 16) columns."""
    *batch, k, n = b.shape
    kp, n_pad = padded_k(k), -(-n // PANEL) * PANEL
    padded = np.zeros((*batch, kp, n_pad), dtype=b.dtype)
    padded[..., :k, :n] = b
    t = padded.reshape(*batch, kp // 2, 2, n_pad // PANEL, PANEL)
    return np.ascontiguousarray(np.moveaxis(t, (-4, -3, -2, -1), (-3, -1, -4, -2)))


def pack_b_stage(read, b_batch: tuple, k: int, n: int) -> te.Tensor:
    """``pack_b_bf16`` of a computed B, per call: ``read(batch index, k, j)``."""
    kp, n_pad = padded_k(k), -(-n // PANEL) * PANEL

    def fn(*idx):
        *bb, jo, kk, jl, pair = idx
        kr, j = kk * 2 + pair, jo * PANEL + jl
        inside = tirx.all(kr < k, j < n)
        return tirx.if_then_else(inside, read(bb, tirx.min(kr, k - 1), tirx.min(j, n - 1)),
                                 const(0, "bfloat16"))

    return te.compute((*b_batch, n_pad // PANEL, kp // 2, PANEL, 2), fn, name="pack_b",
                      attrs={"kiln.sched": "pack"})


def a_rows(a: te.Tensor, read, batch: tuple, m: int, k: int) -> te.Tensor:
    """A as the kernel reads it: ``a`` itself when it is a kernel input with a multiple of
    ``K_BLOCK`` columns and the batch axes of the product (or none; or, for an unbatched
    product, any shape of ``m`` rows of ``k``), else a zero-padded ``[batch..., M, Kp]``
    copy by a ``pack`` stage (``read(batch index, i, k)``)."""
    shape = tuple(int(d) for d in a.shape)
    rows = shape in ((*batch, m, k), (m, k)) or (
        not batch and shape[-1] == k and prod(shape[:-1]) == m)
    if isinstance(a.op, te.PlaceholderOp) and k % K_BLOCK == 0 and rows:
        return a
    kp = padded_k(k)

    def fn(*idx):
        *bidx, i, kk = idx
        return tirx.if_then_else(kk < k, read(bidx, i, tirx.min(kk, k - 1)),
                                 const(0, "bfloat16"))

    return te.compute((*batch, m, kp), fn, name="pad_a", attrs={"kiln.sched": "pack"})


def gemm_bf16(a: te.Tensor, bp: te.Tensor, batch: tuple, m: int, k: int) -> te.Tensor:
    """The extern stage ``C[prod(batch), M, Np]`` (bfloat16) of ``a`` (from ``a_rows``) and
    ``bp`` (packed B, with the batch axes of the product or none)."""
    kp = padded_k(k)
    n_pad = int(bp.shape[-4]) * PANEL
    nbatch = prod(batch)
    a_stride = m * kp if len(a.shape) > 2 else 0
    b_stride = (n_pad // PANEL) * kp * PANEL if len(bp.shape) > 4 else 0

    def call(ins, outs):
        a_buf, b_buf = ins
        i64 = lambda v: tirx.const(v, "int64")  # noqa: E731
        i32 = lambda v: tirx.const(v, "int32")  # noqa: E731
        return tirx.Evaluate(tirx.call_extern(
            "int32", NATIVE, a_buf.data, i64(kp), i64(a_stride),
            b_buf.data, i64(b_stride), outs[0].data, i64(n_pad),
            i64(m * n_pad), i32(nbatch), i32(m), i32(kp)))

    return te.extern((nbatch, m, n_pad), [a, bp], call, name=NATIVE, dtype="bfloat16")
