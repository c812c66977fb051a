"""The mixed-precision pass: where the casts go, what it keeps in float32, and that the
interpreter runs the result as compiled code computes it (16-bit ops in float32, rounded)."""

import textwrap

import ml_dtypes
import numpy as np
import pytest

from kiln.errors import KilnError
from kiln.ir import interpret, parse, verify
from kiln.ir.ops.registry import FOLLOW, KEEP, LOW, OPS
from kiln.passes.context import PassContext
from kiln.passes.manager import optimize
from kiln.passes.precision import mixed_precision, precision_dtype

BF16 = np.dtype(ml_dtypes.bfloat16)
rng = np.random.default_rng(0)

ATTENTION = textwrap.dedent("""
    graph attn(%x: float32[8, 8]) {
      param %wq: float32[8, 8]
      param %bq: float32[8]
      param %g: float32[8]
      param %b: float32[8]
      %q: float32[8, 8] = matmul(%x, %wq)
      %qb: float32[8, 8] = add(%q, %bq)
      %s: float32[8, 8] = matmul(%qb, %qb)
      %two: float32[] = full() {shape=(), value=0.5}
      %ss: float32[8, 8] = mul(%s, %two)
      %p: float32[8, 8] = softmax(%ss)
      %o: float32[8, 8] = matmul(%p, %qb)
      %r: float32[8, 8] = add(%o, %x)
      %n: float32[8, 8] = layer_norm(%r, %g, %b)
      return %n, %p
    }""")


def attention():
    weights = {"wq": rng.standard_normal((8, 8)).astype(np.float32),
               "bq": rng.standard_normal(8).astype(np.float32),
               "g": np.ones(8, np.float32), "b": np.zeros(8, np.float32)}
    return verify(parse(ATTENTION, weights))


def policy(g, precision="bf16"):
    return verify(mixed_precision(g, PassContext(precision=precision_dtype(precision))))


def dtypes(g):
    return {v.name: v.dtype for n in g.nodes for v in n.outputs}


def test_matmuls_run_low_sums_and_statistics_stay_float32_outputs_keep_their_types():
    g = attention()
    out = policy(g)
    types = dtypes(out)
    producer = {v.name: n for n in out.nodes for v in n.outputs}
    # matmuls and the elementwise chain between them in bf16, weights converted once
    for name in ("q", "qb", "s", "ss", "o"):
        assert types[name] == "bfloat16", (name, types[name])
    assert {v.name: v.dtype for v in out.params} == {"wq_bf16": "bfloat16",
                                                     "bq_bf16": "bfloat16",
                                                     "g": "float32", "b": "float32"}
    assert out.weights["wq_bf16"].dtype == BF16
    # the scale is a constant: rebuilt in bf16, not the activation widened
    assert producer["ss"].inputs[1].dtype == "bfloat16"
    # softmax and layer norm compute in float32; the residual add takes the float32 input x
    assert producer["p"].inputs[0].dtype == "float32" and types["p"] == "float32"
    assert types["r"] == "float32" and types["n"] == "float32"
    # the second matmul reads the softmax narrowed again; graph outputs keep float32
    assert [v.dtype for v in out.outputs] == ["float32", "float32"]
    casts = [n for n in out.nodes if n.op == "cast"]
    assert sorted((n.inputs[0].dtype, n.attrs["dtype"]) for n in casts) == [
        ("bfloat16", "float32"), ("bfloat16", "float32"), ("float32", "bfloat16"),
        ("float32", "bfloat16")]


def test_one_cast_per_value_and_type_and_a_widened_value_narrows_to_its_source():
    g = verify(parse(textwrap.dedent("""
        graph g(%x: float32[4, 4]) {
          param %w: float32[4, 4]
          %a: float32[4, 4] = matmul(%x, %w)
          %b: float32[4, 4] = matmul(%x, %w)
          %s: float32[4, 1] = sum(%a) {axes=(1,), keepdims=True}
          %t: float32[4, 4] = mul(%a, %s)
          %c: float32[4, 4] = matmul(%a, %w)
          return %b, %t, %c
        }"""), {"w": np.eye(4, dtype=np.float32)}))
    out = policy(g)
    casts = [(n.inputs[0].name, n.attrs["dtype"]) for n in out.nodes if n.op == "cast"]
    # x is narrowed once for both matmuls; a (bf16) widened once for the sum and the mul;
    # the third matmul reads a itself, not a narrowing of its widened copy
    assert casts.count(("x", "bfloat16")) == 1
    assert casts.count(("a", "float32")) == 1
    third = [n for n in out.nodes if n.op == "matmul"][-1]
    assert third.inputs[0].name == "a"
    # the outputs keep their names (the bf16 matmul behind %c's widening gets another one)
    assert [v.name for v in out.outputs] == ["b", "t", "c"]
    assert third.outputs[0].name != "c" and out.producers[out.outputs[2]].op == "cast"
    assert len([p for p in out.params if p.dtype == "bfloat16"]) == 1  # w converted once


def test_float32_policy_leaves_the_graph_as_it_is():
    g = attention()
    assert policy(g, "fp32").same_as(g)
    assert optimize(g, 1).same_as(optimize(g, 1, ctx=PassContext(precision="float32")))


def test_every_op_declares_how_it_takes_the_policy():
    assert {op.precision for op in OPS.values()} <= {LOW, KEEP, FOLLOW}
    assert OPS["matmul"].precision == OPS["conv2d"].precision == LOW
    assert OPS["softmax"].precision == OPS["sum"].precision == OPS["batch_norm"].precision \
        == OPS["layer_norm"].precision == KEEP
    assert OPS["add"].precision == OPS["reshape"].precision == FOLLOW


def test_float64_and_integer_values_are_left_alone():
    g = verify(parse(textwrap.dedent("""
        graph g(%x: float64[2, 2], %i: int32[2, 2]) {
          %a: float64[2, 2] = matmul(%x, %x)
          %b: int32[2, 2] = matmul(%i, %i)
          return %a, %b
        }""")))
    assert policy(g).same_as(g)


def test_unknown_precision_is_a_clear_error():
    with pytest.raises(KilnError, match="unknown precision 'int4'"):
        precision_dtype("int4")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_the_interpreter_runs_the_policy_close_to_float32(precision):
    g = attention()
    x = {"x": rng.standard_normal((8, 8)).astype(np.float32)}
    want = interpret(g, x)
    got = interpret(policy(g, precision), x)
    for w, o in zip(want, got):
        assert o.dtype == np.float32
        # 16-bit storage: 8 (bf16) or 11 (fp16) significant bits per rounding
        np.testing.assert_allclose(o, w, atol=3e-2 * np.abs(w).max())


def test_interpreter_computes_16_bit_ops_in_float32_and_rounds_once():
    a = rng.standard_normal((3, 300)).astype(BF16)
    b = rng.standard_normal((300, 5)).astype(BF16)
    g = verify(parse(textwrap.dedent("""
        graph g(%a: bfloat16[3, 300], %b: bfloat16[300, 5]) {
          %c: bfloat16[3, 5] = matmul(%a, %b)
          return %c
        }""")))
    (got,) = interpret(g, {"a": a, "b": b})
    assert got.dtype == BF16
    want = (a.astype(np.float32) @ b.astype(np.float32)).astype(BF16)
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))


def test_non_finite_values_survive_the_policy():
    g = attention()
    x = rng.standard_normal((8, 8)).astype(np.float32)
    x[0, 0], x[1, 1] = np.nan, np.inf
    want = interpret(g, {"x": x})
    got = interpret(policy(g), {"x": x})
    for w, o in zip(want, got):
        np.testing.assert_array_equal(np.isnan(w), np.isnan(o))
        np.testing.assert_array_equal(np.isposinf(w), np.isposinf(o))
