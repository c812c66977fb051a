"""The numpy interpreter: the oracle every compiled result is checked against.

It runs each node's numpy reference in order and checks every result against the node's
inferred type, with symbolic dimensions bound from the actual inputs.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from kiln.errors import InputError, KilnError
from kiln.ir.graph import Graph, Value
from kiln.ir.ops import get_op, infer_node
from kiln.ir.types import HALF_DTYPES, Sym, TensorType, to_numpy_dtype


def bind_shape(v: Value, array: np.ndarray, bindings: dict[str, int], what: str) -> None:
    """Check ``array`` against ``v``'s type, binding symbolic dims; raise InputError if off."""
    t = v.type
    if array.dtype.name != t.dtype:
        raise InputError(
            f"{what} %{v.name} expects dtype {t.dtype}, got {array.dtype.name}"
            f" (convert with .astype(np.{t.dtype}) if that is what you mean)"
        )
    if array.ndim != t.rank:
        raise InputError(f"{what} %{v.name} expects shape {t}, got {tuple(array.shape)}")
    # names first (an expression such as 2*N is checked once N has its size)
    pairs = sorted(zip(t.shape, array.shape), key=lambda p: not _is_name(p[0]))
    for want, got in pairs:
        if _is_name(want):
            if bindings.setdefault(want, got) != got:
                raise InputError(
                    f"{what} %{v.name}: dimension {want} is {got} here but "
                    f"{bindings[want]} in an earlier input (shape {t}, got {array.shape})"
                )
        elif isinstance(want, Sym):
            unbound = sorted(want.symbols - set(bindings))
            if unbound:
                raise InputError(
                    f"{what} %{v.name}: dimension {want} (shape {t}) needs the size of "
                    f"{', '.join(unbound)}, which no input dimension gives on its own")
            if want.evaluate(bindings) != got:
                raise InputError(
                    f"{what} %{v.name}: dimension {want} is {want.evaluate(bindings)} with "
                    f"{_sizes(want, bindings)}, got {got} (shape {t}, got {array.shape})")
        elif want != got:
            raise InputError(f"{what} %{v.name} expects shape {t}, got {tuple(array.shape)}")


def _is_name(d) -> bool:
    return isinstance(d, Sym) and d.is_name


def _sizes(d: Sym, bindings: Mapping[str, int]) -> str:
    return ", ".join(f"{s}={bindings[s]}" for s in sorted(d.symbols))


def resolve(t: TensorType, bindings: Mapping[str, int]) -> tuple:
    """``t``'s shape with the symbolic sizes ``bindings`` fixes evaluated (others kept)."""
    return tuple(_resolve_dim(d, bindings) for d in t.shape)


def _resolve_dim(d, bindings: Mapping[str, int]):
    if isinstance(d, Sym) and d.symbols <= bindings.keys():
        return d.evaluate(bindings)
    return d


def resolve_attrs(attrs: Mapping, bindings: Mapping[str, int]) -> Mapping:
    """Attributes with the symbolic sizes in them (a reshape's target shape) evaluated."""
    def fix(v):
        if isinstance(v, Sym):
            return _resolve_dim(v, bindings)
        if isinstance(v, tuple) and any(isinstance(x, (Sym, tuple)) for x in v):
            return tuple(fix(x) for x in v)
        return v
    if not bindings or not any(isinstance(v, (Sym, tuple)) for v in attrs.values()):
        return attrs
    return {k: fix(v) for k, v in attrs.items()}


def interpret(
    graph: Graph,
    inputs: Mapping[str, np.ndarray],
    params: Mapping[str, np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Run ``graph`` on numpy arrays; returns the outputs in order.

    ``params`` overrides (or supplies) the graph's stored weights by name.
    """
    env = _run(graph, inputs, params)
    return [env[v] for v in graph.outputs]


def interpret_values(
    graph: Graph,
    inputs: Mapping[str, np.ndarray],
    params: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Run ``graph`` and return every value it holds (inputs, parameters, intermediates and
    outputs) by name: the reference side of a per-node comparison (``kiln.compare``)."""
    return {v.name: a for v, a in _run(graph, inputs, params).items()}


def _run(graph: Graph, inputs: Mapping[str, np.ndarray],
         params: Mapping[str, np.ndarray] | None) -> dict[Value, np.ndarray]:
    missing = [v.name for v in graph.inputs if v.name not in inputs]
    extra = sorted(set(inputs) - set(graph.input_names))
    if missing or extra:
        raise InputError(
            f"graph {graph.name!r} takes inputs {graph.input_names}; "
            f"missing {missing}, unexpected {extra}"
        )
    weights = dict(graph.weights)
    weights.update(params or {})
    env: dict[Value, np.ndarray] = {}
    bindings: dict[str, int] = {}
    for v in graph.inputs:
        env[v] = np.asarray(inputs[v.name])
        bind_shape(v, env[v], bindings, "input")
    for v in graph.params:
        if v.name not in weights:
            raise InputError(f"parameter %{v.name} ({v.type}) has no value; pass it in params")
        env[v] = np.asarray(weights[v.name])
        bind_shape(v, env[v], bindings, "parameter")
    for node in graph.nodes:
        results = run_node(node, [env[v] for v in node.inputs], bindings)
        for v, r in zip(node.outputs, results):
            if r.dtype.name != v.dtype or r.shape != resolve(v.type, bindings):
                if r.dtype.name == v.dtype and _binds_new_symbols(v.type, r.shape, bindings):
                    env[v] = r
                    continue
                _check_requirements(node, bindings)
                raise KilnError(
                    f"{node.describe()}: reference gave {r.dtype.name}{list(r.shape)}, but type "
                    f"inference says {v.type}: a bug in op {node.op!r}"
                )
            env[v] = r
    return env


def _check_requirements(node, bindings: Mapping[str, int]) -> None:
    """A slice that a symbolic size takes out of its range is the input's fault: say so."""
    from kiln.ir.ops.shape import slice_requirements

    if node.op != "slice":
        return
    for dim, low, high in slice_requirements(node.inputs[0].type, node.attrs):
        if not dim.symbols <= bindings.keys():
            continue
        value = dim.evaluate(bindings)
        if value < low or high is not None and value > high:
            allowed = f"at least {low}" if high is None else f"within {low}..{high}"
            raise InputError(f"{node.describe()} needs {dim} to be {allowed}; it is {value} "
                             f"with {_sizes(dim, bindings)}")


def _binds_new_symbols(t: TensorType, shape: tuple, bindings: dict[str, int]) -> bool:
    """Accept a result whose unbound symbolic dims take their first concrete size here."""
    if len(shape) != t.rank:
        return False
    for want, got in zip(t.shape, shape):
        if _is_name(want):
            if bindings.setdefault(want, got) != got:
                return False
        elif _resolve_dim(want, bindings) != got:
            return False
    return True


def run_node(node, args: list[np.ndarray], bindings: Mapping[str, int] | None = None
             ) -> list[np.ndarray]:
    """Run one node's reference (its symbolic attributes sized by ``bindings``); failures
    are reported with the node they happened in."""
    attrs = resolve_attrs(node.attrs, bindings) if bindings else node.attrs
    return _call_reference(node.op, args, attrs, [v.dtype for v in node.outputs],
                           node.describe())


def evaluate(op: str, args: list[np.ndarray], attrs: Mapping, origin: str = ""
             ) -> list[np.ndarray]:
    """Constant folding's one primitive: ``op`` on constant arrays, attributes completed and
    checked, each result checked against type inference (a frontend folding ``op`` and a
    pass folding a node get the same arrays and the same errors)."""
    values = [Value(f"c{i}", TensorType.of(a)) for i, a in enumerate(args)]
    full, types = infer_node(op, values, attrs, origin=origin)
    where = f"{op}" + (f" at {origin}" if origin else "")
    outs = _call_reference(op, args, full, [t.dtype for t in types], where)
    for a, t in zip(outs, types):
        if a.dtype.name != t.dtype or a.shape != t.shape:
            raise KilnError(f"folding {where}: reference gave {a.dtype.name}{list(a.shape)}, "
                            f"inference says {t}")
    return outs


def _call_reference(op: str, args: list[np.ndarray], attrs: Mapping, out_dtypes: list[str],
                    where: str) -> list[np.ndarray]:
    """Run ``op``'s reference. An op on float16/bfloat16 computes in float32 and rounds its
    results to their types, as compiled code does (a matmul accumulates in float32)."""
    opdef = get_op(op)
    # (a fused node's reference interprets its body, node by node)
    half = op != "fused" and any(a.dtype.name in HALF_DTYPES for a in args)
    if half:
        args = [a.astype(np.float32) if a.dtype.name in HALF_DTYPES else a for a in args]
    try:
        # NaN, inf and overflow are results with defined rules (docs/ops.md, "Non-finite
        # values"), not mistakes to warn about
        with np.errstate(all="ignore"):
            result = opdef.reference(*args, **attrs)
    except KilnError as e:
        raise type(e)(f"{where}: {e}") from None
    except Exception as e:  # a numpy error inside a reference: say where it happened
        shapes = ", ".join(f"{a.dtype.name}{list(a.shape)}" for a in args)
        raise KilnError(f"{where} failed on inputs ({shapes}): {e}") from e
    results = list(result) if isinstance(result, (tuple, list)) else [result]
    if len(results) != len(out_dtypes):
        raise KilnError(f"{where}: reference gave {len(results)} outputs")
    results = [np.asarray(r) for r in results]
    if half:
        results = [r.astype(to_numpy_dtype(d)) if d in HALF_DTYPES else r
                   for r, d in zip(results, out_dtypes)]
    return results
