"""The op table: one ``OpDef`` per op, holding its kind, attribute schema, type inference,
numpy reference and FLOP estimate. Other layers keep their own tables keyed by the same names.

An op is added with the ``register`` decorator on its numpy reference::

    @register("leaky_relu", kind=ELEMENTWISE, infer=same_as_input(floats=True),
              attrs={"alpha": 0.01})
    def leaky_relu(x, alpha):
        return np.where(x >= 0, x, x * np.asarray(alpha, x.dtype))

The kind (one of ``KINDS``) is what fusion and layout read: an elementwise op joins the fused
group of its producer with no change to either pass. ``epilogue=True`` marks an op whose
output an elementwise chain may be computed into (matmul + bias + gelu), ``prologue=True``
one that absorbs the elementwise group producing its input (residual add + layer norm).

``infer(types, attrs)`` gets the input ``TensorType``s and the complete attributes and returns
the output type (or a list of them). It reports bad inputs by raising ``ShapeError`` (or
``AttributeError_``) with a short message; ``infer_node`` adds the op, the input names and
types, and the origin, so every message names the node and the shapes at fault.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from kiln.errors import AttributeError_, KilnError, ShapeError, UnsupportedOpError
from kiln.ir.dims import Sym, parse_dim
from kiln.ir.types import Dim, TensorType, format_types, is_float

REQUIRED = object()  # attribute schema marker: no default, the user must give it

# What an op computes, as fusion and layout see it (TVM's op patterns, tinygrad's GroupOp).
ELEMENTWISE = "elementwise"  # out[i] = f(a[i], b[i], ...), numpy broadcasting of the operands
BROADCAST = "broadcast"  # operands broadcast along fixed axes (expand; batch_norm's statistics)
INJECTIVE = "injective"  # each output element copies one input element (reshape, concat, ...)
REDUCTION = "reduction"  # reduces axes (sum, argmax, softmax's and layer norm's rows)
ANCHOR = "anchor"  # compute-bound, with a schedule of its own (matmul, convolutions, pools)
OPAQUE = "opaque"  # none of these: fused groups, random sources, dropout
KINDS = (ELEMENTWISE, BROADCAST, INJECTIVE, REDUCTION, ANCHOR, OPAQUE)

# How an op takes a reduced precision policy (bf16/fp16; ``kiln/passes/precision.py``).
LOW = "low"  # computes in the reduced type, accumulating in float32 (matmul, convolutions)
KEEP = "float32"  # needs float32 numerics (sums, statistics, softmax), or has no half code
FOLLOW = "follow"  # runs in the type of the activations it reads (elementwise, shape ops)
PRECISIONS = (LOW, KEEP, FOLLOW)


@dataclass(frozen=True)
class OpDef:
    name: str
    kind: str  # one of KINDS
    attrs: Mapping[str, Any]
    infer: Callable[[list[TensorType], dict], Any]
    reference: Callable[..., Any]
    arity: tuple[int, int | None]  # (min, max) number of inputs; max None: variadic
    flops: Callable[[list[TensorType], list[TensorType], dict], int] | None = None
    doc: str = ""
    epilogue: bool = False  # an elementwise chain may be fused into its output
    prologue: bool = False  # absorbs the single-use elementwise group producing its input
    precision: str = FOLLOW  # one of PRECISIONS


OPS: dict[str, OpDef] = {}


def register(
    name: str,
    *,
    kind: str,
    infer: Callable[[list[TensorType], dict], Any],
    attrs: Mapping[str, Any] | None = None,
    arity: int | tuple[int, int | None] = 1,
    flops: Callable | None = None,
    epilogue: bool = False,
    prologue: bool = False,
    precision: str | None = None,
):
    """Decorator: register ``fn`` as the numpy reference of op ``name`` of ``kind``.
    ``precision`` defaults to KEEP for reductions (they accumulate) and FOLLOW otherwise."""
    if kind not in KINDS:
        raise KilnError(f"op {name!r}: kind {kind!r} is not one of {KINDS}")
    if precision is None:
        precision = KEEP if kind == REDUCTION else FOLLOW
    if precision not in PRECISIONS:
        raise KilnError(f"op {name!r}: precision {precision!r} is not one of {PRECISIONS}")

    def wrap(fn: Callable) -> Callable:
        if name in OPS:
            raise KilnError(f"op {name!r} is registered twice")
        ar = (arity, arity) if isinstance(arity, int) else arity
        OPS[name] = OpDef(name, kind, dict(attrs or {}), infer, fn, ar, flops,
                          (fn.__doc__ or "").strip(), epilogue, prologue, precision)
        return fn

    return wrap


def kind_of(op: str) -> str:
    """The kind of op ``op`` (``OPAQUE`` for a name that is not an op)."""
    opdef = OPS.get(op)
    return opdef.kind if opdef is not None else OPAQUE


def is_elementwise(op: str) -> bool:
    return kind_of(op) == ELEMENTWISE


def takes_epilogue(op: str) -> bool:
    """May an elementwise chain be computed into the output of ``op``?"""
    opdef = OPS.get(op)
    return opdef is not None and opdef.epilogue


def takes_prologue(op: str) -> bool:
    """Does ``op`` absorb the elementwise group that produces its (first) input?"""
    opdef = OPS.get(op)
    return opdef is not None and opdef.prologue


def get_op(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise UnsupportedOpError(f"unknown op {name!r}; see kiln.ir.OPS for the op set") from None


def complete_attrs(opdef: OpDef, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Check attribute names against the schema, fill defaults, freeze lists into tuples."""
    from kiln.ir.graph import freeze_attr

    unknown = sorted(set(attrs) - set(opdef.attrs))
    if unknown:
        known = ", ".join(opdef.attrs) or "none"
        raise AttributeError_(f"unknown attribute(s) {unknown} (known: {known})")
    out = {}
    for key, default in opdef.attrs.items():
        if key in attrs:
            out[key] = freeze_attr(attrs[key])
            if key in ("shape", "sizes"):  # (reshape, expand, full, split): sizes given as
                # text (a graph read from its text form) become dims
                out[key] = _shape_attr(out[key])
        elif default is REQUIRED:
            raise AttributeError_(f"missing required attribute {key!r}")
        else:
            out[key] = default
    return out


def _shape_attr(value: Any) -> Any:
    """A ``shape`` attribute's texts (``"N"``, ``"2*N"``: a graph read from its text form)
    as Syms; anything else as it is, for the op's inference to judge."""
    if not isinstance(value, tuple):
        return value
    out = []
    for d in value:
        if isinstance(d, str) and not isinstance(d, Sym):
            try:
                d = parse_dim(d)
            except KilnError as e:
                raise AttributeError_(f"shape {value!r}: {e}") from None
        out.append(d)
    return tuple(out)


def infer_node(op: str, inputs: Sequence, attrs: Mapping[str, Any], origin: str = ""):
    """Complete ``attrs`` and infer output types for ``op`` applied to ``inputs`` (Values).

    Returns ``(attrs, [TensorType, ...])``; errors name the op, inputs, shapes and origin.
    """
    opdef = get_op(op)
    types = [v.type for v in inputs]

    def context() -> str:
        args = ", ".join(f"%{v.name}: {v.type}" for v in inputs)
        where = f" at {origin}" if origin else ""
        return f"{op}({args}){where}"

    lo, hi = opdef.arity
    if len(types) < lo or (hi is not None and len(types) > hi):
        want = str(lo) if lo == hi else f"{lo}..{hi if hi is not None else ''}"
        raise ShapeError(f"{context()}: takes {want} inputs, got {len(types)}")
    try:
        full = complete_attrs(opdef, attrs)
        out = opdef.infer(types, full)
    except (ShapeError, AttributeError_) as e:
        raise type(e)(f"{context()}: {e}") from None
    out_types = [out] if isinstance(out, TensorType) else list(out)
    return full, out_types


# -- helpers for inference rules ---------------------------------------------------------------


def fail(msg: str) -> None:
    """Inputs that do not fit (shapes, ranks, dtypes): a ShapeError."""
    raise ShapeError(msg)


def bad_attr(msg: str) -> None:
    """An attribute that is wrong on its own: an AttributeError_."""
    raise AttributeError_(msg)


def normalize_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:  # a rank-0 tensor has no axis (numpy rejects axis=0 there)
        fail(f"axis {axis} is out of range for rank {rank}")
    return axis % rank


def normalize_axes(axes, rank: int) -> tuple[int, ...]:
    """None means all axes; negative axes count from the end; duplicates are an error."""
    if axes is None:
        return tuple(range(rank))
    if isinstance(axes, int):
        axes = (axes,)
    out = tuple(sorted(normalize_axis(a, rank) for a in axes))
    if len(set(out)) != len(out):
        fail(f"repeated axis in {axes}")
    return out


def broadcast_shapes(*shapes: Sequence[Dim]) -> tuple[Dim, ...]:
    """numpy broadcasting over static and symbolic dims (a symbol only matches itself or 1)."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for i in range(rank):
        dims = {s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0}
        dims.discard(1)
        if len(dims) > 1:
            fail(f"shapes {' and '.join(str(tuple(s)) for s in shapes)} do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def same_dtype(types: Sequence[TensorType]) -> str:
    dtypes = {t.dtype for t in types}
    if len(dtypes) > 1:
        fail(f"dtypes differ ({format_types(types)}); insert a cast")
    return types[0].dtype


def require_float(t: TensorType) -> None:
    if not is_float(t.dtype):
        fail(f"needs a floating-point input, got {t.dtype}")


def static_dim(d: Dim, what: str) -> int:
    if not isinstance(d, int):
        fail(f"{what} must be static, got symbolic dimension {d!r}")
    return d


def numel(shape: Sequence[Dim]) -> int:
    """Elements of a shape, counting a symbolic dim as 1 (for FLOP estimates only)."""
    return int(np.prod([d if isinstance(d, int) else 1 for d in shape], dtype=np.int64))


def same_as_input(floats: bool = False):
    """Inference rule for unary ops: output type = input type."""

    def infer(types, attrs):
        if floats:
            require_float(types[0])
        return types[0]

    return infer


def elementwise_flops(per_element: int = 1):
    def flops(in_types, out_types, attrs):
        return per_element * sum(numel(t.shape) for t in out_types)

    return flops
