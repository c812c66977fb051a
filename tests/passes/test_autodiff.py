"""Every VJP rule against central finite differences, in float64, on hypothesis-drawn shapes,
attributes and values (as JAX's ``check_grads``): the loss is ``sum(f(x) * r)`` for a random
output direction ``r``, and for each input ``x`` and random input direction ``v`` the
gradient's ``<grad, v>`` must match ``(loss(x + eps v) - loss(x - eps v)) / 2 eps``.

Values are kept away from kinks (relu at 0, clip bounds, ties of max) so that the finite
differences see one smooth piece; the kinks themselves are tested in test_autodiff_models.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from kiln.errors import KilnError
from kiln.ir import OPS, Graph, GraphBuilder, TensorType, interpret, verify
from kiln.passes import grad
from kiln.passes.autodiff import NON_DIFFERENTIABLE, NOT_YET, VJP_RULES

EPS = 1e-6
small = st.integers(1, 4)


def shape(draw, lo: int = 0, hi: int = 3, side: st.SearchStrategy = small) -> tuple:
    return tuple(draw(st.lists(side, min_size=lo, max_size=hi)))


def broadcast_pair(draw) -> tuple[tuple, tuple]:
    s = shape(draw)
    t = [1 if draw(st.booleans()) else d for d in s[draw(st.integers(0, len(s))):]]
    return (s, tuple(t)) if draw(st.booleans()) else (tuple(t), s)


def away(x: np.ndarray, *kinks: float, margin: float = 0.05) -> np.ndarray:
    """x with values near a kink pushed ``margin`` away from it."""
    for k in kinks:
        near = np.abs(x - k) < margin
        x = np.where(near, k + np.where(x >= k, margin, -margin), x)
    return x


def distinct(rng, shape: tuple) -> np.ndarray:
    """Values at least 0.1 apart (no ties), in random order."""
    n = int(np.prod(shape, dtype=int))
    return (rng.permutation(n) * 0.1 - n * 0.05 + 0.01).reshape(shape)


def check(op: str, inputs: list[np.ndarray], attrs: dict, rng, use=None) -> None:
    """Build ``op`` on ``inputs``, take the gradient of sum(out * r), compare with FD."""
    b = GraphBuilder(op)
    xs = [b.input(f"x{i}", TensorType.of(a)) for i, a in enumerate(inputs)]
    try:
        outs = b.op(op, xs, attrs)
    except KilnError:
        assume(False)  # a geometry the op rejects
    loss = None
    for i, o in enumerate(outs):
        if use is not None and not use[i]:
            continue
        r = b.param(f"r{i}", rng.standard_normal(o.shape))
        (term,) = b.op("sum", b.op("mul", [o, r]))
        loss = term if loss is None else b.op("add", [loss, term])[0]
    b.output(loss)
    g = b.build()
    feeds = {f"x{i}": a for i, a in enumerate(inputs)}
    with np.errstate(invalid="ignore"):  # e.g. a max-pool window of padding alone: -inf
        assume(np.isfinite(interpret(g, feeds)[0]))
    wrt = [f"x{i}" for i, a in enumerate(inputs) if a.dtype == np.float64]
    gg = verify(grad(g, wrt))
    value, *grads = interpret(gg, feeds)
    np.testing.assert_allclose(value, interpret(g, feeds)[0], rtol=1e-12)
    for name, gr in zip(wrt, grads):
        assert gr.shape == feeds[name].shape and gr.dtype == np.float64
        for _ in range(2):
            v = rng.standard_normal(gr.shape)
            plus = interpret(g, {**feeds, name: feeds[name] + EPS * v})[0]
            minus = interpret(g, {**feeds, name: feeds[name] - EPS * v})[0]
            numeric = (plus - minus) / (2 * EPS)
            analytic = float(np.sum(gr * v))
            assert abs(numeric - analytic) <= 1e-6 + 1e-5 * abs(numeric), (
                f"{op} {attrs}: d/d{name} along a random direction: finite differences "
                f"{numeric}, gradient {analytic}\n{gg}")


def normal(rng, s, scale=1.0):
    return rng.standard_normal(s) * scale


def positive(rng, s):
    return rng.uniform(0.5, 2.0, s)


# -- cases: op -> fn(draw, rng) -> (inputs, attrs[, use]) ---------------------------------------

UNARY = {
    "neg": normal, "exp": normal, "sin": normal, "cos": normal, "erf": normal,
    "identity": normal, "sigmoid": normal, "tanh": normal, "silu": normal,
    "log": positive, "sqrt": positive, "rsqrt": positive,
    "reciprocal": lambda rng, s: away(normal(rng, s), 0, margin=0.3),
    # all three pieces, off the kinks at -3 and 3
    "hardswish": lambda rng, s: away(away(3 * normal(rng, s), 3, margin=0.2), -3, margin=0.2),
    "abs": lambda rng, s: away(normal(rng, s), 0),
    "relu": lambda rng, s: away(normal(rng, s), 0),
    "heaviside": lambda rng, s: away(normal(rng, s), 0),
}


def _unary(make):
    return lambda draw, rng: ([make(rng, shape(draw))], {})


CASES = {op: _unary(make) for op, make in UNARY.items()}


def case(op: str):
    def wrap(fn):
        CASES[op] = fn
        return fn

    return wrap


def _binary(make_a, make_b):
    def fn(draw, rng):
        sa, sb = broadcast_pair(draw)
        return [make_a(rng, sa), make_b(rng, sb)], {}

    return fn


for _op in ("add", "sub", "mul"):
    CASES[_op] = _binary(normal, normal)
CASES["div"] = _binary(normal, UNARY["reciprocal"])
CASES["pow"] = _binary(positive, normal)
# a grid a quarter off b's: never tied
CASES["maximum"] = CASES["minimum"] = _binary(
    lambda rng, s: rng.integers(-3, 3, s) + 0.25, lambda rng, s: rng.integers(-3, 3, s) + 0.75)


@case("where")
def _where(draw, rng):
    sa, sb = broadcast_pair(draw)
    sc = draw(st.sampled_from([sa, sb, ()]))
    return [rng.random(sc) < 0.5, normal(rng, sa), normal(rng, sb)], {}


@case("cast")
def _cast(draw, rng):
    return [normal(rng, shape(draw))], {"dtype": "float64"}


@case("clip")
def _clip(draw, rng):
    lo = draw(st.one_of(st.none(), st.floats(-1, 0)))
    hi = draw(st.one_of(st.none(), st.floats(0.1, 1)))
    x = away(normal(rng, shape(draw)), *[v for v in (lo, hi) if v is not None])
    return [x], {"min": lo, "max": hi}


@case("hardtanh")
def _hardtanh(draw, rng):
    lo, hi = draw(st.floats(-1.5, -0.1)), draw(st.floats(0.1, 1.5))
    return [away(normal(rng, shape(draw)), lo, hi)], {"min_val": lo, "max_val": hi}


@case("leaky_relu")
def _leaky(draw, rng):
    return [away(normal(rng, shape(draw)), 0)], {"alpha": draw(st.floats(0, 0.5))}


@case("elu")
def _elu(draw, rng):
    return [away(normal(rng, shape(draw)), 0)], {"alpha": draw(st.floats(0.1, 2))}


@case("gelu")
def _gelu(draw, rng):
    return [normal(rng, shape(draw), 2)], {"approximate": draw(st.sampled_from(["none", "tanh"]))}


@case("softplus")
def _softplus(draw, rng):
    beta, threshold = draw(st.floats(0.5, 2)), draw(st.floats(1, 20))
    x = away(normal(rng, shape(draw), 5), threshold / beta)
    return [x], {"beta": beta, "threshold": threshold}


# -- reductions, softmax, matmul ---------------------------------------------------------------


def _reduce_attrs(draw, s: tuple) -> dict:
    axes = None
    if s and draw(st.booleans()):
        axes = tuple(draw(st.sets(st.integers(0, len(s) - 1), min_size=1)))
        axes = tuple(a - len(s) if draw(st.booleans()) else a for a in axes)
    return {"axes": axes, "keepdims": draw(st.booleans())}


def _reduction(make):
    def fn(draw, rng):
        s = shape(draw)
        return [make(rng, s)], _reduce_attrs(draw, s)

    return fn


CASES["sum"] = CASES["mean"] = CASES["logsumexp"] = _reduction(normal)
CASES["max"] = CASES["min"] = _reduction(distinct)
# some exact zeros: one or more per slice
CASES["prod"] = _reduction(lambda rng, s: np.where(rng.random(s) < 0.2, 0.0, normal(rng, s)))


@case("softmax")
def _softmax(draw, rng):
    s = shape(draw, lo=1)
    return [normal(rng, s, 2)], {"axis": draw(st.integers(-len(s), len(s) - 1))}


CASES["log_softmax"] = _softmax


@case("matmul")
def _matmul(draw, rng):
    m, k, n = draw(small), draw(small), draw(small)
    batch = shape(draw, 0, 2, st.integers(1, 3))
    ba, bb = [1 if draw(st.booleans()) else d for d in batch], list(batch)
    ba = ba[draw(st.integers(0, len(ba))):]
    if draw(st.booleans()):
        ba, bb = bb, ba
    a = (k,) if draw(st.booleans()) else (*ba, m, k)
    b = (k,) if draw(st.booleans()) else (*bb, k, n)
    return [normal(rng, a), normal(rng, b)], {}


# -- shape ops ---------------------------------------------------------------------------------


@case("reshape")
def _reshape(draw, rng):
    s = shape(draw)
    n = int(np.prod(s, dtype=int))
    target = draw(st.sampled_from([(n,), (-1,), tuple(reversed(s)), s + (1,), (1, n)]))
    return [normal(rng, s)], {"shape": target}


@case("flatten")
def _flatten(draw, rng):
    s = shape(draw, 0, 4)
    r = max(len(s), 1)
    start = draw(st.integers(0, r - 1))
    return [normal(rng, s)], {"start_dim": start, "end_dim": draw(st.integers(start, r - 1))}


@case("transpose")
def _transpose(draw, rng):
    s = shape(draw)
    perm = draw(st.one_of(st.none(), st.permutations(range(len(s))).map(tuple)))
    return [normal(rng, s)], {"perm": perm}


@case("concat")
def _concat(draw, rng):
    s = shape(draw, lo=1)
    axis = draw(st.integers(0, len(s) - 1))
    sizes = draw(st.lists(st.integers(0, 3), min_size=1, max_size=3))
    xs = [normal(rng, s[:axis] + (k,) + s[axis + 1:]) for k in sizes]
    return xs, {"axis": axis - len(s) if draw(st.booleans()) else axis}


@case("split")
def _split(draw, rng):
    s = shape(draw, lo=1)
    axis = draw(st.integers(0, len(s) - 1))
    cuts = sorted(draw(st.lists(st.integers(0, s[axis]), max_size=3)))
    sizes = tuple(b - a for a, b in zip([0] + cuts, cuts + [s[axis]]))
    use = draw(st.lists(st.booleans(), min_size=len(sizes), max_size=len(sizes)))
    assume(any(use))
    return [normal(rng, s)], {"axis": axis, "sizes": sizes}, use


@case("slice")
def _slice(draw, rng):
    s = shape(draw, 1, 3, st.integers(1, 6))
    axes = draw(st.lists(st.integers(0, len(s) - 1), min_size=1, unique=True))
    bound = st.one_of(st.integers(-7, 7), st.sampled_from([2**62, -(2**62)]))
    steps = [draw(st.sampled_from([-3, -2, -1, 1, 2, 3])) for _ in axes]
    return [normal(rng, s)], {"starts": tuple(draw(bound) for _ in axes),
                              "ends": tuple(draw(bound) for _ in axes),
                              "axes": tuple(axes), "steps": tuple(steps)}


@case("gather")
def _gather(draw, rng):
    s = shape(draw, lo=1)
    axis = draw(st.integers(0, len(s) - 1))
    idx = rng.integers(-s[axis], s[axis], shape(draw, 0, 2))
    return [normal(rng, s), idx.astype(np.int64)], {"axis": axis}


@case("take_along_axis")
def _take_along_axis(draw, rng):
    s = shape(draw, lo=1)
    axis = draw(st.integers(0, len(s) - 1))
    si = tuple(draw(small) if i == axis else draw(st.sampled_from([d, 1])) for i, d in
               enumerate(s))
    s = tuple(1 if i != axis and draw(st.booleans()) else d for i, d in enumerate(s))
    idx = rng.integers(-s[axis], s[axis], si).astype(np.int64)
    return [normal(rng, s), idx], {"axis": axis}


@case("expand")
def _expand(draw, rng):
    s = shape(draw)
    target = shape(draw, 0, 2) + tuple(draw(small) if d == 1 else d for d in s)
    return [normal(rng, s)], {"shape": target}


@case("squeeze")
def _squeeze(draw, rng):
    s = tuple(1 if draw(st.booleans()) else d for d in shape(draw, 0, 4))
    ones = [i for i, d in enumerate(s) if d == 1]
    axes = draw(st.one_of(st.none(), st.lists(st.sampled_from(ones), unique=True).map(tuple))
                ) if ones else None
    return [normal(rng, s)], {"axes": axes}


@case("unsqueeze")
def _unsqueeze(draw, rng):
    s = shape(draw)
    k = draw(st.integers(1, 2))
    axes = draw(st.lists(st.integers(-(len(s) + k), len(s) + k - 1), min_size=k, max_size=k))
    assume(len({a % (len(s) + k) for a in axes}) == k)
    return [normal(rng, s)], {"axes": tuple(axes)}


@case("pad")
def _pad(draw, rng):
    s = shape(draw, 1, 3, st.integers(1, 4))
    mode = draw(st.sampled_from(["constant", "reflect", "edge"]))
    top = (lambda d: d - 1) if mode == "reflect" else (lambda d: 3)
    pads = [draw(st.integers(0, min(2, top(d)))) for d in s + s]
    return [normal(rng, s)], {"pads": tuple(pads), "mode": mode, "value": 0.5}


@case("tril")
def _tril(draw, rng):
    return [normal(rng, shape(draw, 2, 3))], {"k": draw(st.integers(-2, 2))}


CASES["triu"] = _tril


# -- nn ops ------------------------------------------------------------------------------------


def _conv_geometry(draw, r: int, transpose: bool = False) -> dict:
    k = tuple(draw(st.integers(1, 3)) for _ in range(r))
    return {"kernel": k,
            "strides": tuple(draw(st.integers(1, 2)) for _ in range(r)),
            "pads": tuple(draw(st.integers(0, 2)) for _ in range(2 * r)),
            "dilations": tuple(draw(st.integers(1, 2)) for _ in range(r)),
            "groups": draw(st.integers(1, 2))}


def _conv(r: int):
    def fn(draw, rng):
        geo = _conv_geometry(draw, r)
        g = geo.pop("groups")
        c, o = g * draw(st.integers(1, 2)), g * draw(st.integers(1, 2))
        size = tuple(draw(st.integers(1, 6)) for _ in range(r))
        xs = [normal(rng, (draw(st.integers(1, 2)), c) + size),
              normal(rng, (o, c // g) + geo.pop("kernel"))]
        if draw(st.booleans()):
            xs.append(normal(rng, (o,)))
        return xs, {**geo, "groups": g}

    return fn


CASES["conv1d"], CASES["conv2d"] = _conv(1), _conv(2)


@case("conv_transpose2d")
def _conv_transpose2d(draw, rng):
    geo = _conv_geometry(draw, 2)
    g = geo.pop("groups")
    c, og = g * draw(st.integers(1, 2)), draw(st.integers(1, 2))
    limit = [max(s, d) - 1 for s, d in zip(geo["strides"], geo["dilations"])]
    geo["output_padding"] = tuple(draw(st.integers(0, m)) for m in limit)
    xs = [normal(rng, (draw(st.integers(1, 2)), c, draw(small), draw(small))),
          normal(rng, (c, og) + geo.pop("kernel"))]
    if draw(st.booleans()):
        xs.append(normal(rng, (g * og,)))
    return xs, {**geo, "groups": g}


def _pool_attrs(draw, dilated: bool) -> dict:
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    attrs = {"kernel_shape": k,
             "strides": draw(st.one_of(st.none(), st.tuples(st.integers(1, 3),
                                                            st.integers(1, 3)))),
             "pads": tuple(draw(st.integers(0, k[i % 2] // 2)) for i in range(4)),
             "ceil_mode": draw(st.booleans())}
    if dilated:
        attrs["dilations"] = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    else:
        attrs["count_include_pad"] = draw(st.booleans())
    return attrs


def _image(draw, lo: int = 1) -> tuple:
    return (draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(lo, 6)),
            draw(st.integers(lo, 6)))


@case("max_pool2d")
def _max_pool2d(draw, rng):
    return [distinct(rng, _image(draw))], _pool_attrs(draw, True)


@case("avg_pool2d")
def _avg_pool2d(draw, rng):
    return [normal(rng, _image(draw))], _pool_attrs(draw, False)


@case("global_avg_pool2d")
def _global_avg_pool2d(draw, rng):
    return [normal(rng, _image(draw))], {}


@case("batch_norm")
def _batch_norm(draw, rng):
    s = shape(draw, 2, 4)
    c = (s[1],)
    return [normal(rng, s), normal(rng, c), normal(rng, c), normal(rng, c), positive(rng, c)], {
        "epsilon": draw(st.sampled_from([1e-5, 0.1]))}


@case("layer_norm")
def _layer_norm(draw, rng):
    s = shape(draw, 1, 3, st.integers(2, 4))
    axis = draw(st.integers(-len(s), len(s) - 1))
    xs = [normal(rng, s)]
    for _ in range(draw(st.integers(0, 2))):
        xs.append(normal(rng, s[axis % len(s):]))
    return xs, {"axis": axis, "epsilon": 1e-5}


@case("lrn")
def _lrn(draw, rng):
    s = shape(draw, 3, 4)
    return [normal(rng, s, 2)], {"size": draw(st.integers(1, 4)), "alpha": draw(st.floats(0.1, 1)),
                                 "beta": draw(st.floats(0.3, 1)), "bias": draw(st.floats(0.5, 2))}


@case("dropout")
def _dropout(draw, rng):
    return [normal(rng, shape(draw))], {"p": draw(st.sampled_from([0.0, 0.3, 0.5])),
                                        "training": draw(st.booleans()),
                                        "seed": draw(st.integers(0, 2**32 - 1))}


def fused_body(s: tuple) -> Graph:
    """A two-output sub-graph: (tanh(a * b), a + exp(b))."""
    b = GraphBuilder("body")
    x, y = (b.input(n, TensorType(s, "float64")) for n in "ab")
    (t,) = b.op("tanh", b.op("mul", [x, y]))
    (u,) = b.op("add", [x] + b.op("exp", [y]))
    b.output(t, u)
    return b.build()


@case("fused")
def _fused(draw, rng):
    s = shape(draw)
    use = draw(st.sampled_from([(True, True), (True, False), (False, True)]))
    return [normal(rng, s), normal(rng, s)], {"graph": fused_body(s), "pattern": "test"}, use


# -- the tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("op", sorted(CASES))
@given(data=st.data())
def test_vjp_matches_finite_differences(op, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    inputs, attrs, *use = CASES[op](data.draw, rng)
    check(op, inputs, attrs, rng, use[0] if use else None)


def test_every_op_decides_about_its_gradient():
    """Adding an op to kiln.ir.OPS means deciding: a VJP rule, non-differentiable, or not yet
    (with a reason). Every rule is also checked by finite differences above."""
    ops = set(OPS)
    rules, nondiff, later = set(VJP_RULES), set(NON_DIFFERENTIABLE), set(NOT_YET)
    assert not rules & nondiff and not rules & later and not nondiff & later
    undecided = ops - rules - nondiff - later
    assert not undecided, f"ops with no gradient decision: {sorted(undecided)}"
    assert not (rules | nondiff | later) - ops, "entries for ops that do not exist"
    assert all(isinstance(why, str) and why for why in (*NOT_YET.values(),
                                                         *NON_DIFFERENTIABLE.values()))
    assert rules <= set(CASES), f"rules without a finite-difference case: {rules - set(CASES)}"
