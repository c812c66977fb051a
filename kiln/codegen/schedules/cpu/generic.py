"""Generic CPU schedules: injective stages, reductions, and row-fused normalizations.

Every kernel gets at least a parallel outer loop (when it has enough work to pay for waking
the thread pool) and a vectorized inner loop. Reductions along the contiguous axis come from
the TE builders as two stages (``ops/reduce.py``): a ``lanes`` stage keeping one partial
result per vector lane, and a short final reduce over the lanes; this avoids ``rfactor``,
whose ``compute_at`` drops the predicate of a non-divisible split in TVM 0.27 (it read past
the row in our softmax prototype).
"""

from __future__ import annotations

from math import gcd, prod

from kiln.codegen.schedules.cpu.common import (
    REDUCE,
    annotations,
    blocks,
    extents,
    is_output,
    is_reduction,
    kind,
    partition_tail,
    transposed_axis,
    vectorize_inner,
    work,
)
from kiln.ir.types import HALF_DTYPES

# Below this many output elements a kernel runs serially: waking TVM's thread pool costs a
# few microseconds, which an elementwise kernel of 16K floats barely amortizes.
PARALLEL_MIN = 16384


def schedule_injective(sch, block, lanes: int, cores: int) -> None:
    """Parallel over the outer loops and vector chunks, vectorized innermost (transposes:
    ``schedule_transpose``)."""
    loops = sch.get_loops(block)
    if not loops:
        return
    axis = transposed_axis(sch, block)
    if axis is not None and schedule_transpose(sch, block, lanes, cores, axis):
        return
    ext = extents(sch, loops)
    total = work(sch, loops)
    if ext[-1] is not None and ext[-1] % lanes and gcd(ext[-1], lanes) >= 8 and \
            _touches_half(sch, block):
        # half vectors along a last axis of 72 channels (bf16 NHWC): fused with the axis
        # before, per-channel operands (a bias) became gathers (4x slower, MobileNetV3)
        lanes = gcd(ext[-1], lanes)
    # fuse the trailing loops whose extents multiply to whole vectors: a [N, C, 28, 28]
    # output vectorizes over H*W = 49 x 16 instead of 28 = 16 + a predicated 12
    # (not past a loop over a symbolic size)
    k = len(loops) - 1
    while k > 0 and ext[k - 1] is not None and None not in ext[k:] and (
            prod(ext[k:]) % lanes or prod(ext[k:]) < lanes):
        k -= 1
    if k < len(loops) - 1:
        loops = [*loops[:k], sch.fuse(*loops[k:])]
    last = loops[-1]
    n_last = extents(sch, [last])[0]
    if n_last is None or n_last > lanes:
        chunk, vec = sch.split(last, [None, lanes])
    else:
        chunk, vec = None, last
    sch.vectorize(vec)
    # (a symbolic last axis keeps its vector loop out of the parallel one: partitioned into
    # whole vectors and a tail, it vectorizes without a check per lane)
    tail = n_last is None and chunk is not None and len(loops) > 1
    outer = list(loops[:-1]) + ([chunk] if chunk is not None and not tail else [])
    if outer and cores > 1 and total >= PARALLEL_MIN:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
    if n_last is None and chunk is not None and (tail or not outer):
        partition_tail(sch, chunk)


def _touches_half(sch, block) -> bool:
    """Does ``block`` read or write a float16/bfloat16 buffer?"""
    stmt = sch.get(block)
    return any(str(r.source.dtype) in HALF_DTYPES for r in (*stmt.reads, *stmt.writes))


def schedule_transpose(sch, block, lanes: int, cores: int, axis: int) -> bool:
    """A block whose contiguous output axis walks an input across its rows (``axis``: the
    loop that walks that input's contiguous axis): lanes x lanes tiles, so that the gathered
    rows of a tile stay in L1 while its vectors are written. A contiguous axis of no whole
    tiles is fused with the axes before it (down to ``axis``) when that makes whole tiles:
    a native convolution's NCHW epilogue reads its [pixels, channels] sums across rows, and
    56 x 56 pixels tile as 3136 (ResNet-50 int8: 24.9 -> 13.7 ms); when no fusion makes
    whole tiles (111 x 111 pixels), the last tile is partial (a predicate): SqueezeNet int8's
    stem conv 2.0 -> 1.0 ms. Returns False (untouched) when ``axis`` does not divide."""
    loops = sch.get_loops(block)
    ext = extents(sch, loops)
    if len(loops) != len(sch.get(block).iter_vars) or None in ext or ext[axis] % lanes:
        return False
    k = len(loops) - 1
    while k > axis + 1 and prod(ext[k:]) % lanes:
        k -= 1
    if prod(ext[k:]) % lanes:
        # no whole tiles (SqueezeNet's 111 x 111 pixels): all the contiguous axes as one,
        # tiled with a partial last tile, still better than a gather per element
        k = axis + 1
    if k < len(loops) - 1:
        loops = [*loops[:k], sch.fuse(*loops[k:])]
        ext = [*ext[:k], prod(ext[k:])]
    a0, a1 = sch.split(loops[axis], [None, lanes])
    b0, b1 = sch.split(loops[-1], [None, lanes])
    others = [lp for i, lp in enumerate(loops[:-1]) if i != axis]
    sch.reorder(*others, a0, b0, a1, b1)
    sch.vectorize(b1)
    outer = [*others, a0, b0]
    if cores > 1 and prod(ext) >= PARALLEL_MIN:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
    return True


def schedule_pack(sch, block, lanes: int, cores: int) -> None:
    """Layout transforms into blocked layouts (``[..., rows, cols, block]``): parallel over
    the rows, the block axis vectorized when it is one vector, else unrolled. Fusing all loops
    and vectorizing (``schedule_injective``) turned every vector into a gather with div/mod
    indices: the 7x7 stem conv's input pack took 0.31 ms that way, 0.07-0.09 ms like this."""
    loops = sch.get_loops(block)
    if len(loops) < 3:
        schedule_injective(sch, block, lanes, cores)
        return
    *outer, _cols, blk = loops
    total = work(sch, loops)
    n_blk = extents(sch, [blk])[0]
    if n_blk is None:
        pass
    elif annotations(sch, block).get("kiln.unroll"):
        # a block whose elements come from index arithmetic (a flat im2col: kk -> tap,
        # channel): unrolled, each element's index is a constant, not a lane's div/mod
        sch.unroll(blk)
    elif n_blk % lanes == 0:
        # (a long block, an im2col row of kw x C taps, stays a loop: unrolled, LLVM took
        # seconds per kernel)
        vectorize_inner(sch, blk, lanes, unroll_rest=n_blk <= 4 * lanes)
    elif n_blk <= 4 * lanes:
        sch.unroll(blk)
    if cores > 1 and total >= PARALLEL_MIN:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


def _split_loops(sch, block):
    """(spatial loops, reduction loops) of a block whose loops are its iteration vars."""
    loops = sch.get_loops(block)
    types = [int(iv.iter_type) for iv in sch.get(block).iter_vars]
    if len(types) != len(loops):
        return None
    spatial = [lp for lp, t in zip(loops, types) if t != REDUCE]
    reduce = [lp for lp, t in zip(loops, types) if t == REDUCE]
    return spatial, reduce


def schedule_reduction(sch, block, lanes: int, cores: int) -> None:
    """A reduction on its own: parallel spatial loops; lanes or contiguous axis vectorized."""
    split = _split_loops(sch, block)
    if split is None:
        return
    spatial, reduce = split
    ann = annotations(sch, block)
    size = work(sch, spatial + reduce)
    vec = None
    if kind(sch, block) == "lanes" and spatial:
        vec = spatial[-1]  # the lane axis: move it inside the reduction loops
        spatial = spatial[:-1]
    elif int(ann.get("kiln.outer", 0)) and spatial:
        vec = spatial[-1]  # the contiguous axis is kept: reduce outside it, vectorize it
        spatial = spatial[:-1]
    if vec is not None and reduce:
        sch.reorder(*reduce, vec)
    if vec is not None:
        vectorize_inner(sch, vec, lanes)
    if spatial and cores > 1 and size >= PARALLEL_MIN:
        sch.parallel(sch.fuse(*spatial) if len(spatial) > 1 else spatial[0])
    if reduce and vec is not None:
        sch.decompose_reduction(block, reduce[0])


def schedule_rows(sch, out_block, lanes: int, cores: int) -> bool:
    """Normalizations (softmax, layer_norm, ...): one parallel loop over rows, every stage of
    a row computed under it. Returns False (schedule untouched) when the pattern does not fit;
    raises ScheduleError when TVM refuses a step (the caller then retries on a fresh copy).
    """
    others = [b for b in blocks(sch) if not sch.get(b).same_as(sch.get(out_block))]
    depths = [annotations(sch, b).get("kiln.row") for b in others]
    if not others or any(d is None for d in depths):
        return False
    depth = min(int(d) for d in depths)
    loops = sch.get_loops(out_block)
    if depth < 1 or depth > len(loops) or any(is_output(sch, b) for b in others):
        return False
    size = work(sch, loops)
    row = sch.fuse(*loops[:depth]) if depth > 1 else loops[0]
    if cores > 1 and size >= PARALLEL_MIN // 4:
        # before compute_at: TVM refuses to parallelize a loop over reductions ("not compact
        # dataflow"), but keeps the mark when they are moved under it
        sch.parallel(row)
    inner = loops[depth:]
    # the producers move under the row loop before the output's loop is split into vectors:
    # split first, a row of symbolic length made them cover whole vectors past its end, with
    # predicates LLVM could not vectorize (BERT's softmax at seq 384: 7x slower)
    for b in reversed(others):
        sch.compute_at(b, row, preserve_unit_loops=True)
    if inner:
        vectorize_inner(sch, sch.fuse(*inner) if len(inner) > 1 else inner[0], lanes)
    for b in others:
        if is_reduction(sch, b):
            _schedule_row_reduction(sch, b, lanes)
        else:
            rest = sch.get_loops(b)[1:]
            if rest:
                vectorize_inner(sch, sch.fuse(*rest) if len(rest) > 1 else rest[0], lanes)
    return True


def _schedule_row_reduction(sch, block, lanes: int) -> None:
    # compute_at(preserve_unit_loops) made one loop per iteration variable below the row loop,
    # spatial ones first (TE order), the reduction ones last.
    loops = sch.get_loops(block)[1:]
    n_red = sum(int(iv.iter_type) == REDUCE for iv in sch.get(block).iter_vars)
    if not loops or n_red == 0 or n_red > len(loops):
        return
    spatial, reduce = loops[:-n_red], loops[-n_red:]
    if kind(sch, block) == "lanes" and spatial:
        vec = spatial[-1]
        sch.reorder(*reduce, vec)
        vectorize_inner(sch, vec, lanes)
    # the init becomes its own (vectorized) loop instead of a branch in the reduction loop
    sch.decompose_reduction(block, reduce[0])
