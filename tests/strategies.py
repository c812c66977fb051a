"""Hypothesis strategies shared by the IR, pass and fuzz tests.

``graphs()`` draws random well-typed graphs: a few inputs over a base shape of static and
symbolic dims, then nodes picked from unary, binary, reduction, softmax, matmul, split,
comparison, ``where``, logic and cast ops with random attributes, value names that need quoting
in the text form and origins holding '#' and ':'. Every node goes through ``GraphBuilder.op``,
so the graph is well typed by construction; a draw that type inference rejects is skipped.
``graph_inputs`` makes matching numpy inputs, binding each symbolic dim to one size.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from kiln.errors import KilnError
from kiln.ir import Graph, GraphBuilder, TensorType, Value

SYMBOLS = ("N", "B", "seq", "T_1")
PLAIN_NAMES = ("x", "y", "h", "fc1.weight", "0", "h_2", "a.b.c", "T")
# names the printer must quote: spaces, '/', quotes, escapes, '#', '%', ':', braces, non-ASCII
WEIRD_NAMES = ("a b", "x/y", 'q"uote', "back\\slash", "", "#c", "%p", "tab\there", "ü",
               "new\nline", "{a}", "x:y", "=", "1 2", "-1", "graph", "return")
ORIGINS = ("model.py:12", "onnx:Conv_3", "a#b", "x.py:3 # again", "c:\\m.py:7", "#", ":")
# float attributes that stress the text form: signed zero, infinities, nan, tiny and huge
WEIRD_FLOATS = (math.inf, -math.inf, math.nan, 1e-30, -0.0, 0.0, 5e-324, 1.7976931348623157e308,
                0.1, 1 / 3, -2.5e-8)


def value_names() -> st.SearchStrategy[str]:
    """Value (and graph) names: plain ones, ones that need quoting, and arbitrary text."""
    return st.one_of(st.sampled_from(PLAIN_NAMES), st.sampled_from(WEIRD_NAMES),
                     st.text(max_size=6))


def origins() -> st.SearchStrategy[str]:
    """Node origins. The text form keeps an origin as a trailing comment, so it has no line
    break and no surrounding whitespace (the parser strips it)."""
    free = st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=12)
    return st.one_of(st.just(""), st.sampled_from(ORIGINS),
                     free.filter(lambda s: s == s.strip()))


def float_attrs(weird: bool = True) -> st.SearchStrategy[float]:
    """Floats for attributes such as alpha; ``weird`` adds inf, nan, -0.0 and extremes."""
    tame = st.floats(-2, 2, allow_subnormal=False)
    return st.one_of(tame, st.sampled_from(WEIRD_FLOATS), st.floats()) if weird else tame


def dims(symbolic: bool = True) -> st.SearchStrategy:
    """One dimension: a small static size or (if ``symbolic``) a symbol from SYMBOLS."""
    static = st.integers(1, 4)
    return st.one_of(static, st.sampled_from(SYMBOLS)) if symbolic else static


UNARY = ("relu", "neg", "exp", "tanh", "sigmoid", "abs", "sin", "identity", "leaky_relu",
         "elu", "gelu", "softplus", "hardtanh", "heaviside", "clip", "hardswish")
BINARY = ("add", "sub", "mul", "div", "maximum", "minimum", "pow")
REDUCE = ("sum", "mean", "max", "min", "logsumexp", "prod")
KINDS = ("unary", "binary", "reduce", "arg", "softmax", "matmul", "split", "compare", "where",
         "logical", "cast")


def _unary_attrs(draw, op: str, weird: bool) -> dict:
    if not draw(st.booleans()):
        return {}  # the defaults
    if op in ("leaky_relu", "elu"):
        return {"alpha": draw(float_attrs(weird))}
    if op == "heaviside":
        return {"value_at_zero": draw(float_attrs(weird))}
    if op == "gelu":
        return {"approximate": draw(st.sampled_from(["none", "tanh"]))}
    if op == "softplus":
        return {"beta": draw(st.floats(0.5, 2)), "threshold": draw(st.floats(1, 30))}
    if op in ("hardtanh", "clip"):
        lo, hi = sorted(draw(st.lists(st.floats(-3, 3), min_size=2, max_size=2)))
        if op == "hardtanh":
            return {"min_val": lo, "max_val": hi}
        return {"min": draw(st.sampled_from([None, lo])), "max": draw(st.sampled_from([None, hi]))}
    return {}


def _axes(draw, rank: int):
    """None, or a set of axes each written as a positive or negative index."""
    if rank == 0 or draw(st.booleans()):
        return None
    axes = draw(st.lists(st.integers(0, rank - 1), min_size=1, max_size=rank, unique=True))
    return tuple(a - rank if draw(st.booleans()) else a for a in axes)


@st.composite
def graphs(draw, max_nodes: int = 8, symbolic: bool = True, weird_names: bool = True,
           weird_floats: bool = True) -> Graph:
    """A random well-typed graph (see the module docstring). Float inputs are float32."""
    names = value_names() if weird_names else st.sampled_from(PLAIN_NAMES)
    b = GraphBuilder(draw(names))
    base = draw(st.lists(dims(symbolic), max_size=3))

    def sub_shape() -> tuple:
        """``base`` with some dims replaced by 1 and some leading dims dropped."""
        cut = draw(st.integers(0, len(base)))
        return tuple(1 if draw(st.booleans()) and draw(st.booleans()) else d for d in base[cut:])

    pools: dict[str, list[Value]] = {"float32": [], "bool": [], "int64": []}
    input_names = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    for i, n in enumerate(input_names):
        pools["float32"].append(b.input(n, TensorType(tuple(base) if i == 0 else sub_shape())))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))

    def param(shape: tuple) -> Value:
        taken = {v.name for pool in pools.values() for v in pool}
        n = hint = draw(names)
        for k in range(1, len(taken) + 2):
            if n not in taken:
                break
            n = f"{hint}_{k}"
        v = b.param(n, rng.standard_normal(shape).astype(np.float32))
        pools["float32"].append(v)
        return v

    if draw(st.booleans()):
        static = tuple(d if isinstance(d, int) else 1 for d in sub_shape())
        param(static)

    def pick(dtype: str) -> Value:
        return draw(st.sampled_from(pools[dtype]))

    def add(op: str, inputs: list[Value], attrs: dict, n_out: int = 1) -> list[Value] | None:
        hints = [draw(st.one_of(st.none(), names)) for _ in range(n_out)]
        try:
            outs = b.op(op, inputs, attrs, origin=draw(origins()), names=hints)
        except KilnError:
            return None  # a draw that inference rejects (shapes do not fit): skip it
        for v in outs:
            pools[v.dtype].append(v)
        return outs

    n_nodes = draw(st.integers(1, max_nodes))
    made: list[Value] = []
    for _ in range(n_nodes):
        kind = draw(st.sampled_from(KINDS))
        x = pick("float32")
        outs = None
        if kind == "unary":
            op = draw(st.sampled_from(UNARY))
            outs = add(op, [x], _unary_attrs(draw, op, weird_floats))
        elif kind == "binary":
            outs = add(draw(st.sampled_from(BINARY)), [x, pick("float32")], {})
        elif kind == "reduce":
            attrs = {"axes": _axes(draw, x.type.rank), "keepdims": draw(st.booleans())}
            outs = add(draw(st.sampled_from(REDUCE)), [x], attrs)
        elif kind == "arg" and x.type.rank:
            attrs = {"axis": draw(st.integers(-x.type.rank, x.type.rank - 1)),
                     "keepdims": draw(st.booleans())}
            outs = add(draw(st.sampled_from(["argmax", "argmin"])), [x], attrs)
        elif kind == "softmax" and x.type.rank:
            attrs = {"axis": draw(st.integers(-x.type.rank, x.type.rank - 1))}
            outs = add(draw(st.sampled_from(["softmax", "log_softmax"])), [x], attrs)
        elif kind == "matmul" and x.type.rank:
            k = x.type.shape[-1]
            if isinstance(k, int) and draw(st.booleans()):
                shape = (k, draw(st.integers(1, 3))) if draw(st.booleans()) else (k,)
                y = param(shape)
            else:
                y = pick("float32")
            outs = add("matmul", [x, y], {})
        elif kind == "split" and x.type.rank:
            axes = [a for a, d in enumerate(x.type.shape) if isinstance(d, int) and d >= 2]
            if axes:
                axis = draw(st.sampled_from(axes))
                cut = draw(st.integers(1, x.type.shape[axis] - 1))
                attrs = {"axis": axis - x.type.rank if draw(st.booleans()) else axis,
                         "sizes": (cut, x.type.shape[axis] - cut)}
                outs = add("split", [x], attrs, n_out=2)
        elif kind == "compare":
            op = draw(st.sampled_from(["less", "greater_equal", "equal", "not_equal"]))
            outs = add(op, [x, pick("float32")], {})
        elif kind == "where" and pools["bool"]:
            outs = add("where", [pick("bool"), x, pick("float32")], {})
        elif kind == "logical" and pools["bool"]:
            if draw(st.booleans()):
                outs = add("logical_not", [pick("bool")], {})
            else:
                outs = add(draw(st.sampled_from(["logical_and", "logical_or", "logical_xor"])),
                           [pick("bool"), pick("bool")], {})
        elif kind == "cast":
            src = draw(st.sampled_from([d for d in pools if pools[d]]))
            outs = add("cast", [pick(src)], {"dtype": draw(st.sampled_from(sorted(pools)))})
        made += outs or []
    if not made:
        made += add("identity", [pick("float32")], {}) or []
    # the last value made, and a few others (inputs included)
    every = [v for pool in pools.values() for v in pool]
    others = draw(st.lists(st.sampled_from(every), max_size=3, unique_by=id))
    b.output(*dict.fromkeys([made[-1], *others]))
    return b.build()


def graph_inputs(graph: Graph, seed: int = 0, sizes: dict[str, int] | None = None):
    """Random inputs for ``graph``: standard normal floats, small ints, random bools.

    Each symbolic dimension takes its size from ``sizes`` (default: 2, or 3 for odd-length
    names, so that two symbols rarely coincide).
    """
    rng = np.random.default_rng(seed)
    sizes = dict(sizes or {})
    out = {}
    for v in graph.inputs:
        shape = tuple(d if isinstance(d, int) else sizes.setdefault(d, 2 + len(d) % 2)
                      for d in v.shape)
        if v.dtype == "bool":
            out[v.name] = rng.random(shape) < 0.5
        elif v.dtype.startswith(("int", "uint")):
            out[v.name] = rng.integers(0, 5, shape).astype(v.dtype)
        else:
            out[v.name] = rng.standard_normal(shape).astype(v.dtype)
    return out
