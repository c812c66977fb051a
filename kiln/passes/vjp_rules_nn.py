"""Vector-Jacobian rules for the neural-network ops: convolutions, pooling, normalizations,
dropout, and ``fused`` groups (differentiated through their sub-graph).

Everything is expressed with existing ops, without gradient-only ops:

- conv input gradient: ``conv_transpose2d`` of the output gradient (its ``output_padding``
  restores rows the forward's floor division dropped); conv weight gradient: a convolution of
  the input with the output gradient as the kernel, stride and dilation swapped, batch as the
  contracted channel (so the batch size must be static). Groups and dilations are supported;
  conv1d is differentiated as a conv2d of height 1.
- pooling gradients gather each window's cotangent per kernel tap and put it back with strided
  padding (``unslice``): max_pool2d gives a window's gradient to its FIRST maximum (as PyTorch),
  found with argmax + one_hot; avg_pool2d divides by PyTorch's divisor, a constant.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from kiln.passes.vjp_rules import pad_axis, slice_axis, unslice

if TYPE_CHECKING:
    from kiln.passes.autodiff import Var, VJPContext


def _static(c: VJPContext, d, what: str) -> int:
    if not isinstance(d, int):
        raise c.error(f"{what} is the symbolic size {d!r}; this gradient needs it static "
                      "(build the training graph for a fixed batch size)")
    return d


def permute(c: VJPContext, v: Var, perm: tuple[int, ...]) -> Var:
    return v if perm == tuple(range(v.rank)) else c.transpose(v, perm=perm)


# -- convolutions ------------------------------------------------------------------------------


def _weight_grad(c: VJPContext, x: Var, g: Var, kernel, strides, pads, dilations,
                 groups: int) -> Var:
    """d/dw of conv2d(x, w) given the output cotangent ``g``: w[o, c, i, j] gathers
    g[n, o, a, b] * x[n, c, a*s + i*d, b*s + j*d], itself a convolution of x (batch and
    channels swapped) by g (as the kernel) with stride d and dilation s."""
    ch, h, w = x.shape[1:]
    if groups == 1:  # (a symbolic batch becomes the convolution's symbolic channels)
        xt = permute(c, x, (1, 0, 2, 3))  # [C, N, H, W]
    else:  # [cg, G*N, H, W]: group-major channels, so that conv groups pair them with g's
        n = _static(c, x.shape[0], "the batch size of a grouped convolution")
        xt = c.reshape(x, shape=(n, groups, ch // groups, h, w))
        xt = c.transpose(xt, perm=(2, 1, 0, 3, 4))
        xt = c.reshape(xt, shape=(ch // groups, groups * n, h, w))
    gt = permute(c, g, (1, 0, 2, 3))  # [O, N, H', W']
    dw = c.conv2d(xt, gt, strides=dilations, pads=pads, dilations=strides, groups=groups)
    dw = permute(c, dw, (1, 0, 2, 3))  # [O, C/groups, >= kh, >= kw]
    if tuple(dw.shape[2:]) != tuple(kernel):
        dw = c.slice(dw, starts=(0, 0), ends=tuple(kernel), axes=(2, 3))
    return dw


def _conv_grads(c: VJPContext, g: Var, x: Var, w: Var, strides, pads, dilations, groups):
    """(dx, dw, db) of a 2-D convolution."""
    dx = dw = db = None
    if c.needs[0]:
        kernel, outs = w.shape[2:], g.shape[2:]
        extra = tuple(x.shape[2 + i] - ((outs[i] - 1) * strides[i] - pads[i] - pads[2 + i]
                                         + dilations[i] * (kernel[i] - 1) + 1) for i in range(2))
        dx = c.conv_transpose2d(g, w, strides=strides, pads=pads, dilations=dilations,
                                groups=groups, output_padding=extra)
    if c.needs[1]:
        dw = _weight_grad(c, x, g, w.shape[2:], strides, pads, dilations, groups)
    if len(c.needs) == 3 and c.needs[2]:
        db = c.sum(g, axes=(0, 2, 3))
    return dx, dw, db


def _conv2d(c: VJPContext, g: Var):
    a = c.attrs
    x, w = c.inputs[:2]
    grads = _conv_grads(c, g, x, w, a["strides"], a["pads"], a["dilations"], a["groups"])
    return grads[:len(c.inputs)]


def _conv1d(c: VJPContext, g: Var):
    """As a conv2d over [N, C, 1, W]."""
    a = c.attrs
    (s,), (pb, pe), (d,) = a["strides"], a["pads"], a["dilations"]
    x, w = (c.unsqueeze(v, axes=(2,)) for v in c.inputs[:2])
    dx, dw, db = _conv_grads(c, c.unsqueeze(g, axes=(2,)), x, w, (1, s), (0, pb, 0, pe),
                             (1, d), a["groups"])
    dx, dw = (None if v is None else c.squeeze(v, axes=(2,)) for v in (dx, dw))
    return (dx, dw, db)[:len(c.inputs)]


def _conv_transpose2d(c: VJPContext, g: Var):
    """conv_transpose2d is the adjoint of conv2d(., w): dx = conv2d(g, w); dw is conv2d's
    weight gradient with g as the conv input and x as the output cotangent."""
    a = c.attrs
    x, w = c.inputs[:2]
    strides, pads, dilations, groups = a["strides"], a["pads"], a["dilations"], a["groups"]
    dx = dw = db = None
    if c.needs[0]:
        dx = c.conv2d(g, w, strides=strides, pads=pads, dilations=dilations, groups=groups)
        if tuple(dx.shape[2:]) != tuple(x.shape[2:]):  # output_padding >= stride: extra rows
            dx = c.slice(dx, starts=(0, 0), ends=tuple(x.shape[2:]), axes=(2, 3))
    if c.needs[1]:
        dw = _weight_grad(c, g, x, w.shape[2:], strides, pads, dilations, groups)
    if len(c.inputs) == 3 and c.needs[2]:
        db = c.sum(g, axes=(0, 2, 3))
    return (dx, dw, db)[:len(c.inputs)]


# -- pooling -----------------------------------------------------------------------------------


def _pool_geometry(c: VJPContext):
    """(kernel, strides, dilations, begin pads, padded sizes, output sizes) of a 2-D pool; the
    end padding grows where a ceil-mode window hangs past the input, as in the reference."""
    a = c.attrs
    kernel = a["kernel_shape"]
    strides = a["strides"] or kernel
    dilations = a.get("dilations", (1, 1))
    begins, outs = a["pads"][:2], c.y.shape[2:]
    padded = []
    for i in range(2):
        need = (outs[i] - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1
        size = c.x.shape[2 + i]
        padded.append(begins[i] + size + max(need - begins[i] - size, 0))
    return kernel, strides, dilations, begins, padded, outs


def _taps(kernel, dilations):
    return [(i * dilations[0], j * dilations[1]) for i in range(kernel[0])
            for j in range(kernel[1])]


def _scatter_windows(c: VJPContext, w: Var, geometry) -> Var:
    """Put the cotangents ``w`` [N, C, oh, ow, K] of each window's K taps back where the taps
    were read, summing overlaps, then crop the padding away."""
    kernel, strides, dilations, begins, padded, outs = geometry
    if tuple(strides) == tuple(kernel) and tuple(dilations) == (1, 1):
        # windows tile the input: reorder [.., oh, ow, kh, kw] into rows and columns
        n, ch = w.shape[:2]
        total = c.reshape(w, shape=(n, ch, outs[0], outs[1], kernel[0], kernel[1]))
        total = c.transpose(total, perm=(0, 1, 2, 4, 3, 5))
        total = c.reshape(total, shape=(n, ch, outs[0] * kernel[0], outs[1] * kernel[1]))
        for i in range(2):
            total = pad_axis(c, total, 2 + i, 0, padded[i] - outs[i] * kernel[i])
    else:  # overlapping or dilated windows: each tap is a strided slice to put back
        k = kernel[0] * kernel[1]
        pieces = [w] if k == 1 else c.emit("split", [w], {"axis": 4, "sizes": (1,) * k})
        total = None
        for piece, offset in zip(pieces, _taps(kernel, dilations)):
            piece = c.squeeze(piece, axes=(4,))
            for i in range(2):
                piece = unslice(c, piece, 2 + i, offset[i], strides[i], padded[i])
            total = piece if total is None else total + piece
    h, wd = c.x.shape[2:]
    return c.slice(total, starts=begins, ends=(begins[0] + h, begins[1] + wd), axes=(2, 3))


def _max_pool2d(c: VJPContext, g: Var) -> Var:
    """The window's gradient goes to its first maximum (argmax over the window's taps)."""
    geometry = _pool_geometry(c)
    kernel, strides, dilations, begins, padded, outs = geometry
    x = c.x
    h, w = x.shape[2:]
    xp = c.pad(x, pads=(0, 0) + tuple(begins) + (0, 0, padded[0] - h - begins[0],
                                                  padded[1] - w - begins[1]), value=-math.inf)
    taps = [c.slice(xp, starts=(i, j), ends=(i + (outs[0] - 1) * strides[0] + 1,
                                             j + (outs[1] - 1) * strides[1] + 1),
                    axes=(2, 3), steps=tuple(strides))
            for i, j in _taps(kernel, dilations)]
    g = c.unsqueeze(g, axes=(4,))
    if len(taps) > 1:
        windows = c.concat(*(c.unsqueeze(t, axes=(4,)) for t in taps), axis=4)  # [.., K]
        g = g * c.one_hot(c.argmax(windows, axis=4), depth=len(taps), dtype=x.dtype)
    return _scatter_windows(c, g, geometry)


def _window_counts(size: int, begin: int, end: int, kernel: int, stride: int, outs: int,
                   include_pad: bool) -> np.ndarray:
    """Cells of each window (along one axis) that avg_pool2d's divisor counts."""
    lo, hi = (0, begin + size + end) if include_pad else (begin, begin + size)
    starts = np.arange(outs) * stride
    return np.maximum(np.minimum(hi, starts + kernel) - np.maximum(lo, starts), 0)


def _avg_pool2d(c: VJPContext, g: Var) -> Var:
    geometry = _pool_geometry(c)
    kernel, strides, _, begins, _, outs = geometry
    pads, include = c.attrs["pads"], c.attrs["count_include_pad"]
    counts = [_window_counts(c.x.shape[2 + i], pads[i], pads[2 + i], kernel[i], strides[i],
                             outs[i], include) for i in range(2)]
    divisor = np.outer(*counts).astype(c.x.dtype)[None, None]
    share = c.unsqueeze(g / c.constant(divisor, "avg_pool2d_divisor"), axes=(4,))
    return _scatter_windows(c, c.expand(share, shape=share.shape[:4] + (kernel[0] * kernel[1],)),
                            geometry)


# -- normalization, dropout, fused -------------------------------------------------------------


def _batch_norm(c: VJPContext, g: Var):
    x, scale, _, mean, var = c.inputs
    axes = (0,) + tuple(range(2, x.rank))

    def per_channel(v: Var) -> Var:
        return c.reshape(v, shape=(x.shape[1],) + (1,) * (x.rank - 2))

    inv = c.rsqrt(var + c.attrs["epsilon"])
    centred = x - per_channel(mean)
    dbias = c.sum(g, axes=axes)
    return (g * per_channel(scale * inv),
            c.sum(g * centred * per_channel(inv), axes=axes),
            dbias,
            -dbias * scale * inv,
            c.sum(g * centred, axes=axes) * scale * -0.5 * inv * inv * inv)


def _layer_norm(c: VJPContext, g: Var):
    x = c.x
    start = c.attrs["axis"] % x.rank
    axes, lead = tuple(range(start, x.rank)), tuple(range(start))
    centred = x - c.mean(x, axes=axes, keepdims=True)
    rstd = c.rsqrt(c.mean(centred * centred, axes=axes, keepdims=True) + c.attrs["epsilon"])
    xhat = centred * rstd
    dy = g * c.inputs[1] if len(c.inputs) > 1 else g
    dx = rstd * (dy - c.mean(dy, axes=axes, keepdims=True)
                 - xhat * c.mean(dy * xhat, axes=axes, keepdims=True))
    grads = [dx]
    if len(c.inputs) > 1:
        grads.append(c.sum(g * xhat, axes=lead) if lead else g * xhat)
    if len(c.inputs) > 2:
        grads.append(c.sum(g, axes=lead) if lead else g)
    return tuple(grads)


def _channel_window_sum(c: VJPContext, t: Var, before: int, after: int, size: int) -> Var:
    """sum of t over channels c - before .. c + after (zeros outside), for every c."""
    channels = _static(c, c.x.shape[1], "the channel dimension")
    padded = pad_axis(c, t, 1, before, after)
    total = None
    for j in range(size):
        part = slice_axis(c, padded, 1, j, j + channels)
        total = part if total is None else total + part
    return total


def _lrn(c: VJPContext, g: Var) -> Var:
    """y = x * D^-beta with D = bias + alpha/size * (window sum of x^2)."""
    size, alpha, beta, bias = (c.attrs[k] for k in ("size", "alpha", "beta", "bias"))
    x, lo, hi = c.x, size // 2, (size - 1) // 2
    d = bias + (alpha / size) * _channel_window_sum(c, x * x, lo, hi, size)
    back = _channel_window_sum(c, g * x * d ** (-beta - 1), hi, lo, size)  # transposed window
    return g * d ** -beta - (2 * alpha * beta / size) * x * back


RULES = {
    "conv1d": _conv1d,
    "conv2d": _conv2d,
    "conv_transpose2d": _conv_transpose2d,
    "max_pool2d": _max_pool2d,
    "avg_pool2d": _avg_pool2d,
    "global_avg_pool2d": lambda c, g: c.broadcast_to(g, c.x) / c.count(c.x, (2, 3)),
    "batch_norm": _batch_norm,
    "layer_norm": _layer_norm,
    "lrn": _lrn,
    # linear in x with a mask that depends only on (seed, index): the same op masks g
    "dropout": lambda c, g: c.dropout(g, **c.attrs),
    "fused": lambda c, g: c.backprop_graph(c.attrs["graph"], g if isinstance(g, list) else [g]),
}
