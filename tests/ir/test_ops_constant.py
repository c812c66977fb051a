"""Constant ops (no inputs) through GraphBuilder + interpret: full/arange against PyTorch, the
RNG against its documented formula (in plain Python ints) and for its statistics, inference on
hypothesis-drawn attributes, and one test per error path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kiln.errors import AttributeError_, KilnError, ShapeError
from kiln.ir import OPS, GraphBuilder, TensorType, interpret
from kiln.ir.ops.constant import random_bits


def build(op: str, attrs: dict, inputs: tuple = ()):
    b = GraphBuilder()
    ins = [b.input(f"x{i}", t) for i, t in enumerate(inputs)]
    b.output(*b.op(op, ins, attrs))
    return b.build()


def run(op: str, attrs: dict) -> np.ndarray:
    (out,) = interpret(build(op, attrs), {})
    return out


# -- full and arange against PyTorch -----------------------------------------------------------

CASES = [
    ("full", {"shape": (2, 3), "value": 1.5}, lambda: torch.full((2, 3), 1.5)),
    ("full", {"shape": (), "value": 7, "dtype": "int64"}, lambda: torch.full((), 7)),
    (
        "full",
        {"shape": (0, 4), "value": -1, "dtype": "int32"},
        lambda: torch.full((0, 4), -1, dtype=torch.int32),
    ),
    ("full", {"shape": (3,), "value": True, "dtype": "bool"}, lambda: torch.full((3,), True)),
    (
        "full",
        {"shape": (2,), "value": -math.inf, "dtype": "float16"},
        lambda: torch.full((2,), -math.inf, dtype=torch.float16),
    ),
    (
        "full",
        {"shape": (2, 2), "value": 0.1, "dtype": "bfloat16"},
        lambda: torch.full((2, 2), 0.1, dtype=torch.bfloat16),
    ),
    ("arange", {"stop": 5}, lambda: torch.arange(5)),
    ("arange", {"start": 0, "stop": 10, "step": 3}, lambda: torch.arange(0, 10, 3)),
    (
        "arange",
        {"start": 10, "stop": 0, "step": -3, "dtype": "int32"},
        lambda: torch.arange(10, 0, -3, dtype=torch.int32),
    ),
    ("arange", {"start": 1, "stop": 1}, lambda: torch.arange(1, 1)),
    ("arange", {"start": 3, "stop": 1}, lambda: torch.arange(0)),  # empty as numpy (torch raises)
    (
        "arange",
        {"start": 0.5, "stop": 2.0, "step": 0.25, "dtype": "float32"},
        lambda: torch.arange(0.5, 2.0, 0.25),
    ),
    (
        "arange",
        {"start": 0, "stop": 1, "step": 0.1, "dtype": "float64"},
        lambda: torch.arange(0, 1, 0.1, dtype=torch.float64),
    ),
    (
        "arange",
        {"start": -1.0, "stop": -2.05, "step": -0.1, "dtype": "float32"},
        lambda: torch.arange(-1.0, -2.05, -0.1),
    ),
]


@pytest.mark.parametrize("op, attrs, torch_fn", CASES, ids=[c[0] for c in CASES])
def test_reference_matches_torch(op, attrs, torch_fn):
    got, want = run(op, attrs), torch_fn()
    if want.dtype == torch.bfloat16:  # numpy has no bfloat16: compare in float32
        got, want = got.astype(np.float32), want.float()
    want = want.numpy()
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


@given(st.integers(-50, 50), st.integers(-50, 50), st.integers(-7, 7).filter(bool))
def test_int_arange_is_python_range(start, stop, step):
    got = run("arange", {"start": start, "stop": stop, "step": step})
    np.testing.assert_array_equal(got, np.array(range(start, stop, step), dtype=np.int64))


floats = st.floats(-20, 20, allow_nan=False).map(lambda v: round(v, 2))


@given(floats, floats, st.sampled_from([0.25, 0.1, 0.7, -0.3, -1.0, 3.0]))
def test_float_arange_length_and_values_match_numpy(start, stop, step):
    got = run("arange", {"start": start, "stop": stop, "step": step, "dtype": "float64"})
    want = np.arange(start, stop, step, dtype=np.float64)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


@given(
    st.sampled_from(["full", "random_uniform", "random_normal"]),
    st.lists(st.integers(0, 4), max_size=4).map(tuple),
    st.sampled_from(["float16", "bfloat16", "float32", "float64"]),
)
def test_inferred_type_is_the_shape_attribute(op, shape, dtype):
    attrs = {"shape": shape, "dtype": dtype, **({"value": 2.0} if op == "full" else {})}
    (v,) = build(op, attrs).outputs
    assert v.type == TensorType(shape, dtype)
    assert run(op, attrs).shape == shape  # the interpreter checks the dtype too


# -- the RNG -----------------------------------------------------------------------------------

M32 = 0xFFFFFFFF


def lowbias32_py(x: int) -> int:
    """The documented hash, in Python ints masked to 32 bits."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def test_random_bits_follow_the_documented_formula():
    for seed in (0, 1, 12345, 2**32 - 1):
        key = lowbias32_py(seed ^ 0x9E3779B9)
        want = [lowbias32_py(lowbias32_py(i) ^ key) for i in range(50)]
        got = random_bits(seed, 50)
        assert got.dtype == np.uint32
        assert got.tolist() == want


def test_random_bits_are_a_prefix_stream_and_reject_bad_arguments():
    np.testing.assert_array_equal(random_bits(7, 10), random_bits(7, 1000)[:10])
    assert random_bits(7, 0).shape == (0,)
    with pytest.raises(KilnError, match="0 <= seed < 2"):
        random_bits(-1, 3)


def test_random_bits_look_uniform():
    bits = random_bits(3, 1 << 16)
    ones = np.unpackbits(bits.view(np.uint8)).reshape(-1, 32).mean(axis=0)
    assert np.all(np.abs(ones - 0.5) < 0.01)  # every bit position is fair
    assert len(np.unique(bits)) > (1 << 16) - 5  # (birthday collisions: about 0.5 expected)


def test_uniform_is_the_top_24_bits_scaled():
    u = run("random_uniform", {"shape": (4, 5), "seed": 9, "dtype": "float64"})
    np.testing.assert_array_equal(u.ravel(), (random_bits(9, 20) >> 8) * 2.0**-24)
    v = run("random_uniform", {"shape": (20,), "low": -2.0, "high": 6.0, "seed": 9})
    np.testing.assert_allclose(v, (-2.0 + 8.0 * u.ravel()).astype(np.float32), rtol=0, atol=0)


def test_normal_is_box_muller_on_word_pairs():
    z = run("random_normal", {"shape": (6,), "seed": 4, "dtype": "float64"})
    bits = random_bits(4, 12).tolist()
    for i in range(6):
        u1 = ((bits[2 * i] >> 8) + 1) / 2**24
        u2 = (bits[2 * i + 1] >> 8) / 2**24
        assert z[i] == pytest.approx(math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2))


@pytest.mark.parametrize("op", ["random_uniform", "random_normal"])
def test_random_ops_are_deterministic_and_seeded(op):
    a, b = run(op, {"shape": (64,), "seed": 1}), run(op, {"shape": (64,), "seed": 1})
    np.testing.assert_array_equal(a, b)
    c = run(op, {"shape": (64,), "seed": 2})
    assert np.mean(a == c) < 0.05
    assert abs(np.corrcoef(a, c)[0, 1]) < 0.4
    # the stream is per element index: a smaller tensor is a prefix of a larger one
    np.testing.assert_array_equal(run(op, {"shape": (2, 4), "seed": 1}).ravel(), a[:8])


N = 100_000


@pytest.mark.parametrize("low, high", [(0.0, 1.0), (-2.0, 3.0)])
def test_uniform_moments_and_range(low, high):
    u = run("random_uniform", {"shape": (N,), "low": low, "high": high, "seed": 11})
    assert u.dtype == np.float32 and u.min() >= low and u.max() < high
    width = high - low
    assert abs(u.mean() - (low + high) / 2) < 0.01 * width
    assert abs(u.std() - width / math.sqrt(12)) < 0.01 * width
    counts = np.histogram(u, bins=10, range=(low, high))[0]
    assert np.all(np.abs(counts / N - 0.1) < 0.005)


@pytest.mark.parametrize("mean, std, dtype", [(0.0, 1.0, "float32"), (3.0, 2.0, "float64")])
def test_normal_moments(mean, std, dtype):
    z = run("random_normal", {"shape": (N,), "mean": mean, "std": std, "seed": 5, "dtype": dtype})
    assert z.dtype == np.dtype(dtype) and np.isfinite(z).all()
    assert abs(z.mean() - mean) < 0.02 * std
    assert abs(z.std() - std) < 0.02 * std
    within = np.mean(np.abs(z - mean) < std)
    assert abs(within - 0.6827) < 0.01
    k = (z - mean) / std
    assert abs(np.mean(k**3)) < 0.05 and abs(np.mean(k**4) - 3) < 0.1  # skew 0, kurtosis 3
    assert abs(np.corrcoef(k[:-1], k[1:])[0, 1]) < 0.02  # neighbours independent


def test_narrow_dtypes_round_the_float64_values():
    attrs = {"shape": (8,), "seed": 3}
    wide = run("random_normal", {**attrs, "dtype": "float64"})
    half = run("random_normal", {**attrs, "dtype": "float16"})
    assert half.dtype == np.float16
    np.testing.assert_array_equal(half, wide.astype(np.float16))


def test_flops():
    out = [TensorType((10,))]
    assert OPS["full"].flops([], out, {}) == 0
    assert OPS["arange"].flops([], out, {}) == 20
    assert OPS["random_normal"].flops([], out, {}) > OPS["random_uniform"].flops([], out, {}) > 0


# -- error paths -------------------------------------------------------------------------------

R = {"shape": (2,)}

ERRORS = [
    ("random_uniform", {"shape": ("B", 3)}, "non-negative ints"),
    ("full", {"shape": (2, -1), "value": 1.0}, "non-negative ints"),
    ("full", {"shape": 3, "value": 1.0}, "must be a tuple"),
    ("full", {"shape": (2,)}, "missing required attribute 'value'"),
    ("full", {"shape": (2,), "value": "a"}, "must be a number"),
    ("full", {"shape": (2,), "value": 1.5, "dtype": "int32"}, "not exact in int32"),
    ("full", {"shape": (2,), "value": 300, "dtype": "int8"}, "not exact in int8"),
    ("full", {"shape": (2,), "value": 2, "dtype": "bool"}, "not exact in bool"),
    ("full", {"shape": (2,), "value": 1, "dtype": "complex64"}, "unknown dtype 'complex64'"),
    ("arange", {"start": 0}, "missing required attribute 'stop'"),
    ("arange", {"stop": 5, "step": 0}, "step must be nonzero"),
    ("arange", {"stop": 5.5}, "needs int start/stop/step"),
    ("arange", {"stop": 300, "dtype": "int8"}, "overflows int8"),
    ("arange", {"stop": 3, "dtype": "bool"}, "cannot make bool"),
    ("arange", {"stop": math.inf, "dtype": "float32"}, "must be finite"),
    ("arange", {"stop": None}, "stop must be a number"),
    ("random_uniform", {**R, "dtype": "int32"}, "floating-point tensors, not int32"),
    ("random_uniform", {**R, "seed": -1}, r"seed must be an int in \[0, 2\*\*32\)"),
    ("random_uniform", {**R, "seed": 2**32}, "seed must be an int"),
    ("random_uniform", {**R, "seed": 1.0}, "seed must be an int"),
    ("random_uniform", {**R, "low": 1.0, "high": 0.0}, "low <= high"),
    ("random_uniform", {"shape": (2**16, 2**16 + 1)}, "too many elements"),
    ("random_uniform", {"shape": ("B",)}, "non-negative ints"),
    ("random_normal", {**R, "std": -1.0}, "std >= 0"),
    ("random_normal", {**R, "mean": math.nan}, "finite mean"),
    ("random_normal", {"shape": (2**31 + 1,)}, "too many elements"),
    ("random_normal", {**R, "sd": 1.0}, "unknown attribute"),
]


@pytest.mark.parametrize("op, attrs, match", ERRORS, ids=[e[0] for e in ERRORS])
def test_error(op, attrs, match):
    with pytest.raises(AttributeError_, match=match) as info:
        build(op, attrs)
    assert str(info.value).startswith(f"{op}()")  # infer_node names the node


def test_constant_ops_take_no_inputs():
    with pytest.raises(ShapeError, match="takes 0 inputs, got 1"):
        build("full", {"shape": (2,), "value": 0.0}, (TensorType((2,)),))
