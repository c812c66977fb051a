"""The NCHWc conv2d schedule (TVM's x86 conv2d_NCHWc template).

For ``conv_nchwc[n, oc, oh, ow, ocb] += xp[n, rc, oh*s + ry, ow*s + rx, ri] * wp[oc, rc, ry,
rx, ri, ocb]``: ow splits into [ow0, ow1 = reg_n]; order (n, oc, oh, ow0, rc, ry, rx, ri,
ow1, ocb) keeps reg_n x ocb accumulators in registers (``local`` scope; ow1 unrolled, ocb one
vector), each weight vector loaded once per reg_n FMAs with broadcast activations; the NCHW
output (and any fused epilogue) is written from the tile under ow0; (n, oc, oh) run in
parallel, or (n, oh, oc) for a small weight (``ROWS_FIRST_WEIGHT_BYTES``); the reduction's
init is decomposed last.
"""

from __future__ import annotations

from math import prod

from kiln.codegen.schedules.cpu.common import (
    annotations,
    extent,
    reads_tile_exactly,
    vectorize_inner,
)

# Measured interleaved at 2 threads on the Sapphire Rapids VM, rows vs channel blocks for
# weights up to 1 MB: ResNet-50 -12%, MobileNetV2 -11%, ResNet-18 -3%, Inception v3 -2%
# (all weights: ResNet-50 -7%; 4 MB: -4%)
ROWS_FIRST_WEIGHT_BYTES = 1 << 20


def schedule_conv2d(sch, block, lanes: int, cores: int, epilogue: bool = True) -> list[str]:
    """Schedule a ``conv_nchwc`` block (with ``epilogue``, its consumers too)."""
    ann = annotations(sch, block)
    reg_n, reg_h = int(ann["kiln.reg_n"]), int(ann.get("kiln.reg_h", 1))
    b, oc, oh, ow, ocb, *reduce = sch.get_loops(block)  # conv: rc, ry, rx, ri; depthwise: ry, rx
    oh0, oh1 = sch.split(oh, [None, reg_h])
    ow0, ow1 = sch.split(ow, [None, reg_n])
    # Threads split the output by rows when the weight is small enough for each to read all
    # of it: the next layer then finds its input rows in the cache of the core that wrote
    # them (split by channel blocks, half of every input comes from the other core)
    weight = extent(sch, oc) * prod(extent(sch, r) for r in reduce) * extent(sch, ocb) * 4
    rows_first = weight <= ROWS_FIRST_WEIGHT_BYTES and extent(sch, oh0) >= 4 * cores
    if rows_first:
        sch.reorder(b, oh0, oc, ow0, *reduce, oh1, ow1, ocb)
    else:
        sch.reorder(b, oc, oh0, ow0, *reduce, oh1, ow1, ocb)
    done = [sch.get(block).name_hint]
    if epilogue:
        consumers = sch.get_consumers(block)
        if not all(reads_tile_exactly(sch, c, block, allow_divmod=True) for c in consumers):
            raise ValueError("an epilogue reads the conv tile through a non-trivial index")
        sch.set_scope(block, 0, "local")
        for consumer in consumers:
            done.append(sch.get(consumer).name_hint)
            sch.reverse_compute_at(consumer, ow0, preserve_unit_loops=True)
            vectorize_inner(sch, sch.get_loops(consumer)[-1], lanes)
    sch.unroll(oh1)
    sch.unroll(ow1)
    vectorize_inner(sch, ocb, lanes)
    par = sch.fuse(b, oh0, oc) if rows_first else sch.fuse(b, oc, oh0)
    if cores > 1 and (extent(sch, par) or 2) > 1:  # (None: a symbolic size)
        sch.parallel(par)
    sch.decompose_reduction(block, reduce[0])
    return done
