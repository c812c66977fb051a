"""``kiln compile``, ``kiln run`` and ``kiln bench``: build an artifact, run it, time it.

    kiln compile examples/mlp.py:MLP --input x=1x784 -o mlp.kiln [--opt-level 2]
    kiln run mlp.kiln --input x=x.npy [--out outputs/]
    kiln bench mlp.kiln [--repeat 100]

``--sign-key-file`` (compile) signs the artifact, ``--key-file`` (run, bench) refuses one
not signed with that key (docs/artifact.md, "Trust").
"""

from __future__ import annotations

import os
import time

import numpy as np

from kiln.cli.common import (
    load_graph,
    output_line,
    parse_input,
    random_array,
    random_note,
    split_bounds,
)
from kiln.errors import CLIError


def cmd_compile(args) -> int:
    from kiln.codegen.api import compile as kiln_compile
    from kiln.codegen.api import optimize
    from kiln.passes.fusion import fuse_with_report

    key = _key(args.sign_key_file)
    specs, bounds = split_bounds(args.input)
    graph, _ = load_graph(args.model, specs)
    dump = {a.partition("=")[2] or a for a in args.dump_ir}
    records: list = []
    t0 = time.perf_counter()
    if args.report_fusion:
        print(fuse_with_report(optimize(graph, 1, target=args.target,
                                        precision=args.precision))[1])
    compiled = kiln_compile(graph, target=args.target, opt_level=args.opt_level,
                            progress=not args.quiet, verify=args.verify,
                            disable=args.disable, dump_after=dump, records=records,
                            layout_budget=args.layout_budget, precision=args.precision,
                            bounds=bounds or None, specialize=_specialize(args.specialize))
    if key is not None:
        from kiln.runtime import sign_artifact

        sign_artifact(compiled.artifact, key)
    path = compiled.save(args.output)
    seconds = time.perf_counter() - t0
    kernels = len(compiled.build.kernels)
    print(f"compiled {graph.name}: {len(graph.nodes)} nodes -> {kernels} kernels "
          f"(O{args.opt_level}) in {seconds:.1f} s; wrote {path}")
    sizes = compiled.build.sizes
    if sizes:
        bounds = sizes.get("bounds", {})
        ranges = [f"{n}={bounds[n][0]}..{bounds[n][1] or ''}" if n in bounds else n
                  for n in sizes["names"]]
        print(f"  symbolic sizes {', '.join(ranges)}: one artifact runs every size in range")
        for v in compiled.build.variants:
            shown = ", ".join(f"{k}={n}" for k, n in v["sizes"].items())
            print(f"  specialized for {shown}: {len(v['calls'])} kernel calls of their own")
    if args.precision != "fp32":
        _precision_summary(compiled.build, args.precision)
    int8 = compiled.reports.get("int8")
    if int8 is not None and (int8.integer or int8.kept):
        print(f"  {int8}; native kernels: {', '.join(compiled.build.natives) or 'none'}")
    gpu = compiled.build.gpu
    if gpu:
        launches = sum(len(gpu["kernels"].get(k.func, {}).get("launches", []))
                       for k in compiled.build.kernels)
        print(f"  CUDA code for {', '.join(gpu['archs'])}: {launches} kernel launches per run; "
              "it runs where there is an NVIDIA GPU (`kiln run` there)")
    if args.verbose:
        for r in records:
            print(f"  pass {r.name:<16} {r.seconds * 1e3:8.1f} ms  {r.nodes_before:>5} -> "
                  f"{r.nodes_after} nodes")
    if args.report:
        from kiln.cli.report import build_report, write_report

        sections = build_report(compiled, graph, compiled.graph, records, args, seconds)
        print(write_report(args.report, sections, f"kiln compile {args.model}",
                           compiled.graph))
    return _check_on_cpu(graph, args) if args.check_on_cpu else 0


def _specialize(specs: list[str]) -> list[dict[str, int]] | None:
    """--specialize seq=1 or batch=1,seq=1 (sizes fixed together), once per specialization."""
    out = []
    for text in specs:
        sizes = {}
        for part in text.split(","):
            name, _, value = part.partition("=")
            if not name.isidentifier() or not value.isdigit():
                raise CLIError(f"--specialize {text!r}: expected NAME=SIZE[,NAME=SIZE...]")
            sizes[name] = int(value)
        out.append(sizes)
    return out or None


def _precision_summary(build, precision: str) -> None:
    """How much of the model the precision policy moved to the reduced type."""
    from kiln.passes.precision import precision_dtype

    dtype = precision_dtype(precision)
    values = build.values
    low = sum(1 for t in values.values() if t.dtype == dtype)
    weights = sum(a.nbytes for a in build.constants.values())
    low_weights = sum(a.nbytes for a in build.constants.values() if a.dtype.name == dtype)
    if not low:
        print(f"  precision {precision}: nothing runs in {dtype} (see the warning above)")
        return
    print(f"  precision {precision}: {low} of {len(values)} values in {dtype}; weights "
          f"{weights / 2**20:.1f} MiB ({low_weights / 2**20:.1f} MiB of it {dtype}); "
          f"native kernels: {', '.join(build.natives) or 'none'}")


def _check_on_cpu(graph, args) -> int:
    """Run the GPU kernels through OpenCL on this CPU and compare with the interpreter."""
    from kiln.cli.common import random_inputs
    from kiln.codegen.api import optimize
    from kiln.codegen.opencl_check import run_gpu_schedules
    from kiln.fuzz import mismatch
    from kiln.ir import interpret
    from kiln.targets import resolve_target

    if resolve_target(args.target).kind != "cuda":
        raise CLIError("--check-on-cpu checks GPU kernels: use it with --target cuda")
    inputs = random_inputs(graph, {}, seed=0)
    optimized = optimize(graph, args.opt_level, target=args.target, precision=args.precision)
    got = run_gpu_schedules(optimized, inputs, target=args.target)
    # a reduced precision: against the interpreter of the same policy (it knows the casts),
    # allowing a few 16-bit roundings (kernels round once, the interpreter after every op)
    low = args.precision != "fp32"
    worst = 0.0
    for value, g, w in zip(graph.outputs, got, interpret(optimized if low else graph, inputs)):
        scale = float(np.abs(w[np.isfinite(w)]).max(initial=0.0)) if w.dtype.kind == "f" else 0
        why = mismatch(w, g, rtol=3e-2, atol=3e-2 * scale) if low else mismatch(
            w, g, rtol=1e-4, atol=1e-4)
        if why:
            print(f"  %{value.name}: MISMATCH, {why}\nGPU kernels (through OpenCL on this CPU) "
                  "differ from the interpreter")
            return 1
        finite = np.isfinite(w) & np.isfinite(g) if w.dtype.kind == "f" else np.ones(w.shape, bool)
        err = float(np.abs(g[finite].astype(np.float64) - w[finite]).max(initial=0.0))
        worst = max(worst, err)
        print(f"  %{value.name}: ok (max error {err:.3g})")
    print(f"GPU kernels match the interpreter through OpenCL on this CPU (max error "
          f"{worst:.3g})")
    return 0


def _key(path: str | None) -> bytes | None:
    from kiln.runtime.format import read_key

    return None if path is None else read_key(path)


def _inputs(model, specs: list[str], seed: int) -> dict[str, np.ndarray]:
    """Inputs from NAME=FILE.npy, and random ones for the rest (it says which). A model with
    symbolic sizes takes SIZE=N for its random inputs (``batch=4``; else the sizes the
    given arrays show, else the least size allowed, at least 1)."""
    from kiln.runtime.sizes import size_value

    given, sizes = {}, {}
    names = set(getattr(model, "sizes", {}).get("names", ()))
    for text in specs:
        name, spec, array = parse_input(text)
        if array is None and name in names and len(spec.shape) == 1 \
                and isinstance(spec.shape[0], int):
            sizes[name] = spec.shape[0]
            continue
        if array is None:
            raise CLIError(f"--input {text!r}: give a .npy file (the artifact fixes the shape)"
                           + (f", or a size: {sorted(names)[0]}=4" if names else ""))
        given[name] = array
    for info in model.inputs:
        if info.name in given:
            for want, got in zip(info.shape, given[info.name].shape):
                if isinstance(want, str) and want in names:
                    sizes.setdefault(want, got)
    bounds = getattr(model, "sizes", {}).get("bounds", {})
    for name in names:
        sizes.setdefault(name, max(1, bounds.get(name, (1, None))[0]))
    rng = np.random.default_rng(seed)
    made = []
    for info in model.inputs:
        if info.name not in given:
            shape = tuple(size_value(d, sizes) for d in info.shape)
            given[info.name] = random_array(shape, info.dtype, rng)
            made.append(info.name)
    if made:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(sizes.items()))
        print(random_note(made, seed) + (f" (sizes {shown})" if names else ""))
    return given


def cmd_run(args) -> int:
    from kiln.runtime import load

    model = load(args.artifact, key=_key(args.key_file))
    outputs = model.run(_inputs(model, args.input, args.seed))
    for info, out in zip(model.outputs, outputs):
        print(output_line(info.name, out))
        if args.print:
            print(np.array2string(out, threshold=200, edgeitems=4, precision=5))
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            np.save(os.path.join(args.out, f"{info.name}.npy"), out)
    if args.out:
        print(f"wrote outputs to {args.out}/")
    return 0


def cmd_bench(args) -> int:
    from kiln.runtime import load
    from kiln.runtime.threads import pool_threads

    model = load(args.artifact, key=_key(args.key_file))
    inputs = _inputs(model, args.input, args.seed)
    ms = np.array(model.timings(inputs, repeat=args.repeat)) * 1e3
    print(f"latency over {args.repeat} runs ({pool_threads()} threads: set TVM_NUM_THREADS "
          f"to change): median {np.median(ms):.3f} ms, min {ms.min():.3f}, 90th percentile "
          f"{np.percentile(ms, 90):.3f}, max {ms.max():.3f}")
    print(memory_table(model.memory_report()))
    calls = max(3, args.repeat // 5)
    profile = sorted(model.profile(inputs, repeat=calls), key=lambda k: -k.seconds)
    print(f"\nkernels, slowest first (median of {calls} calls each; % = share of the "
          "kernels' sum):")
    print(kernel_table(profile, args.top))
    return 0


def memory_table(report: dict[str, int]) -> str:
    """The memory plan as ``kiln bench`` prints it."""
    def mib(n: int) -> str:
        return f"{n / 2**20:9.2f} MiB"

    return "\n".join([
        "memory:",
        f"  intermediates {mib(report['arena_bytes'])}  (one arena: {report['intermediates']}"
        f" values in {report['buffers']} buffers; {report['naive_bytes'] / 2**20:.2f} MiB "
        "with a buffer each)",
        f"  weights       {mib(report['constant_bytes'])}",
        f"  inputs/outputs{mib(report['io_buffer_bytes'])}  (small ones; big ones are "
        "passed without a copy)"])


def kernel_table(profile: list, top: int) -> str:
    """The per-kernel profile: names never cut, the source nodes as whole entries."""
    total = sum(k.seconds for k in profile) or 1.0
    shown = profile[:top]
    width = max([len(k.func) for k in shown] + [6]) + 2
    lines = [f"{'kernel':<{width}}{'ms':>9}{'%':>7}{'GFLOP/s':>9}  source nodes"]
    for k in shown:
        gf = f"{k.gflops:.1f}" if k.gflops else "-"
        lines.append(f"{k.func:<{width}}{k.seconds * 1e3:>9.3f}{100 * k.seconds / total:>7.1f}"
                     f"{gf:>9}  {_sources(k.sources)}")
    if len(profile) > top:
        rest = sum(k.seconds for k in profile[top:])
        lines.append(f"... {len(profile) - top} more kernels, {rest * 1e3:.3f} ms "
                     f"({100 * rest / total:.1f}%) (--top N lists more)")
    return "\n".join(lines)


def _sources(sources, limit: int = 90) -> str:
    """The first source nodes that fit in ``limit`` characters, whole, and how many more."""
    out: list[str] = []
    for i, s in enumerate(sources):
        more = len(sources) - i
        if out and len("; ".join(out + [s])) + 12 > limit:
            return "; ".join(out) + f" (+{more} more)"
        out.append(s)
    return "; ".join(out)


def add_parsers(sub) -> None:
    """Register compile, run and bench on the ``kiln`` command's subparsers."""
    sp = sub.add_parser("compile", help="compile a model into a deployable artifact")
    sp.add_argument("model", help="FILE.py:NAME or model.onnx")
    sp.add_argument("--input", "-i", action="append", default=[], metavar="NAME=SHAPE[:DTYPE]",
                    help="an input's shape (x=1x3x224x224:float32, x=batch,128 for a "
                         "symbolic size), a symbolic dim of an ONNX model fixed (batch=1), "
                         "or the range it may take (seq=1..512, batch=1..)")
    sp.add_argument("-o", "--output", required=True, help="artifact path: NAME.kiln or .tar")
    sp.add_argument("--specialize", action="append", default=[],
                    metavar="NAME=SIZE[,NAME=SIZE]",
                    help="also build kernels for symbolic sizes fixed together (batch=1,seq=1: "
                         "a decoder's one-token step), run where a call has those sizes")
    sp.add_argument("--opt-level", "-O", type=int, default=2, choices=(0, 1, 2, 3),
                    help="0: as written; 1: folded and simplified; 2: + fusion (default); "
                         "3: + blocked conv layouts, measured")
    sp.add_argument("--target", default="llvm",
                    help="llvm (this CPU), portable, x86-64-v3..., or cuda (NVIDIA GPUs: "
                         "'cuda -arch=sm_90'; built here, run on the GPU machine)")
    sp.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                    help="bf16/fp16: matmuls, convolutions and the elementwise ops between "
                         "them in that type (float32 sums); float32 with a warning where "
                         "the target has no fast instructions for it")
    sp.add_argument("--check-on-cpu", action="store_true",
                    help="cuda: also run the GPU kernels through OpenCL on this CPU (needs "
                         "pyopencl and PoCL) on random inputs; compare with the interpreter")
    sp.add_argument("--layout-budget", type=float, default=30.0, metavar="SECONDS",
                    help="O3: seconds to spend timing conv block sizes (0: cache + heuristic)")
    sp.add_argument("--dump-ir", action="append", default=[], metavar="after=PASS",
                    help="print the IR after a pass (after=fuse, after=all)")
    sp.add_argument("--disable", action="append", default=[], metavar="PASS",
                    help="skip a pass of the pipeline (e.g. fuse, int8)")
    sp.add_argument("--quiet", "-q", action="store_true",
                    help="no progress lines on stderr")
    sp.add_argument("--report-fusion", action="store_true",
                    help="print what fused and why the other candidates did not")
    sp.add_argument("--verify", action="store_true", help="verify the IR after every pass")
    sp.add_argument("--verbose", "-v", action="store_true", help="time each pass")
    sp.add_argument("--report", metavar="FILE.md|FILE.html",
                    help="write a report: passes, fused groups, layout choices, memory, a "
                         "per-kernel profile (HTML: with a picture of the graph)")
    sp.add_argument("--sign-key-file", metavar="FILE",
                    help="sign the artifact with the key in FILE (HMAC-SHA256)")
    sp.set_defaults(fn=cmd_compile, command="compile")

    for name, fn, text in (("run", cmd_run, "run an artifact"),
                           ("bench", cmd_bench, "time an artifact, per kernel")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("artifact", help="NAME.kiln directory or .tar archive")
        sp.add_argument("--input", "-i", action="append", default=[], metavar="NAME=FILE.npy",
                        help="inputs not given are random (seeded)")
        sp.add_argument("--seed", type=int, default=0,
                        help="seed of the random inputs (those not given)")
        sp.add_argument("--key-file", metavar="FILE",
                        help="refuse the artifact unless it is signed with the key in FILE")
        sp.set_defaults(fn=fn, command=name)
        if name == "run":
            sp.add_argument("--out", metavar="DIR", help="write each output to DIR/NAME.npy")
            sp.add_argument("--print", action="store_true",
                            help="print the outputs' values (numpy's summary of big ones)")
        else:
            sp.add_argument("--repeat", type=int, default=50, help="timed runs (default 50)")
            sp.add_argument("--top", type=int, default=15, help="kernels to list")
