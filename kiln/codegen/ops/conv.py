"""TE builders of conv1d/conv2d: a blocked NCHWc convolution (the NeoCPU approach).

Stages of one conv2d kernel (groups == 1):
- ``pad_pack``: x[N, C, H, W] -> xp[N, C/icb, Hp, Wp, icb], zero padded (spatially and to a
  multiple of icb channels). The activation layout is transformed inside each kernel for now;
  a layout pass can later keep activations blocked between layers.
- the weight, packed at compile time when it is a constant (``pack_conv_weight``):
  w[O, C, kh, kw] -> wp[O/ocb, C/icb, kh, kw, icb, ocb]; otherwise by a ``pack`` stage.
- ``conv_nchwc[N, O/ocb, OH, OWp, ocb]``: the sum over (C/icb, kh, kw, icb), annotated for
  ``schedules/conv.py``: register tile of ``reg_n`` output columns x ``ocb`` channels.
- the output stage back to NCHW (+ bias), which the schedule computes from the register tile.

1x1 convolutions without stride or padding are GEMMs on the NCHW data as it lies
(``pointwise_gemm``). Depthwise convolutions (groups == C == O) use the NCHWc blocking with
one filter per channel (``depthwise_nchwc``). Other grouped convolutions (RegNet, ResNeXt)
are blocked by whole groups (``grouped_nchwc``): an output block of ocb channels reads one
input block of icb channels, through a block-diagonal weight that is zero between groups;
only group widths that fit no such block fall back to a direct NCHW formula.
"""

from __future__ import annotations

from math import gcd

import numpy as np
from tvm import te, tirx

from kiln.codegen.lower import lowering
from kiln.codegen.ops.common import (
    const,
    dtype_of,
    largest_divisor,
    shape_of,
    sum_dtype,
    tiling,
    widen,
)
from kiln.codegen.ops.gemm_native import BF16, U8S8, NativeGemm, native
from kiln.codegen.ops.linalg import b_reader, gemm_stage
from kiln.codegen.pack import PackPlan, packer
from kiln.ir.graph import Node


def conv_blocks(channels: int, lanes: int) -> tuple[int, int]:
    """(icb, ocb): input-channel block (a divisor of C up to ``lanes``) and output block (one
    vector; O is zero-padded to a multiple)."""
    return largest_divisor(channels, lanes), lanes


def reg_cols(out_w: int, pixels: int) -> tuple[int, int]:
    """(reg_n, padded OW): output columns per register tile, at most ``pixels`` (the
    target's accumulators: 28 of ``ocb`` lanes + a weight vector fit AVX-512's 32
    registers)."""
    if out_w <= pixels:
        return out_w, out_w
    best = max(d for d in range(1, pixels + 1) if out_w % d == 0)
    if best >= 8:
        return best, out_w
    reg = 16
    return reg, -(-out_w // reg) * reg


def reg_rows(out_h: int, reg_n: int, pixels: int) -> tuple[int, int]:
    """(reg_h, padded OH): output rows per register tile, so that narrow outputs (14 or 7
    columns) still fill ~``pixels`` accumulators and reuse each weight vector that often."""
    reg_h = max(1, pixels // reg_n) if reg_n < 16 else 1
    reg_h = min(reg_h, out_h)
    return reg_h, -(-out_h // reg_h) * reg_h


def pack_conv_weight(w: np.ndarray, icb: int, ocb: int) -> np.ndarray:
    """[O, C, kh, kw] -> [O/ocb, C/icb, kh, kw, icb, ocb] (O zero-padded to a multiple)."""
    o, ch, kh, kw = w.shape
    o_pad = -(-o // ocb) * ocb
    padded = np.zeros((o_pad, ch, kh, kw), w.dtype)
    padded[:o] = w
    t = padded.reshape(o_pad // ocb, ocb, ch // icb, icb, kh, kw)
    return np.ascontiguousarray(t.transpose(0, 2, 4, 5, 3, 1))


def _blocked(attrs) -> bool:
    return attrs["groups"] == 1


def _pointwise(attrs, kernel) -> bool:
    """A 1x1 convolution without stride or padding is a GEMM over NCHW as it lies."""
    return (attrs["groups"] == 1 and all(k == 1 for k in kernel)
            and all(s == 1 for s in attrs["strides"]) and not any(attrs["pads"]))


MAX_GROUPS_PER_BLOCK = 4


def group_blocks(groups: int, channels: int, out_channels: int, lanes: int
                 ) -> tuple[int, int] | None:
    """(icb, ocb) for a grouped conv blocked by groups, or None when none fits: ocb output
    channels per block (a multiple of the group's width og up to one vector, or a divisor
    of og) dividing O, and icb the input channels those output channels read. A block holds
    at most MAX_GROUPS_PER_BLOCK groups: its weight is zero between groups, so k groups
    per block do k times the multiply-adds of the convolution."""
    if groups == 1 or channels % groups or out_channels % groups:
        return None
    og, cg = out_channels // groups, channels // groups
    most = min(lanes // og, MAX_GROUPS_PER_BLOCK)
    whole = [k * og for k in range(most, 0, -1) if out_channels % (k * og) == 0]
    if whole and whole[0] >= min(8, lanes):
        return (whole[0] // og) * cg, whole[0]
    part = largest_divisor(og, lanes)
    if part >= min(8, lanes):  # wide groups: a block inside one group reads all of it
        return cg, part
    return None


def pack_grouped_weight(w: np.ndarray, groups: int, icb: int, ocb: int) -> np.ndarray:
    """[O, C/groups, kh, kw] -> [O/ocb, kh, kw, icb, ocb], block-diagonal: output channel o
    of block ob reads input channel ri of the block's input channels when both are in one
    group, else 0."""
    o, cg, kh, kw = w.shape
    og = o // groups
    out = np.zeros((o // ocb, kh, kw, icb, ocb), w.dtype)
    for ob in range(o // ocb):
        for co in range(ocb):
            oo = ob * ocb + co
            first_in = _grouped_input_block(ob, ocb, og, cg) * icb
            lo = (oo // og) * cg - first_in  # this group's channels within the block
            out[ob, :, :, lo:lo + cg, co] = w[oo].transpose(1, 2, 0)
    return out


def _grouped_input_block(ob: int, ocb: int, og: int, cg: int) -> int:
    """Which input block (of icb channels) output block ``ob`` reads."""
    return ob // (og // ocb) if og > ocb else ob


def _depthwise(attrs, channels: int, out_channels: int) -> bool:
    """One filter per channel (groups == C == O): the blocked depthwise kernel."""
    return attrs["groups"] == channels == out_channels and channels > 1


def pack_depthwise_weight(w: np.ndarray, cb: int) -> np.ndarray:
    """[C, 1, kh, kw] -> [C/cb, kh, kw, cb]."""
    ch, _, kh, kw = w.shape
    return np.ascontiguousarray(w.reshape(ch // cb, cb, kh, kw).transpose(0, 2, 3, 1))


def _native_bf16(attrs, x_dtype: str, w_dtype: str) -> bool:
    """A bfloat16 convolution of one group: an im2col GEMM on kiln's native kernel."""
    return attrs["groups"] == 1 and native(attrs, x_dtype, w_dtype) is BF16


@packer("conv2d", 1)
def _conv2d_weight(node: Node, array: np.ndarray, attrs: dict) -> PackPlan | None:
    if not tiling(attrs).blocked:
        return None  # the plain compute reads the weight as it lies
    if _native_bf16(attrs, node.inputs[0].dtype, array.dtype.name):
        return PackPlan("bf16pairs", pack_conv_weight_native(BF16, array.transpose(2, 3, 1, 0)),
                        {"_bf16_w": array.shape[2:]})
    lanes = tiling(attrs).lanes
    if _depthwise(attrs, node.inputs[0].shape[1], array.shape[0]):
        cb = largest_divisor(array.shape[0], lanes)
        return PackPlan(f"dw{cb}c", pack_depthwise_weight(array, cb), {"_packed_dw": cb})
    blocks = group_blocks(attrs["groups"], node.inputs[0].shape[1], array.shape[0], lanes)
    if blocks is not None:
        icb, ocb = blocks
        return PackPlan(f"g{icb}i{ocb}o", pack_grouped_weight(array, attrs["groups"], icb, ocb),
                        {"_packed_g": blocks})
    if not _blocked(attrs) or _pointwise(attrs, array.shape[2:]):
        return None
    icb, ocb = conv_blocks(array.shape[1], lanes)
    return PackPlan(f"nchwc{icb}i{ocb}o", pack_conv_weight(array, icb, ocb),
                    {"_packed_w": (icb, ocb)})


@packer("conv1d", 1)
def _conv1d_weight(node: Node, array: np.ndarray, attrs: dict) -> PackPlan | None:
    if not _blocked(attrs):
        return None
    plan = _conv2d_weight(node, array[:, :, None, :], attrs)
    return PackPlan(plan.suffix, plan.array, plan.attrs) if plan else None


def blocked_conv(xp, w, out_hw, strides, dilations, tile):
    """The register-tiled stage both blocked convolutions share: xp[N, C/ic, Hp, Wp, ic]
    (padded) and w[O/oc, C/ic, kh, kw, ic, oc] -> [N, O/oc, OH, OW, oc] with OH, OW =
    ``out_hw`` (padded to a multiple of the register ``tile`` (rows, cols), which the conv
    schedule reads from the stage's annotations)."""
    n, cb = shape_of(xp)[:2]
    ob, _, kh, kw, icb, ocb = shape_of(w)
    (sh, sw), (dh, dw) = strides, dilations
    rc = te.reduce_axis((0, cb), name="rc")
    ri = te.reduce_axis((0, icb), name="ri")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")

    def conv_fn(b, oc, i, j, co):
        return te.sum(widen(xp[b, rc, i * sh + ry * dh, j * sw + rx * dw, ri])
                      * widen(w[oc, rc, ry, rx, ri, co]), axis=[rc, ry, rx, ri])

    ann = {"kiln.sched": "conv2d", "kiln.reg_h": tile[0], "kiln.reg_n": tile[1]}
    return te.compute((n, ob, *out_hw, ocb), conv_fn, name="conv_nchwc", attrs=ann)


def pad_pack(x, block: int, top: int, left: int, hp: int, wp: int):
    """x[N, C, H, W] -> [N, C/block, Hp, Wp, block]: blocked channels, zero padded (``top``,
    ``left`` rows/columns before, the rest after), a ``pack`` stage of its own."""
    n, ch, h, wd = shape_of(x)
    zero = const(0, dtype_of(x))

    def fn(b, cc, i, j, ci):
        hi, wi = i - top, j - left
        inside = tirx.all(hi >= 0, hi < h, wi >= 0, wi < wd)
        return tirx.if_then_else(inside, x[b, cc * block + ci, hi, wi], zero)

    return te.compute((n, ch // block, hp, wp, block), fn, name="pad_pack",
                      attrs={"kiln.sched": "pack"})


def conv2d_nchwc(x, w, bias, out_shape, strides, pads, dilations, tiles, packed):
    """The blocked convolution of x[N, C, H, W] (te tensors); returns the NCHW output."""
    n, ch, h, wd = shape_of(x)
    o = out_shape[1]
    oh, ow = out_shape[2], out_shape[3]
    if packed:
        icb, ocb = packed
        kh, kw = shape_of(w)[2:4]
    else:
        kh, kw = shape_of(w)[2:]
        icb, ocb = conv_blocks(ch, tiles.lanes)
    (sh, sw), (dh, dw) = strides, dilations
    top, left = pads[0], pads[1]
    reg_n, ow_pad = reg_cols(ow, tiles.conv_pixels)
    reg_h, oh_pad = reg_rows(oh, reg_n, tiles.conv_pixels)
    hp = (oh_pad - 1) * sh + (kh - 1) * dh + 1
    wp = (ow_pad - 1) * sw + (kw - 1) * dw + 1
    dt = dtype_of(x)
    zero = const(0, dt)
    xp = pad_pack(x, icb, top, left, hp, wp)
    o_pad = -(-o // ocb) * ocb
    if packed:
        wpk = w
    else:
        def w_pack(oc, cc, i, j, ci, co):
            oo = oc * ocb + co
            return tirx.if_then_else(oo < o, w[tirx.min(oo, o - 1), cc * icb + ci, i, j], zero)

        wpk = te.compute((o_pad // ocb, ch // icb, kh, kw, icb, ocb), w_pack, name="pack_w",
                         attrs={"kiln.sched": "pack"})
    acc = blocked_conv(xp, wpk, (oh_pad, ow_pad), strides, dilations, (reg_h, reg_n))

    def unpack(b, oo, i, j):
        v = acc[b, oo // ocb, i, j, oo % ocb].astype(dtype_of(x))
        return v + bias[oo] if bias is not None else v

    return te.compute(tuple(out_shape), unpack, name="conv2d")


def pointwise_gemm(x, w, bias, out_shape, tiles):
    """1x1 conv as ``out[n] = W[O, C] @ x[n][C, H*W]``: the register-tiled GEMM reads the
    weight as A and the activation in place as B (no layout change, output already NCHW)."""
    n, ch, h, wd = shape_of(x)
    o = out_shape[1]
    hw = h * wd
    nb = tiles.gemm_cols(hw)
    b_at = b_reader(lambda bb, k, j: x[bb[0], k, j // wd, j % wd], (n,), (n,), hw, ch, nb,
                    dtype_of(x), raw_ok=True)
    cp = gemm_stage((n,), o, hw, ch, lambda bidx, i, k: w[i, k, 0, 0], b_at, nb, tiles,
                    dtype_of(x))

    def out_fn(b, oo, i, j):
        v = cp[b, oo, i * wd + j].astype(dtype_of(x))
        return v + bias[oo] if bias is not None else v

    return te.compute(tuple(out_shape), out_fn, name="conv2d_1x1")


def depthwise_nchwc(x, w, bias, out_shape, strides, pads, dilations, tiles, packed):
    """Depthwise x[N, C, H, W] * w[C, 1, kh, kw] in blocks of cb channels (vectorized)."""
    n, ch, h, wd = shape_of(x)
    oh, ow = out_shape[2], out_shape[3]
    cb = packed or largest_divisor(ch, tiles.lanes)
    kh, kw = (shape_of(w)[1:3] if packed else shape_of(w)[2:])
    (sh, sw), (dh, dw), (top, left) = strides, dilations, pads[:2]
    reg_n, ow_pad = reg_cols(ow, tiles.conv_pixels)
    hp, wp = (oh - 1) * sh + (kh - 1) * dh + 1, (ow_pad - 1) * sw + (kw - 1) * dw + 1
    xp = pad_pack(x, cb, top, left, hp, wp)
    if packed:
        wpk = w
    else:
        wpk = te.compute((ch // cb, kh, kw, cb), lambda cc, i, j, ci: w[cc * cb + ci, 0, i, j],
                         name="pack_w", attrs={"kiln.sched": "pack"})
    ry, rx = te.reduce_axis((0, kh), name="ry"), te.reduce_axis((0, kw), name="rx")

    def conv_fn(b, cc, i, j, ci):
        return te.sum(widen(xp[b, cc, i * sh + ry * dh, j * sw + rx * dw, ci])
                      * widen(wpk[cc, ry, rx, ci]), axis=[ry, rx])

    acc = te.compute((n, ch // cb, oh, ow_pad, cb), conv_fn, name="conv_nchwc",
                     attrs={"kiln.sched": "conv2d", "kiln.reg_n": reg_n})

    def unpack(b, cc, i, j):
        v = acc[b, cc // cb, i, j, cc % cb].astype(dtype_of(x))
        return v + bias[cc] if bias is not None else v

    return te.compute(tuple(out_shape), unpack, name="depthwise_conv2d")


def grouped_nchwc(x, w, bias, out_shape, strides, pads, dilations, groups, tiles, blocks,
                  packed):
    """A grouped conv blocked by groups (see ``group_blocks``): the register-tiled stage of
    the blocked convolutions, each output block summing over its one input block."""
    n, ch, h, wd = shape_of(x)
    o = out_shape[1]
    oh, ow = out_shape[2], out_shape[3]
    icb, ocb = blocks
    og, cg = o // groups, ch // groups
    kh, kw = (shape_of(w)[1:3] if packed else shape_of(w)[2:])
    (sh, sw), (dh, dw), (top, left) = strides, dilations, pads[:2]
    reg_n, ow_pad = reg_cols(ow, tiles.conv_pixels)
    reg_h, oh_pad = reg_rows(oh, reg_n, tiles.conv_pixels)
    hp = (oh_pad - 1) * sh + (kh - 1) * dh + 1
    wp = (ow_pad - 1) * sw + (kw - 1) * dw + 1
    zero = const(0, dtype_of(x))
    xp = pad_pack(x, icb, top, left, hp, wp)
    if packed:
        wpk = w
    else:
        def w_pack(ob, i, j, ri, co):
            oo = ob * ocb + co
            cin = _grouped_input_block(ob, ocb, og, cg) * icb + ri
            same = cin // cg == oo // og
            return tirx.if_then_else(same, w[oo, tirx.max(cin - (oo // og) * cg, 0), i, j],
                                     zero)

        wpk = te.compute((o // ocb, kh, kw, icb, ocb), w_pack, name="pack_w",
                         attrs={"kiln.sched": "pack"})
    ry, rx = te.reduce_axis((0, kh), name="ry"), te.reduce_axis((0, kw), name="rx")
    ri = te.reduce_axis((0, icb), name="ri")
    per_group = og // ocb if og > ocb else 1

    def conv_fn(b, ob, i, j, co):
        tap = (widen(xp[b, ob // per_group, i * sh + ry * dh, j * sw + rx * dw, ri])
               * widen(wpk[ob, ry, rx, ri, co]))
        if ocb > og:  # the block holds several groups: see _own_group
            tap = _own_group(tap, ob, ri, co, blocks, og, cg, sum_dtype(dtype_of(x)))
        return te.sum(tap, axis=[ry, rx, ri])

    acc = te.compute((n, o // ocb, oh_pad, ow_pad, ocb), conv_fn, name="conv_nchwc",
                     attrs={"kiln.sched": "conv2d", "kiln.reg_h": reg_h, "kiln.reg_n": reg_n})

    def unpack(b, oo, i, j):
        v = acc[b, oo // ocb, i, j, oo % ocb].astype(dtype_of(x))
        return v + bias[oo] if bias is not None else v

    return te.compute(tuple(out_shape), unpack, name="grouped_conv2d")


def _own_group(tap, ob, ri, co, blocks, og: int, cg: int, dtype: str):
    """``tap`` where input channel ``ri`` of block ``ob`` is in output channel ``co``'s group,
    else -0.0 (adding it changes no sum): the block-diagonal weight's zeros would otherwise
    turn an inf or NaN input of another group into a NaN product."""
    icb, ocb = blocks
    cin = _grouped_input_block(ob, ocb, og, cg) * icb + ri
    same = cin // cg == (ob * ocb + co) // og
    return tirx.Select(same, tap, const(-0.0, dtype))  # (if_then_else would not vectorize)


def patch_row(gemm: NativeGemm, kh: int, kw: int, ch: int) -> int | None:
    """Elements per kernel row (kw x C taps) in a native convolution's patches: kw*C,
    padded with zeros so that kh rows make a multiple of the kernel's K block; None where
    that would pad more than a quarter (few channels: a stem's 3) and the patches are one
    flat run of kh*kw*C taps padded at its end instead."""
    row = kw * ch
    if kh * row % gemm.k_block == 0:
        return row
    step = gemm.k_block // gcd(kh, gemm.k_block)
    padded = -(-row // step) * step
    return padded if kh * padded * 4 <= gemm.padded_k(kh * row) * 5 else None


def pack_conv_weight_native(gemm: NativeGemm, w_hwio: np.ndarray) -> np.ndarray:
    """[kh, kw, C, O] -> B[K, O] packed for the native kernel, K in the patches' order
    (``patch_row``: kh rows of kw*C taps, each zero-padded, or one padded run)."""
    kh, kw, ch, o = w_hwio.shape
    row = patch_row(gemm, kh, kw, ch)
    if row is None:
        return gemm.pack_b(w_hwio.reshape(-1, o))
    b = np.zeros((kh, row, o), w_hwio.dtype)
    b[:, :kw * ch] = w_hwio.reshape(kh, kw * ch, o)
    return gemm.pack_b(b.reshape(-1, o))


def conv_gemm(gemm: NativeGemm, x_at, dims, kernel, out_hw, strides, pads, dilations, w,
              packed, nhwc=None, pad_value=0):
    """The sums ``C[N, OH*OW, Op]`` of a convolution (one group) on a native GEMM: the
    patches A[N, OH, OW, kh, row] (im2col of NHWC rows: one kernel row's kw x C taps
    contiguous, zero-padded as ``patch_row`` says) times the weight as B[K, O]
    (``pack_conv_weight_native`` at compile time when ``packed``, else packed per call from
    ``w`` [O, C, kh, kw]). ``x_at(b, i, j, c)`` reads the input (``dims`` = N, C, H, W),
    which is padded with ``pad_value`` (an int8 input's zero point); ``nhwc``: the input
    tensor when it is NHWC in memory: then it is read in place where no padding is needed
    (a 1x1 convolution of a multiple of ``k_block`` channels multiplies it as it lies), else
    it goes through a padded NHWC copy first."""
    n, ch, h, wd = dims
    kh, kw = kernel
    oh, ow = out_hw
    (sh, sw), (dh, dw) = strides, dilations
    top, left = pads[0], pads[1]
    hp = max(h + top, (oh - 1) * sh + (kh - 1) * dh + 1)
    wp = max(wd + left, (ow - 1) * sw + (kw - 1) * dw + 1)
    zero, border = const(0, gemm.a_dtype), const(pad_value, gemm.a_dtype)
    row, taps_row = patch_row(gemm, kh, kw, ch), kw * ch
    k_rows = kh * row if row is not None else kh * taps_row
    if packed:
        bp = w
    else:
        step = row or taps_row
        w_zero = const(0, gemm.b_dtype)

        def w_at(bb, kk, oo):
            ky, r = kk // step, tirx.min(kk % step, taps_row - 1)
            tap = w[oo, r % ch, ky, r // ch]
            return tap if step == taps_row else tirx.if_then_else(kk % step < taps_row, tap,
                                                                  w_zero)

        bp = gemm.pack_b_stage(w_at, (), k_rows, shape_of(w)[0])
    if (nhwc is not None and isinstance(nhwc.op, te.PlaceholderOp) and kh == kw == 1
            and sh == sw == 1 and not any(pads) and row == ch):
        return gemm.gemm(nhwc, bp, (n,), oh * ow, ch)
    if nhwc is not None and top == left == 0 and hp == h and wp == wd:
        xr = x_at
    else:
        def pad_fn(b, i, j, c):
            hi, wi = i - top, j - left
            inside = tirx.all(hi >= 0, hi < h, wi >= 0, wi < wd)
            return tirx.if_then_else(inside, x_at(b, tirx.min(tirx.max(hi, 0), h - 1),
                                                  tirx.min(tirx.max(wi, 0), wd - 1), c), border)

        xh = te.compute((n, hp, wp, ch), pad_fn, name="pad_nhwc", attrs={"kiln.sched": "pack"})

        def xr(b, i, j, c):
            return xh[b, i, j, c]

    if row == taps_row:  # whole runs of C channels per tap, no index arithmetic
        a = te.compute((n, oh, ow, kh, kw, ch),
                       lambda b, i, j, ky, kx, c: xr(b, i * sh + ky * dh, j * sw + kx * dw, c),
                       name="im2col", attrs={"kiln.sched": "pack"})
    elif row is not None:  # each kernel row padded
        def patch_fn(b, i, j, ky, r):
            rc = tirx.min(r, taps_row - 1)
            tap = xr(b, i * sh + ky * dh, j * sw + (rc // ch) * dw, rc % ch)
            return tirx.if_then_else(r < taps_row, tap, zero)

        a = te.compute((n, oh, ow, kh, row), patch_fn, name="im2col",
                       attrs={"kiln.sched": "pack"})
    else:  # one run of kh*kw*C taps, padded at its end
        def flat_fn(b, i, j, kk):
            kc = tirx.min(kk, k_rows - 1)
            ky, r = kc // taps_row, kc % taps_row
            tap = xr(b, i * sh + ky * dh, j * sw + (r // ch) * dw, r % ch)
            return tirx.if_then_else(kk < k_rows, tap, zero)

        a = te.compute((n, oh, ow, gemm.padded_k(k_rows)), flat_fn, name="im2col",
                       attrs={"kiln.sched": "pack", "kiln.unroll": 1})
    return gemm.gemm(a, bp, (n,), oh * ow, k_rows)


def conv2d_native(gemm: NativeGemm, x, w, bias, out_shape, strides, pads, dilations, packed,
                  pad_value=0, name="conv2d_native"):
    """A convolution (one group) of NCHW data on a native GEMM (``conv_gemm``: the input
    transposed to NHWC rows first); the output stage adds the bias and writes NCHW.
    ``packed``: the kernel's (kh, kw) when the weight was packed at compile time."""
    n, ch, h, wd = shape_of(x)
    oh, ow = out_shape[2], out_shape[3]
    kernel = packed or shape_of(w)[2:]
    cp = conv_gemm(gemm, lambda b, i, j, c: x[b, c, i, j], (n, ch, h, wd), kernel, (oh, ow),
                   strides, pads, dilations, w, bool(packed), pad_value=pad_value)

    def out_fn(b, oo, i, j):
        v = cp[b, i * ow + j, oo]
        return v + bias[oo] if bias is not None else v

    return te.compute(tuple(out_shape), out_fn, name=name)


def conv2d_direct(x, w, bias, out_shape, strides, pads, dilations, groups, pad_value=0,
                  out_dtype=None):
    """Convolution straight from the NCHW formula: the CPU's fallback for group widths that
    fit no block, and every convolution of the plain (GPU) computes. Integer operands
    (``out_dtype`` int32) are summed in int32, the input padded with ``pad_value``."""
    n, ch, h, wd = shape_of(x)
    o, cg, kh, kw = shape_of(w)
    og = o // groups
    (sh, sw), (dh, dw) = strides, dilations
    top, left = pads[0], pads[1]
    dt = out_dtype or dtype_of(x)
    up = widen if out_dtype is None else (lambda v: v.astype(out_dtype))  # noqa: E731
    rc = te.reduce_axis((0, cg), name="rc")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")

    def fn(b, oo, i, j):
        hi, wi = i * sh + ry * dh - top, j * sw + rx * dw - left
        inside = tirx.all(hi >= 0, hi < h, wi >= 0, wi < wd)
        cin = (oo // og) * cg + rc
        xv = tirx.if_then_else(inside, x[b, cin, tirx.max(tirx.min(hi, h - 1), 0),
                                         tirx.max(tirx.min(wi, wd - 1), 0)],
                                 const(pad_value, dtype_of(x)))
        return te.sum(up(xv) * up(w[oo, rc, ry, rx]), axis=[rc, ry, rx])

    out = te.compute(tuple(out_shape), fn, name="conv_direct", attrs={"kiln.row": 2})
    if bias is None and out.dtype == dt:
        return out
    return te.compute(tuple(out_shape), lambda b, oo, i, j: out[b, oo, i, j].astype(dt) + (
        bias[oo] if bias is not None else const(0, dt)), name="conv_bias")


@lowering("conv2d")
def conv2d(inputs, attrs, out_types):
    x, w = inputs[:2]
    bias = inputs[2] if len(inputs) > 2 else None
    out_shape = tuple(out_types[0].shape)
    args = (attrs["strides"], attrs["pads"], attrs["dilations"])
    if not tiling(attrs).blocked or not isinstance(shape_of(x)[1], int):
        # (symbolic channels: a weight gradient at a symbolic batch sums over the batch)
        return conv2d_direct(x, w, bias, out_shape, *args, attrs["groups"])
    if attrs.get("_bf16_w") or _native_bf16(attrs, dtype_of(x), dtype_of(w)):
        return conv2d_native(BF16, x, w, bias, out_shape, *args, attrs.get("_bf16_w"))
    if attrs.get("_packed_dw") or _depthwise(attrs, shape_of(x)[1], out_shape[1]):
        return depthwise_nchwc(x, w, bias, out_shape, *args, tiling(attrs),
                               attrs.get("_packed_dw"))
    if attrs["groups"] != 1:
        blocks = attrs.get("_packed_g") or group_blocks(
            attrs["groups"], shape_of(x)[1], out_shape[1], tiling(attrs).lanes)
        if blocks is None:
            return conv2d_direct(x, w, bias, out_shape, *args, attrs["groups"])
        return grouped_nchwc(x, w, bias, out_shape, *args, attrs["groups"], tiling(attrs),
                             blocks, attrs.get("_packed_g"))
    if not attrs.get("_packed_w") and _pointwise(attrs, shape_of(w)[2:]):
        return pointwise_gemm(x, w, bias, out_shape, tiling(attrs))
    return conv2d_nchwc(x, w, bias, out_shape, *args, tiling(attrs), attrs.get("_packed_w"))


@packer("conv2d_integer", 1)
def _conv2d_integer_weight(node: Node, array: np.ndarray, attrs: dict) -> PackPlan | None:
    if not _native_integer(attrs, node.inputs[0].dtype, array.dtype.name):
        return None
    return PackPlan("u8s8quads", pack_conv_weight_native(U8S8, array.transpose(2, 3, 1, 0)),
                    {"_native_w": array.shape[2:]})


def _native_integer(attrs, x_dtype: str, w_dtype: str) -> bool:
    """A uint8 x int8 convolution of one group on a target with a native int8 GEMM."""
    return (attrs["groups"] == 1 and tiling(attrs).blocked
            and native(attrs, x_dtype, w_dtype) is U8S8)


@lowering("conv2d_integer")
def conv2d_integer(inputs, attrs, out_types):
    """An im2col GEMM on the native int8 kernel (its input padded with ``pad_value``), or
    the direct sums in int32."""
    x, w = inputs
    out_shape = tuple(out_types[0].shape)
    args = (attrs["strides"], attrs["pads"], attrs["dilations"])
    if attrs.get("_native_w") or _native_integer(attrs, dtype_of(x), dtype_of(w)):
        return conv2d_native(U8S8, x, w, None, out_shape, *args, attrs.get("_native_w"),
                             pad_value=attrs["pad_value"], name="conv2d_integer")
    return conv2d_direct(x, w, None, out_shape, *args, attrs["groups"],
                         pad_value=attrs["pad_value"], out_dtype="int32")


@lowering("conv1d")
def conv1d(inputs, attrs, out_types):
    x, w = inputs[:2]
    bias = inputs[2] if len(inputs) > 2 else None
    n, ch, wd = shape_of(x)
    x4 = te.compute((n, ch, 1, wd), lambda b, cc, i, j: x[b, cc, j], name="as_2d")
    packed = attrs.get("_packed_w") or attrs.get("_bf16_w")
    if not packed:
        o, cg, kw = shape_of(w)
        w = te.compute((o, cg, 1, kw), lambda a, b, i, j: w[a, b, j], name="w_as_2d")
    o_shape = tuple(out_types[0].shape)
    out4 = (o_shape[0], o_shape[1], 1, o_shape[2])
    s, p, d = attrs["strides"], attrs["pads"], attrs["dilations"]
    args = ((1, s[0]), (0, p[0], 0, p[1]), (1, d[0]))
    if attrs.get("_bf16_w") or (tiling(attrs).blocked and _native_bf16(attrs, dtype_of(x),
                                                                       dtype_of(w))):
        y = conv2d_native(BF16, x4, w, bias, out4, *args, attrs.get("_bf16_w"))
    elif attrs["groups"] != 1 or not tiling(attrs).blocked:
        y = conv2d_direct(x4, w, bias, out4, *args, attrs["groups"])
    else:
        y = conv2d_nchwc(x4, w, bias, out4, *args, tiling(attrs), packed)
    return te.compute(o_shape, lambda b, oo, j: y[b, oo, 0, j], name="conv1d")
