"""``kiln.nn.init``: PyTorch's parameter initializers over kiln's seeded generator.

Each initializer takes a ``Parameter`` (its data is replaced), a numpy array (filled in place)
or a shape tuple (a new float32 array), and returns the array. Formulas, fan computations and
gains follow ``torch.nn.init``; the random numbers come from ``kiln.nn.manual_seed``'s
generator, so values differ from PyTorch's but a model built twice after the same seed is the
same model. The layers' defaults: weights ``kaiming_uniform_(w, a=math.sqrt(5))``, which is
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from kiln.errors import KilnError
from kiln.frontend.nn.module import Parameter, generator

Target = Any  # Parameter | np.ndarray | tuple[int, ...]


def _shape(target: Target) -> tuple[int, ...]:
    if isinstance(target, Parameter):
        return tuple(target.data.shape)
    if isinstance(target, np.ndarray):
        return tuple(target.shape)
    return tuple(int(d) for d in target)


def _fill(target: Target, make: Callable[[tuple[int, ...]], np.ndarray]) -> np.ndarray:
    """Put ``make(shape)`` into ``target``; returns the filled array."""
    values = np.asarray(make(_shape(target)))
    if isinstance(target, Parameter):
        dtype = target.data.dtype
        target.data = np.ascontiguousarray(values.astype(dtype, copy=False))
        return target.data
    if isinstance(target, np.ndarray):
        target[...] = values
        return target
    return values.astype(np.float32)


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for a nonlinearity, as ``torch.nn.init.calculate_gain``."""
    linear = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
              "conv_transpose3d", "sigmoid")
    if nonlinearity in linear:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise KilnError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}")


def calculate_fan_in_and_fan_out(target: Target) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight: dims 1 and 0 times the receptive field (dims 2...)."""
    shape = _shape(target)
    if len(shape) < 2:
        raise KilnError(f"fan in and fan out need a weight of rank >= 2, got shape {shape}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _fan(target: Target, mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise KilnError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = calculate_fan_in_and_fan_out(target)
    return fan_in if mode == "fan_in" else fan_out


def uniform_(target: Target, a: float = 0.0, b: float = 1.0) -> np.ndarray:
    """Fill with U(a, b)."""
    # float32 draws: twice as fast as float64, and parameters are float32 anyway
    return _fill(target, lambda s: np.float32(a) + np.float32(b - a)
                 * generator().random(s, dtype=np.float32))


def normal_(target: Target, mean: float = 0.0, std: float = 1.0) -> np.ndarray:
    """Fill with N(mean, std^2)."""
    return _fill(target, lambda s: np.float32(mean) + np.float32(std)
                 * generator().standard_normal(s, dtype=np.float32))


def constant_(target: Target, val: float) -> np.ndarray:
    """Fill with ``val``."""
    return _fill(target, lambda s: np.full(s, val))


def zeros_(target: Target) -> np.ndarray:
    """Fill with zeros."""
    return constant_(target, 0.0)


def ones_(target: Target) -> np.ndarray:
    """Fill with ones."""
    return constant_(target, 1.0)


def kaiming_uniform_(target: Target, a: float = 0.0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu") -> np.ndarray:
    """He uniform: U(-bound, bound), bound = gain * sqrt(3 / fan)."""
    fan = _fan(target, mode)
    bound = math.sqrt(3.0) * calculate_gain(nonlinearity, a) / math.sqrt(fan) if fan else 0.0
    return uniform_(target, -bound, bound)


def kaiming_normal_(target: Target, a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu") -> np.ndarray:
    """He normal: N(0, std^2), std = gain / sqrt(fan)."""
    fan = _fan(target, mode)
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan) if fan else 0.0
    return normal_(target, 0.0, std)


def xavier_uniform_(target: Target, gain: float = 1.0) -> np.ndarray:
    """Glorot uniform: U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(target)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out)) if fan_in + fan_out else 0.0
    return uniform_(target, -bound, bound)


def xavier_normal_(target: Target, gain: float = 1.0) -> np.ndarray:
    """Glorot normal: N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(target)
    std = gain * math.sqrt(2.0 / (fan_in + fan_out)) if fan_in + fan_out else 0.0
    return normal_(target, 0.0, std)


def default_weight_(target: Target) -> np.ndarray:
    """The default of Linear and Conv layers: ``kaiming_uniform_(w, a=math.sqrt(5))``."""
    return kaiming_uniform_(target, a=math.sqrt(5))


def default_bias_(target: Target, weight: Target) -> np.ndarray:
    """The default bias of Linear and Conv layers: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    fan_in, _ = calculate_fan_in_and_fan_out(weight)
    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return uniform_(target, -bound, bound)


__all__ = ["calculate_gain", "calculate_fan_in_and_fan_out", "uniform_", "normal_", "constant_",
           "zeros_", "ones_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
           "xavier_normal_", "default_weight_", "default_bias_"]
