"""Graph fuzzing: every pass and pipeline keeps the meaning of random fusion-shaped graphs."""

import numpy as np
from hypothesis import given, settings

from kiln.fuzz import campaign, check_compiled, check_passes, graphs
from kiln.ir import parse


@settings(max_examples=300)  # a few hundred graphs in CI; `kiln fuzz` runs longer campaigns
@given(graphs())
def test_passes_keep_semantics(graph):
    check_passes(graph)


def test_a_failure_shrinks_to_a_small_graph_in_text_form():
    def broken_property(graph):  # pretend a pass mishandles softmax
        assert not any(n.op == "softmax" for n in graph.nodes), "softmax mishandled"

    failures = []
    assert campaign(200, seed=7, on_failure=lambda g, m: failures.append((g, m)),
                    prop=broken_property) == 1
    graph, message = failures[0]
    assert "softmax mishandled" in message
    assert any(n.op == "softmax" for n in graph.nodes)
    assert len(graph.nodes) <= 3  # shrunk: transpose, matmul, softmax
    assert parse(str(graph), graph.weights).same_as(graph)  # ready to paste into a test


def test_campaign_passes_on_the_real_passes():
    failures = []
    assert campaign(20, seed=1, on_failure=lambda g, m: failures.append(m)) == 0, failures


def test_fuzz_inputs_are_deterministic():
    from kiln.fuzz import random_inputs
    from kiln.ir import GraphBuilder, TensorType

    b = GraphBuilder()
    x = b.input("x", TensorType((2, 3)))
    b.output(b.op("relu", [x])[0])
    g = b.build()
    np.testing.assert_array_equal(random_inputs(g, 3)["x"], random_inputs(g, 3)["x"])


@settings(max_examples=12)  # each graph is compiled (about a second each)
@given(graphs(max_blocks=3))
def test_compiled_graphs_match_the_interpreter(graph):
    check_compiled(graph)
