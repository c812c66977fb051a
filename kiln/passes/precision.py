"""Mixed precision: run a float32 graph's matmuls, convolutions and the elementwise chains
between them in bfloat16 or float16 (``PassContext.precision``), keeping float32 where the
numerics need it.

Each op's definition says how it takes the policy (``kiln.ir.ops.registry``):
- ``LOW`` (matmul, convolutions): its float32 inputs are cast to the reduced type; the
  compiled kernel multiplies in it and accumulates in float32, then rounds its output;
- ``KEEP`` (sums and means, softmax, layer/batch norm statistics, pools, ``pow``): its
  reduced inputs are cast back to float32, and it computes in float32;
- ``FOLLOW`` (elementwise and shape ops): it runs in the reduced type when the activations
  it reads are all reduced, else in float32. Constants follow the activations: a bias, a
  scale or a mask beside a reduced activation is converted, not the activation widened.

Weights are converted once, here (a parameter becomes a reduced copy), and a ``full`` is
rebuilt in the reduced type; only computed values get ``cast`` nodes, one per value and
type, shared by all users. A value that is a widening cast of a reduced one is narrowed back
to that one, not cast twice. Graph inputs and outputs keep their types: an output that the
policy changed is cast back. Only float32 values are changed (float64 and integer values
are left as they are).
"""

from __future__ import annotations

import numpy as np

from kiln.errors import KilnError
from kiln.ir.graph import Graph, GraphBuilder, Node, Value
from kiln.ir.ops.registry import KEEP, LOW, get_op
from kiln.ir.types import to_numpy_dtype
from kiln.passes.context import PassContext
from kiln.passes.manager import graph_pass
from kiln.passes.rewrite import copy_node, finish, start

_SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}

#: what users may write for each precision, and the dtype the policy computes in
PRECISIONS = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16",
              "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16"}


def precision_dtype(precision: str) -> str:
    """The dtype of a precision name ("bf16", "bfloat16", "fp16", "fp32", ...)."""
    try:
        return PRECISIONS[precision]
    except (KeyError, TypeError):
        raise KilnError(f"unknown precision {precision!r}; use one of "
                        f"{', '.join(PRECISIONS)}") from None


class _Caster:
    """Values in another float type, made once per (value, type): a converted weight, a
    rebuilt ``full``, the narrow value a widening cast came from, or a new cast node."""

    def __init__(self, b: GraphBuilder, weights: dict[Value, np.ndarray], low: str):
        self.b, self.weights, self.low = b, weights, low
        self.made: dict[tuple[Value, str], Value] = {}

    def is_constant(self, v: Value) -> bool:
        """A weight, or a ``full``: its value is known when compiling."""
        node = self.b.producer(v)
        return v in self.weights or (node is not None and node.op == "full")

    def to(self, v: Value, dtype: str) -> Value:
        if v.dtype == dtype:
            return v
        key = (v, dtype)
        if key not in self.made:
            self.made[key] = self._convert(v, dtype)
            if dtype == "float32" and v.dtype == self.low:
                self.made[(self.made[key], self.low)] = v  # narrowing the widened: exact
        return self.made[key]

    def _convert(self, v: Value, dtype: str) -> Value:
        node = self.b.producer(v)
        if v in self.weights:
            array = self.weights[v].astype(to_numpy_dtype(dtype))
            new = self.b.param(self.b.free_name(f"{v.name}_{_SHORT[dtype]}"), array)
            self.weights[new] = array
            return new
        if node is not None and node.op == "full":
            return self.b.op("full", [], {**node.attrs, "dtype": dtype}, origin=node.origin)[0]
        return self.b.op("cast", [v], {"dtype": dtype},
                         origin=node.origin if node is not None else "")[0]


def _compute_dtype(node: Node, ins: list[Value], caster: _Caster) -> str | None:
    """The float type ``node`` computes in under the policy (None: leave it as it is)."""
    floats = [v for v in ins if v.dtype in ("float32", caster.low)]
    if not floats:
        return None
    policy = get_op(node.op).precision
    if policy == LOW:
        return caster.low
    if policy == KEEP:
        return "float32"
    activations = [v for v in floats if not caster.is_constant(v)]
    if activations and all(v.dtype == caster.low for v in activations):
        return caster.low
    return "float32" if any(v.dtype == caster.low for v in floats) else None


@graph_pass("precision")
def mixed_precision(graph: Graph, ctx: PassContext | None = None) -> Graph:
    """Apply ``ctx.precision`` (float32, the default: the graph as it is)."""
    low = precision_dtype(ctx.precision if ctx is not None else "float32")
    if low == "float32":
        return graph
    b, env = start(graph)
    caster = _Caster(b, {env[v]: graph.weights[v.name] for v in graph.params
                         if v.name in graph.weights}, low)
    for node in graph.nodes:
        ins = [env[v] for v in node.inputs]
        dtype = _compute_dtype(node, ins, caster)
        if dtype is not None:
            ins = [caster.to(v, dtype) if v.dtype in ("float32", low) else v for v in ins]
        outs = copy_node(b, node, ins)
        env.update(zip(node.outputs, outs))
    for v in graph.outputs:
        env[v] = caster.to(env[v], v.dtype)
    return finish(b, graph, env)
