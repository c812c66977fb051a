"""Activation functions: kiln ops where kiln has one, their formulas otherwise."""

from __future__ import annotations

import math

from kiln.errors import UnsupportedOpError
from kiln.frontend.onnx.context import NodeContext, Ref
from kiln.frontend.onnx.registry import converter
from kiln.frontend.onnx.validate import Spec, nonzero, one_of


@converter("Relu", 13, 14)
def relu(n: NodeContext) -> Ref:
    return n.op("relu", n.x)


@converter("Sigmoid", 13)
def sigmoid(n: NodeContext) -> Ref:
    return n.op("sigmoid", n.x)


@converter("Tanh", 13)
def tanh(n: NodeContext) -> Ref:
    return n.op("tanh", n.x)


@converter("LeakyRelu", 6, 16)
def leaky_relu(n: NodeContext) -> Ref:
    return n.op("leaky_relu", n.x, alpha=float(n.attr("alpha", 0.01)))


@converter("Elu", 6, 22)
def elu(n: NodeContext) -> Ref:
    return n.op("elu", n.x, alpha=float(n.attr("alpha", 1.0)))


@converter("Selu", 6, 22)
def selu(n: NodeContext) -> Ref:
    alpha = float(n.attr("alpha", 1.67326319217681884765625))
    gamma = float(n.attr("gamma", 1.05070102214813232421875))
    return n.op("mul", n.op("elu", n.x, alpha=alpha), gamma)


@converter("Celu", 12, 28, spec=Spec(attrs={"alpha": nonzero}))
def celu(n: NodeContext) -> Ref:
    """max(0, x) + min(0, alpha * (exp(x / alpha) - 1)), which is alpha * elu(x / alpha)
    when alpha > 0."""
    x, alpha = n.x, float(n.attr("alpha", 1.0))
    if alpha > 0:
        return n.op("mul", n.op("elu", n.op("div", x, alpha), alpha=1.0), alpha)
    tail = n.op("mul", n.op("sub", n.op("exp", n.op("div", x, alpha)), 1.0), alpha)
    return n.op("add", n.op("relu", x), n.op("minimum", tail, n.const_like(0, x)))


@converter("Gelu", 20, spec=Spec(attrs={"approximate": one_of("none", "tanh")}))
def gelu(n: NodeContext) -> Ref:
    return n.op("gelu", n.x, approximate=n.attr("approximate", "none"))


@converter("Softplus", 1, 22)
def softplus(n: NodeContext) -> Ref:
    return n.op("softplus", n.x, beta=1.0, threshold=math.inf)


@converter("Softsign", 1, 22)
def softsign(n: NodeContext) -> Ref:
    return n.op("div", n.x, n.op("add", n.op("abs", n.x), 1.0))


@converter("Mish", 18, 22)
def mish(n: NodeContext) -> Ref:
    return n.op("mul", n.x, n.op("tanh", n.op("softplus", n.x, beta=1.0, threshold=math.inf)))


@converter("Swish", 24)
def swish(n: NodeContext) -> Ref:
    alpha = float(n.attr("alpha", 1.0))
    if alpha == 1.0:
        return n.op("silu", n.x)
    return n.op("mul", n.x, n.op("sigmoid", n.op("mul", n.x, alpha)))


def hard_sigmoid(n: NodeContext, x: Ref, alpha: float, beta: float) -> Ref:
    return n.op("clip", n.op("add", n.op("mul", x, alpha), beta), min=0.0, max=1.0)


@converter("HardSigmoid", 6, 22)
def hardsigmoid(n: NodeContext) -> Ref:
    return hard_sigmoid(n, n.x, float(n.attr("alpha", 0.2)), float(n.attr("beta", 0.5)))


@converter("HardSwish", 14, 22)
def hardswish(n: NodeContext) -> Ref:
    return n.op("hardswish", n.x)


@converter("ThresholdedRelu", 10, 22)
def thresholded_relu(n: NodeContext) -> Ref:
    x = n.x
    return n.op("where", n.op("greater", x, float(n.attr("alpha", 1.0))), x,
                n.const_like(0, x))


@converter("PRelu", 9, 16)
def prelu(n: NodeContext) -> Ref:
    x, slope = n.inputs
    return n.op("where", n.op("less", x, n.const_like(0, x)), n.op("mul", x, slope), x)


@converter("Shrink", 9)
def shrink(n: NodeContext) -> Ref:
    x, lambd, bias = n.x, float(n.attr("lambd", 0.5)), float(n.attr("bias", 0.0))
    zero = n.const_like(0, x)
    low = n.op("where", n.op("less", x, -lambd), n.op("add", x, bias), zero)
    return n.op("where", n.op("greater", x, lambd), n.op("sub", x, bias), low)


# -- activations named by string attributes (the recurrent ops) --------------------------------


def activation(n: NodeContext, name: str, x: Ref, alpha: float | None,
               beta: float | None) -> Ref:
    """The activation called ``name`` in LSTM/GRU/RNN's ``activations`` attribute."""
    key = name.lower()
    if key == "sigmoid":
        return n.op("sigmoid", x)
    if key == "tanh":
        return n.op("tanh", x)
    if key == "relu":
        return n.op("relu", x)
    if key == "leakyrelu":
        return n.op("leaky_relu", x, alpha=0.01 if alpha is None else alpha)
    if key == "elu":
        return n.op("elu", x, alpha=1.0 if alpha is None else alpha)
    if key == "softsign":
        return n.op("div", x, n.op("add", n.op("abs", x), 1.0))
    if key == "softplus":
        return n.op("softplus", x, beta=1.0, threshold=math.inf)
    if key == "hardsigmoid":
        return hard_sigmoid(n, x, 0.2 if alpha is None else alpha, 0.5 if beta is None else beta)
    if key == "affine":
        return n.op("add", n.op("mul", x, 1.0 if alpha is None else alpha),
                    0.0 if beta is None else beta)
    if key == "scaledtanh":
        a, b = 1.0 if alpha is None else alpha, 1.0 if beta is None else beta
        return n.op("mul", n.op("tanh", n.op("mul", x, b)), a)
    if key == "thresholdedrelu":
        a = 1.0 if alpha is None else alpha
        return n.op("where", n.op("greater", x, a), x, n.const_like(0, x))
    raise UnsupportedOpError(f"activation {name!r} is not supported")
