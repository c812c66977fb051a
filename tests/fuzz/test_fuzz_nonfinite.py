"""The fuzzer draws non-finite and extreme values (inputs and constants), where they cannot
make a legitimate difference, and compares NaN and inf positions exactly."""

import numpy as np
from hypothesis import HealthCheck, given, settings

import kiln
from kiln.fuzz import (
    ANYWHERE,
    HUGE,
    folded_constants,
    graphs,
    huge_safe,
    interpret,
    mismatch,
    random_inputs,
)
from kiln.ir import GraphBuilder, TensorType

F32 = np.float32


def test_mismatch_wants_nan_and_inf_where_the_oracle_has_them():
    want = np.array([1.0, np.nan, np.inf, -np.inf, 0.0], F32)
    assert mismatch(want, want.copy(), 1e-4, 1e-4) is None
    assert mismatch(want, want + F32(1e-6), 1e-4, 1e-4) is None  # finite: within tolerance
    for i, wrong in [(1, 0.0), (2, 3e38), (3, np.inf), (4, np.nan), (0, 1.1)]:
        got = want.copy()
        got[i] = wrong
        assert f"first at [{i}]" in mismatch(want, got, 1e-4, 1e-4)
    assert "instead of" in mismatch(want, want.astype(np.float64), 1e-4, 1e-4)
    ints = np.array([3, 1])
    assert mismatch(ints, ints[::-1].copy(), 0.5, 5) is not None  # integers exactly


def _two_inputs():
    """%a feeds tanh then a matmul (huge-safe: tanh bounds it); %b feeds relu then a matmul."""
    b = GraphBuilder("g")
    a, x = b.input("a", TensorType((4, 8))), b.input("b", TensorType((4, 8)))
    w = b.param("w", np.ones((8, 3), F32))
    (ta,) = b.op("tanh", [a])
    (rb,) = b.op("relu", [x])
    b.output(b.op("matmul", [ta, w])[0], b.op("matmul", [rb, w])[0])
    return b.build()


def test_huge_values_go_only_where_no_sum_or_fused_multiply_add_reads_them():
    graph = _two_inputs()
    safe = huge_safe(graph)
    assert safe[graph.inputs[0]] and not safe[graph.inputs[1]] and not safe[graph.params[0]]
    drawn = [random_inputs(graph, seed, extremes=True, share=1.0) for seed in range(40)]
    a, b = (np.concatenate([d[n].ravel() for d in drawn]) for n in "ab")
    for values in (a, b):
        assert np.isnan(values).any() and np.isinf(values).any()
        assert (values == 0).any() and (np.abs(values) == F32(1e-42)).any()
    assert np.isin(HUGE, a).all() and not np.isin(HUGE, b).any()


def test_extreme_inputs_are_deterministic_and_drawn_for_a_share_of_graphs():
    graph = _two_inputs()
    one, two = (random_inputs(graph, 7, extremes=True, share=1.0) for _ in range(2))
    for name in one:
        np.testing.assert_array_equal(one[name], two[name])  # NaN-aware
    some = [random_inputs(graph, seed, extremes=True) for seed in range(60)]
    with_extremes = sum(not np.isfinite(d["a"]).all() for d in some)
    assert 5 < with_extremes < 40  # about EXTREME_SHARE (0.3) of 60
    assert all(np.isfinite(d["a"]).all() for d in (random_inputs(graph, s) for s in range(9)))


@settings(max_examples=60, suppress_health_check=list(HealthCheck))
@given(graphs(extremes=True))
def test_graphs_hold_extreme_constants_except_where_passes_fold_them(graph):
    folded = folded_constants(graph)
    for v in graph.params:
        a = graph.weights[v.name]
        if v in folded:
            assert np.isfinite(a).all() and not np.isin(HUGE, a).any()
        big = a[np.abs(a) >= 1e38]  # NaN compares false: only inf and huge values
        assert np.isin(big, np.concatenate([ANYWHERE, HUGE])).all()
        if np.isin(HUGE, a).any():
            assert huge_safe(graph)[v]


def test_some_drawn_graphs_hold_extreme_constants():
    found = []

    @settings(max_examples=60, suppress_health_check=list(HealthCheck))
    @given(graphs(extremes=True))
    def look(graph):
        found.append(any(not np.isfinite(a).all() for a in graph.weights.values()))

    look()
    assert any(found) and not all(found)


@settings(max_examples=8, suppress_health_check=list(HealthCheck))  # a compile each
@given(graphs(max_blocks=3, extremes=True))
def test_compiled_graphs_match_the_interpreter_on_extreme_values(graph):
    """Every example with extreme inputs (share 1): NaN and inf where the interpreter has
    them, compiled at O2."""
    inputs = random_inputs(graph, extremes=True, share=1.0)
    want = interpret(graph, inputs)
    got = kiln.compile(graph, opt_level=2).run(inputs)
    for i, (w, g) in enumerate(zip(want, got)):
        why = mismatch(w, g, rtol=1e-4, atol=1e-4)
        assert why is None, f"output {i}: {why}\n{graph}"
