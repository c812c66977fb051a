"""The text form: print -> parse -> print is exact, and parse errors name the line.

Before/Expected pairs pin the canonical form; hypothesis-drawn graphs (``tests.strategies``)
with quoted names, symbolic dims, multi-output nodes and odd origins must round-trip exactly.
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiln.errors import ParseError
from kiln.ir import GraphBuilder, TensorType, interpret, parse, verify
from tests.strategies import WEIRD_FLOATS, WEIRD_NAMES, graphs, origins


def text(s: str) -> str:
    return textwrap.dedent(s).strip("\n")


def roundtrip(g):
    """Print, parse (with the weights), print again; both prints must agree."""
    g2 = parse(str(g), g.weights)
    assert str(g2) == str(g)
    assert g2.same_as(g)
    return g2


# -- Before/Expected ---------------------------------------------------------------------------

MLP = text("""
    graph mlp(%x: float32[N, 3]) {
      param %fc1.weight: float32[3, 4]
      %0: float32[N, 4] = matmul(%x, %fc1.weight)  # mlp.py:10
      %1: float32[N, 4] = gelu(%0) {approximate="tanh"}  # mlp.py:11
      %a: float32[N, 1], %b: float32[N, 3] = split(%1) {axis=1, sizes=(1, 3)}
      %"a b": float32[N] = sum(%b) {axes=(-1,)}
      return %"a b", %a
    }
""")


def test_canonical_text_is_a_fixed_point():
    g = parse(MLP)
    assert str(g) == MLP
    assert [v.name for v in g.outputs] == ["a b", "a"]
    assert g.nodes[0].origin == "mlp.py:10" and g.nodes[2].origin == ""
    assert g.nodes[3].attrs == {"axes": (-1,), "keepdims": False}


@pytest.mark.parametrize(
    "before, expected",
    [
        # defaults written out are dropped; spacing and blank lines are free
        (
            """
            graph g(%x:float32[2,3]){

              %y : float32[2] = sum( %x ) { axes = (1,), keepdims = False }
              return %y
            }
            """,
            """
            graph g(%x: float32[2, 3]) {
              %y: float32[2] = sum(%x) {axes=(1,)}
              return %y
            }
            """,
        ),
        # a plain name quoted needlessly is printed plain; a weird graph name stays quoted
        (
            """
            graph "my.graph"(%"x": float32[N]) {
              %"y": float32[N] = leaky_relu(%x) {alpha=0.01}  #   at:1  #2
              return %y, %x
            }
            """,
            """
            graph "my.graph"(%x: float32[N]) {
              %y: float32[N] = leaky_relu(%x)  # at:1  #2
              return %y, %x
            }
            """,
        ),
        # a trailing comma is tolerated; float spellings are normalized
        (
            """
            graph g(%x: float32[2],) {
              %y: float32[2] = hardtanh(%x,) {min_val=-1e0, max_val=.5}
              return %y
            }
            """,
            """
            graph g(%x: float32[2]) {
              %y: float32[2] = hardtanh(%x) {max_val=0.5}
              return %y
            }
            """,
        ),
    ],
)
def test_before_expected(before, expected):
    assert str(parse(text(before))) == text(expected)


def test_parse_binds_weights_by_name():
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    g = parse(MLP, {"fc1.weight": w})
    assert np.array_equal(g.weights["fc1.weight"], w)
    (_, a) = interpret(g, {"x": np.ones((2, 3), np.float32)})
    assert a.shape == (2, 1)
    with pytest.raises(ParseError, match=r"line 2: %fc1.weight is float32\[3, 4\] but its weight"):
        parse(MLP, {"fc1.weight": w.T})


# -- random graphs -----------------------------------------------------------------------------


@given(graphs())
def test_random_graphs_round_trip(g):
    verify(g)
    g2 = roundtrip(g)
    verify(g2)
    assert [v.name for v in g2.all_values()] == [v.name for v in g.all_values()]
    assert [n.origin for n in g2.nodes] == [n.origin for n in g.nodes]
    assert [str(v.type) for v in g2.all_values()] == [str(v.type) for v in g.all_values()]


@given(st.sampled_from(WEIRD_NAMES) | st.text(max_size=8), origins())
def test_any_name_and_origin_round_trip(name, origin):
    b = GraphBuilder(name)
    x = b.input(name, TensorType(("N", 2)))
    (y,) = b.op("relu", [x], origin=origin, names=[name + "/out"])
    b.output(y, x)
    g2 = roundtrip(b.build())
    assert g2.name == name and g2.inputs[0].name == name and g2.outputs[0].name == name + "/out"
    assert g2.nodes[0].origin == origin


@pytest.mark.parametrize("value", WEIRD_FLOATS, ids=repr)
@pytest.mark.parametrize("op, attr", [("leaky_relu", "alpha"), ("heaviside", "value_at_zero")])
def test_float_attrs_round_trip(op, attr, value):
    b = GraphBuilder()
    x = b.input("x", TensorType((2,)))
    b.output(*b.op(op, [x], {attr: value}))
    got = roundtrip(b.build()).nodes[0].attrs[attr]
    assert repr(got) == repr(value)  # nan != nan, and -0.0 == 0.0: compare the spelling


@given(st.floats())
def test_drawn_float_attrs_round_trip(value):
    b = GraphBuilder()
    x = b.input("x", TensorType((2,)))
    b.output(*b.op("elu", [x], {"alpha": value}))
    got = roundtrip(b.build()).nodes[0].attrs["alpha"]
    assert repr(got) == repr(value)


def test_negative_zero_is_not_mistaken_for_a_zero_default():
    # pad's value defaults to 0.0; -0.0 == 0.0, but padding with -0.0 is a different graph
    b = GraphBuilder()
    x = b.input("x", TensorType((2,)))
    b.output(*b.op("pad", [x], {"pads": (1, 1), "value": -0.0}))
    g = b.build()
    assert "value=-0.0" in str(g)
    assert math.copysign(1, roundtrip(g).nodes[0].attrs["value"]) == -1


# -- parse errors ------------------------------------------------------------------------------

GOOD = """graph g(%x: float32[2, 3]) {
  %y: float32[2, 3] = relu(%x)
  %z: float32[2] = sum(%y) {axes=(1,)}
  return %z
}"""


@pytest.mark.parametrize(
    "old, new, match",
    [
        ("relu(%x)", "relu(%w)", r"line 2: %w is used before it is defined"),
        ("return %z", "return %q", r"line 4: return of undefined %q"),
        ("%z: float32[2] = sum", "%y: float32[2] = sum", r"line 3: %y is defined twice"),
        ("{", "{\n  param %x: float32[1]", r"line 2: %x is defined twice"),
        ("%x: float32[2, 3]", "%x: float32[2, 3], %x: float32[1]", r"line 1: %x is defined twice"),
        ("%z: float32[2] =", "%z: float32[3] =",
         r"line 3: %z is declared float32\[3\] but sum gives float32\[2\]"),
        ("relu", "frobnicate", r"line 2: .*unknown op 'frobnicate'"),
        ("{axes=(1,)}", "{axis=1}", r"line 3: sum\(%y: float32\[2, 3\]\): unknown attribute"),
        ("{axes=(1,)}", "{axes=(1,) extra}", r"line 3: expected ','"),
        ("relu(%x)", "relu(%x) junk", r"line 2: expected 'param', a node or 'return', got 'junk'"),
        ("return %z\n}", "return %z", r"line 4: expected '}', got 'end of text'"),
        ("float32[2, 3])", "float17[2, 3])", r"line 1: unknown dtype 'float17'"),
        ("float32[2, 3])", "float32[2, 1.5])", r"line 1: '1.5' is not a dimension"),
        ("float32[2, 3])", "float32[2, -3])", r"line 1: '-3' is not a dimension"),
        ("float32[2, 3])", "float32[2, 3)", r"line 1: expected ','"),
        ("relu(%x)", "relu(%x) {alpha=@}", r"line 2: unexpected character '@'"),
        ("{axes=(1,)}", "{axes=bogus}", r"line 3: 'bogus' is not an attribute value"),
        ("%y: float32[2, 3] =", '%"\\q": float32[2, 3] =', r"line 2: bad string"),
        ("%z\n}", "%z\n}\ngraph h() {\n  return\n}", r"line 6: unexpected 'graph' after the graph"),
        ("%z: float32[2] = sum(%y)", "%z float32[2] = sum(%y)", r"line 3: expected ':'"),
    ],
)
def test_parse_errors_name_the_line(old, new, match):
    bad = GOOD.replace(old, new, 1)
    assert bad != GOOD
    with pytest.raises(ParseError, match=match):
        parse(bad)


def test_good_text_parses():
    assert str(parse(GOOD)) == GOOD
