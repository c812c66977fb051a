"""TE builders of the blocked-layout ops (``kiln/ir/ops/layout.py``).

- ``layout_transform``: one gather stage, ``out[dst index] = x[src index]`` through the
  primal coordinates; into a blocked layout it is a ``pack`` stage (rows in parallel, the
  block axis vectorized), otherwise an injective one.
- ``conv2d_nchwc``: the stages of ``conv.py``'s blocked convolution without its layout
  changes: the input is already ``[N, C/ic, H, W, ic]`` and the weight already packed (a
  constant folded at compile time), so the kernel is (zero padding ->) the register-tiled
  ``conv_nchwc`` stage -> the blocked output, which the conv schedule writes from the tile
  together with any fused epilogue (bias, residual add, relu). A bfloat16 conv of
  whole-channel blocks (NHWC, what the layout pass plans for bf16) is an im2col GEMM on
  kiln's native kernel instead (``conv.conv_gemm``).
- the pools: the NCHW windows with the channel block innermost, vectorized.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

from kiln.codegen.lower import lowering
from kiln.codegen.ops import common as c
from kiln.codegen.ops.common import const, dtype_of, shape_of
from kiln.codegen.ops.conv import (
    blocked_conv,
    conv_gemm,
    pack_conv_weight_native,
    reg_cols,
    reg_rows,
)
from kiln.codegen.ops.gemm_native import BF16, native
from kiln.codegen.ops.nn import spatial_mean
from kiln.codegen.ops.reduce import reducer
from kiln.codegen.pack import PackPlan, packer
from kiln.ir.graph import Node
from kiln.ir.ops.layout import parse_layout


@lowering("layout_transform")
def layout_transform(inputs, attrs, out_types):
    x = inputs[0]
    src, dst = parse_layout(attrs["src_layout"]), parse_layout(attrs["dst_layout"])
    dst_sizes = dict(zip((a for a, _ in dst), out_types[0].shape))
    src_pos = {a: i for i, (a, _) in enumerate(src)}
    src_factor = dict(src)

    def fn(*idx):
        at = dict(zip((a for a, _ in dst), idx))
        index = [None] * len(src)
        for a in (a for a, _ in src if a.isupper()):
            primal = at[a] * dst_sizes[a.lower()] + at[a.lower()] if a.lower() in at else at[a]
            if a.lower() in src_pos:
                f = src_factor[a.lower()]
                index[src_pos[a]], index[src_pos[a.lower()]] = primal // f, primal % f
            else:
                index[src_pos[a]] = primal
        return x[tuple(index)]

    ann = {"kiln.sched": "pack"} if dst[-1][0].islower() and len(dst) >= 3 else {}
    return te.compute(tuple(out_types[0].shape), fn, name="layout_transform", attrs=ann)


def _tile(attrs, oh: int, ow: int, block: int) -> tuple[int, int, int, int]:
    """(reg_h, oh_pad, reg_n, ow_pad): the register tile (``tile`` attribute or the
    heuristic of ``conv.py``, its accumulators shared by the vectors of a ``block``-channel
    output block) and the output extents padded to a multiple of it."""
    if attrs.get("tile"):
        reg_h, reg_n = attrs["tile"]
        reg_h, reg_n = min(reg_h, oh), min(reg_n, ow)
    else:
        tiles = c.tiling(attrs)
        pixels = max(1, tiles.conv_pixels // max(1, block // tiles.lanes))
        reg_n, _ = reg_cols(ow, pixels)
        reg_h, _ = reg_rows(oh, reg_n, pixels)
    return reg_h, -(-oh // reg_h) * reg_h, reg_n, -(-ow // reg_n) * reg_n


def _padded(x, attrs, kernel: tuple[int, int], out_pad: tuple[int, int],
            stage: bool = True):
    """x[N, C/c, H, W, c] zero padded so that every tap of an (OHp, OWp) = ``out_pad``
    output reads inside it (x itself when it already does); a stage of its own, or
    (``stage=False``) a guard inlined into each tap."""
    n, cb, h, wd, icb = shape_of(x)
    (kh, kw), (oh_pad, ow_pad) = kernel, out_pad
    (sh, sw), (dh, dw), (top, left) = attrs["strides"], attrs["dilations"], attrs["pads"][:2]
    hp = (oh_pad - 1) * sh + (kh - 1) * dh + 1
    wp = (ow_pad - 1) * sw + (kw - 1) * dw + 1
    if top == left == 0 and hp <= h and wp <= wd:
        return x  # every tap reads inside x: no padding stage
    zero = const(0, dtype_of(x))

    def pad(b, cc, i, j, ci):
        hi, wi = i - top, j - left
        inside = tirx.all(hi >= 0, hi < h, wi >= 0, wi < wd)
        return tirx.if_then_else(inside, x[b, cc, hi, wi, ci], zero)

    ann = {"kiln.sched": "pack"} if stage else {}
    return te.compute((n, cb, hp, wp, icb), pad, name="pad", attrs=ann)


@packer("conv2d_nchwc", 1)
def _nchwc_weight(node: Node, array: np.ndarray, attrs: dict) -> PackPlan | None:
    if native(attrs, node.inputs[0].dtype, array.dtype.name) is not BF16:
        return None
    # [O/oc, C/ic, kh, kw, ic, oc] -> [kh, kw, C, O] -> the native GEMM's B
    ob, cb, kh, kw, ic, oc = array.shape
    hwio = array.transpose(2, 3, 1, 4, 0, 5).reshape(kh, kw, cb * ic, ob * oc)
    return PackPlan("bf16pairs", pack_conv_weight_native(BF16, hwio), {"_bf16_w": (kh, kw)})


def _conv2d_nchwc_bf16(x, w, attrs, out_shape):
    """A blocked bf16 conv on the native GEMM (``conv.conv_gemm``): in whole-channel
    blocks (``[N, 1, H, W, C]``, NHWC) its input is read in place and its sums come out in
    the output's layout, ``[N, OH*OW, O]``: no layout change either way."""
    n, cb, h, wd, ic = shape_of(x)
    ch = cb * ic
    oc = out_shape[4]
    oh, ow = out_shape[2], out_shape[3]
    kernel = attrs.get("_bf16_w") or shape_of(w)[2:4]
    packed = bool(attrs.get("_bf16_w"))
    if not packed:  # a runtime weight [O/oc, C/ic, kh, kw, ic, oc]: as [O, C, kh, kw]
        w_blk, w_oc = w, shape_of(w)[5]
        w = te.compute((shape_of(w)[0] * w_oc, ch, *kernel),
                       lambda o, cc, i, j: w_blk[o // w_oc, cc // ic, i, j, cc % ic, o % w_oc],
                       name="w_oihw")
    cp = conv_gemm(BF16, lambda b, i, j, cc: x[b, cc // ic, i, j, cc % ic], (n, ch, h, wd),
                        kernel, (oh, ow), attrs["strides"], attrs["pads"], attrs["dilations"],
                        w, packed, nhwc=x if cb == 1 else None)
    return te.compute(out_shape, lambda b, o, i, j, co: cp[b, i * ow + j, o * oc + co],
                      name="conv2d_nchwc")


@lowering("conv2d_nchwc")
def conv2d_nchwc(inputs, attrs, out_types):
    x, w = inputs
    out_shape = tuple(out_types[0].shape)
    if native(attrs, dtype_of(x), dtype_of(w)) is BF16:
        # an im2col GEMM, which reads and writes whole-channel blocks (NHWC, what the layout
        # pass plans for bf16) in place, other blocks through the NHWC copy it pads into
        return _conv2d_nchwc_bf16(x, w, attrs, out_shape)
    kh, kw = shape_of(w)[2:4]
    reg_h, oh_pad, reg_n, ow_pad = _tile(attrs, *out_shape[2:4], out_shape[4])
    xp = _padded(x, attrs, (kh, kw), (oh_pad, ow_pad))
    acc = blocked_conv(xp, w, (oh_pad, ow_pad), attrs["strides"], attrs["dilations"],
                       (reg_h, reg_n))
    return te.compute(out_shape, lambda b, o, i, j, co: acc[b, o, i, j, co]
                      .astype(dtype_of(x)), name="conv2d_nchwc")


@lowering("depthwise_conv2d_nchwc")
def depthwise_conv2d_nchwc(inputs, attrs, out_types):
    """One filter per channel on blocked data: each output vector of c channels sums kh x kw
    taps (broadcast-free FMAs), register-tiled like the convs (``schedules/cpu/conv.py``)."""
    x, w = inputs
    kh, kw = shape_of(w)[2:4]
    out_shape = tuple(out_types[0].shape)
    reg_h, oh_pad, reg_n, ow_pad = _tile(attrs, *out_shape[2:4], out_shape[4])
    # one FMA per tap leaves no time to win back a padded copy of x: guard each tap instead
    xp = _padded(x, attrs, (kh, kw), (oh_pad, ow_pad), stage=False)
    (sh, sw), (dh, dw) = attrs["strides"], attrs["dilations"]
    ry, rx = te.reduce_axis((0, kh), name="ry"), te.reduce_axis((0, kw), name="rx")

    def conv_fn(b, cc, i, j, ci):
        return te.sum(c.widen(xp[b, cc, i * sh + ry * dh, j * sw + rx * dw, ci])
                      * c.widen(w[cc, 0, ry, rx, ci]), axis=[ry, rx])

    n, cb = out_shape[:2]
    acc = te.compute((n, cb, oh_pad, ow_pad, out_shape[4]), conv_fn, name="conv_nchwc",
                     attrs={"kiln.sched": "conv2d", "kiln.reg_h": reg_h, "kiln.reg_n": reg_n})
    return te.compute(out_shape, lambda b, o, i, j, co: acc[b, o, i, j, co]
                      .astype(dtype_of(x)), name="depthwise_conv2d_nchwc")


def _clamped(v, n: int):
    return tirx.max(tirx.min(v, n - 1), 0)


def _window(x, attrs, fill, dilated: bool):
    """read(b, cc, i, j, ci, ry, rx): the window tap, ``fill`` outside x."""
    _, _, h, w, _ = shape_of(x)
    (sh, sw) = attrs["strides"] or attrs["kernel_shape"]
    (dh, dw) = attrs["dilations"] if dilated else (1, 1)
    top, left = attrs["pads"][:2]

    def read(b, cc, i, j, ci, ry, rx):
        hi, wi = i * sh + ry * dh - top, j * sw + rx * dw - left
        inside = tirx.all(hi >= 0, hi < h, wi >= 0, wi < w)
        return tirx.if_then_else(inside, x[b, cc, _clamped(hi, h), _clamped(wi, w), ci], fill)

    return read


_POOL_ANN = {"kiln.row": 2, "kiln.outer": 1}  # the channel block: vectorized, innermost


@lowering("max_pool2d_nchwc")
def max_pool2d_nchwc(inputs, attrs, out_types):
    x = inputs[0]
    kh, kw = attrs["kernel_shape"]
    read = _window(x, attrs, const(float("-inf"), dtype_of(x)), dilated=True)
    ry, rx = te.reduce_axis((0, kh), name="ry"), te.reduce_axis((0, kw), name="rx")
    window_max = reducer("max", test_value=False)  # NaN-propagating, as max_pool2d
    return te.compute(tuple(out_types[0].shape),
                      lambda b, cc, i, j, ci: window_max(read(b, cc, i, j, ci, ry, rx),
                                                         axis=[ry, rx]),
                      name="max_pool2d_nchwc", attrs=_POOL_ANN)


@lowering("avg_pool2d_nchwc")
def avg_pool2d_nchwc(inputs, attrs, out_types):
    x = inputs[0]
    _, _, h, w, _ = shape_of(x)
    dt = dtype_of(x)
    (kh, kw), (sh, sw) = attrs["kernel_shape"], attrs["strides"] or attrs["kernel_shape"]
    top, left, bottom, right = attrs["pads"]
    read = _window(x, attrs, const(0, dt), dilated=False)
    ry, rx = te.reduce_axis((0, kh), name="ry"), te.reduce_axis((0, kw), name="rx")
    # the window sums register-tiled like a depthwise conv of ones (``schedules/cpu/conv.py``)
    n, cb, oh, ow, c = out_types[0].shape
    reg_h, oh_pad, reg_n, ow_pad = _tile(attrs, oh, ow, c)
    s = te.compute((n, cb, oh_pad, ow_pad, c),
                   lambda b, cc, i, j, ci: te.sum(read(b, cc, i, j, ci, ry, rx), axis=[ry, rx]),
                   name="avg_pool_sum",
                   attrs={"kiln.sched": "conv2d", "kiln.reg_h": reg_h, "kiln.reg_n": reg_n})

    def count(start, k, size, lo_pad, hi_pad):
        lo, hi = (-lo_pad, size + hi_pad) if attrs["count_include_pad"] else (0, size)
        return tirx.min(start + k, hi) - tirx.max(start, lo)

    def fn(b, cc, i, j, ci):
        cells = count(i * sh - top, kh, h, top, bottom) * count(j * sw - left, kw, w, left,
                                                                 right)
        return s[b, cc, i, j, ci] / cells.astype(dt)

    return te.compute(tuple(out_types[0].shape), fn, name="avg_pool2d_nchwc")


@lowering("global_avg_pool2d_nchwc")
def global_avg_pool2d_nchwc(inputs, attrs, out_types):
    return spatial_mean(inputs[0], attrs, out_types, "global_avg_pool2d_nchwc")
