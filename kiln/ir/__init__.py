"""kiln's graph IR: types, values, nodes, graphs, the op table, verifier, text form and the
numpy interpreter. Imports nothing of kiln but ``kiln.errors``."""

from kiln.ir.dims import Sym, symbol
from kiln.ir.graph import Graph, GraphBuilder, Node, Value
from kiln.ir.interpreter import interpret
from kiln.ir.ops import OPS, get_op, infer_node, register
from kiln.ir.types import DTYPES, Dim, TensorType
from kiln.ir.verifier import verify


def parse(text: str, weights=None) -> Graph:
    """Parse the text form of a graph (see ``kiln.ir.printer``)."""
    from kiln.ir.parser import parse as _parse

    return _parse(text, weights)


__all__ = [
    "DTYPES", "OPS", "Dim", "Graph", "GraphBuilder", "Node", "Sym", "TensorType", "Value",
    "get_op", "infer_node", "interpret", "parse", "register", "symbol", "verify",
]
