"""Neural-network ops in NCHW with PyTorch's weight layouts: convolutions, pooling,
normalizations and dropout.

Pads are begins then ends per spatial axis ((top, left, bottom, right) in 2-D), so asymmetric
padding (ONNX's SAME_UPPER) needs no separate pad node. Window geometry (output sizes,
``ceil_mode``, the divisor of ``avg_pool2d``) follows PyTorch exactly. Spatial dimensions of
convolutions and pools must be static, and so must a convolution's channels; the batch may be
symbolic.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from kiln.errors import AttributeError_
from kiln.ir.ops.constant import random_bits, uniform_from_bits
from kiln.ir.ops.linalg import INTEGER_OPERANDS, integer_sum_product
from kiln.ir.ops.registry import (
    ANCHOR,
    BROADCAST,
    KEEP,
    LOW,
    OPAQUE,
    REDUCTION,
    REQUIRED,
    elementwise_flops,
    fail,
    normalize_axis,
    numel,
    register,
    require_float,
    same_dtype,
    static_dim,
)
from kiln.ir.types import Dim, Sym, TensorType

_AXES = ("H", "W")  # names of spatial axes in messages (1-D convolutions use "W")

# -- attribute and shape checks ----------------------------------------------------------------


def _bad(msg: str) -> None:
    raise AttributeError_(msg)


def _ints(attrs: dict, key: str, n: int, low: int) -> tuple[int, ...]:
    """Attribute ``key`` as a tuple of ``n`` ints, each >= ``low``."""
    v = attrs[key]
    if not isinstance(v, tuple) or len(v) != n or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in v
    ):
        _bad(f"{key} must be a tuple of {n} ints, got {v!r}")
    if any(i < low for i in v):
        _bad(f"{key} must be {'positive' if low > 0 else 'non-negative'}, got {v}")
    return v


def _flag(attrs: dict, key: str) -> bool:
    if not isinstance(attrs[key], bool):
        _bad(f"{key} must be a bool, got {attrs[key]!r}")
    return attrs[key]


def _spatial(x: TensorType, r: int, floats: bool = True) -> tuple[Dim, Dim, tuple[int, ...]]:
    """(batch, channels, spatial sizes) of a [N, C, *spatial] input (a float one unless
    ``floats`` is False); spatial static."""
    if floats:
        require_float(x)
    if x.rank != r + 2:
        dims = ", ".join(("N", "C") + _AXES[2 - r:])
        fail(f"x must have rank {r + 2} ([{dims}]), got rank {x.rank}")
    sizes = tuple(static_dim(d, f"spatial dimension {a} of x")
                  for d, a in zip(x.shape[2:], _AXES[2 - r:]))
    return x.shape[0], x.shape[1], sizes


def _weight(types: list[TensorType], r: int, symbolic_channels: bool = False) -> tuple:
    """The shape of the weight (the second input), of rank r + 2: static, but for its
    input channels where ``symbolic_channels`` (see ``_groups``)."""
    w = types[1]
    if w.rank != r + 2:
        fail(f"weight must have rank {r + 2}, got {w}")
    return tuple(d if i == 1 and symbolic_channels and isinstance(d, Sym) else
                 static_dim(d, f"dimension {i} of the weight") for i, d in enumerate(w.shape))


def _groups(attrs: dict, c: Dim) -> tuple[Dim, int]:
    """(channels of x, groups) for a convolution: static channels, or symbolic ones with one
    group (the weight gradient of a convolution at a symbolic batch is a convolution over
    the batch as channels)."""
    g = attrs["groups"]
    if not isinstance(g, int) or isinstance(g, bool) or g < 1:
        _bad(f"groups must be a positive int, got {g!r}")
    if isinstance(c, Sym) and g == 1:
        return c, g
    c = static_dim(c, "the channel dimension of x")
    if c % g:
        fail(f"groups={g} does not divide the {c} channels of x")
    return c, g


def _check_bias(types: list[TensorType], o: int) -> None:
    if len(types) == 3 and types[2].shape != (o,):
        fail(f"bias must have shape [{o}] (the output channels), got {types[2]}")


def _out_sizes(sizes, kernel, strides, pads, dilations, ceil_mode=False) -> tuple[int, ...]:
    """Windows along each axis, as PyTorch counts them: with ``ceil_mode`` a last, partial
    window is kept only if it starts inside the input or the left padding."""
    r, outs = len(sizes), []
    for i, (size, k, s, d) in enumerate(zip(sizes, kernel, strides, dilations)):
        pb, pe = pads[i], pads[r + i]
        out = (size + pb + pe - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
        outs.append(out - 1 if ceil_mode and (out - 1) * s >= size + pb else out)
    return tuple(outs)


def _check_out(outs: tuple[int, ...], sizes: tuple[int, ...]) -> tuple[int, ...]:
    if any(o < 1 for o in outs):
        fail(f"output spatial size {outs} is empty: input {sizes} is too small for the window")
    return outs


def _window_attrs(attrs: dict, r: int) -> tuple[tuple[int, ...], ...]:
    return (_ints(attrs, "strides", r, 1), _ints(attrs, "pads", 2 * r, 0),
            _ints(attrs, "dilations", r, 1))


# -- numpy helpers -----------------------------------------------------------------------------


def _c(value, x: np.ndarray) -> np.ndarray:
    """A Python scalar as a 0-d array of x's dtype, so results keep that dtype."""
    return np.asarray(value, x.dtype)


def _windows(x: np.ndarray, kernel, strides, dilations, pads, outs, fill) -> np.ndarray:
    """[N, C, *outs, *kernel] view of ``x`` padded with ``fill``: the input of each window.

    The end padding is extended where a ceil-mode window hangs past the padded input."""
    r = len(kernel)
    pad_width = [(0, 0)] * (x.ndim - r)
    for i in range(r):
        need = (outs[i] - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1
        pad_width.append((pads[i], max(need - pads[i] - x.shape[x.ndim - r + i], 0)))
    xp = np.pad(x, pad_width, constant_values=_c(fill, x))
    span = [d * (k - 1) + 1 for k, d in zip(kernel, dilations)]
    view = sliding_window_view(xp, span, axis=tuple(range(x.ndim - r, x.ndim)))
    taps = tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(outs, strides))
    return view[(..., *taps, *(slice(None, None, d) for d in dilations))]


def _conv(x, w, b, strides, pads, dilations, groups, fill=0) -> np.ndarray:
    """Grouped convolution (cross-correlation) over the last len(strides) axes, the input
    padded with ``fill``."""
    r, (n, c), kernel = len(strides), x.shape[:2], w.shape[2:]
    outs = _out_sizes(x.shape[2:], kernel, strides, pads, dilations)
    win = _windows(x, kernel, strides, dilations, pads, outs, fill)
    win = win.reshape(n, groups, c // groups, *outs, *kernel)
    wg = w.reshape(groups, w.shape[0] // groups, *w.shape[1:])
    o, k = "xyz"[:r], "ijk"[:r]
    y = np.einsum(f"ngc{o}{k},gdc{k}->ngd{o}", win, wg, optimize=True)
    y = y.reshape(n, w.shape[0], *outs)
    if b is not None:
        y = y + b.reshape(-1, *([1] * r))
    return y.astype(x.dtype, copy=False)


def _conv_flops(in_types, out_types, attrs):
    w = in_types[1].shape
    return 2 * numel(out_types[0].shape) * numel(w[1:])


# -- convolutions ------------------------------------------------------------------------------


def _conv_infer(r: int, integer: bool = False):
    def infer(types, attrs):
        x = types[0]
        n, c, sizes = _spatial(x, r, floats=not integer)
        if integer:
            for t, which in zip(types, ("x", "the weight")):
                if t.dtype not in INTEGER_OPERANDS:
                    fail(f"{which} must be int8, uint8 or int32, got {t.dtype}")
            if not isinstance(attrs["pad_value"], int) or isinstance(attrs["pad_value"], bool):
                _bad(f"pad_value must be an int, got {attrs['pad_value']!r}")
        else:
            same_dtype(types)
        strides, pads, dilations = _window_attrs(attrs, r)
        c, g = _groups(attrs, c)
        o, cg, *kernel = _weight(types, r, symbolic_channels=isinstance(c, Sym))
        if cg * g != c:
            fail(f"weight has {cg} input channels per group but x has {c} channels "
                 f"and groups={g}")
        if o % g:
            fail(f"groups={g} does not divide the weight's {o} output channels")
        _check_bias(types, o)
        outs = _out_sizes(sizes, kernel, strides, pads, dilations)
        return TensorType((n, o) + _check_out(outs, sizes), "int32" if integer else x.dtype)

    return infer


def _conv_attrs(r: int) -> dict:
    return {"strides": (1,) * r, "pads": (0,) * (2 * r), "dilations": (1,) * r, "groups": 1}


@register("conv1d", kind=ANCHOR,
          precision=LOW, epilogue=True, infer=_conv_infer(1), attrs=_conv_attrs(1),
          arity=(2, 3), flops=_conv_flops)
def conv1d(x, w, b=None, *, strides, pads, dilations, groups):
    """x[N, C, W] * w[O, C/groups, kw] (+ b[O]) -> [N, O, W']."""
    return _conv(x, w, b, strides, pads, dilations, groups)


@register("conv2d", kind=ANCHOR,
          precision=LOW, epilogue=True, infer=_conv_infer(2), attrs=_conv_attrs(2),
          arity=(2, 3), flops=_conv_flops)
def conv2d(x, w, b=None, *, strides, pads, dilations, groups):
    """x[N, C, H, W] * w[O, C/groups, kh, kw] (+ b[O]) -> [N, O, H', W']."""
    return _conv(x, w, b, strides, pads, dilations, groups)


@register("conv2d_integer", kind=ANCHOR, epilogue=True, infer=_conv_infer(2, integer=True),
          attrs={**_conv_attrs(2), "pad_value": 0}, arity=2, flops=_conv_flops)
def conv2d_integer(x, w, *, strides, pads, dilations, groups, pad_value):
    """x[N, C, H, W] * w[O, C/groups, kh, kw] of integers, summed in int32, x padded with
    ``pad_value`` (a quantized input's zero point: what its 0.0 is stored as)."""
    def conv(xs, ws):
        return _conv(xs, ws, None, strides, pads, dilations, groups, fill=pad_value)

    return integer_sum_product(x, w, conv)


def _conv_transpose_infer(types, attrs):
    x = types[0]
    n, c, sizes = _spatial(x, 2)
    same_dtype(types)
    strides, pads, dilations = _window_attrs(attrs, 2)
    out_pad = _ints(attrs, "output_padding", 2, 0)
    for p, s, d in zip(out_pad, strides, dilations):
        if p >= s and p >= d:
            _bad(f"output_padding {out_pad} must be smaller than either the stride {strides} "
                 f"or the dilation {dilations} in each dimension")
    c, g = _groups(attrs, c)
    cw, og, kh, kw = _weight(types, 2)
    if cw != c:
        fail(f"weight has {cw} input channels (its first dimension) but x has {c}")
    _check_bias(types, og * g)
    outs = tuple((sizes[i] - 1) * strides[i] - pads[i] - pads[2 + i]
                 + dilations[i] * (k - 1) + out_pad[i] + 1 for i, k in enumerate((kh, kw)))
    return TensorType((n, og * g) + _check_out(outs, sizes), x.dtype)


def _conv_transpose_flops(in_types, out_types, attrs):
    c, og, kh, kw = in_types[1].shape
    return 2 * numel(in_types[0].shape) * og * kh * kw


@register("conv_transpose2d", kind=ANCHOR,
          precision=LOW, epilogue=True, infer=_conv_transpose_infer, arity=(2, 3),
          attrs={**_conv_attrs(2), "output_padding": (0, 0)}, flops=_conv_transpose_flops)
def conv_transpose2d(x, w, b=None, *, strides, pads, output_padding, dilations, groups):
    """x[N, C, H, W], w[C, O/groups, kh, kw] (+ b[O]) -> [N, O, H', W'], the adjoint of conv2d.

    Each input pixel scatters x * w[:, :, i, j] to output (h*s + i*d, w*s + j*d); the full
    result is then cropped by the pads (output_padding extends its end)."""
    n, c, h, wd = x.shape
    cg, (og, kh, kw) = c // groups, w.shape[1:]
    xg = x.reshape(n, groups, cg, h, wd)
    wg = w.reshape(groups, cg, og, kh, kw)
    (sh, sw), (dh, dw) = strides, dilations
    full = [(size - 1) * s + d * (k - 1) + 1 + p
            for size, s, d, k, p in zip((h, wd), strides, dilations, (kh, kw), output_padding)]
    buf = np.zeros((n, groups, og, *full), x.dtype)
    for i in range(kh):
        rows = slice(i * dh, i * dh + (h - 1) * sh + 1, sh)
        for j in range(kw):
            cols = slice(j * dw, j * dw + (wd - 1) * sw + 1, sw)
            buf[..., rows, cols] += np.einsum("ngchw,gco->ngohw", xg, wg[..., i, j])
    y = buf[..., pads[0]:full[0] - pads[2], pads[1]:full[1] - pads[3]]
    y = y.reshape(n, groups * og, *y.shape[-2:])
    if b is not None:
        y = y + b.reshape(-1, 1, 1)
    return y.astype(x.dtype, copy=False)


# -- pooling -----------------------------------------------------------------------------------


def _pool_infer(dilated: bool):
    def infer(types, attrs):
        n, c, sizes = _spatial(types[0], 2)
        kernel = _ints(attrs, "kernel_shape", 2, 1)
        if attrs["strides"] is not None:
            _ints(attrs, "strides", 2, 1)
        pads = _ints(attrs, "pads", 4, 0)
        if dilated:
            _ints(attrs, "dilations", 2, 1)
        else:
            _flag(attrs, "count_include_pad")
        # PyTorch's rule; it also makes every window overlap the input
        if any(p > k // 2 for p, k in zip(pads, kernel + kernel)):
            _bad(f"pads {pads} must be at most half the kernel {kernel}")
        outs = _out_sizes(sizes, kernel, attrs["strides"] or kernel, pads,
                          attrs.get("dilations", (1, 1)), _flag(attrs, "ceil_mode"))
        return TensorType((n, c) + _check_out(outs, sizes), types[0].dtype)

    return infer


def _pool_flops(in_types, out_types, attrs):
    return numel(out_types[0].shape) * numel(attrs["kernel_shape"])


@register("max_pool2d", kind=ANCHOR,
          precision=KEEP, epilogue=True, infer=_pool_infer(True), flops=_pool_flops,
          attrs={
    "kernel_shape": REQUIRED, "strides": None, "pads": (0, 0, 0, 0), "dilations": (1, 1),
    "ceil_mode": False})
def max_pool2d(x, kernel_shape, strides, pads, dilations, ceil_mode):
    """Max over each window; padding is -inf, so it never wins."""
    k, s = kernel_shape, strides or kernel_shape
    outs = _out_sizes(x.shape[2:], k, s, pads, dilations, ceil_mode)
    return _windows(x, k, s, dilations, pads, outs, -np.inf).max(axis=(-2, -1))


@register("avg_pool2d", kind=ANCHOR,
          precision=KEEP, epilogue=True, infer=_pool_infer(False), flops=_pool_flops,
          attrs={
    "kernel_shape": REQUIRED, "strides": None, "pads": (0, 0, 0, 0), "ceil_mode": False,
    "count_include_pad": True})
def avg_pool2d(x, kernel_shape, strides, pads, ceil_mode, count_include_pad):
    """Mean over each window. The divisor counts the window's cells inside the padded input
    (``count_include_pad``) or inside the input alone; cells of a ceil-mode window hanging
    past the padded input never count (as PyTorch)."""
    k, s, d = kernel_shape, strides or kernel_shape, (1, 1)
    outs = _out_sizes(x.shape[2:], k, s, pads, d, ceil_mode)
    total = _windows(x, k, s, d, pads, outs, 0).sum(axis=(-2, -1), dtype=x.dtype)
    (h, w), (top, left, bottom, right) = x.shape[2:], pads
    if count_include_pad:
        inside = np.ones((1, 1, h + top + bottom, w + left + right), x.dtype)
        counted = _windows(inside, k, s, d, (0, 0, 0, 0), outs, 0)
    else:
        counted = _windows(np.ones((1, 1, h, w), x.dtype), k, s, d, pads, outs, 0)
    return total / counted.sum(axis=(-2, -1), dtype=x.dtype)


def _global_pool_infer(types, attrs):
    x = types[0]
    require_float(x)
    if x.rank != 4:
        fail(f"x must have rank 4 ([N, C, H, W]), got rank {x.rank}")
    return x.with_shape(x.shape[:2] + (1, 1))


@register("global_avg_pool2d", kind=ANCHOR, precision=KEEP, epilogue=True, infer=_global_pool_infer,
          flops=lambda i, o, a: numel(i[0].shape))
def global_avg_pool2d(x):
    """[N, C, H, W] -> [N, C, 1, 1], the mean over H and W (H and W may be symbolic)."""
    return np.mean(x, axis=(2, 3), keepdims=True)


# -- normalization -----------------------------------------------------------------------------


def _batch_norm_infer(types, attrs):
    x = types[0]
    require_float(x)
    same_dtype(types)
    if x.rank < 2:
        fail(f"x must have rank >= 2 ([N, C, ...]), got rank {x.rank}")
    for name, t in zip(("scale", "bias", "mean", "var"), types[1:]):
        if t.shape != (x.shape[1],):
            fail(f"{name} must have shape [{x.shape[1]}] (the channels of x), got {t}")
    return x


@register("batch_norm", kind=BROADCAST,
          precision=KEEP, epilogue=True, infer=_batch_norm_infer, arity=5,
          attrs={"epsilon": 1e-5},
          flops=elementwise_flops(4))
def batch_norm(x, scale, bias, mean, var, epsilon):
    """Inference form: (x - mean) / sqrt(var + epsilon) * scale + bias, channels on axis 1."""
    shape = (-1,) + (1,) * (x.ndim - 2)
    mean, var, scale, bias = (v.reshape(shape) for v in (mean, var, scale, bias))
    return (x - mean) / np.sqrt(var + _c(epsilon, x)) * scale + bias


def _layer_norm_infer(types, attrs):
    x = types[0]
    require_float(x)
    same_dtype(types)
    if x.rank == 0:
        fail("layer_norm needs an input of rank >= 1")
    axis = normalize_axis(attrs["axis"], x.rank)
    for name, t in zip(("weight", "bias"), types[1:]):
        if t.shape != x.shape[axis:]:
            fail(f"{name} must have shape {list(x.shape[axis:])} (x's dims from axis {axis}), "
                 f"got {t}")
    return x


@register("layer_norm", kind=REDUCTION, epilogue=True, prologue=True, infer=_layer_norm_infer,
          arity=(1, 3),
          attrs={"axis": -1, "epsilon": 1e-5}, flops=elementwise_flops(8))
def layer_norm(x, weight=None, bias=None, *, axis, epsilon):
    """Normalize over dims axis..end (biased variance), then * weight + bias if given."""
    axes = tuple(range(axis % x.ndim, x.ndim))
    centred = x - np.mean(x, axis=axes, keepdims=True)
    var = np.mean(centred * centred, axis=axes, keepdims=True)
    y = centred / np.sqrt(var + _c(epsilon, x))
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def _lrn_infer(types, attrs):
    x = types[0]
    require_float(x)
    size = attrs["size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        _bad(f"size must be a positive int, got {size!r}")
    if x.rank < 3:
        fail(f"x must have rank >= 3 ([N, C, ...], as PyTorch), got rank {x.rank}")
    return x


@register("lrn", kind=ANCHOR, precision=KEEP, epilogue=True, infer=_lrn_infer, flops=lambda i, o,
          a: (a["size"] + 4) * numel(i[0].shape),
          attrs={"size": REQUIRED, "alpha": 1e-4, "beta": 0.75, "bias": 1.0})
def lrn(x, size, alpha, beta, bias):
    """Local response norm across channels: x / (bias + alpha/size * sum x^2)^beta, the sum
    over channels c - size//2 .. c + (size-1)//2 (zeros outside), as PyTorch."""
    pad = [(0, 0), (size // 2, (size - 1) // 2)] + [(0, 0)] * (x.ndim - 2)
    sq = np.pad(x * x, pad)
    total = sliding_window_view(sq, size, axis=1).sum(axis=-1, dtype=x.dtype)
    return x / (_c(bias, x) + _c(alpha / size, x) * total) ** _c(beta, x)


# -- dropout -----------------------------------------------------------------------------------


def _dropout_infer(types, attrs):
    require_float(types[0])
    p = attrs["p"]
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p < 1:
        _bad(f"p must be a number in [0, 1), got {p!r}")
    _flag(attrs, "training")
    seed = attrs["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        _bad(f"seed must be an int in [0, 2**32), got {seed!r}")
    return types[0]


@register("dropout", kind=OPAQUE, infer=_dropout_infer,
          attrs={"p": 0.5, "training": False, "seed": 0},
          flops=lambda i, o, a: 2 * numel(i[0].shape) if a["training"] else 0)
def dropout(x, p, training, seed):
    """A copy of x unless training; then element i (row-major) is kept, scaled by 1/(1-p),
    iff uniform_i >= p with uniform_i = (random_bits(seed, n)[i] >> 8) * 2**-24 (exact)."""
    if not training:
        return x.copy()
    keep = uniform_from_bits(random_bits(seed, x.size)) >= p
    scale = _c(1 / (1 - p), x)
    return np.where(keep.reshape(x.shape), x * scale, np.zeros((), x.dtype))
