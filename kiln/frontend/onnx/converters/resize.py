"""Resize: separable interpolation as one constant matrix per resized axis.

kiln has no resize op, but every mode ONNX defines (nearest, linear, cubic, with antialias,
exclude_outside and each coordinate transformation) is linear along each axis: output ``i`` is
a fixed weighted sum of inputs. The weights are computed here, as ONNX's reference computes
them; nearest becomes a ``gather``, the others a ``matmul``. Resized dims must be static.
"""

from __future__ import annotations

import math

import numpy as np

from kiln.frontend.onnx.context import NodeContext, Ref
from kiln.frontend.onnx.converters.shape import static
from kiln.frontend.onnx.registry import converter
from kiln.frontend.onnx.validate import Rule, Spec, axes, finite, flag, one_of
from kiln.ir.types import is_float, to_numpy_dtype


def _nearest(ratio: float, scale: float, mode: str) -> np.ndarray:
    if float(ratio).is_integer():
        return np.array([0.0, 1.0])
    up = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5,
          "floor": False, "ceil": True}[mode]
    return np.array([0.0, 1.0]) if up else np.array([1.0, 0.0])


def _linear(ratio: float, scale: float, antialias: bool) -> np.ndarray:
    if not antialias:
        return np.array([1 - ratio, ratio])
    scale = min(scale, 1.0)
    start = int(np.floor(-1 / scale) + 1)
    args = (np.arange(start, start + 2 - 2 * start) - ratio) * scale
    coeffs = np.clip(1 - np.abs(args), 0, 1)
    return coeffs / coeffs.sum()


def _cubic(ratio: float, scale: float, antialias: bool, a: float) -> np.ndarray:
    def weight(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        if x < 2:
            return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
        return 0.0

    if not antialias:
        return np.array([weight(ratio + 1), weight(ratio), weight(1 - ratio), weight(2 - ratio)])
    scale = min(scale, 1.0)
    start = int(np.floor(-2 / scale) + 1)
    coeffs = np.array([weight(scale * (i - ratio)) for i in range(start, 2 - start)])
    return coeffs / coeffs.sum()


def _source(mode: str, y: np.ndarray, scale: float, size: int, out: int, roi) -> np.ndarray:
    """Output positions ``y`` as input coordinates (ONNX coordinate_transformation_mode)."""
    width = scale * size
    if mode == "align_corners":
        return np.zeros(out) if width == 1 else y * (size - 1) / (width - 1)
    if mode == "asymmetric":
        return y / scale
    if mode == "tf_crop_and_resize":
        if width == 1:
            return np.full(out, (roi[1] - roi[0]) * (size - 1) / 2) + roi[0] * (size - 1)
        return y * (roi[1] - roi[0]) * (size - 1) / (width - 1) + roi[0] * (size - 1)
    if mode == "pytorch_half_pixel":
        return np.full(out, -0.5) if width == 1 else (y + 0.5) / scale - 0.5
    if mode == "half_pixel":
        return (y + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        offset = size / 2 * (1 - out / width)
        return offset + (y + 0.5) / scale - 0.5
    raise ValueError(f"coordinate_transformation_mode {mode!r} is not supported")


def interpolation(n: NodeContext, size: int, out: int, scale: float, roi) -> tuple:
    """(matrix [out, size], extrapolated rows or None) for one axis."""
    mode = n.attr("mode", "nearest")
    transform = n.attr("coordinate_transformation_mode", "half_pixel")
    antialias = bool(n.attr("antialias", 0))
    y = np.arange(out, dtype=np.float64)
    x = _source(transform, y, scale, size, out, roi)
    base = np.floor(x).astype(np.int64)
    ratios = np.where(x == base, 1.0, x - base)
    if mode == "nearest":
        coeffs = [_nearest(r, scale, n.attr("nearest_mode", "round_prefer_floor"))
                  for r in ratios]
    elif mode == "linear":
        coeffs = [_linear(r, scale, antialias) for r in ratios]
    else:
        a = float(n.attr("cubic_coeff_a", -0.75))
        coeffs = [_cubic(r, scale, antialias, a) for r in ratios]
    coeffs = np.array(coeffs)
    taps = coeffs.shape[1]
    # the taps nearest x, ties to the left (as the reference's neighbour search)
    pad = int(np.ceil(taps / 2))
    xp = x + pad
    p = np.floor(xp).astype(np.int64)
    frac = xp - p
    if taps % 2 == 0:
        offset = np.where(frac == 0, -(taps // 2), -(taps // 2) + 1)
    else:
        offset = np.where(frac <= 0.5, -((taps - 1) // 2), -((taps - 1) // 2) + 1)
    idx = (p + offset)[:, None] + np.arange(taps)[None, :] - pad
    if n.attr("exclude_outside", 0):
        coeffs = np.where((idx < 0) | (idx >= size), 0.0, coeffs)
        total = coeffs.sum(axis=1, keepdims=True)
        coeffs = coeffs / np.where(total == 0, 1.0, total)
    matrix = np.zeros((out, size))
    np.add.at(matrix, (np.repeat(np.arange(out), taps), np.clip(idx, 0, size - 1).ravel()),
              coeffs.ravel())
    outside = (x < 0) | (x > size - 1) if transform == "tf_crop_and_resize" else None
    return matrix, outside


def _targets(n: NodeContext, x: Ref) -> tuple[list[float], list[int], list | None]:
    """(scales, output sizes, roi per axis) over all axes."""
    r = x.rank
    axes = [a % r for a in n.attr("axes", range(r))]
    roi_arr = n.input(1)
    roi = None
    if roi_arr is not None and n.const(1, "roi").size:
        values = n.const(1, "roi").astype(np.float64).reshape(-1)
        roi = [(0.0, 1.0)] * r
        for i, a in enumerate(axes):
            roi[a] = (values[i], values[i + len(axes)])
    scales_in = n.input(2)
    sizes_in = n.input(3)
    dims = list(x.shape)
    scales = [1.0] * r
    sizes: list = list(dims)
    if sizes_in is not None and n.const(3, "sizes").size:
        given = [int(v) for v in n.const(3, "sizes").reshape(-1)]
        for a in axes:
            static(n, dims[a], f"resized axis {a}")
        factors = [g / dims[a] for g, a in zip(given, axes)]
        policy = n.attr("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            s = min(factors) if policy == "not_larger" else max(factors)
            factors = [s] * len(axes)
            given = [int(s * dims[a] + 0.5) for a in axes]
        for a, g, f in zip(axes, given, factors):
            sizes[a], scales[a] = g, f
    elif scales_in is not None and n.const(2, "scales").size:
        for a, s in zip(axes, n.const(2, "scales").astype(np.float64).reshape(-1)):
            scales[a] = float(s)
            if s != 1.0:
                sizes[a] = int(math.floor(static(n, dims[a], f"resized axis {a}") * s))
    else:
        raise n.unsupported("Resize needs scales or sizes")
    return scales, sizes, roi


# the most entries of the interpolation matrix kiln builds for one axis ([out, in] float64)
MAX_MATRIX = 1 << 24


def _resized_axes(n: NodeContext) -> int:
    return len(n.attr("axes", range(n.x.rank)))


def _one_per_axis(positive: bool) -> Rule:
    """Scales (positive, finite) or sizes (non-negative), one per resized axis."""

    def rule(values: list, n: NodeContext) -> str | None:
        if not values:
            return None  # empty: the other of scales and sizes is given
        if len(values) != _resized_axes(n):
            return f"must hold one value per resized axis ({_resized_axes(n)})"
        if positive and not all(math.isfinite(v) and v > 0 for v in values):
            return "scales must be positive and finite"
        if not positive and any(v < 0 for v in values):
            return "sizes must not be negative"
        return None

    return rule


def _roi(values: list, n: NodeContext) -> str | None:
    if values and len(values) != 2 * _resized_axes(n):
        return f"roi must hold a start and an end per resized axis ({2 * _resized_axes(n)})"
    return None


def _output_fits(n: NodeContext) -> str | None:
    """No empty axis resized, and each resized axis's interpolation matrix, [out, in],
    within MAX_MATRIX entries."""
    x, scales, sizes = n.x, n.input(2), n.input(3)
    dims = [x.shape[a % x.rank] for a in n.attr("axes", range(x.rank))]
    if sizes is not None and sizes.const is not None and sizes.const.size:
        outs = [int(v) for v in sizes.const.reshape(-1)]
        factors = [None] * len(outs)
    elif scales is not None and scales.const is not None and scales.const.size:
        factors = [float(s) for s in scales.const.reshape(-1)]
        outs = [math.floor(d * s) if isinstance(d, int) else 0 for d, s in zip(dims, factors)]
    else:
        return None
    for d, out, factor in zip(dims, outs, factors):
        if d == 0 and (out or factor not in (None, 1.0)):
            return f"cannot resize an empty axis of {x.type}"
        if isinstance(d, int) and out * d > MAX_MATRIX:
            return (f"resizing an axis of {d} to {out} needs a {out} x {d} interpolation "
                    f"matrix; kiln builds at most {MAX_MATRIX} entries per axis")
    return None


_RESIZE = Spec(
    ranks={1: (1, 1), 2: (1, 1), 3: (1, 1)},
    attrs={"mode": one_of("nearest", "linear", "cubic"),
           "coordinate_transformation_mode": one_of(
               "half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
               "asymmetric", "tf_crop_and_resize"),
           "nearest_mode": one_of("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"),
           "keep_aspect_ratio_policy": one_of("stretch", "not_larger", "not_smaller"),
           "antialias": flag, "exclude_outside": flag, "axes": axes(),
           "cubic_coeff_a": finite},
    values={1: _roi, 2: _one_per_axis(positive=True), 3: _one_per_axis(positive=False)},
    checks=(_output_fits,))


@converter("Resize", 13, 18, 19, spec=_RESIZE)
def resize(n: NodeContext) -> Ref:
    x = n.x
    scales, sizes, roi = _targets(n, x)
    mode = n.attr("mode", "nearest")
    dtype = x.dtype
    if mode != "nearest" and not is_float(dtype):
        raise n.unsupported(f"Resize mode {mode!r} of {dtype} input (kiln interpolates floats)")
    y = n.cast(x, "float32") if dtype in ("float16", "bfloat16") else x
    outside = None
    for a in range(x.rank):
        axis_roi = None if roi is None else roi[a]
        if sizes[a] == x.shape[a] and scales[a] == 1.0 and axis_roi in (None, (0.0, 1.0)):
            continue
        size = static(n, x.shape[a], f"resized axis {a}")
        matrix, out_a = interpolation(n, size, sizes[a], scales[a], axis_roi)
        y = _along(n, y, matrix, a, mode == "nearest")
        if out_a is not None and out_a.any():
            shape = [1] * x.rank
            shape[a] = sizes[a]
            mask = out_a.reshape(shape)
            outside = mask if outside is None else outside | mask
    if outside is not None:
        value = float(n.attr("extrapolation_value", 0.0))
        y = n.op("where", outside, n.const_like(value, y), y)
    return n.cast(y, dtype)


def _along(n: NodeContext, y: Ref, matrix: np.ndarray, axis: int, nearest: bool) -> Ref:
    """``matrix`` [out, in] applied along ``axis`` of y."""
    if nearest:  # one-hot rows: a gather, for any dtype
        return n.op("gather", y, matrix.argmax(axis=1).astype(np.int64), axis=axis)
    m = matrix.astype(to_numpy_dtype(y.dtype))
    if axis == y.rank - 1:
        return n.op("matmul", y, np.ascontiguousarray(m.T))
    if axis == y.rank - 2:
        return n.op("matmul", m, y)
    perm = [d for d in range(y.rank) if d != axis] + [axis]
    moved = n.op("matmul", n.op("transpose", y, perm=tuple(perm)), np.ascontiguousarray(m.T))
    return n.op("transpose", moved, perm=tuple(int(i) for i in np.argsort(perm)))
