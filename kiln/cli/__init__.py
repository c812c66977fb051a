"""The ``kiln`` command line (the console script ``kiln = "kiln.cli:main"``).

    kiln show examples/mlp.py:MLP --input x=1x784:float32      # IR + per-op summary
    kiln interpret examples/lenet.py:LeNet5 --input x=1x1x32x32 # run the numpy interpreter
    kiln export examples/mlp.py:MLP --input x=Nx784 -o mlp.onnx  # write ONNX
    kiln compile examples/mlp.py:MLP --input x=1x784 -o mlp.kiln # build an artifact
    kiln run mlp.kiln / kiln bench mlp.kiln                      # run / time it
    kiln train examples/training/digits_mlp.py:make_model --data digits
    kiln fuzz --examples 500

One module per group of subcommands (``show``: show/interpret/export; ``compile``:
compile/run/bench; ``train``; ``fuzz``), each registering its parsers; ``common`` holds what
they share (model references, ``--input`` specs) and imports none of them. Only this module
imports the subcommand modules, so there is no import cycle.
"""

from __future__ import annotations

import argparse
import sys

from kiln.cli import compile as compile_commands
from kiln.cli import fuzz, show, train
from kiln.cli.common import load_graph, load_model, parse_input
from kiln.errors import KilnError

__all__ = ["build_parser", "load_graph", "load_model", "main", "parse_input"]


def build_parser() -> argparse.ArgumentParser:
    """The ``kiln`` argument parser, every subcommand registered."""
    p = argparse.ArgumentParser(prog="kiln", description="kiln: a neural-network compiler")
    sub = p.add_subparsers(dest="command", required=True)
    show.add_parsers(sub)
    compile_commands.add_parsers(sub)
    train.add_parser(sub)
    fuzz.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``kiln ARGV...``; returns the exit status (2 on a KilnError, reported on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except KilnError as e:
        print(f"kiln {args.command}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # a runtime-only install: the compiler is an extra
        from kiln import compiler_error

        error = compiler_error(e, f"kiln {args.command}")
        if error is None:
            raise
        print(f"kiln {args.command}: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
