"""Ops without inputs: ``full``, ``arange``, ``random_uniform`` and ``random_normal``.

Random numbers come from a counter-based hash, not from a stateful generator: element ``i`` of a
random tensor is a pure function of ``(seed, i)``. So the same seed always gives the same tensor,
every layer (this reference, generated code on CPU or GPU) computes it in any order, and the
bits need only 32-bit unsigned multiply, xor and shift, which every backend has.
"""

from __future__ import annotations

import math

import numpy as np

from kiln.errors import AttributeError_, KilnError
from kiln.ir.ops.registry import INJECTIVE, OPAQUE, REQUIRED, elementwise_flops, register
from kiln.ir.types import DTYPES, Sym, TensorType, is_float, is_int, to_numpy_dtype

_GOLDEN = 0x9E3779B9  # 2**32 / golden ratio: keeps seed 0 away from lowbias32's fixed point 0


def lowbias32(x: np.ndarray) -> np.ndarray:
    """Chris Wellons' 'lowbias32' integer hash, a bijection on uint32 (arithmetic wraps)::

    x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16
    """
    x = np.asarray(x, dtype=np.uint32)
    x = x ^ (x >> 16)
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> 16)


def random_bits(seed: int, n: int) -> np.ndarray:
    """``n`` pseudo-random uint32 words for ``seed`` (``0 <= seed < 2**32``, ``n <= 2**32``)::

    key     = lowbias32(seed ^ 0x9E3779B9)
    bits[i] = lowbias32(lowbias32(i) ^ key)        for i = 0 .. n-1, all in uint32

    Word ``i`` depends only on ``(seed, i)``: a prefix of a longer stream is the shorter one.
    The inner hash spreads consecutive counters apart before the key is mixed in, so streams
    of different seeds are not shifted copies of each other.
    """
    if not 0 <= seed < 2**32 or not 0 <= n <= 2**32:
        raise KilnError(f"random_bits needs 0 <= seed < 2**32 and 0 <= n <= 2**32, got {seed}, {n}")
    key = lowbias32(np.array([seed ^ _GOLDEN], dtype=np.uint32))
    return lowbias32(lowbias32(np.arange(n, dtype=np.uint32)) ^ key)


def uniform_from_bits(bits: np.ndarray) -> np.ndarray:
    """The top 24 bits of each word as a float64 in [0, 1): ``(bits >> 8) * 2**-24`` (exact)."""
    return (bits >> 8).astype(np.float64) * 2.0**-24


# -- attribute checks --------------------------------------------------------------------------


def fail(msg: str) -> None:
    """These ops have no inputs: whatever is wrong is an attribute."""
    raise AttributeError_(msg)


def _dtype(attrs) -> str:
    if attrs["dtype"] not in DTYPES:
        fail(f"unknown dtype {attrs['dtype']!r}; kiln knows {', '.join(DTYPES)}")
    return attrs["dtype"]


def _shape(attrs, symbolic: bool = False) -> tuple:
    """The "shape" attribute: non-negative ints, and with ``symbolic`` sizes too."""
    shape = attrs["shape"]
    if not isinstance(shape, tuple) or any(
        isinstance(d, bool) or not (isinstance(d, int) and d >= 0
                                    or symbolic and isinstance(d, Sym)) for d in shape
    ):
        kind = "non-negative ints or symbolic sizes" if symbolic else \
            "non-negative ints (static)"
        fail(f"shape must be a tuple of {kind}, got {shape!r}")
    return shape


def _number(attrs, key: str) -> float:
    v = attrs[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        fail(f"{key} must be a number, got {v!r}")
    return v


def _fits(value, dtype: str) -> bool:
    """Whether ``value`` is exactly representable in integer or bool ``dtype``."""
    if dtype == "bool":
        return value in (0, 1)
    info = np.iinfo(dtype)
    return float(value).is_integer() and info.min <= value <= info.max


def _random_type(attrs, extra: int = 1) -> TensorType:
    shape, dtype, seed = _shape(attrs), _dtype(attrs), attrs["seed"]
    if not is_float(dtype):
        fail(f"random ops make floating-point tensors, not {dtype}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        fail(f"seed must be an int in [0, 2**32), got {seed!r}")
    if math.prod(shape) * extra > 2**32:
        fail(f"shape {shape} has too many elements for one random stream (2**32 words)")
    return TensorType(shape, dtype)


# -- full, arange ------------------------------------------------------------------------------


def _full(types, attrs):
    shape, dtype = _shape(attrs, symbolic=True), _dtype(attrs)
    value = attrs["value"]
    if not isinstance(value, (bool, int, float)):
        fail(f"full value must be a number, got {value!r}")
    if not is_float(dtype) and not _fits(value, dtype):
        fail(f"full value {value!r} is not exact in {dtype}")
    return TensorType(shape, dtype)


@register(
    "full",
    kind=INJECTIVE,
    infer=_full,
    attrs={"shape": REQUIRED, "value": REQUIRED, "dtype": "float32"},
    arity=0,
    flops=lambda i, o, a: 0,
)
def full(shape, value, dtype):
    """A tensor of ``shape`` filled with ``value``."""
    return np.full(shape, value, dtype=to_numpy_dtype(dtype))


def _dims(types, attrs):
    values, dtype = attrs["values"], _dtype(attrs)
    if not isinstance(values, tuple) or any(
            isinstance(d, bool) or not isinstance(d, (int, Sym)) for d in values):
        fail(f"dims values must be a tuple of ints and symbolic sizes, got {values!r}")
    if dtype not in ("int32", "int64"):
        fail(f"dims makes int32 or int64, not {dtype}")
    return TensorType((len(values),), dtype)


@register(
    "dims",
    kind=INJECTIVE,
    infer=_dims,
    attrs={"values": REQUIRED, "dtype": "int64"},
    arity=0,
    flops=lambda i, o, a: 0,
)
def dims(values, dtype):
    """The sizes ``values`` as a 1-D tensor: the value of an ONNX ``Shape`` whose dims are
    symbolic, used as data (HF's masks compare positions with the sequence length)."""
    return np.array(values, dtype=to_numpy_dtype(dtype)).reshape(len(values))


def _arange_len(start, stop, step) -> int:
    """ceil((stop - start) / step), at least 0; exact for ints, as numpy for floats."""
    if all(isinstance(v, int) for v in (start, stop, step)):
        return max(0, -((start - stop) // step))
    return max(0, math.ceil((stop - start) / step))


def _symbolic_arange(attrs) -> TensorType:
    """arange up to a symbolic size (positions 0..L-1 of a sequence of length L): whole
    start and a positive whole step; the length is ``(stop - start + step - 1) // step``,
    which the caller keeps non-negative (a stop below start is an error when it runs)."""
    start, stop, step = attrs["start"], attrs["stop"], attrs["step"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, step)) \
            or step <= 0:
        fail(f"arange up to the symbolic size {stop} needs a whole start and a positive whole "
             f"step, got start={start!r}, step={step!r}")
    dtype = _dtype(attrs)
    if not is_int(dtype) and not is_float(dtype):
        fail(f"arange cannot make {dtype}")
    return TensorType(((stop - start + step - 1) // step,), dtype)


def _arange(types, attrs):
    if isinstance(attrs["stop"], Sym):
        return _symbolic_arange(attrs)
    start, stop, step = (_number(attrs, k) for k in ("start", "stop", "step"))
    dtype = _dtype(attrs)
    if step == 0:
        fail("arange step must be nonzero")
    if not all(math.isfinite(v) for v in (start, stop, step)):
        fail(f"arange bounds must be finite, got {start}, {stop}, {step}")
    n = _arange_len(start, stop, step)
    if is_int(dtype):
        if not all(isinstance(v, int) for v in (start, stop, step)):
            fail(
                f"arange with dtype {dtype} needs int start/stop/step, got {start}, {stop}, {step}"
            )
        if n and not (_fits(start, dtype) and _fits(start + (n - 1) * step, dtype)):
            fail(f"arange({start}, {stop}, {step}) overflows {dtype}")
    elif not is_float(dtype):
        fail(f"arange cannot make {dtype}")
    return TensorType((n,), dtype)


@register(
    "arange",
    kind=INJECTIVE,
    infer=_arange,
    attrs={"start": 0, "stop": REQUIRED, "step": 1, "dtype": "int64"},
    arity=0,
    flops=elementwise_flops(2),
)
def arange(start, stop, step, dtype):
    """``start + step * i`` for i = 0 .. ceil((stop - start) / step) - 1 (float64 for floats)."""
    i = np.arange(_arange_len(start, stop, step), dtype=np.int64)
    if is_float(dtype):
        i = i.astype(np.float64)
    return (start + step * i).astype(to_numpy_dtype(dtype))


# -- random ------------------------------------------------------------------------------------


def _random_uniform(types, attrs):
    low, high = _number(attrs, "low"), _number(attrs, "high")
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        fail(f"random_uniform needs finite low <= high, got {low}, {high}")
    return _random_type(attrs)


@register(
    "random_uniform",
    kind=OPAQUE,
    infer=_random_uniform,
    attrs={"shape": REQUIRED, "low": 0.0, "high": 1.0, "seed": 0, "dtype": "float32"},
    arity=0,
    flops=elementwise_flops(16),
)
def random_uniform(shape, low, high, seed, dtype):
    """``low + (high - low) * u`` with ``u = (random_bits(seed, n) >> 8) * 2**-24``, in float64,
    then rounded to ``dtype``. ``u`` lies in [0, 1); rounding to a narrow dtype (or bounds far
    apart in magnitude) can make a value equal ``high``.
    """
    u = uniform_from_bits(random_bits(seed, math.prod(shape)))
    return (low + (high - low) * u).reshape(shape).astype(to_numpy_dtype(dtype))


def _random_normal(types, attrs):
    mean, std = _number(attrs, "mean"), _number(attrs, "std")
    if not (math.isfinite(mean) and math.isfinite(std) and std >= 0):
        fail(f"random_normal needs a finite mean and std >= 0, got {mean}, {std}")
    return _random_type(attrs, extra=2)


@register(
    "random_normal",
    kind=OPAQUE,
    infer=_random_normal,
    attrs={"shape": REQUIRED, "mean": 0.0, "std": 1.0, "seed": 0, "dtype": "float32"},
    arity=0,
    flops=elementwise_flops(40),
)
def random_normal(shape, mean, std, seed, dtype):
    """Box-Muller on words ``2i`` and ``2i+1`` of ``random_bits(seed, 2n)``, in float64::

    u1 = ((bits[2i] >> 8) + 1) * 2**-24        in (0, 1], so log(u1) is finite
    u2 =  (bits[2i+1] >> 8) * 2**-24           in [0, 1)
    out[i] = mean + std * sqrt(-2 log u1) * cos(2 pi u2), rounded to dtype

    The words are reproducible bit for bit; log, sqrt and cos are as exact as the backend's
    math library.
    """
    bits = random_bits(seed, 2 * math.prod(shape))
    u1 = uniform_from_bits(bits[0::2]) + 2.0**-24
    u2 = uniform_from_bits(bits[1::2])
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return (mean + std * z).reshape(shape).astype(to_numpy_dtype(dtype))
