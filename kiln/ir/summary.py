"""Looking at a graph: a per-op-type summary (count, parameters, FLOPs); pictures are in
``picture.py``."""

from __future__ import annotations

from dataclasses import dataclass

from kiln.ir.graph import Graph
from kiln.ir.ops import get_op


@dataclass
class OpSummary:
    op: str
    count: int = 0
    params: int = 0  # elements of the parameters this op type reads
    flops: int = 0


def node_flops(node) -> int:
    opdef = get_op(node.op)
    if opdef.flops is None:
        return 0
    return int(opdef.flops([v.type for v in node.inputs], [v.type for v in node.outputs],
                           dict(node.attrs)))


def summarize(graph: Graph) -> list[OpSummary]:
    """One row per op type, in order of first appearance."""
    params = set(graph.params)
    rows: dict[str, OpSummary] = {}
    for node in graph.nodes:
        row = rows.setdefault(node.op, OpSummary(node.op))
        row.count += 1
        row.flops += node_flops(node)
        row.params += sum(v.type.size for v in dict.fromkeys(node.inputs)
                          if v in params and v.type.is_static)
    return list(rows.values())


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}P"


def format_summary(graph: Graph) -> str:
    rows = summarize(graph)
    lines = [f"{'op':<20}{'count':>7}{'params':>12}{'FLOPs':>12}"]
    for r in rows:
        lines.append(f"{r.op:<20}{r.count:>7}{_human(r.params):>12}{_human(r.flops):>12}")
    total_params = sum(v.type.size for v in graph.params if v.type.is_static)
    total_flops = sum(r.flops for r in rows)
    lines.append(f"{'total':<20}{len(graph.nodes):>7}{_human(total_params):>12}"
                 f"{_human(total_flops):>12}")
    return "\n".join(lines)
