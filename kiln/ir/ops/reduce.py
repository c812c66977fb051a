"""Reductions over axes (``axes=None`` means all), softmax and log-softmax."""

from __future__ import annotations

import numpy as np

from kiln.ir.ops.registry import (
    FOLLOW,
    REDUCTION,
    fail,
    normalize_axes,
    normalize_axis,
    numel,
    register,
    require_float,
)
from kiln.ir.types import TensorType

_REDUCE_ATTRS = {"axes": None, "keepdims": False}


def _reduced_shape(t: TensorType, axes, keepdims: bool):
    axes = normalize_axes(axes, t.rank)
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(t.shape))
    return tuple(d for i, d in enumerate(t.shape) if i not in axes)


def _reduce(types, attrs):
    t = types[0]
    if t.dtype == "bool":
        fail("cannot reduce a bool tensor; cast it first")
    return t.with_shape(_reduced_shape(t, attrs["axes"], attrs["keepdims"]))


def _reduce_float(types, attrs):
    require_float(types[0])
    return _reduce(types, attrs)


def _reduce_flops(in_types, out_types, attrs):
    return numel(in_types[0].shape)


def _axes(x, axes):
    return None if axes is None else tuple(axes) if not isinstance(axes, int) else (axes,)


@register("sum", kind=REDUCTION, epilogue=True, infer=_reduce, attrs=_REDUCE_ATTRS,
          flops=_reduce_flops)
def sum_(x, axes, keepdims):
    return np.sum(x, axis=_axes(x, axes), keepdims=keepdims, dtype=x.dtype)


@register("mean", kind=REDUCTION, epilogue=True, infer=_reduce_float, attrs=_REDUCE_ATTRS,
          flops=_reduce_flops)
def mean(x, axes, keepdims):
    return np.mean(x, axis=_axes(x, axes), keepdims=keepdims, dtype=x.dtype)


@register("prod", kind=REDUCTION, epilogue=True, infer=_reduce, attrs=_REDUCE_ATTRS,
          flops=_reduce_flops)
def prod(x, axes, keepdims):
    return np.prod(x, axis=_axes(x, axes), keepdims=keepdims, dtype=x.dtype)


def _reduce_nonempty(types, attrs):
    t = types[0]
    axes = normalize_axes(attrs["axes"], t.rank)
    if any(t.shape[a] == 0 for a in axes):
        fail("max/min over an empty axis has no value")
    return _reduce(types, attrs)


@register("max", kind=REDUCTION, epilogue=True, infer=_reduce_nonempty, attrs=_REDUCE_ATTRS,
          precision=FOLLOW, flops=_reduce_flops)
def max_(x, axes, keepdims):
    return np.max(x, axis=_axes(x, axes), keepdims=keepdims)


@register("min", kind=REDUCTION, epilogue=True, infer=_reduce_nonempty, attrs=_REDUCE_ATTRS,
          precision=FOLLOW, flops=_reduce_flops)
def min_(x, axes, keepdims):
    return np.min(x, axis=_axes(x, axes), keepdims=keepdims)


@register("logsumexp", kind=REDUCTION, epilogue=True, infer=_reduce_float, attrs=_REDUCE_ATTRS,
          flops=_reduce_flops)
def logsumexp(x, axes, keepdims):
    """log(sum(exp(x))) computed stably by shifting by the max."""
    ax = _axes(x, axes)
    m = np.max(x, axis=ax, keepdims=True, initial=-np.inf)  # -inf: an empty sum is 0
    m = np.where(np.isfinite(m), m, np.zeros_like(m))
    out = np.log(np.sum(np.exp(x - m), axis=ax, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=ax)


def _arg(types, attrs):
    t = types[0]
    axis = normalize_axis(attrs["axis"], t.rank)
    if t.shape[axis] == 0:
        fail("argmax/argmin over an empty axis")
    shape = _reduced_shape(t, (axis,), attrs["keepdims"])
    return TensorType(shape, "int64")


@register("argmax", kind=REDUCTION, infer=_arg, attrs={"axis": -1, "keepdims": False},
          flops=_reduce_flops)
def argmax(x, axis, keepdims):
    """Index of the first maximum along ``axis``."""
    return np.argmax(x, axis=axis, keepdims=keepdims).astype(np.int64)


@register("argmin", kind=REDUCTION, infer=_arg, attrs={"axis": -1, "keepdims": False},
          flops=_reduce_flops)
def argmin(x, axis, keepdims):
    return np.argmin(x, axis=axis, keepdims=keepdims).astype(np.int64)


def _softmax_flops(in_types, out_types, attrs):
    return 5 * numel(in_types[0].shape)


def _softmax(types, attrs):
    t = types[0]
    require_float(t)
    normalize_axis(attrs["axis"], t.rank)
    return t


@register("softmax", kind=REDUCTION, epilogue=True, prologue=True, infer=_softmax,
          attrs={"axis": -1}, flops=_softmax_flops)
def softmax(x, axis):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True, initial=-np.inf))
    return e / np.sum(e, axis=axis, keepdims=True)


@register("log_softmax", kind=REDUCTION, epilogue=True, prologue=True, infer=_softmax,
          attrs={"axis": -1}, flops=_softmax_flops)
def log_softmax(x, axis):
    s = x - np.max(x, axis=axis, keepdims=True, initial=-np.inf)
    return s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True))
