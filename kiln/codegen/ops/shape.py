"""TE builders of data-movement ops: views, transpose, concat/split, slicing, gathers, pad,
triangles and one_hot. Every one is a copy into the destination buffer (the runtime has no
aliasing); the scheduler inlines them into neighbours of a fused group.

Index tensors (gather, take_along_axis, one_hot) pass through a check stage first
(``checks.checked_index``): an index outside [-size, size) raises, as in the interpreter, and
negative indices count from the end (ONNX); the copy then reads in-range int32 indices.
"""

from __future__ import annotations

from tvm import te, tirx

from kiln.codegen.lower import lowering
from kiln.codegen.ops import common as c
from kiln.codegen.ops.checks import checked_index
from kiln.codegen.ops.common import const, dtype_of, shape_of
from kiln.ir.ops.shape import _slice_args, _slice_range


def view(x, out_shape, name: str = "view"):
    """``x`` in ``out_shape`` (row-major); inserting/removing unit dims needs no div/mod."""
    src = shape_of(x)
    out_shape = tuple(out_shape)
    if [d for d in src if d != 1] == [d for d in out_shape if d != 1]:
        keep = [i for i, d in enumerate(out_shape) if d != 1]
        src_keep = [i for i, d in enumerate(src) if d != 1]

        def fn(*idx):
            full = [0] * len(src)
            for si, oi in zip(src_keep, keep):
                full[si] = idx[oi]
            return x[tuple(full)] if full else x[()]

        return te.compute(out_shape, fn, name=name)
    return c.reshape(x, out_shape, name=name)


@lowering("reshape", "flatten", "squeeze", "unsqueeze")
def reshape(inputs, attrs, out_types):
    return view(inputs[0], out_types[0].shape, name="reshape")


@lowering("expand")
def expand(inputs, attrs, out_types):
    shape = tuple(out_types[0].shape)
    read = c.bcast(inputs[0], shape)
    return te.compute(shape, lambda *i: read(*i), name="expand")


@lowering("transpose")
def transpose(inputs, attrs, out_types):
    x = inputs[0]
    rank = len(shape_of(x))
    perm = attrs["perm"]
    perm = tuple(range(rank))[::-1] if perm is None else tuple(p % rank for p in perm)

    def fn(*idx):
        src = [0] * rank
        for a, p in enumerate(perm):
            src[p] = idx[a]
        return x[tuple(src)]

    return te.compute(tuple(out_types[0].shape), fn, name="transpose")


# concat picks each element's part with a chain of selects up to this many parts, above it with
# a balanced tree (log2(parts) deep). Measured, 2 threads: 24 parts [1, 32, 14, 14] (DenseNet)
# 0.79-0.99 ms as a chain, 0.09-0.12 ms as a tree; 32 parts [4, 128] (an LSTM's steps) 83-128
# vs 9-15 us; with few parts the chain was as fast or faster.
CONCAT_CHAIN_MAX = 4


@lowering("concat")
def concat(inputs, attrs, out_types):
    shape = tuple(out_types[0].shape)
    axis = attrs["axis"] % len(shape)
    # (a part of symbolic size is kept: it may be empty in some calls, which the clamped
    # index below reads nothing of)
    parts = [(x, shape_of(x)[axis]) for x in inputs
             if not isinstance(shape_of(x)[axis], int) or shape_of(x)[axis] > 0]

    offsets = [0]
    for _, size in parts:
        offsets.append(offsets[-1] + size)
    chain = len(parts) <= CONCAT_CHAIN_MAX

    def fn(*idx):
        i = idx[axis]

        def pick(lo: int, hi: int):
            """The element from parts[lo:hi]."""
            if hi - lo == 1:
                x, size = parts[lo]
                local = list(idx)
                local[axis] = tirx.max(tirx.min(i - offsets[lo], size - 1), 0)
                return x[tuple(local)]
            if chain:  # (each form's branch order is the one that measured best)
                return tirx.if_then_else(i >= offsets[hi - 1], pick(hi - 1, hi),
                                         pick(lo, hi - 1))
            mid = (lo + hi) // 2
            return tirx.if_then_else(i < offsets[mid], pick(lo, mid), pick(mid, hi))

        return pick(0, len(parts))

    return te.compute(shape, fn, name="concat")


@lowering("split")
def split(inputs, attrs, out_types):
    x = inputs[0]
    axis = attrs["axis"] % len(shape_of(x))
    def part(start: int):
        def fn(*idx):
            src = list(idx)
            src[axis] = idx[axis] + start
            return x[tuple(src)]

        return fn

    outs, start = [], 0
    for i, t in enumerate(out_types):  # distinct names: the parts' buffers, and kernel params
        outs.append(te.compute(tuple(t.shape), part(start), name=f"split{i}"))
        start += t.shape[axis]
    return outs


@lowering("slice")
def slice_(inputs, attrs, out_types):
    x = inputs[0]
    shape = shape_of(x)
    first: dict[int, tuple] = {}  # axis -> (first index, step)
    for axis, s, e, st in _slice_args(len(shape), attrs):
        if isinstance(shape[axis], int) and isinstance(e, int):
            r = _slice_range(shape[axis], s, e, st)
            first[axis] = (r.start, r.step)
        else:  # a symbolic axis or end: the slice counts from one end (``symbolic_slice``)
            first[axis] = (s if s >= 0 else shape[axis] + s, st)

    def fn(*idx):
        src = list(idx)
        for axis, (start, step) in first.items():
            src[axis] = start + idx[axis] * step
        return x[tuple(src)]

    return te.compute(tuple(out_types[0].shape), fn, name="slice")


@lowering("gather")
def gather(inputs, attrs, out_types):
    data, ind = inputs
    dshape = shape_of(data)
    axis = attrs["axis"] % len(dshape)
    k = len(shape_of(ind))
    ids = checked_index(ind, dshape[axis], "gather", c.tiling(attrs).raises)

    def fn(*idx):
        pre, mid, post = idx[:axis], idx[axis:axis + k], idx[axis + k:]
        return data[(*pre, ids[tuple(mid)] if mid else ids[()], *post)]

    return te.compute(tuple(out_types[0].shape), fn, name="gather")


@lowering("take_along_axis")
def take_along_axis(inputs, attrs, out_types):
    data, ind = inputs
    shape = tuple(out_types[0].shape)
    dshape = shape_of(data)
    axis = attrs["axis"] % len(dshape)
    read_ind = c.bcast(checked_index(ind, dshape[axis], "take_along_axis",
                                      c.tiling(attrs).raises), shape)

    def fn(*idx):
        src = [0 if d == 1 else i for i, d in zip(idx, dshape)]
        src[axis] = read_ind(*idx)
        return data[tuple(src)]

    return te.compute(shape, fn, name="take_along_axis")


@lowering("one_hot")
def one_hot(inputs, attrs, out_types):
    depth, dtype = attrs["depth"], attrs["dtype"]
    ids = checked_index(inputs[0], depth, "one_hot", c.tiling(attrs).raises)

    def fn(*idx):
        v = ids[idx[:-1]] if idx[:-1] else ids[()]
        return tirx.Select(v == idx[-1], const(1, dtype), const(0, dtype))

    return te.compute(tuple(out_types[0].shape), fn, name="one_hot")


@lowering("pad")
def pad(inputs, attrs, out_types):
    x = inputs[0]
    shape = shape_of(x)
    rank = len(shape)
    pads, mode = attrs["pads"], attrs["mode"]
    before = pads[:rank]
    dt = dtype_of(x)

    def fn(*idx):
        src, inside = [], []
        for a, i in enumerate(idx):
            j, n = i - before[a], shape[a]
            if before[a] == 0 and pads[rank + a] == 0:
                src.append(i)
                continue
            if mode == "reflect":
                j = tirx.abs(j)
                j = (n - 1) - tirx.abs((n - 1) - j)
            elif mode == "edge":
                j = tirx.max(tirx.min(j, n - 1), 0)
            else:
                inside.append(tirx.all(j >= 0, j < n))
                j = tirx.max(tirx.min(j, n - 1), 0)
            src.append(j)
        value = x[tuple(src)]
        if inside:
            return tirx.if_then_else(tirx.all(*inside), value, const(attrs["value"], dt))
        return value

    return te.compute(tuple(out_types[0].shape), fn, name="pad")


def _triangle(lower: bool):
    def build(inputs, attrs, out_types):
        x, k = inputs[0], attrs["k"]
        dt = dtype_of(x)

        def fn(*idx):
            i, j = idx[-2], idx[-1]
            keep = (j - i <= k) if lower else (j - i >= k)
            return tirx.Select(keep, x[idx], const(0, dt))

        return te.compute(tuple(out_types[0].shape), fn, name="tril" if lower else "triu")

    return build


lowering("tril")(_triangle(True))
lowering("triu")(_triangle(False))
