"""Quantized models on integer kernels: a matmul or convolution whose operands are
dequantized int8/uint8 tensors becomes a ``matmul_integer``/``conv2d_integer`` of the
quantized values, summed exactly in int32, followed by an elementwise epilogue that makes
the float result: ``(sums - zero-point correction) * scale_x * scale_w`` (+ bias).

ONNX's quantized models (QDQ form: ``onnxruntime.quantization.quantize_static``;
QLinearConv/QLinearMatMul, which the importer writes as the same QDQ pattern) import as
float arithmetic: each DequantizeLinear is ``(cast(q) - zero) * scale``, each
QuantizeLinear ``cast(clip(round(x / scale) + zero))``. This pass runs before constant
folding, while a weight is still its integer array and its dequantization, and matches

    matmul(dq(x_q), W)      W = [transpose/reshape of] dq(w_q), a constant
    conv2d(dq(x_q), W, b?)          (one group: depthwise and grouped convolutions have
                                     no native integer kernel and stay float)

where ``dq(x_q)`` is ``(cast(x_q) - zx) * sx`` with one scale and zero point (per tensor),
and W's scale is per tensor or per output channel. With ``x' = x_q (+ 128 for int8:
the kernels multiply unsigned by signed bytes)`` and ``zx' = zx (+ 128)``,

    sum_k (x_q - zx) sx (w_q - zw) sw = sx sw [sum_k x' w - zx' sum_k w],   w = w_q - zw

so the weight becomes the int8 array ``w`` (it must fit: symmetric int8 weights, or uint8
ones of zero point 128, the two forms onnxruntime writes), ``zx' sum_k w`` a constant per
output column, and a convolution pads ``x'`` with ``zx'`` (what its 0.0 is stored as).
The QuantizeLinear after it (requantization) is elementwise, so fusion computes it in the
integer kernel's epilogue. The results equal the float graph's up to float rounding (the
integer sums are exact, the float ones were not), which can move a requantized value by
one step where it lay on a rounding boundary.

It applies where the target has a native int8 dot product (AVX512-VNNI; AMX-INT8 where
present): elsewhere integer kernels would not be faster than the float ones, and the graph
is left as it is. ``disable=["int8"]`` keeps the float form anywhere.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from kiln.ir.graph import Graph, GraphBuilder, Node, Value
from kiln.ir.ops.registry import get_op
from kiln.passes.canonicalize import Constants
from kiln.passes.context import PassContext
from kiln.passes.manager import graph_pass
from kiln.passes.rewrite import copy_node, finish, start

QUANTIZED = ("int8", "uint8")
# ops that only move values (a pad adds 0.0, which every quantization holds exactly):
# quantize(op(dequantize(q))) with the same scale and zero point is op(q) (and
# quantize(dequantize(q)) is q)
_MOVES = ("pad", "reshape", "transpose", "flatten", "squeeze", "unsqueeze", "slice")
MAX_SUM_TERMS = (1 << 31) // (255 * 128)  # products per int32 sum that cannot overflow


def integer_target(target) -> bool:
    """Does ``target`` multiply uint8 by int8 natively (AVX512-VNNI)?"""
    return "avx512_vnni" in getattr(target, "features", ())


@dataclass
class Activation:
    """A dequantized activation ``(cast(q) - zero) * scale``, per tensor."""

    q: Value
    zero: int
    scale: float


@dataclass
class Requantization:
    """``q = quantize(moves(dequantize(x)))`` with x's own scale and zero point: ``q`` is
    ``moves(x)`` (a pad filling with ``zero``) and ``dequantize(q)`` is ``moved``, the float
    value the moves made, exactly."""

    moves: list[Node]
    x: Value
    zero: int
    moved: Value


@dataclass
class Weight:
    """A constant dequantized weight, as the op reads it: ``(q - zero) * scale`` with
    ``values`` = q - zero (int32) and ``scale`` broadcast to its shape."""

    values: np.ndarray
    scale: np.ndarray


class _Matcher:
    def __init__(self, graph: Graph):
        self.consts = Constants(graph)
        self.producer: dict[Value, Node] = {v: n for n in graph.nodes for v in n.outputs}

    def _small(self, v: Value) -> np.ndarray | None:
        """The array of a constant ``v`` (a scale, a zero point), or None."""
        if not self.consts.is_constant(v) or not v.type.is_static:
            return None
        return np.asarray(self.consts.array(v))

    def dequantized(self, v: Value) -> tuple[Value, Value | None, Value] | None:
        """(q, zero or None, scale) of ``v = (cast(q) - zero) * scale`` (or ``cast(q) *
        scale``), q of an 8-bit integer type, the cast to float32."""
        node = self.producer.get(v)
        if node is None or node.op != "mul" or v.dtype != "float32":
            return None
        for inner, scale in (node.inputs, node.inputs[::-1]):
            sub = self.producer.get(inner)
            zero = None
            if sub is not None and sub.op == "sub":
                inner, zero = sub.inputs
                if self._small(zero) is None:
                    continue
            cast = self.producer.get(inner)
            if (cast is not None and cast.op == "cast" and cast.inputs[0].dtype in QUANTIZED
                    and self._small(scale) is not None):
                return cast.inputs[0], zero, scale
        return None

    def _quantize(self, q: Value) -> tuple[Value, Value, Value | None] | None:
        """(x, scale, zero or None) of ``q = cast(clip(round(x / scale) [+ zero]))``, the
        importer's QuantizeLinear."""
        cast = self.producer.get(q)
        if cast is None or cast.op != "cast" or q.dtype not in QUANTIZED:
            return None
        clip = self.producer.get(cast.inputs[0])
        info = np.iinfo(q.dtype)
        if clip is None or clip.op != "clip" or (clip.attrs["min"], clip.attrs["max"]) != (
                float(info.min), float(info.max)):
            return None  # (only a clip to q's whole range saturates as QuantizeLinear does)
        node, zero = self.producer.get(clip.inputs[0]), None
        if node is not None and node.op == "add":
            node, zero = self.producer.get(node.inputs[0]), node.inputs[1]
        if node is None or node.op != "round":
            return None
        div = self.producer.get(node.inputs[0])
        if div is None or div.op != "div":
            return None
        return div.inputs[0], div.inputs[1], zero

    def _same(self, a: Value | None, b: Value | None) -> bool:
        """Are constants ``a`` and ``b`` (None: 0) one and the same number?"""
        arrays = [np.zeros(1) if v is None else self._small(v) for v in (a, b)]
        return all(x is not None and x.size == 1 for x in arrays) and float(
            arrays[0].flat[0]) == float(arrays[1].flat[0])

    def requantized(self, q: Value) -> Requantization | None:
        """``q`` as a requantization of moved values (see ``Requantization``), or None."""
        found = self._quantize(q)
        if found is None:
            return None
        v, scale, zero = found
        moves: list[Node] = []
        node = self.producer.get(v)
        while node is not None and node.op in _MOVES and self._moves_values(node):
            moves.append(node)
            node = self.producer.get(node.inputs[0])
        dq = self.dequantized(node.outputs[0]) if node is not None else None
        if dq is None or dq[0].dtype != q.dtype or not self._same(dq[2], scale) or not (
                self._same(dq[1], zero)):
            return None
        s = float(self._small(scale).flat[0])
        if not (np.isfinite(s) and s != 0.0):
            return None
        zero_point = int(self._small(zero).flat[0]) if zero is not None else 0
        return Requantization(moves[::-1], dq[0], zero_point, v)

    @staticmethod
    def _moves_values(node: Node) -> bool:
        return node.op != "pad" or (node.attrs["mode"] == "constant"
                                    and node.attrs["value"] == 0.0)

    def activation(self, v: Value) -> Activation | None:
        found = self.dequantized(v)
        if found is None:
            return None
        q, zero, scale = found
        s = self._small(scale)
        z = self._small(zero) if zero is not None else np.zeros(1)
        if s.size != 1 or z.size != 1 or not np.isfinite(s).all():
            return None
        zero_point = float(z.flat[0])
        info = np.iinfo(q.dtype)
        if zero_point != round(zero_point) or not info.min <= zero_point <= info.max:
            return None  # (the kernels pad with it: a value of q's type)
        return Activation(q, int(zero_point), float(s.flat[0]))

    def weight(self, v: Value) -> Weight | None:
        """The constant weight ``v``: shape ops (a Gemm's transpose) over a dequantized
        constant, evaluated on the integer values and on the scale alike."""
        chain: list[Node] = []
        node = self.producer.get(v)
        while node is not None and node.op in _MOVES and self._moves_values(node):
            chain.append(node)
            node = self.producer.get(node.inputs[0])
        found = self.dequantized(chain[-1].inputs[0] if chain else v)
        if found is None:
            return None
        q, zero, scale = found
        q_arr = self._small(q)
        if q_arr is None:
            return None
        values = q_arr.astype(np.int32)
        if zero is not None:
            z = self._small(zero)
            if np.any(z != np.round(z)):
                return None
            values = values - z.astype(np.int32)
        s = np.broadcast_to(self._small(scale).astype(np.float32), values.shape)
        for node in reversed(chain):
            op = get_op(node.op)
            values = op.reference(values, **node.attrs)
            s = op.reference(np.ascontiguousarray(s), **node.attrs)
        return Weight(np.asarray(values), np.asarray(s))


def _per_channel(scale: np.ndarray, axis: int) -> np.ndarray | None:
    """The scale along ``axis`` if it is the same across every other axis, else None."""
    moved = np.moveaxis(scale, axis, 0).reshape(scale.shape[axis], -1)
    col = moved[:, 0]
    return col if np.all(moved == col[:, None]) else None


class _Rewriter:
    def __init__(self, b: GraphBuilder, graph: Graph, report: Int8Report):
        self.b, self.match, self.report = b, _Matcher(graph), report
        self.unsigned: dict[Value, Value] = {}  # an int8 activation + 128, as uint8

    def requantize(self, node: Node, env: dict[Value, Value]) -> list[Value] | None:
        """A QuantizeLinear of (moved) values dequantized with its own parameters: the moves
        on the quantized tensor itself (a pad fills with the zero point; no moves: the
        quantized tensor)."""
        found = self.match.requantized(node.outputs[0])
        if found is None:
            return None
        y = env[found.x]
        for move in found.moves:
            attrs = dict(move.attrs)
            if move.op == "pad":
                attrs["value"] = float(found.zero)
            y = self.b.op(move.op, [y, *(env[v] for v in move.inputs[1:])], attrs,
                          origin=move.origin)[0]
        return [y]

    def dequantize(self, node: Node, env: dict[Value, Value]) -> list[Value] | None:
        """A DequantizeLinear of such a requantization: the float moves it came from."""
        found = self.match.dequantized(node.outputs[0])
        requantization = self.match.requantized(found[0]) if found is not None else None
        return None if requantization is None else [env[requantization.moved]]

    def const(self, name: str, array: np.ndarray) -> Value:
        return self.b.param(self.b.free_name(name), np.array(array, order="C"))

    def as_unsigned(self, q: Value, env_q: Value, origin: str) -> Value:
        """``q`` itself when it is uint8, else int8 + 128 as uint8 (one per value)."""
        if q.dtype == "uint8":
            return env_q
        if q not in self.unsigned:
            b = self.b
            wide = b.op("cast", [env_q], {"dtype": "int32"}, origin=origin)[0]
            up = b.op("add", [wide, self.const(f"{q.name}_offset", np.array(128, np.int32))],
                      origin=origin)[0]
            self.unsigned[q] = b.op("cast", [up], {"dtype": "uint8"}, origin=origin)[0]
        return self.unsigned[q]

    def epilogue(self, node: Node, sums: Value, correction: np.ndarray, scale: np.ndarray,
                 shape: tuple) -> Value:
        """float32 ``(sums + correction) * scale``, both constants laid along ``shape``."""
        b, origin = self.b, node.origin
        name = node.outputs[0].name
        if np.any(correction):
            corr = self.const(f"{name}_zero_correction", correction.astype(np.int32)
                              .reshape(shape))
            sums = b.op("add", [sums, corr], origin=origin)[0]
        y = b.op("cast", [sums], {"dtype": "float32"}, origin=origin)[0]
        scale = scale.astype(np.float32)
        s = scale[:1].reshape(()) if np.all(scale == scale[0]) else scale.reshape(shape)
        return b.op("mul", [y, self.const(f"{name}_scale", s)], origin=origin)[0]

    def kept(self, reason: str) -> None:
        """Count a quantized op that keeps its float form (the caller copies it)."""
        self.report.kept[reason] += 1

    def matmul(self, node: Node, env: dict[Value, Value]) -> list[Value] | None:
        x = self.match.activation(node.inputs[0])
        if x is None:
            return None  # not a quantized product
        w = self.match.weight(node.inputs[1])
        if w is None:
            return self.kept("products of two activations (attention)")
        if w.values.ndim != 2 or node.inputs[0].type.rank < 2:
            return self.kept("batched weights or vector operands")
        col_scale = _per_channel(w.scale, 1)
        if col_scale is None:
            return self.kept("weight scales that vary along K")
        if not _fits(w.values) or w.values.shape[0] > MAX_SUM_TERMS:
            return self.kept("weights beyond int8 (w - zero point)")
        zx = x.zero + (128 if x.q.dtype == "int8" else 0)
        a = self.as_unsigned(x.q, env[x.q], node.origin)
        w8 = self.const(f"{node.inputs[1].name}_int8", w.values.astype(np.int8))
        sums = self.b.op("matmul_integer", [a, w8], origin=node.origin)[0]
        correction = -zx * w.values.sum(axis=0, dtype=np.int64)
        n = w.values.shape[1]
        self.report.integer += 1
        return [self.epilogue(node, sums, correction, x.scale * col_scale.astype(np.float64),
                              (n,))]

    def conv2d(self, node: Node, env: dict[Value, Value]) -> list[Value] | None:
        x = self.match.activation(node.inputs[0])
        if x is None:
            return None
        if node.attrs["groups"] != 1:
            # no native grouped kernel: the float ones are faster
            return self.kept("grouped and depthwise convolutions")
        w = self.match.weight(node.inputs[1])
        if w is None:
            return self.kept("convolutions by a computed weight")
        out_scale = _per_channel(w.scale, 0)
        o = w.values.shape[0]
        if out_scale is None:
            return self.kept("weight scales that vary within an output channel")
        if not _fits(w.values) or w.values[0].size > MAX_SUM_TERMS:
            return self.kept("weights beyond int8 (w - zero point)")
        zx = x.zero + (128 if x.q.dtype == "int8" else 0)
        a = self.as_unsigned(x.q, env[x.q], node.origin)
        w8 = self.const(f"{node.inputs[1].name}_int8", w.values.astype(np.int8))
        sums = self.b.op("conv2d_integer", [a, w8], {**node.attrs, "pad_value": zx},
                         origin=node.origin)[0]
        correction = -zx * w.values.reshape(o, -1).sum(axis=1, dtype=np.int64)
        y = self.epilogue(node, sums, correction, x.scale * out_scale.astype(np.float64),
                          (o, 1, 1))
        if len(node.inputs) > 2:
            bias = self.b.op("reshape", [env[node.inputs[2]]], {"shape": (o, 1, 1)},
                             origin=node.origin)[0]
            y = self.b.op("add", [y, bias], origin=node.origin)[0]
        self.report.integer += 1
        return [y]


@dataclass
class Int8Report:
    """What the pass did with a model's quantized matmuls and convolutions (those whose input
    is a dequantized tensor): how many run on integer kernels, and why the others kept
    their float form. ``PassContext.reports["int8"]``; ``kiln compile`` prints it."""

    integer: int = 0
    kept: Counter = field(default_factory=Counter)  # reason -> count

    def __str__(self) -> str:
        total = self.integer + sum(self.kept.values())
        text = f"int8: {self.integer} of {total} quantized matmuls/convolutions on integer kernels"
        if self.kept:
            text += "; float: " + ", ".join(f"{n} {why}" for why, n in self.kept.most_common())
        return text


def _fits(values: np.ndarray) -> bool:
    return values.size > 0 and values.min() >= -128 and values.max() <= 127


@graph_pass("int8")
def integer_kernels(graph: Graph, ctx: PassContext | None = None) -> Graph:
    """Quantized matmuls and convolutions on integer kernels (see the module's doc)."""
    if ctx is None or not integer_target(ctx.target):
        return graph
    if not any(v.dtype in QUANTIZED for n in graph.nodes for v in n.inputs):
        return graph
    b, env = start(graph)
    report = ctx.reports["int8"] = Int8Report()
    rewrite = _Rewriter(b, graph, report)
    for node in graph.nodes:
        outs = None
        if node.op == "matmul":
            outs = rewrite.matmul(node, env)
        elif node.op == "conv2d":
            outs = rewrite.conv2d(node, env)
        elif node.op == "cast":
            outs = rewrite.requantize(node, env)
        elif node.op == "mul":
            outs = rewrite.dequantize(node, env)
        if outs is None:
            outs = copy_node(b, node, [env[v] for v in node.inputs])
        elif node.op in ("matmul", "conv2d") and not b.has_name(node.outputs[0].name):
            outs[0] = b.rename(outs[0], node.outputs[0].name)  # (the epilogue made here)
        env.update(zip(node.outputs, outs))
    return finish(b, graph, env)
