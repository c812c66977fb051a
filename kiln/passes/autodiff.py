"""Reverse-mode automatic differentiation over the IR.

``grad(graph, wrt=["x", "fc.weight"])`` returns a new graph computing the graph's scalar output
and its gradient with respect to each named input or parameter. The backward nodes come from
one table of vector-Jacobian rules keyed by op name (``VJP_RULES``, written in
``vjp_rules.py`` and ``vjp_rules_nn.py``); ops that have no gradient are declared in
``NON_DIFFERENTIABLE`` and ops still waiting for a rule in ``NOT_YET``, so that every op of
``kiln.ir.OPS`` is in exactly one of the three (a test checks it).

A rule is a function ``rule(c, g)``: ``g`` is the cotangent of the node's output (a list of
them for multi-output ops), ``c`` a ``VJPContext`` that knows the node's inputs (``c.x``,
``c.inputs``), outputs (``c.y``), attributes (``c.attrs``), and emits ops by name
(``c.exp(x)``, ``c.sum(g, axes=(1,), keepdims=True)``) on ``Var``s whose Python operators
emit ops too. A rule returns one cotangent per input (``None`` where none flows), e.g.::

    "softmax": lambda c, g: (g - c.sum(g * c.y, axes=(c.attrs["axis"],), keepdims=True)) * c.y

Rules may compute cotangents nobody needs; ``grad`` prunes unused nodes at the end.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from kiln.errors import KilnError
from kiln.ir.graph import Graph, GraphBuilder, Node, Value
from kiln.ir.ops import OPS
from kiln.ir.ops.registry import normalize_axes
from kiln.ir.types import TensorType, is_float
from kiln.passes.canonicalize import eliminate_dead_code


class _Shared:
    __slots__ = ("builder", "origin", "consts")

    def __init__(self, builder: GraphBuilder, origin: str):
        self.builder, self.origin = builder, origin
        self.consts: dict[tuple, Var] = {}


class Var:
    """A value of the graph being built; its operators emit nodes (``a * b`` emits ``mul``)."""

    __slots__ = ("em", "value")

    def __init__(self, em: Emitter, value: Value):
        self.em, self.value = em, value

    @property
    def type(self) -> TensorType:
        return self.value.type

    @property
    def shape(self) -> tuple:
        return self.value.type.shape

    @property
    def dtype(self) -> str:
        return self.value.type.dtype

    @property
    def rank(self) -> int:
        return self.value.type.rank

    def __add__(self, o): return self.em.add(self, o)
    def __radd__(self, o): return self.em.add(o, self)
    def __sub__(self, o): return self.em.sub(self, o)
    def __rsub__(self, o): return self.em.sub(o, self)
    def __mul__(self, o): return self.em.mul(self, o)
    def __rmul__(self, o): return self.em.mul(o, self)
    def __truediv__(self, o): return self.em.div(self, o)
    def __rtruediv__(self, o): return self.em.div(o, self)
    def __pow__(self, o): return self.em.pow(self, o)
    def __rpow__(self, o): return self.em.pow(o, self)
    def __neg__(self): return self.em.neg(self)
    def __gt__(self, o): return self.em.greater(self, o)
    def __ge__(self, o): return self.em.greater_equal(self, o)
    def __lt__(self, o): return self.em.less(self, o)
    def __le__(self, o): return self.em.less_equal(self, o)
    def __and__(self, o): return self.em.logical_and(self, o)
    def __or__(self, o): return self.em.logical_or(self, o)
    def __invert__(self): return self.em.logical_not(self)

    def __repr__(self) -> str:
        return f"Var({self.value!r})"


class Emitter:
    """Emits typed nodes into a ``GraphBuilder``; every op of ``kiln.ir.OPS`` is a method.

    ``em.softmax(x, axis=1)`` adds a softmax node and returns its output as a ``Var`` (a list
    of them for multi-output ops). Python numbers among the inputs become scalar constants of
    the dtype of the other inputs.
    """

    def __init__(self, builder: GraphBuilder, origin: str = ""):
        # shared by the contexts made from this emitter, so that the nodes a Var's operators
        # emit get the origin current at the time, and constants are made once
        self._shared = _Shared(builder, origin)

    @property
    def builder(self) -> GraphBuilder:
        return self._shared.builder

    @property
    def origin(self) -> str:
        return self._shared.origin

    @origin.setter
    def origin(self, origin: str) -> None:
        self._shared.origin = origin

    def __getattr__(self, op: str) -> Callable[..., Any]:
        if op.startswith("_") or op not in OPS:
            raise AttributeError(f"{type(self).__name__} has no attribute or op {op!r}")

        def emit(*inputs: Any, **attrs: Any) -> Any:
            outs = self.emit(op, inputs, attrs)
            return outs[0] if len(outs) == 1 else outs

        return emit

    def emit(self, op: str, inputs: Sequence[Any], attrs: Mapping[str, Any] | None = None,
             names: Sequence[str | None] | None = None) -> list[Var]:
        """Add one node; returns all its outputs."""
        dtypes = [x.dtype for x in inputs if isinstance(x, (Var, Value))]
        # numbers take the dtype of the data inputs (where's, say, not that of its condition)
        like = next((d for d in dtypes if d != "bool"), dtypes[0] if dtypes else None)
        values = [self._value(x, like) for x in inputs]
        outs = self.builder.op(op, values, attrs or {}, origin=self.origin, names=names)
        return [Var(self, v) for v in outs]

    def _value(self, x: Any, dtype: str | None) -> Value:
        if isinstance(x, Var):
            return x.value
        if isinstance(x, Value):
            return x
        if isinstance(x, (bool, int, float, np.number)) and dtype is not None:
            return self.const(x, dtype).value
        raise KilnError(f"cannot use {x!r} as an input here (a Var, or a number next to one)")

    def var(self, v: Value) -> Var:
        return Var(self, v)

    # -- constants -----------------------------------------------------------------------------
    def const(self, value: float | int | bool, dtype: str) -> Var:
        """A scalar constant (one ``full`` node per value and dtype)."""
        value = float(value) if is_float(dtype) else bool(value) if dtype == "bool" else int(value)
        key = (dtype, repr(value))
        consts = self._shared.consts
        if key not in consts:
            consts[key] = self.full(shape=(), value=value, dtype=dtype)
        return consts[key]

    def constant(self, array: np.ndarray, hint: str = "const") -> Var:
        """A numpy array as a named constant (a graph parameter holding it)."""
        return Var(self, self.builder.param(self.builder.free_name(hint), np.asarray(array)))

    # -- shape helpers shared by rules and losses ------------------------------------------------
    def zeros_like(self, x: Var) -> Var:
        if x.type.is_static:
            return self.full(shape=x.shape, value=0.0 if is_float(x.dtype) else 0, dtype=x.dtype)
        return self.broadcast_to(self.const(0, x.dtype), x)

    def broadcast_to(self, g: Var, like: Var) -> Var:
        """``g`` broadcast (numpy rules) to the shape of ``like``."""
        shape = tuple(like.shape)
        if tuple(g.shape) == shape:
            return g
        lead = len(shape) - g.rank
        if all(isinstance(d, int) for d in shape[:lead]) and all(
            gd == d or (gd == 1 and isinstance(d, int)) for gd, d in zip(g.shape, shape[lead:])
        ):
            return self.expand(g, shape=shape)
        # expand cannot grow a size-1 axis to a symbolic size; where(...) broadcasts it
        same = self.equal(like, like)
        return self.where(same, g, g)

    def unbroadcast(self, g: Var, like: Var | Value) -> Var:
        """Sum ``g`` down to the shape of ``like``: the adjoint of numpy broadcasting."""
        shape = tuple(like.shape)
        lead = g.rank - len(shape)
        if lead > 0:
            g = self.sum(g, axes=tuple(range(lead)))
        axes = tuple(i for i, (d, gd) in enumerate(zip(shape, g.shape)) if d == 1 and gd != 1)
        if axes:
            g = self.sum(g, axes=axes, keepdims=True)
        return g

    def count(self, x: Var, axes: Sequence[int]) -> Var | int:
        """How many elements of ``x`` a reduction over ``axes`` combines."""
        dims = [x.shape[a] for a in axes]
        if all(isinstance(d, int) for d in dims):
            return int(np.prod(dims, dtype=np.int64))
        return self.sum(self.broadcast_to(self.const(1, x.dtype), x), axes=tuple(axes),
                        keepdims=True)


class VJPContext(Emitter):
    """What a rule sees: the node's inputs and outputs as Vars, its attributes, and which
    inputs need a cotangent (``needs``). Emits like an Emitter, into the same graph."""

    def __init__(self, em: Emitter, node: Node, env: Mapping[Value, Var], needs: Sequence[bool]):
        self._shared = em._shared
        self.node = node
        self.inputs = [env[v] for v in node.inputs]
        self.outputs = [env[v] for v in node.outputs]
        self.attrs = dict(node.attrs)
        self.needs = tuple(needs)

    @property
    def x(self) -> Var:
        return self.inputs[0]

    @property
    def y(self) -> Var:
        return self.outputs[0]

    def restore(self, g: Var, axes: Any, keepdims: bool) -> Var:
        """The cotangent of a reduction over ``axes`` of ``c.x``, broadcast back to x."""
        axes = normalize_axes(axes, self.x.rank)
        if not keepdims and axes:
            g = self.unsqueeze(g, axes=axes)
        return self.broadcast_to(g, self.x)

    def error(self, msg: str) -> KilnError:
        return KilnError(f"gradient of {self.node.describe()}: {msg}")

    def backprop_graph(self, body: Graph, gs: Sequence[Var]) -> list[Var | None]:
        """Cotangents of this node's inputs, for a node that runs ``body`` on them: the body
        is emitted again (its values are needed by its rules) and differentiated."""
        env = dict(zip(body.inputs, self.inputs))
        copy_nodes(self, body.nodes, env)
        seeds: dict[Value, Var] = {}
        for v, g in zip(body.outputs, gs):
            seeds[v] = seeds[v] + g if v in seeds else g
        wrt = [v for v, need in zip(body.inputs, self.needs) if need]
        cts = backprop(self, body.nodes, env, seeds, wrt)
        return [cts.get(v) for v in body.inputs]


Rule = Callable[[VJPContext, Any], Any]


def copy_nodes(em: Emitter, nodes: Iterable[Node], env: dict[Value, Var]) -> None:
    """Emit ``nodes`` again over ``env`` (old value -> Var), keeping names where free."""
    for n in nodes:
        outs = em.builder.op(n.op, [env[v].value for v in n.inputs], n.attrs, origin=n.origin,
                             names=[v.name for v in n.outputs])
        env.update(zip(n.outputs, (Var(em, v) for v in outs)))


def clone(graph: Graph, em: Emitter, as_inputs: Iterable[str] = (),
          order: Sequence[str] | None = None) -> dict[Value, Var]:
    """Copy ``graph``'s inputs, parameters and nodes into ``em``'s builder; parameters named
    in ``as_inputs`` become inputs (after the graph's own). ``order`` lists the graph's input
    names in the order to create them (default: the graph's). Returns old value -> Var."""
    as_inputs = set(as_inputs)
    b, env = em.builder, {}
    inputs = {v.name: v for v in graph.inputs}
    for v in (graph.inputs if order is None else [inputs[n] for n in order]):
        env[v] = Var(em, b.input(v.name, v.type))
    for v in graph.params:
        if v.name not in as_inputs:
            w = graph.weights.get(v.name)
            env[v] = Var(em, b.param(v.name, w) if w is not None else b.param(v.name, type=v.type))
    for v in graph.params:
        if v.name in as_inputs:
            env[v] = Var(em, b.input(v.name, v.type))
    copy_nodes(em, graph.nodes, env)
    return env


def _rules() -> tuple[dict[str, Rule], dict[str, str], dict[str, str]]:
    from kiln.passes import vjp_rules, vjp_rules_nn

    overlap = set(vjp_rules.RULES) & set(vjp_rules_nn.RULES)
    if overlap:
        raise KilnError(f"VJP rules defined twice: {sorted(overlap)}")
    return ({**vjp_rules.RULES, **vjp_rules_nn.RULES}, vjp_rules.NON_DIFFERENTIABLE,
            vjp_rules.NOT_YET)


VJP_RULES, NON_DIFFERENTIABLE, NOT_YET = _rules()


def backprop(em: Emitter, nodes: Sequence[Node], env: Mapping[Value, Var],
             seeds: Mapping[Value, Var], wrt: Iterable[Value]) -> dict[Value, Var]:
    """Reverse sweep over ``nodes``: cotangents of every value between ``wrt`` and the seeded
    values (value -> Var; values that get none are absent). Uses accumulate by addition."""
    active = {v for v in wrt if is_float(v.dtype)}  # values that depend on wrt
    for n in nodes:
        if any(v in active for v in n.inputs):
            active.update(v for v in n.outputs if is_float(v.dtype))
    cts = dict(seeds)
    origin = em.origin
    for node in reversed(nodes):
        gs = [cts.get(v) for v in node.outputs]
        needs = [v in active for v in node.inputs]
        if all(g is None for g in gs) or not any(needs):
            continue
        em.origin = f"grad of {node.op}" + (f" at {node.origin}" if node.origin else "")
        grads = _apply_rule(em, node, env, gs, needs)
        for v, g, need in zip(node.inputs, grads, needs):
            if g is None or not need:
                continue
            if g.type != v.type:
                raise KilnError(f"the gradient rule of {node.describe()} gave {g.type} for "
                                f"input %{v.name}: {v.type} (a bug in its rule)")
            cts[v] = cts[v] + g if v in cts else g
    em.origin = origin
    return cts


def _apply_rule(em: Emitter, node: Node, env: Mapping[Value, Var], gs: list[Var | None],
                needs: list[bool]) -> tuple:
    op = node.op
    wanted = ", ".join(f"%{v.name}" for v, need in zip(node.inputs, needs) if need)
    if op in NON_DIFFERENTIABLE:
        raise KilnError(
            f"{node.describe()} is not differentiable ({NON_DIFFERENTIABLE[op]}), but the "
            f"gradient with respect to {wanted} flows through it to the output; compute that "
            "path from values that need no gradient")
    if op in NOT_YET:
        raise KilnError(f"{node.describe()}: no gradient rule yet ({NOT_YET[op]})")
    rule = VJP_RULES.get(op)
    if rule is None:
        raise KilnError(f"{node.describe()}: op {op!r} has no gradient rule and is not declared "
                        "non-differentiable (see kiln/passes/vjp_rules.py)")
    c = VJPContext(em, node, env, needs)
    if len(node.outputs) == 1:
        g: Any = gs[0]
    else:
        g = [gi if gi is not None else c.zeros_like(out) for gi, out in zip(gs, c.outputs)]
    out = rule(c, g)
    out = (out,) if out is None or isinstance(out, Var) else tuple(out)
    if len(out) != len(node.inputs):
        raise KilnError(f"the gradient rule of {node.describe()} gave {len(out)} cotangents for "
                        f"{len(node.inputs)} inputs (a bug in its rule)")
    return out


def grad(graph: Graph, wrt: Sequence[str], output: int = 0) -> Graph:
    """A new graph whose outputs are ``graph.outputs[output]`` (a scalar) followed by its
    gradient with respect to each input or parameter named in ``wrt``, in order.

    Gradients are named ``grad_<name>``; a name the output does not depend on gets zeros.
    Raises a KilnError for a non-scalar or non-float output, an unknown or integer ``wrt``
    name, and a gradient that would have to flow through a non-differentiable op.
    """
    n_out = len(graph.outputs)
    if not -n_out <= output < n_out:
        raise KilnError(f"grad: graph {graph.name!r} has {n_out} outputs; output={output} is "
                        "out of range")
    out = graph.outputs[output]
    if out.type.shape != () or not is_float(out.dtype):
        raise KilnError(f"grad needs a floating-point scalar output (shape ()), but output "
                        f"{output} %{out.name} is {out.type}; reduce it first (sum or mean)")
    sources = {v.name: v for v in (*graph.inputs, *graph.params)}
    targets = []
    for name in wrt:
        v = sources.get(name)
        if v is None:
            what = "an intermediate value" if any(
                o.name == name for n in graph.nodes for o in n.outputs) else "not a value"
            raise KilnError(f"grad: %{name} is {what} of graph {graph.name!r}; gradients are "
                            f"taken with respect to inputs or parameters: {sorted(sources)}")
        if not is_float(v.dtype):
            raise KilnError(f"grad: %{name} is {v.type}; gradients exist only for "
                            "floating-point inputs and parameters")
        targets.append(v)
    em = Emitter(GraphBuilder(f"{graph.name}_grad"))
    env = clone(graph, em)
    cts = backprop(em, graph.nodes, env, {out: em.const(1, out.dtype)}, targets)
    grads = [cts[v] if v in cts else em.zeros_like(env[v]) for v in targets]
    em.origin = "grad"
    named = [em.emit("identity", [g], names=[f"grad_{v.name}"])[0] for g, v in zip(grads, targets)]
    em.builder.output(env[out].value, *(g.value for g in named))
    return eliminate_dead_code(em.builder.build())


