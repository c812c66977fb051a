"""A graph with some of its symbolic sizes fixed: the graph a compiled model specialized for
those sizes runs (``kiln.compile(..., specialize={"seq": [1]})``).

Every type and every attribute that holds a size is rewritten with the sizes substituted
(``kiln.ir.dims.substitute``) and every node's types inferred again, so that passes and
codegen see the static sizes (a GEMM of ``batch`` rows of one token, not of ``batch*seq``).
"""

from __future__ import annotations

from typing import Any, Mapping

from kiln.errors import KilnError
from kiln.ir.dims import Sym, substitute, symbols_in
from kiln.ir.graph import Graph, GraphBuilder, Value
from kiln.ir.types import TensorType


def fix_sizes(graph: Graph, sizes: Mapping[str, int]) -> Graph:
    """``graph`` with the symbolic sizes ``sizes`` (name -> value) fixed."""
    known = symbols_in(d for v in graph.all_values() for d in v.type.shape)
    unknown = sorted(set(sizes) - known)
    if unknown:
        raise KilnError(f"graph {graph.name!r} has no symbolic size {unknown[0]!r} to fix "
                        f"(its sizes: {sorted(known)})")
    b = GraphBuilder(graph.name)
    env: dict[Value, Value] = {}
    for v in graph.inputs:
        env[v] = b.input(v.name, _type(v.type, sizes))
    for v in graph.params:
        env[v] = b.param(v.name, graph.weights.get(v.name),
                         None if v.name in graph.weights else _type(v.type, sizes))
    for node in graph.nodes:
        attrs = {k: _attr(a, sizes) for k, a in node.attrs.items()}
        outs = b.op(node.op, [env[v] for v in node.inputs], attrs, origin=node.origin,
                    names=[v.name for v in node.outputs])
        env.update(zip(node.outputs, outs))
    b.output(*(env[v] for v in graph.outputs))
    return b.build()


def _type(t: TensorType, sizes: Mapping[str, int]) -> TensorType:
    return t.with_shape(tuple(substitute(d, sizes) for d in t.shape))


def _attr(a: Any, sizes: Mapping[str, int]) -> Any:
    if isinstance(a, Sym):
        return substitute(a, sizes)
    if isinstance(a, tuple):
        return tuple(_attr(x, sizes) for x in a)
    if isinstance(a, Graph):
        raise KilnError("fix_sizes runs before fusion: a fused node's body is not rewritten")
    return a
