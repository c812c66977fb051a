"""Normalizations: BatchNormalization (inference), InstanceNormalization, LayerNormalization,
GroupNormalization, RMSNormalization, MeanVarianceNormalization and LRN."""

from __future__ import annotations

from kiln.frontend.onnx.context import NodeContext, Ref
from kiln.frontend.onnx.registry import converter
from kiln.frontend.onnx.validate import (
    Check,
    Spec,
    all_of,
    at_least,
    axes,
    axis,
    between,
    finite,
    flag,
    one_of,
)


def _per_channel(n: NodeContext, v: Ref, x: Ref) -> Ref:
    """A [C] tensor shaped [C, 1, ...] to broadcast over x [N, C, ...]."""
    return n.op("reshape", v, shape=(v.shape[0],) + (1,) * (x.rank - 2))


def _stash(n: NodeContext, x: Ref) -> Ref:
    """x in the precision ONNX's stash_type asks for (float32 unless stash_type=0)."""
    if n.attr("stash_type", 1) == 1 and x.dtype in ("float16", "bfloat16"):
        return n.cast(x, "float32")
    return x


def _per_channel_params(first: int, last: int) -> Check:
    """Inputs ``first``..``last`` hold one value per channel of x [N, C, ...]."""

    def check(n: NodeContext) -> str | None:
        c = n.x.shape[1]
        for i in range(first, last + 1):
            p = n.input(i)
            if p is not None and p.shape != (c,):
                return f"input {i} ({n.node.input[i]!r}) is {p.type}; it must hold one " \
                       f"value per channel ({c}) of {n.x.type}"
        return None

    return check


_EPSILON = {"epsilon": all_of(finite, at_least(0))}


@converter("BatchNormalization", 9, 14, 15, spec=Spec(
    ranks={0: (2, None)}, attrs={**_EPSILON, "training_mode": flag, "momentum": finite},
    checks=(_per_channel_params(1, 4),)))
def batch_norm(n: NodeContext) -> Ref:
    if n.attr("training_mode", 0):
        raise n.unsupported("BatchNormalization in training mode is not supported (kiln "
                            "imports inference graphs)")
    x = n.x
    params = [n.cast(p, x.dtype) for p in n.inputs[1:5]]
    return n.op("batch_norm", x, *params, epsilon=float(n.attr("epsilon", 1e-5)))


@converter("InstanceNormalization", 6, 22, spec=Spec(
    ranks={0: (3, None)}, attrs=_EPSILON, checks=(_per_channel_params(1, 2),)))
def instance_norm(n: NodeContext) -> Ref:
    """A layer norm over the spatial dims of each (sample, channel), then scale and shift."""
    x, scale, bias = n.inputs
    y = n.op("layer_norm", x, axis=2, epsilon=float(n.attr("epsilon", 1e-5)))
    return n.op("add", n.op("mul", y, _per_channel(n, scale, x)), _per_channel(n, bias, x))


# stash_type: the float type the statistics are computed in (FLOAT, FLOAT16, DOUBLE, BFLOAT16)
_STASH = {"stash_type": one_of(1, 10, 11, 16)}


@converter("LayerNormalization", 17, spec=Spec(ranks={0: (1, None)},
                                               attrs={**_EPSILON, **_STASH, "axis": axis()}))
def layer_norm(n: NodeContext) -> list[Ref]:
    x, scale, bias = n.x, n.inputs[1], n.input(2)
    axis = int(n.attr("axis", -1)) % x.rank
    eps = float(n.attr("epsilon", 1e-5))
    xs = _stash(n, x)
    tail = x.shape[axis:]
    if xs.dtype == x.dtype and scale.shape == tail and (bias is None or bias.shape == tail):
        y = n.op("layer_norm", x, scale, *([bias] if bias is not None else []), axis=axis,
                 epsilon=eps)
    else:  # scale and bias broadcast (or the norm runs in float32): apply them after
        y = n.cast(n.op("layer_norm", xs, axis=axis, epsilon=eps), x.dtype)
        y = n.op("mul", y, scale)
        if bias is not None:
            y = n.op("add", y, bias)
    outs = [y]
    if n.wants_output(1) or n.wants_output(2):
        axes = tuple(range(axis, x.rank))
        mean = n.op("mean", xs, axes=axes, keepdims=True)
        centred = n.op("sub", xs, mean)
        var = n.op("mean", n.op("mul", centred, centred), axes=axes, keepdims=True)
        outs += [mean, n.op("rsqrt", n.op("add", var, eps))]
    return outs


def _groups_divide_channels(n: NodeContext) -> str | None:
    c, groups = n.x.shape[1], int(n.attr("num_groups"))
    if not isinstance(c, int):
        return f"GroupNormalization needs static channels, got {n.x.type}"
    if c % groups:
        return f"num_groups={groups} does not divide the {c} channels of {n.x.type}"
    want = groups if n.version < 21 else c
    for i in (1, 2):
        if n.inputs[i].shape != (want,):
            return f"input {i} ({n.node.input[i]!r}) is {n.inputs[i].type}; it must hold " \
                   f"{want} values"
    return None


@converter("GroupNormalization", 18, 21, spec=Spec(
    ranks={0: (3, None)}, attrs={**_EPSILON, **_STASH, "num_groups": at_least(1)},
    checks=(_groups_divide_channels,)))
def group_norm(n: NodeContext) -> Ref:
    """A layer norm over [N, G, C/G * spatial]; scale and bias per group (18) or per
    channel (21)."""
    x, scale, bias = n.inputs
    groups = int(n.attr("num_groups"))
    c = x.shape[1]
    grouped = n.op("reshape", _stash(n, x), shape=(x.shape[0], groups, -1))
    normed = n.op("layer_norm", grouped, axis=2, epsilon=float(n.attr("epsilon", 1e-5)))
    y = n.op("reshape", n.cast(normed, x.dtype), shape=x.shape)
    if n.version < 21:  # one scale per group: repeat it over the group's channels
        scale, bias = (_repeat_groups(n, v, c // groups) for v in (scale, bias))
    return n.op("add", n.op("mul", y, _per_channel(n, scale, x)), _per_channel(n, bias, x))


def _repeat_groups(n: NodeContext, v: Ref, each: int) -> Ref:
    grown = n.op("expand", n.op("unsqueeze", v, axes=(1,)), shape=(v.shape[0], each))
    return n.op("reshape", grown, shape=(v.shape[0] * each,))


@converter("RMSNormalization", 23, spec=Spec(ranks={0: (1, None)},
                                             attrs={**_EPSILON, **_STASH, "axis": axis()}))
def rms_norm(n: NodeContext) -> Ref:
    x, scale = n.x, n.inputs[1]
    axis = int(n.attr("axis", -1)) % x.rank
    xs = _stash(n, x)
    ms = n.op("mean", n.op("mul", xs, xs), axes=tuple(range(axis, x.rank)), keepdims=True)
    y = n.op("mul", xs, n.op("rsqrt", n.op("add", ms, float(n.attr("epsilon", 1e-5)))))
    return n.op("mul", n.cast(y, x.dtype), scale)


@converter("MeanVarianceNormalization", 13, spec=Spec(attrs={"axes": axes()}))
def mean_variance_norm(n: NodeContext) -> Ref:
    """(x - E[x]) / (sqrt(E[x^2] - E[x]^2) + 1e-9), as ONNX's function body."""
    x = n.x
    axes = tuple(n.attr("axes", (0, 2, 3)))
    mean = n.op("mean", x, axes=axes, keepdims=True)
    var = n.op("sub", n.op("mean", n.op("mul", x, x), axes=axes, keepdims=True),
               n.op("mul", mean, mean))
    return n.op("div", n.op("sub", x, mean), n.op("add", n.op("sqrt", var), 1e-9))


# the widest LRN window kiln compiles (its bounds are 32-bit ints in the kernel)
MAX_LRN_SIZE = 1 << 16


@converter("LRN", 13, spec=Spec(ranks={0: (3, None)},
                                attrs={"size": between(1, MAX_LRN_SIZE), "alpha": finite,
                                       "beta": finite, "bias": finite}))
def lrn(n: NodeContext) -> Ref:
    """kiln's lrn sums channels c - size//2 .. c + (size-1)//2 (PyTorch's window); ONNX's
    even-size window is shifted one channel up, which is kiln's on the channels reversed."""
    x, size = n.x, int(n.attr("size"))
    attrs = dict(size=size, alpha=float(n.attr("alpha", 1e-4)), beta=float(n.attr("beta", 0.75)),
                 bias=float(n.attr("bias", 1.0)))
    if size % 2:
        return n.op("lrn", x, **attrs)
    flip = dict(starts=(-1,), ends=(-(2**63),), axes=(1,), steps=(-1,))
    return n.op("slice", n.op("lrn", n.op("slice", x, **flip), **attrs), **flip)

