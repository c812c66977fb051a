"""The text form of a graph: readable SSA that ``kiln.ir.parse`` reads back.

    graph mlp(%x: float32[N, 3]) {
      param %fc1.weight: float32[4, 3]
      %0: float32[N, 4] = matmul(%x, %1)
      %2: float32[N, 2], %3: float32[N, 2] = split(%0) {axis=1, sizes=(2, 2)}  # mlp.py:12
      return %2, %3
    }

Attributes equal to the op's default are left out; the origin is a trailing comment.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from kiln.ir.graph import Graph, Value

_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.]+\Z")
_PLAIN_GRAPH_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")  # the parser's identifier token


def format_name(name: str) -> str:
    """'%x' for plain names, '%"a name"' (JSON-quoted) otherwise."""
    return "%" + (name if _PLAIN_NAME.match(name) else json.dumps(name))


def format_attr(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value)  # repr round-trips floats exactly; inf prints as 'inf'
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple):
        inner = ", ".join(format_attr(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, Graph):
        body = print_graph(value).replace("\n", "\n  ")
        return body
    raise TypeError(f"attribute value {value!r} has no text form")


def _typed(v: Value) -> str:
    return f"{format_name(v.name)}: {v.type}"


def _is_default(default: Any, value: Any) -> bool:
    """Equal to the default, and not -0.0 for 0.0 (they compare equal but differ: 1/x, pad)."""
    if default != value:
        return False
    if isinstance(value, float) and value == 0:
        return math.copysign(1, value) == math.copysign(1, default)
    return True


def format_node(node, indent: str = "  ") -> str:
    from kiln.ir.ops import OPS, REQUIRED

    defaults = OPS[node.op].attrs if node.op in OPS else {}
    shown = {k: v for k, v in node.attrs.items()
             if k not in defaults or defaults[k] is REQUIRED or not _is_default(defaults[k], v)}
    outs = ", ".join(_typed(v) for v in node.outputs)
    args = ", ".join(format_name(v.name) for v in node.inputs)
    line = f"{indent}{outs} = {node.op}({args})"
    if shown:
        line += " {" + ", ".join(f"{k}={format_attr(v)}" for k, v in shown.items()) + "}"
    if node.origin:
        line += f"  # {node.origin}"
    return line


def print_graph(graph: Graph) -> str:
    name = graph.name if _PLAIN_GRAPH_NAME.match(graph.name) else json.dumps(graph.name)
    lines = [f"graph {name}(" + ", ".join(_typed(v) for v in graph.inputs) + ") {"]
    lines += [f"  param {_typed(v)}" for v in graph.params]
    lines += [format_node(n) for n in graph.nodes]
    lines.append("  return " + ", ".join(format_name(v.name) for v in graph.outputs))
    lines.append("}")
    return "\n".join(lines)
