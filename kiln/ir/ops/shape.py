"""Shape ops: reshape, transpose, concat, split, slice, gather, take_along_axis, expand,
squeeze, unsqueeze, pad, flatten, tril/triu and one_hot. Symbolic dims are size expressions
(``kiln.ir.dims``): a reshape or flatten multiplies them, a concat or constant pad adds them;
where an output size would depend on a symbol in another way (a slice clamped to it, a split
of it), inference says which dimension must be static."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from kiln.errors import AttributeError_, InputError
from kiln.ir.dims import Sym, exact_quotient, symbols_in
from kiln.ir.dims import product as dims_product
from kiln.ir.ops.registry import (
    BROADCAST,
    INJECTIVE,
    REQUIRED,
    broadcast_shapes,
    fail,
    normalize_axes,
    normalize_axis,
    register,
    same_dtype,
    static_dim,
)
from kiln.ir.types import DTYPES, Dim, TensorType, is_float, to_numpy_dtype


def _moves(in_types, out_types, attrs) -> int:
    """FLOPs of a shape op: none (it moves data and does no arithmetic)."""
    return 0


def _need_rank(t: TensorType, what: str) -> None:
    if t.rank == 0:
        fail(f"{what} needs an input of rank >= 1, got {t}")


def _ints(value, what: str, allow_str: bool = False) -> tuple:
    """``value`` as a tuple of ints (and names, if allowed); fails on anything else."""
    items = (value,) if isinstance(value, (int, str)) else value
    ok = (int, str) if allow_str else int
    if not isinstance(items, tuple) or any(
        isinstance(v, bool) or not isinstance(v, ok) for v in items
    ):
        kinds = "ints or names" if allow_str else "ints"
        raise AttributeError_(f"{what} must be a tuple of {kinds}, got {value!r}")
    return items


# -- reshape -----------------------------------------------------------------------------------


def _reshape(types, attrs):
    t, target = types[0], _ints(attrs["shape"], "reshape shape", allow_str=True)
    if sum(d == -1 for d in target) > 1 or any(isinstance(d, int) and d < -1 for d in target):
        raise AttributeError_(f"reshape shape {target} may hold -1 once and no other negative")
    unknown = sorted(symbols_in(target) - symbols_in(t.shape))
    if unknown:
        fail(f"symbolic size {unknown[0]!r} in reshape shape {target} is not in input {t}")
    have = dims_product(t.shape)
    want = dims_product(d for d in target if d != -1)
    if -1 not in target:
        if have != want:
            fail(f"cannot reshape {t} to {target}: sizes differ ({have} elements, {want} in "
                 "the new shape)")
        return t.with_shape(target)
    fill = exact_quotient(have, want)  # what -1 stands for
    if fill is None:
        fail(f"cannot reshape {t} to {target}: -1 has no integer size ({have} elements "
             f"over {want})")
    return t.with_shape(tuple(fill if d == -1 else d for d in target))


def _unknowns(target: Sequence[Dim]) -> int:
    return sum(isinstance(d, str) or d == -1 for d in target)


def _name_runs(target: Sequence[Dim]) -> tuple[int, int]:
    """How many names open and close ``target`` (none close it if it is all names)."""
    lead = next((i for i, d in enumerate(target) if not isinstance(d, str)), len(target))
    trail = next((i for i, d in enumerate(reversed(target)) if not isinstance(d, str)), 0)
    return lead, trail


@register("reshape", kind=INJECTIVE, infer=_reshape, attrs={"shape": REQUIRED}, flops=_moves)
def reshape(x, shape):
    """numpy reshape (row-major); ``shape`` may hold -1 once and the input's symbolic names.

    The reference sees no types, so it sizes names this way (inference accepts no other): a
    single unknown (name or -1) becomes -1; otherwise the names opening and closing ``shape``
    take the input's sizes at the same places, and the one unknown left becomes -1.
    """
    out = list(shape)
    if _unknowns(shape) > 1:
        lead, trail = _name_runs(shape)
        out[:lead] = x.shape[:lead]
        if trail:
            out[-trail:] = x.shape[-trail:]
    return x.reshape([-1 if isinstance(d, str) else d for d in out]).copy()


# -- transpose, concat, split ------------------------------------------------------------------


def _perm(t: TensorType, perm) -> tuple[int, ...]:
    if perm is None:
        return tuple(reversed(range(t.rank)))
    perm = _ints(perm, "perm")
    out = tuple(p % t.rank if -t.rank <= p < t.rank else -1 for p in perm)
    if sorted(out) != list(range(t.rank)):
        fail(f"perm {perm} is not a permutation of the {t.rank} axes of {t}")
    return out


def _transpose(types, attrs):
    t = types[0]
    return t.with_shape(tuple(t.shape[p] for p in _perm(t, attrs["perm"])))


@register("transpose", kind=INJECTIVE, infer=_transpose, attrs={"perm": None}, flops=_moves)
def transpose(x, perm):
    """Permute axes; ``perm=None`` reverses them."""
    return np.transpose(x, None if perm is None else tuple(perm)).copy()


def _concat(types, attrs):
    dtype, t0 = same_dtype(types), types[0]
    _need_rank(t0, "concat")
    axis = normalize_axis(attrs["axis"], t0.rank)
    for t in types:
        if t.rank != t0.rank or any(
            a != b for i, (a, b) in enumerate(zip(t.shape, t0.shape)) if i != axis
        ):
            fail(f"concat along axis {axis} needs equal other dims, got {t0} and {t}")
    sizes = [t.shape[axis] for t in types]
    if len(sizes) == 1:
        size = sizes[0]
    else:
        size = sum(sizes)  # (an expression where some are symbolic)
    return TensorType(t0.shape[:axis] + (size,) + t0.shape[axis + 1 :], dtype)


@register("concat", kind=INJECTIVE, infer=_concat, attrs={"axis": 0}, arity=(1, None), flops=_moves)
def concat(*xs, axis):
    return np.concatenate(xs, axis=axis)


def _split(types, attrs):
    t, sizes = types[0], _ints(attrs["sizes"], "split sizes", allow_str=True)
    _need_rank(t, "split")
    axis = normalize_axis(attrs["axis"], t.rank)
    dim = t.shape[axis]
    # sizes may be expressions of the axis's symbols (a symbolic axis cut in two:
    # ((S + 1)//2, -((S + 1)//2) + S)): they must add up to it for every value of them
    if not sizes or any(isinstance(s, int) and s < 0 for s in sizes) or sum(sizes) != dim:
        fail(f"split sizes {sizes} must be >= 0 and sum to dim {dim} of axis {axis}")
    return [t.with_shape(t.shape[:axis] + (s,) + t.shape[axis + 1 :]) for s in sizes]


@register("split", kind=INJECTIVE, infer=_split, attrs={"axis": 0, "sizes": REQUIRED}, flops=_moves)
def split(x, axis, sizes):
    """Cut ``x`` along ``axis`` into pieces of the given sizes (one output each)."""
    if any(s < 0 for s in sizes):  # (symbolic sizes, evaluated: too small an axis)
        raise InputError(f"split of an axis of {x.shape[axis]} into sizes {list(sizes)}: a "
                         "size is negative")
    edges = np.cumsum(sizes)[:-1]
    return [p.copy() for p in np.split(x, edges, axis=axis)]


# -- slice -------------------------------------------------------------------------------------


def _slice_args(rank: int, attrs) -> list[tuple[int, int, int, int]]:
    """Validated (axis, start, end, step) per sliced axis."""
    starts, ends = _ints(attrs["starts"], "starts"), _ints(attrs["ends"], "ends", True)
    axes = tuple(range(len(starts))) if attrs["axes"] is None else _ints(attrs["axes"], "axes")
    steps = (1,) * len(starts) if attrs["steps"] is None else _ints(attrs["steps"], "steps")
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise AttributeError_(f"slice starts/ends/axes/steps differ in length: {attrs}")
    if 0 in steps:
        raise AttributeError_(f"slice steps {steps} must be nonzero")
    axes = tuple(normalize_axis(a, rank) for a in axes)
    if len(set(axes)) != len(axes):
        fail(f"repeated axis in slice axes {attrs['axes']}")
    return list(zip(axes, starts, ends, steps))


def _slice_range(dim: int, start: int, end: int, step: int) -> range:
    """The indices ONNX Slice takes along one axis, clamping as its spec says. Python slicing
    agrees except for a start before the first element with a negative step: Python takes
    nothing, ONNX (and onnxruntime) start at element 0."""
    start, end = start + dim if start < 0 else start, end + dim if end < 0 else end
    if step > 0:
        return range(min(max(start, 0), dim), min(max(end, 0), dim), step)
    return range(min(max(start, 0), dim - 1), min(max(end, -1), dim - 1), step)


_TO_END = 2**31 - 1  # an end at least this is "to the end" (ONNX exporters write INT64_MAX)


def symbolic_slice(dim: Sym, start: int, end: int, step: int) -> tuple[Dim, Dim, int] | None:
    """A step-1 slice of an axis of symbolic size ``dim`` whose bounds count from one end:
    (first index, length, least size of the axis it needs), or None for any other slice.
    ``x[:, 0]``, ``x[:, -1]``, ``x[:, 1:]``, ``x[:, :-1]`` and ``x[:, 2:5]`` are such
    slices; numpy would clamp them on a shorter axis, kiln calls that an error (the model's
    sizes are then too small for it, and the compiled model checks before it runs)."""
    if step != 1:
        return None
    to_end = end >= _TO_END
    if start >= 0 and to_end:
        return start, dim - start, start
    if start >= 0 and end >= 0:
        return start, max(end - start, 0), end
    if start < 0 and (to_end or end < 0):
        stop = 0 if to_end else end
        return dim + start, max(stop - start, 0), -start
    if start >= 0 and end < 0:
        return start, dim + end - start, start - end
    return None


def slice_requirements(x: TensorType, attrs) -> list[tuple[Dim, int, int | None]]:
    """(size expression, least value, greatest value or None) that a slice of ``x`` needs:
    a symbolic axis long enough for its bounds (``symbolic_slice``), and an end that is a
    symbolic size within its static axis (``position_ids[:, :seq]`` of a [1, 512] buffer:
    0 <= seq <= 512)."""
    out: list[tuple[Dim, int, int | None]] = []
    for axis, start, end, step in _slice_args(x.rank, attrs):
        d = x.shape[axis]
        if isinstance(end, Sym):
            out.append((end, start, d if isinstance(d, int) else None))
        elif isinstance(d, Sym) and not (start == 0 and step == 1 and end >= _TO_END):
            sliced = symbolic_slice(d, start, end, step)
            if sliced is not None and sliced[2] > 0:
                out.append((d, sliced[2], None))
    return out


def _slice(types, attrs):
    t = types[0]
    shape = list(t.shape)
    for axis, start, end, step in _slice_args(t.rank, attrs):
        if isinstance(end, Sym):
            if not (isinstance(start, int) and 0 <= start and step == 1) or \
                    isinstance(shape[axis], Sym) and end != shape[axis]:
                fail(f"a slice ending at the symbolic size {end} must start at a "
                     f"non-negative index with step 1 on a static axis, got "
                     f"{start}:{end}:{step} of {shape[axis]}")
            shape[axis] = end - start  # (the model checks start <= end <= the axis)
            continue
        if isinstance(shape[axis], Sym):
            if start == 0 and step == 1 and end >= _TO_END:
                continue  # the whole of a symbolic dim: keeps the name
            sliced = symbolic_slice(shape[axis], start, end, step)
            if sliced is not None:
                shape[axis] = sliced[1]
                continue
        dim = static_dim(shape[axis], f"sliced axis {axis}")
        shape[axis] = len(_slice_range(dim, start, end, step))
    return t.with_shape(tuple(shape))


_SLICE_ATTRS = {"starts": REQUIRED, "ends": REQUIRED, "axes": None, "steps": None}


@register("slice", kind=INJECTIVE, infer=_slice, attrs=_SLICE_ATTRS, flops=_moves)
def slice_(x, starts, ends, axes, steps):
    """ONNX Slice: per axis, take ``start:end:step`` after clamping (huge sentinels allowed)."""
    index = [slice(None)] * x.ndim
    axes = range(len(starts)) if axes is None else axes
    steps = (1,) * len(starts) if steps is None else steps
    for axis, start, end, step in zip(axes, starts, ends, steps):
        r = _slice_range(x.shape[axis], start, end, step)
        index[axis] = slice(r.start, None if r.stop < 0 else r.stop, r.step)
    return x[tuple(index)].copy()


# -- gather, take_along_axis, one_hot ----------------------------------------------------------


def _require_index(t: TensorType, what: str) -> None:
    if t.dtype not in ("int32", "int64"):
        fail(f"{what} must be int32 or int64, got {t.dtype}")


def _check_range(idx: np.ndarray, size: int, what: str) -> np.ndarray:
    """``idx`` with negatives counted from the end; out-of-range indices raise."""
    bad = (idx < -size) | (idx >= size)
    if bad.any():  # a bad input, as onnxruntime and PyTorch say (compiled kernels check too)
        at = [int(i) for i in np.argwhere(bad)[0]]
        raise InputError(f"{what} {idx[tuple(at)]} is out of range for size {size} "
                         f"(-{size}..{size - 1}) at {at}")
    return np.where(idx < 0, idx + size, idx).astype(np.int64)


def _gather(types, attrs):
    data, idx = types
    _require_index(idx, "gather indices")
    _need_rank(data, "gather")
    axis = normalize_axis(attrs["axis"], data.rank)
    return data.with_shape(data.shape[:axis] + idx.shape + data.shape[axis + 1 :])


@register("gather", kind=INJECTIVE, infer=_gather, attrs={"axis": 0}, arity=2, flops=_moves)
def gather(data, indices, axis):
    """``np.take(data, indices, axis)``."""
    return np.take(data, _check_range(indices, data.shape[axis], "gather index"), axis=axis)


def _take_along_axis(types, attrs):
    data, idx = types
    _require_index(idx, "take_along_axis indices")
    if data.rank != idx.rank:
        fail(f"take_along_axis needs data and indices of equal rank, got {data} and {idx}")
    _need_rank(data, "take_along_axis")
    axis = normalize_axis(attrs["axis"], data.rank)
    shape = tuple(
        i if a == axis else broadcast_shapes((d,), (i,))[0]
        for a, (d, i) in enumerate(zip(data.shape, idx.shape))
    )
    return data.with_shape(shape)


@register("take_along_axis", kind=INJECTIVE, infer=_take_along_axis, attrs={"axis": REQUIRED},
          arity=2, flops=_moves)
def take_along_axis(data, indices, axis):
    """``np.take_along_axis``: the other axes of data and indices broadcast."""
    idx = _check_range(indices, data.shape[axis], "take_along_axis index")
    return np.take_along_axis(data, idx, axis=axis)


def _one_hot(types, attrs):
    _require_index(types[0], "one_hot indices")
    depth = attrs["depth"]
    if isinstance(depth, bool) or not isinstance(depth, int) or depth <= 0:
        raise AttributeError_(f"one_hot depth must be a positive int, got {depth!r}")
    if attrs["dtype"] not in DTYPES:
        raise AttributeError_(f"unknown dtype {attrs['dtype']!r}; kiln knows {', '.join(DTYPES)}")
    return TensorType(types[0].shape + (depth,), attrs["dtype"])


@register("one_hot", kind=INJECTIVE, infer=_one_hot, attrs={"depth": REQUIRED, "dtype": "float32"},
          flops=_moves)
def one_hot(indices, depth, dtype):
    """1 where the last axis equals the index (negatives count from the end), else 0."""
    idx = _check_range(indices, depth, "one_hot index")
    return (idx[..., None] == np.arange(depth)).astype(to_numpy_dtype(dtype))


# -- expand, squeeze, unsqueeze, flatten -------------------------------------------------------


def _expand(types, attrs):
    t, target = types[0], _ints(attrs["shape"], "expand shape", allow_str=True)
    lead = len(target) - t.rank
    if any(isinstance(d, int) and d < 0 for d in target):
        raise AttributeError_(f"expand shape {target} has a negative size")
    if lead < 0:
        fail(f"cannot expand {t} to fewer dims {target}")
    for i, want in enumerate(target):
        have = t.shape[i - lead] if i >= lead else 1
        if have != want and have != 1:  # (1 grows to a symbolic size as to any other)
            fail(f"cannot expand {t} to {target}: dim {have} does not broadcast to {want}")
    return t.with_shape(target)


@register("expand", kind=BROADCAST, infer=_expand, attrs={"shape": REQUIRED}, flops=_moves)
def expand(x, shape):
    """``np.broadcast_to``; a name in ``shape`` must sit where the input has the same name."""
    lead = len(shape) - x.ndim
    size = [x.shape[i - lead] if isinstance(d, str) else d for i, d in enumerate(shape)]
    return np.broadcast_to(x, size).copy()


def _squeeze(types, attrs):
    t, axes = types[0], attrs["axes"]
    if axes is None:
        if not t.is_static:
            fail(f"squeeze with axes=None is ambiguous on symbolic shape {t}; give axes")
        axes = tuple(i for i, d in enumerate(t.shape) if d == 1)
    axes = normalize_axes(_ints(axes, "axes"), t.rank)
    for a in axes:
        if t.shape[a] != 1:
            fail(f"cannot squeeze axis {a} of {t}: its size is {t.shape[a]}, not 1")
    return t.with_shape(tuple(d for i, d in enumerate(t.shape) if i not in axes))


@register("squeeze", kind=INJECTIVE, infer=_squeeze, attrs={"axes": None}, flops=_moves)
def squeeze(x, axes):
    """Drop size-1 axes (all of them when ``axes`` is None)."""
    return np.squeeze(x, axis=axes).copy()


def _unsqueeze(types, attrs):
    t = types[0]
    axes = _ints(attrs["axes"], "axes")
    rank = t.rank + len(axes)
    axes = normalize_axes(axes, rank)
    dims = iter(t.shape)
    return t.with_shape(tuple(1 if i in axes else next(dims) for i in range(rank)))


@register("unsqueeze", kind=INJECTIVE, infer=_unsqueeze, attrs={"axes": REQUIRED}, flops=_moves)
def unsqueeze(x, axes):
    """Insert size-1 axes; ``axes`` index the output (as ``np.expand_dims``)."""
    return np.expand_dims(x, axes).copy()


def _flatten_range(rank: int, attrs) -> tuple[int, int]:
    rank = max(rank, 1)  # a scalar flattens to shape (1,), as in PyTorch
    start, end = normalize_axis(attrs["start_dim"], rank), normalize_axis(attrs["end_dim"], rank)
    if start > end:
        fail(f"flatten start_dim {attrs['start_dim']} is after end_dim {attrs['end_dim']}")
    return start, end


def _flatten(types, attrs):
    t = types[0]
    shape = t.shape or (1,)
    start, end = _flatten_range(t.rank, attrs)
    merged = dims_product(shape[start : end + 1])
    return t.with_shape(shape[:start] + (merged,) + shape[end + 1 :])


@register("flatten", kind=INJECTIVE, infer=_flatten, attrs={"start_dim": 1, "end_dim": -1},
          flops=_moves)
def flatten(x, start_dim, end_dim):
    """PyTorch flatten: merge dims start_dim..end_dim (inclusive) into one."""
    shape = x.shape or (1,)
    start, end = _flatten_range(x.ndim, {"start_dim": start_dim, "end_dim": end_dim})
    merged = math.prod(shape[start : end + 1])
    return x.reshape(shape[:start] + (merged,) + shape[end + 1 :]).copy()


# -- pad, tril, triu ---------------------------------------------------------------------------

_PAD_MODES = ("constant", "reflect", "edge")  # numpy's names (PyTorch calls edge 'replicate')


def _pad(types, attrs):
    t, pads, mode = types[0], _ints(attrs["pads"], "pads"), attrs["mode"]
    if mode not in _PAD_MODES:
        raise AttributeError_(f"pad mode {mode!r} is not one of {', '.join(_PAD_MODES)}")
    if min(pads, default=0) < 0:
        raise AttributeError_(f"pads {pads} must be non-negative")
    if len(pads) != 2 * t.rank:
        fail(f"pads {pads} must hold {2 * t.rank} ints (begins, then ends) for {t}")
    value = attrs["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AttributeError_(f"pad value must be a number, got {value!r}")
    if not is_float(t.dtype) and not float(value).is_integer():
        raise AttributeError_(f"pad value {value} is not exact in {t.dtype}")
    shape = []
    for i, d in enumerate(t.shape):
        before, after = pads[i], pads[i + t.rank]
        if before or after:
            if mode != "constant":  # (its bounds depend on the size)
                d = static_dim(d, f"axis {i} padded in mode {mode!r}")
            if mode == "reflect" and max(before, after) >= d:
                fail(f"reflect pads {before}, {after} must be below the size {d} of axis {i}")
            if mode == "edge" and d == 0:
                fail(f"edge padding needs a non-empty axis {i}")
            d = before + d + after
        shape.append(d)
    return t.with_shape(tuple(shape))


@register("pad", kind=INJECTIVE, infer=_pad,
          attrs={"pads": REQUIRED, "mode": "constant", "value": 0.0}, flops=_moves)
def pad(x, pads, mode, value):
    """``np.pad`` with ``pads`` = begins then ends per axis; ``value`` fills mode 'constant'."""
    widths = list(zip(pads[: x.ndim], pads[x.ndim :]))
    if mode == "constant":
        return np.pad(x, widths, mode="constant", constant_values=np.asarray(value, x.dtype))
    return np.pad(x, widths, mode=mode)


def _triangle(types, attrs):
    t = types[0]
    if t.rank < 2:
        fail(f"tril/triu needs rank >= 2, got {t}")
    k = attrs["k"]
    if isinstance(k, bool) or not isinstance(k, int):
        raise AttributeError_(f"diagonal offset k must be an int, got {k!r}")
    return t


@register("tril", kind=INJECTIVE, infer=_triangle, attrs={"k": 0}, flops=_moves)
def tril(x, k):
    """Keep elements on and below diagonal ``k`` of the last two axes; zero the rest."""
    return np.tril(x, k)


@register("triu", kind=INJECTIVE, infer=_triangle, attrs={"k": 0}, flops=_moves)
def triu(x, k):
    """Keep elements on and above diagonal ``k`` of the last two axes; zero the rest."""
    return np.triu(x, k)
