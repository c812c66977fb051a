"""Shape ops: Reshape, Flatten, Transpose, Concat, Split, Slice, Squeeze, Unsqueeze, Expand,
Tile, Pad, the Gathers, DepthToSpace, SpaceToDepth and Trilu. Their shape inputs must be known
at import (constants, or computed from static shapes); kiln's ops take them as attributes."""

from __future__ import annotations

import math

import numpy as np

from kiln.errors import ShapeError
from kiln.frontend.onnx.context import NodeContext, Ref, check_constant
from kiln.frontend.onnx.registry import converter
from kiln.frontend.onnx.validate import (
    Check,
    Spec,
    all_of,
    at_least,
    axes,
    axis,
    count,
    flag,
    indices_in_range,
    nonzero,
    one_of,
    permutation,
    rank_of,
    same_rank,
)
from kiln.ir.dims import as_dim
from kiln.ir.ops.registry import broadcast_shapes
from kiln.ir.types import Dim

_ALL = 2**63 - 1  # slice end: to the end of the axis


def static(n: NodeContext, d: Dim, what: str) -> int:
    if not isinstance(d, int):
        raise n.unsupported(f"{what} must be static, got symbolic dimension {d!r} (fix it with "
                            "from_onnx(..., input_shapes=...))")
    return d


def prod_dim(dims: tuple[Dim, ...]) -> Dim | None:
    """The product of ``dims`` as one dim: an int, a lone symbol, or None (a product of
    symbols kiln cannot name)."""
    names = [d for d in dims if isinstance(d, str)]
    size = math.prod(d for d in dims if isinstance(d, int))
    if not names:
        return size
    return names[0] if len(names) == 1 and size == 1 else None


@converter("Reshape", 13, 14, 19, 21, 23, 24, 25,
           spec=Spec(ranks={1: (1, 1)}, attrs={"allowzero": flag}))
def reshape(n: NodeContext) -> Ref:
    x, target = n.x, list(n.ints(1, "shape"))
    if not n.attr("allowzero", 0):  # 0 copies the input's dimension
        target = [x.shape[i] if isinstance(d, int) and d == 0 and i < x.rank else d
                  for i, d in enumerate(target)]
    names = sorted(d for d in target if isinstance(d, str))
    if -1 in target and names and names == sorted(d for d in x.shape if isinstance(d, str)):
        # the symbols carry over, so -1 is static: say which (kiln's reshape then needs no
        # rule for where a name and a -1 may sit together)
        have = math.prod(d for d in x.shape if isinstance(d, int))
        want = math.prod(d for d in target if isinstance(d, int) and d != -1)
        if want and have % want == 0:
            target = [have // want if d == -1 else d for d in target]
    if tuple(target) == x.shape:
        return x
    return n.op("reshape", x, shape=tuple(target))


@converter("Flatten", 13, 21, 23, 24, 25, spec=Spec(attrs={"axis": axis(end=True)}))
def flatten(n: NodeContext) -> Ref:
    x = n.x
    axis = int(n.attr("axis", 1))
    axis = axis + x.rank if axis < 0 else axis
    left, right = prod_dim(x.shape[:axis]), prod_dim(x.shape[axis:])
    if left is None and right is None:
        raise n.unsupported(f"Flatten of {x.type} at axis {axis} multiplies symbolic dims on "
                            "both sides; fix them with from_onnx(..., input_shapes=...)")
    target = (-1 if left is None else left, -1 if right is None else right)
    return n.op("reshape", x, shape=target)


@converter("Transpose", 13, 21, 23, 24, 25, spec=Spec(attrs={"perm": permutation()}))
def transpose(n: NodeContext) -> Ref:
    perm = n.attr("perm")
    return n.op("transpose", n.x, perm=None if perm is None else tuple(perm))


@converter("Concat", 13, spec=Spec(attrs={"axis": axis()}))
def concat(n: NodeContext) -> Ref:
    inputs = [r for r in n.inputs if r is not None]
    return n.op("concat", *inputs, axis=int(n.attr("axis")))


def _split_count(n: NodeContext) -> str | None:
    """The sizes (input 1) or num_outputs give one part per output."""
    sizes, parts = n.input(1), n.attr("num_outputs")
    if sizes is not None and sizes.rank == 1 and sizes.shape[0] != n.n_outputs:
        return f"split sizes {sizes.type} give {sizes.shape[0]} parts, but the node has " \
               f"{n.n_outputs} outputs"
    if parts is not None and parts != n.n_outputs:
        return f"num_outputs={parts}, but the node has {n.n_outputs} outputs"
    return None


@converter("Split", 13, 18, spec=Spec(
    ranks={0: (1, None), 1: (1, 1)}, attrs={"axis": axis(), "num_outputs": at_least(1)},
    values={1: at_least(0)}, checks=(_split_count,)))
def split(n: NodeContext) -> list[Ref]:
    x = n.x
    axis = int(n.attr("axis", 0)) % x.rank
    sizes = n.ints(1, "split")
    if sizes is None:
        dim = static(n, x.shape[axis], f"the split axis {axis}")
        parts = int(n.attr("num_outputs", n.n_outputs))
        if "num_outputs" in n.attrs:  # opset 18: the last chunk may be smaller
            chunk = -(-dim // parts)
            sizes = (chunk,) * (parts - 1) + (dim - chunk * (parts - 1),)
        elif dim % parts:
            raise ShapeError(f"cannot split dim {dim} of axis {axis} into {parts} equal parts")
        else:
            sizes = (dim // parts,) * parts
    return n.ops("split", [x], axis=axis, sizes=tuple(sizes))


def _slice_lengths(n: NodeContext) -> str | None:
    """starts, ends, axes and steps (those given) are 1-D and equally long."""
    given = {i: n.input(i) for i in range(1, 5) if n.input(i) is not None}
    lengths = {r.shape[0] for r in given.values() if r.rank == 1}
    if len(lengths) > 1:
        shown = ", ".join(f"{n.node.input[i]!r}: {r.type}" for i, r in given.items())
        return f"starts, ends, axes and steps must be equally long ({shown})"
    return None


@converter("Slice", 13, spec=Spec(
    ranks={0: (1, None), 1: (1, 1), 2: (1, 1), 3: (1, 1), 4: (1, 1)},
    values={3: axes(), 4: nonzero}, checks=(_slice_lengths,)))
def slice_(n: NodeContext) -> Ref:
    x = n.x
    starts, ends = n.ints(1, "starts"), n.ints(2, "ends")
    axes = n.ints(3, "axes", default=tuple(range(len(starts))))
    steps = n.ints(4, "steps", default=(1,) * len(starts))
    axes = tuple(a % x.rank for a in axes)
    # an end given as the axis's own symbolic size means 'to the end'
    ends = tuple(_ALL if isinstance(e, str) and e == x.shape[a] else e
                 for a, e in zip(axes, ends))
    for v in starts:
        if isinstance(v, str):
            raise n.unsupported(f"Slice bounds {starts}, {ends} depend on symbolic dim {v!r}")
    # an end that is a symbolic size (positions[:, :seq]): kiln's slice checks it when it runs
    ends = tuple(as_dim(e) if isinstance(e, str) else e for e in ends)
    if all(s == 0 and isinstance(e, int) and e >= _ALL and st == 1
           for s, e, st in zip(starts, ends, steps)):
        return x
    return n.op("slice", x, starts=starts, ends=ends, axes=axes, steps=steps)


@converter("Squeeze", 13, 21, 23, 24, 25, spec=Spec(ranks={1: (1, 1)}, values={1: axes()}))
def squeeze(n: NodeContext) -> Ref:
    axes = n.ints(1, "axes")
    return n.op("squeeze", n.x, axes=axes)


def _new_axes(values: list, n: NodeContext) -> str | None:
    """Unsqueeze's axes: distinct axes of the result, of rank r + len(axes)."""
    return axes(extra=len(values))(values, n)


@converter("Unsqueeze", 13, 21, 23, 24, 25,
           spec=Spec(ranks={1: (1, 1)}, values={1: _new_axes}))
def unsqueeze(n: NodeContext) -> Ref:
    return n.op("unsqueeze", n.x, axes=n.ints(1, "axes"))


@converter("Expand", 13, spec=Spec(ranks={1: (1, 1)}, values={1: at_least(0)}))
def expand(n: NodeContext) -> Ref:
    """ONNX Expand broadcasts both ways (a 1 in ``shape`` keeps x's dim): kiln's expand takes
    the broadcast shape."""
    x, shape = n.x, n.ints(1, "shape")
    out = broadcast_shapes(x.shape, shape)
    return x if out == x.shape else n.op("expand", x, shape=out)


@converter("Tile", 13, spec=Spec(
    ranks={1: (1, 1)}, values={1: all_of(count("one per axis", rank_of(0)), at_least(0))}))
def tile(n: NodeContext) -> Ref:
    """x [d0, d1] -> unsqueeze [1, d0, 1, d1] -> expand [r0, d0, r1, d1] -> reshape."""
    x, reps = n.x, n.ints(1, "repeats")
    if all(r == 1 for r in reps):
        return x
    for r, d in zip(reps, x.shape):
        if r != 1:
            static(n, d, "a tiled dimension")
    spread = n.op("unsqueeze", x, axes=tuple(range(0, 2 * x.rank, 2)))
    pairs = tuple(v for r, d in zip(reps, x.shape) for v in (r, d))
    grown = n.op("expand", spread, shape=pairs)
    return n.op("reshape", grown, shape=tuple(d if r == 1 else r * d
                                             for r, d in zip(reps, x.shape)))


def _pads_count(values: list, n: NodeContext) -> str | None:
    """Two pads per padded axis: every axis, or those the axes input lists."""
    listed = n.input(3)
    padded = listed.shape[0] if listed is not None and listed.rank == 1 else n.x.rank
    return None if len(values) == 2 * padded else f"must hold 2 x {padded} values"


@converter("Pad", 13, 18, 19, 21, 23, 24, 25, spec=Spec(
    ranks={1: (1, 1), 2: (0, 1), 3: (1, 1)},
    attrs={"mode": one_of("constant", "reflect", "edge", "wrap")},
    values={1: _pads_count, 3: axes()}))
def pad(n: NodeContext) -> Ref:
    x, mode = n.x, n.attr("mode", "constant")
    pads, r = list(n.ints(1, "pads")), n.x.rank
    axes = n.ints(3, "axes")
    if axes is not None:  # opset 18: pads for the listed axes only
        full = [0] * (2 * r)
        for i, a in enumerate(axes):
            full[a % r], full[a % r + r] = pads[i], pads[i + len(axes)]
        pads = full
    if len(pads) != 2 * r:
        raise ShapeError(f"pads {tuple(pads)} must hold 2 * rank = {2 * r} values for {x.type}")
    crops = [a for a in range(r) if pads[a] < 0 or pads[a + r] < 0]
    if crops:  # negative pads crop (kiln's pad takes none)
        x = n.op("slice", x, starts=tuple(max(-pads[a], 0) for a in crops),
                 ends=tuple(pads[a + r] if pads[a + r] < 0 else _ALL for a in crops),
                 axes=tuple(crops))
        pads = [max(p, 0) for p in pads]
    if not any(pads):
        return x
    if mode == "wrap":
        return _wrap(n, x, pads)
    if mode not in ("constant", "reflect", "edge"):
        raise n.unsupported(f"Pad mode {mode!r} is not supported")
    value = n.scalar_input(2, 0)
    value = 0 if value is None else value
    value = float(value) if isinstance(value, float) else int(value)
    return n.op("pad", x, pads=tuple(pads), mode=mode, value=value)


def _wrap(n: NodeContext, x: Ref, pads: list[int]) -> Ref:
    r = x.rank
    for a in range(r):
        before, after = pads[a], pads[a + r]
        if not (before or after):
            continue
        dim = static(n, x.shape[a], f"wrap-padded axis {a}")
        if max(before, after) > dim:
            raise n.unsupported(f"wrap pads {before}, {after} exceed the size {dim} of axis {a}")
        pieces = []
        if before:
            pieces.append(n.op("slice", x, starts=(dim - before,), ends=(dim,), axes=(a,)))
        pieces.append(x)
        if after:
            pieces.append(n.op("slice", x, starts=(0,), ends=(after,), axes=(a,)))
        x = n.op("concat", *pieces, axis=a)
    return x


# -- gathers ------------------------------------------------------------------------------------


@converter("Gather", 13, spec=Spec(attrs={"axis": axis()}, checks=(indices_in_range(),)))
def gather(n: NodeContext) -> Ref:
    return n.op("gather", n.x, n.inputs[1], axis=int(n.attr("axis", 0)))


@converter("GatherElements", 13, spec=Spec(
    ranks={0: (1, None)}, attrs={"axis": axis()},
    checks=(same_rank(0, 1), indices_in_range())))
def gather_elements(n: NodeContext) -> Ref:
    """kiln's take_along_axis broadcasts the other axes; ONNX lets indices be smaller there,
    so data is first cut to the indices' extent."""
    data, idx = n.inputs
    axis = int(n.attr("axis", 0)) % data.rank
    cut = [a for a in range(data.rank) if a != axis and idx.shape[a] != data.shape[a]]
    if cut:
        data = n.op("slice", data, starts=(0,) * len(cut),
                    ends=tuple(static(n, idx.shape[a], "an indices dimension") for a in cut),
                    axes=tuple(cut))
    return n.op("take_along_axis", data, idx, axis=axis)


def _gather_nd_shapes(n: NodeContext) -> str | None:
    """batch_dims leading dims shared, and index tuples no longer than data's other dims."""
    data, idx = n.inputs[:2]
    b = int(n.attr("batch_dims", 0))
    if b >= min(data.rank, idx.rank):
        return f"batch_dims={b} must be smaller than the ranks of {data.type} and {idx.type}"
    k = idx.shape[-1]
    if isinstance(k, int) and k > data.rank - b:
        return f"index tuples of {k} values index at most {data.rank - b} dims of {data.type}"
    if data.shape[:b] != idx.shape[:b]:
        return f"the {b} batch dims of {data.type} and {idx.type} differ"
    if idx.const is not None and isinstance(k, int) and idx.const.size:
        tuples = idx.const.reshape(-1, k)
        for j, d in enumerate(data.shape[b:b + k]):
            bad = [int(v) for v in tuples[:, j] if isinstance(d, int) and not -d <= v < d]
            if bad:
                return f"index {bad[0]} is out of range for dim {b + j} of {data.type}"
    return None


@converter("GatherND", 13, spec=Spec(ranks={0: (1, None), 1: (1, None)},
                                      attrs={"batch_dims": at_least(0)},
                                      checks=(_gather_nd_shapes,)))
def gather_nd(n: NodeContext) -> Ref:
    """Index tuples become linear indices into data flattened over the batch and indexed
    dims: one kiln gather."""
    data, idx = n.inputs
    b = int(n.attr("batch_dims", 0))
    k = static(n, idx.shape[-1], "the last dimension of GatherND's indices")
    lead = tuple(static(n, d, "a batch or indexed dimension of GatherND's data")
                 for d in data.shape[: b + k])
    inner = lead[b:]
    idx = n.cast(idx, "int64")
    strides = [math.prod(inner[j + 1:]) for j in range(k)]
    linear: Ref | None = None
    for j in range(k):
        ij = n.op("gather", idx, np.int64(j), axis=-1)
        ij = n.op("where", n.op("less", ij, np.int64(0)), n.op("add", ij, np.int64(inner[j])),
                  ij)
        term = n.op("mul", ij, np.int64(strides[j])) if strides[j] != 1 else ij
        linear = term if linear is None else n.op("add", linear, term)
    if linear is None:
        rest = tuple(static(n, d, "an indices dimension") for d in idx.shape[:-1])
        linear = n.op("full", shape=rest, value=0, dtype="int64")
    if b:
        check_constant(math.prod(lead[:b]), "GatherND's batch offsets")
        batch = np.arange(math.prod(lead[:b]), dtype=np.int64) * math.prod(inner)
        linear = n.op("add", linear, batch.reshape(lead[:b] + (1,) * (idx.rank - 1 - b)))
    flat = n.op("reshape", data, shape=(math.prod(lead),) + data.shape[b + k:])
    return n.op("gather", flat, linear, axis=0)


# -- moving channels and space ------------------------------------------------------------------


def _divisible(axes_: tuple[int, ...], square: bool) -> Check:
    """The given axes of the input divide by blocksize (its square for channels)."""

    def check(n: NodeContext) -> str | None:
        bs = int(n.attr("blocksize"))
        step = bs * bs if square else bs
        for a in axes_:
            d = n.x.shape[a]
            if isinstance(d, int) and d % step:
                return f"dim {a} of {n.x.type} does not divide by {step} (blocksize {bs})"
        return None

    return check


_BLOCKS = {"blocksize": at_least(1), "mode": one_of("DCR", "CRD")}


@converter("DepthToSpace", 13, 28, spec=Spec(ranks={0: (4, 4)}, attrs=_BLOCKS,
                                             checks=(_divisible((1,), square=True),)))
def depth_to_space(n: NodeContext) -> Ref:
    x, bs = n.x, int(n.attr("blocksize"))
    batch, c, h, w = x.shape
    c, h, w = (static(n, d, what) for d, what in ((c, "the channels"), (h, "the height"),
                                                  (w, "the width")))
    if n.attr("mode", "DCR") == "DCR":
        parts, perm = (batch, bs, bs, c // (bs * bs), h, w), (0, 3, 4, 1, 5, 2)
    else:
        parts, perm = (batch, c // (bs * bs), bs, bs, h, w), (0, 1, 4, 2, 5, 3)
    y = n.op("transpose", n.op("reshape", x, shape=parts), perm=perm)
    return n.op("reshape", y, shape=(batch, c // (bs * bs), h * bs, w * bs))


@converter("SpaceToDepth", 13, 28, spec=Spec(ranks={0: (4, 4)}, attrs=_BLOCKS,
                                             checks=(_divisible((2, 3), square=False),)))
def space_to_depth(n: NodeContext) -> Ref:
    """The inverse of DepthToSpace; opset 28 adds the CRD mode."""
    x, bs = n.x, int(n.attr("blocksize"))
    batch, c, h, w = x.shape
    c, h, w = (static(n, d, what) for d, what in ((c, "the channels"), (h, "the height"),
                                                  (w, "the width")))
    y = n.op("reshape", x, shape=(batch, c, h // bs, bs, w // bs, bs))
    crd = n.attr("mode", "DCR") == "CRD"
    y = n.op("transpose", y, perm=(0, 1, 3, 5, 2, 4) if crd else (0, 3, 5, 1, 2, 4))
    return n.op("reshape", y, shape=(batch, c * bs * bs, h // bs, w // bs))


@converter("Trilu", 14, spec=Spec(ranks={0: (2, None), 1: (0, 0)}, attrs={"upper": flag}))
def trilu(n: NodeContext) -> Ref:
    k = int(n.scalar_input(1, 0))
    return n.op("triu" if n.attr("upper", 1) else "tril", n.x, k=k)


@converter("Compress", 11, 28, spec=Spec(ranks={1: (1, 1)}, attrs={"axis": axis()}))
def compress(n: NodeContext) -> Ref:
    """A gather of the positions where the (constant) condition holds."""
    x, cond = n.x, n.const(1, "condition").reshape(-1).astype(bool)
    axis = n.attr("axis")
    if axis is None:
        x, axis = n.op("reshape", x, shape=(-1,)), 0
    return n.op("gather", x, np.flatnonzero(cond).astype(np.int64), axis=int(axis))


@converter("CenterCropPad", 18, spec=Spec(
    ranks={1: (1, 1)}, attrs={"axes": axes()},
    values={1: all_of(at_least(0), count("one per axis", lambda n: len(n.attr(
        "axes", range(n.x.rank)))))}))
def center_crop_pad(n: NodeContext) -> Ref:
    """Per axis: a centred slice to crop, a centred zero pad to grow (odd splits leave the
    extra element at the end)."""
    x, target = n.x, n.ints(1, "shape")
    axes = [a % x.rank for a in n.attr("axes", range(x.rank))]
    for a, want in zip(axes, target):
        have = static(n, x.shape[a], f"axis {a}")
        if want < have:
            start = (have - want) // 2
            x = n.op("slice", x, starts=(start,), ends=(start + want,), axes=(a,))
        elif want > have:
            pads = [0] * (2 * x.rank)
            pads[a] = (want - have) // 2
            pads[a + x.rank] = want - have - pads[a]
            x = n.op("pad", x, pads=tuple(pads))
    return x


def _sequence_lens(n: NodeContext) -> str | None:
    """time_axis and batch_axis differ, and there is one length per batch entry, each at
    most the sequence."""
    t_axis, b_axis = n.attr("time_axis", 0), n.attr("batch_axis", 1)
    if t_axis == b_axis:
        return "time_axis and batch_axis must differ"
    lens, (steps, batch) = n.input(1), (n.x.shape[t_axis], n.x.shape[b_axis])
    if lens.shape[0] != batch:
        return f"sequence_lens {lens.type} must hold one length per batch entry ({batch})"
    if lens.const is not None and isinstance(steps, int) and (
            (lens.const < 0).any() or (lens.const > steps).any()):
        return f"sequence_lens {lens.const.tolist()} must be in [0, {steps}]"
    return None


@converter("ReverseSequence", 10, 28, spec=Spec(
    ranks={0: (2, None), 1: (1, 1)},
    attrs={"time_axis": one_of(0, 1), "batch_axis": one_of(0, 1)}, checks=(_sequence_lens,)))
def reverse_sequence(n: NodeContext) -> Ref:
    """Each batch entry's first len[b] steps reversed: a take_along_axis with constant
    indices over the time axis."""
    x, lens = n.x, n.const(1, "sequence_lens").reshape(-1)
    t_axis, b_axis = int(n.attr("time_axis", 0)), int(n.attr("batch_axis", 1))
    steps = static(n, x.shape[t_axis], "the time axis")
    check_constant(steps * len(lens), "ReverseSequence's indices")
    t = np.arange(steps)[:, None]
    idx = np.where(t < lens[None, :], lens[None, :] - 1 - t, t)  # [time, batch]
    if t_axis > b_axis:
        idx = idx.T
    shape = [1] * x.rank
    shape[t_axis], shape[b_axis] = steps, len(lens)
    return n.op("take_along_axis", x, idx.reshape(shape).astype(np.int64), axis=t_axis)
