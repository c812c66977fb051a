"""QuantizeLinear and DequantizeLinear (per tensor, per axis and blocked), for int8 and uint8:
the quantize-dequantize pairs of quantized models, as float arithmetic, rounds and casts."""

from __future__ import annotations

import numpy as np

from kiln.frontend.onnx.context import NodeContext, Ref
from kiln.frontend.onnx.converters.shape import static
from kiln.frontend.onnx.dtypes import to_kiln_dtype
from kiln.frontend.onnx.registry import converter
from kiln.frontend.onnx.validate import Spec, at_least, axis, flag
from kiln.ir.types import to_numpy_dtype


def _spread(n: NodeContext, p: Ref, x: Ref) -> Ref:
    """A scale or zero point broadcast against x: per tensor, per axis or blocked."""
    if p.rank == 0 or (p.rank == 1 and p.shape[0] == 1 and x.rank != 1):
        return p if p.rank == 0 else n.op("reshape", p, shape=())
    axis = int(n.attr("axis", 1)) % x.rank
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
    x, scale, zero = n.x, n.inputs[1], n.input(2)
    dtype = scale.dtype
    if n.attr("output_dtype", 0):
        dtype = to_kiln_dtype(n.attr("output_dtype"), "DequantizeLinear's output_dtype")
    y = n.cast(x, "float32")
    if zero is not None:
        y = n.op("sub", y, _spread(n, n.cast(zero, "float32"), x))
    return n.cast(n.op("mul", y, _spread(n, n.cast(scale, "float32"), x)), dtype)


@converter("QuantizeLinear", 13, 19, 21, 23, 24, 25, 28, spec=_QUANT)
def quantize_linear(n: NodeContext) -> Ref:
    x, scale, zero = n.x, n.inputs[1], n.input(2)
    if zero is not None:
        dtype = zero.dtype
    elif n.attr("output_dtype", 0):
        dtype = to_kiln_dtype(n.attr("output_dtype"), "QuantizeLinear's output_dtype")
    else:
        dtype = "uint8"
    if dtype not in ("int8", "uint8"):
        raise n.unsupported(f"QuantizeLinear to {dtype} (kiln quantizes to int8 and uint8)")
    y = n.op("round", n.op("div", n.cast(x, "float32"), _spread(n, n.cast(scale, "float32"),
                                                                  x)))
    if zero is not None:
        y = n.op("add", y, _spread(n, n.cast(zero, "float32"), x))
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
