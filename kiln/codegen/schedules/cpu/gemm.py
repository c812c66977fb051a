"""The register-tiled GEMM schedule (TVM's recipe for a CPU GEMM: a register tile in ``local``
scope, reduction split and unrolled, vectorized columns; it reached numpy's speed).

For the padded ``gemm[batch..., Mp, Np] += A[i, k] * B[k, j]`` stage of ``ops/linalg.py``:
i splits into [i0, i1, i2 = mr] (i1: the row block of the stage's ``kiln.block_tiles``
tiles, whose A stays in L2), j into [j0, j1 = nb] (two vectors), k into [k0, k1 <= 4]; loop
order (batch, i0, j0, i1, k0, k1, i2, j1) streams each panel of B once per row block and
keeps an mr x nb accumulator tile in registers (``local`` scope), k1 and i2 unrolled, j1
split into vectors; the consumers of the tile (the copy of the valid corner and any fused
elementwise epilogue) are computed right after it under i1; the fused (batch, i0, j0) loop
runs in parallel; the reduction's init is decomposed last (parallel/vectorize refuse a
reduction block that already has one).

Measured on the 2-core Sapphire Rapids VM (fp32, 1 thread, warm caches, GFLOP/s against
PyTorch's): 128x768x768 192 vs 195, 197x768x3072 186 vs 191, 1024^3 204 vs 215.
"""

from __future__ import annotations

from kiln.codegen.ops.common import largest_divisor
from kiln.codegen.schedules.cpu.common import (
    annotations,
    extent,
    extents,
    reads_tile_exactly,
    vectorize_inner,
)


def schedule_gemm(sch, block, lanes: int, cores: int, epilogue: bool = True) -> list[str]:
    """Schedule the gemm block (and, with ``epilogue``, its consumers). Returns the names of
    the blocks it scheduled."""
    ann = annotations(sch, block)
    mr, nb, nbatch = int(ann["kiln.mr"]), int(ann["kiln.nb"]), int(ann["kiln.batch"])
    loops = sch.get_loops(block)
    batch, (i, j, k) = loops[:nbatch], loops[nbatch:]
    k_dim = extent(sch, k)
    i1_f = int(ann["kiln.block_tiles"])
    it, i2 = sch.split(i, [None, mr])
    j0, j1 = sch.split(j, [None, nb])
    k0, k1 = sch.split(k, [None, largest_divisor(k_dim, 4) if k_dim else 1])
    if extent(sch, it) is not None:
        i0, i1 = sch.split(it, [None, i1_f])
        if None in extents(sch, batch):  # a symbolic batch: each panel meets every batch
            sch.reorder(i0, j0, *batch, i1, k0, k1, i2, j1)
            outer = [i0, j0, *batch]
        else:
            sch.reorder(*batch, i0, j0, i1, k0, k1, i2, j1)
            outer = [*batch, i0, j0]
    else:
        # a symbolic M (padded to whole tiles only): no row blocks, whose last one would
        # check every FMA for tiles past the end (1.7x slower); each panel of B stays in
        # cache while all the tiles of A pass it, of every batch (a weight shared by the
        # batches streams from memory once: BERT at batch 3, seq 7 ran 1.8x slower
        # batch-outer)
        i1 = it
        sch.reorder(j0, *batch, i1, k0, k1, i2, j1)
        outer = [j0, *batch, i1]
    done = [sch.get(block).name_hint]
    if epilogue:
        consumers = sch.get_consumers(block)
        if not all(reads_tile_exactly(sch, c, block) for c in consumers):
            raise ValueError("an epilogue reads the GEMM tile through a non-trivial index")
        sch.set_scope(block, 0, "local")
        for consumer in consumers:
            done.append(sch.get(consumer).name_hint)
            sch.reverse_compute_at(consumer, i1, preserve_unit_loops=True)
            vectorize_inner(sch, sch.get_loops(consumer)[-1], lanes)
    else:
        # the tile still accumulates in registers; it is stored to the global result, which
        # the consumers read with their own schedules
        store = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(store, i1, preserve_unit_loops=True)
        vectorize_inner(sch, sch.get_loops(store)[-1], lanes)
        done.append(sch.get(store).name_hint)
    sch.unroll(k1)
    sch.unroll(i2)
    if nb > lanes:
        ja, jb = sch.split(j1, [None, lanes])
        sch.unroll(ja)
        sch.vectorize(jb)
    else:
        sch.vectorize(j1)
    par = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    if cores > 1 and (extent(sch, par) or 2) > 1:  # (None: a symbolic size)
        sch.parallel(par)
    sch.decompose_reduction(block, k0)
    return done

