"""Timing shared by the benchmarks."""

from __future__ import annotations

import time
from typing import Any, Callable


def paired_medians(fns: list[Callable[[], Any]], repeat: int, rounds: int = 3,
                   budget_s: float = 1.0, settle_s: float = 0.05) -> list[float]:
    """Median seconds of each of ``fns``, timed in alternating blocks (a block of a, a block
    of b, ... ``rounds`` times) so that every engine meets the same machine load. Whole
    blocks, not single calls, alternate: a thread pool still spinning after its engine's last
    call would slow the other engine's next one. Each block warms up with 3 calls, then times
    up to ``repeat / rounds`` calls (fewer once ``budget_s`` is spent, but at least 3). Before
    each block the process sleeps ``settle_s``, long enough for a thread pool that spin-waits
    after its last call (onnxruntime's default) to go idle."""
    times: list[list[float]] = [[] for _ in fns]
    per_block = max(3, repeat // rounds)
    for _ in range(rounds):
        for fn, acc in zip(fns, times):
            time.sleep(settle_s)
            for _ in range(3):
                fn()
            start, done = time.perf_counter(), 0
            while done < per_block and (done < 3 or time.perf_counter() - start < budget_s):
                t0 = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - t0)
                done += 1
    return [sorted(acc)[len(acc) // 2] for acc in times]
