"""Blocked data layouts (the NeoCPU idea): layout transforms, and the convolution and pools
that work on activations kept in ``NCHW{c}c`` form between layers.

A layout string names the axes in memory order, TVM's way: an upper-case letter is a primal
axis, ``{f}x`` (lower case, with a factor) the inner block of the primal axis ``X``. So
``NCHW16c`` is ``[N, C/16, H, W, 16]`` and ``OIHW8i16o`` is ``[O/16, I/8, kh, kw, 8, 16]``.
A blocked axis must divide by its factor (no padding), so every transform is a permutation
of elements and has an exact inverse.

- ``layout_transform(x; src_layout, dst_layout)``: any relayout between two layouts of the
  same primal axes;
- ``conv2d_nchwc(x[N, C/ic, H, W, ic], w[O/oc, C/ic, kh, kw, ic, oc])``: conv2d (groups 1,
  no bias: a bias is a broadcast ``add`` of a ``[1, O/oc, 1, 1, oc]`` constant) whose output
  is ``[N, O/oc, OH, OW, oc]``. ``tile`` optionally fixes the register tile of the generated
  kernel, ``(rows, cols)`` of output pixels (a schedule choice recorded in the IR, so that a
  measured choice shows in the printed graph; it does not change the result);
- ``max_pool2d_nchwc``, ``avg_pool2d_nchwc``, ``global_avg_pool2d_nchwc``: the pools on
  ``[N, C/c, H, W, c]``, with the attributes of their NCHW forms.
"""

from __future__ import annotations

import re

import numpy as np

from kiln.ir.ops import nn
from kiln.ir.ops.registry import (
    ANCHOR,
    INJECTIVE,
    LOW,
    OPS,
    REQUIRED,
    bad_attr,
    fail,
    numel,
    register,
    same_dtype,
)
from kiln.ir.types import Dim, TensorType

_AXIS = re.compile(r"(\d*)([A-Za-z])")


def parse_layout(layout: str) -> tuple[tuple[str, int], ...]:
    """``"NCHW16c"`` -> ``(("N", 0), ("C", 0), ("H", 0), ("W", 0), ("c", 16))``: each axis
    with its block factor (0 for a primal axis). Raises AttributeError_ on a bad string."""
    if not isinstance(layout, str) or not layout:
        bad_attr(f"a layout must be a non-empty string like 'NCHW16c', got {layout!r}")
    axes, pos = [], 0
    for m in _AXIS.finditer(layout):
        if m.start() != pos:
            break
        pos = m.end()
        digits, letter = m.groups()
        if letter.isupper() and digits:
            bad_attr(f"layout {layout!r}: primal axis {letter} takes no factor")
        if letter.islower() and (not digits or int(digits) < 1):
            bad_attr(f"layout {layout!r}: block axis {letter} needs a positive factor "
                     f"(e.g. 16{letter})")
        axes.append((letter, int(digits or 0)))
    letters = [a for a, _ in axes]
    if pos != len(layout) or len(set(letters)) != len(letters):
        bad_attr(f"layout {layout!r}: axes are letters, each once, blocks like '16c'")
    missing = [a for a in letters if a.islower() and a.upper() not in letters]
    if missing:
        bad_attr(f"layout {layout!r}: block axes {missing} have no primal axis")
    return tuple(axes)


def _factors(axes) -> dict[str, int]:
    """Primal letter -> block factor (1 when the axis is not blocked)."""
    out = {a: 1 for a, _ in axes if a.isupper()}
    out.update({a.upper(): f for a, f in axes if a.islower()})
    return out


def transform_shape(shape: tuple[Dim, ...], src: str, dst: str) -> tuple[Dim, ...]:
    """The shape of a ``src``-layout tensor of ``shape`` relaid out as ``dst``."""
    sa, da = parse_layout(src), parse_layout(dst)
    if len(shape) != len(sa):
        fail(f"x has rank {len(shape)} but layout {src!r} has {len(sa)} axes")
    if {a for a, _ in sa if a.isupper()} != {a for a, _ in da if a.isupper()}:
        bad_attr(f"layouts {src!r} and {dst!r} do not have the same primal axes")
    sf, df = _factors(sa), _factors(da)
    primal: dict[str, Dim] = {}
    for (a, _), d in zip(sa, shape):
        if a.isupper():
            primal[a] = d
    for (a, f), d in zip(sa, shape):
        if a.islower() and d != f:
            fail(f"axis {a} of layout {src!r} must have size {f}, got {d}")
    for a, d in primal.items():
        if sf[a] != df[a] and not isinstance(d, int):
            fail(f"axis {a} is re-blocked, so it must be static, got {d!r}")
        if isinstance(d, int):
            primal[a] = d * sf[a]
            if primal[a] % df[a]:
                fail(f"axis {a} of size {primal[a]} does not divide into blocks of {df[a]} "
                     f"(layout {dst!r})")
    return tuple(f if a.islower() else (primal[a] // df[a] if isinstance(primal[a], int)
                                        else primal[a]) for a, f in da)


def relayout_plan(shape: tuple[int, ...], src: str, dst: str
                  ) -> tuple[list[int], list[int], list[int]]:
    """``(perm, split, perm2)``: ``x.transpose(perm).reshape(split).transpose(perm2)`` relays
    out ``x`` (static ``shape``) from ``src`` to ``dst``. ``perm`` brings each primal axis's
    outer block next to its inner one (src's primal order); ``split`` cuts the axes blocked in
    ``dst``; ``perm2`` puts them in dst's order."""
    sa, da = parse_layout(src), parse_layout(dst)
    pos = {a: i for i, (a, _) in enumerate(sa)}
    order = [a for a, _ in sa if a.isupper()]
    perm = [i for a in order for i in (pos[a], pos.get(a.lower())) if i is not None]
    df = {a.upper(): f for a, f in da if a.islower()}  # the axes blocked in dst
    split, names = [], []
    for a in order:
        size = int(np.prod([shape[i] for i in (pos[a], pos.get(a.lower())) if i is not None]))
        split += [size // df[a], df[a]] if a in df else [size]
        names += [a, a.lower()] if a in df else [a]
    where = {n: i for i, n in enumerate(names)}
    return perm, split, [where[a] for a, _ in da]


def relayout(x: np.ndarray, src: str, dst: str) -> np.ndarray:
    """The numpy relayout of ``x`` from ``src`` to ``dst`` (a permutation of its elements)."""
    perm, split, perm2 = relayout_plan(x.shape, src, dst)
    return np.ascontiguousarray(x.transpose(perm).reshape(split).transpose(perm2))


def _transform_infer(types, attrs):
    return types[0].with_shape(transform_shape(types[0].shape, attrs["src_layout"],
                                               attrs["dst_layout"]))


@register("layout_transform", kind=INJECTIVE, infer=_transform_infer,
          attrs={"src_layout": REQUIRED, "dst_layout": REQUIRED}, flops=lambda i, o, a: 0)
def layout_transform(x, src_layout, dst_layout):
    """x relaid out from ``src_layout`` to ``dst_layout`` (see the module docstring)."""
    return relayout(x, src_layout, dst_layout)


# -- blocked NCHWc ops -------------------------------------------------------------------------


def block_of(t: TensorType) -> int:
    """The channel block ``c`` of an ``NCHW{c}c`` tensor type."""
    return int(t.shape[-1])


def nchwc(c: int) -> str:
    return f"NCHW{c}c"


def _unblocked(x: TensorType, what: str = "x") -> TensorType:
    """The NCHW type of an ``NCHW{c}c`` input."""
    if x.rank != 5 or not isinstance(x.shape[-1], int):
        fail(f"{what} must be blocked as [N, C/c, H, W, c] (rank 5), got {x}")
    return x.with_shape(transform_shape(x.shape, nchwc(x.shape[-1]), "NCHW"))


def _conv_infer(types, attrs):
    x, w = types
    same_dtype(types)
    if w.rank != 6:
        fail(f"weight must be blocked as [O/oc, C/ic, kh, kw, ic, oc] (rank 6), got {w}")
    x4 = _unblocked(x)
    if w.shape[1] != x.shape[1] or w.shape[4] != x.shape[4]:
        fail(f"weight {w} does not match x's channel blocks {x.shape[1]} x {x.shape[4]}")
    tile = attrs["tile"]
    if tile is not None and (not isinstance(tile, tuple) or len(tile) != 2 or not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in tile)):
        bad_attr(f"tile must be None or (rows, cols) of positive ints, got {tile!r}")
    w4 = w.with_shape(transform_shape(w.shape, _weight_layout(w), "OIHW"))
    y = OPS["conv2d"].infer([x4, w4], {**_conv2d_attrs(attrs), "groups": 1})
    return y.with_shape(transform_shape(y.shape, "NCHW", nchwc(w.shape[5])))


def _weight_layout(w: TensorType) -> str:
    return f"OIHW{w.shape[4]}i{w.shape[5]}o"


def _conv2d_attrs(attrs) -> dict:
    return {k: attrs[k] for k in ("strides", "pads", "dilations")}


def _conv_flops(in_types, out_types, attrs):
    w = in_types[1].shape
    return 2 * numel(out_types[0].shape) * w[1] * w[2] * w[3] * w[4]


@register("conv2d_nchwc", kind=ANCHOR,
          precision=LOW, epilogue=True, infer=_conv_infer, arity=2, flops=_conv_flops,
          attrs={"strides": (1, 1), "pads": (0, 0, 0, 0), "dilations": (1, 1), "tile": None})
def conv2d_nchwc(x, w, strides, pads, dilations, tile):
    """conv2d on x[N, C/ic, H, W, ic] and w[O/oc, C/ic, kh, kw, ic, oc] -> [N, O/oc, OH,
    OW, oc] (``tile`` is a schedule choice and does not change the result)."""
    x4 = relayout(x, nchwc(x.shape[-1]), "NCHW")
    w4 = relayout(w, f"OIHW{w.shape[4]}i{w.shape[5]}o", "OIHW")
    y = nn.conv2d(x4, w4, None, strides=strides, pads=pads, dilations=dilations, groups=1)
    return relayout(y, "NCHW", nchwc(w.shape[5]))


def _depthwise_infer(types, attrs):
    x, w = types
    same_dtype(types)
    c = block_of(x)
    if w.rank != 5 or w.shape[1] != 1 or w.shape[0] != x.shape[1] or w.shape[4] != c:
        fail(f"weight must be blocked as [C/c, 1, kh, kw, c] = [{x.shape[1]}, 1, kh, kw, {c}] "
             f"to match x, got {w}")
    x4 = _unblocked(x)
    w4 = w.with_shape(transform_shape(w.shape, f"OIHW{c}o", "OIHW"))
    y = OPS["conv2d"].infer([x4, w4], {**_conv2d_attrs(attrs), "groups": x4.shape[1]})
    return y.with_shape(transform_shape(y.shape, "NCHW", nchwc(c)))


def _depthwise_flops(in_types, out_types, attrs):
    kh, kw = in_types[1].shape[2:4]
    return 2 * numel(out_types[0].shape) * kh * kw


@register("depthwise_conv2d_nchwc", kind=ANCHOR,
          precision=LOW, epilogue=True, infer=_depthwise_infer,
          arity=2, flops=_depthwise_flops,
          attrs={"strides": (1, 1), "pads": (0, 0, 0, 0), "dilations": (1, 1)})
def depthwise_conv2d_nchwc(x, w, strides, pads, dilations):
    """Depthwise conv2d (one filter per channel) on x[N, C/c, H, W, c] and w[C/c, 1, kh,
    kw, c] -> [N, C/c, OH, OW, c]."""
    c = x.shape[-1]
    x4 = relayout(x, nchwc(c), "NCHW")
    w4 = relayout(w, f"OIHW{c}o", "OIHW")
    y = nn.conv2d(x4, w4, None, strides=strides, pads=pads, dilations=dilations,
                  groups=x4.shape[1])
    return relayout(y, "NCHW", nchwc(c))


def _pool(op: str):
    """Register ``{op}_nchwc``: the NCHW op ``op`` on an ``NCHW{c}c`` input."""
    base = OPS[op]

    def infer(types, attrs):
        y = base.infer([_unblocked(types[0])], attrs)
        return y.with_shape(transform_shape(y.shape, "NCHW", nchwc(block_of(types[0]))))

    def flops(in_types, out_types, attrs):
        t = [_unblocked(in_types[0])]
        y = [_unblocked(out_types[0], "y")]
        return base.flops(t, y, attrs) if base.flops else 0

    def reference(x, **attrs):
        layout = nchwc(x.shape[-1])
        y = base.reference(relayout(x, layout, "NCHW"), **attrs)
        return relayout(np.asarray(y), "NCHW", layout)

    reference.__doc__ = f"{op} on [N, C/c, H, W, c]: the same windows, channels blocked."
    register(f"{op}_nchwc", kind=base.kind,
             precision=base.precision, infer=infer, attrs=base.attrs, flops=flops,
             epilogue=base.epilogue, prologue=base.prologue)(reference)


for _op in ("max_pool2d", "avg_pool2d", "global_avg_pool2d"):
    _pool(_op)

BLOCKED_OPS = ("conv2d_nchwc", "depthwise_conv2d_nchwc", "max_pool2d_nchwc",
               "avg_pool2d_nchwc", "global_avg_pool2d_nchwc")
