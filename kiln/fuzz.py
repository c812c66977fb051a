"""Graph fuzzing: random well-typed graphs built from the patterns the passes look for, and the
properties every pass must keep. Used by tests/fuzz and by ``kiln fuzz``.

The graphs are drawn with hypothesis (a test-time dependency, imported lazily): blocks of
dense + bias + activation, attention scores with scale and padding/causal masks, conv (plain,
grouped, depthwise; after a zero or edge Pad) + batch norm + relu (+ residual), layer norm,
reductions, foldable constant math, neutral elements, transpose/reshape chains and duplicated
nodes, chained on each other's outputs. A failing case shrinks to a small graph, reported in
the text IR.

Some examples carry non-finite and extreme values (NaN, +-inf, -0.0, huge, tiny, denormal) in
their inputs and constants, and results are compared with NaN and inf positions exact
(``mismatch``): kiln's rules for them (docs/ops.md, "Non-finite values") are the
interpreter's, compiled or optimized alike. Huge finite values go only where no result
depends on the order of evaluation (``huge_safe``).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from kiln.errors import KilnError
from kiln.ir import Graph, GraphBuilder, TensorType, Value, interpret, verify

# Values whose every sum and product gives the same result in any order and with or without
# fused multiply-adds: NaN and inf absorb (inf - inf is NaN whichever comes first), and tiny
# or denormal values vanish below the tolerance either way.
ANYWHERE = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-38, -1e-38, 1e-42, -1e-42],
                    np.float32)
# Finite values near float32's limit: sums of a few overflow in one order and not another, and
# LLVM's fused multiply-add keeps a product that numpy rounds to inf (fma(1e38, 4, -inf) is
# -inf, 1e38 * 4 - inf is NaN). They go only into values that ``huge_safe`` clears.
HUGE = np.array([1e38, -1e38, 3e38, -3e38, 1.7e38], np.float32)
EXTREME_SHARE = 0.3  # of the examples carry extreme values (inputs and constants each)
EXTREME_DENSITY = 0.15  # of the elements of such an example's arrays are replaced

# Ops through which a huge value passes with a result of one rounding per element (no sum, no
# product that could be fused with an add: not mul, nor div, which TVM may turn into a
# multiply by the reciprocal): it stays huge-safe past them.
HUGE_TRANSPARENT = {
    "neg", "abs", "relu", "identity", "sqrt", "add", "sub", "pow", "maximum",
    "minimum", "where", "gelu", "silu", "hardswish", "reshape", "transpose", "pad", "split",
    "slice", "concat", "expand", "max", "min", "max_pool2d",
}
# Ops whose results are bounded or exact whatever their input (inf and 0 included), so a
# huge value may feed them whatever follows: tanh/sigmoid/exp saturate, softmax sums values
# of [0, 1], comparisons give bools.
HUGE_BOUNDING = {
    "tanh", "sigmoid", "exp", "softmax", "log_softmax", "equal", "not_equal", "less",
    "less_equal", "greater", "greater_equal", "argmax", "argmin",
}

ACTIVATIONS = ("relu", "gelu", "sigmoid", "tanh", "silu", "hardswish", None)
UNARY = ("relu", "exp", "tanh", "sigmoid", "neg", "abs", "sqrt", "silu", "gelu", "hardswish")
BINARY = ("add", "sub", "mul", "maximum", "minimum")


def _strategies():
    try:
        from hypothesis import strategies as st
    except ImportError:  # pragma: no cover - hypothesis is in the test extra
        raise KilnError("fuzzing needs hypothesis: pip install 'kiln[test]'") from None
    return st


class _Draw:
    """Builds one random graph block by block from hypothesis draws."""

    def __init__(self, draw, rng: np.random.Generator):
        self.draw, self.rng = draw, rng
        self.b = GraphBuilder("fuzz")
        self.pool: list[Value] = []  # float32 values blocks may build on
        self.counter = 0
        self.weights: dict[str, np.ndarray] = {}  # drawn constants, by name

    def st(self):
        return _strategies()

    def weight(self, shape, scale: float = 0.5, positive: bool = False) -> Value:
        self.counter += 1
        a = self.rng.standard_normal(shape).astype(np.float32) * scale
        name = f"w{self.counter}"
        self.weights[name] = np.abs(a) + 0.5 if positive else a
        return self.b.param(name, self.weights[name])

    def scalar(self, value: float) -> Value:
        return self.op("full", [], shape=(), value=float(value))

    def op(self, op: str, inputs, **attrs) -> Value:
        return self.b.op(op, list(inputs), attrs)[0]

    def value(self, rank: int | None = None) -> Value:
        """An existing float32 value of ``rank`` (or a new input)."""
        st = self.st()
        fits = [v for v in self.pool if rank is None or v.type.rank == rank]
        if fits and self.draw(st.booleans()):
            return self.draw(st.sampled_from(fits))
        shape = tuple(self.draw(st.integers(1, 5)) for _ in range(rank or self.draw(
            st.integers(1, 3))))
        v = self.b.input(f"in{len(self.b.inputs)}", TensorType(shape))
        return v

    # -- blocks ---------------------------------------------------------------------------------
    def dense(self) -> Value:
        x = self.value(2)
        n = self.draw(self.st().integers(1, 6))
        y = self.op("matmul", [x, self.weight((x.shape[1], n))])
        if self.draw(self.st().booleans()):
            y = self.op("add", [y, self.weight((n,))])
        act = self.draw(self.st().sampled_from(ACTIVATIONS))
        return self.op(act, [y]) if act else y

    def attention(self) -> Value:
        st = self.st()
        q = self.value(3)
        b, l, d = q.shape
        s = self.draw(st.integers(1, 4))
        k = self.b.input(f"in{len(self.b.inputs)}", TensorType((b, s, d)))
        kt = self.op("transpose", [k], perm=(0, 2, 1))
        spelling = self.draw(st.sampled_from(("none", "mul", "div", "scale_q")))
        if spelling == "scale_q":  # (q * s) @ k.T: simplify moves the scale after the matmul
            q = self.op("mul", [q, self.scalar(1 / math.sqrt(d))])
        scores = self.op("matmul", [q, kt])
        if spelling == "mul":
            scores = self.op("mul", [scores, self.scalar(1 / math.sqrt(d))])
        elif spelling == "div":
            scores = self.op("div", [scores, self.scalar(math.sqrt(d))])
        mask = self.draw(st.sampled_from(("none", "additive", "padding", "causal")))
        if mask == "additive":
            scores = self.op("add", [scores, self.weight((1, l, s))])
        elif mask == "padding":
            keep = self.b.input(f"in{len(self.b.inputs)}", TensorType((b, 1, s), "bool"))
            scores = self.op("where", [keep, scores, self.scalar(-1e9)])
        elif mask == "causal":
            ones = self.op("full", [], shape=(l, s), value=1.0)
            tri = self.op("tril", [ones])
            cond = self.op("greater", [tri, self.scalar(0.5)])
            scores = self.op("where", [cond, scores, self.scalar(-1e9)])
        return self.op("softmax", [scores], axis=-1)

    def conv(self) -> Value:
        st = self.st()
        x = self.value(4)
        n, c, h, w = x.shape
        o = self.draw(st.sampled_from((1, 2, 3, 4, 8, 16)))  # 8, 16: the layout pass blocks
        k = self.draw(st.sampled_from((1, 3)))
        pad = k // 2
        # grouped (blocked by groups in codegen) and depthwise convolutions too
        groups = self.draw(st.sampled_from([g for g in (1, 2, 4, c) if c % g == 0 and o % g == 0]))
        source = x
        if self.draw(st.booleans()):  # "same" padding spelled as a Pad before the conv
            mode = self.draw(st.sampled_from(("constant", "constant", "edge")))
            source = self.op("pad", [x], pads=(0, 0, pad, pad, 0, 0, pad, pad), mode=mode)
            pad = 0
        y = self.op("conv2d", [source, self.weight((o, c // groups, k, k))] +
                    ([self.weight((o,))] if self.draw(st.booleans()) else []),
                    pads=(pad,) * 4, groups=groups)
        if self.draw(st.booleans()):
            y = self.op("batch_norm", [y, self.weight((o,), positive=True), self.weight((o,)),
                                       self.weight((o,)), self.weight((o,), positive=True)])
        if o == c and self.draw(st.booleans()):
            y = self.op("add", [y, x])
        y = self.op("relu", [y]) if self.draw(st.booleans()) else y
        pool = self.draw(st.sampled_from((None, "max_pool2d", "avg_pool2d", "global_avg_pool2d")))
        if pool == "global_avg_pool2d":
            return self.op(pool, [y])
        return self.op(pool, [y], kernel_shape=(min(h, 2), min(w, 2)), strides=(1, 1)) \
            if pool else y

    def norm(self) -> Value:
        x = self.value()
        d = x.shape[-1]
        if self.draw(self.st().booleans()):
            x = self.op("add", [x, self.value_like(x)])
        return self.op("layer_norm", [x, self.weight((d,), positive=True), self.weight((d,))])

    def value_like(self, v: Value) -> Value:
        fits = [u for u in self.pool if u.type == v.type]
        if fits and self.draw(self.st().booleans()):
            return self.draw(self.st().sampled_from(fits))
        return self.b.input(f"in{len(self.b.inputs)}", v.type)

    def reduce(self) -> Value:
        x = self.value()
        op = self.draw(self.st().sampled_from(("sum", "mean", "max", "logsumexp")))
        r = self.op(op, [x], axes=(-1,), keepdims=True)
        return self.op("sub", [x, r])

    def constants(self) -> Value:
        """Weight math that folds: transpose(W) * 2, then used by a matmul."""
        x = self.value(2)
        n = self.draw(self.st().integers(1, 4))
        wt = self.op("transpose", [self.weight((n, x.shape[1]))])
        wt = self.op("mul", [wt, self.scalar(self.draw(self.st().sampled_from((2.0, 0.5))))])
        return self.op("matmul", [x, wt])

    def neutral(self) -> Value:
        x = self.value()
        kind = self.draw(self.st().sampled_from(("add0", "mul1", "div", "pow1", "negneg")))
        if kind == "add0":
            return self.op("add", [x, self.b.param(f"zero{self.counter}_{len(self.pool)}",
                                                   np.zeros(x.shape[-1:], np.float32))])
        if kind == "mul1":
            return self.op("mul", [self.scalar(1.0), x])
        if kind == "div":
            return self.op("div", [x, self.scalar(self.draw(self.st().sampled_from((4.0, 3.0))))])
        if kind == "pow1":
            return self.op("pow", [x, self.scalar(1.0)])
        return self.op("neg", [self.op("neg", [x])])

    def reshape_chain(self) -> Value:
        x = self.value()
        if x.type.rank >= 2 and self.draw(self.st().booleans()):
            perm = tuple(self.draw(self.st().permutations(range(x.type.rank))))
            y = self.op("transpose", [x], perm=perm)
            perm2 = tuple(self.draw(self.st().permutations(range(x.type.rank))))
            return self.op("transpose", [y], perm=perm2)
        flat = self.op("reshape", [x], shape=(-1,))
        return self.op("reshape", [flat], shape=x.shape)

    def elementwise(self) -> Value:
        st = self.st()
        x = self.value()
        if self.draw(st.booleans()):
            op = self.draw(st.sampled_from(UNARY))
            return self.op(op, [self.op("abs", [x]) if op == "sqrt" else x])
        return self.op(self.draw(st.sampled_from(BINARY)), [x, self.value_like(x)])

    def lstm_cell(self) -> Value:
        """Gates from one split, combined elementwise: a multi-output node inside a chain."""
        x = self.value(2)
        h = x.shape[1]
        z = self.op("matmul", [x, self.weight((h, 4 * h))])
        i, f, g, o = self.b.op("split", [z], {"axis": 1, "sizes": (h,) * 4})
        c = self.op("add", [self.op("mul", [self.op("sigmoid", [f]), x]),
                            self.op("mul", [self.op("sigmoid", [i]), self.op("tanh", [g])])])
        self.pool.append(c)
        return self.op("mul", [self.op("sigmoid", [o]), self.op("tanh", [c])])

    def duplicate(self) -> Value:
        x = self.value()
        return self.op("add", [self.op("tanh", [x]), self.op("tanh", [x])])


BLOCKS = ("dense", "attention", "conv", "norm", "reduce", "constants", "neutral",
          "reshape_chain", "elementwise", "duplicate", "lstm_cell")


def graphs(max_blocks: int = 5, extremes: bool = False):
    """A hypothesis strategy of random well-typed graphs with fusion-shaped patterns; with
    ``extremes``, EXTREME_SHARE of them hold extreme values in their constants."""
    st = _strategies()

    @st.composite
    def build(draw) -> Graph:
        d = _Draw(draw, np.random.default_rng(draw(st.integers(0, 2**32 - 1))))
        for name in draw(st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=max_blocks)):
            d.pool.append(getattr(d, name)())
        outs = [d.pool[-1]] + draw(st.lists(st.sampled_from(d.pool), max_size=2))
        d.b.output(*dict.fromkeys(outs))
        graph = d.b.build()
        if extremes and draw(st.integers(0, 99)) < 100 * EXTREME_SHARE:
            safe, folded = huge_safe(graph), folded_constants(graph)
            for v in graph.params:  # in place: the graph holds these arrays
                if v.name in d.weights and v not in folded:
                    _sprinkle(d.weights[v.name], d.rng, huge=safe[v])
        return verify(graph)

    return build()


def folded_constants(graph: Graph) -> set[Value]:
    """The parameters whose arithmetic the passes rewrite: a batch norm's, and those of the
    convolution it folds into (w * s, (b - mean) * s + beta; or the layout pass's scale and
    shift). Exact for finite weights, not for extreme ones: a weight of inf times a scale
    that underflows to 0 is NaN after folding, inf before; onnxruntime folds the same way.
    The fuzzer leaves these finite."""
    out: set[Value] = set()
    producers, params = graph.producers, set(graph.params)
    for node in graph.nodes:
        if node.op != "batch_norm":
            continue
        out.update(v for v in node.inputs[1:] if v in params)
        conv = producers.get(node.inputs[0])
        if conv is not None and conv.op == "conv2d":
            out.update(v for v in conv.inputs[1:] if v in params)
    return out


def huge_safe(graph: Graph) -> dict[Value, bool]:
    """For each input and parameter: may it hold huge finite values? Only if on every path
    to an output it meets a HUGE_BOUNDING op before any op outside HUGE_TRANSPARENT (a sum,
    a matmul, a normalization, a multiply an add could be fused with)."""
    users, memo = graph.users, {}

    def safe(v: Value) -> bool:
        if v not in memo:
            memo[v] = True  # no cycles in a graph; this only stops repeated work
            memo[v] = all(u.op in HUGE_BOUNDING or (u.op in HUGE_TRANSPARENT and all(
                safe(o) for o in u.outputs)) for u in users.get(v, []))
        return memo[v]

    return {v: safe(v) for v in (*graph.inputs, *graph.params)}


def _sprinkle(a: np.ndarray, rng: np.random.Generator, huge: bool) -> None:
    """Replace EXTREME_DENSITY of ``a``'s elements by extreme values, in place."""
    values = np.concatenate([ANYWHERE, HUGE]) if huge else ANYWHERE
    where = rng.random(a.shape) < EXTREME_DENSITY
    a[where] = rng.choice(values, size=int(where.sum())).astype(a.dtype)


def random_inputs(graph: Graph, seed: int = 0, extremes: bool = False,
                  share: float = EXTREME_SHARE) -> dict[str, np.ndarray]:
    """Inputs for ``graph``, the same for the same seed. With ``extremes``, ``share`` of the
    graphs (decided by the seed and the graph's text) get extreme values, huge ones only in
    the inputs ``huge_safe`` clears."""
    rng = np.random.default_rng(seed)
    out = {}
    for v in graph.inputs:
        if v.dtype == "bool":
            out[v.name] = rng.random(v.type.shape) < 0.7
        else:
            out[v.name] = rng.standard_normal(v.type.shape).astype(v.dtype)
    if extremes:
        rng = np.random.default_rng([seed, _text_hash(graph)])
        if rng.random() < share:
            safe = huge_safe(graph)
            for v in graph.inputs:
                if v.dtype != "bool":
                    _sprinkle(out[v.name], rng, huge=safe[v])
    return out


def _text_hash(graph: Graph) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(str(graph).encode()).digest()[:8], "little")


def mismatch(want: np.ndarray, got: np.ndarray, rtol: float, atol: float) -> str | None:
    """Why ``got`` is not ``want`` (None if it is): shapes and dtypes equal, NaN exactly where
    ``want`` has NaN, +inf and -inf exactly where it has them, other floats within
    ``rtol``/``atol``, everything else equal."""
    if want.shape != got.shape or want.dtype != got.dtype:
        return f"{got.dtype}{list(got.shape)} instead of {want.dtype}{list(want.shape)}"
    if want.dtype.kind != "f" and want.dtype.name != "bfloat16":  # (ml_dtypes' kind is V)
        bad = want != got
    else:
        w, g = want.astype(np.float64), got.astype(np.float64)
        same_class = (np.isnan(w) == np.isnan(g)) & ((w == np.inf) == (g == np.inf)) & (
            (w == -np.inf) == (g == -np.inf))
        finite = np.isfinite(w) & np.isfinite(g)
        with np.errstate(invalid="ignore", over="ignore"):
            close = np.abs(w - g) <= atol + rtol * np.abs(w)
        bad = ~same_class | (finite & ~close)
    if not bad.any():
        return None
    at = tuple(int(i) for i in np.argwhere(bad)[0])
    return (f"{int(bad.sum())} element(s) differ, first at {list(at)}: {got[at]} instead of "
            f"{want[at]}")


def assert_same_results(before: Graph, after: Graph, what: str, rtol: float = 1e-4,
                        atol: float = 1e-5, inputs: dict | None = None) -> None:
    """Interpret both graphs on the same inputs; raise AssertionError with the IR if they
    differ (rounding aside: folding and re-association change float32 results slightly; NaN
    and inf positions must match exactly)."""
    inputs = inputs if inputs is not None else random_inputs(before, extremes=True)
    want = interpret(before, inputs)
    got = interpret(after, inputs)
    for i, (a, b) in enumerate(zip(want, got)):
        why = mismatch(a, b, rtol, atol)
        if why:
            raise AssertionError(f"{what} changed output {i} ({before.outputs[i].name}): "
                                 f"{why}\nbefore:\n{before}\nafter:\n{after}")


def check_passes(graph: Graph) -> None:
    """The fuzz property: every pass and every pipeline keeps the graph's meaning, the result
    verifies, and the text form round-trips."""
    from kiln.ir import parse
    from kiln.passes.manager import PASSES, optimize, pipeline

    inputs = random_inputs(graph, extremes=True)
    for name in sorted(PASSES):
        assert_same_results(graph, verify(PASSES[name](graph)), f"pass {name}", inputs=inputs)
    for level in ("O1", "O2", "O3"):
        optimized = optimize(graph, pipeline(level), verify=True)
        assert_same_results(graph, optimized, f"pipeline {level}", inputs=inputs)
        again = parse(str(optimized), optimized.weights)
        if str(again) != str(optimized):
            raise AssertionError(f"text form of the {level} graph does not round-trip:\n"
                                 f"{optimized}")


def check_compiled(graph: Graph, opt_level: int = 2) -> None:
    """The codegen property: the compiled graph gives the interpreter's results (within the
    tolerance of fast exp/tanh/erf and re-associated float32 sums; NaN and inf exactly)."""
    from kiln.codegen.api import compile as kiln_compile

    inputs = random_inputs(graph, extremes=True)
    want = interpret(graph, inputs)
    got = kiln_compile(graph, opt_level=opt_level).run(inputs)
    for i, (a, b) in enumerate(zip(want, got)):
        why = mismatch(a, b, rtol=1e-4, atol=1e-4)
        if why:
            raise AssertionError(f"compiled O{opt_level} output {i} differs from the "
                                 f"interpreter: {why}\n{graph}")


def check_gpu_schedules(graph: Graph, opt_level: int = 2) -> None:
    """The GPU property: the kernels the cuda strategy schedules, run through OpenCL on this
    CPU (``kiln.codegen.opencl_check``), give the interpreter's results."""
    from kiln.codegen.api import optimize
    from kiln.codegen.opencl_check import run_gpu_schedules

    inputs = random_inputs(graph, extremes=True)
    want = interpret(graph, inputs)
    got = run_gpu_schedules(optimize(graph, opt_level, target="cuda"), inputs)
    for i, (a, b) in enumerate(zip(want, got)):
        why = mismatch(a, b, rtol=1e-4, atol=1e-4)
        if why:
            raise AssertionError(f"GPU-scheduled O{opt_level} output {i} differs from the "
                                 f"interpreter: {why}\n{graph}")


def campaign(examples: int, seed: int, on_failure: Callable[[Graph, str], None],
             prop: Callable[[Graph], None] = check_passes) -> int:
    """Run ``prop`` on ``examples`` random graphs; report the shrunk failure through
    ``on_failure(graph, message)``. Returns the number of failures (0 or 1)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed

    last: list = []

    @hseed(seed)
    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(graphs(extremes=True))
    def run(graph: Graph) -> None:
        try:
            prop(graph)
        except Exception as e:
            last[:] = [graph, f"{type(e).__name__}: {e}"]
            raise

    try:
        run()
    except Exception as e:
        if not last:  # no graph failed a property: drawing one did
            raise KilnError(f"drawing a random graph failed (a bug in kiln.fuzz): "
                            f"{type(e).__name__}: {e}") from e
        on_failure(*last)
        return 1
    return 0
