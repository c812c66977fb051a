"""TE builders of the input-less ops (full, arange, random_uniform, random_normal) and of
training-mode dropout, reproducing ``kiln.ir.ops.constant``'s counter-based RNG bit for bit:
lowbias32 needs only 32-bit unsigned multiply, xor and shift.
"""

from __future__ import annotations

import math

from tvm import te, tirx

from kiln.codegen.lower import lowering, te_dim
from kiln.codegen.ops.common import const, dtype_of, flat_index, shape_of
from kiln.ir.types import is_float

_GOLDEN = 0x9E3779B9


def _u32(v: int):
    return tirx.const(v, "uint32")


def _mul_wrap(x, factor: int):
    """x * factor mod 2**32. TVM emits unsigned multiplies as LLVM ``mul nuw`` (overflow is
    poison: LLVM folded wrapping uint32 products to garbage), so multiply in uint64, where
    the product of two 32-bit values cannot overflow, and mask."""
    wide = x.astype("uint64") * tirx.const(factor, "uint64")
    return (wide & tirx.const(0xFFFFFFFF, "uint64")).astype("uint32")


def lowbias32(x):
    """The hash of ``kiln.ir.ops.constant.lowbias32`` on a uint32 expression."""
    x = x ^ (x >> _u32(16))
    x = _mul_wrap(x, 0x7FEB352D)
    x = x ^ (x >> _u32(15))
    x = _mul_wrap(x, 0x846CA68B)
    return x ^ (x >> _u32(16))


def _key(seed: int) -> int:
    x = (seed ^ _GOLDEN) & 0xFFFFFFFF
    for shift, mul in ((16, 0x7FEB352D), (15, 0x846CA68B)):
        x ^= x >> shift
        x = (x * mul) & 0xFFFFFFFF
    return x ^ (x >> 16)


def random_bits(seed: int, counter):
    """Word ``counter`` (a uint32 expression) of ``random_bits(seed, n)``."""
    return lowbias32(lowbias32(counter) ^ _u32(_key(seed)))


def uniform(bits):
    """(bits >> 8) * 2**-24 as float64, in [0, 1)."""
    return (bits >> _u32(8)).astype("float64") * tirx.const(2.0**-24, "float64")


def _counter(idx, shape, scale: int = 1, offset: int = 0):
    flat = flat_index(idx, shape) if idx else tirx.const(0, "int64")
    return (flat.astype("int64") * scale + offset).astype("uint32")


@lowering("full")
def full(inputs, attrs, out_types):
    dtype = attrs["dtype"]
    return te.compute(tuple(out_types[0].shape), lambda *i: const(attrs["value"], dtype),
                      name="full")


@lowering("dims")
def dims(inputs, attrs, out_types):
    dtype, values = attrs["dtype"], attrs["values"]
    sizes = [const(d, dtype) if isinstance(d, int) else te_dim(d, attrs["_sizes"]).astype(dtype)
             for d in values]

    def fn(i):
        out = sizes[-1]
        for k in range(len(sizes) - 2, -1, -1):
            out = tirx.Select(i == k, sizes[k], out)
        return out

    return te.compute((len(values),), fn, name="dims")


@lowering("arange")
def arange(inputs, attrs, out_types):
    dtype, start, step = attrs["dtype"], attrs["start"], attrs["step"]
    n = out_types[0].shape[0]
    if is_float(dtype):
        def fn(i):
            v = tirx.const(float(start), "float64") + tirx.const(float(step), "float64") * \
                i.astype("float64")
            return v.astype(dtype)
    else:
        def fn(i):
            return (tirx.const(start, "int64") + tirx.const(step, "int64") * i.astype("int64")
                    ).astype(dtype)
    return te.compute((n,), fn, name="arange")


@lowering("random_uniform")
def random_uniform(inputs, attrs, out_types):
    shape, dtype = tuple(attrs["shape"]), attrs["dtype"]
    low, high = float(attrs["low"]), float(attrs["high"])

    def fn(*idx):
        u = uniform(random_bits(attrs["seed"], _counter(idx, shape)))
        return (tirx.const(low, "float64") + tirx.const(high - low, "float64") * u).astype(dtype)

    return te.compute(shape, fn, name="random_uniform")


@lowering("random_normal")
def random_normal(inputs, attrs, out_types):
    shape, dtype, seed = tuple(attrs["shape"]), attrs["dtype"], attrs["seed"]
    mean, std = float(attrs["mean"]), float(attrs["std"])

    def fn(*idx):
        u1 = uniform(random_bits(seed, _counter(idx, shape, 2, 0))) + \
            tirx.const(2.0**-24, "float64")
        u2 = uniform(random_bits(seed, _counter(idx, shape, 2, 1)))
        z = tirx.sqrt(tirx.const(-2.0, "float64") * tirx.log(u1)) * \
            tirx.cos(tirx.const(2.0 * math.pi, "float64") * u2)
        return (tirx.const(mean, "float64") + tirx.const(std, "float64") * z).astype(dtype)

    return te.compute(shape, fn, name="random_normal")


@lowering("dropout")
def dropout(inputs, attrs, out_types):
    x = inputs[0]
    shape, dt = shape_of(x), dtype_of(x)
    if not attrs["training"]:
        return te.compute(shape, lambda *i: x[i] if i else x[()], name="dropout")
    p, seed = float(attrs["p"]), attrs["seed"]
    scale = const(1.0 / (1.0 - p), dt)

    def fn(*idx):
        keep = uniform(random_bits(seed, _counter(idx, shape))) >= tirx.const(p, "float64")
        v = x[idx] if idx else x[()]
        return tirx.Select(keep, v * scale, const(0, dt))

    return te.compute(shape, fn, name="dropout")
