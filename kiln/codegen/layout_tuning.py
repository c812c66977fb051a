"""Measured block sizes for the layout pass: compile a few candidates per conv shape on the
target, time them, cache the times on disk.

``measuring_chooser(target, budget, cache)`` makes the ``Chooser`` that
``kiln.passes.layout`` calls with the conv problems of a graph. For each distinct problem it
compiles the candidates of ``candidates`` (channel block x register tile) as kernels of
their own, several problems per ``tvm.compile`` (one compile per kernel would cost ~1 s
each), largest total FLOPs first, and times each kernel (best of a few batches,
round-robin: the machine may be shared). It stops before a batch that would run past
``budget`` seconds; problems it did not reach keep the heuristic. Measured times are cached
in a JSON file keyed by everything that affects them: the op, shapes, dtype, input block,
the candidate set, the target (``CpuTarget.to_dict()``), the thread count and the kiln
version. The cache file
is, in order: the ``cache`` argument, ``$KILN_CACHE_DIR/layout.json``,
``~/.cache/kiln/layout.json``; a missing, unreadable or unwritable cache is not an error (it
is just not used). The environment variable only says where the file is: what it holds is
keyed as above, and every choice (measured, cached or heuristic) is in the manifest.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from kiln.errors import PrecisionWarning
from kiln.ir.graph import GraphBuilder
from kiln.ir.types import TensorType
from kiln.passes.context import PassContext
from kiln.passes.layout_choice import (
    BLOCKS,
    Candidate,
    Chooser,
    ConvProblem,
    LayoutReport,
    heuristic,
    in_block,
    tile_of,
)
from kiln.passes.manager import level_number
from kiln.targets import Target, resolve_target

CANDIDATES_VERSION = 3  # bump when ``candidates`` changes: old cache entries stop matching
BATCH_KERNELS = 12  # kernels per tvm.compile
COMPILE_GUESS_S = 0.3  # compile seconds per kernel before the first batch says otherwise


def cache_path(cache: str | os.PathLike | bool | None = None) -> Path | None:
    """Where the layout cache lives (see the module docstring); None for ``cache=False``."""
    if cache is False:
        return None
    if cache is not None and cache is not True:
        return Path(cache)
    root = os.environ.get("KILN_CACHE_DIR") or Path.home() / ".cache" / "kiln"
    return Path(root) / "layout.json"


def _load(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _store(path: Path | None, entries: dict) -> None:
    """Merge ``entries`` into the cache file (atomically); failures are ignored."""
    if path is None:
        return
    try:
        data = _load(path)
        data.update(entries)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".layout-", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=0, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass


def candidates(p: ConvProblem, lanes: int) -> list[Candidate]:
    """The candidates measured for ``p``: the heuristic first, then two vectors of output
    channels with 14 pixels per register tile (28 accumulators), one vector with the
    codegen's tile (up to 28 pixels) and with 14; half a vector only when no other block
    divides O (it measured ~2x slower than one vector on AVX-512 everywhere)."""
    oh, ow = p.out_size
    out = [c for c in heuristic([p], lanes)[p] if c.block]
    for block, tile in ((2 * lanes, tile_of(oh, ow, 14)), (lanes, None),
                        (lanes, tile_of(oh, ow, 14))):
        c = Candidate(block, tile)
        if block in BLOCKS and p.o % block == 0 and c not in out:
            out.append(c)
    if not out and p.o % (lanes // 2) == 0:
        out = [Candidate(lanes // 2), Candidate(lanes // 2, tile_of(oh, ow, 14))]
    return out


def pool_threads() -> int:
    """The threads TVM's pool runs kernels with (times, and so choices, depend on it)."""
    import tvm  # noqa: F401  (loads the runtime that answers)

    from kiln.runtime.threads import pool_threads as threads

    return threads()


def cache_key(p: ConvProblem, target: Target, threads: int | None = None) -> str:
    """The cache key of ``p``'s candidate times (``threads``: the pool size, asked if None)."""
    from kiln import __version__

    lanes = target.lanes(p.dtype)
    return json.dumps({"op": "conv2d_nchwc", "problem": p.key(), "ic": in_block(p.c, lanes),
                       "candidates": CANDIDATES_VERSION, "target": target.to_dict(),
                       "threads": pool_threads() if threads is None else threads,
                       "kiln": __version__}, sort_keys=True)


def _kernel(p: ConvProblem, cand: Candidate, target: Target):
    """The scheduled PrimFunc of one candidate, and its argument shapes."""
    from kiln.codegen.lower import lower_group
    from kiln.codegen.schedules import schedule, tiling_for

    ic = in_block(p.c, target.lanes(p.dtype))
    b = GraphBuilder("candidate")
    x = b.input("x", TensorType((p.n, p.c // ic, p.h, p.w, ic), p.dtype))
    w = b.input("w", TensorType((p.o // cand.block, p.c // ic, *p.kernel, ic, cand.block),
                                p.dtype))
    (y,) = b.op("conv2d_nchwc", [x, w], {"strides": p.strides, "pads": p.pads,
                                          "dilations": p.dilations, "tile": cand.tile})
    group = lower_group(b.nodes, [x, w], [y], {}, tiling_for(target))
    shapes = [x.shape, w.shape, y.shape]
    return schedule(group.prim_func(), target), shapes


def _times(calls: Sequence[tuple[Callable, list]], min_batch_s: float = 0.01,
           rounds: int = 3) -> list[float]:
    """Seconds per call of each ``(fn, args)``: the best of ``rounds`` batches of at least
    ``min_batch_s``, round-robin, so that a burst of load from elsewhere on a shared machine
    slows every candidate alike rather than one."""
    sizes = []
    for fn, args in calls:
        fn(*args)
        t0 = time.perf_counter()
        fn(*args)
        sizes.append(max(1, min(100, int(min_batch_s / max(time.perf_counter() - t0, 1e-7)))))
    best = [float("inf")] * len(calls)
    for _ in range(rounds):
        for i, ((fn, args), n) in enumerate(zip(calls, sizes)):
            t0 = time.perf_counter()
            for _ in range(n):
                fn(*args)
            best[i] = min(best[i], (time.perf_counter() - t0) / n)
    return best


def measure(work: Sequence[tuple[ConvProblem, Candidate]], target: Target) -> list[float]:
    """Compile ``work`` in one module and time each kernel (seconds per call)."""
    import tvm

    funcs, shapes = {}, []
    for i, (p, cand) in enumerate(work):
        func, s = _kernel(p, cand, target)
        funcs[f"cand{i}"] = func.with_attr("global_symbol", f"cand{i}")
        shapes.append(s)
    lib = tvm.compile(tvm.IRModule(funcs), target.tvm_target())
    rng = np.random.default_rng(0)
    calls = [(lib[f"cand{i}"], [tvm.runtime.tensor(rng.standard_normal(shape).astype("float32"))
                                for shape in s]) for i, s in enumerate(shapes)]
    return _times(calls)


def _cached(entry) -> list[Candidate] | None:
    try:
        return [Candidate(int(e["block"]), tuple(e["tile"]) if e["tile"] else None,
                          float(e["seconds"]), "cache") for e in entry] or None
    except (KeyError, TypeError, ValueError):
        return None  # an entry this kiln did not write: measure again


def measuring_chooser(target: Target, budget: float,
                      cache: str | os.PathLike | bool | None = None,
                      progress: Callable[[str], None] | None = None,
                      notes: list[str] | None = None) -> Chooser:
    """A ``Chooser`` measuring candidates on ``target`` within ``budget`` seconds (0: cache
    hits only; anything not cached or measured keeps the heuristic). What it did is said
    through ``progress`` and appended to ``notes``."""

    def say(msg: str) -> None:
        if progress is not None:
            progress(msg)
        if notes is not None:
            notes.append(msg)

    def choose(problems: Sequence[ConvProblem]) -> dict[ConvProblem, list[Candidate]]:
        t_start = time.perf_counter()
        lanes = target.lanes("float32")
        path = cache_path(cache)
        stored = _load(path)
        counts = Counter(problems)
        threads = pool_threads()
        keys = {p: cache_key(p, target, threads) for p in counts}
        out: dict[ConvProblem, list[Candidate]] = {}
        todo = []
        for p in counts:
            hit = _cached(stored.get(keys[p]))
            if hit:
                out[p] = hit
            elif candidates(p, lanes):
                todo.append(p)
        todo.sort(key=lambda p: -p.flops * counts[p])
        per_kernel, fresh = COMPILE_GUESS_S, {}
        while todo:
            batch, work = [], []
            while todo and len(work) < BATCH_KERNELS:
                p = todo.pop(0)
                batch.append(p)
                work += [(p, c) for c in candidates(p, lanes)]
            spent = time.perf_counter() - t_start
            if spent + len(work) * (per_kernel + 0.05) > budget:
                todo = batch + todo
                break
            t0 = time.perf_counter()
            try:
                times = measure(work, target)
            except Exception as e:  # noqa: BLE001 - tuning is optional: keep the heuristic
                say(f"layout: measuring {len(batch)} conv shape(s) failed, heuristic kept: "
                    f"{type(e).__name__}: {str(e).splitlines()[-1:]}")
                continue
            per_kernel = (time.perf_counter() - t0) / len(work)
            for (p, c), t in zip(work, times):
                out.setdefault(p, []).append(Candidate(c.block, c.tile, t, "measured"))
            for p in batch:
                fresh[keys[p]] = [
                    {"block": c.block, "tile": list(c.tile) if c.tile else None,
                     "seconds": c.seconds} for c in out[p]]
        if fresh:
            _store(path, fresh)
        for p in counts:
            out.setdefault(p, heuristic([p], lanes)[p])
        cached = sum(c[0].source == "cache" for c in out.values())
        say(f"layout: {len(counts)} conv shape(s): {cached} cached, {len(fresh)} measured, "
            f"{len(counts) - cached - len(fresh)} heuristic ({time.perf_counter() - t_start:.1f}"
            f" s, budget {budget:g} s)")
        return out

    return choose


def pass_context(target: Any = None, opt_level: int | str = 2, layout_budget: float = 30.0,
                 layout_cache: str | os.PathLike | bool | None = None,
                 progress: Any = None, precision: str = "fp32") -> PassContext:
    """The PassContext of ``kiln.optimize`` and ``kiln.compile``: the resolved ``target``,
    a layout chooser that measures on it within ``layout_budget`` seconds (cached in
    ``layout_cache``; see ``measuring_chooser``; its notes go to the ``layout`` report), and
    the ``precision`` policy, float32 with a warning where the target has no fast
    instructions for it (``Target.slow_precision``)."""
    from kiln.codegen.build import reporter
    from kiln.passes.precision import precision_dtype

    tgt = resolve_target(target)
    dtype = precision_dtype(precision)
    why = tgt.slow_precision(dtype) if dtype != "float32" else None
    if why:
        warnings.warn(f"precision={precision!r}: {why}; compiling in float32 instead",
                      PrecisionWarning, stacklevel=3)
        dtype = "float32"
    report = LayoutReport()
    chooser = measuring_chooser(tgt, layout_budget, layout_cache, reporter(progress),
                                report.notes)
    return PassContext(target=tgt, opt_level=level_number(opt_level), layout_chooser=chooser,
                       reports={"layout": report}, precision=dtype)
