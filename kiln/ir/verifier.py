"""The verifier: SSA, topological order, types against inference, no dangling values."""

from __future__ import annotations

from kiln.errors import KilnError, VerifyError
from kiln.ir.graph import Graph
from kiln.ir.ops import infer_node
from kiln.ir.types import TensorType


def verify(graph: Graph) -> Graph:
    """Raise VerifyError at the first broken invariant; return the graph when it holds."""
    defined: set = set()
    names: set[str] = set()

    def define(v, what: str) -> None:
        if v in defined:
            raise VerifyError(f"{what}: value %{v.name} is defined twice (SSA)")
        if v.name in names:
            raise VerifyError(f"{what}: name %{v.name} is used by two values")
        defined.add(v)
        names.add(v.name)

    for v in graph.inputs:
        define(v, "graph input")
    for v in graph.params:
        define(v, "parameter")
        w = graph.weights.get(v.name)
        if w is not None and TensorType.of(w) != v.type:
            raise VerifyError(
                f"parameter %{v.name} is declared {v.type} but its weight is {TensorType.of(w)}"
            )
    later = {v for n in graph.nodes for v in n.outputs}
    for node in graph.nodes:
        for v in node.inputs:
            if v not in defined:
                why = "before it is defined (order)" if v in later else "but it is never defined"
                raise VerifyError(f"{node.describe()} reads %{v.name} {why}")
        try:
            attrs, types = infer_node(node.op, node.inputs, node.attrs, node.origin)
        except KilnError as e:
            raise VerifyError(f"{node.describe()}: {e}") from None
        if dict(attrs) != dict(node.attrs):
            raise VerifyError(f"{node.describe()}: attributes {dict(node.attrs)} are not "
                              f"complete and normalized (expected {attrs})")
        if [v.type for v in node.outputs] != types:
            got = ", ".join(str(v.type) for v in node.outputs)
            raise VerifyError(f"{node.describe()}: outputs are typed ({got}) but inference "
                              f"gives ({', '.join(map(str, types))})")
        for v in node.outputs:
            define(v, node.describe())
    for v in graph.outputs:
        if v not in defined:
            raise VerifyError(f"graph output %{v.name} is never defined")
    return graph
