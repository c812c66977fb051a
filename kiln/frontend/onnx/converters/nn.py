"""Convolutions, pooling, MatMul and Gemm. kiln's window ops are 1-D/2-D convolutions and
2-D pools in NCHW; 1-D pools and transposed convolutions run as 2-D ones with a height of 1."""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from kiln.frontend.onnx.context import NodeContext, Ref, check_constant
from kiln.frontend.onnx.converters.shape import static
from kiln.frontend.onnx.registry import converter
from kiln.frontend.onnx.validate import (
    Check,
    Spec,
    all_of,
    at_least,
    flag,
    one_of,
    per_spatial_axis,
    same_rank,
)
from kiln.ir.types import is_float, to_numpy_dtype

# what every window op (convolutions, pools) checks of its attributes
WINDOW_ATTRS = {
    "strides": per_spatial_axis(1, low=1), "dilations": per_spatial_axis(1, low=1),
    "pads": per_spatial_axis(2, low=0), "kernel_shape": per_spatial_axis(1, low=1),
    "auto_pad": one_of("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"),
}


def window(n: NodeContext, x: Ref, kernel: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """(strides, pads, dilations) of a window op, with auto_pad resolved to explicit pads."""
    r = len(kernel)
    strides = tuple(n.attr("strides", (1,) * r))
    dilations = tuple(n.attr("dilations", (1,) * r))
    auto = n.attr("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for i in range(r):
            size = static(n, x.shape[2 + i], f"spatial dimension {i}")
            out = -(-size // strides[i])
            total = max((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size, 0)
            small, big = total // 2, total - total // 2
            begins.append(small if auto == "SAME_UPPER" else big)
            ends.append(big if auto == "SAME_UPPER" else small)
        pads = tuple(begins + ends)
    elif auto == "VALID":
        pads = (0,) * (2 * r)
    else:
        pads = tuple(n.attr("pads", (0,) * (2 * r)))
    return strides, pads, dilations


def _spatial_rank(n: NodeContext, x: Ref, kinds: tuple[int, ...]) -> int:
    r = x.rank - 2
    if r not in kinds:
        raise n.unsupported(f"{n.node.op_type} over {r} spatial dimension(s) ({x.type}); kiln "
                            f"has {' and '.join(f'{k}-D' for k in kinds)}")
    return r


def _kernel_matches_weight(n: NodeContext) -> str | None:
    """kernel_shape, when given, is the weight's spatial shape (ONNX infers it from W)."""
    w, kernel = n.input(1), n.attr("kernel_shape")
    if w is None or kernel is None or tuple(kernel) == tuple(w.shape[2:]):
        return None
    return (f"kernel_shape {list(kernel)} contradicts the weight {w.type} (kernel "
            f"{list(w.shape[2:])})")


def _bias_per_channel(out_channels: Callable[[tuple, int], Any]) -> Check:
    """The bias (input 2) holds one value per output channel, ``out_channels(weight shape,
    group)`` of them."""

    def check(n: NodeContext) -> str | None:
        w, b = n.input(1), n.input(2)
        if w is None or b is None or not all(isinstance(d, int) for d in w.shape[:2]):
            return None
        want = out_channels(w.shape, int(n.attr("group", 1)))
        if b.shape != (want,):
            return f"the bias {b.type} must hold one value per output channel ({want})"
        return None

    return check


def _output_padding_below_stride(n: NodeContext) -> str | None:
    strides = n.attr("strides") or (1,) * len(n.attr("output_padding", ()))
    dilations = n.attr("dilations") or (1,) * len(strides)
    for p, s, d in zip(n.attr("output_padding", ()), strides, dilations):
        if p >= max(s, d):
            return (f"output_padding {list(n.attr('output_padding'))} must be smaller than "
                    f"the strides {list(strides)} (or dilations)")
    return None


_CONV = Spec(ranks={0: (3, None), 1: (3, None), 2: (1, 1)},
             attrs={**WINDOW_ATTRS, "group": at_least(1)},
             checks=(same_rank(0, 1), _kernel_matches_weight,
                     _bias_per_channel(lambda w, group: w[0])))


@converter("Conv", 11, 22, spec=_CONV)
def conv(n: NodeContext) -> Ref:
    return convolve(n, n.x, n.inputs[1], n.input(2))


def convolve(n: NodeContext, x: Ref, w: Ref, b: Ref | None = None, integer: bool = False,
             **extra: Any) -> Ref:
    """``conv1d``/``conv2d`` (``integer``: ``conv2d_integer``) of x and w (+ b) with the
    window attributes of Conv-like node ``n``."""
    r = _spatial_rank(n, x, (2,) if integer else (1, 2))
    kernel = tuple(static(n, d, "the kernel size") for d in w.shape[2:])
    strides, pads, dilations = window(n, x, kernel)
    args = [x, w] + ([b] if b is not None else [])
    return n.op("conv2d_integer" if integer else f"conv{r}d", *args, strides=strides,
                pads=pads, dilations=dilations, groups=int(n.attr("group", 1)), **extra)


_CONV_TRANSPOSE = Spec(
    ranks={0: (3, None), 1: (3, None), 2: (1, 1)},
    attrs={**WINDOW_ATTRS, "group": at_least(1), "output_padding": per_spatial_axis(1, low=0),
           "output_shape": all_of(per_spatial_axis(1), at_least(1))},
    checks=(same_rank(0, 1), _kernel_matches_weight,
            _bias_per_channel(lambda w, group: w[1] * group), _output_padding_below_stride))


@converter("ConvTranspose", 11, 22, spec=_CONV_TRANSPOSE)
def conv_transpose(n: NodeContext) -> Ref:
    x, w, b = n.x, n.inputs[1], n.input(2)
    r = _spatial_rank(n, x, (1, 2))
    kernel = tuple(static(n, d, "the kernel size") for d in w.shape[2:])
    strides = tuple(n.attr("strides", (1,) * r))
    dilations = tuple(n.attr("dilations", (1,) * r))
    out_pad = list(n.attr("output_padding", (0,) * r))
    pads = list(n.attr("pads", (0,) * (2 * r)))
    out_shape = n.attr("output_shape")
    auto = n.attr("auto_pad", "NOTSET")
    if out_shape is None and auto in ("SAME_UPPER", "SAME_LOWER"):
        out_shape = [static(n, x.shape[2 + i], "a spatial dimension") * strides[i]
                     for i in range(r)]
    if out_shape is not None:
        out_shape = list(out_shape)[-r:]
        for i in range(r):
            size = static(n, x.shape[2 + i], "a spatial dimension")
            total = (strides[i] * (size - 1) + out_pad[i] + (kernel[i] - 1) * dilations[i] + 1
                     - out_shape[i])
            if total < 0:  # the output is longer than the full result: pad its end
                out_pad[i] -= total
                total = 0
            small, big = total // 2, total - total // 2
            pads[i], pads[r + i] = (small, big) if auto == "SAME_UPPER" else (big, small)
    elif auto == "VALID":
        pads = [0] * (2 * r)
    groups = int(n.attr("group", 1))
    bias = [b] if b is not None else []
    if r == 2:
        return n.op("conv_transpose2d", x, w, *bias, strides=strides, pads=tuple(pads),
                    output_padding=tuple(out_pad), dilations=dilations, groups=groups)
    # 1-D: a 2-D transposed convolution over [N, C, 1, W]
    y = n.op("conv_transpose2d", n.op("unsqueeze", x, axes=(2,)),
             n.op("unsqueeze", w, axes=(2,)), *bias, strides=(1,) + strides,
             pads=(0, pads[0], 0, pads[1]), output_padding=(0,) + tuple(out_pad),
             dilations=(1,) + dilations, groups=groups)
    return n.op("squeeze", y, axes=(2,))


# -- pooling ------------------------------------------------------------------------------------


def _pool(n: NodeContext, op: str) -> Ref:
    """MaxPool/AveragePool/LpPool in 1-D or 2-D; padding kiln's pools do not take (over half
    the kernel) is done by a pad op first where that gives the same result."""
    x = n.x
    r = _spatial_rank(n, x, (1, 2))
    kernel = tuple(n.attr("kernel_shape"))
    strides, pads, dilations = window(n, x, kernel)
    ceil_mode = bool(n.attr("ceil_mode", 0))
    if r == 1:
        x = n.op("unsqueeze", x, axes=(2,))
        kernel, strides, dilations = (1,) + kernel, (1,) + strides, (1,) + dilations
        pads = (0, pads[0], 0, pads[1])
    dtype = x.dtype
    if not is_float(dtype):  # MaxPool takes int8/uint8: exact in float32
        x = n.cast(x, "float32")
    attrs: dict = {"kernel_shape": kernel, "strides": strides, "ceil_mode": ceil_mode}
    if op == "max_pool2d":
        attrs["dilations"] = dilations
        fill = float("-inf")
    else:
        if any(d != 1 for d in dilations):
            raise n.unsupported(f"{n.node.op_type} with dilations {dilations}: kiln's "
                                "avg_pool2d has none")
        attrs["count_include_pad"] = bool(n.attr("count_include_pad", 0))
        fill = 0.0
    divisor = None
    if any(p > k // 2 for p, k in zip(pads, kernel + kernel)):
        if ceil_mode:
            raise n.unsupported(f"{n.node.op_type} pads {pads} exceed half the kernel "
                                f"{kernel}, which kiln's pools do not take with ceil_mode")
        wide = (0, 0) + pads[:2] + (0, 0) + pads[2:]
        if op == "avg_pool2d" and not attrs["count_include_pad"]:
            # the mean over the cells inside the input: sums over counts, both as means
            spatial = tuple(static(n, d, "a pooled dimension") for d in x.shape[2:])
            check_constant(math.prod(spatial), "the divisor of the padded average")
            ones = np.ones((1, 1) + spatial, to_numpy_dtype(x.dtype))
            divisor = n.op(op, n.op("pad", ones, pads=wide), pads=(0, 0, 0, 0), **attrs)
        x = n.op("pad", x, pads=wide, value=fill)
        pads = (0, 0, 0, 0)
    y = n.op(op, x, pads=pads, **attrs)
    if divisor is not None:
        y = n.op("div", y, divisor)
    if r == 1:
        y = n.op("squeeze", y, axes=(2,))
    return n.cast(y, dtype)


_POOL = Spec(ranks={0: (3, None)},
             attrs={**WINDOW_ATTRS, "ceil_mode": flag, "count_include_pad": flag,
                    "storage_order": flag, "p": at_least(1)})


@converter("MaxPool", 12, 22, spec=_POOL)
def max_pool(n: NodeContext) -> Ref:
    if n.wants_output(1):
        raise n.unsupported("MaxPool's Indices output is not supported")
    return _pool(n, "max_pool2d")


@converter("AveragePool", 11, 19, 22, spec=_POOL)
def average_pool(n: NodeContext) -> Ref:
    return _pool(n, "avg_pool2d")


@converter("LpPool", 11, 18, 22, spec=_POOL)
def lp_pool(n: NodeContext) -> Ref:
    """(sum over the window of |x|^p)^(1/p): an average pool counting padding, times the
    window size."""
    p = int(n.attr("p", 2))
    if n.attr("ceil_mode", 0):
        raise n.unsupported("LpPool with ceil_mode is not supported")
    kernel = tuple(n.attr("kernel_shape"))
    x = n.x
    n.attrs = {**n.attrs, "count_include_pad": 1}
    n.inputs = [n.op("pow", n.op("abs", x), float(p))] + n.inputs[1:]
    mean = _pool(n, "avg_pool2d")
    size = 1
    for k in kernel:
        size *= k
    return n.op("pow", n.op("mul", mean, float(size)), 1.0 / p)


_GLOBAL_POOL = Spec(ranks={0: (3, None)}, attrs={"p": at_least(1)})


@converter("GlobalAveragePool", 1, 22, spec=_GLOBAL_POOL)
def global_average_pool(n: NodeContext) -> Ref:
    x = n.x
    if x.rank == 4:
        return n.op("global_avg_pool2d", x)
    return n.op("mean", x, axes=tuple(range(2, x.rank)), keepdims=True)


@converter("GlobalMaxPool", 1, 22, spec=_GLOBAL_POOL)
def global_max_pool(n: NodeContext) -> Ref:
    return n.op("max", n.x, axes=tuple(range(2, n.x.rank)), keepdims=True)


@converter("GlobalLpPool", 2, 22, spec=_GLOBAL_POOL)
def global_lp_pool(n: NodeContext) -> Ref:
    p = float(n.attr("p", 2))
    total = n.op("sum", n.op("pow", n.op("abs", n.x), p), axes=tuple(range(2, n.x.rank)),
                 keepdims=True)
    return n.op("pow", total, 1.0 / p)


# -- matrix products ----------------------------------------------------------------------------


@converter("MatMul", 13)
def matmul(n: NodeContext) -> Ref:
    return n.op("matmul", n.inputs[0], n.inputs[1])


@converter("MatMulInteger", 10, spec=Spec(ranks={0: (1, None), 1: (1, None), 2: (0, 1),
                                               3: (0, 1)}))
def matmul_integer(n: NodeContext) -> Ref:
    """(A - a_zero_point) @ (B - b_zero_point) in int32: 8-bit operands multiply as they are
    (``matmul_integer``: kiln's int8 kernels where the CPU has them), the zero points
    become corrections, A's times B's column sums (a constant for a weight), B's times A's
    row sums, and K times both."""
    a, b = n.inputs[:2]
    za, zb = (None if z is None or (z.is_const and not np.any(z.const)) else z
              for z in (n.input(2), n.input(3)))  # (a zero point of 0 corrects nothing)
    if a.rank < 2 or b.rank < 2:
        return _matmul_integer_widened(n, a, b, za, zb)
    if a.dtype == "int8":  # the kernels read unsigned A: A + 128, its zero point + 128
        a = n.cast(n.op("add", n.cast(a, "int32"), 128), "uint8")
        za = n.op("add", n.cast(za, "int32"), 128) if za is not None else n.const_like(
            128, n.cast(a, "int32"))
    y = n.op("matmul_integer", a, b)
    k = b.shape[-2]
    if za is not None:
        za = n.cast(za, "int32")
        za = za if za.rank == 0 else n.op("reshape", za, shape=(-1, 1))  # per row of A
        col_sums = n.op("sum", n.cast(b, "int32"), axes=(b.rank - 2,))
        y = n.op("sub", y, n.op("mul", za, col_sums))
    if zb is not None:
        zb = n.cast(zb, "int32")
        row_sums = n.op("sum", n.cast(a, "int32"), axes=(a.rank - 1,), keepdims=True)
        y = n.op("sub", y, n.op("mul", row_sums, zb))
        if za is not None:
            y = n.op("add", y, n.op("mul", n.op("mul", za, zb), k))
    return y


def _matmul_integer_widened(n: NodeContext, a: Ref, b: Ref, za: Ref | None,
                            zb: Ref | None) -> Ref:
    """A vector operand: the int32 matmul of the zero-point-subtracted operands."""
    a, b = n.cast(a, "int32"), n.cast(b, "int32")
    if za is not None:
        a = n.op("sub", a, n.cast(za, "int32"))
    if zb is not None:
        b = n.op("sub", b, n.cast(zb, "int32"))
    return n.op("matmul", a, b)


@converter("Gemm", 13, spec=Spec(ranks={0: (2, 2), 1: (2, 2)},
                                 attrs={"transA": flag, "transB": flag}))
def gemm(n: NodeContext) -> Ref:
    """alpha * A' B' + beta * C, A' and B' transposed as asked."""
    a, b, c = n.inputs[0], n.inputs[1], n.input(2)
    if n.attr("transA", 0):
        a = n.op("transpose", a)
    if n.attr("transB", 0):
        b = n.op("transpose", b)
    y = n.op("matmul", a, b)
    alpha, beta = float(n.attr("alpha", 1.0)), float(n.attr("beta", 1.0))
    if alpha != 1.0:
        y = n.op("mul", y, alpha)
    if c is not None and beta != 0.0:
        y = n.op("add", y, c if beta == 1.0 else n.op("mul", c, beta))
    return y
