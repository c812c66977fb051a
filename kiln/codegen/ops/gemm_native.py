"""The native GEMM stages: ``C[batch, M, Np] = A[batch, M, K] @ B[batch, K, N]`` computed by
one of kiln's C kernels (``codegen/native``) through an extern stage, for the instructions
TVM 0.27 does not emit:

- ``BF16``: bfloat16 operands, float32 sums rounded to bfloat16 once (``gemm_bf16.c``: AMX or
  AVX512-BF16; what the interpreter does for a bf16 matmul: its sums rounded);
- ``U8S8``: uint8 A times int8 B, exact int32 sums (``gemm_u8s8.c``: AMX-INT8 or
  AVX512-VNNI; ``matmul_integer`` and ``conv2d_integer`` of the int8 pass).

The caller computes its epilogue from C (TVM stages, scheduled as usual).

Layouts the kernels read: A rows of K elements, K a multiple of ``k_block`` (64 bytes: an
AMX tile row); B in panels of 16 columns of ``group`` consecutive K elements (one 32-bit
lane of a dot-product instruction), ``[..., Np/16, Kp/group, 16, group]`` (``pack_b``: at
compile time for a weight, by a ``pack`` stage for a computed B). A is passed in place when
it is a kernel input of a multiple of ``k_block`` columns, else copied, padded, by a
``pack`` stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np
from tvm import te, tirx

from kiln.codegen.ops.common import const, tiling
from kiln.errors import UnsupportedOpError

PANEL = 16  # columns per B panel (one zmm of 32-bit accumulators)


@dataclass(frozen=True)
class NativeGemm:
    """One native kernel: its C function, operand and result types, and B's packing."""

    name: str  # the C function (``codegen/native.NATIVES``)
    a_dtype: str
    b_dtype: str
    c_dtype: str
    group: int  # K elements per 32-bit lane of B
    k_block: int  # K elements per AMX tile row (64 bytes); the kernels' K step

    def padded_k(self, k: int) -> int:
        return -(-k // self.k_block) * self.k_block

    def pack_b(self, b: np.ndarray) -> np.ndarray:
        """[..., K, N] -> [..., Np/16, Kp/group, 16, group], zero-padded to Kp (a multiple
        of ``k_block``) rows and Np (a multiple of 16) columns."""
        *batch, k, n = b.shape
        kp, n_pad = self.padded_k(k), -(-n // PANEL) * PANEL
        padded = np.zeros((*batch, kp, n_pad), dtype=b.dtype)
        padded[..., :k, :n] = b
        t = padded.reshape(*batch, kp // self.group, self.group, n_pad // PANEL, PANEL)
        return np.ascontiguousarray(np.moveaxis(t, (-4, -3, -2, -1), (-3, -1, -4, -2)))

    def pack_b_stage(self, read, b_batch: tuple, k: int, n: int) -> te.Tensor:
        """``pack_b`` of a computed B, per call: ``read(batch index, k, j)``."""
        kp, n_pad, g = self.padded_k(k), -(-n // PANEL) * PANEL, self.group

        def fn(*idx):
            *bb, jo, kk, jl, lane = idx
            kr, j = kk * g + lane, jo * PANEL + jl
            inside = tirx.all(kr < k, j < n)
            return tirx.if_then_else(inside, read(bb, tirx.min(kr, k - 1), tirx.min(j, n - 1)),
                                     const(0, self.b_dtype))

        return te.compute((*b_batch, n_pad // PANEL, kp // g, PANEL, g), fn, name="pack_b",
                          attrs={"kiln.sched": "pack"})

    def a_rows(self, a: te.Tensor, read, batch: tuple, m: int, k: int) -> te.Tensor:
        """A as the kernel reads it: ``a`` itself when it is a kernel input with a multiple
        of ``k_block`` columns and the batch axes of the product (or none; or, for an
        unbatched product, any shape of ``m`` rows of ``k``), else a zero-padded
        ``[batch..., M, Kp]`` copy by a ``pack`` stage (``read(batch index, i, k)``)."""
        shape = tuple(int(d) for d in a.shape)
        rows = shape in ((*batch, m, k), (m, k)) or (
            not batch and shape[-1] == k and prod(shape[:-1]) == m)
        if isinstance(a.op, te.PlaceholderOp) and k % self.k_block == 0 and rows:
            return a

        def fn(*idx):
            *bidx, i, kk = idx
            return tirx.if_then_else(kk < k, read(bidx, i, tirx.min(kk, k - 1)),
                                     const(0, self.a_dtype))

        return te.compute((*batch, m, self.padded_k(k)), fn, name="pad_a",
                          attrs={"kiln.sched": "pack"})

    def gemm(self, a: te.Tensor, bp: te.Tensor, batch: tuple, m: int, k: int) -> te.Tensor:
        """The extern stage ``C[prod(batch), M, Np]`` of ``a`` (from ``a_rows``) and ``bp``
        (packed B, with the batch axes of the product or none)."""
        kp = self.padded_k(k)
        n_pad = int(bp.shape[-4]) * PANEL
        nbatch = prod(batch)
        a_stride = m * kp if len(a.shape) > 2 else 0
        b_stride = (n_pad // PANEL) * kp * PANEL if len(bp.shape) > 4 else 0

        def call(ins, outs):
            a_buf, b_buf = ins
            i64 = lambda v: tirx.const(v, "int64")  # noqa: E731
            i32 = lambda v: tirx.const(v, "int32")  # noqa: E731
            return tirx.Evaluate(tirx.call_extern(
                "int32", self.name, a_buf.data, i64(kp), i64(a_stride),
                b_buf.data, i64(b_stride), outs[0].data, i64(n_pad),
                i64(m * n_pad), i32(nbatch), i32(m), i32(kp)))

        return te.extern((nbatch, m, n_pad), [a, bp], call, name=self.name, dtype=self.c_dtype)


BF16 = NativeGemm("kiln_gemm_bf16", "bfloat16", "bfloat16", "bfloat16", group=2, k_block=32)
U8S8 = NativeGemm("kiln_gemm_u8s8", "uint8", "int8", "int32", group=4, k_block=64)


def native(attrs, a_dtype: str, b_dtype: str) -> NativeGemm | None:
    """The native kernel an op of operands ``a_dtype`` x ``b_dtype`` multiplies on (with the
    target strategy's tiling in ``attrs``), or None: bfloat16 operands on a target with
    AVX512-BF16, uint8 x int8 on one with AVX512-VNNI."""
    t = tiling(attrs)
    gemm = None
    if t.bf16_dot and a_dtype == b_dtype == "bfloat16":
        gemm = BF16
    if t.int8_dot and (a_dtype, b_dtype) == ("uint8", "int8"):
        gemm = U8S8
    if gemm is not None and attrs.get("_sizes"):
        raise UnsupportedOpError(f"{a_dtype} x {b_dtype} products run on kiln's native GEMM, "
                                 "which needs static sizes: compile this model at fixed sizes "
                                 "(or in float32)")
    return gemm
