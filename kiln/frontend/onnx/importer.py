"""ONNX -> kiln: ``from_onnx(path_or_model, input_shapes=None) -> Graph``.

The importer loads and checks the model, converts an old model up to opset 13 with
``onnx.version_converter`` (warning that it did), lists every op (and dtype) kiln cannot
import in one error before converting anything, and then converts node by node with the
table in ``registry.py``. Every kiln node's origin names its ONNX node ("onnx:conv1", or
"onnx:#12 Conv" when unnamed), and every error names the ONNX node, its op and version, and
its inputs' types.
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
import onnx.inliner
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from kiln.errors import KilnError, ShapeError, UnsupportedOpError
from kiln.frontend.onnx import converters  # noqa: F401  (fills the converter table)
from kiln.frontend.onnx.context import Context, NodeContext, Ref, check_size, const_ref
from kiln.frontend.onnx.dtypes import ONNX_TO_KILN, onnx_type_name, to_kiln_dtype
from kiln.frontend.onnx.registry import SPECS, find_converter, schema_version
from kiln.frontend.onnx.validate import (
    check_arity,
    check_attributes,
    check_input_types,
    check_spec,
    check_text,
)
from kiln.ir.dims import Sym, as_dim, parse_dim
from kiln.ir.graph import Graph, GraphBuilder
from kiln.ir.types import Dim, TensorType

MIN_OPSET = 13  # older models are converted up to this opset first
_DEFAULT_DOMAINS = ("", "ai.onnx")


def from_onnx(model: str | os.PathLike | bytes | onnx.ModelProto,
              input_shapes: Mapping[str, Sequence[Dim] | int] | None = None) -> Graph:
    """Import an ONNX model (a path, serialized bytes or a ModelProto) as a kiln Graph.

    ``input_shapes`` fixes input shapes: ``{"x": (1, 3, 224, 224)}`` replaces x's shape (its
    symbolic dims become those sizes everywhere they appear), and ``{"batch": 1}`` fixes the
    symbolic dimension ``batch`` (an ONNX dim_param) in every input. Other symbolic dims stay
    kiln symbolic dims. Initializers become parameters named as in ONNX.
    """
    proto = load_model(model)
    check_text(proto)
    _check_versions(proto)
    if proto.functions:  # model-local functions: their bodies, inlined
        try:
            proto = onnx.inliner.inline_local_functions(proto)
        except Exception as e:
            raise KilnError(f"inlining the model's local functions failed: "
                            f"{_first_line(e)}") from None
    proto = _upgrade(proto)
    graph = proto.graph
    opset = _default_opset(proto)
    _check_supported(graph, opset)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        # kiln checks what it relies on itself (names defined once and before use, types);
        # a model the checker rejects for other reasons (an output without a shape, say)
        # still converts, with a warning
        warnings.warn(f"onnx.checker rejects this model ({_first_line(e)}); kiln converts it "
                      "anyway", stacklevel=2)
    return _convert(graph, opset, dict(input_shapes or {}))


# -- loading ------------------------------------------------------------------------------------


def load_model(source: str | os.PathLike | bytes | onnx.ModelProto) -> onnx.ModelProto:
    """A ModelProto from a path, bytes or a ModelProto; a KilnError for anything else."""
    if isinstance(source, onnx.ModelProto):
        proto = source
    elif isinstance(source, (bytes, bytearray)):
        proto = _parse(bytes(source), "the given bytes")
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise KilnError(f"{path!r}: no such ONNX file")
        with open(path, "rb") as f:
            proto = _parse(f.read(), repr(path))
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
            try:
                onnx.load_external_data_for_model(proto, os.path.dirname(path) or ".")
            except Exception as e:  # missing or short external data files
                raise KilnError(f"{path!r}: cannot load external weights: {e}") from None
    else:
        raise KilnError(f"from_onnx takes a path, bytes or an onnx.ModelProto, not "
                        f"{type(source).__name__}")
    if not proto.HasField("graph") or not proto.graph.output:
        raise KilnError("the ONNX model has no graph (or a graph without outputs): is this an "
                        "ONNX model file?")
    return proto


def _parse(data: bytes, what: str) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise KilnError(f"{what} is not a readable ONNX model (truncated, or not an ONNX "
                        f"ModelProto): {e}") from None
    return proto


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _default_opset(proto: onnx.ModelProto) -> int:
    versions = [o.version for o in proto.opset_import if o.domain in _DEFAULT_DOMAINS]
    if not versions:
        raise KilnError("the ONNX model imports no version of the default ('ai.onnx') domain")
    if len(versions) > 1:
        raise KilnError(f"the ONNX model imports the default domain {len(versions)} times "
                        f"(opsets {', '.join(map(str, versions))}); it must import it once")
    if versions[0] < 1:
        raise KilnError(f"the ONNX model imports opset {versions[0]} of the default domain; "
                        "opsets start at 1")
    return versions[0]


def _check_versions(proto: onnx.ModelProto) -> None:
    """The IR version and opset are ones onnx knows, and every node of the default domain
    fits its schema at the model's own opset (before any conversion to a newer one)."""
    if proto.ir_version > onnx.IR_VERSION:
        raise UnsupportedOpError(f"the model has IR version {proto.ir_version}, newer than "
                                 f"the installed onnx package knows ({onnx.IR_VERSION})")
    opset = _default_opset(proto)
    if opset > onnx.defs.onnx_opset_version():
        return  # _upgrade says so
    for i, node in enumerate(proto.graph.node):
        if node.domain not in _DEFAULT_DOMAINS:
            continue
        try:
            check_attributes(node, opset)
            check_arity(node, opset)
        except KilnError as e:
            raise type(e)(f"ONNX node {node_label(node, i)} {node.op_type} (opset {opset}): "
                          f"{e}") from None


def _upgrade(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Convert a model older than MIN_OPSET up to it; refuse one newer than onnx knows."""
    opset = _default_opset(proto)
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise UnsupportedOpError(f"the model uses opset {opset}, newer than the installed onnx "
                                 f"package knows ({newest}); upgrade onnx")
    if opset >= MIN_OPSET:
        return proto
    warnings.warn(f"ONNX model has opset {opset}; kiln converts opset {MIN_OPSET} and newer, "
                  f"so it was converted to opset {MIN_OPSET} with onnx.version_converter",
                  stacklevel=3)
    try:
        from onnx import version_converter

        return version_converter.convert_version(_flatten_old_hardmax(proto, opset), MIN_OPSET)
    except KilnError:
        raise
    except Exception as e:
        raise KilnError(f"converting the opset {opset} model to opset {MIN_OPSET} failed "
                        f"(onnx.version_converter: {_first_line(e)}); re-export the model with "
                        f"opset {MIN_OPSET} or newer") from None


def _flatten_old_hardmax(proto: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Hardmax before opset 13 works on its input flattened to 2-D at ``axis``, and the
    version converter keeps the node as it is (Softmax and LogSoftmax it rewrites): write
    that out, as Shape, Flatten, Hardmax over axis 1 and Reshape back."""
    olds = [n for n in proto.graph.node if n.op_type == "Hardmax" and n.domain in
            _DEFAULT_DOMAINS]
    if not olds:
        return proto
    if opset < 5:  # Reshape took its shape as an attribute
        raise UnsupportedOpError(f"Hardmax at opset {opset}: re-export the model with opset "
                                 f"{MIN_OPSET} or newer")
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    nodes = []
    for node in proto.graph.node:
        if node.op_type != "Hardmax" or node.domain not in _DEFAULT_DOMAINS:
            nodes.append(node)
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        x, y = node.input[0], node.output[0]
        shape, flat, hard = (f"{y}.hardmax_{part}" for part in ("shape", "flat", "2d"))
        nodes += [onnx.helper.make_node("Shape", [x], [shape]),
                  onnx.helper.make_node("Flatten", [x], [flat], axis=axis),
                  onnx.helper.make_node("Hardmax", [flat], [hard], name=node.name, axis=1),
                  onnx.helper.make_node("Reshape", [hard, shape], [y])]
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto


# -- what kiln cannot import, all at once -------------------------------------------------------


def node_label(node: onnx.NodeProto, index: int) -> str:
    """"'conv1' (#3)" or "#3" when unnamed."""
    return f"{node.name!r} (#{index})" if node.name else f"#{index}"


def _check_supported(graph: onnx.GraphProto, opset: int) -> None:
    missing: dict[tuple[str, str], list[str]] = {}
    for i, node in enumerate(graph.node):
        fn, why = find_converter(node.op_type, node.domain, opset)
        if fn is None:
            key = (f"{node.domain + '.' if node.domain else ''}{node.op_type} (opset {opset})",
                   why)
            missing.setdefault(key, []).append(node_label(node, i))
    bad_types = []
    for what, items in (("input", graph.input), ("initializer", graph.initializer)):
        for item in items:
            t = item.type.tensor_type.elem_type if what == "input" else item.data_type
            if what == "input" and not item.type.HasField("tensor_type"):
                kind = item.type.WhichOneof("value") or "no type"
                bad_types.append(f"{what} {item.name!r} is a {kind}, not a tensor")
            elif t not in ONNX_TO_KILN:
                bad_types.append(f"{what} {item.name!r} has element type {onnx_type_name(t)}")
    if not missing and not bad_types:
        return
    lines = []
    if missing:
        lines.append(f"kiln cannot import {len(missing)} ONNX op(s) of this model:")
        for (op, why), nodes in missing.items():
            shown = ", ".join(nodes[:5]) + (f" and {len(nodes) - 5} more" if len(nodes) > 5
                                              else "")
            lines.append(f"  {op}: {why}; node(s) {shown}")
    if bad_types:
        lines.append("kiln has no dtype for:")
        lines += [f"  {b}" for b in bad_types]
    raise UnsupportedOpError("\n".join(lines))


# -- types --------------------------------------------------------------------------------------


def symbol(name: str) -> Dim:
    """A dim_param as a kiln symbolic dim: a size expression as kiln writes them (``2*N``,
    read back as that expression), else an identifier made of it."""
    try:
        dim = parse_dim(name)
        if isinstance(dim, Sym) and dim == name:
            return dim
    except KilnError:
        pass
    s = re.sub(r"\W", "_", name)
    return as_dim(s if s and not s[0].isdigit() else f"d_{s}")


def _declared_type(vi: onnx.ValueInfoProto, what: str) -> TensorType:
    tt = vi.type.tensor_type
    dtype = to_kiln_dtype(tt.elem_type, f"{what} {vi.name!r}")
    if not tt.HasField("shape"):
        raise UnsupportedOpError(f"{what} {vi.name!r} has no shape (unknown rank); give it "
                                 "with input_shapes")
    dims: list[Dim] = []
    for i, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value") and d.dim_value < 0:
            raise ShapeError(f"{what} {vi.name!r} declares the negative dimension "
                             f"{d.dim_value} (dim {i})")
        if d.HasField("dim_value"):
            dims.append(d.dim_value)
        else:
            dims.append(symbol(d.dim_param) if d.dim_param else symbol(f"{vi.name}_{i}"))
    return TensorType(tuple(dims), dtype)


def _input_types(graph: onnx.GraphProto, given: dict[str, Any]) -> dict[str, TensorType]:
    inits = {t.name for t in graph.initializer}
    inputs = [vi for vi in graph.input if vi.name not in inits]
    names = [vi.name for vi in inputs]
    types = {vi.name: None for vi in inputs}
    for vi in inputs:
        if vi.type.tensor_type.HasField("shape") or vi.name not in given:
            types[vi.name] = _declared_type(vi, "graph input")
        else:
            dtype = to_kiln_dtype(vi.type.tensor_type.elem_type, f"graph input {vi.name!r}")
            types[vi.name] = TensorType(tuple(given[vi.name]), dtype)
    symbols = {d for t in types.values() for d in t.shape if isinstance(d, str)}
    bind: dict[str, Dim] = {}
    for key, shape in given.items():
        if key in types:
            t = types[key]
            if not isinstance(shape, (tuple, list)):
                raise KilnError(f"input_shapes[{key!r}] must be a shape (a tuple), got "
                                f"{shape!r}")
            shape = tuple(shape)
            if len(shape) != t.rank:
                raise ShapeError(f"input_shapes gives {key!r} the shape {shape}, but the model "
                                 f"declares rank {t.rank} ({t})")
            for want, have in zip(shape, t.shape):
                if isinstance(have, int) and have != want:
                    raise ShapeError(f"input_shapes gives {key!r} the shape {shape}, which "
                                     f"contradicts the model's {t}")
                if isinstance(have, Sym) and have.is_name:
                    if bind.setdefault(have, want) != want:
                        raise ShapeError(f"input_shapes gives dim {have!r} two sizes: "
                                         f"{bind[have]} and {want}")
        elif key in symbols or symbol(key) in symbols:
            if not isinstance(shape, int) or shape < 0:
                raise KilnError(f"input_shapes[{key!r}] names a symbolic dim: give one size")
            bind[symbol(key)] = shape
        else:
            raise KilnError(f"input_shapes names {key!r}, which is neither an input of the "
                            f"model ({', '.join(names)}) nor one of its symbolic dims "
                            f"({', '.join(sorted(symbols)) or 'none'})")
    sizes = {k: v for k, v in bind.items() if isinstance(v, int)}

    def fixed(d: Dim) -> Dim:
        if isinstance(d, Sym) and not d.is_name and d.symbols <= sizes.keys():
            return d.evaluate(sizes)  # an expression of fixed sizes (2*N with N given)
        return bind.get(d, d) if isinstance(d, Sym) else d
    out = {n: TensorType(tuple(fixed(d) for d in t.shape), t.dtype) for n, t in types.items()}
    for key, shape in given.items():
        if key in out and tuple(out[key].shape) != tuple(shape):
            raise ShapeError(f"input_shapes gives {key!r} the shape {tuple(shape)}, which "
                             f"contradicts the model's {types[key]} ({out[key]} with the "
                             "sizes given)")
    return out


def _contradiction(declared: onnx.TypeProto, t: TensorType) -> str | None:
    """Why the ONNX-declared type of a value contradicts kiln's inference (None if not)."""
    kind = declared.WhichOneof("value")
    if kind not in (None, "tensor_type"):
        return f"the model declares a {kind}, not a tensor"
    tt = declared.tensor_type
    if tt.elem_type and ONNX_TO_KILN.get(tt.elem_type) != t.dtype:
        return f"the model declares element type {onnx_type_name(tt.elem_type)}"
    if not tt.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    if len(dims) != t.rank or any(isinstance(h, int) and w is not None and h != w
                                  for w, h in zip(dims, t.shape)):
        shown = ", ".join("?" if d is None else str(d) for d in dims)
        return f"the model declares shape [{shown}]"
    return None


# -- conversion ---------------------------------------------------------------------------------


def parse_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """ONNX attributes as plain Python values (tensors as numpy arrays, strings as str)."""
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, onnx.TensorProto):
            v = _read_tensor(v, f"attribute {a.name!r}")
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [s.decode() for s in v]
        out[a.name] = v
    return out


def _read_tensor(t: onnx.TensorProto, what: str) -> np.ndarray:
    """A TensorProto as an array; a KilnError naming ``what`` if its fields disagree."""
    if t.data_location == onnx.TensorProto.EXTERNAL:
        raise KilnError(f"{what} keeps its data in an external file, which kiln reads only "
                        "when the model is loaded from a path")
    if any(d < 0 for d in t.dims):
        raise ShapeError(f"{what} has negative dims {list(t.dims)}")
    try:
        return numpy_helper.to_array(t)
    except Exception as e:  # noqa: BLE001  (onnx raises ValueError, TypeError, ...)
        raise KilnError(f"{what} cannot be read (its dims {list(t.dims)}, data type and "
                        f"data disagree): {_first_line(e)}") from None


def describe_node(node: onnx.NodeProto, index: int, version: int | None,
                  inputs: Sequence[Ref | None]) -> str:
    op = f"{node.op_type}-{version}" if version else node.op_type
    args = ", ".join(f"{name}: {ref.type}" if ref is not None else f"{name or '(omitted)'}: -"
                     for name, ref in zip(node.input, inputs))
    return f"ONNX node {node_label(node, index)} {op}({args})"


def _check_names(graph: onnx.GraphProto) -> None:
    """Graph inputs and initializers each named, and once (an initializer may also be listed
    as a graph input, its declared type)."""
    for what, names in (("graph input", [vi.name for vi in graph.input]),
                        ("initializer", [t.name for t in graph.initializer]),
                        ("graph output", [vi.name for vi in graph.output])):
        if "" in names:
            raise KilnError(f"a {what} has no name")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise KilnError(f"{what}(s) {', '.join(map(repr, twice))} defined more than once")


def _check_initializer_types(graph: onnx.GraphProto, env: dict[str, Ref]) -> None:
    """An initializer's declared type (as a graph input, or in value_info) is its own."""
    for vi in list(graph.input) + list(graph.value_info):
        ref = env.get(vi.name)
        if ref is not None and ref.is_const:
            why = _contradiction(vi.type, ref.type)
            if why:
                raise ShapeError(f"initializer {vi.name!r} is {ref.type}, but {why}")


def _convert(graph: onnx.GraphProto, opset: int, given: dict[str, Any]) -> Graph:
    _check_names(graph)
    b = GraphBuilder(graph.name or "main")
    ctx = Context(b)
    env: dict[str, Ref] = {}
    for t in graph.initializer:
        array = _read_tensor(t, f"initializer {t.name!r}")
        env[t.name] = const_ref(array, name=t.name, named=True)
    _check_initializer_types(graph, env)
    for name, t in _input_types(graph, given).items():
        check_size(t, f"graph input {name!r}")
        env[name] = Ref(t, value=b.input(name, t), name=name)
    declared = {vi.name: vi.type for vi in list(graph.value_info) + list(graph.output)}
    for index, node in enumerate(graph.node):
        _convert_node(ctx, env, declared, node, index, opset)
    used = set()
    for out in graph.output:
        if out.name not in env:
            raise KilnError(f"graph output {out.name!r} is not computed by any node")
        ref = env[out.name]
        ctx.origin, ctx.created = "onnx:output", []
        if ref.value is None and ref.named:
            ref.name = f"{out.name}.value"  # the output itself takes the ONNX name
        v = ctx.value(ref)
        if v in used or b.producer(v) is None:  # an input, a parameter or another output
            v = ctx.rename(b.op("identity", [v], origin="onnx:output")[0], out.name)
        elif v.name != out.name:
            v = ref.value = ctx.rename(v, out.name)
        used.add(v)
        b.output(v)
    return b.build()


def _convert_node(ctx: Context, env: dict[str, Ref], declared: dict, node: onnx.NodeProto,
                  index: int, opset: int) -> None:
    version = schema_version(node.op_type, opset)
    inputs: list[Ref | None] = []
    for name in node.input:
        if name == "":
            inputs.append(None)
        elif name in env:
            inputs.append(env[name])
        else:
            raise KilnError(f"{describe_node(node, index, version, inputs)}: input {name!r} is "
                            "not a graph input, an initializer or an output of an earlier node")
    where = describe_node(node, index, version, inputs)
    fn, why = find_converter(node.op_type, node.domain, opset)
    if fn is None:
        raise UnsupportedOpError(f"{where}: {why}")
    ctx.origin = f"onnx:{node.name}" if node.name else f"onnx:#{index} {node.op_type}"
    ctx.created = []
    ctx.hint = f"{next((o for o in node.output if o), node.op_type)}.const"
    try:
        check_attributes(node, opset)
        check_arity(node, opset)
        check_input_types(node, opset, inputs)
        n = NodeContext(ctx, node, version, inputs, parse_attrs(node))
        if node.op_type in SPECS:
            check_spec(n, SPECS[node.op_type])
        result = fn(n)
    except KilnError as e:
        raise type(e)(f"{where}: {e}") from None
    except Exception as e:  # a numpy error while folding, or a converter bug: say where
        raise KilnError(f"{where}: conversion failed: {type(e).__name__}: {e}") from e
    outs = list(result) if isinstance(result, (list, tuple)) else [result]
    for i, name in enumerate(node.output):
        if name == "":
            continue
        ref = outs[i] if i < len(outs) else None
        if ref is None:
            raise UnsupportedOpError(f"{where}: kiln does not compute output {i} ({name!r}) "
                                     f"of {node.op_type}")
        if name in env:
            raise KilnError(f"{where}: output {name!r} is already defined (by an input, an "
                            "initializer or an earlier node); ONNX names are defined once")
        if ref.value is not None and ref.value in ctx.created:
            ref.value = ctx.rename(ref.value, name)
        if not ref.name:
            ref.name = name
        check_size(ref.type, f"{where}: output {name!r}")
        if name in declared:
            why = _contradiction(declared[name], ref.type)
            if why:
                raise ShapeError(f"{where}: shape contradiction: kiln infers {ref.type} for "
                                 f"output {name!r}, but {why}")
        env[name] = ref
