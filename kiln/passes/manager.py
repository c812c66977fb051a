"""The pass manager: named passes, named pipelines, verification, timing and IR dumps.

A pass is a pure function ``(Graph, PassContext | None) -> Graph`` registered under a name
with ``@graph_pass``; the manager hands every pass the one ``PassContext`` of the run
(target, opt level, pass options; ``kiln/passes/context.py``). Pipelines are lists of pass
names: ``O0`` runs nothing but the precision policy (``precision``: bf16/fp16 if the
context asks), ``O1`` canonicalizes, ``O2`` adds fusion and ``O3`` layout tuning; the
target drops the passes that do not apply to it (``Target.uses_pass``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from kiln.errors import KilnError
from kiln.ir.graph import Graph
from kiln.ir.verifier import verify as verify_graph
from kiln.passes.context import PassContext
from kiln.targets import resolve_target

Pass = Callable[[Graph, "PassContext | None"], Graph]
PASSES: dict[str, Pass] = {}

CANONICALIZE = ["fold_constants", "simplify", "fold_batch_norm", "fold_constants", "simplify",
                "cse", "dce"]
# "precision" changes nothing unless the context asks for bf16/fp16 (it must run at every
# level then: it changes what the graph computes, as the user asked)
# "int8" (quantized matmuls and convolutions on integer kernels) runs first, while the
# weights are still integers
PIPELINES: dict[str, list[str]] = {
    "O0": ["precision"],
    "O1": ["int8"] + CANONICALIZE + ["precision"],
    "O2": ["int8"] + CANONICALIZE + ["precision", "fuse"],
    "O3": ["int8"] + CANONICALIZE + ["precision", "layout", "fuse"],
}


def graph_pass(name: str):
    """Register ``fn(graph, ctx=None) -> Graph`` as the pass ``name``."""

    def wrap(fn: Pass) -> Pass:
        if name in PASSES:
            raise KilnError(f"pass {name!r} is registered twice")
        PASSES[name] = fn
        fn.pass_name = name  # type: ignore[attr-defined]
        return fn

    return wrap


@dataclass
class PassRecord:
    name: str
    seconds: float
    nodes_before: int
    nodes_after: int


def pipeline(opt_level: int | str, target: Any = None) -> list[str]:
    """The pass names of ``O<opt_level>`` that apply to ``target`` (None: all); a pass not
    built yet is a clear error."""
    key = opt_level if isinstance(opt_level, str) else f"O{opt_level}"
    if key not in PIPELINES:
        raise KilnError(f"unknown optimization level {opt_level!r}; use one of "
                        f"{', '.join(PIPELINES)}")
    _load_passes()
    missing = [p for p in PIPELINES[key] if p not in PASSES]
    if missing:
        raise KilnError(f"{key} needs the pass(es) {missing}, which this kiln does not have; "
                        f"use a lower opt_level")
    return [p for p in PIPELINES[key] if target is None or target.uses_pass(p)]


def level_number(opt_level: int | str | Iterable[str]) -> int:
    """2 for ``2`` or ``"O2"``; an explicit pass list counts as level 2."""
    if isinstance(opt_level, int):
        return opt_level
    if isinstance(opt_level, str) and opt_level[1:].isdigit():
        return int(opt_level[1:])
    return 2


def optimize(
    graph: Graph,
    opt_level: int | str | Iterable[str] = 1,
    *,
    target: Any = None,
    ctx: PassContext | None = None,
    verify: bool = False,
    disable: Iterable[str] = (),
    dump_after: Iterable[str] = (),
    dump: Callable[[str], None] = print,
    records: list[PassRecord] | None = None,
) -> Graph:
    """Run a pipeline (``opt_level``) or an explicit list of pass names over ``graph``.

    Every pass gets ``ctx``; without one, a PassContext for ``target`` (see
    ``kiln.targets.resolve_target``; None: this machine) with the layout heuristic. This is
    the passes layer's entry point: ``kiln.optimize`` (what ``kiln.compile`` runs) makes
    the context with a measuring layout chooser. ``verify`` checks the IR after every pass;
    ``disable`` skips passes by name; the IR is printed through ``dump`` after each pass
    named in ``dump_after`` ("all" for every pass); ``records`` collects each pass's time and
    node counts.
    """
    if ctx is None:
        ctx = PassContext(target=resolve_target(target), opt_level=level_number(opt_level))
    names = (pipeline(opt_level, ctx.target) if isinstance(opt_level, (int, str))
             else list(opt_level))
    _load_passes()
    disable, dump_after = set(disable), set(dump_after)
    unknown = (set(names) | disable | (dump_after - {"all"})) - set(PASSES)
    if unknown:
        raise KilnError(f"unknown pass(es) {sorted(unknown)}; kiln has {sorted(PASSES)}")
    if verify:
        verify_graph(graph)
    for name in names:
        if name in disable:
            continue
        before, t0 = len(graph.nodes), time.perf_counter()
        try:
            graph = PASSES[name](graph, ctx)
            if verify:
                verify_graph(graph)
        except KilnError as e:
            raise type(e)(f"pass {name}: {e}") from None
        if records is not None:
            records.append(PassRecord(name, time.perf_counter() - t0, before, len(graph.nodes)))
        if name in dump_after or "all" in dump_after:
            dump(f"// after {name}\n{graph}")
    return graph


def _load_passes() -> None:
    """Import the modules that register passes (kept lazy to avoid import cycles)."""
    import kiln.passes.canonicalize  # noqa: F401
    import kiln.passes.fusion  # noqa: F401
    import kiln.passes.int8  # noqa: F401
    import kiln.passes.layout  # noqa: F401
    import kiln.passes.precision  # noqa: F401
