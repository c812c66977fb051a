"""``fused``: a group of nodes made one by the fusion pass, compiled to ONE kernel.

Its ``graph`` attribute is the sub-graph (inputs in the node's input order, no parameters:
constants come in as inputs); ``pattern`` names what was fused, for reports.
"""

from __future__ import annotations

from kiln.ir.graph import Graph
from kiln.ir.ops.registry import OPAQUE, fail, register
from kiln.ir.types import format_types


def _infer(types, attrs):
    body = attrs["graph"]
    if not isinstance(body, Graph):
        fail(f"attribute 'graph' must be a Graph, got {type(body).__name__}")
    if body.params:
        fail("a fused sub-graph takes its constants as inputs, not parameters")
    want = [v.type for v in body.inputs]
    if list(types) != want:
        fail(f"inputs ({format_types(types)}) do not match the sub-graph's "
             f"({format_types(want)})")
    return [v.type for v in body.outputs]


def _flops(in_types, out_types, attrs):
    from kiln.ir.summary import node_flops

    return sum(node_flops(n) for n in attrs["graph"].nodes)


@register("fused", kind=OPAQUE, infer=_infer, attrs={"graph": None, "pattern": "fused"},
          arity=(0, None),
          flops=_flops)
def fused(*args, graph, pattern):
    """Runs the sub-graph with the interpreter."""
    from kiln.ir.interpreter import interpret

    return tuple(interpret(graph, {v.name: a for v, a in zip(graph.inputs, args)}))
