"""QuantizeLinear and DequantizeLinear (per tensor, per axis and blocked), for int8 and uint8:
the quantize-dequantize pairs of quantized models, as float arithmetic, rounds and casts;
QLinearConv and QLinearMatMul as the same pattern around a float Conv/MatMul (the int8 pass,
``kiln/passes/int8.py``, puts the integer kernels back), and ConvInteger."""

from __future__ import annotations

import numpy as np

from kiln.frontend.onnx.context import NodeContext, Ref
from kiln.frontend.onnx.converters.nn import WINDOW_ATTRS, convolve
from kiln.frontend.onnx.converters.shape import static
from kiln.frontend.onnx.dtypes import to_kiln_dtype
from kiln.frontend.onnx.registry import converter
from kiln.frontend.onnx.validate import Spec, at_least, axis, flag
from kiln.ir.types import to_numpy_dtype


def _spread(n: NodeContext, p: Ref, x: Ref, axis: int | None = None) -> Ref:
    """A scale or zero point broadcast against x: per tensor, per axis (the node's ``axis``
    unless given) or blocked."""
    if p.rank == 0 or (p.rank == 1 and p.shape[0] == 1 and x.rank != 1):
        return p if p.rank == 0 else n.op("reshape", p, shape=())
    axis = (int(n.attr("axis", 1)) if axis is None else axis) % x.rank
    block = int(n.attr("block_size", 0))
    if not p.type.is_static:
        raise n.unsupported(f"a scale or zero point of symbolic shape {p.type}")
    if not block:  # per axis: [D] -> [1, .., D, .., 1]
        return n.op("reshape", p, shape=tuple(p.shape[0] if a == axis else 1
                                              for a in range(x.rank)))
    size = static(n, x.shape[axis], "the blocked axis")
    grown = n.op("unsqueeze", p, axes=(axis + 1,))
    shape = list(p.shape)
    grown = n.op("expand", grown, shape=tuple(shape[:axis + 1] + [block] + shape[axis + 1:]))
    shape[axis] *= block
    flat = n.op("reshape", grown, shape=tuple(shape))
    return n.op("slice", flat, starts=(0,), ends=(size,), axes=(axis,))


_QUANT = Spec(ranks={1: (0, None), 2: (0, None)},
               attrs={"axis": axis(), "block_size": at_least(0), "saturate": flag})


@converter("DequantizeLinear", 13, 19, 21, 23, 24, 25, 28, spec=_QUANT)
def dequantize_linear(n: NodeContext) -> Ref:
    dtype = n.inputs[1].dtype
    if n.attr("output_dtype", 0):
        dtype = to_kiln_dtype(n.attr("output_dtype"), "DequantizeLinear's output_dtype")
    return n.cast(dequantize(n, n.x, n.inputs[1], n.input(2)), dtype)


def dequantize(n: NodeContext, x: Ref, scale: Ref, zero: Ref | None,
               axis: int | None = None) -> Ref:
    """float32 ``(x - zero) * scale``."""
    y = n.cast(x, "float32")
    if zero is not None:
        y = n.op("sub", y, _spread(n, n.cast(zero, "float32"), x, axis))
    return n.op("mul", y, _spread(n, n.cast(scale, "float32"), x, axis))


@converter("QuantizeLinear", 13, 19, 21, 23, 24, 25, 28, spec=_QUANT)
def quantize_linear(n: NodeContext) -> Ref:
    return quantize(n, n.x, n.inputs[1], n.input(2))


def quantize(n: NodeContext, x: Ref, scale: Ref, zero: Ref | None,
             axis: int | None = None) -> Ref:
    """``saturate(round(x / scale) + zero)`` in the zero point's type (uint8 without one,
    unless the node's ``output_dtype`` says otherwise)."""
    if zero is not None:
        dtype = zero.dtype
    elif n.attr("output_dtype", 0):
        dtype = to_kiln_dtype(n.attr("output_dtype"), "QuantizeLinear's output_dtype")
    else:
        dtype = "uint8"
    if dtype not in ("int8", "uint8"):
        raise n.unsupported(f"QuantizeLinear to {dtype} (kiln quantizes to int8 and uint8)")
    y = n.op("round", n.op("div", n.cast(x, "float32"),
                           _spread(n, n.cast(scale, "float32"), x, axis)))
    if zero is not None:
        y = n.op("add", y, _spread(n, n.cast(zero, "float32"), x, axis))
    info = np.iinfo(to_numpy_dtype(dtype))
    return n.cast(n.op("clip", y, min=float(info.min), max=float(info.max)), dtype)


@converter("DynamicQuantizeLinear", 11)
def dynamic_quantize_linear(n: NodeContext) -> list[Ref]:
    """uint8 quantization over the range of x widened to hold 0: (y, scale, zero point)."""
    x = n.cast(n.x, "float32")
    zero = n.const_like(0.0, x)
    high = n.op("maximum", n.op("max", x), zero)
    low = n.op("minimum", n.op("min", x), zero)
    scale = n.op("div", n.op("sub", high, low), 255.0)
    point = n.op("clip", n.op("round", n.op("neg", n.op("div", low, scale))), min=0.0, max=255.0)
    y = n.op("clip", n.op("add", n.op("round", n.op("div", x, scale)), point), min=0.0, max=255.0)
    return [n.cast(y, "uint8"), scale, n.cast(point, "uint8")]


_QLINEAR_CONV = Spec(ranks={0: (4, 4), 3: (4, 4), 8: (1, 1)},
                     attrs={**WINDOW_ATTRS, "group": at_least(1)})


@converter("QLinearConv", 10, spec=_QLINEAR_CONV)
def qlinear_conv(n: NodeContext) -> Ref:
    """quantize(conv(dequantize(x), dequantize(w), bias * x_scale * w_scale)): w per tensor
    or per output channel, the int32 bias in the product's scale."""
    i = n.inputs
    x = dequantize(n, i[0], i[1], i[2])
    w = dequantize(n, i[3], i[4], i[5], axis=0)
    bias = n.input(8)
    if bias is not None:
        scale = n.op("mul", n.cast(i[1], "float32"), n.cast(i[4], "float32"))
        bias = n.op("mul", n.cast(bias, "float32"), n.op("reshape", scale, shape=(-1,))
                    if scale.rank else scale)
    return quantize(n, convolve(n, x, w, bias), i[6], i[7])


@converter("QLinearMatMul", 10, 21, spec=Spec(ranks={0: (1, None), 3: (1, None)}))
def qlinear_matmul(n: NodeContext) -> Ref:
    """quantize(dequantize(a) @ dequantize(b)): a per tensor or per row, b per tensor or
    per column."""
    i = n.inputs
    a = dequantize(n, i[0], i[1], i[2], axis=-2)
    b = dequantize(n, i[3], i[4], i[5], axis=-1)
    return quantize(n, n.op("matmul", a, b), i[6], i[7], axis=-1)


@converter("ConvInteger", 10, spec=Spec(ranks={0: (4, 4), 1: (4, 4)},
                                        attrs={**WINDOW_ATTRS, "group": at_least(1)}))
def conv_integer(n: NodeContext) -> Ref:
    """conv(x - x_zero_point, w - w_zero_point) summed in int32 (w's zero point per tensor
    or per output channel)."""
    x, w = (n.cast(r, "int32") for r in n.inputs[:2])
    zx, zw = n.input(2), n.input(3)
    if zx is not None:
        x = n.op("sub", x, _spread(n, n.cast(zx, "int32"), x, 1))
    if zw is not None:
        w = n.op("sub", w, _spread(n, n.cast(zw, "int32"), w, 0))
    return convolve(n, x, w, integer=True)
