"""A graph as a picture: Graphviz DOT text (``kiln show --dot``).

Inputs and outputs are ellipses, weights small grey boxes, ops boxes labelled with the op,
the layer they come from (the ``[...]`` of their origin, or the ONNX node) and their layout
attributes; a fused group is a cluster labelled with its pattern, holding its nodes; edges
carry the type of the value they pass.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kiln.ir.graph import Graph, Node, Value

# attributes worth a line in a node's label (layouts and window geometry); others are left
# to the text form
_SHOWN = ("layout", "src_layout", "dst_layout", "kernel", "stride", "strides", "padding",
          "pads", "groups", "dilation", "axis", "axes", "perm", "dtype", "pattern")
_MAX_LABEL = 40


def to_dot(graph: Graph, weights: bool = True) -> str:
    """``graph`` in Graphviz DOT; ``weights`` False leaves the weight boxes out."""
    q = json.dumps
    lines = [f"digraph {q(graph.name)} {{", "  rankdir=TB;", "  graph [fontname=Helvetica];",
             "  node [fontname=Helvetica, fontsize=11];", "  edge [fontname=Helvetica, "
             "fontsize=9, color=gray40];"]
    source: dict[Value, str] = {}  # value -> the DOT node that makes it
    for v in graph.inputs:
        source[v] = f"in:{v.name}"
        lines.append(f"  {q(source[v])} [shape=ellipse, label={q(f'{v.name}: {v.type}')}];")
    params = set(graph.params)
    if weights:
        for v in graph.params:
            source[v] = f"w:{v.name}"
            label = q(_clip(v.name) + "\n" + str(v.type))
            lines.append(f"  {q(source[v])} [shape=box, style=filled, fillcolor=gray92, "
                         f"color=gray60, fontsize=8, height=0.2, label={label}];")
    edges: list[str] = []
    for i, node in enumerate(graph.nodes):
        body = _body(node)
        if body is None:
            _node(lines, edges, f"n{i}", node, node.inputs, source, params, weights, "  ")
            continue
        label = str(node.attrs.get("pattern") or node.attrs.get("name") or "fused")
        layer = _layer(node)
        lines += [f"  subgraph cluster_{i} {{", "    style=\"rounded,filled\";",
                  "    fillcolor=lightyellow; color=goldenrod;",
                  f"    label={q(label + (f' ({layer})' if layer else ''))};"]
        inner = dict(zip(body.inputs, node.inputs))  # body inputs are the fused node's
        for j, n in enumerate(body.nodes):
            _node(lines, edges, f"n{i}_{j}", n, tuple(inner.get(v, v) for v in n.inputs),
                  source, params, weights, "    ")
        lines.append("  }")
        for v_in, v_out in zip(body.outputs, node.outputs):
            source[v_out] = source.get(inner.get(v_in, v_in), "")
    for v in graph.outputs:
        lines.append(f"  {q('out:' + v.name)} [shape=ellipse, label={q(v.name)}];")
        if source.get(v):
            edges.append(f"  {q(source[v])} -> {q('out:' + v.name)};")
    return "\n".join(lines + edges + ["}"])


def _node(lines: list[str], edges: list[str], nid: str, node: Node, inputs: tuple,
          source: dict, params: set, weights: bool, indent: str) -> None:
    q = json.dumps
    lines.append(f"{indent}{nid} [shape=box, style=rounded, label={q(_label(node))}];")
    for v in dict.fromkeys(inputs):
        if v in params and not weights:
            continue
        if source.get(v):
            style = ", style=dashed" if v in params else ""
            edges.append(f"  {q(source[v])} -> {nid} [label={q(str(v.type))}{style}];")
    for v in node.outputs:
        source[v] = nid


def _label(node: Node) -> str:
    parts = [node.op]
    layer = _layer(node)
    if layer:
        parts.append(layer)
    for key in _SHOWN:
        value = node.attrs.get(key)
        if value is not None and key != "pattern" and not isinstance(value, Graph):
            parts.append(_clip(f"{key}={_text(value)}"))
    return "\n".join(parts)


def _layer(node: Node) -> str:
    """'encoder.fc1 (Linear)' from an origin 'model.py:12 [encoder.fc1 (Linear)]', or the
    ONNX node of 'onnx:Conv_3'."""
    origin = node.origin or ""
    m = re.search(r"\[(.*)\]\s*$", origin)
    if m:
        return _clip(m.group(1))
    if origin.startswith("onnx:"):
        return _clip(origin[5:])
    return ""


def _text(value: Any) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(_text(v) for v in value) + ")"
    return str(value)


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_LABEL else text[: _MAX_LABEL - 3] + "..."


def _body(node: Node) -> Graph | None:
    return node.attrs["graph"] if node.op == "fused" else None
