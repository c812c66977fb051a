"""TE builder of matmul (numpy semantics): a register-tiled GEMM stage, or a lane-split
reduction for matrix-vector products.

The GEMM stage ``gemm[batch..., Mp, Np]`` is computed on a domain padded to the register tile
(``mr`` rows x ``nb`` columns, from the target strategy's ``Tiling``), so the schedule
(``schedules/cpu/gemm.py``) needs no predicates in its inner loops: A's rows are clamped
(``min(i, M - 1)``; the extra rows are discarded) and B is either a constant packed at
compile time (``pack.py``: ``[..., Np/nb, K, nb]``, zero padded), read in place (when N is a
multiple of ``nb``), or packed per call by a ``pack`` stage. The output stage copies the
valid ``M x N`` corner; the schedule fuses it, and any elementwise epilogue of a fused group,
into the write-back of the register tile.
"""

from __future__ import annotations

from math import prod

import numpy as np
from tvm import te, tirx

from kiln.codegen.lower import Tiling, lowering
from kiln.codegen.ops import common as c
from kiln.codegen.ops.common import const, dtype_of, shape_of, widen
from kiln.codegen.ops.gemm_native import NativeGemm, native
from kiln.codegen.ops.reduce import reduce_rows

RAW_B_MAX_K = 64  # a runtime B with a longer K is packed per call (see ``matmul``)


def _batch_reader(src_batch, out_batch):
    """Map an output batch index to ``src``'s (right-aligned numpy broadcasting)."""
    off = len(out_batch) - len(src_batch)

    def read(bidx):
        return [0 if d == 1 and out_batch[off + i] != 1 else bidx[off + i]
                for i, d in enumerate(src_batch)]

    return read


def b_reader(read, b_batch, out_batch, n: int, k_dim: int, nb: int, dtype: str, raw_ok: bool):
    """``b_at(out batch index, k, j)`` for the GEMM stage from ``read(b batch index, k, j)``:
    in place when allowed and N is a multiple of ``nb``, else through a ``pack`` stage
    ``[..., N/nb, K, nb]`` (zero padded) computed per call."""
    b_b = _batch_reader(b_batch, out_batch)
    if raw_ok and c.is_static(n) and n % nb == 0:
        return lambda bidx, k, j: read(b_b(bidx), k, j)

    def pack_fn(*idx):
        *bb, jo, k, jl = idx
        j = jo * nb + jl
        # if_then_else, not Select: the load must not happen past the end of B
        return tirx.if_then_else(j < n, read(bb, k, tirx.min(j, n - 1)), const(0, dtype))

    bp = te.compute((*b_batch, c.ceil_div(n, nb), k_dim, nb), pack_fn, name="pack_b",
                    attrs={"kiln.sched": "pack"})
    return lambda bidx, k, j: bp[(*b_b(bidx), j // nb, k, j % nb)]


def gemm_stage(out_batch, m: int, n: int, k_dim: int, a_at, b_at, nb: int, tiles: Tiling,
               dtype: str):
    """The padded ``gemm[batch..., Mp, Np] = sum_k a_at(b, min(i, M-1), k) * b_at(b, k, j)``
    stage of register tiles of ``tiles.gemm_rows`` (at most) x ``nb``, in row blocks of A of
    about ``tiles.gemm_block_bytes`` (Mp pads M to whole blocks of whole tiles; a symbolic M
    to whole tiles), annotated for the schedule."""
    m_n, n_n = c.nominal(m), c.nominal(n)  # a symbolic size counts as NOMINAL_SIZE here
    mr = tiles.gemm_rows if m_n >= tiles.gemm_rows else m
    n_tiles, panels = -(-m_n // mr), -(-n_n // nb)
    by_bytes = -(-m_n * c.nominal(k_dim) * np.dtype(dtype).itemsize // tiles.gemm_block_bytes)
    by_tasks = -(-tiles.tasks // (panels * c.nominal_prod(out_batch)))
    blocks = max(1, min(n_tiles, max(by_bytes, by_tasks)))
    block_tiles = -(-n_tiles // blocks)
    blocks = -(-n_tiles // block_tiles)
    if c.is_static(m):
        m_pad = blocks * block_tiles * mr
    else:  # whole tiles (the schedule sweeps them without row blocks: schedules/cpu/gemm.py)
        m_pad = c.ceil_div(m, mr) * mr
    n_pad = c.ceil_div(n, nb) * nb
    k = te.reduce_axis((0, k_dim), name="k")

    def gemm_fn(*idx):
        *bidx, i, j = idx
        return te.sum(widen(a_at(bidx, tirx.min(i, m - 1), k)) * widen(b_at(bidx, k, j)),
                      axis=k)

    ann = {"kiln.sched": "gemm", "kiln.mr": mr, "kiln.nb": nb, "kiln.batch": len(out_batch),
           "kiln.block_tiles": block_tiles}
    return te.compute((*out_batch, m_pad, n_pad), gemm_fn, name="gemm", attrs=ann)


def _unravel(r, dims):
    """The index into ``dims`` of row ``r`` of their row-major flattening (0 on unit dims)."""
    idx = []
    for d in reversed(dims):
        idx.append(r % d if c.nominal(d) > 1 else 0)  # (a symbolic size is not 1)
        r = r // d if c.nominal(d) > 1 else r
    return idx[::-1]


def _ravel(idx, dims):
    """The row of ``idx`` in the row-major flattening of ``dims``. Unit dims add no term, so
    that ``[S, 1]`` rows read as plain ``s``: the GEMM schedule keeps an epilogue in the
    register tile only for consumers that index it by plain loop variables."""
    r = None
    for i, d in zip(idx, dims):
        if c.nominal(d) > 1:
            r = i if r is None else r * d + i
    return 0 if r is None else r


def _plain_matmul(a_at, b, b_b, b_vec, out_batch, k_dim, out_shape):
    """``out[..., i, j] = sum_k a[..., i, k] * b[..., k, j]`` as it lies (GPU schedules tile
    it themselves), summed in float32 for 16-bit floats; the caller has handled
    matrix-vector products."""
    k = te.reduce_axis((0, k_dim), name="k")
    nbat = len(out_batch)

    def fn(*idx):
        bidx = idx[:nbat]
        i = idx[nbat] if len(idx) > nbat + 1 else 0
        bv = b[k] if b_vec else b[(*b_b(bidx), k, idx[-1])]
        return te.sum(widen(a_at(bidx, i, k)) * widen(bv), axis=k)

    out = te.compute(out_shape, fn, name="matmul")
    dtype = dtype_of(b)
    if out.dtype == dtype:
        return out
    return te.compute(out_shape, lambda *i: out[i].astype(dtype), name="matmul_round")


def _matmul_native(gemm: NativeGemm, a, b, a_at, b_b, b_batch, out_batch, m, n, k_dim,
                   out_shape, a_vec, b_packed: bool):
    """A matmul through one of kiln's native GEMMs (``gemm_native.py``: bfloat16 with
    float32 sums rounded to bfloat16, or uint8 x int8 in int32). With one B for every batch,
    the batches are one GEMM of all their rows (ConvNeXt's [1, 7, 7, 768] @ W: 49 rows, not
    7 GEMMs of 7)."""
    if out_batch and not a_vec and tuple(shape_of(a)[:-2]) == tuple(out_batch) and (
            b_packed or not b_batch):
        dims, rows = (*out_batch, m), prod(out_batch) * m
        a_in = gemm.a_rows(a, lambda bidx, r, k: a[(*_unravel(r, dims), k)], (), rows, k_dim)
        bp = b if b_packed else gemm.pack_b_stage(lambda bb, k, j: b[k, j], (), k_dim, n)
        cp = gemm.gemm(a_in, bp, (), rows, k_dim)
        return te.compute(out_shape, lambda *idx: cp[0, _ravel(idx[:-1], dims), idx[-1]],
                          name="matmul")
    a_in = gemm.a_rows(a, a_at, out_batch, m, k_dim)
    if b_packed:
        bp = b
    else:
        bp = gemm.pack_b_stage(lambda bb, k, j: b[(*b_b(bb), k, j)], out_batch, k_dim, n)
    cp = gemm.gemm(a_in, bp, out_batch, m, k_dim)
    nbat = len(out_batch)

    def out_fn(*idx):
        flat = 0
        for i, d in zip(idx[:nbat], out_batch):
            flat = flat * d + i
        return cp[flat, 0 if a_vec else idx[nbat], idx[-1]]

    return te.compute(out_shape, out_fn, name="matmul")


@lowering("matmul", "matmul_integer")
def matmul(inputs, attrs, out_types):
    a, b = inputs
    out_shape = tuple(out_types[0].shape)
    a_shape, b_shape = shape_of(a), shape_of(b)
    tiles = c.tiling(attrs)
    packed = attrs.get("_packed_b")
    native_b = attrs.get("_bf16_b") or attrs.get("_native_b")
    gemm = native(attrs, dtype_of(a), dtype_of(b))
    if out_types[0].dtype == "int32" and dtype_of(a) != "int32" and gemm is None:
        # matmul_integer without a native kernel: the int32 matmul of the widened operands
        a = te.compute(a_shape, lambda *i: a[i].astype("int32"), name="widen_a")
        b = te.compute(b_shape, lambda *i: b[i].astype("int32"), name="widen_b")
    a_vec, b_vec = len(a_shape) == 1, (not packed and len(b_shape) == 1)
    k_dim = a_shape[-1]
    m = 1 if a_vec else a_shape[-2]
    n = 1 if b_vec else out_shape[-1]
    a_batch = () if a_vec else a_shape[:-2]
    # (a weight packed for a native GEMM is one matrix: ``pack.py``)
    b_batch = b_shape[:-3] if packed else (() if b_vec or native_b else b_shape[:-2])
    out_batch = out_shape[: len(out_shape) - (0 if a_vec else 1) - (0 if b_vec else 1)]
    a_b, b_b = _batch_reader(a_batch, out_batch), _batch_reader(b_batch, out_batch)

    def a_at(bidx, i, k):
        return a[k] if a_vec else a[(*a_b(bidx), i, k)]

    if gemm is not None and not b_vec and not packed:
        return _matmul_native(gemm, a, b, a_at, b_b, b_batch, out_batch, m, n, k_dim,
                              out_shape, a_vec, bool(native_b))
    if n == 1 and not packed:
        # matrix-vector: out[..., i] = sum_k a[..., i, k] * b[..., k, (0)]
        def read(idx):
            *bidx, i, k = idx
            bv = b[k] if b_vec else b[(*b_b(bidx), k, 0)]
            return a_at(bidx, i, k) * bv

        full = out_batch + (m, k_dim)
        r = reduce_rows(read, full, (len(full) - 1,), "sum", dtype_of(a), tiles.lanes, "gemv")
        return c.reshape(r, out_shape, name="gemv_out")

    if not tiles.blocked:
        return _plain_matmul(a_at, b, b_b, b_vec, out_batch, k_dim, out_shape)
    nb = packed or tiles.gemm_cols(c.nominal(n))
    # A[..., M, K] @ B[K, N] with batch axes: one GEMM over all prod(batch) * M rows, not
    # one per batch that each stream all of B ([S, 1, K] @ W of a seq-first attention
    # projection, [1, 14, 14, C] @ W of ConvNeXt's channels-last MLP, a batch of 8).
    # With one axis above 1 ([S, 1, K]) the epilogue stays in the register tile; other shapes
    # write the product, then compute the epilogue over it, which pays when each batch has
    # few rows or B is too big to stay in cache between batches (measured on ConvNeXt-tiny:
    # 56 rows of a 147 KB B per batch are faster unfolded)
    big_b = c.nominal(k_dim) * c.nominal(n) * np.dtype(dtype_of(b)).itemsize > \
        tiles.gemm_block_bytes
    # (never over symbolic sizes: the row index's division by them would sit in the
    # GEMM's inner loop; BERT's output projection at [batch, 384] ran 1.8x slower)
    fold = not a_vec and not b_batch and c.nominal_prod(out_batch) > 1 and (
        c.nominal(m) < 4 * tiles.gemm_rows or big_b) and c.is_static(m) and all(
        c.is_static(d) for d in out_batch)
    g_batch, g_m = ((), prod(out_batch) * m) if fold else (out_batch, m)
    if packed:
        def b_at(bidx, k, j):
            return b[(*b_b(bidx), j // nb, k, j % nb)]
    else:
        # A B read in place walks K rows N floats apart per register tile; packed per call,
        # each tile's K x nb panel is contiguous. Measured (2 threads, AVX-512), in place vs
        # packed: 1024x768x3072 85 vs 182 GFLOP/s, 64x768x3072 54 vs 103, 12x[128x128x64]
        # 82 vs 113; only for K <= 64 (12x[128x64x128]: 160 vs 147) is in place better.
        raw_ok = isinstance(b.op, te.PlaceholderOp) and c.nominal(k_dim) <= RAW_B_MAX_K
        b_at = b_reader(lambda bb, k, j: b[(*bb, k, j)], b_batch, g_batch, n, k_dim, nb,
                        dtype_of(b), raw_ok=raw_ok)
    if fold:
        dims = (*out_batch, m)

        def a_rows(bidx, r, k):
            return a[(*_unravel(r, dims), k)]

        cp = gemm_stage((), g_m, n, k_dim, a_rows, lambda bidx, k, j: b_at((), k, j), nb,
                        tiles, dtype_of(a))
        return te.compute(out_shape, lambda *idx: cp[_ravel(idx[:-1], dims), idx[-1]]
                          .astype(dtype_of(a)), name="matmul")
    cp = gemm_stage(g_batch, g_m, n, k_dim, a_at, b_at, nb, tiles, dtype_of(a))

    def out_fn(*idx):
        nbat = len(out_batch)
        bidx = idx[:nbat]
        i = 0 if a_vec else idx[nbat]
        return cp[(*bidx, i, idx[-1])].astype(dtype_of(a))

    return te.compute(out_shape, out_fn, name="matmul")
