"""``kiln fuzz``: check the passes (and, with ``--compile``, the code generator) on random
graphs from ``kiln.fuzz``, some of them fed NaN, +-inf, -0.0, huge, tiny and denormal values
(NaN and inf positions must match exactly); a failing graph is shrunk and written to
``--out``.

    kiln fuzz --examples 500 --seed 0 [--compile] [--gpu-schedules]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import sys
import time
from typing import Any

import numpy as np


def cmd_fuzz(args: argparse.Namespace) -> int:
    from kiln.fuzz import campaign, check_compiled, check_gpu_schedules, check_passes

    def save(graph, message: str) -> None:
        os.makedirs(args.out, exist_ok=True)
        digest = hashlib.sha256(str(graph).encode()).hexdigest()[:12]
        path = os.path.join(args.out, f"failure-{digest}.kiln.txt")
        with open(path, "w") as f:
            f.write("// " + message.splitlines()[0] + "\n" + str(graph) + "\n")
        if graph.weights:
            np.savez(path.replace(".kiln.txt", ".weights.npz"), **graph.weights)
        print(f"FAILED: {message.splitlines()[0]}\nminimal graph (also in {path}):\n{graph}")

    t0 = time.perf_counter()
    checks = [check_passes] + [check_compiled] * args.compile + \
        [check_gpu_schedules] * args.gpu_schedules

    def check(graph) -> None:
        for each in checks:
            each(graph)

    tried = itertools.count(1)
    every = 25 if args.compile or args.gpu_schedules else 250

    def prop(graph) -> None:  # progress on stderr: a 5000-graph campaign takes minutes
        n = next(tried)
        if n % every == 0:
            print(f"  {n}/{args.examples} graphs, {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr, flush=True)
        check(graph)

    failures = campaign(args.examples, args.seed, save, prop=prop)
    status = "found a mismatch" if failures else "no mismatch"
    print(f"fuzzed {args.examples} graphs (seed {args.seed}) in "
          f"{time.perf_counter() - t0:.1f} s: {status}")
    return 1 if failures else 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``fuzz`` on the ``kiln`` command's subparsers; returns its parser."""
    sp = sub.add_parser("fuzz", help="check the passes on random graphs, some with NaN/inf "
                        "and extreme values (needs hypothesis)")
    sp.add_argument("--examples", type=int, default=500, help="number of graphs to try")
    sp.add_argument("--seed", type=int, default=0, help="seed of the random graphs")
    sp.add_argument("--out", default="fuzz-failures", help="where failing graphs are written")
    sp.add_argument("--compile", action="store_true",
                    help="also compile each graph (O2) against the interpreter (~1 s each)")
    sp.add_argument("--gpu-schedules", action="store_true",
                    help="also run each graph's CUDA kernels through OpenCL on this CPU "
                         "against the interpreter (needs pyopencl and PoCL; ~1 s each)")
    sp.set_defaults(fn=cmd_fuzz, command="fuzz")
    return sp
