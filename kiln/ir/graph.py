"""The graph IR: typed SSA values, nodes and graphs, and the builder that makes them.

Values and nodes are immutable, and a ``Graph`` is immutable by convention: passes build a new
one with ``GraphBuilder`` rather than patching nodes in place. Values are compared by identity;
their names are unique within a graph and are what the text form, the interpreter's inputs and
the runtime's signature use. A value is renamed through its builder (``GraphBuilder.rename``),
which makes a new Value and puts it wherever the old one was.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from kiln.errors import KilnError
from kiln.ir.types import TensorType


class Value:
    """One SSA value: a graph input, a parameter, or one output of a node.

    Immutable: assigning ``name`` or ``type`` raises AttributeError. To rename a value while
    building a graph, use ``GraphBuilder.rename``, which returns a new Value.
    """

    __slots__ = ("name", "type")

    def __init__(self, name: str, type: TensorType):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "type", type)

    def __setattr__(self, attr: str, value: Any) -> None:
        raise AttributeError(f"Value %{self.name} is immutable (cannot set {attr!r}); rename "
                             "a value with GraphBuilder.rename")

    def __delattr__(self, attr: str) -> None:
        raise AttributeError(f"Value %{self.name} is immutable (cannot delete {attr!r})")

    def __reduce__(self):
        return Value, (self.name, self.type)

    @property
    def shape(self):
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


@dataclass(frozen=True, eq=False)
class Node:
    """An op applied to input values with attributes, defining output values.

    ``attrs`` holds plain hashable Python values (ints, floats, bools, strings, None, tuples,
    and for ``fused`` nodes a Graph). ``origin`` says where the node came from ("model.py:12",
    "onnx:Conv_3"), so that errors can point at the user's code.
    """

    op: str
    inputs: tuple[Value, ...]
    attrs: Mapping[str, Any]
    outputs: tuple[Value, ...]
    origin: str = ""

    def describe(self) -> str:
        """'node %3 (matmul, at model.py:12)' for error messages."""
        outs = ", ".join(f"%{v.name}" for v in self.outputs)
        where = f", at {self.origin}" if self.origin else ""
        return f"node {outs} ({self.op}{where})"

    def attr_key(self) -> tuple:
        """A hashable key of the attributes (for CSE and caches)."""
        return tuple(sorted(self.attrs.items()))


@dataclass(frozen=True, eq=False)
class Graph:
    """Inputs, parameters (named constants), nodes in topological order, outputs."""

    name: str
    inputs: tuple[Value, ...]
    params: tuple[Value, ...]
    nodes: tuple[Node, ...]
    outputs: tuple[Value, ...]
    weights: Mapping[str, np.ndarray] = field(default_factory=dict)

    # -- lookups -------------------------------------------------------------------------------
    @cached_property
    def producers(self) -> dict[Value, Node]:
        """Value -> the node defining it (inputs and parameters have none)."""
        return {v: n for n in self.nodes for v in n.outputs}

    @cached_property
    def users(self) -> dict[Value, list[Node]]:
        """Value -> nodes that read it, in graph order (a node reading twice appears once)."""
        out: dict[Value, list[Node]] = {}
        for n in self.nodes:
            for v in dict.fromkeys(n.inputs):
                out.setdefault(v, []).append(n)
        return out

    def value(self, name: str) -> Value:
        """The value called ``name`` (input, parameter or node output)."""
        for v in self.all_values():
            if v.name == name:
                return v
        raise KilnError(f"graph {self.name!r} has no value named %{name}")

    def all_values(self) -> Iterable[Value]:
        yield from self.inputs
        yield from self.params
        for n in self.nodes:
            yield from n.outputs

    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [v.name for v in self.outputs]

    # -- views ---------------------------------------------------------------------------------
    def to_networkx(self):
        """A ``networkx.DiGraph`` over node indices, an edge from producer to consumer.

        Each edge carries the values it stands for (``values``); each node its ``node``.
        """
        import networkx as nx

        g = nx.DiGraph()
        index = {id(n): i for i, n in enumerate(self.nodes)}
        for i, n in enumerate(self.nodes):
            g.add_node(i, node=n, op=n.op)
        for i, n in enumerate(self.nodes):
            for v in n.inputs:
                p = self.producers.get(v)
                if p is not None:
                    j = index[id(p)]
                    if g.has_edge(j, i):
                        g.edges[j, i]["values"].append(v)
                    else:
                        g.add_edge(j, i, values=[v])
        return g

    def __str__(self) -> str:
        from kiln.ir.printer import print_graph

        return print_graph(self)

    def same_as(self, other: Graph, check_weights: bool = True) -> bool:
        """Structural equality: same text form (and, if asked, equal weights)."""
        if str(self) != str(other):
            return False
        if not check_weights:
            return True
        if set(self.weights) != set(other.weights):
            return False
        return all(np.array_equal(self.weights[k], other.weights[k]) for k in self.weights)


def freeze_attr(value: Any) -> Any:
    """Lists become tuples (recursively) and numpy scalars become Python ones."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze_attr(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


class GraphBuilder:
    """Builds a Graph node by node, inferring (and so checking) every node's types.

    ``unique`` names are made by adding a numeric suffix; values defined by ``op`` without a
    name hint are numbered ``%0, %1, ...``. What has been built so far is readable through
    ``inputs``, ``params``, ``nodes``, ``outputs``, ``last_node``, ``producer`` and
    ``has_name``; ``rename`` is the one way to change a value already added.
    """

    def __init__(self, name: str = "main"):
        self.name = name
        self._inputs: list[Value] = []
        self._params: list[Value] = []
        self._nodes: list[Node] = []
        self._outputs: list[Value] = []
        self._weights: dict[str, np.ndarray] = {}
        self._names: set[str] = set()
        self._counter = 0
        self._producer: dict[Value, int] = {}  # node output -> index of its node in _nodes
        self._users: dict[Value, list[int]] = {}  # value -> indices of the nodes reading it

    # -- what has been built so far ------------------------------------------------------------
    @property
    def inputs(self) -> tuple[Value, ...]:
        """The inputs added so far, in order."""
        return tuple(self._inputs)

    @property
    def params(self) -> tuple[Value, ...]:
        """The parameters added so far, in order."""
        return tuple(self._params)

    @property
    def nodes(self) -> tuple[Node, ...]:
        """The nodes added so far, in order."""
        return tuple(self._nodes)

    @property
    def outputs(self) -> tuple[Value, ...]:
        """The outputs set so far, in order."""
        return tuple(self._outputs)

    @property
    def last_node(self) -> Node:
        """The node added last (by ``op`` or ``add_node``)."""
        if not self._nodes:
            raise KilnError(f"graph {self.name!r} has no nodes yet")
        return self._nodes[-1]

    def producer(self, value: Value) -> Node | None:
        """The node of this builder that defines ``value``; None for an input, a parameter
        or a value this builder does not hold."""
        index = self._producer.get(value)
        return None if index is None else self._nodes[index]

    def has_name(self, name: str) -> bool:
        """Whether a value of this builder is called ``name`` (or the name is reserved)."""
        return name in self._names

    def free_name(self, hint: str) -> str:
        """``hint``, or ``hint_1``, ``hint_2``, ... whichever is not taken yet (not reserved)."""
        name, k = hint, 1
        while name in self._names:
            name, k = f"{hint}_{k}", k + 1
        return name

    def unique(self, hint: str | None) -> str:
        """Reserve a fresh name: ``hint`` made unique, or the next number."""
        if hint is None:
            while str(self._counter) in self._names:
                self._counter += 1
            hint = str(self._counter)
            self._counter += 1
        name = self.free_name(hint)
        self._names.add(name)
        return name

    def input(self, name: str, type: TensorType) -> Value:
        if name in self._names:
            raise KilnError(f"graph {self.name!r} already has a value named %{name}")
        self._names.add(name)
        v = Value(name, type)
        self._inputs.append(v)
        return v

    def param(self, name: str, array: np.ndarray | None = None, type: TensorType | None = None):
        """A named constant. With ``array`` its value is stored in the graph's weights."""
        if name in self._names:
            raise KilnError(f"graph {self.name!r} already has a value named %{name}")
        if array is not None:
            array = np.asarray(array)
            type = TensorType.of(array)
            self._weights[name] = array
        if type is None:
            raise KilnError(f"parameter %{name} needs an array or a type")
        self._names.add(name)
        v = Value(name, type)
        self._params.append(v)
        return v

    def op(
        self,
        op: str,
        inputs: Sequence[Value],
        attrs: Mapping[str, Any] | None = None,
        *,
        origin: str = "",
        names: Sequence[str | None] | None = None,
    ) -> list[Value]:
        """Add a node; returns its output values (always a list)."""
        from kiln.ir.ops import infer_node

        attrs_n, out_types = infer_node(op, inputs, attrs or {}, origin=origin)
        hints = list(names) if names is not None else [None] * len(out_types)
        if len(hints) != len(out_types):
            raise KilnError(f"{op}: {len(hints)} output names given, {len(out_types)} outputs")
        outs = tuple(Value(self.unique(h), t) for h, t in zip(hints, out_types))
        self._append(Node(op, tuple(inputs), attrs_n, outs, origin))
        return list(outs)

    def add_node(self, node: Node) -> None:
        """Append an already-built node (its types are trusted; the verifier checks them)."""
        for v in node.outputs:
            if v.name in self._names:
                raise KilnError(f"graph {self.name!r} already has a value named %{v.name}")
            self._names.add(v.name)
        self._append(node)

    def _append(self, node: Node) -> None:
        index = len(self._nodes)
        self._nodes.append(node)
        for v in node.outputs:
            self._producer[v] = index
        for v in dict.fromkeys(node.inputs):
            self._users.setdefault(v, []).append(index)

    def output(self, *values: Value) -> None:
        self._outputs.extend(values)

    def rename(self, value: Value, name: str) -> Value:
        """Rename ``value`` (an input, parameter or node output of this builder) to ``name``.

        Values are immutable, so this makes a new Value of the same type and puts it wherever
        the builder holds the old one: the input or parameter list (and the weights), the
        node defining it and the nodes reading it (each replaced by an updated copy), the
        outputs. Returns the new Value; the old one (and any Node object taken from the
        builder before) no longer belongs to the graph: use the returned one from here on.
        Renaming to the current name returns ``value`` itself; a name that is taken raises
        KilnError.
        """
        if name == value.name:
            return value
        holders = [lst for lst in (self._inputs, self._params) if any(v is value for v in lst)]
        if value not in self._producer and not holders:
            raise KilnError(f"graph {self.name!r}: cannot rename %{value.name}, which is not "
                            "one of its values")
        if name in self._names:
            raise KilnError(f"graph {self.name!r} already has a value named %{name}")
        new = Value(name, value.type)
        self._names.discard(value.name)
        self._names.add(name)
        for lst in holders + [self._outputs]:
            lst[:] = [new if v is value else v for v in lst]
        if value.name in self._weights and any(v is new for v in self._params):
            self._weights[name] = self._weights.pop(value.name)
        touched = self._users.pop(value, [])
        if value in self._producer:
            index = self._producer.pop(value)
            self._producer[new] = index
            touched = [index, *touched]
        if touched:
            self._users[new] = [i for i in touched if value in self._nodes[i].inputs]
        for i in dict.fromkeys(touched):
            n = self._nodes[i]
            self._nodes[i] = replace(n, inputs=tuple(new if v is value else v for v in n.inputs),
                                     outputs=tuple(new if v is value else v for v in n.outputs))
        return new

    def build(self) -> Graph:
        return Graph(
            self.name,
            tuple(self._inputs),
            tuple(self._params),
            tuple(self._nodes),
            tuple(self._outputs),
            dict(self._weights),
        )
