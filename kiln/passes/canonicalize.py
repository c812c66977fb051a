"""Canonicalization: constant folding, dead-code and common-subexpression elimination,
algebraic simplification, and batch norm folded into the conv or dense layer before it.

Each pass is ``Graph -> Graph`` and keeps what the graph computes (the fuzz tests check it).
"""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np

from kiln.ir.dims import Sym
from kiln.ir.graph import Graph, GraphBuilder, Node, Value
from kiln.ir.interpreter import run_node
from kiln.ir.types import is_float, to_numpy_dtype
from kiln.passes.context import PassContext
from kiln.passes.manager import graph_pass
from kiln.passes.rewrite import add_param, copy_node, finish, rebuild, start

# A folded value may not grow much beyond its inputs: expanding a mask to [B, H, L, L] at
# compile time would bloat the artifact for nothing.
FOLD_MAX_GROWTH = 2
FOLD_SMALL = 1 << 16


class Constants:
    """Which values of a graph are compile-time constants, and their arrays (lazily)."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.arrays: dict[Value, np.ndarray] = {
            v: np.asarray(graph.weights[v.name]) for v in graph.params if v.name in graph.weights
        }
        self.nodes: dict[Value, Node] = {}
        for node in graph.nodes:
            if all(self.is_constant(v) for v in node.inputs) and not _sized_per_call(node):
                for v in node.outputs:
                    self.nodes[v] = node

    def is_constant(self, v: Value) -> bool:
        return v in self.arrays or v in self.nodes

    def array(self, v: Value) -> np.ndarray:
        if v not in self.arrays:
            node = self.nodes[v]
            outs = run_node(node, [self.array(i) for i in node.inputs])
            self.arrays.update(zip(node.outputs, outs))
        return self.arrays[v]

    def scalar(self, v: Value) -> float | None:
        """The value every element of a constant ``v`` has, or None."""
        if not self.is_constant(v) or not v.type.is_static or v.type.size > FOLD_SMALL:
            return None
        a = self.array(v)
        if a.size == 0:
            return None
        first = a.flat[0]
        return first.item() if np.all(a == first) else None


def _sized_per_call(node: Node) -> bool:
    """Whether an attribute holds a symbolic size (``dims``, an arange up to ``L``): its
    results are known only when the model runs."""
    def sym(v) -> bool:
        return isinstance(v, Sym) or isinstance(v, tuple) and any(sym(x) for x in v)
    return any(sym(v) for v in node.attrs.values())


def _worth_folding(node: Node) -> bool:
    if not node.inputs or not all(v.type.is_static for v in node.outputs):
        return False  # generators (full, arange, ...) stay nodes: fusion inlines them
    biggest = max((v.type.size for v in node.inputs if v.type.is_static), default=1)
    out = sum(v.type.size for v in node.outputs)
    return out <= FOLD_SMALL or out <= FOLD_MAX_GROWTH * biggest


@graph_pass("fold_constants")
def fold_constants(graph: Graph, ctx: PassContext | None = None) -> Graph:
    """Evaluate nodes whose inputs are all constants; their results become parameters."""
    consts = Constants(graph)

    def rule(b: GraphBuilder, node: Node, ins: list[Value]):
        if node.outputs[0] in consts.nodes and _worth_folding(node):
            return [add_param(b, v.name, consts.array(v)) for v in node.outputs]
        return None

    return rebuild(graph, rule)


@graph_pass("dce")
def eliminate_dead_code(graph: Graph, ctx: PassContext | None = None) -> Graph:
    """Drop nodes and parameters that no output depends on (every op is side-effect free)."""
    live = set(graph.outputs)
    kept = []
    for node in reversed(graph.nodes):
        if any(v in live for v in node.outputs):
            kept.append(node)
            live.update(node.inputs)
    params = tuple(v for v in graph.params if v in live)
    weights = {v.name: graph.weights[v.name] for v in params if v.name in graph.weights}
    return Graph(graph.name, graph.inputs, params, tuple(reversed(kept)), graph.outputs, weights)


@graph_pass("cse")
def eliminate_common_subexpressions(graph: Graph, ctx: PassContext | None = None) -> Graph:
    """Nodes with the same op, inputs and attributes are computed once; parameters with equal
    arrays are one parameter (an exporter that unrolls a recurrent layer, or folding, can
    leave a copy of a weight per time step: 62 copies of a 4 MB LSTM weight, read from
    memory at every step instead of from cache)."""
    seen: dict[tuple, list[Value]] = {}
    b, env = start(graph)
    first: dict[tuple, Value] = {}
    for v in graph.params:
        array = graph.weights.get(v.name)
        if array is not None:
            env[v] = first.setdefault(_content_key(array), env[v])
    for node in graph.nodes:
        ins = [env[v] for v in node.inputs]
        key = (node.op, tuple(id(v) for v in ins), node.attr_key())
        if key not in seen:
            seen[key] = copy_node(b, node, ins)
        env.update(zip(node.outputs, seen[key]))
    return finish(b, graph, env)


def _content_key(array: np.ndarray) -> tuple:
    a = np.ascontiguousarray(array)
    return a.dtype.str, a.shape, hashlib.blake2b(a.view(np.uint8).data, digest_size=16).digest()


# -- algebraic simplification -------------------------------------------------------------------

_NEUTRAL = {  # op -> (neutral constant, which operand may be it: 0 first, 1 second)
    "add": (0, (0, 1)), "sub": (0, (1,)), "mul": (1, (0, 1)), "div": (1, (1,)), "pow": (1, (1,)),
}
_INVERSE_PAIRS = {("neg", "neg"), ("logical_not", "logical_not")}


def _compose_perm(inner, outer, rank: int) -> tuple[int, ...]:
    inner = tuple(range(rank))[::-1] if inner is None else inner
    outer = tuple(range(rank))[::-1] if outer is None else outer
    return tuple(inner[i] for i in outer)


@graph_pass("simplify")
def simplify(graph: Graph, ctx: PassContext | None = None) -> Graph:
    """x+0, x*1, x/1, x**1 -> x; x / c -> x * (1/c); transpose and reshape chains collapse;
    no-op casts, reshapes, transposes, expands and identities disappear; -(-x) -> x; a zero
    pad of a convolution's spatial axes becomes the convolution's own padding;
    (x * c) @ y and x @ (y * c) -> (x @ y) * c for a scalar c (see ``scale_after_matmul``);
    x ** 2 and x ** 3 -> products; x * sigmoid(x) -> silu(x)."""
    consts = Constants(graph)
    made: dict[Value, Node] = {}  # new value -> the node that made it in the new graph
    copied: dict[Value, Node] = {}  # old value -> its node copied unchanged into the new graph
    producer = {v: n for n in graph.nodes for v in n.outputs}
    uses = Counter(v for n in graph.nodes for v in n.inputs) + Counter(graph.outputs)

    def emit(b: GraphBuilder, node: Node, op: str, ins: list[Value], attrs: dict):
        outs = b.op(op, ins, attrs, origin=node.origin, names=[node.outputs[0].name])
        made[outs[0]] = b.last_node
        return outs

    def scale_after_matmul(b: GraphBuilder, node: Node, ins: list[Value]):
        """The canonical spelling of a scaled product: ``(x * c) @ y`` and ``x @ (y * c)``
        become ``(x @ y) * c`` (c a constant scalar, the scaled operand used only here), so
        attention written as ``softmax((q * s) @ k.T + mask)`` reaches the same matmul ->
        scale -> mask -> softmax chain as ``softmax(q @ k.T / sqrt(d) + mask)``, which fusion
        makes one kernel. Only a mul copied unchanged qualifies (``x * 1`` became ``x``)."""
        for side in (0, 1):
            scaled = node.inputs[side]
            mul, new_mul = producer.get(scaled), copied.get(scaled)
            if new_mul is None or mul.op != "mul" or uses[scaled] != 1:
                continue
            for c in (0, 1):
                value = consts.scalar(mul.inputs[c])
                if value is None or not np.isfinite(value) \
                        or mul.inputs[1 - c].type != scaled.type:
                    continue
                operands = list(ins)
                operands[side] = new_mul.inputs[1 - c]
                (product,) = b.op("matmul", operands, dict(node.attrs), origin=node.origin,
                                  names=[f"{node.outputs[0].name}.unscaled"])
                scale = add_param(b, f"{node.outputs[0].name}.scale",
                                  np.array(value, to_numpy_dtype(scaled.dtype)))
                return emit(b, node, "mul", [product, scale], {})
        return None

    def rule(b: GraphBuilder, node: Node, ins: list[Value]):
        out_t = node.outputs[0].type
        if node.op in _NEUTRAL:
            neutral, sides = _NEUTRAL[node.op]
            for side in sides:
                other = ins[1 - side]
                if consts.scalar(node.inputs[side]) == neutral and other.type == out_t:
                    return [other]
            if node.op == "div" and is_float(out_t.dtype) and consts.is_constant(node.inputs[1]) \
                    and node.inputs[1].type.is_static:
                inverse = (1 / consts.array(node.inputs[1])).astype(consts.array(
                    node.inputs[1]).dtype)
                c = add_param(b, f"{node.outputs[0].name}.reciprocal", inverse)
                return emit(b, node, "mul", [ins[0], c], {})
        exponent = consts.scalar(node.inputs[1]) if node.op == "pow" else None
        if exponent in (2, 3) and is_float(out_t.dtype) and ins[0].type == out_t:
            # GPT-2's gelu writes x ** 3: a powf call per element, 1.3 GFLOP/s
            x = ins[0]
            if exponent == 2:
                return emit(b, node, "mul", [x, x], {})
            (square,) = b.op("mul", [x, x], origin=node.origin,
                             names=[b.free_name(f"{node.outputs[0].name}.square")])
            return emit(b, node, "mul", [square, x], {})
        if node.op == "mul":
            for side in (0, 1):
                gate, x = made.get(ins[side]), ins[1 - side]
                if gate is not None and gate.op == "sigmoid" and gate.inputs[0] is x \
                        and x.type == out_t:
                    # x * sigmoid(x) as exporters write SiLU: one op, so that it fuses into
                    # the conv or matmul that makes x (x read twice keeps them apart)
                    return emit(b, node, "silu", [x], {})
        if node.op == "matmul" and is_float(out_t.dtype):
            moved = scale_after_matmul(b, node, ins)
            if moved is not None:
                return moved
        if node.op in ("identity",) or (
                node.op in ("cast", "reshape", "expand", "transpose")
                and ins[0].type == out_t and _is_noop(node)):
            return [ins[0]]
        inner = made.get(ins[0]) if ins else None
        if inner is not None and (inner.op, node.op) in _INVERSE_PAIRS:
            return [inner.inputs[0]]
        if inner is not None and inner.op == node.op == "transpose":
            perm = _compose_perm(inner.attrs["perm"], node.attrs["perm"], out_t.rank)
            if perm == tuple(range(out_t.rank)):
                return [inner.inputs[0]]
            return emit(b, node, "transpose", [inner.inputs[0]], {"perm": perm})
        if inner is not None and inner.op == "pad" and node.op in ("conv1d", "conv2d",
                                                                    "conv2d_integer"):
            pads = _pads_into_conv(inner, node)
            if pads is not None:
                return emit(b, node, node.op, [inner.inputs[0], *ins[1:]],
                            {**node.attrs, "pads": pads})
        if inner is not None and inner.op == node.op == "reshape":
            if inner.inputs[0].type == out_t:
                return [inner.inputs[0]]
            return emit(b, node, "reshape", [inner.inputs[0]], dict(node.attrs))
        outs = copy_node(b, node, ins)
        made.update((v, b.last_node) for v in outs)
        copied.update((v, b.last_node) for v in node.outputs)
        return outs

    return rebuild(graph, rule)


def _pads_into_conv(pad: Node, conv: Node) -> tuple[int, ...] | None:
    """The conv's pads with a ``pad`` of its input's spatial axes added (exporters write
    TensorFlow's "same" padding as a Pad before the Conv), or None when the pad is not
    padding of spatial axes only with what the conv pads with (zero; an integer conv's
    ``pad_value``, a quantized input's zero point)."""
    rank = pad.outputs[0].type.rank
    begins, ends = pad.attrs["pads"][:rank], pad.attrs["pads"][rank:]
    fill = conv.attrs.get("pad_value", 0)
    if pad.attrs["mode"] != "constant" or pad.attrs["value"] != fill \
            or any(begins[:2]) or any(ends[:2]) or min(pad.attrs["pads"]) < 0:
        return None
    spatial = rank - 2
    cp = conv.attrs["pads"]
    return tuple(cp[i] + begins[2 + i] for i in range(spatial)) + \
        tuple(cp[spatial + i] + ends[2 + i] for i in range(spatial))


def _is_noop(node: Node) -> bool:
    if node.op == "transpose":
        perm = node.attrs["perm"]
        return perm is not None and perm == tuple(range(len(perm)))
    return True  # cast / reshape / expand to the same type change nothing


# -- batch norm folding -------------------------------------------------------------------------


@graph_pass("fold_batch_norm")
def fold_batch_norm(graph: Graph, ctx: PassContext | None = None) -> Graph:
    """conv(x, W, b) -> batch_norm  ==>  conv(x, W*s, (b-mean)*s+beta), s = gamma/sqrt(var+eps),
    when the weights and statistics are constants and the conv feeds only the batch norm.
    The same for a dense layer: matmul(x, W[K, C]) (+ bias[C]) -> batch_norm over C."""
    consts = Constants(graph)
    users = graph.users
    producers = graph.producers
    folded: dict[int, tuple] = {}  # id(bn node) -> (layer node, bias-add node or None)

    for bn in graph.nodes:
        if bn.op != "batch_norm" or not all(consts.is_constant(v) for v in bn.inputs[1:]):
            continue
        layer, add = producers.get(bn.inputs[0]), None
        if layer is not None and layer.op == "add" and bn.inputs[0].type.rank == 2:
            add, layer = layer, producers.get(layer.inputs[0])
            if not consts.is_constant(add.inputs[1]) or add.inputs[1].type.shape != \
                    (bn.inputs[0].type.shape[1],) or len(users[add.outputs[0]]) != 1:
                continue
        if layer is None or len(users[layer.outputs[0]]) != 1:
            continue
        weights_constant = all(consts.is_constant(v) for v in layer.inputs[1:])
        if layer.op in ("conv1d", "conv2d") and weights_constant:
            folded[id(bn)] = (layer, add)
        elif (layer.op == "matmul" and layer.inputs[1].type.rank == 2 and
              layer.outputs[0].type.rank == 2 and consts.is_constant(layer.inputs[1])):
            folded[id(bn)] = (layer, add)

    if not folded:
        return graph
    skip = {id(n) for layer, add in folded.values() for n in (layer, add) if n is not None}
    b, env = start(graph)
    for node in graph.nodes:
        if id(node) in skip:
            continue
        if id(node) not in folded:
            env.update(zip(node.outputs, copy_node(b, node, [env[v] for v in node.inputs])))
            continue
        layer, add = folded[id(node)]
        gamma, beta, mean, var = (consts.array(v) for v in node.inputs[1:])
        s = gamma / np.sqrt(var + np.asarray(node.attrs["epsilon"], var.dtype))
        name = node.outputs[0].name
        if layer.op == "matmul":
            w = consts.array(layer.inputs[1]) * s[None, :]
            bias0 = consts.array(add.inputs[1]) if add is not None else np.zeros_like(mean)
            y = b.op("matmul", [env[layer.inputs[0]], add_param(b, f"{name}.weight", w)],
                     origin=layer.origin)[0]
            bias = add_param(b, f"{name}.bias", ((bias0 - mean) * s + beta).astype(w.dtype))
            outs = b.op("add", [y, bias], origin=node.origin, names=[name])
        else:
            w0 = consts.array(layer.inputs[1])
            w = w0 * s.reshape((-1,) + (1,) * (w0.ndim - 1))
            bias0 = consts.array(layer.inputs[2]) if len(layer.inputs) > 2 else np.zeros_like(mean)
            bias = ((bias0 - mean) * s + beta).astype(w0.dtype)
            outs = b.op(layer.op, [env[layer.inputs[0]], add_param(b, f"{name}.weight", w),
                                   add_param(b, f"{name}.bias", bias)],
                        layer.attrs, origin=layer.origin, names=[name])
        env[node.outputs[0]] = outs[0]
    return finish(b, graph, env)

