"""``kiln compare`` and ``kiln bisect``: where compiled code and its reference part ways.

    kiln compare model.onnx --input x=1x3x224x224 --reference onnxruntime --save repro/
    kiln compare examples/mlp.py:MLP --input x=2x784 -O 3
    kiln bisect examples/resnet.py:resnet18 --input x=1x3x32x32 -O 2

Both exit 1 when they find a difference (0 when there is none), so that a script can tell.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from kiln.cli.common import is_onnx, load_graph, random_inputs
from kiln.errors import CLIError


def _inputs(args: argparse.Namespace):
    graph, given = load_graph(args.model, args.input)
    return graph, random_inputs(graph, given, args.seed)


def cmd_compare(args: argparse.Namespace) -> int:
    from kiln.debug import compare

    onnx_model = args.reference_model or (args.model if is_onnx(args.model) else None)
    reference = "onnxruntime" if args.reference_model else args.reference
    if reference == "onnxruntime" and onnx_model is None:
        raise CLIError("--reference onnxruntime runs an ONNX file: compare an .onnx model, "
                       "or give --reference-model OTHER.onnx")
    graph, inputs = _inputs(args)
    result = compare(graph, inputs, reference=reference, onnx_model=onnx_model,
                     opt_level=args.opt_level, target=args.target, precision=args.precision,
                     atol=args.atol, rtol=args.rtol, save=args.save)
    what = f"{reference}" + (f" on {onnx_model}" if reference == "onnxruntime" else "")
    print(f"{len(result.kernels)} kernels of {args.model} at O{args.opt_level} against "
          f"{what}:")
    print(result.table())
    print(result.summary())
    return 0 if result.ok else 1


def cmd_bisect(args: argparse.Namespace) -> int:
    from kiln.debug import bisect

    graph, inputs = _inputs(args)
    result = bisect(graph, inputs, opt_level=args.opt_level, target=args.target,
                    precision=args.precision, atol=args.atol, rtol=args.rtol,
                    progress=lambda msg: print(f"kiln bisect: {msg}", file=sys.stderr,
                                               flush=True))
    print(result.report())
    return 0 if result.culprit is None else 1


def add_parsers(sub: Any) -> None:
    """Register compare and bisect on the ``kiln`` command's subparsers."""
    for name, fn, text in (
            ("compare", cmd_compare, "compare every kernel's output with a reference (the "
             "interpreter or onnxruntime); save the first divergent kernel's inputs"),
            ("bisect", cmd_bisect, "find the pass (and fused group) that makes the compiled "
             "model differ from the interpreter")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("model", help="FILE.py:NAME or MODEL.onnx")
        sp.add_argument("--input", "-i", action="append", default=[],
                        metavar="NAME=SHAPE[:DTYPE]",
                        help="an input shape (random values) or NAME=FILE.npy")
        sp.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
        sp.add_argument("--opt-level", "-O", type=int, default=2, choices=(0, 1, 2, 3),
                        help="the pipeline to compile with (default 2)")
        sp.add_argument("--target", default="llvm", help="llvm (this CPU), portable, ...")
        sp.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                        help="compile in this precision (loosen --atol/--rtol to match)")
        sp.add_argument("--atol", type=float, default=1e-4,
                        help="absolute tolerance (|got - want| <= atol + rtol * |want|)")
        sp.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance")
        sp.add_argument("--verbose", "-v", action="store_true",
                        help="show the traceback of an error")
        sp.set_defaults(fn=fn, command=name)
        if name == "compare":
            sp.add_argument("--reference", default="interpreter",
                            choices=("interpreter", "onnxruntime"),
                            help="what computes the expected values (onnxruntime: the "
                                 "ONNX model itself, its intermediates exposed as outputs)")
            sp.add_argument("--reference-model", metavar="OTHER.onnx",
                            help="run onnxruntime on another ONNX file (an earlier export "
                                 "of the model): where do the two part ways?")
            sp.add_argument("--save", metavar="DIR",
                            help="write the first divergent kernel's inputs (.npy), node "
                                 "(text IR) and TIR to DIR")
