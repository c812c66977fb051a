"""Normalizations: BatchNormalization (inference), InstanceNormalization, LayerNormalization,
GroupNormalization, RMSNormalization, MeanVarianceNormalization and LRN."""

from __future__ import annotations

from kiln.frontend.onnx.context import NodeContext, Ref
from kiln.frontend.onnx.registry import converter


def _per_channel(n: NodeContext, v: Ref, x: Ref) -> Ref:
    """A [C] tensor shaped [C, 1, ...] to broadcast over x [N, C, ...]."""
    return n.op("reshape", v, shape=(v.shape[0],) + (1,) * (x.rank - 2))


def _stash(n: NodeContext, x: Ref) -> Ref:
    """x in the precision ONNX's stash_type asks for (float32 unless stash_type=0)."""
    if n.attr("stash_type", 1) == 1 and x.dtype in ("float16", "bfloat16"):
        return n.cast(x, "float32")
    return x


@converter("BatchNormalization", 9, 14, 15)
def batch_norm(n: NodeContext) -> Ref:
    if n.attr("training_mode", 0):
        raise n.unsupported("BatchNormalization in training mode is not supported (kiln "
                            "imports inference graphs)")
    x = n.x
    params = [n.cast(p, x.dtype) for p in n.inputs[1:5]]
    return n.op("batch_norm", x, *params, epsilon=float(n.attr("epsilon", 1e-5)))


@converter("InstanceNormalization", 6, 22)
def instance_norm(n: NodeContext) -> Ref:
    """A layer norm over the spatial dims of each (sample, channel), then scale and shift."""
    x, scale, bias = n.inputs
    y = n.op("layer_norm", x, axis=2, epsilon=float(n.attr("epsilon", 1e-5)))
    return n.op("add", n.op("mul", y, _per_channel(n, scale, x)), _per_channel(n, bias, x))


@converter("LayerNormalization", 17)
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


@converter("GroupNormalization", 18, 21)
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


@converter("RMSNormalization", 23)
def rms_norm(n: NodeContext) -> Ref:
    x, scale = n.x, n.inputs[1]
    axis = int(n.attr("axis", -1)) % x.rank
    xs = _stash(n, x)
    ms = n.op("mean", n.op("mul", xs, xs), axes=tuple(range(axis, x.rank)), keepdims=True)
    y = n.op("mul", xs, n.op("rsqrt", n.op("add", ms, float(n.attr("epsilon", 1e-5)))))
    return n.op("mul", n.cast(y, x.dtype), scale)


@converter("MeanVarianceNormalization", 13)
def mean_variance_norm(n: NodeContext) -> Ref:
    """(x - E[x]) / (sqrt(E[x^2] - E[x]^2) + 1e-9), as ONNX's function body."""
    x = n.x
    axes = tuple(n.attr("axes", (0, 2, 3)))
    mean = n.op("mean", x, axes=axes, keepdims=True)
    var = n.op("sub", n.op("mean", n.op("mul", x, x), axes=axes, keepdims=True),
               n.op("mul", mean, mean))
    return n.op("div", n.op("sub", x, mean), n.op("add", n.op("sqrt", var), 1e-9))


@converter("LRN", 13)
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

