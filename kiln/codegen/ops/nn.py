"""TE builders of pooling, normalizations (batch_norm, layer_norm, lrn) and
conv_transpose2d. Convolutions are in ``conv.py``; dropout in ``constant.py`` (it shares the
RNG)."""

from __future__ import annotations

from tvm import te, tirx

from kiln.codegen.lower import lowering
from kiln.codegen.ops import common as c
from kiln.codegen.ops.common import const, dtype_of, shape_of
from kiln.codegen.ops.reduce import reduce_rows, reducer


def _clamped(v, n: int):
    return tirx.max(tirx.min(v, n - 1), 0)


@lowering("max_pool2d")
def max_pool2d(inputs, attrs, out_types):
    x = inputs[0]
    n, ch, h, w = shape_of(x)
    (kh, kw), (sh, sw) = attrs["kernel_shape"], attrs["strides"] or attrs["kernel_shape"]
    (dh, dw), (top, left) = attrs["dilations"], attrs["pads"][:2]
    dt = dtype_of(x)
    ry, rx = te.reduce_axis((0, kh), name="ry"), te.reduce_axis((0, kw), name="rx")
    # a NaN in the window makes the output NaN (te.max drops it); see ``reducer``
    window_max = reducer("max", test_value=False)

    def fn(b, cc, i, j):
        hi, wi = i * sh + ry * dh - top, j * sw + rx * dw - left
        inside = tirx.all(hi >= 0, hi < h, wi >= 0, wi < w)
        v = tirx.if_then_else(inside, x[b, cc, _clamped(hi, h), _clamped(wi, w)],
                              const(float("-inf"), dt))
        return window_max(v, axis=[ry, rx])

    return te.compute(tuple(out_types[0].shape), fn, name="max_pool2d",
                      attrs={"kiln.row": 2, "kiln.outer": 1})


@lowering("avg_pool2d")
def avg_pool2d(inputs, attrs, out_types):
    x = inputs[0]
    n, ch, h, w = shape_of(x)
    (kh, kw), (sh, sw) = attrs["kernel_shape"], attrs["strides"] or attrs["kernel_shape"]
    top, left, bottom, right = attrs["pads"]
    dt = dtype_of(x)
    ry, rx = te.reduce_axis((0, kh), name="ry"), te.reduce_axis((0, kw), name="rx")

    def total(b, cc, i, j):
        hi, wi = i * sh + ry - top, j * sw + rx - left
        inside = tirx.all(hi >= 0, hi < h, wi >= 0, wi < w)
        v = tirx.if_then_else(inside, x[b, cc, _clamped(hi, h), _clamped(wi, w)], const(0, dt))
        return te.sum(v, axis=[ry, rx])

    s = te.compute(tuple(out_types[0].shape), total, name="avg_pool_sum",
                   attrs={"kiln.row": 2, "kiln.outer": 1})

    def count(start, k, size, lo_pad, hi_pad):
        if attrs["count_include_pad"]:
            lo, hi = -lo_pad, size + hi_pad
        else:
            lo, hi = 0, size
        return tirx.min(start + k, hi) - tirx.max(start, lo)

    def fn(b, cc, i, j):
        ch_ = count(i * sh - top, kh, h, top, bottom)
        cw_ = count(j * sw - left, kw, w, left, right)
        return s[b, cc, i, j] / (ch_ * cw_).astype(dt)

    return te.compute(tuple(out_types[0].shape), fn, name="avg_pool2d")


def spatial_mean(x, attrs, out_types, name: str):
    """The mean over axes 2 and 3 (H, W) of x, in NCHW or blocked NCHW{c}c alike."""
    shape, dt = shape_of(x), dtype_of(x)
    r = reduce_rows(lambda i: x[tuple(i)], shape, (2, 3), "sum", dt, c.target_lanes(attrs),
                    "gap_sum")
    scale = const(1.0 / max(shape[2] * shape[3], 1), dt)
    return te.compute(tuple(out_types[0].shape), lambda *i: r[i] * scale, name=name)


@lowering("global_avg_pool2d")
def global_avg_pool2d(inputs, attrs, out_types):
    return spatial_mean(inputs[0], attrs, out_types, "global_avg_pool2d")


@lowering("batch_norm")
def batch_norm(inputs, attrs, out_types):
    x, scale, bias, mean, var = inputs
    shape, dt = shape_of(x), dtype_of(x)
    eps = const(attrs["epsilon"], dt)

    def fn(*idx):
        ch = idx[1]
        return (x[idx] - mean[ch]) / tirx.sqrt(var[ch] + eps) * scale[ch] + bias[ch]

    return te.compute(shape, fn, name="batch_norm")


@lowering("layer_norm")
def layer_norm(inputs, attrs, out_types):
    x = inputs[0]
    weight = inputs[1] if len(inputs) > 1 else None
    bias = inputs[2] if len(inputs) > 2 else None
    shape, dt, lanes = shape_of(x), dtype_of(x), c.target_lanes(attrs)
    axis = attrs["axis"] % len(shape)
    axes = tuple(range(axis, len(shape)))
    count = 1
    for a in axes:
        count *= shape[a]
    inv_n = const(1.0 / max(count, 1), dt)

    def row(i):
        return tuple(i[:axis]) + (0,) * len(axes)

    s = reduce_rows(lambda i: x[tuple(i)], shape, axes, "sum", dt, lanes, "ln_sum")

    def centred_sq(i):
        d = x[tuple(i)] - s[row(i)] * inv_n
        return d * d

    ss = reduce_rows(centred_sq, shape, axes, "sum", dt, lanes, "ln_var")

    def fn(*idx):
        r = row(idx)
        y = (x[idx] - s[r] * inv_n) / tirx.sqrt(ss[r] * inv_n + const(attrs["epsilon"], dt))
        tail = idx[axis:]
        if weight is not None:
            y = y * weight[tail]
        if bias is not None:
            y = y + bias[tail]
        return y

    return te.compute(shape, fn, name="layer_norm")


@lowering("lrn")
def lrn(inputs, attrs, out_types):
    x = inputs[0]
    shape, dt = shape_of(x), dtype_of(x)
    size = attrs["size"]
    ch = shape[1]
    r = te.reduce_axis((0, size), name="r")

    def sq(*idx):
        cc = idx[1] - size // 2 + r
        src = (idx[0], _clamped(cc, ch), *idx[2:])
        v = tirx.if_then_else(tirx.all(cc >= 0, cc < ch), x[src], const(0, dt))
        return te.sum(v * v, axis=r)

    total = te.compute(shape, sq, name="lrn_sum", attrs={"kiln.row": 1, "kiln.outer": 1})
    k, a, beta = (const(attrs[n], dt) for n in ("bias", "alpha", "beta"))

    def fn(*idx):
        return x[idx] / tirx.power(k + a / const(size, dt) * total[idx], beta)

    return te.compute(shape, fn, name="lrn")


@lowering("conv_transpose2d")
def conv_transpose2d(inputs, attrs, out_types):
    """Direct gather form: out[y] sums x[(y + pad - k*d) / s] over the taps that divide."""
    x, w = inputs[:2]
    bias = inputs[2] if len(inputs) > 2 else None
    n, ch, h, wd = shape_of(x)
    _, og, kh, kw = shape_of(w)
    groups = attrs["groups"]
    cg = ch // groups
    (sh, sw), (dh, dw) = attrs["strides"], attrs["dilations"]
    top, left = attrs["pads"][:2]
    dt = dtype_of(x)
    rc = te.reduce_axis((0, cg), name="rc")
    ry, rx = te.reduce_axis((0, kh), name="ry"), te.reduce_axis((0, kw), name="rx")

    def fn(b, oo, i, j):
        ty, tx = i + top - ry * dh, j + left - rx * dw
        yi, xi = tirx.floordiv(ty, sh), tirx.floordiv(tx, sw)
        ok = tirx.all(ty >= 0, tx >= 0, tirx.floormod(ty, sh) == 0, tirx.floormod(tx, sw) == 0,
                      yi < h, xi < wd)
        cin = (oo // og) * cg + rc
        # only the taps an input pixel scatters to are products (as the reference and
        # PyTorch): 0 * w would make an inf or NaN weight's zero taps NaN
        tap = x[b, cin, _clamped(yi, h), _clamped(xi, wd)] * w[cin, oo % og, ry, rx]
        return te.sum(tirx.if_then_else(ok, tap, const(0, dt)), axis=[rc, ry, rx])

    out = te.compute(tuple(out_types[0].shape), fn, name="conv_transpose2d",
                     attrs={"kiln.row": 2, "kiln.outer": 1})
    if bias is None:
        return out
    return te.compute(out.shape, lambda b, oo, i, j: out[b, oo, i, j] + bias[oo],
                      name="conv_transpose2d_bias")
