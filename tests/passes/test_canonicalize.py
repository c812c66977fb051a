"""Canonicalization passes: Before/Expected pairs in the text IR, plus semantics checks."""

import textwrap

import numpy as np
import pytest

from kiln.errors import KilnError
from kiln.ir import interpret, parse, verify
from kiln.passes.canonicalize import (
    eliminate_common_subexpressions,
    eliminate_dead_code,
    fold_batch_norm,
    fold_constants,
    simplify,
)
from kiln.passes.manager import PassRecord, optimize

F32 = np.float32


def simplify_dce(g):
    """simplify leaves the nodes it bypassed for DCE to drop."""
    return eliminate_dead_code(simplify(g))


def check(pass_fn, before: str, expected: str, weights=None, inputs=None):
    """Run ``pass_fn`` on ``before``; compare with ``expected`` and with the interpreter."""
    g = verify(parse(textwrap.dedent(before), weights))
    out = verify(pass_fn(g))
    want = parse(textwrap.dedent(expected), out.weights)
    assert str(out) == str(want), f"got:\n{out}\nwant:\n{want}"
    rng = np.random.default_rng(0)
    inputs = inputs or {v.name: rng.standard_normal(v.type.shape).astype(v.dtype)
                        for v in g.inputs}
    for a, b in zip(interpret(g, inputs), interpret(out, inputs)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    return out


def test_dce_drops_unused_nodes_and_params():
    check(eliminate_dead_code, """
        graph g(%x: float32[2]) {
          param %w: float32[2]
          %a: float32[2] = exp(%x)
          %b: float32[2] = add(%x, %w)
          return %a
        }""", """
        graph g(%x: float32[2]) {
          %a: float32[2] = exp(%x)
          return %a
        }""", {"w": np.ones(2, F32)})


def test_cse_merges_equal_nodes():
    check(eliminate_common_subexpressions, """
        graph g(%x: float32[2]) {
          %a: float32[2] = exp(%x)
          %b: float32[2] = exp(%x)
          %c: float32[2] = add(%a, %b)
          %d: float32[2] = leaky_relu(%c) {alpha=0.1}
          %e: float32[2] = leaky_relu(%c) {alpha=0.2}
          %f: float32[2] = add(%d, %e)
          return %f
        }""", """
        graph g(%x: float32[2]) {
          %a: float32[2] = exp(%x)
          %c: float32[2] = add(%a, %a)
          %d: float32[2] = leaky_relu(%c) {alpha=0.1}
          %e: float32[2] = leaky_relu(%c) {alpha=0.2}
          %f: float32[2] = add(%d, %e)
          return %f
        }""")


def test_cse_merges_parameters_with_equal_arrays():
    """Per-step copies of a recurrent weight become one parameter (and their products one
    node); equal bytes of another dtype or shape, or a different array, stay apart."""
    r = np.arange(6, dtype=F32).reshape(2, 3)
    weights = {"r1": r, "r2": r.copy(), "r3": r + 1, "r4": r.reshape(3, 2),
               "r5": r.astype(np.int32).view(F32)}
    check(eliminate_common_subexpressions, """
        graph g(%h: float32[1, 2]) {
          param %r1: float32[2, 3]
          param %r2: float32[2, 3]
          param %r3: float32[2, 3]
          param %r4: float32[3, 2]
          param %r5: float32[2, 3]
          %a: float32[1, 3] = matmul(%h, %r1)
          %b: float32[1, 3] = matmul(%h, %r2)
          %c: float32[1, 3] = matmul(%h, %r3)
          %d: float32[1, 3] = matmul(%h, %r5)
          %s: float32[1, 3] = add(%a, %b)
          %t: float32[1, 3] = add(%c, %d)
          %u: float32[1, 2] = matmul(%t, %r4)
          return %s, %u
        }""", """
        graph g(%h: float32[1, 2]) {
          param %r1: float32[2, 3]
          param %r3: float32[2, 3]
          param %r4: float32[3, 2]
          param %r5: float32[2, 3]
          %a: float32[1, 3] = matmul(%h, %r1)
          %c: float32[1, 3] = matmul(%h, %r3)
          %d: float32[1, 3] = matmul(%h, %r5)
          %s: float32[1, 3] = add(%a, %a)
          %t: float32[1, 3] = add(%c, %d)
          %u: float32[1, 2] = matmul(%t, %r4)
          return %s, %u
        }""", weights)


def test_constant_folding_turns_weight_math_into_parameters():
    w = np.arange(6, dtype=F32).reshape(2, 3)
    out = check(fold_constants, """
        graph g(%x: float32[4, 3]) {
          param %w: float32[2, 3]
          %two: float32[] = full() {shape=(), value=2.0}
          %wt: float32[3, 2] = transpose(%w)
          %w2: float32[3, 2] = mul(%wt, %two)
          %y: float32[4, 2] = matmul(%x, %w2)
          %z: float32[4, 2] = mul(%y, %two)
          return %z
        }""", """
        graph g(%x: float32[4, 3]) {
          param %w2: float32[3, 2]
          %two: float32[] = full() {shape=(), value=2.0}
          %y: float32[4, 2] = matmul(%x, %w2)
          %z: float32[4, 2] = mul(%y, %two)
          return %z
        }""", {"w": w})
    np.testing.assert_array_equal(out.weights["w2"], w.T * 2)


def test_folding_does_not_blow_up_constants():
    check(fold_constants, """
        graph g(%x: float32[4, 300, 300]) {
          param %m: float32[1, 300]
          %e: float32[4, 300, 300] = expand(%m) {shape=(4, 300, 300)}
          %y: float32[4, 300, 300] = add(%x, %e)
          return %y
        }""", """
        graph g(%x: float32[4, 300, 300]) {
          param %m: float32[1, 300]
          %e: float32[4, 300, 300] = expand(%m) {shape=(4, 300, 300)}
          %y: float32[4, 300, 300] = add(%x, %e)
          return %y
        }""", {"m": np.ones((1, 300), F32)})


def test_simplify_neutral_elements_and_division_by_constant():
    out = check(simplify_dce, """
        graph g(%x: float32[2, 3]) {
          param %zero: float32[3]
          param %d: float32[]
          %one: float32[] = full() {shape=(), value=1.0}
          %a: float32[2, 3] = add(%x, %zero)
          %b: float32[2, 3] = mul(%one, %a)
          %c: float32[2, 3] = div(%b, %d)
          %e: float32[2, 3] = pow(%c, %one)
          return %e
        }""", """
        graph g(%x: float32[2, 3]) {
          param %c.reciprocal: float32[]
          %e: float32[2, 3] = mul(%x, %c.reciprocal)
          return %e
        }""", {"zero": np.zeros(3, F32), "d": np.array(8.0, F32)})
    assert out.weights["c.reciprocal"] == F32(0.125)


def test_simplify_keeps_broadcasting_adds():
    # x + zeros(3, 1) changes x's shape: it is not a no-op
    check(simplify_dce, """
        graph g(%x: float32[2]) {
          param %z: float32[3, 1]
          %y: float32[3, 2] = add(%x, %z)
          return %y
        }""", """
        graph g(%x: float32[2]) {
          param %z: float32[3, 1]
          %y: float32[3, 2] = add(%x, %z)
          return %y
        }""", {"z": np.zeros((3, 1), F32)})


def test_simplify_transpose_reshape_chains():
    check(simplify_dce, """
        graph g(%x: float32[2, 3, 4]) {
          %a: float32[3, 2, 4] = transpose(%x) {perm=(1, 0, 2)}
          %b: float32[4, 2, 3] = transpose(%a) {perm=(2, 1, 0)}
          %c: float32[2, 3, 4] = transpose(%x) {perm=(0, 1, 2)}
          %d: float32[3, 2, 4] = transpose(%c) {perm=(1, 0, 2)}
          %e: float32[2, 3, 4] = transpose(%d) {perm=(1, 0, 2)}
          %f: float32[6, 4] = reshape(%e) {shape=(6, 4)}
          %h: float32[24] = reshape(%f) {shape=(24,)}
          %i: float32[2, 3, 4] = reshape(%h) {shape=(2, 3, 4)}
          %n: float32[2, 3, 4] = neg(%i)
          %m: float32[2, 3, 4] = neg(%n)
          return %b, %m
        }""", """
        graph g(%x: float32[2, 3, 4]) {
          %b: float32[4, 2, 3] = transpose(%x) {perm=(2, 0, 1)}
          %m: float32[2, 3, 4] = identity(%x)
          return %b, %m
        }""")


def test_zero_pad_folds_into_the_conv():
    """TensorFlow-style "same" padding exported as Pad + Conv: one conv with the sum of the
    pads; an edge pad, or one of the channels, stays."""
    check(simplify_dce, """
        graph g(%x: float32[1, 3, 8, 8], %w: float32[4, 3, 3, 3], %v: float32[4, 3, 3]) {
          %p: float32[1, 3, 11, 9] = pad(%x) {pads=(0, 0, 1, 0, 0, 0, 2, 1)}
          %y: float32[1, 4, 5, 4] = conv2d(%p, %w) {strides=(2, 2), pads=(1, 1, 0, 0)}
          %q: float32[1, 3, 10, 10] = pad(%x) {pads=(0, 0, 1, 1, 0, 0, 1, 1), mode="edge"}
          %z: float32[1, 4, 8, 8] = conv2d(%q, %w)
          %r: float32[1, 5, 8, 8] = pad(%x) {pads=(0, 1, 0, 0, 0, 1, 0, 0)}
          %x1: float32[1, 3, 64] = reshape(%x) {shape=(1, 3, 64)}
          %s: float32[1, 3, 67] = pad(%x1) {pads=(0, 0, 2, 0, 0, 1)}
          %t: float32[1, 4, 65] = conv1d(%s, %v)
          return %y, %z, %p, %r, %t
        }""", """
        graph g(%x: float32[1, 3, 8, 8], %w: float32[4, 3, 3, 3], %v: float32[4, 3, 3]) {
          %p: float32[1, 3, 11, 9] = pad(%x) {pads=(0, 0, 1, 0, 0, 0, 2, 1)}
          %y: float32[1, 4, 5, 4] = conv2d(%x, %w) {strides=(2, 2), pads=(2, 1, 2, 1)}
          %q: float32[1, 3, 10, 10] = pad(%x) {pads=(0, 0, 1, 1, 0, 0, 1, 1), mode="edge"}
          %z: float32[1, 4, 8, 8] = conv2d(%q, %w)
          %r: float32[1, 5, 8, 8] = pad(%x) {pads=(0, 1, 0, 0, 0, 1, 0, 0)}
          %x1: float32[1, 3, 64] = reshape(%x) {shape=(1, 3, 64)}
          %t: float32[1, 4, 65] = conv1d(%x1, %v) {pads=(2, 1)}
          return %y, %z, %p, %r, %t
        }""")


def test_a_zero_point_pad_folds_into_the_integer_conv():
    """A quantized input padded with its zero point (what a Pad of a dequantized tensor
    becomes in the int8 pass) folds into conv2d_integer padding with it; another value
    stays a pad."""
    check(simplify_dce, """
        graph g(%x: uint8[1, 3, 8, 8], %w: int8[4, 3, 3, 3]) {
          %p: uint8[1, 3, 9, 9] = pad(%x) {pads=(0, 0, 0, 0, 0, 0, 1, 1), value=7.0}
          %y: int32[1, 4, 4, 4] = conv2d_integer(%p, %w) {strides=(2, 2), pad_value=7}
          %z: int32[1, 4, 4, 4] = conv2d_integer(%p, %w) {strides=(2, 2), pad_value=0}
          return %y, %z
        }""", """
        graph g(%x: uint8[1, 3, 8, 8], %w: int8[4, 3, 3, 3]) {
          %p: uint8[1, 3, 9, 9] = pad(%x) {pads=(0, 0, 0, 0, 0, 0, 1, 1), value=7.0}
          %y: int32[1, 4, 4, 4] = conv2d_integer(%x, %w) {strides=(2, 2), pads=(0, 0, 1, 1),
                                                          pad_value=7}
          %z: int32[1, 4, 4, 4] = conv2d_integer(%p, %w) {strides=(2, 2)}
          return %y, %z
        }""")


def test_small_integer_powers_become_products():
    check(simplify_dce, """
        graph g(%x: float32[2, 3]) {
          %two: float32[] = full() {shape=(), value=2.0}
          %three: float32[] = full() {shape=(), value=3.0}
          %half: float32[] = full() {shape=(), value=0.5}
          %a: float32[2, 3] = pow(%x, %two)
          %b: float32[2, 3] = pow(%x, %three)
          %c: float32[2, 3] = pow(%x, %half)
          return %a, %b, %c
        }""", """
        graph g(%x: float32[2, 3]) {
          %half: float32[] = full() {shape=(), value=0.5}
          %a: float32[2, 3] = mul(%x, %x)
          %b.square: float32[2, 3] = mul(%x, %x)
          %b: float32[2, 3] = mul(%b.square, %x)
          %c: float32[2, 3] = pow(%x, %half)
          return %a, %b, %c
        }""", inputs={"x": np.array([[-2, -0.0, 1.5], [np.inf, -np.inf, np.nan]], F32)})


def test_x_times_its_sigmoid_is_silu():
    check(simplify_dce, """
        graph g(%x: float32[2, 3], %y: float32[2, 3]) {
          %s: float32[2, 3] = sigmoid(%x)
          %a: float32[2, 3] = mul(%x, %s)
          %b: float32[2, 3] = mul(%s, %x)
          %c: float32[2, 3] = mul(%y, %s)
          return %a, %b, %c
        }""", """
        graph g(%x: float32[2, 3], %y: float32[2, 3]) {
          %s: float32[2, 3] = sigmoid(%x)
          %a: float32[2, 3] = silu(%x)
          %b: float32[2, 3] = silu(%x)
          %c: float32[2, 3] = mul(%y, %s)
          return %a, %b, %c
        }""")


def test_scale_moves_after_the_matmul():
    """(q * c) @ k.T -> (q @ k.T) * c: the canonical attention-score spelling."""
    check(simplify_dce, """
        graph g(%q: float32[2, 4, 8], %k: float32[2, 4, 8]) {
          %c: float32[] = full() {shape=(), value=0.5}
          %qs: float32[2, 4, 8] = mul(%q, %c)
          %kt: float32[2, 8, 4] = transpose(%k) {perm=(0, 2, 1)}
          %s: float32[2, 4, 4] = matmul(%qs, %kt)
          return %s
        }""", """
        graph g(%q: float32[2, 4, 8], %k: float32[2, 4, 8]) {
          param %s.scale: float32[]
          %kt: float32[2, 8, 4] = transpose(%k) {perm=(0, 2, 1)}
          %s.unscaled: float32[2, 4, 4] = matmul(%q, %kt)
          %s: float32[2, 4, 4] = mul(%s.unscaled, %s.scale)
          return %s
        }""")


def test_a_scale_of_one_is_dropped_not_moved():
    """Found by the fuzzer: x * 1 simplifies to x first; the scale rule must then see no mul
    (it once took the softmax that made x for the mul and multiplied by its input)."""
    check(simplify_dce, """
        graph g(%x: float32[1, 2, 3], %y: float32[1, 3, 2]) {
          %s: float32[1, 2, 3] = softmax(%x)
          %c: float32[] = full() {shape=(), value=1.0}
          %m: float32[1, 2, 3] = mul(%s, %c)
          %p: float32[1, 2, 2] = matmul(%m, %y)
          return %p
        }""", """
        graph g(%x: float32[1, 2, 3], %y: float32[1, 3, 2]) {
          %s: float32[1, 2, 3] = softmax(%x)
          %p: float32[1, 2, 2] = matmul(%s, %y)
          return %p
        }""")


def test_scale_stays_when_the_scaled_operand_is_used_elsewhere():
    text = """
        graph g(%x: float32[3, 4], %y: float32[4, 2], %w: float32[3, 4]) {
          param %c: float32[3, 4]
          %xs: float32[3, 4] = mul(%x, %w)
          %xc: float32[3, 4] = mul(%x, %c)
          %a: float32[3, 2] = matmul(%xs, %y)
          %b: float32[3, 2] = matmul(%xc, %y)
          return %a, %b, %xc
        }"""
    # %w is not constant; %xc is an output too: nothing moves
    check(simplify_dce, text, text, {"c": np.full((3, 4), 2.0, F32)})


def test_fold_batch_norm_into_conv():
    rng = np.random.default_rng(1)
    w = {"w": rng.standard_normal((4, 3, 3, 3)).astype(F32),
         "b": rng.standard_normal(4).astype(F32), "g": rng.random(4).astype(F32) + 0.5,
         "beta": rng.standard_normal(4).astype(F32), "mean": rng.standard_normal(4).astype(F32),
         "var": rng.random(4).astype(F32) + 0.1}
    out = check(fold_batch_norm, """
        graph g(%x: float32[1, 3, 8, 8]) {
          param %w: float32[4, 3, 3, 3]
          param %b: float32[4]
          param %g: float32[4]
          param %beta: float32[4]
          param %mean: float32[4]
          param %var: float32[4]
          %c: float32[1, 4, 8, 8] = conv2d(%x, %w, %b) {pads=(1, 1, 1, 1)}
          %y: float32[1, 4, 8, 8] = batch_norm(%c, %g, %beta, %mean, %var)
          %r: float32[1, 4, 8, 8] = relu(%y)
          return %r
        }""", """
        graph g(%x: float32[1, 3, 8, 8]) {
          param %y.weight: float32[4, 3, 3, 3]
          param %y.bias: float32[4]
          %y: float32[1, 4, 8, 8] = conv2d(%x, %y.weight, %y.bias) {pads=(1, 1, 1, 1)}
          %r: float32[1, 4, 8, 8] = relu(%y)
          return %r
        }""", w)
    assert len(out.params) == 2


def test_fold_batch_norm_into_dense():
    rng = np.random.default_rng(2)
    w = {"w": rng.standard_normal((5, 3)).astype(F32), "b": rng.standard_normal(3).astype(F32),
         "g": rng.random(3).astype(F32) + 0.5, "beta": rng.standard_normal(3).astype(F32),
         "mean": rng.standard_normal(3).astype(F32), "var": rng.random(3).astype(F32) + 0.1}
    check(fold_batch_norm, """
        graph g(%x: float32[2, 5]) {
          param %w: float32[5, 3]
          param %b: float32[3]
          param %g: float32[3]
          param %beta: float32[3]
          param %mean: float32[3]
          param %var: float32[3]
          %m: float32[2, 3] = matmul(%x, %w)
          %a: float32[2, 3] = add(%m, %b)
          %y: float32[2, 3] = batch_norm(%a, %g, %beta, %mean, %var)
          return %y
        }""", """
        graph g(%x: float32[2, 5]) {
          param %y.weight: float32[5, 3]
          param %y.bias: float32[3]
          %0: float32[2, 3] = matmul(%x, %y.weight)
          %y: float32[2, 3] = add(%0, %y.bias)
          return %y
        }""", w)


def test_batch_norm_not_folded_when_conv_output_is_used_twice():
    text = """
        graph g(%x: float32[1, 2, 4, 4]) {
          param %w: float32[2, 2, 1, 1]
          param %s: float32[2]
          %c: float32[1, 2, 4, 4] = conv2d(%x, %w)
          %y: float32[1, 2, 4, 4] = batch_norm(%c, %s, %s, %s, %s)
          %z: float32[1, 2, 4, 4] = add(%y, %c)
          return %z
        }"""
    w = {"w": np.ones((2, 2, 1, 1), F32), "s": np.ones(2, F32)}
    check(fold_batch_norm, text, text, w)


def test_pipeline_runs_verifies_times_and_dumps():
    g = parse(textwrap.dedent("""
        graph g(%x: float32[2]) {
          param %zero: float32[2]
          %a: float32[2] = add(%x, %zero)
          %b: float32[2] = exp(%a)
          %c: float32[2] = exp(%a)
          %d: float32[2] = mul(%b, %c)
          return %d
        }"""), {"zero": np.zeros(2, F32)})
    dumps, records = [], []
    out = optimize(g, 1, verify=True, dump_after={"cse"}, dump=dumps.append, records=records)
    assert [n.op for n in out.nodes] == ["exp", "mul"]
    assert dumps and dumps[0].startswith("// after cse")
    # the int8 pass (no quantized ops: no change), the 7 canonicalization passes, then the
    # precision policy (float32: no change)
    assert all(isinstance(r, PassRecord) for r in records) and len(records) == 9
    assert [r.name for r in records][::8] == ["int8", "precision"]
    kept = optimize(g, 1, disable={"simplify"})
    assert [n.op for n in kept.nodes] == ["add", "exp", "mul"]
    assert optimize(g, 0) is g
    with pytest.raises(KilnError, match="unknown pass"):
        optimize(g, ["nope"])
    with pytest.raises(KilnError, match="unknown optimization level"):
        optimize(g, 7)
