"""``kiln show``, ``kiln interpret`` and ``kiln export``: trace (or import) a model, then print
its IR, run it in the numpy interpreter, or write it as ONNX.

    kiln show examples/mlp.py:MLP --input x=1x784:float32      # IR + per-op summary
    kiln interpret examples/lenet.py:LeNet5 --input x=1x1x32x32 # run the numpy interpreter
    kiln show model.onnx --input batch=1                         # an ONNX model, N fixed
    kiln show model.onnx -O 3 --dot resnet.svg                   # a picture after O3
    kiln export examples/mlp.py:MLP --input x=Nx784 -o mlp.onnx  # write ONNX
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np

from kiln.cli.common import load_graph, output_line, random_inputs
from kiln.errors import CLIError


def cmd_show(args: argparse.Namespace) -> int:
    from kiln.ir.picture import to_dot
    from kiln.ir.summary import format_summary

    graph, _ = load_graph(args.model, args.input)
    if args.opt_level is not None:
        from kiln.passes.manager import optimize

        graph = optimize(graph, args.opt_level)
    if not args.summary_only:
        print(graph)
        print()
    print(format_summary(graph))
    if args.dot:
        print(render(to_dot(graph, weights=not args.no_weights), args.dot))
    return 0


RENDERED = (".svg", ".png", ".pdf")


def render(dot: str, path: str) -> str:
    """Write ``dot`` to ``path``: as DOT text, or (``.svg``/``.png``/``.pdf``) drawn by
    Graphviz's ``dot`` program or the Python ``graphviz`` package; without either, the DOT
    text goes beside it (``path.dot``). Returns what it did, for the user."""
    import shutil
    import subprocess

    ext = os.path.splitext(path)[1].lower()
    if ext not in RENDERED:
        with open(path, "w") as f:
            f.write(dot)
        return f"wrote Graphviz DOT to {path} (draw it: dot -Tsvg {path} -o graph.svg)"
    if shutil.which("dot"):
        done = subprocess.run(["dot", f"-T{ext[1:]}", "-o", path], input=dot.encode(),
                              capture_output=True)
        if done.returncode == 0:
            return f"wrote {path}"
        raise CLIError(f"Graphviz's dot failed: {done.stderr.decode(errors='replace')[:300]}")
    try:
        import graphviz
    except ImportError:
        fallback = path + ".dot"
        with open(fallback, "w") as f:
            f.write(dot)
        return (f"Graphviz is not installed (apt install graphviz, or pip install graphviz "
                f"with the dot program): wrote the DOT text to {fallback} instead")
    graphviz.Source(dot).render(outfile=path, cleanup=True)
    return f"wrote {path}"


def cmd_interpret(args: argparse.Namespace) -> int:
    from kiln.ir.interpreter import interpret

    graph, given = load_graph(args.model, args.input)
    inputs = random_inputs(graph, given, args.seed)
    outputs = interpret(graph, inputs)
    for v, out in zip(graph.outputs, outputs):
        print(output_line(v.name, out))
        if args.save:
            os.makedirs(args.save, exist_ok=True)
            np.save(os.path.join(args.save, f"{v.name}.npy"), out)
    if args.save:
        print(f"saved outputs to {args.save}/")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from kiln.frontend.onnx.exporter import to_onnx

    graph, _ = load_graph(args.model, args.input)
    model = to_onnx(graph, args.output, opset=args.opset)
    print(f"wrote {args.output}: opset {args.opset}, {len(model.graph.node)} ONNX nodes, "
          f"{len(model.graph.initializer)} initializers, inputs "
          f"{', '.join(f'{v.name}: {v.type}' for v in graph.inputs)}")
    return 0


def add_parsers(sub: Any) -> None:
    """Register show, export and interpret on the ``kiln`` command's subparsers."""

    def model_command(name: str, help: str, fn) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        sp.add_argument("model", help="FILE.py:NAME (Module class, factory or function) or "
                        "MODEL.onnx")
        sp.add_argument("--input", "-i", action="append", default=[], metavar="NAME=SHAPE[:DTYPE]",
                        help="an input: x=1x3x224x224:float32, x=N,128:int64 or x=file.npy")
        sp.set_defaults(fn=fn)
        return sp

    sp = model_command("show", "trace (or import) a model; print its IR and an op summary",
                       cmd_show)
    sp.add_argument("--dot", metavar="FILE",
                    help="also draw the graph: FILE.svg/.png/.pdf (with Graphviz), or DOT text")
    sp.add_argument("--opt-level", "-O", type=int, choices=(0, 1, 2, 3),
                    help="show the graph after this pipeline (fused groups as clusters)")
    sp.add_argument("--no-weights", action="store_true", help="leave weights out of --dot")
    sp.add_argument("--summary-only", action="store_true", help="print only the op summary")
    sp = model_command("export", "write a model as ONNX", cmd_export)
    sp.add_argument("--output", "-o", required=True, metavar="FILE.onnx", help="where to write")
    sp.add_argument("--opset", type=int, default=17, help="ONNX opset (13 and newer)")
    sp = model_command("interpret", "run a model with the numpy interpreter", cmd_interpret)
    sp.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    sp.add_argument("--save", metavar="DIR", help="write each output to DIR/NAME.npy")
