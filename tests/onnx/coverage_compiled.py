"""ONNX conformance through the code generator: onnx's backend node cases, imported with
``from_onnx`` and compiled with ``kiln.compile`` (O2), checked against the cases' outputs.

A compile has a fixed cost (about 0.1 s for one small case; 150 cases side by side take about
5 s), so the cases are compiled in batches: each batch is ONE kiln Graph that holds its cases
side by side, as disjoint sub-graphs whose values carry a per-case prefix (``c7_x``), compiled
once and run once. Passes may share work between cases (CSE of equal constants); that
changes no case's values.

A case that breaks its batch's compile or run is taken out: an error that names a value of a
case (``%c7_x`` in lowering errors, ``'c7_x'`` in the runtime's) fails that case and the
batch is compiled again without it; an error that names no case splits the batch in halves
until it does. Messages lose the prefixes and kernel numbers, so a case's reason reads the
same whichever batch ran it. ``tests/onnx/test_conformance_compiled.py`` runs this over
every case that passes the interpreter; ``python -m tests.onnx.coverage`` counts
the results.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from functools import cache

import numpy as np

from kiln.ir.graph import Graph, Node, Value
from tests.onnx.coverage import (
    cases_by_name,
    check_outputs,
    failure,
    prepare,
)

BATCH_SIZE = 150
_PREFIX = re.compile(r"\bc(\d+)_")


@dataclass
class Prepared:
    """One case ready to batch: its graph (values prefixed), inputs (prefixed) and outputs."""

    name: str
    graph: Graph
    feed: dict[str, np.ndarray]
    expected: list


def prefixed(graph: Graph, prefix: str) -> Graph:
    """``graph`` with every value renamed ``prefix + name`` (new Value objects)."""
    table: dict[Value, Value] = {}

    def new(v: Value) -> Value:
        if v not in table:
            table[v] = Value(prefix + v.name, v.type)
        return table[v]

    nodes = []
    for n in graph.nodes:
        if any(isinstance(a, Graph) for a in n.attrs.values()):
            raise ValueError(f"{n.describe()}: a fused node cannot be renamed")
        nodes.append(Node(n.op, tuple(new(v) for v in n.inputs), n.attrs,
                          tuple(new(v) for v in n.outputs), n.origin))
    return Graph(prefix + graph.name, tuple(new(v) for v in graph.inputs),
                 tuple(new(v) for v in graph.params), tuple(nodes),
                 tuple(new(v) for v in graph.outputs),
                 {prefix + k: a for k, a in graph.weights.items()})


def merge(graphs: list[Graph], name: str = "batch") -> Graph:
    """Disjoint graphs (distinct value names) as one graph: inputs, parameters, nodes and
    outputs concatenated in order."""
    weights: dict[str, np.ndarray] = {}
    for g in graphs:
        weights.update(g.weights)
    return Graph(name, sum((g.inputs for g in graphs), ()), sum((g.params for g in graphs), ()),
                 sum((g.nodes for g in graphs), ()), sum((g.outputs for g in graphs), ()),
                 weights)


def prepare_case(name: str, index: int) -> Prepared:
    """Import case ``name`` and prefix its values with ``c{index}_``."""
    from kiln.frontend.onnx.importer import from_onnx
    from kiln.ir.verifier import verify

    case = cases_by_name()[name]
    model, feed, expected = prepare(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = verify(from_onnx(model))
    prefix = f"c{index}_"
    names = {v.name for v in graph.inputs}
    if set(feed) != names:
        raise AssertionError(f"inputs {sorted(feed)} but the graph takes {sorted(names)}")
    return Prepared(name, prefixed(graph, prefix),
                    {prefix + k: np.asarray(a) for k, a in feed.items()}, expected)


def _unprefixed(message: str) -> str:
    """A failure message without the batch's value prefixes and kernel numbers (the same
    whichever batch ran the case)."""
    message = re.sub(r"\bkernel #\d+ ", "kernel ", message)
    return re.sub(r"\b[ck]\d+_", "", message)


def _one_line(kind: str, text: str) -> str:
    """``kind: text`` on one line, without the batch's prefixes, as ``failure`` makes it."""
    text = " ".join(ln.strip() for ln in text.strip().splitlines() if ln.strip())
    return _unprefixed(f"{kind}: {text}")[:300]


def _blamed(e: Exception, batch: list[tuple[int, Prepared]]) -> dict[int, str]:
    """Cases of ``batch`` that the error ``e`` names, each with the line that names it."""
    message = str(e)
    ids = {i for i, _ in batch}
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    out: dict[int, str] = {}
    for i in sorted({int(m) for m in _PREFIX.findall(message)} & ids):
        mine = [ln for ln in lines if re.search(rf"\bc{i}_", ln)]
        out[i] = _one_line(type(e).__name__, message if len(lines) == 1 or len(mine) == len(
            [ln for ln in lines if _PREFIX.search(ln)]) else mine[0])
    return out


def _run_batch(batch: list[tuple[int, Prepared]], opt_level: int,
               results: dict[str, str | None]) -> None:
    """Compile ``batch`` as one graph, run it and check every case, into ``results``."""
    from kiln.codegen.api import compile as kiln_compile

    pending = list(batch)
    while pending:
        graph = merge([p.graph for _, p in pending])
        feed = {k: a for _, p in pending for k, a in p.feed.items()}
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                compiled = kiln_compile(graph, opt_level=opt_level)
                got = compiled.run(feed)
        except Exception as e:  # take out the cases it names, or split the batch
            blamed = _blamed(e, pending)
            if blamed:
                for i, p in pending:
                    if i in blamed:
                        results[p.name] = blamed[i]
                pending = [(i, p) for i, p in pending if i not in blamed]
                continue
            if len(pending) == 1:
                results[pending[0][1].name] = _one_line(type(e).__name__, str(e))
                return
            half = len(pending) // 2
            _run_batch(pending[:half], opt_level, results)
            _run_batch(pending[half:], opt_level, results)
            return
        start = 0
        for _, p in pending:
            outs = got[start:start + len(p.expected)]
            start += len(p.expected)
            try:
                check_outputs(cases_by_name()[p.name], outs, p.expected)
                results[p.name] = None
            except Exception as e:
                results[p.name] = failure(e)
        return


def run_compiled(names: list[str], opt_level: int = 2) -> dict[str, str | None]:
    """Case name -> None (passed through compile) or one line saying why it failed, for
    ``names`` compiled together as one graph."""
    results: dict[str, str | None] = {}
    batch: list[tuple[int, Prepared]] = []
    for index, name in enumerate(names):
        try:
            batch.append((index, prepare_case(name, index)))
        except Exception as e:
            results[name] = failure(e)
    _run_batch(batch, opt_level, results)
    return {n: results[n] for n in names}


def batches(names: list[str], size: int = BATCH_SIZE) -> list[tuple[str, ...]]:
    """``names`` sorted and cut into batches of at most ``size`` (the same cut every run)."""
    names = sorted(names)
    count = max(1, -(-len(names) // size))
    step = -(-len(names) // count)
    return [tuple(names[i:i + step]) for i in range(0, len(names), step)]


@cache
def run_batch(names: tuple[str, ...], opt_level: int = 2) -> dict[str, str | None]:
    """``run_compiled`` of one batch, kept (each batch is compiled once per process)."""
    return run_compiled(list(names), opt_level)


def run_all_compiled(names: list[str], opt_level: int = 2) -> dict[str, str | None]:
    """``run_compiled`` over ``names`` in ``batches``."""
    out: dict[str, str | None] = {}
    for batch in batches(names):
        out.update(run_batch(batch, opt_level))
    return out
