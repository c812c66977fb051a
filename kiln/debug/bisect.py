"""``kiln bisect``: which pass makes the compiled model differ from its reference.

The pipeline of ``O<opt_level>`` runs one pass at a time, keeping the graph after each; the
graph after the first k passes is built and run (outputs against kiln's interpreter on the
graph as given), and a binary search finds the smallest k whose build differs: the k-th pass
is the culprit, shown as the text IR before and after it. If even the graph before any pass
differs, no pass is to blame: the code generated for some node is, and ``compare`` names the
first kernel that differs. If the culprit is ``fuse``, the fused groups are bisected too:
groups are undone (the nodes they replaced put back, as they were before fusion) half at a
time until one group alone makes the difference; if it is ``layout``, the convolutions it
blocks are, the others kept NCHW (``PassContext.layout_only``), until one conv's blocking
(with the layout conversions it brings) makes the difference.

A search costs about log2(passes) builds, plus log2(groups) for fusion. It assumes that a
difference, once a pass makes it, stays (a later pass rarely repairs an earlier one's bug).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import numpy as np

from kiln.debug.compare import KernelDiff, compare
from kiln.ir.graph import Graph, Node

MAX_DIFF_LINES = 80


@dataclass
class Bisection:
    """The result of ``bisect``. ``culprit``: the pass whose rewrite makes the difference,
    "codegen" (the graph differs before any pass: see ``kernel``), or None (no difference)."""

    passes: list[str]
    culprit: str | None = None
    step: int | None = None  # the culprit's position in ``passes``
    before: str = ""  # text IR before the smallest change that makes the difference
    after: str = ""  # ... and after it
    groups: list[str] = field(default_factory=list)  # fusion or layout: the group(s) or
    # convolution(s) to blame
    kernel: KernelDiff | None = None  # codegen: the first kernel that differs
    builds: int = 0
    log: list[str] = field(default_factory=list)  # one line per build tried

    def report(self) -> str:
        """What ``kiln bisect`` prints."""
        lines = [f"pipeline: {' -> '.join(self.passes) or '(no passes)'}"] + self.log
        if self.culprit is None:
            lines.append(f"no difference: the compiled model matches the interpreter after "
                         f"every pass ({self.builds} builds)")
            return "\n".join(lines)
        if self.culprit == "codegen":
            lines.append("the graph differs before any pass: the generated code is wrong")
            if self.kernel is not None:
                lines.append(f"first kernel that differs: #{self.kernel.index} "
                             f"{self.kernel.func}, holding:")
                lines += [f"  {s}" for s in self.kernel.sources]
            return "\n".join(lines)
        lines.append(f"culprit: pass {self.step + 1} of {len(self.passes)}, {self.culprit!r} "
                     f"({self.builds} builds)")
        what = "fused group" if self.culprit == "fuse" else "blocked convolution"
        for g in self.groups:
            lines.append(f"  {what} to blame: {g}")
        lines.append("the smallest change that makes the difference:")
        lines += ir_diff(self.before, self.after)
        return "\n".join(lines)


def bisect(graph: Graph, inputs: Mapping[str, np.ndarray], *, opt_level: int = 2,
           target: Any = "llvm", precision: str = "fp32", atol: float = 1e-4,
           rtol: float = 1e-3, layout_budget: float = 0.0,
           progress: Callable[[str], None] | None = None) -> Bisection:
    """Find the pass of ``O<opt_level>`` (and, for fusion, the fused group) that makes the
    compiled ``graph`` differ from kiln's interpreter on ``inputs``."""
    from kiln.codegen.layout_tuning import pass_context
    from kiln.ir.interpreter import interpret
    from kiln.passes.manager import optimize, pipeline

    say = progress or (lambda msg: None)
    inputs = {k: np.asarray(v) for k, v in inputs.items()}
    want = interpret(graph, inputs)
    ctx = pass_context(target, opt_level, layout_budget, None, None, precision)
    names = pipeline(opt_level, ctx.target)
    out = Bisection(list(names))
    graphs = [graph]
    for name in names:
        graphs.append(optimize(graphs[-1], [name], ctx=ctx))

    def differs(g: Graph, what: str) -> bool:
        bad = _differs(g, inputs, want, ctx.target, atol, rtol)
        out.builds += 1
        out.log.append(f"  build {out.builds}: {what}: {'differs' if bad else 'matches'}")
        say(out.log[-1].strip())
        return bad

    n = len(names)
    if not differs(graphs[n], f"all {n} passes"):
        return out
    if differs(graphs[0], "no passes"):
        out.culprit = "codegen"
        out.kernel = compare(graph, inputs, opt_level=[], target=ctx.target, atol=atol,
                             rtol=rtol).first_divergence
        return out
    good, bad = 0, n  # the graph after `good` passes matches, after `bad` it differs
    while bad - good > 1:
        mid = (good + bad) // 2
        if differs(graphs[mid], f"the first {mid} passes (up to {names[mid - 1]})"):
            bad = mid
        else:
            good = mid
    out.culprit, out.step = names[bad - 1], bad - 1
    out.before, out.after = str(graphs[bad - 1]), str(graphs[bad])
    if out.culprit == "fuse":
        _bisect_groups(graphs[bad - 1], graphs[bad], out, differs)
    elif out.culprit == "layout":
        _bisect_convs(graphs[bad - 1], ctx, out, differs)
    return out


def _bisect_convs(before: Graph, ctx: Any, out: Bisection,
                  differs: Callable[[Graph, str], bool]) -> None:
    """Narrow a layout difference to the convolution(s) whose blocking makes it: block
    half of them (the others stay NCHW) and follow the half that still differs."""
    from kiln.passes.layout import blocked_convs
    from kiln.passes.manager import optimize

    convs = blocked_convs(before, "avx512_bf16" in getattr(ctx.target, "features", ()))

    def laid_out(only: list[str]) -> Graph:
        return optimize(before, ["layout"], ctx=replace(ctx, layout_only=frozenset(only),
                                                       reports={}))

    suspects = _narrow(convs, lambda part: differs(
        laid_out(part), f"{len(part)} of the {len(convs)} convolutions blocked"))
    out.before, out.after = str(laid_out([])), str(laid_out(suspects))
    made = {v.name: n for n in before.nodes for v in n.outputs}
    out.groups = [made[name].describe() for name in suspects]


def _bisect_groups(before: Graph, fused: Graph, out: Bisection,
                   differs: Callable[[Graph, str], bool]) -> None:
    """Narrow a fusion difference to the fused group(s) that make it: keep half of the
    groups fused, undo the others, and follow the half that still differs."""
    groups = [i for i, node in enumerate(fused.nodes) if node.op == "fused"]
    suspects = _narrow(groups, lambda part: differs(
        unfuse(fused, before, keep=set(part)),
        f"{len(part)} of the {len(groups)} fused groups fused"))
    out.before = str(unfuse(fused, before, keep=set()))
    out.after = str(unfuse(fused, before, keep=set(suspects)))
    out.groups = [_group_text(fused.nodes[i]) for i in suspects]


def _narrow(items: list, differs_with: Callable[[list], bool]) -> list:
    """The smallest part of ``items`` (all of which make a difference together) that makes
    it alone, halving: follow the half that differs on its own; stop when neither half does
    (the items differ only together)."""
    suspects = items
    while len(suspects) > 1:
        half = len(suspects) // 2
        part = next((p for p in (suspects[:half], suspects[half:]) if differs_with(p)), None)
        if part is None:
            break
        suspects = part
    return suspects


def unfuse(fused: Graph, before: Graph, keep: set[int]) -> Graph:
    """``fused`` with every fused node not in ``keep`` (node indices) undone: replaced by
    the nodes of ``before`` (the graph fusion rewrote) that compute its values, as they were
    there (fused bodies keep the names of the values they compute)."""
    from kiln.codegen.lower import fused_body

    made = {v.name: n for n in before.nodes for v in n.outputs}
    current = {v.name: v for v in fused.all_values()}
    nodes: list[Node] = []
    for i, node in enumerate(fused.nodes):
        body = fused_body(node)
        if body is None or i in keep:
            nodes.append(node)
            continue
        originals = dict.fromkeys(made[v.name] for inner in body.nodes for v in inner.outputs
                                  if v.name in made)
        for orig in originals:
            nodes.append(replace(orig, inputs=tuple(current.get(v.name, v) for v in orig.inputs),
                                 outputs=tuple(current.get(v.name, v) for v in orig.outputs)))
    return replace(fused, nodes=tuple(nodes))


def _group_text(node: Node) -> str:
    from kiln.codegen.lower import fused_body

    body = fused_body(node)
    label = node.attrs.get("pattern") or node.attrs.get("name") or "group"
    ops = " -> ".join(n.op for n in body.nodes) if body is not None else node.op
    return f"{node.describe()} [{label}]: {ops}"


def _differs(graph: Graph, inputs: Mapping[str, np.ndarray], want: list[np.ndarray],
             target: Any, atol: float, rtol: float) -> bool:
    from kiln.codegen.build import build

    got = build(graph, target=target).run(inputs)
    return not all(g.shape == w.shape and np.allclose(
        g.astype(np.float64), w.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True)
        for g, w in zip(got, want))


def ir_diff(before: str, after: str, limit: int = MAX_DIFF_LINES) -> list[str]:
    """A unified diff of two graphs' text, at most ``limit`` lines."""
    lines = list(difflib.unified_diff(before.splitlines(), after.splitlines(), "before",
                                      "after", n=1, lineterm=""))
    if len(lines) > limit:
        lines = lines[:limit] + [f"... ({len(lines) - limit} more lines)"]
    return ["  " + ln for ln in lines]
