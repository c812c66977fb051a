"""Rebuilding a graph node by node: the one mechanism every pass uses.

``rebuild(graph, rule)`` copies the graph into a fresh GraphBuilder; for each node, ``rule``
may return replacement values (built with the builder) instead of a copy. Value names, origins
and output names are kept, so the rewritten graph reads like the original.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from kiln.ir.graph import Graph, GraphBuilder, Node, Value

# rule(builder, node, new_inputs) -> new output values, or None to copy the node
Rule = Callable[[GraphBuilder, Node, list[Value]], "Sequence[Value] | None"]


def copy_node(b: GraphBuilder, node: Node, inputs: Sequence[Value]) -> list[Value]:
    """Re-emit ``node`` on new inputs, keeping its output names and origin."""
    return b.op(node.op, list(inputs), node.attrs, origin=node.origin,
                names=[v.name for v in node.outputs])


def start(graph: Graph, keep_params: bool = True) -> tuple[GraphBuilder, dict[Value, Value]]:
    """A builder holding ``graph``'s inputs (and parameters), and the old->new value map."""
    b = GraphBuilder(graph.name)
    env: dict[Value, Value] = {}
    for v in graph.inputs:
        env[v] = b.input(v.name, v.type)
    if keep_params:
        for v in graph.params:
            env[v] = add_param(b, v.name, graph.weights.get(v.name), v.type)
    return b, env


def add_param(b: GraphBuilder, name: str, array: np.ndarray | None, type=None) -> Value:
    if array is not None:
        return b.param(b.free_name(name), array)
    return b.param(b.free_name(name), type=type)


def finish(b: GraphBuilder, graph: Graph, env: dict[Value, Value]) -> Graph:
    """Set the outputs (keeping their names) and drop parameters nothing reads."""
    outs: list[Value] = []
    renamed: dict[Value, Value] = {}  # env's value -> its renamed replacement
    for old in graph.outputs:
        new = renamed.get(env[old], env[old])
        produced = b.producer(new) is not None
        if new.name != old.name and produced and new not in outs and b.has_name(old.name):
            # another node's value holds the output's name (the rewrite put a cast after
            # it): that value takes a new name, so that the output keeps its own
            holder = next((v for n in b.nodes for v in n.outputs if v.name == old.name), None)
            if holder is not None and holder not in outs:
                fresh = b.rename(holder, b.free_name(old.name))
                renamed.update({k: fresh for k, v in renamed.items() if v is holder})
                if env[old] is holder:
                    new = fresh
        if new.name != old.name and produced and new not in outs and not b.has_name(old.name):
            # a rewritten value takes the output's name
            new = renamed[env[old]] = b.rename(new, old.name)
        elif new.name != old.name or not produced or new in outs:
            # the output is now an input, a parameter or another output: copy it, so the
            # graph's output names stay what the user sees
            new = b.op("identity", [new], names=[old.name])[0]
        outs.append(new)
    b.output(*outs)
    g = b.build()
    used = {v for n in g.nodes for v in n.inputs} | set(g.outputs)
    params = tuple(v for v in g.params if v in used)
    weights = {v.name: g.weights[v.name] for v in params if v.name in g.weights}
    return Graph(g.name, g.inputs, params, g.nodes, g.outputs, weights)


def rebuild(graph: Graph, rule: Rule) -> Graph:
    """Copy ``graph`` node by node, letting ``rule`` replace any node's outputs."""
    b, env = start(graph)
    for node in graph.nodes:
        ins = [env[v] for v in node.inputs]
        outs = rule(b, node, ins)
        if outs is None:
            outs = copy_node(b, node, ins)
        for old, new in zip(node.outputs, outs):
            env[old] = new
    return finish(b, graph, env)
