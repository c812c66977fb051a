"""Checks of an ONNX model before kiln converts it, so that a malformed model is a KilnError
that names the node and what is wrong with it, never a Python error inside a converter.

Three checks, in the order the importer runs them:

- ``check_text``: every string of the model is UTF-8 (protobuf hands invalid UTF-8 over as
  bytes, which nothing downstream expects).
- ``check_attributes``, ``check_arity``, ``check_input_types``: a node against its ONNX
  schema at the model's opset: attributes known, of their declared type and required ones
  given; the number of inputs and outputs, required inputs present; each input's dtype one
  its type constraint allows (and inputs sharing a type variable sharing a dtype).
- ``check_spec``: a node against its converter's ``Spec`` (``@converter(..., spec=...)``,
  next to the converter): what ONNX's schemas do not say and the converter relies on: input
  ranks, attribute ranges (axes in range, sizes positive, strings among the known modes),
  and cross-checks between attributes and inputs (a Conv's kernel_shape against its weight).

Rules are small functions ``(value, node) -> complaint | None``; this module holds the ones
many ops share (``axis``, ``at_least``, ``one_of``, ``per_spatial_axis`` ...).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import onnx
import onnx.defs
from google.protobuf.descriptor import FieldDescriptor

from kiln.errors import AttributeError_, KilnError, ShapeError, UnsupportedOpError
from kiln.frontend.onnx.dtypes import KILN_TO_ONNX

if TYPE_CHECKING:
    from kiln.frontend.onnx.context import NodeContext

Rule = Callable[[Any, "NodeContext"], "str | None"]
Check = Callable[["NodeContext"], "str | None"]


@dataclass(frozen=True)
class Spec:
    """What a converter needs of its node beyond the ONNX schema.

    ``ranks``: input index -> (lowest, highest) rank (highest None: any).
    ``attrs``: attribute -> rule on its value (checked when the attribute is given).
    ``values``: input index -> rule on its values as a flat list, when the input is a
    constant (shapes, axes, pads, indices: what kiln reads at import).
    ``checks``: cross-checks of the whole node, in order, each after the rules above.
    """

    ranks: Mapping[int, tuple[int, int | None]] = field(default_factory=dict)
    attrs: Mapping[str, Rule] = field(default_factory=dict)
    values: Mapping[int, Rule] = field(default_factory=dict)
    checks: tuple[Check, ...] = ()


# -- text ---------------------------------------------------------------------------------------


def check_text(model: onnx.ModelProto) -> None:
    """A KilnError naming the first string of ``model`` that is not UTF-8, and where it is."""
    for path, value in _non_utf8(model, ""):
        raise KilnError(f"{_where(path)} is not UTF-8 text ({value[:40]!r}): ONNX strings "
                        "(names, op types, domains, string attributes) must be UTF-8")


def _non_utf8(msg: Any, path: str) -> Iterator[tuple[str, bytes]]:
    for fd, value in msg.ListFields():
        items = value if fd.is_repeated else [value]
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            for i, item in enumerate(items):
                yield from _non_utf8(item, f"{path}.{fd.name}[{i}]" if fd.is_repeated
                                     else f"{path}.{fd.name}")
        elif fd.type == FieldDescriptor.TYPE_STRING:  # upb gives invalid UTF-8 as bytes
            for item in items:
                if isinstance(item, bytes):
                    yield f"{path}.{fd.name}", item
        elif fd.type == FieldDescriptor.TYPE_BYTES and isinstance(msg, onnx.AttributeProto) \
                and fd.name in ("s", "strings"):  # string attributes are bytes in the proto
            for item in items:
                try:
                    item.decode()
                except UnicodeDecodeError:
                    yield f"{path}.{fd.name}", item


def _where(path: str) -> str:
    """'.graph.node[3].attribute[0].s' -> "ONNX node #3: field attribute[0].s"."""
    head, sep, rest = path.partition(".graph.node[")
    if sep and not head:
        index, _, tail = rest.partition("]")
        return f"ONNX node #{index}: field {tail.lstrip('.') or 'itself'}"
    return f"the model's field {path.lstrip('.')}"


# -- the ONNX schema ----------------------------------------------------------------------------


@functools.cache
def _schema(op_type: str, opset: int) -> onnx.defs.OpSchema | None:
    try:
        return onnx.defs.get_schema(op_type, opset, "")
    except onnx.defs.SchemaError:
        return None


_ATTR = onnx.AttributeProto
_HOLDERS = {_ATTR.TENSOR: "t", _ATTR.GRAPH: "g", _ATTR.SPARSE_TENSOR: "sparse_tensor",
            _ATTR.TYPE_PROTO: "tp"}


def _type_name(t: int) -> str:
    try:
        return _ATTR.AttributeType.Name(t)
    except ValueError:
        return f"type {t}"


def check_attributes(node: onnx.NodeProto, opset: int) -> None:
    """The node's attributes against its schema, before kiln reads any of them."""
    schema = _schema(node.op_type, opset)
    known = schema.attributes if schema is not None else {}
    seen: set[str] = set()
    for a in node.attribute:
        if not a.name:
            raise AttributeError_("an attribute has no name")
        if a.name in seen:
            raise AttributeError_(f"attribute {a.name!r} is given twice")
        seen.add(a.name)
        if a.ref_attr_name:
            raise AttributeError_(f"attribute {a.name!r} refers to {a.ref_attr_name!r} of an "
                                  "enclosing function, but the node is in no function")
        if schema is None:
            continue
        if a.name not in known:
            names = ", ".join(sorted(known)) or "none"
            raise AttributeError_(f"unknown attribute {a.name!r} (the op's attributes: "
                                  f"{names})")
        want = int(known[a.name].type)
        if a.type != want:
            raise AttributeError_(f"attribute {a.name!r} is {_type_name(a.type)}, but ONNX "
                                  f"declares it {_type_name(want)}")
        holder = _HOLDERS.get(want)
        if holder and not a.HasField(holder):
            raise AttributeError_(f"attribute {a.name!r} of type {_type_name(want)} holds no "
                                  "value")
    missing = [name for name, attr in known.items() if attr.required and name not in seen]
    if missing:
        raise AttributeError_(f"required attribute(s) {', '.join(missing)} missing")


def check_arity(node: onnx.NodeProto, opset: int) -> None:
    """The numbers of inputs and outputs, and required inputs given, against the node's ONNX
    schema at ``opset``."""
    schema = _schema(node.op_type, opset)
    if schema is None:
        raise UnsupportedOpError(f"ONNX defines no op {node.op_type!r} at opset {opset}")
    n_in, n_out = len(node.input), len(node.output)
    if not schema.min_input <= n_in <= schema.max_input:
        raise ShapeError(f"takes {_count(schema.min_input, schema.max_input)} inputs, got "
                         f"{n_in}")
    if not schema.min_output <= n_out <= schema.max_output:
        raise ShapeError(f"has {_count(schema.min_output, schema.max_output)} outputs, got "
                         f"{n_out}")
    formals = schema.inputs
    for i, name in enumerate(node.input):
        formal = formals[min(i, len(formals) - 1)] if formals else None
        if not name and formal is not None and (
                formal.option != onnx.defs.OpSchema.FormalParameterOption.Optional):
            raise ShapeError(f"input {i} ({formal.name}) is required, but omitted")


def check_input_types(node: onnx.NodeProto, opset: int, inputs: list) -> None:
    """Each input's dtype one the node's ONNX type constraints allow, and inputs that share a
    type variable of one dtype (``inputs``: the Refs of ``node.input``, None where
    omitted)."""
    schema = _schema(node.op_type, opset)
    if schema is not None:
        _check_dtypes(schema, inputs)


def _count(low: int, high: int) -> str:
    if low == high:
        return str(low)
    return f"{low} or more" if high >= 2**31 - 1 else f"{low} to {high}"


def _onnx_type(dtype: str) -> str:
    """'float32' -> 'tensor(float)', as ONNX type constraints spell types."""
    return f"tensor({onnx.TensorProto.DataType.Name(KILN_TO_ONNX[dtype]).lower()})"


def _check_dtypes(schema: onnx.defs.OpSchema, inputs: list) -> None:
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    bound: dict[str, tuple[int, str]] = {}
    formals = schema.inputs
    for i, ref in enumerate(inputs):
        if ref is None or not formals:
            continue
        formal = formals[min(i, len(formals) - 1)]
        have = _onnx_type(ref.dtype)
        types = allowed.get(formal.type_str, {formal.type_str})
        if have not in types:
            shown = ", ".join(sorted(t[7:-1] for t in types if t.startswith("tensor(")))
            raise ShapeError(f"input {i} ({formal.name}) is {ref.dtype}; ONNX allows "
                             f"{shown or 'no tensor'} there")
        if formal.type_str in allowed and formal.is_homogeneous:
            first = bound.setdefault(formal.type_str, (i, ref.dtype))
            if first[1] != ref.dtype:
                raise ShapeError(f"inputs {first[0]} and {i} share the type "
                                 f"{formal.type_str} but are {first[1]} and {ref.dtype}")


# -- the converter's spec -----------------------------------------------------------------------


def check_spec(n: NodeContext, spec: Spec) -> None:
    """``n`` against ``spec``: input ranks, attribute rules, then the cross-checks."""
    for i, (low, high) in spec.ranks.items():
        ref = n.input(i)
        if ref is None:
            continue
        if ref.rank < low or (high is not None and ref.rank > high):
            want = (f"{low}" if low == high else f"at least {low}" if high is None
                    else f"{low} to {high}")
            raise ShapeError(f"input {i} ({n.node.input[i]!r}) has rank {ref.rank} "
                             f"({ref.type}); {n.node.op_type} takes rank {want}")
    for name, rule in spec.attrs.items():
        if name in n.attrs:
            why = rule(n.attrs[name], n)
            if why:
                raise AttributeError_(f"attribute {name}={_show(n.attrs[name])}: {why}")
    for i, rule in spec.values.items():
        ref = n.input(i)
        if ref is not None and ref.const is not None:
            values = ref.const.reshape(-1).tolist()
            why = rule(values, n)
            if why:
                raise ShapeError(f"input {i} ({n.node.input[i]!r}) = {_show(values)}: {why}")
    for check in spec.checks:
        why = check(n)
        if why:
            raise ShapeError(why)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- rules many ops share -----------------------------------------------------------------------


def _numbers(value: Any) -> list:
    """The numbers of a value (one number or a list); symbolic dims (names) left out."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return [v for v in values if isinstance(v, (int, float))]


def axis(of: int = 0, extra: int = 0, end: bool = False) -> Rule:
    """An axis of input ``of`` (of rank r): in [-r, r) counting ``extra`` more dims (OneHot's
    new axis: ``extra=1``), or in [-r, r] with ``end`` (Flatten's axis may be r)."""

    def rule(value: Any, n: NodeContext) -> str | None:
        ref = n.input(of)
        if ref is None:
            return None
        r = ref.rank + extra
        high = r if end else r - 1
        if not -r <= value <= high:
            return f"out of range for rank {r} ({ref.type}): must be in [{-r}, {high}]"
        return None

    return rule


def axes(of: int = 0, extra: int = 0) -> Rule:
    """Distinct axes of input ``of``, each as ``axis`` says."""
    one = axis(of, extra)

    def rule(value: Any, n: NodeContext) -> str | None:
        values = _numbers(value)
        for a in values:
            why = one(a, n)
            if why:
                return f"axis {a} is {why}"
        ref = n.input(of)
        r = (ref.rank if ref is not None else 0) + extra
        if r and len({a % r for a in values}) != len(values):
            return "repeats an axis"
        return None

    return rule


def permutation(of: int = 0) -> Rule:
    """A permutation of the axes of input ``of``."""

    def rule(value: Any, n: NodeContext) -> str | None:
        ref = n.input(of)
        if ref is None or sorted(value) == list(range(ref.rank)):
            return None
        return f"must be a permutation of 0..{ref.rank - 1} for {ref.type}"

    return rule


def count(what: str, size: Callable[[NodeContext], int]) -> Rule:
    """A list of exactly ``size(node)`` values (``what`` says what that number is)."""

    def rule(value: Any, n: NodeContext) -> str | None:
        want = size(n)
        return None if len(value) == want else f"must hold {want} values ({what})"

    return rule


def rank_of(i: int) -> Callable[[NodeContext], int]:
    """The rank of input ``i`` (0 when omitted), for ``count``."""
    return lambda n: n.input(i).rank if n.input(i) is not None else 0


def at_least(low: int | float) -> Rule:
    """A number, or every number of a list, >= ``low`` (and finite)."""

    def rule(value: Any, n: NodeContext) -> str | None:
        bad = [v for v in _numbers(value) if not (math.isfinite(v) and v >= low)]
        return f"must be at least {low}" if bad else None

    return rule


def between(low: float, high: float) -> Rule:
    """A number, or every number of a list, in [low, high]."""

    def rule(value: Any, n: NodeContext) -> str | None:
        bad = [v for v in _numbers(value) if not low <= v <= high]
        return f"must be in [{low}, {high}]" if bad else None

    return rule


def finite(value: Any, n: NodeContext) -> str | None:
    """A float (or each of a list) that is neither NaN nor infinite."""
    return None if all(math.isfinite(v) for v in _numbers(value)) else "must be finite"


def positive(value: Any, n: NodeContext) -> str | None:
    """A number, or every number of a list, > 0 and finite."""
    ok = all(math.isfinite(v) and v > 0 for v in _numbers(value))
    return None if ok else "must be positive"


def nonzero(value: Any, n: NodeContext) -> str | None:
    """No number of the value is 0 (steps, deltas, divisors)."""
    return "must not be 0" if any(v == 0 for v in _numbers(value)) else None


def one_of(*choices: Any) -> Rule:
    """One of ``choices`` (strings: ONNX's modes)."""

    def rule(value: Any, n: NodeContext) -> str | None:
        if value in choices:
            return None
        return "must be one of " + ", ".join(repr(c) for c in choices)

    return rule


def flag(value: Any, n: NodeContext) -> str | None:
    """A boolean written as an int: 0 or 1."""
    return None if value in (0, 1) else "must be 0 or 1"


def per_spatial_axis(times: int = 1, low: int | None = None, of: int = 0) -> Rule:
    """A list of ``times`` values per spatial axis of input ``of`` (its rank minus 2), each
    >= ``low`` when given: strides, dilations, kernel_shape (times 1) and pads (times 2)."""

    def rule(value: Any, n: NodeContext) -> str | None:
        ref = n.input(of)
        if ref is None:
            return None
        want = times * max(ref.rank - 2, 0)
        if len(value) != want:
            return (f"must hold {want} values for an input of {ref.rank - 2} spatial "
                    f"dimension(s) ({ref.type})")
        if low is not None and any(v < low for v in value):
            return f"values must be at least {low}"
        return None

    return rule


def all_of(*rules: Rule) -> Rule:
    """Every rule, the first complaint."""

    def rule(value: Any, n: NodeContext) -> str | None:
        for r in rules:
            why = r(value, n)
            if why:
                return why
        return None

    return rule


# -- cross-checks many ops share ----------------------------------------------------------------


def same_rank(a: int, b: int) -> Check:
    """Inputs ``a`` and ``b`` have one rank (GatherElements, a Conv's input and weight)."""

    def check(n: NodeContext) -> str | None:
        x, y = n.input(a), n.input(b)
        if x is None or y is None or x.rank == y.rank:
            return None
        return (f"inputs {a} ({x.type}) and {b} ({y.type}) must have the same rank for "
                f"{n.node.op_type}")

    return check


def indices_in_range(data: int = 0, indices: int = 1, attr: str = "axis") -> Check:
    """Constant indices (input ``indices``) within the size of ``data``'s axis ``attr``
    (negative ones counting from the end): onnxruntime refuses others at run time, kiln at
    import."""

    def check(n: NodeContext) -> str | None:
        x, idx = n.input(data), n.input(indices)
        if x is None or idx is None or idx.const is None or not x.rank:
            return None
        a = int(n.attr(attr, 0))
        if not -x.rank <= a < x.rank:
            return None  # the axis rule reports it
        size = x.shape[a]
        values = [v for v in idx.const.reshape(-1).tolist() if isinstance(v, int)]
        if not isinstance(size, int) or not values:
            return None
        bad = [v for v in values if not -size <= v < size]
        if bad:
            return (f"index {bad[0]} is out of range for axis {a} of {x.type} (size {size}, "
                    f"so indices in [{-size}, {size - 1}])")
        return None

    return check
