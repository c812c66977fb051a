"""The export table, continued: shape ops, convolutions, pools, normalizations, dropout."""

from __future__ import annotations

import numpy as np

from kiln.errors import KilnError, UnsupportedOpError
from kiln.frontend.onnx.dtypes import to_onnx_dtype
from kiln.frontend.onnx.export_ops import _scalar, check_static, exports
from kiln.frontend.onnx.exporter import Exporter
from kiln.ir.dims import as_dim
from kiln.ir.graph import Node
from kiln.ir.ops.constant import random_bits, uniform_from_bits
from kiln.ir.ops.layout import nchwc, relayout_plan, transform_shape
from kiln.ir.types import to_numpy_dtype

# -- shape ops ---------------------------------------------------------------------------------


@exports("reshape", "flatten")
def _reshape(e: Exporter, node: Node, ins: list[str], outs: list[str]) -> None:
    """A Reshape to the inferred output shape (symbolic dims read from the input's shape)."""
    target = node.outputs[0].type.shape
    zero = any(d == 0 for d in target)
    e.add("Reshape", [ins[0], e.shape_tensor(target, node.inputs[0], reshape=True)], outs,
          allowzero=1 if zero and e.opset >= 14 else None)


@exports("expand")
def _expand(e, node, ins, outs):
    e.add("Expand", [ins[0], e.shape_tensor(node.outputs[0].type.shape, node.inputs[0])], outs)


@exports("transpose")
def _transpose(e, node, ins, outs):
    perm = node.attrs["perm"]
    e.add("Transpose", ins, outs, perm=None if perm is None else list(perm))


@exports("concat")
def _concat(e, node, ins, outs):
    e.add("Concat", ins, outs, axis=node.attrs["axis"])


@exports("split")
def _split(e, node, ins, outs):
    """Split; sizes that are expressions of the input's symbolic dims are computed from its
    shape."""
    sizes = [as_dim(d) for d in node.attrs["sizes"]]
    e.add("Split", [ins[0], e.shape_tensor(sizes, node.inputs[0])], outs,
          axis=node.attrs["axis"])


@exports("slice")
def _slice(e, node, ins, outs):
    a = node.attrs
    n = len(a["starts"])
    axes = tuple(range(n)) if a["axes"] is None else a["axes"]
    steps = (1,) * n if a["steps"] is None else a["steps"]
    ends = [as_dim(v) if isinstance(v, str) else max(min(v, 2**63 - 1), -(2**63))
            for v in a["ends"]]
    # (an end that is a symbolic size is read from the graph inputs' shapes)
    end_tensor = e.shape_tensor(ends, *e.inputs) if any(isinstance(v, str) for v in ends) \
        else e.ints(ends)
    e.add("Slice", [ins[0], e.ints(a["starts"]), end_tensor, e.ints(axes), e.ints(steps)],
          outs)


@exports("gather")
def _gather(e, node, ins, outs):
    e.add("Gather", ins, outs, axis=node.attrs["axis"])


@exports("take_along_axis")
def _take_along_axis(e, node, ins, outs):
    """GatherElements wants data and indices of one shape off the axis; kiln broadcasts them,
    so both are expanded first."""
    data, idx = node.inputs
    out = node.outputs[0].type.shape
    axis = node.attrs["axis"] % len(out)
    names = list(ins)
    for i, v in enumerate((data, idx)):
        want = tuple(v.shape[axis] if a == axis else d for a, d in enumerate(out))
        if want != v.shape:
            names[i] = e.add1("Expand", [names[i], e.shape_tensor(want, data, idx)])
    e.add("GatherElements", names, outs, axis=axis)


@exports("squeeze")
def _squeeze(e, node, ins, outs):
    t = node.inputs[0].type
    axes = node.attrs["axes"]
    if axes is None:
        axes = tuple(i for i, d in enumerate(t.shape) if d == 1)
    elif isinstance(axes, int):
        axes = (axes,)
    e.add("Squeeze", [ins[0], e.ints(axes, "axes")], outs)


@exports("unsqueeze")
def _unsqueeze(e, node, ins, outs):
    axes = node.attrs["axes"]
    e.add("Unsqueeze", [ins[0], e.ints((axes,) if isinstance(axes, int) else axes, "axes")],
          outs)


@exports("pad")
def _pad(e, node, ins, outs):
    a = node.attrs
    value = "" if a["mode"] != "constant" else _scalar(e, a["value"], node)
    e.add("Pad", [ins[0], e.ints(a["pads"], "pads")] + ([value] if value else []), outs,
          mode=a["mode"])


@exports("tril", "triu")
def _triangle(e, node, ins, outs):
    k, upper = node.attrs["k"], node.op == "triu"
    if e.opset >= 14:
        e.add("Trilu", [ins[0], e.const(np.int64(k))], outs, upper=int(upper))
        return
    rows, cols = check_static(node, "shape")[-2:]
    keep = np.triu(np.ones((rows, cols), bool), k) if upper else np.tril(
        np.ones((rows, cols), bool), k)
    e.add("Where", [e.const(keep), ins[0], _scalar(e, 0, node)], outs)


@exports("one_hot")
def _one_hot(e, node, ins, outs):
    """Equal(indices counted from the start, 0..depth-1), cast to the output dtype."""
    depth, dtype = node.attrs["depth"], node.attrs["dtype"]
    idx_dtype = node.inputs[0].dtype
    idx = ins[0]
    wrapped = e.add1("Add", [idx, e.const(depth, idx_dtype)])
    idx = e.add1("Where", [e.add1("Less", [idx, e.const(0, idx_dtype)]), wrapped, idx])
    hit = e.add1("Equal", [e.add1("Unsqueeze", [idx, e.ints([-1], "axes")]),
                           e.const(np.arange(depth), idx_dtype)])
    e.add("Cast", [hit], outs, to=to_onnx_dtype(dtype))


# -- convolutions and pools --------------------------------------------------------------------


@exports("conv1d", "conv2d")
def _conv(e, node, ins, outs):
    a = node.attrs
    e.add("Conv", ins, outs, kernel_shape=list(node.inputs[1].shape[2:]),
          strides=list(a["strides"]), pads=list(a["pads"]), dilations=list(a["dilations"]),
          group=a["groups"])


@exports("conv2d_integer")
def _conv_integer(e, node, ins, outs):
    """ConvInteger pads with x's zero point and subtracts it from every tap, so
    ``pad_value`` p adds back p times each output channel's weight sum."""
    a, (x, w) = node.attrs, node.inputs
    if x.dtype not in ("int8", "uint8") or w.dtype not in ("int8", "uint8"):
        raise KilnError(f"conv2d_integer of {x.type} and {w.type} has no ONNX form "
                        "(ConvInteger takes 8-bit operands)")
    p = a["pad_value"]
    conv = dict(kernel_shape=list(w.shape[2:]), strides=list(a["strides"]), pads=list(a["pads"]),
                dilations=list(a["dilations"]), group=a["groups"])
    if p == 0:
        e.add("ConvInteger", ins[:2], outs, **conv)
        return
    y = e.add1("ConvInteger", [*ins[:2], e.const(p, x.dtype)], **conv)
    wide = e.add1("Cast", [ins[1]], to=to_onnx_dtype("int32"))
    sums = e.add1("ReduceSum", [wide, e.ints([1, 2, 3], "axes")], keepdims=1)  # [O, 1, 1, 1]
    per_channel = e.add1("Reshape", [sums, e.ints([-1, 1, 1], "shape")])
    e.add("Add", [y, e.add1("Mul", [per_channel, e.const(p, "int32")])], outs)


@exports("conv_transpose2d")
def _conv_transpose(e, node, ins, outs):
    a = node.attrs
    e.add("ConvTranspose", ins, outs, kernel_shape=list(node.inputs[1].shape[2:]),
          strides=list(a["strides"]), pads=list(a["pads"]), dilations=list(a["dilations"]),
          output_padding=list(a["output_padding"]), group=a["groups"])


@exports("max_pool2d", "avg_pool2d")
def _pool(e, node, ins, outs):
    a = node.attrs
    common = dict(kernel_shape=list(a["kernel_shape"]),
                  strides=list(a["strides"] or a["kernel_shape"]), pads=list(a["pads"]),
                  ceil_mode=int(a["ceil_mode"]))
    if node.op == "max_pool2d":
        e.add("MaxPool", ins, outs, dilations=list(a["dilations"]), **common)
    else:
        e.add("AveragePool", ins, outs, count_include_pad=int(a["count_include_pad"]), **common)


# -- normalizations ----------------------------------------------------------------------------


@exports("batch_norm")
def _batch_norm(e, node, ins, outs):
    e.add("BatchNormalization", ins, outs, epsilon=float(node.attrs["epsilon"]))


@exports("layer_norm")
def _layer_norm(e, node, ins, outs):
    x = node.inputs[0]
    axis, eps = node.attrs["axis"] % x.type.rank, float(node.attrs["epsilon"])
    tail = x.shape[axis:]
    static_tail = all(isinstance(d, int) for d in tail)
    if e.opset >= 17 and (len(ins) > 1 or static_tail):
        scale = ins[1] if len(ins) > 1 else e.const(np.ones(tail), x.dtype)
        e.add("LayerNormalization", [ins[0], scale] + ins[2:], outs, axis=axis, epsilon=eps)
        return
    def mean(v: str) -> str:
        if e.opset >= 18:
            axes = e.ints(tuple(range(axis, x.type.rank)), "axes")
            return e.add1("ReduceMean", [v, axes], keepdims=1)
        return e.add1("ReduceMean", [v], axes=list(range(axis, x.type.rank)), keepdims=1)

    centred = e.add1("Sub", [ins[0], mean(ins[0])])
    var = mean(e.add1("Mul", [centred, centred]))
    y = e.add1("Div", [centred, e.add1("Sqrt", [e.add1("Add", [var, _scalar(e, eps, node)])])])
    steps = [("Mul", ins[1]) if len(ins) > 1 else None, ("Add", ins[2]) if len(ins) > 2 else None]
    steps = [s for s in steps if s is not None]
    for k, (op, v) in enumerate(steps):
        y = e.add(op, [y, v], outs if k == len(steps) - 1 else 1)[0]
    if not steps:
        e.add("Identity", [y], outs)


@exports("lrn")
def _lrn(e, node, ins, outs):
    """ONNX's LRN for odd sizes. onnxruntime takes no even size (whose ONNX window differs
    from kiln's, PyTorch's, anyway), so an even-size LRN is written as its formula: the
    squares summed over channels c - size//2 .. c + (size-1)//2 as shifted slices."""
    a = node.attrs
    size = a["size"]
    if size % 2:
        e.add("LRN", ins, outs, size=size, alpha=float(a["alpha"]), beta=float(a["beta"]),
              bias=float(a["bias"]))
        return
    x = node.inputs[0]
    channels = x.shape[1]
    if not isinstance(channels, int):
        raise UnsupportedOpError(f"exporting an even-size lrn needs static channels, got {x.type}")
    rank = x.type.rank
    pads = [0] * (2 * rank)
    pads[1], pads[rank + 1] = size // 2, (size - 1) // 2
    sq = e.add1("Pad", [e.add1("Mul", [ins[0], ins[0]]), e.ints(pads, "pads")])
    total = None
    for k in range(size):
        piece = e.add1("Slice", [sq, e.ints([k]), e.ints([k + channels]), e.ints([1])])
        total = piece if total is None else e.add1("Add", [total, piece])
    scaled = e.add1("Mul", [total, _scalar(e, a["alpha"] / size, node)])
    denom = e.add1("Pow", [e.add1("Add", [scaled, _scalar(e, a["bias"], node)]),
                           _scalar(e, a["beta"], node)])
    e.add("Div", [ins[0], denom], outs)


@exports("dropout")
def _dropout(e, node, ins, outs):
    a = node.attrs
    if not a["training"]:
        e.add("Identity", ins, outs)
        return
    shape = check_static(node, "shape (the training mask is a constant)")
    size = int(np.prod(shape, dtype=np.int64))
    keep = (uniform_from_bits(random_bits(a["seed"], size)) >= a["p"]).reshape(shape)
    dtype = to_numpy_dtype(node.inputs[0].dtype)
    mask = (keep / (1 - a["p"])).astype(dtype)
    e.add("Mul", [ins[0], e.const(mask, hint=f"{outs[0]}_mask")], outs)



# -- blocked layouts (the O3 layout pass) ------------------------------------------------------


def _relayout(e: Exporter, x: str, shape, src: str, dst: str, outs: list[str] | None = None
              ) -> str:
    """Transpose -> Reshape -> Transpose relaying out ``x`` (static ``shape``)."""
    perm, split, perm2 = relayout_plan(tuple(shape), src, dst)
    if perm != sorted(perm):
        x = e.add1("Transpose", [x], perm=perm)
    x = e.add1("Reshape", [x, e.ints(split, "shape")])
    return e.add("Transpose", [x], outs or 1, perm=perm2)[0]


def _static_in(node: Node) -> tuple[int, ...]:
    t = node.inputs[0].type
    if not t.is_static:
        raise UnsupportedOpError(f"exporting {node.op} needs a static input, got {t}")
    return t.shape


@exports("layout_transform")
def _layout_transform(e, node, ins, outs):
    a = node.attrs
    _relayout(e, ins[0], _static_in(node), a["src_layout"], a["dst_layout"], outs)


@exports("conv2d_nchwc", "depthwise_conv2d_nchwc",
         *(f"{op}_nchwc" for op in ("max_pool2d", "avg_pool2d", "global_avg_pool2d")))
def _blocked(e, node, ins, outs):
    """The NCHW op between relayouts (onnxruntime folds the weight's at load time)."""
    x, y = node.inputs[0].type, node.outputs[0].type
    ic, oc = x.shape[-1], y.shape[-1]
    flat = _relayout(e, ins[0], _static_in(node), nchwc(ic), "NCHW")
    y4 = e.fresh(f"{outs[0]}_nchw")
    base = node.op[: -len("_nchwc")]
    if base in ("conv2d", "depthwise_conv2d"):
        w = node.inputs[1].shape
        depthwise = base == "depthwise_conv2d"
        ws = _relayout(e, ins[1], w, f"OIHW{oc}o" if depthwise else f"OIHW{ic}i{oc}o", "OIHW")
        a = node.attrs
        e.add("Conv", [flat, ws], [y4], kernel_shape=list(w[2:4]), strides=list(a["strides"]),
              pads=list(a["pads"]), dilations=list(a["dilations"]),
              group=x.shape[1] * ic if depthwise else 1)
    elif base == "global_avg_pool2d":
        e.add("GlobalAveragePool", [flat], [y4])
    else:
        _pool(e, Node(base, node.inputs, node.attrs, node.outputs), [flat], [y4])
    nchw = transform_shape(y.shape, nchwc(oc), "NCHW")
    _relayout(e, y4, nchw, "NCHW", nchwc(oc), outs)
