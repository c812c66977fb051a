"""kiln -> ONNX: ``to_onnx(graph, path=None, opset=17) -> onnx.ModelProto``.

Every kiln op has an entry in ``export_ops.EXPORTERS`` that writes ONNX nodes for it; a
``fused`` node is written as its sub-graph, inlined. Parameters become initializers, symbolic
dims become dim_params, and value names stay (ONNX names are kiln's names; helper tensors get
fresh ones). The result passes ``onnx.checker``; onnxruntime gives what ``kiln.interpret``
gives.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from kiln.errors import KilnError, UnsupportedOpError
from kiln.frontend.onnx.dtypes import to_onnx_dtype
from kiln.ir.dims import symbol
from kiln.ir.graph import Graph, Node, Value
from kiln.ir.types import Dim, TensorType, to_numpy_dtype

MIN_EXPORT_OPSET = 13


class Exporter:
    """The ONNX graph being written: nodes, initializers, and kiln value -> ONNX name."""

    def __init__(self, graph: Graph, opset: int):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.names: dict[Value, str] = {}
        self.taken: set[str] = {v.name for v in graph.all_values()}
        self.inputs = tuple(graph.inputs)  # where symbolic sizes are read from
        self.origin = ""
        self._consts: dict[tuple, str] = {}

    # -- names and constants
    def fresh(self, hint: str) -> str:
        name, k = hint, 1
        while name in self.taken:
            name, k = f"{hint}_{k}", k + 1
        self.taken.add(name)
        return name

    def name(self, v: Value) -> str:
        return self.names[v]

    def own_name(self, v: Value) -> str:
        """The ONNX name of a value of the exported graph: its kiln name, except that ONNX
        keeps the empty name for omitted inputs and outputs."""
        if v not in self.names:
            self.names[v] = v.name if v.name else self.fresh("unnamed")
        return self.names[v]

    def const(self, array: Any, dtype: str | None = None, hint: str = "const") -> str:
        """An initializer holding ``array`` (cast to kiln ``dtype`` if given); equal small
        constants are shared."""
        a = np.asarray(array, dtype=None if dtype is None else to_numpy_dtype(dtype))
        key = (a.dtype.str, a.shape, a.tobytes()) if a.size <= 64 else None
        if key is not None and key in self._consts:
            return self._consts[key]
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(a, name))
        if key is not None:
            self._consts[key] = name
        return name

    def ints(self, values: Sequence[int], hint: str = "ints") -> str:
        return self.const(np.asarray(values, np.int64).reshape(len(values)), hint=hint)

    # -- nodes
    def add(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str] | int = 1,
            **attrs: Any) -> list[str]:
        """Append an ONNX node; ``outputs`` are names, or a count of fresh names to make."""
        if isinstance(outputs, int):
            outputs = [self.fresh(f"{op_type.lower()}_out") for _ in range(outputs)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        name = self.fresh(f"{op_type}_{len(self.nodes)}")
        node = helper.make_node(op_type, list(inputs), list(outputs), name=name, **attrs)
        if self.origin:
            node.doc_string = self.origin
        self.nodes.append(node)
        return list(outputs)

    def add1(self, op_type: str, inputs: Sequence[str], out: str | None = None,
             **attrs: Any) -> str:
        return self.add(op_type, inputs, [out] if out else 1, **attrs)[0]

    def shape_tensor(self, dims: Sequence[Dim], *sources: Value, reshape: bool = False) -> str:
        """An int64 shape tensor for ``dims``: ints as they are, a symbolic dim read from the
        shape of the first of ``sources`` that has it (or, for a Reshape, -1 when it is the
        only symbolic dim)."""
        if all(isinstance(d, int) for d in dims) or (
                reshape and sum(isinstance(d, str) for d in dims) == 1):
            return self.ints([-1 if isinstance(d, str) else d for d in dims], "shape")
        shapes: dict[Value, str] = {}

        def size(d: Dim) -> str:
            """A 1-element int64 tensor holding the size ``d``."""
            if isinstance(d, int):
                return self.ints([d])
            src = next((s for s in sources if d in s.shape), None)
            if src is not None:  # read from an input's shape
                if src not in shapes:
                    shapes[src] = self.add1("Shape", [self.name(src)])
                return self.add1("Gather", [shapes[src], self.ints([src.shape.index(d)])],
                                 axis=0)
            if d.is_name:
                raise UnsupportedOpError(f"cannot export shape {tuple(dims)}: symbolic dim "
                                         f"{d!r} is in none of the inputs")
            total = None  # an expression: computed from the sizes it names
            for coef, factors in d.terms:
                term = None
                for f in factors:
                    # (sizes are >= 0, so ONNX's truncating Div is the floor division)
                    x = (size(symbol(f)) if isinstance(f, str) else
                         self.add1("Div", [size(f[0]), self.ints([f[1]])]))
                    term = x if term is None else self.add1("Mul", [term, x])
                if term is None or coef != 1:
                    term = (self.ints([coef]) if term is None
                            else self.add1("Mul", [term, self.ints([coef])]))
                total = term if total is None else self.add1("Add", [total, term])
            return total

        return self.add1("Concat", [size(d) for d in dims], axis=0)

    def emit(self, node: Node) -> None:
        from kiln.frontend.onnx.export_ops import EXPORTERS

        if node.op == "fused":
            self._inline(node)
            return
        fn = EXPORTERS.get(node.op)
        if fn is None:
            raise UnsupportedOpError(f"{node.describe()}: kiln op {node.op!r} has no ONNX export")
        outs = [self.own_name(v) for v in node.outputs]
        self.origin = node.origin
        try:
            fn(self, node, [self.name(v) for v in node.inputs], outs)
        except KilnError as e:
            raise type(e)(f"{node.describe()}: {e}") from None

    def _inline(self, node: Node) -> None:
        """A fused node: its sub-graph's nodes, inner values renamed into this graph."""
        body: Graph = node.attrs["graph"]
        for inner, outer in zip(body.inputs, node.inputs):
            self.names[inner] = self.name(outer)
        produced = {v for n in body.nodes for v in n.outputs}
        direct: dict[Value, Value] = {}  # inner value -> the fused output it is written as
        for inner, outer in zip(body.outputs, node.outputs):
            if inner in produced and inner not in direct:
                direct[inner] = outer
                self.names[inner] = self.own_name(outer)
        prefix = node.outputs[0].name
        for n in body.nodes:
            for v in n.outputs:
                if v not in self.names:
                    self.names[v] = self.fresh(f"{prefix}/{v.name}")
        for n in body.nodes:
            self.emit(n)
        for inner, outer in zip(body.outputs, node.outputs):
            if direct.get(inner) is not outer:  # an input passed through, or a repeat
                self.add("Identity", [self.names[inner]], [self.own_name(outer)])


def value_info(name: str, t: TensorType) -> onnx.ValueInfoProto:
    dims = [d if isinstance(d, int) else str(d) for d in t.shape]
    return helper.make_tensor_value_info(name, to_onnx_dtype(t.dtype), dims)


def to_onnx(graph: Graph, path: str | os.PathLike | None = None,
            opset: int = 17) -> onnx.ModelProto:
    """Export a kiln Graph as an ONNX model (and write it to ``path`` if given)."""
    newest = onnx.defs.onnx_opset_version()
    if not MIN_EXPORT_OPSET <= opset <= newest:
        raise KilnError(f"to_onnx exports opsets {MIN_EXPORT_OPSET}..{newest}, not {opset}")
    e = Exporter(graph, opset)
    for v in graph.inputs:
        e.own_name(v)
    used = {v for n in graph.nodes for v in n.inputs} | set(graph.outputs)
    for v in graph.params:
        if v not in used:  # an unused parameter (a batch-norm counter, say) is left out
            continue
        if v.name not in graph.weights:
            raise KilnError(f"parameter %{v.name} has no value in the graph's weights; "
                            "ONNX initializers need one")
        e.initializers.append(numpy_helper.from_array(np.asarray(graph.weights[v.name]),
                                                      e.own_name(v)))
    for node in graph.nodes:
        e.emit(node)
    outputs = []
    for i, v in enumerate(graph.outputs):
        name = e.name(v)
        if name in (o.name for o in outputs) or v in graph.inputs or v in graph.params:
            name = e.add1("Identity", [name], e.fresh(f"{v.name or 'output'}_{i}"))
        outputs.append(value_info(name, v.type))
    inputs = [value_info(e.name(v), v.type) for v in graph.inputs]
    onnx_graph = helper.make_graph(e.nodes, graph.name or "main", inputs, outputs,
                                   initializer=e.initializers)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(onnx_graph, opset_imports=opsets, producer_name="kiln",
                              ir_version=helper.find_min_ir_version_for(opsets))
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:  # an exporter bug: say so
        raise KilnError(f"kiln wrote an invalid ONNX model (a bug in kiln's exporter): "
                        f"{str(err).splitlines()[0]}") from None
    if path is not None:
        onnx.save(model, os.fspath(path))
    return model
