"""What converters work with: ``Ref`` (an ONNX tensor during import) and ``NodeContext``.

A ``Ref`` is a kiln value, a constant known at import time, or both. Initializers, Constant
nodes and every op whose inputs are all constants are constants: ``emit`` folds such ops with
kiln's own numpy references instead of adding nodes, so shape computations (Shape -> Gather ->
Concat -> Reshape ...) vanish at import. A constant becomes a graph parameter (named as its
ONNX tensor) only when an emitted node reads it; a uniform constant that ONNX did not name
becomes a ``full`` node instead.

Shapes with symbolic dimensions fold too: ``Shape`` of a [N, 3] tensor is the constant
['N', 3] (a numpy object array of dims), which Gather, Concat, Unsqueeze, Slice, Reshape ...
carry along, so a reshape to [N, -1] keeps its symbol. Arithmetic on symbols gives size
expressions (N * 12, N * S, S // 2: ``kiln.ir.dims``); a comparison or max/min folds where
the result is certain; anything else is an error that says which dims to fix.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import onnx

from kiln.errors import KilnError, ShapeError, UnsupportedOpError
from kiln.ir.dims import as_dim, exact_quotient, symbols_in
from kiln.ir.graph import GraphBuilder, Value
from kiln.ir.interpreter import evaluate
from kiln.ir.ops import get_op, infer_node
from kiln.ir.ops.registry import broadcast_shapes
from kiln.ir.types import TensorType, from_numpy_dtype, to_numpy_dtype


class Ref:
    """One ONNX tensor during import: a kiln ``value``, a ``const`` array, or both."""

    __slots__ = ("type", "const", "value", "name", "named", "fill", "recipe")

    def __init__(self, type: TensorType, const: np.ndarray | None = None,
                 value: Value | None = None, name: str = "", named: bool = False,
                 fill: np.ndarray | None = None):
        self.type = type
        self.const = const
        self.value = value
        self.name = name  # the ONNX name, for parameters made from constants
        self.named = named  # an initializer or Constant output: always a named parameter
        # a tensor of symbolic shape filled with one value (ConstantOfShape of a symbolic
        # shape): kiln cannot make it, but a broadcasting op can take the value instead
        self.fill = fill
        # how a constant computed from initializers was made: (op, inputs, attrs, origin,
        # sibling outputs). Such a constant becomes that node again, so weights keep their
        # ONNX names (``transpose(%fc.weight)``, not an anonymous transposed copy).
        self.recipe: tuple | None = None

    @property
    def shape(self) -> tuple:
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype

    @property
    def rank(self) -> int:
        return self.type.rank

    @property
    def is_const(self) -> bool:
        return self.const is not None

    def __repr__(self) -> str:
        kind = ("const" if self.is_const else "fill" if self.fill is not None
                else f"%{self.value.name}")
        return f"Ref({self.name or '?'}: {self.type}, {kind})"


def const_ref(array: Any, name: str = "", named: bool = False) -> Ref:
    """A Ref for a constant array (object arrays hold symbolic dims of a shape value)."""
    array = np.asarray(array)
    if array.dtype == object:
        array = normalize_symbolic(array)
        dtype = "int64" if array.dtype == object else from_numpy_dtype(array.dtype)
        return Ref(TensorType(array.shape, dtype), const=array, name=name, named=named)
    return Ref(TensorType.of(array), const=array, name=name, named=named)


def normalize_symbolic(array: np.ndarray) -> np.ndarray:
    """An object array without symbols back to int64 (bool if it holds only bools)."""
    if array.dtype != object or any(isinstance(x, str) for x in array.flat):
        return array
    if array.size and all(isinstance(x, (bool, np.bool_)) for x in array.flat):
        return array.astype(bool)
    return array.astype(np.int64)


def symbols_of(array: np.ndarray) -> list[str]:
    return sorted({x for x in array.flat if isinstance(x, str)}) if array.dtype == object else []


# -- folding ops on shape values holding symbols ------------------------------------------------

# ops that only move elements: their numpy references work on object arrays as they are
_MOVES = {"identity", "reshape", "transpose", "concat", "split", "slice", "gather", "squeeze",
          "unsqueeze", "expand", "flatten", "take_along_axis", "where"}


_INT_OPS = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
            "div": lambda a, b: abs(a) // abs(b) * (1 if (a < 0) == (b < 0) else -1),
            "maximum": max, "minimum": min, "equal": lambda a, b: a == b,
            "not_equal": lambda a, b: a != b}


def _sym_binary(op: str):
    """An elementwise function on dims: ints compute; with symbols, +, - and * give size
    expressions (``kiln.ir.dims``), so does a division by a positive number or by a size
    that divides exactly, and a comparison or a max/min where the result is certain whatever
    the sizes; anything else is a _SymbolicError."""

    def f(a, b):
        sa, sb = isinstance(a, str), isinstance(b, str)
        if not (sa or sb):
            return _INT_OPS[op](int(a), int(b))
        a, b = as_dim(a), as_dim(b)
        if op in ("add", "sub", "mul"):
            return _INT_OPS[op](a, b)
        if op == "div":
            # (dims are sizes, >= 0: ONNX's truncating division is the floor)
            quotient = exact_quotient(a, b) if b != 0 else None
            if quotient is not None:
                return quotient
            if isinstance(b, int) and b > 0:
                return a // b
            raise _SymbolicError(op, a, b)
        diff = a - b
        if isinstance(diff, int):  # a fixed difference decides comparisons and max/min
            return {"equal": diff == 0, "not_equal": diff != 0,
                    "maximum": a if diff >= 0 else b, "minimum": b if diff >= 0 else a}[op]
        # a named size is never negative
        name, other = (a, b) if sa else (b, a)
        if name.is_name and isinstance(other, int) and other <= 0:
            if op in ("equal", "not_equal") and other < 0:
                return op == "not_equal"
            if op in ("maximum", "minimum"):
                return name if op == "maximum" else other
        raise _SymbolicError(op, a, b)

    return np.frompyfunc(f, 2, 1)


class _SymbolicError(Exception):
    def __init__(self, op: str, *args: Any):
        self.op, self.args_ = op, args


def fold_symbolic(op: str, arrays: list[np.ndarray], attrs: dict) -> list[np.ndarray]:
    """Run ``op`` on shape values some of which hold symbolic dims (object arrays)."""
    if op in _MOVES:
        out = get_op(op).reference(*arrays, **attrs)
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        return [np.asarray(a, dtype=object) for a in outs]
    if op == "cast" and attrs["dtype"] in ("int32", "int64"):
        return [arrays[0].copy()]
    if op in ("add", "sub", "mul", "div", "maximum", "minimum", "equal", "not_equal"):
        try:
            return [np.asarray(_sym_binary(op)(*arrays), dtype=object)]
        except _SymbolicError as e:
            a, b = e.args_
            raise ShapeError(f"{op}({a!r}, {b!r}) on a shape value: the result depends on the "
                             f"size of a symbolic dimension; {_fix(a, b)}") from None
    syms = sorted({s for a in arrays for s in symbols_of(a)})
    raise ShapeError(f"{op} on a shape value that holds symbolic dims {syms}; {_fix(*syms)}")


def _fix(*dims: Any) -> str:
    names = ", ".join(f"{str(d)!r}: SIZE" for d in sorted(symbols_in(as_dim(d) for d in dims
                                                                     if isinstance(d, str))))
    return f"fix it with from_onnx(..., input_shapes={{{names}}})"


# -- tensors of symbolic shape filled with one value -------------------------------------------

# ops that broadcast their inputs: a filled input the others' shape covers can be a scalar
_BROADCASTING = {"add", "sub", "mul", "div", "pow", "maximum", "minimum", "equal", "not_equal",
                 "less", "less_equal", "greater", "greater_equal", "logical_and", "logical_or",
                 "logical_xor", "where"}
# one-output ops that keep a filled tensor filled (its other inputs being constants)
_KEEPS_FILL = {"identity", "reshape", "transpose", "slice", "gather", "squeeze", "unsqueeze",
               "expand", "flatten", "take_along_axis", "cast", "neg", "abs", "relu"}


def fill_ref(t: TensorType, value: np.ndarray) -> Ref:
    return Ref(t, fill=np.asarray(value).reshape(()).astype(to_numpy_dtype(t.dtype)))


def _resolve_fills(op: str, refs: list[Ref], infer) -> list[Ref] | Ref:
    """Inputs with filled tensors replaced by their scalar values where that keeps the result
    (or, for ops that keep fills, the filled result itself)."""
    if op in _KEEPS_FILL and refs[0].fill is not None and all(
            r.is_const for r in refs[1:]):
        out = infer()[0]
        value = refs[0].fill
        if op == "cast":
            value = value.astype(to_numpy_dtype(out.dtype))
        elif op in ("neg", "abs", "relu"):
            value = get_op(op).reference(value)
        return fill_ref(out, value)
    if op not in _BROADCASTING:
        return refs
    others = [r.shape for r in refs if r.fill is None]
    try:
        full = broadcast_shapes(*(r.shape for r in refs))
        rest = broadcast_shapes(*others) if others else ()
    except ShapeError:
        return refs
    if full != rest:
        return refs
    return [const_ref(r.fill) if r.fill is not None else r for r in refs]


# -- the import context -------------------------------------------------------------------------


# Ops on a named constant (an initializer) bigger than this stay nodes rather than folding,
# so that weights keep their ONNX names (a transposed Gemm weight stays ``transpose(%fc.w)``);
# the canonicalizer folds them at compile time.
FOLD_LIMIT = 1024
# A folded result bigger than this (elements) stays a node: the import would hold it in memory.
FOLD_MAX = 1 << 24
# The most elements a tensor of an imported graph may hold (a tensor of 2**31 floats is 8 GiB;
# bigger ones are malformed dims, not models).
MAX_ELEMENTS = 2**31 - 1


def check_constant(count: int, what: str) -> None:
    """An UnsupportedOpError if a constant a converter builds at import (positions, a
    triangular matrix, an identity) would hold more than FOLD_MAX elements."""
    if count > FOLD_MAX:
        raise UnsupportedOpError(f"{what} would be a constant of {count} elements; kiln builds "
                                 f"constants of at most {FOLD_MAX} at import")


def elements(t: TensorType) -> int | None:
    """The number of elements of a static type (exact, however big), None if symbolic."""
    return math.prod(t.shape) if t.is_static else None


def check_size(t: TensorType, what: str) -> None:
    """A ShapeError if ``t`` holds more than MAX_ELEMENTS elements (or a negative dim)."""
    if any(isinstance(d, int) and d < 0 for d in t.shape):
        raise ShapeError(f"{what} has a negative dimension: {t}")
    size = elements(t)
    if size is not None and size > MAX_ELEMENTS:
        raise ShapeError(f"{what} {t} holds {size} elements; kiln's tensors hold at most "
                         f"{MAX_ELEMENTS}")


class Context:
    """The graph being built and the origin of the ONNX node being converted."""

    def __init__(self, builder: GraphBuilder):
        self.builder = builder
        self.origin = ""
        self.hint = "const"  # a name for unnamed constants: the current node's first output
        self.created: list[Value] = []  # values made while converting the current node

    def lift(self, x: Any, like: Ref | None = None) -> Ref:
        """A Ref for ``x``: a Ref, a numpy array, or a Python scalar (typed like ``like``)."""
        if isinstance(x, Ref):
            return x
        if isinstance(x, (bool, int, float)) and like is not None:
            return const_ref(np.asarray(x, to_numpy_dtype(like.dtype)))
        if isinstance(x, float):
            return const_ref(np.float32(x))
        return const_ref(x)

    def emit(self, op: str, inputs: Sequence[Any], attrs: dict | None = None) -> list[Ref]:
        """Apply kiln op ``op``: folded if every input is a constant, else a new node."""
        like = next((x for x in inputs if isinstance(x, Ref)), None)
        refs = [self.lift(x, like) for x in inputs]
        attrs = dict(attrs or {})
        if any(r.fill is not None for r in refs):
            values = [Value(f"in{i}", r.type) for i, r in enumerate(refs)]
            resolved = _resolve_fills(
                op, refs, lambda: infer_node(op, values, attrs, origin=self.origin)[1])
            if isinstance(resolved, Ref):
                return [resolved]
            refs = resolved
        if all(r.is_const for r in refs) and not any(
                r.named and r.const.size > FOLD_LIMIT for r in refs) and self._small(
                op, refs, attrs):
            return self._fold(op, refs, attrs)
        values = [self.value(r) for r in refs]
        outs = self.builder.op(op, values, attrs, origin=self.origin)
        self.created += outs
        return [Ref(v.type, value=v) for v in outs]

    def _small(self, op: str, refs: list[Ref], attrs: dict) -> bool:
        """Are the results of ``op`` on these constants small enough to fold?"""
        values = [Value(f"c{i}", r.type) for i, r in enumerate(refs)]
        _, types = infer_node(op, values, attrs, origin=self.origin)
        # (a result of symbolic size, a slice up to a symbolic end, is computed when it runs)
        return all(elements(t) is not None and elements(t) <= FOLD_MAX for t in types)

    def _fold(self, op: str, refs: list[Ref], attrs: dict) -> list[Ref]:
        arrays = [r.const for r in refs]
        if any(a.dtype == object for a in arrays):
            values = [Value(r.name or f"c{i}", r.type) for i, r in enumerate(refs)]
            full, _ = infer_node(op, values, attrs, origin=self.origin)
            return [const_ref(a) for a in fold_symbolic(op, arrays, full)]
        results = [const_ref(a) for a in evaluate(op, arrays, attrs, origin=self.origin)]
        if any(r.named or r.recipe is not None for r in refs):
            recipe = (op, refs, attrs, self.origin, results)
            for r in results:
                r.recipe = recipe
        return results

    def value(self, ref: Ref) -> Value:
        """The kiln value of ``ref``, making a parameter (or ``full`` node) of a constant."""
        if ref.value is not None:
            return ref.value
        if ref.recipe is not None:  # made from initializers: make it the same way again
            op, inputs, attrs, origin, siblings = ref.recipe
            outs = self.builder.op(op, [self.value(r) for r in inputs], attrs, origin=origin)
            for r, v in zip(siblings, outs):
                r.value = self.rename(v, r.name) if r.name else v
            return ref.value
        if ref.fill is not None:  # (``full`` of a symbolic shape sizes itself per call)
            v = self.builder.op("full", [], {"shape": ref.shape, "value": ref.fill.item(),
                                             "dtype": ref.dtype}, origin=self.origin)[0]
            self.created.append(v)
            ref.value = v
            return v
        arr = ref.const
        if arr.dtype == object and ref.dtype in ("int32", "int64"):
            # sizes used as data: computed per call from the symbolic sizes
            v = self.builder.op("dims", [], {"values": tuple(as_dim(d) for d in arr.flat),
                                             "dtype": ref.dtype}, origin=self.origin)[0]
            if arr.ndim != 1:
                v = self.builder.op("reshape", [v], {"shape": arr.shape},
                                    origin=self.origin)[0]
            self.created.append(v)
            ref.value = v
            return v
        if arr.dtype == object:
            raise ShapeError(
                f"the shape value {list(arr.flat)} holds symbolic dims {symbols_of(arr)} and "
                "is used as a tensor, which kiln cannot express")
        b = self.builder
        first = arr.flat[0].item() if arr.size else None
        if not ref.named and arr.size >= 1 and not isinstance(first, complex) and (
                np.all(arr == arr.flat[0])) and arr.dtype.name != "bfloat16":
            v = b.op("full", [], {"shape": arr.shape, "value": first, "dtype": ref.dtype},
                     origin=self.origin)[0]
            self.created.append(v)
        else:
            v = b.param(b.free_name(ref.name or self.hint), arr)
        ref.value = v
        return v

    def rename(self, value: Value, name: str) -> Value:
        """Give a value made for the current node the ONNX name of the tensor it stands for
        (unless that name is taken). Returns the value to use from now on: the renamed one,
        or ``value`` itself if it keeps its name."""
        if value.name == name or self.builder.has_name(name):
            return value
        new = self.builder.rename(value, name)
        self.created = [new if v is value else v for v in self.created]
        return new


class NodeContext:
    """The ONNX node being converted: its inputs (Refs, None where omitted), attributes,
    schema version and output count, and helpers that emit kiln ops at its origin."""

    def __init__(self, ctx: Context, node: onnx.NodeProto, version: int,
                 inputs: list[Ref | None], attrs: dict[str, Any]):
        self.ctx, self.node, self.version = ctx, node, version
        self.inputs, self.attrs = inputs, attrs
        self.n_outputs = len(node.output)

    # -- inputs and attributes
    def input(self, i: int) -> Ref | None:
        return self.inputs[i] if i < len(self.inputs) else None

    @property
    def x(self) -> Ref:
        return self.inputs[0]

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def wants_output(self, i: int) -> bool:
        return i < self.n_outputs and self.node.output[i] != ""

    def const(self, i: int | Ref, what: str | None = None) -> np.ndarray:
        """The constant value of input ``i`` (or of a Ref): computed at import, or an error."""
        ref = self.inputs[i] if isinstance(i, int) else i
        if ref is None:
            raise KilnError(f"input {what or i} is missing")
        if ref.const is None:
            name = self.node.input[i] if isinstance(i, int) else ref.name
            role = f"its {what} input" if what else "input"
            raise UnsupportedOpError(
                f"kiln needs {role} {name!r} to be known at import time (a constant, or "
                f"computed from static shapes), but it depends on the graph's inputs")
        return ref.const

    def ints(self, i: int, what: str | None = None, default: Any = None) -> Any:
        """Optional input ``i`` as a tuple of ints (and symbolic names); ``default`` if
        omitted."""
        if self.input(i) is None:
            return default
        arr = self.const(i, what)
        return tuple(x if isinstance(x, str) else int(x) for x in arr.reshape(-1))

    def scalar_input(self, i: int, default: Any = None) -> Any:
        """Optional scalar input ``i`` as a Python number."""
        if self.input(i) is None:
            return default
        arr = self.const(i)
        if arr.size != 1:
            raise ShapeError(f"input {self.node.input[i]!r} must hold one value, got {arr.shape}")
        return arr.reshape(-1)[0].item()

    # -- emitting
    def op(self, op: str, *inputs: Any, **attrs: Any) -> Ref:
        """One kiln op with one output."""
        return self.ctx.emit(op, inputs, attrs)[0]

    def ops(self, op: str, inputs: Sequence[Any], **attrs: Any) -> list[Ref]:
        return self.ctx.emit(op, inputs, attrs)

    def const_like(self, value: Any, like: Ref) -> Ref:
        return const_ref(np.asarray(value, to_numpy_dtype(like.dtype)))

    def cast(self, x: Ref, dtype: str) -> Ref:
        return x if x.dtype == dtype else self.op("cast", x, dtype=dtype)

    def unsupported(self, msg: str) -> UnsupportedOpError:
        return UnsupportedOpError(msg)
