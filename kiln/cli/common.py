"""What the ``kiln`` subcommands share: naming a model (``FILE.py:NAME`` or ``MODEL.onnx``),
parsing ``--input`` specs, random inputs and output checksums.

A model is named ``FILE.py:NAME``: NAME is a Module class (instantiated with no arguments), a
factory function returning a Module, or a function whose parameters are the inputs. Or it is
an ONNX file (``*.onnx``), whose inputs ``--input`` may reshape (``x=1x3x224x224``) or whose
symbolic dims it may fix (``batch=1``).

Imports nothing of ``kiln.cli``: every subcommand module imports this one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import re
import sys
from typing import Any, Callable

import numpy as np

from kiln.errors import CLIError, KilnError

_SPEC = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<body>.+)$")


def parse_input(text: str):
    """'x=1x3x224x224:float32', 'x=N,3' or 'x=path.npy' -> (name, TensorSpec, array|None)."""
    from kiln.frontend.dsl import TensorSpec
    from kiln.ir.types import DTYPES

    m = _SPEC.match(text)
    if m is None:
        raise CLIError(f"--input {text!r}: expected NAME=SHAPE[:DTYPE] "
                       "(e.g. x=1x3x224x224:float32) or NAME=FILE.npy")
    name, body = m["name"], m["body"]
    if body.endswith(".npy"):
        if not os.path.isfile(body):
            raise CLIError(f"--input {name}: file {body!r} does not exist")
        try:
            array = np.load(body, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise CLIError(f"--input {name}: cannot read {body!r} as .npy: {e}") from None
        return name, TensorSpec(tuple(array.shape), array.dtype.name), array
    shape_text, _, dtype = body.partition(":")
    dtype = dtype or "float32"
    if dtype not in DTYPES:
        raise CLIError(f"--input {name}: unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    dims: list[int | str] = []
    for d in re.split(r"[x,]", shape_text) if shape_text not in ("", "scalar") else []:
        if d.isdigit():
            dims.append(int(d))
        elif d.isidentifier():
            dims.append(d)
        else:
            raise CLIError(f"--input {name}: bad dimension {d!r} in {shape_text!r} (use ints "
                           "joined by 'x' or ',', or a name for a symbolic dimension)")
    return name, TensorSpec(tuple(dims), dtype), None


_RANGE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<low>\d+)\.\.(?P<high>\d*)$")


def split_bounds(inputs: list[str]) -> tuple[list[str], dict[str, tuple[int, int | None]]]:
    """--input specs that bound a symbolic size (``seq=1..512``, ``batch=1..``: no upper
    bound) apart from the others: (other specs, {name: (low, high or None)})."""
    rest, bounds = [], {}
    for text in inputs:
        m = _RANGE.match(text)
        if m is None:
            rest.append(text)
            continue
        low, high = int(m["low"]), int(m["high"]) if m["high"] else None
        if high is not None and high < low:
            raise CLIError(f"--input {text!r}: the range {low}..{high} is empty")
        bounds[m["name"]] = (low, high)
    return rest, bounds


def load_model(ref: str) -> Callable:
    """'FILE.py:NAME' -> the callable named NAME in FILE.py (a Module, factory or function)."""
    path, sep, name = ref.rpartition(":")
    if not sep or not path or not name:
        raise CLIError(f"{ref!r}: expected FILE.py:NAME (e.g. examples/mlp.py:MLP)")
    if not os.path.isfile(path):
        raise CLIError(f"{path!r}: no such file")
    module_name = "_kiln_user_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        spec.loader.exec_module(module)
    except KilnError:
        raise
    except Exception as e:
        raise CLIError(f"importing {path!r} failed: {type(e).__name__}: {e}") from e
    finally:
        sys.path.pop(0)
    if not hasattr(module, name):
        public = [n for n in vars(module) if not n.startswith("_")]
        raise CLIError(f"{path!r} has no {name!r}; it defines {', '.join(sorted(public))}")
    return getattr(module, name)


def instantiate(obj: Any, input_names: list[str]) -> Callable:
    """A Module class -> an instance; a factory (a function without required parameters) ->
    its result; a function of inputs -> itself. ``input_names`` are the inputs given."""
    from kiln.frontend.nn.module import Module

    if isinstance(obj, type) and issubclass(obj, Module):
        return _call_user(obj, f"{obj.__name__}()")
    if isinstance(obj, Module):
        return obj
    if callable(obj):
        params = [p for p in inspect.signature(obj).parameters.values()
                  if p.default is inspect.Parameter.empty
                  and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if params:  # it takes the inputs: the model itself (its names are checked later)
            return obj
        result = _call_user(obj, f"{getattr(obj, '__name__', obj)}()")
        if callable(result):
            return result
        raise CLIError(f"{obj!r} returned {type(result).__name__}, not a model")
    raise CLIError(f"{obj!r} is not a model (Module class, factory or function)")


def _call_user(fn: Callable, what: str) -> Any:
    """``fn()``: the user's constructor or factory; its failure a CLIError at its line."""
    from kiln.frontend.dsl import raising_line

    try:
        return fn()
    except KilnError:
        raise
    except Exception as e:
        raise CLIError(f"{raising_line(e.__traceback__)}: {what} failed: "
                       f"{type(e).__name__}: {e}") from e


def trace_ref(ref: str, inputs: list[str]):
    """Trace 'FILE.py:NAME' on the --input specs; returns (graph, {name: given array})."""
    from kiln.frontend.dsl import input_problem, trace

    parsed = [parse_input(s) for s in inputs]
    if not parsed:
        raise CLIError("give at least one --input NAME=SHAPE[:DTYPE]")
    names = [n for n, _, _ in parsed]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise CLIError(f"--input gives {', '.join(map(repr, twice))} more than once")
    model = instantiate(load_model(ref), names)
    problem = input_problem(model, names)
    if problem:
        raise CLIError(f"--input: {problem}; give --input NAME=SHAPE[:DTYPE] for each input")
    name = ref.rpartition(":")[2]
    graph = trace(model, name=name, **{n: spec for n, spec, _ in parsed})
    return graph, {n: a for n, _, a in parsed if a is not None}


def is_onnx(ref: str) -> bool:
    return ref.lower().endswith(".onnx")


def import_onnx(path: str, inputs: list[str]):
    """Import an ONNX file; --input specs fix input shapes (x=1x3x8x8, x=file.npy) or
    symbolic dims (batch=1). Returns (graph, {name: given array})."""
    from kiln.frontend.onnx.importer import from_onnx, load_model

    proto = load_model(path)
    names = {vi.name for vi in proto.graph.input}
    shapes: dict[str, Any] = {}
    given = {}
    for name, spec, array in (parse_input(s) for s in inputs):
        if name in names:
            shapes[name] = spec.shape
            if array is not None:
                given[name] = array
        elif len(spec.shape) == 1 and isinstance(spec.shape[0], int):
            shapes[name] = spec.shape[0]  # a symbolic dim of the model
        else:
            raise CLIError(f"--input {name}: {path!r} has no input {name!r} (its inputs: "
                           f"{', '.join(sorted(names))}); to fix a symbolic dim give "
                           f"{name}=SIZE")
    return from_onnx(proto, input_shapes=shapes), given


def load_graph(ref: str, inputs: list[str]):
    """'FILE.py:NAME' (traced on the --input specs) or 'MODEL.onnx' (imported) -> (graph,
    {name: array given with --input NAME=FILE.npy})."""
    if is_onnx(ref):
        return import_onnx(ref, inputs)
    return trace_ref(ref, inputs)


def random_array(shape: tuple, dtype: str, rng: np.random.Generator) -> np.ndarray:
    """A random input: normal floats, small non-negative ints, or fair bools."""
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype.startswith(("int", "uint")):
        return rng.integers(0, 10, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def random_inputs(graph, given: dict, seed: int, say: bool = True) -> dict:
    """``given``, and random arrays (seeded) for the other inputs of ``graph``; ``say``
    prints which inputs are random."""
    rng = np.random.default_rng(seed)
    out = dict(given)
    made = [v.name for v in graph.inputs if v.name not in out]
    if made and say:
        print(random_note(made, seed))
    for v in graph.inputs:
        if v.name in out:
            continue
        if not v.type.is_static:
            raise CLIError(f"input {v.name} has symbolic shape {v.type}: give a concrete shape "
                           "or a .npy file")
        out[v.name] = random_array(v.type.shape, v.dtype, rng)
    return out


def checksum(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def output_line(name: str, array: np.ndarray) -> str:
    """One output as ``kiln interpret`` and ``kiln run`` both print it (same inputs, same
    seed: the sums agree to rounding, the checksums where the bits do)."""
    total = float(np.sum(array, dtype=np.float64)) if array.size else 0.0
    return (f"{name}: {array.dtype.name}{list(array.shape)}  sum={total:.6g}  "
            f"sha256={checksum(array)}")


def random_note(names: list[str], seed: int) -> str:
    return (f"random inputs (seed {seed}) for {', '.join(names)}; give --input "
            "NAME=FILE.npy to use your own")
