"""The ``kiln`` command line (the console script ``kiln = "kiln.cli:main"``).

    kiln show examples/mlp.py:MLP --input x=1x784:float32      # IR + per-op summary
    kiln interpret examples/lenet.py:LeNet5 --input x=1x1x32x32 # run the numpy interpreter
    kiln export examples/mlp.py:MLP --input x=Nx784 -o mlp.onnx  # write ONNX
    kiln compile examples/mlp.py:MLP --input x=1x784 -o mlp.kiln # build an artifact
    kiln run mlp.kiln / kiln bench mlp.kiln                      # run / time it
    kiln compare model.onnx --reference onnxruntime              # per kernel, vs a reference
    kiln bisect examples/mlp.py:MLP --input x=2x784              # which pass broke it
    kiln train examples/training/digits_mlp.py:make_model --data digits
    kiln fuzz --examples 500

One module per group of subcommands (``show``: show/interpret/export; ``compile``:
compile/run/bench; ``debug``: compare/bisect; ``train``; ``fuzz``), each registering its
parsers; ``common`` holds what they share (model references, ``--input`` specs) and imports
none of them. Only this module imports the subcommand modules, so there is no import cycle.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from kiln.cli import compile as compile_commands
from kiln.cli import debug, fuzz, show, train
from kiln.cli.common import load_graph, load_model, parse_input
from kiln.errors import CLIError, KilnError

__all__ = ["build_parser", "load_graph", "load_model", "main", "parse_input"]


def build_parser() -> argparse.ArgumentParser:
    """The ``kiln`` argument parser, every subcommand registered."""
    from kiln import __version__

    p = argparse.ArgumentParser(prog="kiln", description="kiln: a neural-network compiler")
    p.add_argument("--version", action="version", version=f"kiln {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    show.add_parsers(sub)
    compile_commands.add_parsers(sub)
    debug.add_parsers(sub)
    train.add_parser(sub)
    fuzz.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``kiln ARGV...``; returns the exit status: 2 on a KilnError, reported on stderr as
    one ``kiln COMMAND: error: ...`` line (the lines of a list it holds indented below), 1 on
    any other error (a bug in kiln). The traceback is shown only with KILN_DEBUG=1 (or a
    command's --verbose)."""
    args = build_parser().parse_args(argv)
    debug = os.environ.get("KILN_DEBUG", "") not in ("", "0") or getattr(args, "verbose", False)
    try:
        return args.fn(args)
    except KilnError as e:
        if debug:
            traceback.print_exc()
        print(f"kiln {args.command}: error: {error_text(e)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # a runtime-only install: the compiler is an extra
        from kiln import compiler_error

        error = compiler_error(e, f"kiln {args.command}")
        if error is None:
            return _internal_error(args.command, e, debug)
        print(f"kiln {args.command}: error: {error_text(error)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (``kiln bench m.kiln | head``): stop quietly, as cat does;
        # stdout goes to devnull so that Python's exit flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:
        return _internal_error(args.command, e, debug)


def error_text(e: KilnError) -> str:
    """The message of ``e``, led by its kind unless that says nothing (KilnError,
    CLIError), its further lines (a list it holds) indented."""
    lines = [line for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
    kind = "" if type(e) in (KilnError, CLIError) else f"{type(e).__name__}: "
    rest = "".join(f"\n    {line.strip()}" for line in lines[1:])
    return f"{kind}{lines[0]}{rest}"


def _internal_error(command: str, e: Exception, debug: bool) -> int:
    """An error kiln did not raise on purpose: a bug. One line, the traceback with
    KILN_DEBUG=1."""
    if debug:
        raise e
    lines = str(e).strip().splitlines()
    print(f"kiln {command}: internal error: {type(e).__name__}: {lines[0] if lines else ''} "
          "(a bug in kiln; KILN_DEBUG=1 shows where)", file=sys.stderr)
    return 1
