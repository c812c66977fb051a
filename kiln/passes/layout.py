"""Layout tuning (O3): conv2d chains keep their activations in the blocked ``NCHW{c}c`` layout
across layers (NeoCPU, Liu et al., USENIX ATC 2019), with transforms only at the edges.

What runs blocked:
- every conv2d with groups 1, static float32 NCHW input and constant weights (and bias)
  (and bfloat16 ones where the target has kiln's native bf16 GEMM: in whole-channel blocks,
  ``NCHW{C}c``, which is NHWC: the GEMM reads and writes it in place):
  ``conv2d_nchwc`` on its input in ``NCHW{ic}c`` and its weight relaid out ``OIHW{ic}i{oc}o``
  (a constant transform, folded at compile time); a bias becomes a broadcast ``add`` of a
  folded ``[1, O/oc, 1, 1, oc]`` constant;
- where that saves transforms: depthwise convs (``depthwise_conv2d_nchwc``, their weight
  relaid out ``OIHW{c}o``, in the block their input and output share), max/avg/global-average
  pools (their ``_nchwc`` forms),
  concats along C (along the C/c blocks), batch norms with constant statistics (a folded
  per-channel scale and shift), and elementwise ops (relu, residual adds, ...) whose other
  operands are scalars or per-channel vectors (``[C, 1, 1]`` / ``[1, C, 1, 1]``). Which of
  these run blocked is a minimum cut between the convs and the NCHW world (``_Plan.place``):
  the fewest elements transformed, a ShuffleNet unit's add between grouped convs stays NCHW;
- every other op, and every graph output, reads NCHW: one shared ``layout_transform`` back
  per value that needs it.
Transforms are made lazily and shared, so a chain never converts back and forth; transform
pairs already in the graph collapse (``cancel_transforms``); constant transforms fold.

Block sizes. Values joined by blocked elementwise ops, pools and concats (a residual stage's
adds) share one channel block; each such set takes the output block ``oc`` that minimizes the
summed time of the convs producing into it, and every conv's input block ``ic`` is the block
its input already has (no transform between layers). Times come from a ``Chooser`` that
``kiln.compile(opt_level=3, layout_budget=...)`` provides (``kiln/codegen/layout_tuning.py``
compiles and times a few candidates per conv shape, cached on disk). Without one (the
registered pass alone, budget 0) ``layout_choice.heuristic``: ``oc`` = two vectors (32
float32 on AVX-512) with a 7-pixel register tile when that divides O, else one vector (or the
largest of 32, 16, 8 dividing O) with the codegen's tile; ``ic`` = the largest divisor of C
up to one vector for a conv reading NCHW.
"""

from __future__ import annotations

import math

import numpy as np

from kiln.ir.graph import Graph, GraphBuilder, Node, Value
from kiln.ir.ops.layout import nchwc
from kiln.ir.ops.registry import is_elementwise
from kiln.ir.types import TensorType
from kiln.passes.canonicalize import Constants, eliminate_dead_code, fold_constants
from kiln.passes.context import PassContext
from kiln.passes.layout_choice import (
    BLOCKS,
    Candidate,
    ConvProblem,
    LayoutChoice,
    LayoutOptions,
    LayoutReport,
    best_block,
    best_with,
    heuristic,
    heuristic_block,
    in_block,
)
from kiln.passes.manager import graph_pass
from kiln.passes.rewrite import add_param, copy_node, finish, rebuild, start

__all__ = ["BLOCKS", "Candidate", "ConvProblem", "LayoutChoice", "LayoutOptions", "LayoutReport",
           "block_layout", "cancel_transforms", "heuristic", "heuristic_block", "layout"]

POOLS = {"max_pool2d": "max_pool2d_nchwc", "avg_pool2d": "avg_pool2d_nchwc",
         "global_avg_pool2d": "global_avg_pool2d_nchwc"}


# -- analysis -----------------------------------------------------------------------------------


def _blockable_type(t: TensorType) -> bool:
    """NCHW with static channels and pixels: the batch may be a symbolic size (it is the
    outer loop of every blocked kernel)."""
    return t.rank == 4 and all(isinstance(d, int) for d in t.shape[1:])


def _elements(t: TensorType) -> int:
    """Elements of a value for the layout's cost, per sample where the batch is symbolic."""
    return math.prod(d if isinstance(d, int) else 1 for d in t.shape)


def _blockable_depthwise(node: Node, consts: Constants, bf16: bool) -> bool:
    """A depthwise conv2d (groups == C == O) of a static float32 input (or bfloat16, as in
    ``_blockable_conv``) and constant weights: it may run blocked, in the block its input
    and output share (like a pool)."""
    if node.op != "conv2d":
        return False
    x = node.inputs[0]
    dtypes = ("float32", "bfloat16") if bf16 else ("float32",)
    return (x.dtype in dtypes and _blockable_type(x.type)
            and node.attrs["groups"] == x.shape[1] == node.inputs[1].shape[0] > 1
            and all(consts.is_constant(v) for v in node.inputs[1:]))


def _blockable_conv(node: Node, consts: Constants, bf16: bool) -> ConvProblem | None:
    """The problem of a conv2d that may run blocked: groups 1, constant weights, a static
    float32 input (or bfloat16 where ``bf16``: the target runs kiln's native bf16 GEMM,
    which reads whole-channel blocks, NHWC)."""
    if node.op != "conv2d":
        return None
    x = node.inputs[0]
    dtypes = ("float32", "bfloat16") if bf16 else ("float32",)
    if node.attrs["groups"] != 1 or x.dtype not in dtypes or not _blockable_type(x.type) \
            or not all(consts.is_constant(v) for v in node.inputs[1:]):
        return None
    n, c, h, w = x.shape
    n = n if isinstance(n, int) else 1  # a symbolic batch: blocks are chosen for one image
    o, _, kh, kw = node.inputs[1].shape
    block = heuristic_block(o, 16)
    if x.dtype == "float32" and (block is None or (block < 16 and o >= 512)):
        # a wide conv in half vectors (SqueezeNet's 1000-class 1x1 conv: 8-channel blocks,
        # 189 GFLOP/s) is slower than the same conv left NCHW; narrower ones (MobileNetV3's
        # 72, 88 and 120 channels: 1.22 -> 1.40 ms left NCHW) keep the blocked chain
        return None
    a = node.attrs
    return ConvProblem(n, c, h, w, o, (kh, kw), a["strides"], a["pads"], a["dilations"],
                       x.dtype)


def _operand_kind(v: Value, out: Value) -> str | None:
    """How an elementwise operand meets a blocked NCHW output: 'full', 'scalar', 'channel'."""
    shape, c = v.type.shape, out.type.shape[1]
    if shape == out.type.shape:
        return "full"
    if v.type.is_static and v.type.size == 1:
        return "scalar"
    if shape in ((c, 1, 1), (1, c, 1, 1)):
        return "channel"
    return None


class _Plan:
    """Which nodes compute blocked, and the sets of values that must share one block.

    Convs are blocked; pools, concats along C, constant batch norms and elementwise ops may
    be; everything else reads NCHW. Which of the optional ones go blocked is a minimum s-t
    cut (``place``); then the sets are joined (union-find), with the channel counts each
    set's block must divide."""

    def __init__(self, graph: Graph, bf16: bool = False, only: frozenset[str] | None = None):
        self.graph, self.consts, self.bf16, self.only = graph, Constants(graph), bf16, only
        self.problems: dict[Node, ConvProblem] = {}
        self.operands: dict[Node, list[Value]] = {}  # blocked node -> operands read blocked
        for node in graph.nodes:
            self.mark(node)
        if self.problems:
            self.place()
        self.parent: dict[Value, Value] = {}
        self.channels: dict[Value, set[int]] = {}  # root -> channel counts to divide
        self.full_operands: list[tuple[Value, Value]] = []  # (NCHW operand, blocked output)
        for node in graph.nodes:
            if node in self.operands:
                self.join(node.outputs[0], self.operands[node])

    def mark(self, node: Node) -> None:
        """Record whether ``node`` can compute blocked, and which operands it then reads so."""
        out = node.outputs[0] if len(node.outputs) == 1 else None
        if out is None or not _blockable_type(out.type):
            return
        problem = _blockable_conv(node, self.consts, self.bf16)
        if problem is not None and self.only is not None and out.name not in self.only:
            return  # kept NCHW (bisect)
        if problem is not None:
            self.problems[node] = problem
            self.operands[node] = []  # its input is read blocked, in a block of its own
        elif out.shape[1] % min(BLOCKS):
            return  # no block divides its channels
        elif node.op in POOLS or node.op == "batch_norm" and all(
                self.consts.is_constant(v) for v in node.inputs[1:]) \
                or _blockable_depthwise(node, self.consts, self.bf16):
            self.operands[node] = [node.inputs[0]]
        elif node.op == "concat" and node.attrs["axis"] in (1, -3) and all(
                isinstance(v.shape[1], int) and v.shape[1] % min(BLOCKS) == 0
                for v in node.inputs):
            self.operands[node] = list(node.inputs)
        elif is_elementwise(node.op):
            kinds = [_operand_kind(v, out) for v in node.inputs]
            if None not in kinds:
                self.operands[node] = [v for v, k in zip(node.inputs, kinds) if k == "full"]

    def reads_blocked(self, user: Node, v: Value) -> bool:
        """Whether ``user``, if blocked, reads ``v`` blocked."""
        return v in self.operands.get(user, ()) or (user in self.problems
                                                     and user.inputs[0] is v)

    def place(self) -> None:
        """Keep blocked the optional nodes that minimize the elements transformed: a min cut
        between blocked (convs) and NCHW (other ops, graph inputs and outputs). Each value
        costs its size once if its producer is blocked and some reader reads NCHW (the
        transform back, shared), and once if its producer is NCHW and some reader reads it
        blocked. Constants cost nothing (their transforms fold); ties go blocked (an
        epsilon), where epilogues fuse into the convs."""
        import networkx as nx

        g, users, outputs = nx.DiGraph(), self.graph.users, set(self.graph.outputs)
        eps = 0.5 / (len(self.graph.nodes) + 1)
        for node in self.graph.nodes:
            if node in self.problems:
                g.add_edge("blocked", id(node))  # no capacity: infinite
            elif node in self.operands:
                g.add_edge("blocked", id(node), capacity=eps)
            else:
                g.add_edge(id(node), "nchw")
        for v, readers in users.items():
            if self.consts.is_constant(v):
                continue
            producer = self.graph.producers.get(v)
            p = id(producer) if producer is not None else "nchw"
            can = [u for u in readers if self.reads_blocked(u, v)]
            back, into = ("back", id(v)), ("into", id(v))
            g.add_edge(p, back, capacity=_elements(v.type))
            g.add_edge(into, p, capacity=_elements(v.type))
            for u in can:
                g.add_edge(back, id(u))
                g.add_edge(id(u), into)
            if v in outputs or len(can) < len(readers):
                g.add_edge(back, "nchw")
        for v in outputs:
            if v not in users and v in self.graph.producers:
                g.add_edge(id(self.graph.producers[v]), ("back", id(v)),
                           capacity=_elements(v.type))
                g.add_edge(("back", id(v)), "nchw")
        _, (blocked, _) = nx.minimum_cut(g, "blocked", "nchw")
        for node in list(self.operands):
            if id(node) not in blocked:
                del self.operands[node]

    def find(self, v: Value) -> Value:
        while self.parent[v] is not v:
            self.parent[v] = self.parent[self.parent[v]]
            v = self.parent[v]
        return v

    def join(self, out: Value, operands: list[Value]) -> None:
        """``out`` in one set with its blocked ``operands``; the NCHW ones are transformed
        into that set's block."""
        self.parent[out] = out
        need = self.channels.setdefault(out, {out.shape[1]})
        for v in operands:
            if v in self.parent:
                root = self.find(v)
                if root is not out:
                    self.parent[root] = out
                    need |= self.channels.pop(root)
            else:
                need.add(v.shape[1])
                self.full_operands.append((v, out))

    def choose(self, options: LayoutOptions) -> dict[Value, int]:
        """The block of every blocked value, each conv's candidate (``picked``) and the block
        an NCHW value is read in by blocked ops (``wanted``)."""
        chooser = options.chooser or (lambda ps: heuristic(ps, options.lanes))
        # (bf16 convs are not timed: whole-channel blocks are the native GEMM's layout)
        cands = dict(chooser([p for p in self.problems.values() if p.dtype == "float32"]))
        for p in self.problems.values():  # a chooser may leave problems out
            if not cands.get(p):
                cands[p] = heuristic([p], options.lanes)[p]
        members: dict[Value, list[Node]] = {}
        for node in self.problems:
            members.setdefault(self.find(node.outputs[0]), []).append(node)
        group_block: dict[Value, int] = {}
        self.picked: dict[Node, Candidate] = {}
        for root, convs in members.items():
            need = self.channels[root]
            if len(need) == 1 and any(self.problems[n].dtype == "bfloat16" for n in convs):
                # bf16 convs: whole channels (NHWC), which kiln's native bf16 GEMM reads and
                # writes in place; a set of several channel counts (a concat) cannot have it
                group_block[root] = block = next(iter(need))
                for n in convs:
                    self.picked[n] = Candidate(block, source="bf16 whole channels")
                continue
            block = best_block([cands[self.problems[n]] for n in convs],
                               [self.problems[n] for n in convs], self.channels[root])
            group_block[root] = block
            for n in convs:
                self.picked[n] = best_with(cands[self.problems[n]], block)
        for root, need in self.channels.items():  # sets without a conv: the heuristic
            if root not in group_block and self.bf16 and len(need) == 1 and \
                    root.dtype == "bfloat16":
                group_block[root] = next(iter(need))  # bf16 feeding convs: whole channels
            elif root not in group_block:
                fits = [b for b in BLOCKS if all(c % b == 0 for c in need)]
                group_block[root] = options.lanes if options.lanes in fits else fits[0]
        blocks = {v: group_block[self.find(v)] for v in self.parent}
        self.wanted: dict[Value, int] = {}
        for v, user in self.full_operands:
            self.wanted.setdefault(v, blocks[user])
        return blocks


# -- rewrite ------------------------------------------------------------------------------------


class _Rewriter:
    def __init__(self, graph: Graph, plan: _Plan, blocks: dict[Value, int],
                 report: LayoutReport, lanes: int):
        self.graph, self.plan, self.blocks, self.report = graph, plan, blocks, report
        self.lanes = lanes
        self.b, self.env = start(graph)  # env: NCHW version of each value (when made)
        self.blk: dict[tuple[Value, int], Value] = {}  # (value, block) -> blocked version
        self.outputs = set(graph.outputs)

    def transform(self, v: Value, src: str, dst: str, name: str) -> Value:
        return self.b.op("layout_transform", [v], {"src_layout": src, "dst_layout": dst},
                         names=[self.b.free_name(name)])[0]

    def nchw(self, v: Value) -> Value:
        if v not in self.env:
            block = self.blocks[v]
            name = v.name if v in self.outputs else f"{v.name}.nchw"
            self.env[v] = self.transform(self.blk[(v, block)], nchwc(block), "NCHW", name)
        return self.env[v]

    def blocked(self, v: Value, block: int) -> Value:
        if (v, block) not in self.blk:
            own = self.blocks.get(v)
            if own is not None and own != block:
                src, layout = self.blk[(v, own)], nchwc(own)
            else:
                src, layout = self.env[v], "NCHW"
            self.blk[(v, block)] = self.transform(src, layout, nchwc(block),
                                                  f"{v.name}.nchw{block}c")
        return self.blk[(v, block)]

    def emit(self, node: Node, op: str, ins: list[Value], attrs: dict | None = None) -> None:
        out = node.outputs[0]
        name = out.name + ".nchwc" if out in self.outputs else out.name
        (y,) = self.b.op(op, ins, attrs if attrs is not None else node.attrs,
                         origin=node.origin, names=[name])
        self.blk[(out, self.blocks[out])] = y

    def channel(self, v: Value, block: int) -> Value:
        (r,) = self.b.op("reshape", [self.nchw(v)], {"shape": (1, v.type.size, 1, 1)},
                         names=[self.b.free_name(f"{v.name}.nchw")])
        return self.transform(r, "NCHW", nchwc(block), f"{v.name}.nchw{block}c")

    def conv(self, node: Node) -> None:
        x, w = node.inputs[:2]
        problem, pick = self.plan.problems[node], self.plan.picked[node]
        whole = problem.c if problem.dtype == "bfloat16" else None  # (see ``_Plan.choose``)
        ic = (self.blocks.get(x) or self.plan.wanted.get(x) or whole
              or in_block(problem.c, self.lanes))
        oc = self.blocks[node.outputs[0]]
        wb = self.transform(self.env[w], "OIHW", f"OIHW{ic}i{oc}o", f"{w.name}.{ic}i{oc}o")
        attrs = {k: node.attrs[k] for k in ("strides", "pads", "dilations")}
        attrs["tile"] = pick.tile
        if len(node.inputs) == 2:
            self.emit(node, "conv2d_nchwc", [self.blocked(x, ic), wb], attrs)
        else:
            (y,) = self.b.op("conv2d_nchwc", [self.blocked(x, ic), wb], attrs,
                             origin=node.origin, names=[f"{node.outputs[0].name}.conv"])
            self.emit(node, "add", [y, self.channel(node.inputs[2], oc)], {})
        self.report.choices.append(LayoutChoice(node.outputs[0].name, problem, ic, pick))

    def depthwise(self, node: Node) -> None:
        x, w = node.inputs[:2]
        block = self.blocks[node.outputs[0]]
        wb = self.transform(self.env[w], "OIHW", f"OIHW{block}o", f"{w.name}.{block}o")
        attrs = {k: node.attrs[k] for k in ("strides", "pads", "dilations")}
        ins = [self.blocked(x, block), wb]
        if len(node.inputs) == 2:
            self.emit(node, "depthwise_conv2d_nchwc", ins, attrs)
        else:
            (y,) = self.b.op("depthwise_conv2d_nchwc", ins, attrs, origin=node.origin,
                             names=[f"{node.outputs[0].name}.conv"])
            self.emit(node, "add", [y, self.channel(node.inputs[2], block)], {})

    def visit(self, node: Node) -> None:
        out = node.outputs[0] if node.outputs else None
        if node in self.plan.problems:
            self.conv(node)
        elif out in self.blocks and node.op == "conv2d":  # depthwise (``_Plan.mark``)
            self.depthwise(node)
        elif out in self.blocks and node.op in POOLS:
            self.emit(node, POOLS[node.op], [self.blocked(node.inputs[0], self.blocks[out])])
        elif out in self.blocks and node.op == "batch_norm":  # x * s + t, s and t folded
            gamma, beta, mean, var = (self.plan.consts.array(v) for v in node.inputs[1:])
            s = gamma / np.sqrt(var + np.asarray(node.attrs["epsilon"], var.dtype))
            block, ins = self.blocks[out], []
            for what, a in (("scale", s), ("shift", beta - mean * s)):
                v = add_param(self.b, f"{out.name}.{what}", a.astype(gamma.dtype))
                self.env[v] = v
                ins.append(self.channel(v, block))
            (y,) = self.b.op("mul", [self.blocked(node.inputs[0], block), ins[0]],
                             origin=node.origin, names=[f"{out.name}.scaled"])
            self.emit(node, "add", [y, ins[1]], {})
        elif out in self.blocks and node.op == "concat":  # along C: along the C/c blocks
            self.emit(node, "concat", [self.blocked(v, self.blocks[out]) for v in node.inputs],
                      {"axis": 1})
        elif out in self.blocks:
            block = self.blocks[out]
            ins = []
            for v in node.inputs:
                kind = _operand_kind(v, out)
                ins.append(self.blocked(v, block) if kind == "full" else
                           self.channel(v, block) if kind == "channel" else self.nchw(v))
            self.emit(node, node.op, ins)
        else:
            outs = copy_node(self.b, node, [self.nchw(v) for v in node.inputs])
            self.env.update(zip(node.outputs, outs))

    def run(self) -> Graph:
        for node in self.graph.nodes:
            self.visit(node)
        for v in self.graph.outputs:
            self.nchw(v)
        return finish(self.b, self.graph, self.env)


def cancel_transforms(graph: Graph) -> Graph:
    """``layout_transform`` chains collapse: A->B then B->A is the value itself, A->B then
    B->C one transform A->C."""
    made: dict[Value, Node] = {}

    def rule(b: GraphBuilder, node: Node, ins: list[Value]):
        inner = made.get(ins[0]) if ins else None
        if node.op == "layout_transform" and inner is not None:
            src = inner.attrs["src_layout"]
            if src == node.attrs["dst_layout"]:
                return [inner.inputs[0]]
            outs = b.op("layout_transform", [inner.inputs[0]],
                        {"src_layout": src, "dst_layout": node.attrs["dst_layout"]},
                        origin=node.origin, names=[node.outputs[0].name])
        else:
            outs = copy_node(b, node, ins)
        if node.op == "layout_transform":
            made[outs[0]] = b.last_node
        return outs

    return rebuild(graph, rule)


def blocked_convs(graph: Graph, bf16: bool = False) -> list[str]:
    """The output names of the convolutions the layout pass would run blocked."""
    return [n.outputs[0].name for n in _Plan(graph, bf16).problems]


def block_layout(graph: Graph, options: LayoutOptions | None = None
                 ) -> tuple[Graph, LayoutReport]:
    """The layout rewrite with explicit ``options``; returns the graph and what it chose."""
    options = options or LayoutOptions()
    report = options.report if options.report is not None else LayoutReport()
    plan = _Plan(graph, options.bf16, options.only)
    if plan.problems:
        blocks = plan.choose(options)
        graph = _Rewriter(graph, plan, blocks, report, options.lanes).run()
    graph = eliminate_dead_code(fold_constants(cancel_transforms(graph)))
    report.transforms = sum(n.op == "layout_transform" for n in graph.nodes)
    return graph, report


@graph_pass("layout")
def layout(graph: Graph, ctx: PassContext | None = None) -> Graph:
    """Keep conv2d chains in blocked NCHWc layout (module docstring), planned for the
    context's target; block sizes from its ``layout_chooser`` (None: the heuristic). The
    choices go to ``ctx.reports["layout"]``."""
    ctx = ctx or PassContext()
    report = ctx.reports.setdefault("layout", LayoutReport())
    options = LayoutOptions(ctx.target.lanes("float32"), ctx.layout_chooser, report,
                            bf16="avx512_bf16" in getattr(ctx.target, "features", ()),
                            only=ctx.layout_only)
    return block_layout(graph, options)[0]
