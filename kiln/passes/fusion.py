"""Operator fusion: groups of nodes become one ``fused`` node, compiled to ONE kernel.

Which op plays which part comes from its definition (``kiln.ir.ops``): its kind
(``ELEMENTWISE``) and its ``epilogue``/``prologue`` flags; fusion keeps no list of op names.
The rules, in the order a node meets them:
- an elementwise node joins the group that produced one of its inputs when that input has no
  other user and the node keeps its shape (an epilogue: matmul + bias + gelu, conv + relu +
  residual add, or a plain chain of elementwise ops);
- an elementwise chain that leads into softmax stays out of the matmul before it, and the
  softmax absorbs it (scale + mask + softmax, the attention-score kernel);
- softmax, log-softmax and layer norm absorb a single-use elementwise group of their input's
  shape (a prologue: residual add + layer norm).
Scalar constants made by ``full`` are copied into every group that reads them. A split whose
parts are read only by elementwise ops becomes one slice per part first, so that each part is
read in place by the group that uses it (an LSTM step's gates: one kernel for the cell state,
one for the hidden state, instead of a split kernel and two more). Fusion keeps
values needed elsewhere (an input with another user is never swallowed) and, because every
value inside a group has exactly one user, never creates a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln.ir.graph import Graph, GraphBuilder, Node, Value
from kiln.ir.ops.registry import is_elementwise, takes_epilogue, takes_prologue
from kiln.passes.canonicalize import eliminate_dead_code
from kiln.passes.context import PassContext
from kiln.passes.manager import graph_pass
from kiln.passes.rewrite import copy_node, finish, rebuild, start

SCALAR_MAX = 1  # a ``full`` of at most this many elements is copied into groups


@dataclass
class Group:
    nodes: list[Node]
    anchor: Node | None = None

    @property
    def tip(self) -> Value:
        return self.nodes[-1].outputs[0]

    @property
    def pattern(self) -> str:
        return "+".join(n.op for n in self.nodes)


@dataclass
class FusionReport:
    fused: list[tuple[str, list[str]]] = field(default_factory=list)  # (pattern, value names)
    declined: list[str] = field(default_factory=list)  # why a candidate did not fuse

    def __str__(self) -> str:
        lines = [f"fused {len(self.fused)} group(s):"]
        lines += [f"  {p:<40} {', '.join('%' + n for n in names)}" for p, names in self.fused]
        lines.append(f"not fused ({len(self.declined)}):")
        lines += [f"  {reason}" for reason in self.declined]
        return "\n".join(lines)


def _is_scalar_const(node: Node | None) -> bool:
    t = node.outputs[0].type if node is not None else None
    return node is not None and node.op == "full" and t.is_static and t.size <= SCALAR_MAX


class _Grouper:
    def __init__(self, graph: Graph, report: FusionReport):
        self.graph, self.report = graph, report
        self.users, self.producers = graph.users, graph.producers
        self.group_of: dict[Value, Group] = {}
        self.groups: list[Group] = []

    def why_not(self, group: Group, v: Value, node: Node) -> str | None:
        """None if ``node`` may join ``group`` through its input ``v``; else the reason."""
        if v is not group.tip:
            return f"%{v.name} is not the last value of its group"
        if len(self.producers[v].outputs) > 1:
            # its other outputs are read elsewhere: they could not stay inside one kernel
            return f"%{v.name} comes from {self.producers[v].op}, which has several outputs"
        others = [u for u in self.users.get(v, []) if u is not node]
        if others or v in self.graph.outputs:
            return f"%{v.name} ({group.pattern}) is also used elsewhere"
        if node.outputs[0].type.shape != v.type.shape:
            return (f"{node.op} changes the shape {list(v.type.shape)} -> "
                    f"{list(node.outputs[0].type.shape)} (broadcast)")
        if group.anchor is not None and group.anchor.op == "matmul" and self.leads_to_softmax(node):
            return "it leads into a softmax, which takes the scale/mask chain instead"
        return None

    def leads_to_softmax(self, node: Node) -> bool:
        """Does a single-use elementwise chain from ``node`` reach a softmax of its shape?"""
        while True:
            out = node.outputs[0]
            users = self.users.get(out, [])
            if len(users) != 1 or out in self.graph.outputs:
                return False
            node = users[0]
            if node.op in ("softmax", "log_softmax"):
                return node.inputs[0].type.shape == out.type.shape
            if not is_elementwise(node.op):
                return False

    def place(self, node: Node) -> None:
        group = None
        if is_elementwise(node.op):
            # an anchor's group first: the node becomes its epilogue, and sibling chains
            # (x_t + h @ R: the x_t side) join that kernel instead of keeping it apart
            for v in sorted(node.inputs, key=lambda v: getattr(self.group_of.get(v),
                                                                "anchor", None) is None):
                cand = self.group_of.get(v)
                if cand is None or cand is group or _is_scalar_const(self.producers.get(v)):
                    continue
                reason = self.why_not(cand, v, node)
                if reason is None and group is None:
                    group = cand
                elif reason is None and cand.anchor is None:
                    self.merge(cand, into=group)  # a sibling elementwise chain joins too
                elif reason is not None:
                    self.report.declined.append(f"%{node.outputs[0].name} ({node.op}) not "
                                                f"fused into {cand.pattern}: {reason}")
        elif takes_prologue(node.op):
            cand = self.group_of.get(node.inputs[0])
            if cand is not None and cand.anchor is None:
                reason = self.why_not(cand, node.inputs[0], node)
                if reason is None:
                    group, cand.anchor = cand, node
                else:
                    self.report.declined.append(f"%{node.outputs[0].name} ({node.op}) did not "
                                                f"absorb {cand.pattern}: {reason}")
        if group is None:
            group = Group([], node if takes_epilogue(node.op) else None)
            self.groups.append(group)
        group.nodes.append(node)
        for v in node.outputs:
            self.group_of[v] = group


    def merge(self, other: Group, into: Group) -> None:
        """Move ``other``'s nodes into ``into``, keeping graph order (tips stay last)."""
        order = {id(n): i for i, n in enumerate(self.graph.nodes)}
        into.nodes = sorted(into.nodes + other.nodes, key=lambda n: order[id(n)])
        for n in other.nodes:
            for v in n.outputs:
                self.group_of[v] = into
        self.groups.remove(other)


def _subgraph(group: Group, producers: dict[Value, Node]) -> tuple[Graph, list[Value]]:
    """The group as a graph of its own; returns it and the outer values it reads."""
    sb = GraphBuilder(group.pattern.replace("+", "_"))
    inner: dict[Value, Value] = {}
    outer: list[Value] = []
    members = {v for n in group.nodes for v in n.outputs}
    for node in group.nodes:
        for v in node.inputs:
            if v in inner or v in members:
                continue
            p = producers.get(v)
            if _is_scalar_const(p):
                inner[v] = copy_node(sb, p, [])[0]
            else:
                inner[v] = sb.input(sb.free_name(v.name), v.type)
                outer.append(v)
        outs = copy_node(sb, node, [inner[v] for v in node.inputs])
        inner.update(zip(node.outputs, outs))
    sb.output(inner[group.tip])
    return sb.build(), outer


def _slice_elementwise_splits(graph: Graph) -> Graph:
    """Each ``split`` whose parts only elementwise ops read becomes one ``slice`` per part."""
    users = graph.users

    def read_elementwise(v: Value) -> bool:
        return v not in graph.outputs and all(is_elementwise(u.op)
                                              for u in users.get(v, []))

    splits = {node for node in graph.nodes
              if node.op == "split" and all(read_elementwise(v) for v in node.outputs)}
    if not splits:
        return graph

    def rule(b: GraphBuilder, node: Node, ins: list[Value]):
        if node not in splits:
            return None
        axis, start, parts = node.attrs["axis"], 0, []
        for v, size in zip(node.outputs, node.attrs["sizes"]):
            parts += b.op("slice", ins, {"starts": (start,), "ends": (start + size,),
                                         "axes": (axis,)}, origin=node.origin, names=[v.name])
            start += size
        return parts

    return rebuild(graph, rule)


def fuse_with_report(graph: Graph) -> tuple[Graph, FusionReport]:
    """Fuse ``graph``; also say what fused and why the other candidates did not."""
    graph = _slice_elementwise_splits(graph)
    report = FusionReport()
    grouper = _Grouper(graph, report)
    for node in graph.nodes:
        grouper.place(node)
    by_tip = {id(g.nodes[-1]): g for g in grouper.groups if len(g.nodes) > 1}
    inside = {id(n) for g in by_tip.values() for n in g.nodes[:-1]}
    b, env = start(graph)
    for node in graph.nodes:
        if id(node) in inside:
            continue
        group = by_tip.get(id(node))
        if group is None:
            env.update(zip(node.outputs, copy_node(b, node, [env[v] for v in node.inputs])))
            continue
        body, outer = _subgraph(group, graph.producers)
        anchor = group.anchor or group.nodes[0]
        (out,) = b.op("fused", [env[v] for v in outer], {"graph": body, "pattern": group.pattern},
                      origin=anchor.origin, names=[group.tip.name])
        env[group.tip] = out
        report.fused.append((group.pattern, [n.outputs[0].name for n in group.nodes]))
    return eliminate_dead_code(finish(b, graph, env)), report


@graph_pass("fuse")
def fuse(graph: Graph, ctx: PassContext | None = None) -> Graph:
    """Group nodes into ``fused`` nodes (see the module docstring for the rules); what fused
    and what did not goes to ``ctx.reports["fuse"]``."""
    out, report = fuse_with_report(graph)
    if ctx is not None:
        ctx.reports["fuse"] = report
    return out
