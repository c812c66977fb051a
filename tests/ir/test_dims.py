"""Symbolic sizes (kiln.ir.dims): arithmetic, one canonical form, text, and their use in types,
the interpreter and the DSL (``x.size(0) * 2`` is ``2*N``, not ``'NN'``)."""

from __future__ import annotations

import copy
import json
import operator
import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import kiln
from kiln import ops
from kiln.errors import InputError, KilnError, ParseError, ShapeError
from kiln.ir import Sym, TensorType, interpret, parse, symbol, verify
from kiln.ir.dims import as_dim, evaluate, exact_quotient, parse_dim
from kiln.ir.printer import print_graph

N, S = symbol("N"), symbol("S")


@pytest.mark.parametrize("value, text", [
    (N * 2, "2*N"), (2 * N, "2*N"), (N * S * 768 // 12, "64*N*S"), (N + N, "2*N"),
    (S * N + 1, "N*S + 1"), ((N + 1) // 2, "(N + 1)//2"), ((3 * N) // 2, "N + N//2"),
    ((N + 5) // 2, "(N + 1)//2 + 2"), (((N + 1) // 2) // 2, "(N + 1)//4"),
    (N * S // S, "N"), (3 - N, "-N + 3"), (N % 2, "N - 2*(N//2)"), (N * N, "N*N"),
    (S * ((N + 1) // 2), "((N + 1)//2)*S"),
])
def test_arithmetic_gives_one_canonical_text(value, text):
    assert isinstance(value, Sym) and value == text and str(value) == text
    assert parse_dim(text) == value and parse_dim(str(value)) == value


def test_constant_results_are_ints():
    for value, want in [((2 * N) // N, 2), (N - N, 0), (N * 0, 0), ((N * 6) / N, 6)]:
        assert type(value) is int and value == want
    assert exact_quotient(N * 6, 3) == 2 * N
    assert exact_quotient(N + 1, N) is None and exact_quotient(5, 0) is None


def test_a_symbol_is_never_a_number():
    with pytest.raises(ShapeError, match="symbolic size 2\\*N has no fixed value"):
        range(N * 2)
    with pytest.raises(ShapeError, match="no fixed value"):
        int(N)
    with pytest.raises(ShapeError, match="no fixed value"):
        np.zeros((N, 3))
    with pytest.raises(ShapeError, match="N // S"):
        N // S
    with pytest.raises(ShapeError, match="not a whole size"):
        N / 2
    assert np.int64(3) * N == 3 * N and N * np.int64(3) == "3*N"


@pytest.mark.parametrize("text, match", [
    ("N % 2", "expected a number"), ("N *", "ends too early"), ("(N + 1", "ends too early"),
    ("N + 1)", "unexpected '\\)'"),
    ("", "empty"), ("N S", "unexpected 'S'"), ("N // S", "divides sizes"),
])
def test_bad_text_is_a_clear_error(text, match):
    with pytest.raises(KilnError, match=match):
        parse_dim(text)


def test_syms_survive_pickle_copy_and_json():
    d = N * S + 1
    for back in (pickle.loads(pickle.dumps(d)), copy.deepcopy(d)):
        assert isinstance(back, Sym) and back == d and back * 2 == 2 * d
    assert json.loads(json.dumps([d, 3])) == ["N*S + 1", 3]
    assert as_dim(json.loads(json.dumps(d))) == d and as_dim(np.int32(4)) == 4


# -- a property: Sym arithmetic agrees with int arithmetic at every binding -----------------

NAMES = ("A", "B", "C")
_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def _exprs():
    leaf = st.one_of(st.integers(0, 6).map(lambda v: ("int", v)),
                     st.sampled_from(NAMES).map(lambda v: ("name", v)))

    def grow(children):
        return st.one_of(
            st.tuples(st.sampled_from(sorted(_OPS)), children, children),
            st.tuples(st.just("//"), children, st.integers(1, 5)))
    return st.recursive(leaf, grow, max_leaves=8)


def _build(e, leaf):
    if e[0] == "int":
        return e[1]
    if e[0] == "name":
        return leaf(e[1])
    if e[0] == "//":
        return _build(e[1], leaf) // e[2]
    return _OPS[e[0]](_build(e[1], leaf), _build(e[2], leaf))


@given(_exprs(), _exprs(), st.lists(st.integers(-20, 40), min_size=3, max_size=3))
def test_sym_arithmetic_agrees_with_ints(e1, e2, values):
    bindings = dict(zip(NAMES, values))
    for e in (e1, e2):
        sym, want = _build(e, symbol), _build(e, bindings.__getitem__)
        assert evaluate(sym, bindings) == want
        assert parse_dim(str(sym)) == sym  # the text is canonical and reads back
    # equal canonical forms mean equal values everywhere
    a, b = _build(e1, symbol), _build(e2, symbol)
    if a == b:
        assert _build(e1, bindings.__getitem__) == _build(e2, bindings.__getitem__)


# -- in types, text, the interpreter and the DSL --------------------------------------------


def test_types_parse_text_dims_and_print_them():
    t = TensorType(("N", "S*2", 3))
    assert t.shape == (N, 2 * S, 3) and str(t) == "float32[N, 2*S, 3]"
    with pytest.raises(KilnError, match="dimension 'N %' in shape"):
        TensorType(("N %",))


def _doubled_batch(x):
    """The issue's case: a size used in arithmetic."""
    return ops.reshape(x, (x.size(0) * 2, -1))


def test_dsl_size_arithmetic_is_symbolic():
    graph = verify(kiln.trace(_doubled_batch, x=kiln.TensorSpec(("N", 6))))
    (out,) = graph.outputs
    assert out.type.shape == (2 * N, 3)
    back = verify(parse(print_graph(graph), graph.weights))
    assert back.outputs[0].type == out.type
    for n in (1, 4, 7):
        x = np.arange(n * 6, dtype=np.float32).reshape(n, 6)
        (got,) = interpret(back, {"x": x})
        np.testing.assert_array_equal(got, x.reshape(2 * n, 3))


def test_flatten_concat_and_reshape_of_expressions_run_at_any_size():
    def fn(x, y):
        heads = ops.reshape(x, (x.size(0), x.size(1), 2, -1))  # [N, S, 2, 4]
        flat = heads.flatten(0, 1)  # [N*S, 2, 4]
        return ops.concat([flat, ops.reshape(y, (-1, 2, 4))], axis=0)  # [N*S + 3*M, 2, 4]

    graph = verify(kiln.trace(fn, x=kiln.TensorSpec(("N", "S", 8)),
                              y=kiln.TensorSpec(("M", 24))))
    assert str(graph.outputs[0].type) == "float32[N*S + 3*M, 2, 4]"
    rng = np.random.default_rng(0)
    for n, s, m in [(1, 1, 1), (2, 5, 3), (3, 2, 0)]:
        x = rng.standard_normal((n, s, 8)).astype(np.float32)
        y = rng.standard_normal((m, 24)).astype(np.float32)
        (got,) = interpret(graph, {"x": x, "y": y})
        want = np.concatenate([x.reshape(n * s, 2, 4), y.reshape(-1, 2, 4)])
        np.testing.assert_array_equal(got, want)


def test_inputs_with_expression_dims_are_checked():
    graph = parse("graph g(%x: float32[N, 3], %y: float32[2*N + 1]) {\n"
                  "  return %x, %y\n}")
    x, y = np.zeros((2, 3), np.float32), np.zeros(5, np.float32)
    interpret(graph, {"x": x, "y": y})
    with pytest.raises(InputError, match=r"dimension 2\*N \+ 1 is 5 with N=2, got 4"):
        interpret(graph, {"x": x, "y": np.zeros(4, np.float32)})
    lone = parse("graph g(%y: float32[2*N]) {\n  return %y\n}")
    with pytest.raises(InputError, match="needs the size of N"):
        interpret(lone, {"y": np.zeros(4, np.float32)})


def test_text_dims_errors_name_the_line():
    with pytest.raises(ParseError, match="line 1: .*not a size"):
        parse("graph g(%x: float32[N +]) {\n  return %x\n}")


def test_chunk_along_a_symbolic_axis_runs_at_any_size():
    """torch.chunk's pieces (ceil(n / 2), then the rest) as size expressions, interpreted,
    printed and parsed, and exported to ONNX."""
    import onnxruntime as ort
    import torch

    graph = verify(kiln.trace(lambda x: ops.chunk(x, 2, axis=1),
                              x=kiln.TensorSpec((2, "S", 3))))
    assert [str(v.type) for v in graph.outputs] == [
        "float32[2, (S + 1)//2, 3]", "float32[2, -((S + 1)//2) + S, 3]"]
    back = verify(parse(print_graph(graph), graph.weights))
    session = ort.InferenceSession(kiln.to_onnx(graph).SerializeToString())
    for s in (2, 5, 8):
        x = np.arange(2 * s * 3, dtype=np.float32).reshape(2, s, 3)
        want = [t.numpy() for t in torch.from_numpy(x).chunk(2, 1)]
        for got in (kiln.interpret(back, {"x": x}), session.run(None, {"x": x})):
            assert len(got) == len(want)
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g, w)


def test_substitute_fixes_some_sizes_and_keeps_the_others():
    from kiln.ir.dims import substitute

    assert substitute(Sym("N*S + (S + 1)//2"), {"S": 3}) == Sym("3*N + 2")
    assert substitute(Sym("N*S"), {"N": 2}) == Sym("2*S")
    assert substitute(Sym("N*S"), {"N": 2, "S": 5}) == 10
    assert substitute(Sym("N"), {"M": 1}) == Sym("N") and substitute(7, {"N": 1}) == 7
