"""The export table: kiln op -> a function writing the ONNX nodes that compute it.

Each function gets the exporter, the kiln node, the ONNX names of its inputs and the names its
outputs must have. Ops ONNX lacks are written as their formulas; ops whose ONNX form depends
on the opset (Reduce* axes, LayerNormalization, Gelu, Trilu) check ``e.opset``.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from onnx import TensorProto, numpy_helper

from kiln.errors import UnsupportedOpError
from kiln.frontend.onnx.dtypes import to_onnx_dtype
from kiln.frontend.onnx.exporter import Exporter
from kiln.ir.graph import Node
from kiln.ir.ops import get_op
from kiln.ir.types import to_numpy_dtype

EXPORTERS: dict[str, Callable[[Exporter, Node, list[str], list[str]], None]] = {}


def exports(*ops: str):
    def wrap(fn):
        for op in ops:
            EXPORTERS[op] = fn
        return fn

    return wrap


def _scalar(e: Exporter, value, node: Node, i: int = 0) -> str:
    """A scalar constant of the dtype of the node's input ``i``."""
    return e.const(value, node.inputs[i].dtype)


# -- elementwise -------------------------------------------------------------------------------

_SAME = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "pow": "Pow",
         "maximum": "Max", "minimum": "Min", "equal": "Equal", "less": "Less",
         "less_equal": "LessOrEqual", "greater": "Greater", "greater_equal": "GreaterOrEqual",
         "logical_and": "And", "logical_or": "Or", "logical_xor": "Xor", "logical_not": "Not",
         "neg": "Neg", "abs": "Abs", "sign": "Sign", "exp": "Exp", "log": "Log", "sqrt": "Sqrt",
         "reciprocal": "Reciprocal", "sin": "Sin", "cos": "Cos", "erf": "Erf",
         "floor": "Floor", "ceil": "Ceil", "round": "Round", "where": "Where",
         "identity": "Identity", "relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh",
         "matmul": "MatMul", "global_avg_pool2d": "GlobalAveragePool"}
# numpy's add/mul/maximum/minimum of bools are logic ops (ONNX's arithmetic takes no bool)
_BOOL = {"add": "Or", "mul": "And", "maximum": "Or", "minimum": "And"}


@exports(*_SAME)
def _same(e: Exporter, node: Node, ins: list[str], outs: list[str]) -> None:
    op = _SAME[node.op]
    if node.op in _BOOL and node.inputs[0].dtype == "bool":
        op = _BOOL[node.op]
    e.add(op, ins, outs)


@exports("matmul_integer")
def _matmul_integer(e, node, ins, outs):
    if all(v.dtype in ("int8", "uint8") for v in node.inputs):
        e.add("MatMulInteger", ins, outs)
    else:  # int32 operands: ONNX's MatMul takes them
        e.add("MatMul", [e.add1("Cast", [i], to=to_onnx_dtype("int32")) for i in ins], outs)


@exports("not_equal")
def _not_equal(e, node, ins, outs):
    e.add("Not", [e.add1("Equal", ins)], outs)


@exports("rsqrt")
def _rsqrt(e, node, ins, outs):
    e.add("Reciprocal", [e.add1("Sqrt", ins)], outs)


@exports("cast")
def _cast(e, node, ins, outs):
    e.add("Cast", ins, outs, to=to_onnx_dtype(node.attrs["dtype"]))


def _clip_to(e: Exporter, node: Node, x: str, lo, hi, outs: list[str]) -> None:
    bounds = ["" if b is None else _scalar(e, b, node) for b in (lo, hi)]
    while bounds and bounds[-1] == "":
        bounds.pop()
    e.add("Clip", [x] + bounds, outs)


@exports("clip")
def _clip(e, node, ins, outs):
    _clip_to(e, node, ins[0], node.attrs["min"], node.attrs["max"], outs)


@exports("hardtanh")
def _hardtanh(e, node, ins, outs):
    _clip_to(e, node, ins[0], node.attrs["min_val"], node.attrs["max_val"], outs)


# -- activations -------------------------------------------------------------------------------


@exports("leaky_relu", "elu")
def _alpha(e, node, ins, outs):
    op = {"leaky_relu": "LeakyRelu", "elu": "Elu"}[node.op]
    e.add(op, ins, outs, alpha=float(node.attrs["alpha"]))


@exports("gelu")
def _gelu(e, node, ins, outs):
    approximate = node.attrs["approximate"]
    if e.opset >= 20:
        e.add("Gelu", ins, outs, approximate=approximate)
        return
    x = ins[0]
    c = lambda v: _scalar(e, v, node)  # noqa: E731
    if approximate == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = e.add1("Mul", [e.add1("Mul", [x, x]), x])
        inner = e.add1("Add", [x, e.add1("Mul", [cube, c(0.044715)])])
        t = e.add1("Tanh", [e.add1("Mul", [inner, c(math.sqrt(2 / math.pi))])])
    else:  # 0.5 x (1 + erf(x / sqrt(2)))
        t = e.add1("Erf", [e.add1("Div", [x, c(math.sqrt(2))])])
    e.add("Mul", [e.add1("Mul", [x, c(0.5)]), e.add1("Add", [t, c(1.0)])], outs)


@exports("silu")
def _silu(e, node, ins, outs):
    e.add("Mul", [ins[0], e.add1("Sigmoid", ins)], outs)


@exports("hardswish")
def _hardswish(e, node, ins, outs):
    if e.opset >= 14:
        e.add("HardSwish", ins, outs)
    else:  # x * HardSigmoid(x) with alpha 1/6, beta 1/2
        e.add("Mul", [ins[0], e.add1("HardSigmoid", ins, alpha=1 / 6, beta=0.5)], outs)


@exports("softplus")
def _softplus(e, node, ins, outs):
    """Softplus(beta x) / beta, and x itself where beta x > threshold."""
    x, beta, threshold = ins[0], float(node.attrs["beta"]), float(node.attrs["threshold"])
    bx = x if beta == 1 else e.add1("Mul", [x, _scalar(e, beta, node)])
    soft = e.add1("Softplus", [bx])
    if beta != 1:
        soft = e.add1("Div", [soft, _scalar(e, beta, node)])
    if math.isinf(threshold) and threshold > 0:
        e.add("Identity", [soft], outs)
        return
    e.add("Where", [e.add1("Greater", [bx, _scalar(e, threshold, node)]), x, soft], outs)


@exports("heaviside")
def _heaviside(e, node, ins, outs):
    x = ins[0]
    zero, one = _scalar(e, 0, node), _scalar(e, 1, node)
    at_zero = e.add1("Where", [e.add1("Equal", [x, zero]),
                               _scalar(e, node.attrs["value_at_zero"], node), zero])
    step = e.add1("Where", [e.add1("Greater", [x, zero]), one, at_zero])
    e.add("Where", [e.add1("IsNaN", [x]), x, step], outs)  # nan stays nan, as in numpy


# -- reductions --------------------------------------------------------------------------------

_REDUCE = {"sum": "ReduceSum", "mean": "ReduceMean", "prod": "ReduceProd", "max": "ReduceMax",
           "min": "ReduceMin", "logsumexp": "ReduceLogSumExp"}


@exports(*_REDUCE)
def _reduce(e, node, ins, outs):
    axes, keepdims = node.attrs["axes"], int(node.attrs["keepdims"])
    if isinstance(axes, int):
        axes = (axes,)
    if axes is not None and len(axes) == 0:  # kiln: reduce nothing; ONNX: reduce all
        e.add("Identity", ins, outs)
        return
    op = _REDUCE[node.op]
    if axes is None:
        e.add(op, ins, outs, keepdims=keepdims)
    elif op == "ReduceSum" or e.opset >= 18:
        e.add(op, [ins[0], e.ints(axes, "axes")], outs, keepdims=keepdims)
    else:
        e.add(op, ins, outs, axes=list(axes), keepdims=keepdims)


@exports("argmax", "argmin")
def _arg(e, node, ins, outs):
    e.add("ArgMax" if node.op == "argmax" else "ArgMin", ins, outs, axis=node.attrs["axis"],
          keepdims=int(node.attrs["keepdims"]))


@exports("softmax", "log_softmax")
def _softmax(e, node, ins, outs):
    e.add("Softmax" if node.op == "softmax" else "LogSoftmax", ins, outs,
          axis=node.attrs["axis"])


# -- constants ---------------------------------------------------------------------------------


@exports("full")
def _full(e, node, ins, outs):
    t = node.outputs[0].type
    value = np.asarray([node.attrs["value"]], dtype=to_numpy_dtype(t.dtype))
    e.add("ConstantOfShape", [e.shape_tensor(t.shape, *e.inputs)], outs,
          value=numpy_helper.from_array(value, "value"))


@exports("dims")
def _dims(e, node, ins, outs):
    """Sizes as data: read from the graph inputs' shapes (``Shape``, ``Gather``, ...)."""
    shape = e.shape_tensor(node.attrs["values"], *e.inputs)
    if node.attrs["dtype"] == "int64":
        e.add("Identity", [shape], outs)
    else:
        e.add("Cast", [shape], outs, to=TensorProto.INT32)


@exports("arange", "random_uniform", "random_normal")
def _computed(e, node, ins, outs):
    """Ops without inputs whose values depend on attributes only: their values, computed by
    kiln's reference (kiln's random streams are reproducible, so they export exactly)."""
    value = get_op(node.op).reference(**node.attrs)
    e.add("Identity", [e.const(value, hint=f"{outs[0]}_value")], outs)


def check_static(node: Node, what: str) -> tuple[int, ...]:
    t = node.outputs[0].type
    if not t.is_static:
        raise UnsupportedOpError(f"exporting {node.op} needs a static {what}, got {t}")
    return t.shape


from kiln.frontend.onnx import export_nn  # noqa: E402,F401  (the rest of the table)
