"""Graph invariants: the verifier (each invariant broken on purpose), the interpreter's input
checks, the networkx view and the producer/user maps.

Broken graphs are made by constructing ``Graph``/``Node``/``Value`` directly, since the
builder would refuse them.
"""

from __future__ import annotations

import dataclasses
import re

import networkx as nx
import numpy as np
import pytest
from hypothesis import given

from kiln.errors import InputError, KilnError, ShapeError, VerifyError
from kiln.ir import OPS, Graph, GraphBuilder, Node, TensorType, Value, interpret, verify
from tests.strategies import graph_inputs, graphs

F23 = TensorType((2, 3))
SUM1 = {"axes": (1,), "keepdims": False}


def make(inputs, nodes, outputs, params=(), weights=None, name="g") -> Graph:
    return Graph(name, tuple(inputs), tuple(params), tuple(nodes), tuple(outputs), weights or {})


def node(op, inputs, outputs, attrs=None, origin="m.py:7") -> Node:
    return Node(op, tuple(inputs), dict(attrs or {}), tuple(outputs), origin)


def good():
    """x -> relu -> y -> sum(axes=1) -> z, with a parameter w added to y."""
    x, w = Value("x", F23), Value("w", F23)
    y, s, z = Value("y", F23), Value("s", F23), Value("z", TensorType((2,)))
    nodes = [node("relu", [x], [y]), node("add", [y, w], [s]), node("sum", [s], [z], SUM1)]
    return x, w, y, s, z, nodes


# -- verifier ----------------------------------------------------------------------------------


def test_verifier_accepts_a_good_graph():
    x, w, y, s, z, nodes = good()
    g = make([x], nodes, [z], [w], {"w": np.zeros((2, 3), np.float32)})
    assert verify(g) is g


def test_value_defined_twice():
    x, w, y, s, z, nodes = good()
    nodes[1] = node("add", [y, w], [y])  # redefines %y
    with pytest.raises(VerifyError, match=r"node %y \(add, at m.py:7\): value %y is defined twice"):
        verify(make([x], nodes, [z], [w]))


def test_input_redefined_by_a_node():
    x, w, y, s, z, nodes = good()
    nodes[0] = node("relu", [x], [x])
    with pytest.raises(VerifyError, match=r"node %x \(relu.*value %x is defined twice \(SSA\)"):
        verify(make([x], nodes, [z], [w]))


def test_two_values_with_one_name():
    x, w, y, s, z, nodes = good()
    nodes[1] = node("add", [y, w], [Value("y", F23)])
    with pytest.raises(VerifyError, match=r"name %y is used by two values"):
        verify(make([x], nodes, [z], [w]))
    with pytest.raises(VerifyError, match=r"parameter: name %x is used by two values"):
        verify(make([x], good()[5], [], [Value("x", F23)]))


def test_node_reads_a_value_defined_later():
    x, w, y, s, z, nodes = good()
    with pytest.raises(VerifyError, match=r"node %s \(add, at m.py:7\) reads %y before it is "
                                          r"defined \(order\)"):
        verify(make([x], [nodes[1], nodes[0], nodes[2]], [z], [w]))


def test_dangling_value():
    x, w, y, s, z, nodes = good()
    ghost = Value("ghost", F23)
    nodes[1] = node("add", [y, ghost], [s])
    with pytest.raises(VerifyError, match=r"node %s \(add.*\) reads %ghost but it is never "):
        verify(make([x], nodes, [z], [w]))


def test_parameter_left_out_of_params_dangles():
    x, w, y, s, z, nodes = good()
    with pytest.raises(VerifyError, match=r"node %s \(add.*\) reads %w but it is never defined"):
        verify(make([x], nodes, [z]))


def test_same_name_different_value_is_not_a_definition():
    # the node reads a Value named %y that is not the one defined: identity, not name, counts
    x, w, y, s, z, nodes = good()
    nodes[1] = node("add", [Value("y", F23), w], [s])
    with pytest.raises(VerifyError, match=r"reads %y but it is never defined"):
        verify(make([x], nodes, [z], [w]))


@pytest.mark.parametrize("declared", [TensorType((2,)), TensorType((2, 3), "float64"),
                                      TensorType((2, "N"))])
def test_wrong_declared_type(declared):
    x, w, y, s, z, nodes = good()
    nodes[0] = node("relu", [x], [Value("y", declared)])
    want = f"node %y (relu, at m.py:7): outputs are typed ({declared}) but inference gives " \
        "(float32[2, 3])"
    with pytest.raises(VerifyError, match=re.escape(want)):
        verify(make([x], nodes, [z], [w]))


def test_wrong_number_of_outputs():
    x, w, y, s, z, nodes = good()
    nodes[0] = node("relu", [x], [y, Value("y2", F23)])
    with pytest.raises(VerifyError, match=re.escape("typed (float32[2, 3], float32[2, 3])")):
        verify(make([x], nodes, [z], [w]))


@pytest.mark.parametrize("attrs", [{"axes": (1,)}, {"axes": [1], "keepdims": False}, {}])
def test_incomplete_or_unnormalized_attrs(attrs):
    x, w, y, s, z, nodes = good()
    nodes[2] = node("sum", [s], [Value("z", TensorType((2,)) if attrs else TensorType(()))], attrs)
    with pytest.raises(VerifyError, match=r"node %z \(sum.*attributes .* are not complete and "
                                          r"normalized \(expected \{'axes'"):
        verify(make([x], nodes, [nodes[2].outputs[0]], [w]))


def test_node_that_inference_rejects():
    x, w, y, s, z, nodes = good()
    bad = Value("w", TensorType((3, 2)))
    nodes[1] = node("add", [y, bad], [s])
    with pytest.raises(VerifyError, match=r"node %s \(add, at m.py:7\): add\(%y: float32\[2, 3\], "
                                          r"%w: float32\[3, 2\]\) at m.py:7: .*do not broadcast"):
        verify(make([x], nodes, [z], [bad]))
    nodes[1] = node("frobnicate", [y], [s])
    with pytest.raises(VerifyError, match=r"node %s \(frobnicate.*unknown op 'frobnicate'"):
        verify(make([x], nodes, [z], [w]))


def test_undefined_output():
    x, w, y, s, z, nodes = good()
    with pytest.raises(VerifyError, match=r"graph output %q is never defined"):
        verify(make([x], nodes, [z, Value("q", F23)], [w]))


@pytest.mark.parametrize("weight", [np.zeros((3, 2), np.float32), np.zeros((2, 3), np.float64),
                                    np.zeros((2, 3, 1), np.float32)])
def test_weight_disagrees_with_its_parameter(weight):
    x, w, y, s, z, nodes = good()
    want = f"parameter %w is declared float32[2, 3] but its weight is {TensorType.of(weight)}"
    with pytest.raises(VerifyError, match=re.escape(want)):
        verify(make([x], nodes, [z], [w], {"w": weight}))


# -- interpreter input checks ------------------------------------------------------------------


def two_input_graph():
    b = GraphBuilder("net")
    x = b.input("x", TensorType(("N", 3)))
    y = b.input("y", TensorType(("N", 1)))
    w = b.param("w", type=TensorType((3, 4)))
    (h,) = b.op("matmul", [x, w])
    (o,) = b.op("add", [h, y])
    b.output(o)
    return b.build()


X = np.ones((2, 3), np.float32)
Y = np.ones((2, 1), np.float32)
W = np.ones((3, 4), np.float32)


def test_interpreter_runs_with_params():
    (o,) = interpret(two_input_graph(), {"x": X, "y": Y}, {"w": W})
    np.testing.assert_array_equal(o, np.full((2, 4), 4, np.float32))


@pytest.mark.parametrize(
    "inputs, params, match",
    [
        ({"x": X}, {"w": W}, r"graph 'net' takes inputs \['x', 'y'\]; missing \['y'\], "
                             r"unexpected \[\]"),
        ({"x": X, "y": Y, "z": Y}, {"w": W}, r"missing \[\], unexpected \['z'\]"),
        ({"x": X.astype(np.float64), "y": Y}, {"w": W},
         r"input %x expects dtype float32, got float64 \(convert with \.astype\(np\.float32\)"),
        ({"x": X, "y": Y.astype(np.int32)}, {"w": W}, r"input %y expects dtype float32, got int32"),
        ({"x": X[0], "y": Y}, {"w": W}, r"input %x expects shape float32\[N, 3\], got \(3,\)"),
        ({"x": np.ones((2, 4), np.float32), "y": Y}, {"w": W},
         r"input %x expects shape float32\[N, 3\], got \(2, 4\)"),
        ({"x": X, "y": np.ones((5, 1), np.float32)}, {"w": W},
         r"input %y: dimension N is 5 here but 2 in an earlier input"),
        ({"x": X, "y": Y}, {}, r"parameter %w \(float32\[3, 4\]\) has no value; pass it in params"),
        ({"x": X, "y": Y}, {"w": W.T}, r"parameter %w expects shape float32\[3, 4\], got \(4, 3\)"),
        ({"x": [[1.0, 2.0, 3.0]], "y": Y}, {"w": W}, r"input %x expects dtype float32, got "),
    ],
)
def test_interpreter_input_errors(inputs, params, match):
    with pytest.raises(InputError, match=match):
        interpret(two_input_graph(), inputs, params)


def test_symbolic_dims_bind_across_inputs_and_params():
    b = GraphBuilder()
    x = b.input("x", TensorType(("N", "K")))
    w = b.param("w", type=TensorType(("K", 2)))
    b.output(*b.op("matmul", [x, w]))
    g = b.build()
    (o,) = interpret(g, {"x": np.ones((3, 5), np.float32)}, {"w": np.ones((5, 2), np.float32)})
    assert o.shape == (3, 2)
    with pytest.raises(InputError, match=r"parameter %w: dimension K is 4 here but 5"):
        interpret(g, {"x": np.ones((3, 5), np.float32)}, {"w": np.ones((4, 2), np.float32)})


def test_interpreter_blames_the_op_for_a_wrong_reference(monkeypatch):
    relu = OPS["relu"]
    wrong = dataclasses.replace(relu, reference=lambda x: x.astype(np.float64))
    monkeypatch.setitem(OPS, "relu", wrong)
    b = GraphBuilder()
    x = b.input("x", TensorType((2,)))
    b.output(*b.op("relu", [x], origin="m.py:3"))
    with pytest.raises(KilnError, match=r"node %0 \(relu, at m.py:3\): reference gave "
                                        r"float64\[2\], but type inference says float32\[2\]: "
                                        r"a bug in op 'relu'"):
        interpret(b.build(), {"x": np.ones(2, np.float32)})

    def boom(x):
        raise ValueError("numpy said no")

    monkeypatch.setitem(OPS, "relu", dataclasses.replace(relu, reference=boom))
    with pytest.raises(KilnError, match=r"node %0 \(relu, at m.py:3\) failed on inputs "
                                        r"\(float32\[2\]\): numpy said no"):
        interpret(b.build(), {"x": np.ones(2, np.float32)})


# -- random graphs: verify, interpret --------------------------------------------------------


@given(graphs(weird_floats=False))
def test_random_graphs_verify_and_run(g):
    assert verify(g) is g
    with np.errstate(all="ignore"):
        outs = interpret(g, graph_inputs(g))
    for v, o in zip(g.outputs, outs):
        assert o.dtype.name == v.dtype and o.ndim == v.type.rank


# -- networkx view, producers, users ---------------------------------------------------------


@given(graphs())
def test_networkx_view(g):
    view = g.to_networkx()
    assert nx.is_directed_acyclic_graph(view)
    assert sorted(view.nodes) == list(range(len(g.nodes)))
    assert all(i < j for i, j in view.edges)  # graph order is a topological order
    assert list(nx.topological_sort(view)) is not None
    order = {i: k for k, i in enumerate(nx.lexicographical_topological_sort(view))}
    assert order == {i: i for i in range(len(g.nodes))}
    want: dict[tuple[int, int], list[Value]] = {}
    index = {id(n): i for i, n in enumerate(g.nodes)}
    for j, n in enumerate(g.nodes):
        assert view.nodes[j]["node"] is n and view.nodes[j]["op"] == n.op
        for v in n.inputs:
            if v in g.producers:
                want.setdefault((index[id(g.producers[v])], j), []).append(v)
    assert {e: view.edges[e]["values"] for e in view.edges} == want


def test_networkx_edges_carry_every_value():
    b = GraphBuilder()
    x = b.input("x", TensorType((4,)))
    a, c = b.op("split", [x], {"sizes": (2, 2)})
    (s,) = b.op("add", [a, c])
    (d,) = b.op("mul", [s, s])
    b.output(d)
    view = b.build().to_networkx()
    assert set(view.edges) == {(0, 1), (1, 2)}
    assert view.edges[0, 1]["values"] == [a, c]
    assert view.edges[1, 2]["values"] == [s, s]


def test_producers_and_users():
    b = GraphBuilder()
    x = b.input("x", F23)
    w = b.param("w", type=F23)
    (y,) = b.op("relu", [x])
    (s,) = b.op("mul", [y, y])  # reads %y twice: listed once
    (t,) = b.op("add", [y, w])
    (unused,) = b.op("exp", [x])
    b.output(s, t)
    g = b.build()
    n_relu, n_mul, n_add, n_exp = g.nodes
    assert g.producers == {y: n_relu, s: n_mul, t: n_add, unused: n_exp}
    assert x not in g.producers and w not in g.producers
    assert g.users == {x: [n_relu, n_exp], y: [n_mul, n_add], w: [n_add]}
    assert s not in g.users and unused not in g.users
    assert g.value("w") is w and g.value("0") is y
    with pytest.raises(KilnError, match=r"graph 'main' has no value named %nope"):
        g.value("nope")


@given(graphs())
def test_producers_and_users_agree_with_the_nodes(g):
    for n in g.nodes:
        assert all(g.producers[v] is n for v in n.outputs)
        assert all(n in g.users[v] for v in n.inputs)
    for v, readers in g.users.items():
        assert len(readers) == len({id(r) for r in readers})
        assert all(v in r.inputs for r in readers)
        assert readers == [n for n in g.nodes if v in n.inputs]


def test_builder_refuses_duplicate_names_and_bad_ops():
    b = GraphBuilder("g")
    x = b.input("x", F23)
    with pytest.raises(KilnError, match=r"graph 'g' already has a value named %x"):
        b.input("x", F23)
    with pytest.raises(KilnError, match=r"graph 'g' already has a value named %x"):
        b.param("x", np.zeros(2, np.float32))
    with pytest.raises(ShapeError, match=r"add\(%x: float32\[2, 3\]\): takes 2 inputs, got 1"):
        b.op("add", [x])
    (y,) = b.op("relu", [x], names=["x"])  # a taken hint gets a suffix
    assert y.name == "x_1"


# -- immutable values, renaming through the builder --------------------------------------------


def test_values_are_immutable():
    v = Value("x", F23)
    with pytest.raises(AttributeError, match=r"Value %x is immutable.*GraphBuilder.rename"):
        v.name = "y"
    with pytest.raises(AttributeError, match="immutable"):
        v.type = TensorType((3,))
    with pytest.raises(AttributeError, match="immutable"):
        del v.name
    with pytest.raises(AttributeError):
        v.extra = 1  # no other attributes either
    assert (v.name, v.type) == ("x", F23)
    import copy
    import pickle

    for clone in (copy.deepcopy(v), pickle.loads(pickle.dumps(v))):
        assert clone is not v and (clone.name, clone.type) == ("x", F23)


def test_rename_substitutes_the_value_everywhere():
    b = GraphBuilder("g")
    x = b.input("x", F23)
    w = b.param("w", np.ones((2, 3), np.float32))
    (y,) = b.op("relu", [x])
    (s,) = b.op("mul", [y, y])
    (t,) = b.op("add", [y, w])
    b.output(y, s)
    y2 = b.rename(y, "hidden")
    assert y2 is not y and (y.name, y2.name, y2.type) == ("0", "hidden", y.type)
    assert b.producer(y) is None and b.producer(y2) is b.nodes[0]
    assert b.nodes[0].outputs == (y2,)
    assert b.nodes[1].inputs == (y2, y2) and b.nodes[2].inputs == (y2, w)
    assert b.outputs == (y2, s)
    assert b.has_name("hidden") and not b.has_name("0")
    # inputs and parameters (with their weights) too
    x2, w2 = b.rename(x, "image"), b.rename(w, "weight")
    assert b.inputs == (x2,) and b.params == (w2,) and b.nodes[0].inputs == (x2,)
    assert b.nodes[2].inputs == (y2, w2)
    b.output(t)
    g = verify(b.build())
    assert set(g.weights) == {"weight"}
    assert g.users[y2] == [g.nodes[1], g.nodes[2]] and g.producers[y2] is g.nodes[0]
    assert str(g).splitlines()[0] == "graph g(%image: float32[2, 3]) {"
    (out,) = interpret(g, {"image": -np.ones((2, 3), np.float32)})[2:]
    np.testing.assert_array_equal(out, np.ones((2, 3), np.float32))
    # a renamed value is followed by later renames of the same value
    y3 = b.rename(y2, "h")
    assert b.producer(y3).outputs == (y3,) and b.nodes[1].inputs == (y3, y3)


def test_rename_refuses_taken_names_and_foreign_values():
    b = GraphBuilder("g")
    x = b.input("x", F23)
    (y,) = b.op("relu", [x])
    assert b.rename(y, y.name) is y  # the same name: nothing to do
    with pytest.raises(KilnError, match=r"graph 'g' already has a value named %x"):
        b.rename(y, "x")
    with pytest.raises(KilnError, match=r"cannot rename %z, which is not one of its values"):
        b.rename(Value("z", F23), "q")
    b.rename(y, "y")
    with pytest.raises(KilnError, match=r"cannot rename %0"):
        b.rename(y, "again")  # the old value left the builder when it was renamed


def test_only_graph_py_touches_a_builders_private_fields():
    """Everything else goes through GraphBuilder's public API (read on the source)."""
    import ast
    from pathlib import Path

    kiln = Path(__file__).resolve().parents[2] / "kiln"
    graph_py = kiln / "ir" / "graph.py"
    builder = next(n for n in ast.parse(graph_py.read_text()).body
                   if isinstance(n, ast.ClassDef) and n.name == "GraphBuilder")
    private = {n.attr for n in ast.walk(builder) if isinstance(n, ast.Attribute)
               and isinstance(n.value, ast.Name) and n.value.id == "self"
               and n.attr.startswith("_") and not n.attr.startswith("__")}
    assert {"_names", "_nodes", "_inputs", "_params"} <= private
    found = [f"{path.relative_to(kiln.parent)}:{n.lineno} .{n.attr}"
             for path in sorted(kiln.rglob("*.py")) if path != graph_py
             for n in ast.walk(ast.parse(path.read_text()))
             if isinstance(n, ast.Attribute) and n.attr in private
             and not (isinstance(n.value, ast.Name) and n.value.id == "self")]
    assert not found, found


def test_builder_views():
    b = GraphBuilder("g")
    with pytest.raises(KilnError, match="has no nodes yet"):
        _ = b.last_node
    x = b.input("x", F23)
    w = b.param("w", type=F23)
    (y,) = b.op("add", [x, w])
    assert b.last_node.op == "add" and b.last_node.outputs == (y,)
    assert b.producer(y) is b.last_node and b.producer(x) is None and b.producer(w) is None
    assert b.inputs == (x,) and b.params == (w,) and b.nodes == (b.last_node,)
    assert b.outputs == () and b.has_name("w") and not b.has_name("v")
    b.output(y)
    assert b.outputs == (y,)
