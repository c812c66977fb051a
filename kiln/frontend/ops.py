"""``kiln.ops``: the DSL's functional API, one function per op.

Names and arguments follow ``torch.nn.functional`` where PyTorch has the op (``conv2d(x, w,
bias, stride, padding, dilation, groups)``, ``pad`` with PyTorch's last-axis-first pairs), and
numpy elsewhere (``sum(x, axis, keepdims)``); functions with an axis also take PyTorch's
names for it (``dim``, ``keepdim``: ``sum(x, dim=-1, keepdim=True)``, ``cat(xs, dim=1)``).
``max``/``min`` given ``dim`` return PyTorch's ``(values, indices)`` pair. Each function adds
nodes to the graph being traced and returns Tensors.
"""

from __future__ import annotations

import builtins
import functools
from collections import namedtuple
from typing import Any, Callable, Sequence

from kiln.errors import TraceError, UnsupportedOpError
from kiln.frontend.dsl import Tensor, as_tensor, constant, emit, emit1
from kiln.ir.types import is_float

_TORCH_NAMES = {"dim": "axis", "keepdim": "keepdims"}


def torch_names(fn: Callable) -> Callable:
    """``fn`` also taking PyTorch's argument names (``dim``, ``keepdim``) for its own
    (``axis``, ``keepdims``)."""
    @functools.wraps(fn)
    def wrapped(*args, **kw):
        for torch_name, own in _TORCH_NAMES.items():
            if torch_name in kw:
                if own in kw:
                    raise TraceError(f"{fn.__name__}: give {own} or {torch_name}, not both")
                kw[own] = kw.pop(torch_name)
        return fn(*args, **kw)
    return wrapped


# -- elementwise --------------------------------------------------------------------------------


def _binary(op: str):
    def fn(a: Any, b: Any) -> Tensor:
        return emit1(op, [a, b])

    fn.__name__ = op
    fn.__doc__ = f"Elementwise {op} with numpy broadcasting."
    return fn


def _unary(op: str):
    def fn(x: Any) -> Tensor:
        return emit1(op, [x])

    fn.__name__ = op
    fn.__doc__ = f"Elementwise {op}."
    return fn


add, sub, mul, div, pow, maximum, minimum = map(
    _binary, ["add", "sub", "mul", "div", "pow", "maximum", "minimum"])
equal, not_equal, less, less_equal, greater, greater_equal = map(
    _binary, ["equal", "not_equal", "less", "less_equal", "greater", "greater_equal"])
logical_and, logical_or, logical_xor = map(_binary, ["logical_and", "logical_or", "logical_xor"])
logical_not, neg, abs, sign, exp, log, sqrt, rsqrt, reciprocal = map(
    _unary, ["logical_not", "neg", "abs", "sign", "exp", "log", "sqrt", "rsqrt", "reciprocal"])
sin, cos, erf, floor, ceil, round = map(_unary, ["sin", "cos", "erf", "floor", "ceil", "round"])
relu, sigmoid, tanh, silu, hardswish = map(
    _unary, ["relu", "sigmoid", "tanh", "silu", "hardswish"])
identity = _unary("identity")


def where(cond: Any, a: Any, b: Any) -> Tensor:
    """``a`` where ``cond`` is true, else ``b`` (broadcasting)."""
    like = next((t for t in (a, b) if not isinstance(t, (int, float, bool))), None)
    like = as_tensor(like) if like is not None else None
    return emit1("where", [as_tensor(cond), as_tensor(a, like), as_tensor(b, like)])


def masked_fill(x: Any, mask: Any, value: float) -> Tensor:
    """PyTorch's ``x.masked_fill(mask, value)``: ``value`` where the bool ``mask`` is true."""
    x = as_tensor(x)
    return emit1("where", [mask, full((), value, x.dtype), x])


def cast(x: Any, dtype: str) -> Tensor:
    return emit1("cast", [x], {"dtype": dtype})


def clip(x: Any, min: float | None = None, max: float | None = None) -> Tensor:
    return emit1("clip", [x], {"min": min, "max": max})


clamp = clip


def leaky_relu(x: Any, negative_slope: float = 0.01) -> Tensor:
    return emit1("leaky_relu", [x], {"alpha": negative_slope})


def elu(x: Any, alpha: float = 1.0) -> Tensor:
    return emit1("elu", [x], {"alpha": alpha})


def gelu(x: Any, approximate: str = "none") -> Tensor:
    return emit1("gelu", [x], {"approximate": approximate})


def softplus(x: Any, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    return emit1("softplus", [x], {"beta": beta, "threshold": threshold})


def heaviside(x: Any, value_at_zero: float = 1.0) -> Tensor:
    """The perceptron's step function."""
    return emit1("heaviside", [x], {"value_at_zero": value_at_zero})


def hardtanh(x: Any, min_val: float = -1.0, max_val: float = 1.0) -> Tensor:
    return emit1("hardtanh", [x], {"min_val": min_val, "max_val": max_val})


# -- linear algebra, reductions, softmax --------------------------------------------------------


def matmul(a: Any, b: Any) -> Tensor:
    return emit1("matmul", [a, b])


def linear(x: Any, weight: Any, bias: Any = None) -> Tensor:
    """``x @ weight.T + bias`` with PyTorch's weight layout [out_features, in_features]."""
    y = matmul(x, transpose(weight))
    return y if bias is None else add(y, bias)


def _reduce(op: str):
    def fn(x: Any, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Tensor:
        axes = (axis,) if isinstance(axis, int) else axis
        return emit1(op, [x], {"axes": axes, "keepdims": keepdims})

    fn.__name__ = op
    fn.__doc__ = f"{op} over ``axis`` (None: all axes)."
    return torch_names(fn)


sum, mean, prod, logsumexp = map(_reduce, ["sum", "mean", "prod", "logsumexp"])

#: what ``max``/``min`` return when given PyTorch's ``dim``, as ``torch.max`` does
ValuesIndices = namedtuple("ValuesIndices", ["values", "indices"])


def _extreme(op: str, values: Callable, indices: Callable) -> Callable:
    def fn(x: Any, axis: int | Sequence[int] | None = None, keepdims: bool = False, *,
           dim: int | None = None, keepdim: bool = False):
        if dim is None:
            return values(x, axis, keepdims)
        return ValuesIndices(values(x, dim, keepdim), indices(x, dim, keepdim))

    fn.__name__ = op
    fn.__doc__ = (f"{op} over ``axis`` (None: all axes). With PyTorch's ``dim``, as "
                  f"``torch.{op}(x, dim)``: the pair ``(values, indices)``.")
    return fn


@torch_names
def argmax(x: Any, axis: int = -1, keepdims: bool = False) -> Tensor:
    return emit1("argmax", [x], {"axis": axis, "keepdims": keepdims})


@torch_names
def argmin(x: Any, axis: int = -1, keepdims: bool = False) -> Tensor:
    return emit1("argmin", [x], {"axis": axis, "keepdims": keepdims})


max = _extreme("max", _reduce("max"), argmax)
min = _extreme("min", _reduce("min"), argmin)


@torch_names
def var(x: Any, axis: int | Sequence[int] | None = None, keepdims: bool = False,
        correction: int = 1, unbiased: bool | None = None) -> Tensor:
    """PyTorch's ``var``: the mean squared deviation over ``axis`` with ``correction``
    (1: Bessel's, PyTorch's default; ``unbiased=False`` is correction 0)."""
    x = as_tensor(x)
    if unbiased is not None:
        correction = 1 if unbiased else 0
    axes = range(x.ndim) if axis is None else ((axis,) if isinstance(axis, int) else axis)
    count = 1
    for a in axes:
        count = count * x.shape[a]
    if not isinstance(count, int):
        raise TraceError(f"var over symbolic dimension(s) of {x.type}: the divisor "
                         f"{count} - {correction} must be a number")
    d = sub(x, mean(x, axis, True))
    return div(sum(mul(d, d), axis, keepdims), float(builtins.max(count - correction, 0)))


@torch_names
def std(x: Any, axis: int | Sequence[int] | None = None, keepdims: bool = False,
        correction: int = 1, unbiased: bool | None = None) -> Tensor:
    """PyTorch's ``std``: the square root of ``var`` (same arguments)."""
    return sqrt(var(x, axis, keepdims, correction, unbiased))


@torch_names
def softmax(x: Any, axis: int = -1) -> Tensor:
    return emit1("softmax", [x], {"axis": axis})


@torch_names
def log_softmax(x: Any, axis: int = -1) -> Tensor:
    return emit1("log_softmax", [x], {"axis": axis})


# -- shapes -------------------------------------------------------------------------------------


def reshape(x: Any, shape: Sequence) -> Tensor:
    return emit1("reshape", [x], {"shape": tuple(shape)})


def transpose(x: Any, perm: Sequence[int] | None = None) -> Tensor:
    """Permute axes (None reverses them, as numpy's ``x.T``)."""
    return emit1("transpose", [x], {"perm": None if perm is None else tuple(perm)})


def swapaxes(x: Any, a: int, b: int) -> Tensor:
    """PyTorch's ``x.transpose(a, b)``."""
    rank = as_tensor(x).ndim
    perm = list(range(rank))
    perm[a], perm[b] = perm[b], perm[a]
    return transpose(x, perm)


@torch_names
def concat(xs: Sequence[Any], axis: int = 0) -> Tensor:
    return emit1("concat", list(xs), {"axis": axis})


cat = concat


@torch_names
def stack(xs: Sequence[Any], axis: int = 0) -> Tensor:
    return concat([unsqueeze(x, axis) for x in xs], axis)


@torch_names
def split(x: Any, split_size_or_sections: int | Sequence[int], axis: int = 0) -> list[Tensor]:
    """PyTorch's ``torch.split``: chunks of one size, or a list of sizes."""
    x = as_tensor(x)
    n = x.shape[axis]
    if isinstance(split_size_or_sections, int):
        if not isinstance(n, int):
            raise TraceError(f"split along symbolic dimension {n!r} of {x!r}")
        step = split_size_or_sections
        sizes = [builtins.min(step, n - i) for i in range(0, n, step)]
    else:
        sizes = list(split_size_or_sections)
    return emit("split", [x], {"axis": axis, "sizes": tuple(sizes)})


@torch_names
def chunk(x: Any, chunks: int, axis: int = 0) -> list[Tensor]:
    """PyTorch's ``torch.chunk``: pieces of ceil(n / chunks), the last one smaller. Along a
    symbolic axis there are always ``chunks`` pieces (an axis too short for that is an error
    when the model runs), the last one what the others leave."""
    n = as_tensor(x).shape[axis]
    if isinstance(n, int):
        return split(x, -(-n // chunks), axis)
    size = (n + chunks - 1) // chunks
    return split(x, [size] * (chunks - 1) + [n - (chunks - 1) * size], axis)


def slice(x: Any, starts: Sequence[int], ends: Sequence[int],
          axes: Sequence[int] | None = None, steps: Sequence[int] | None = None) -> Tensor:
    """ONNX-style strided slice; starts/ends clamp like Python's."""
    return emit1("slice", [x], {"starts": tuple(starts), "ends": tuple(ends),
                                "axes": None if axes is None else tuple(axes),
                                "steps": None if steps is None else tuple(steps)})


def gather(x: Any, indices: Any, axis: int = 0) -> Tensor:
    return emit1("gather", [x, indices], {"axis": axis})


def take_along_axis(x: Any, indices: Any, axis: int) -> Tensor:
    return emit1("take_along_axis", [x, indices], {"axis": axis})


def expand(x: Any, shape: Sequence) -> Tensor:
    """Broadcast to ``shape``; -1 keeps a dimension, as in PyTorch."""
    x = as_tensor(x)
    shape = tuple(shape)
    offset = len(shape) - x.ndim
    shape = tuple(x.shape[i - offset] if d == -1 else d for i, d in enumerate(shape))
    return emit1("expand", [x], {"shape": shape})


@torch_names
def unbind(x: Any, axis: int = 0) -> list[Tensor]:
    """PyTorch's ``unbind``: the slices along ``axis`` (a static one), that axis removed."""
    x = as_tensor(x)
    n = x.shape[axis]
    if not isinstance(n, int):
        raise TraceError(f"unbind along symbolic dimension {n!r} of {x.type}: the number of "
                         "pieces must be known when tracing")
    pieces = split(x, [1] * n, axis) if n > 1 else [x]
    return [squeeze(p, axis) for p in pieces]


def repeat(x: Any, *sizes: Any) -> Tensor:
    """PyTorch's ``x.repeat(*sizes)``: tiles ``x`` ``sizes[i]`` times along axis i (leading
    sizes add axes)."""
    x = as_tensor(x)
    sizes = tuple(sizes[0]) if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)) \
        else sizes
    if len(sizes) < x.ndim:
        raise TraceError(f"repeat sizes {sizes} need at least as many entries as the "
                         f"{x.ndim} axes of {x.type}")
    x = reshape(x, (1,) * (len(sizes) - x.ndim) + tuple(x.shape))
    # each axis d becomes (r, d) by a broadcast, then one axis r * d
    tiled = unsqueeze(x, tuple(range(0, 2 * x.ndim, 2)))  # [1, d0, 1, d1, ...]
    target = tuple(v for r, d in zip(sizes, x.shape) for v in (r, d))
    return reshape(expand(tiled, target), tuple(r * d for r, d in zip(sizes, x.shape)))


@torch_names
def squeeze(x: Any, axis: int | Sequence[int] | None = None) -> Tensor:
    axes = (axis,) if isinstance(axis, int) else axis
    return emit1("squeeze", [x], {"axes": None if axes is None else tuple(axes)})


@torch_names
def unsqueeze(x: Any, axis: int | Sequence[int]) -> Tensor:
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return emit1("unsqueeze", [x], {"axes": axes})


def flatten(x: Any, start_dim: int = 1, end_dim: int = -1) -> Tensor:
    return emit1("flatten", [x], {"start_dim": start_dim, "end_dim": end_dim})


def pad(x: Any, pad: Sequence[int], mode: str = "constant", value: float = 0.0) -> Tensor:
    """PyTorch's ``F.pad``: ``pad`` lists (before, after) pairs from the LAST axis backward."""
    x = as_tensor(x)
    if len(pad) % 2 or len(pad) // 2 > x.ndim:
        raise TraceError(f"pad {tuple(pad)} does not fit a rank-{x.ndim} tensor")
    begins, ends = [0] * x.ndim, [0] * x.ndim
    for i in range(len(pad) // 2):
        begins[x.ndim - 1 - i], ends[x.ndim - 1 - i] = pad[2 * i], pad[2 * i + 1]
    kiln_mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}.get(mode)
    if kiln_mode is None:
        raise UnsupportedOpError(f"pad mode {mode!r}; kiln has constant, reflect, replicate")
    return emit1("pad", [x], {"pads": tuple(begins + ends), "mode": kiln_mode,
                              "value": float(value)})


def tril(x: Any, k: int = 0) -> Tensor:
    return emit1("tril", [x], {"k": k})


def triu(x: Any, k: int = 0) -> Tensor:
    return emit1("triu", [x], {"k": k})


def one_hot(indices: Any, depth: int, dtype: str = "float32") -> Tensor:
    return emit1("one_hot", [indices], {"depth": depth, "dtype": dtype})


def index(x: Any, key: Any) -> Tensor:
    """``x[key]`` for ints, slices (with steps), None, Ellipsis and one integer tensor."""
    x = as_tensor(x)
    key = key if isinstance(key, tuple) else (key,)
    if builtins.sum(k is Ellipsis for k in key) > 1:
        raise TraceError("an index can hold only one Ellipsis")
    used = builtins.sum(k is not None and k is not Ellipsis for k in key)
    if used > x.ndim:
        raise TraceError(f"too many indices ({used}) for {x!r}")
    if any(k is Ellipsis for k in key):  # not `in`: Tensor.__eq__ builds a node
        i = next(j for j, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (builtins.slice(None),) * (x.ndim - used) + key[i + 1:]
    starts, ends, axes, steps, drop, new_axes, tensor_index = [], [], [], [], [], [], None
    axis = out_pos = 0  # axis: position in x; out_pos: position in the result
    big = 2**63 - 1
    for k in key:
        if k is None:
            new_axes.append(out_pos)
            out_pos += 1
            continue
        if isinstance(k, builtins.slice):
            if k != builtins.slice(None):
                step = 1 if k.step is None else k.step
                starts.append(k.start if k.start is not None else (0 if step > 0 else big))
                ends.append(k.stop if k.stop is not None else (big if step > 0 else -big))
                axes.append(axis)
                steps.append(step)
            out_pos += 1
        elif isinstance(k, int):
            n = x.shape[axis]
            if isinstance(n, int) and not -n <= k < n:
                raise TraceError(f"index {k} is out of range for axis {axis} of {x!r}")
            starts.append(k)
            ends.append(k + 1 if k != -1 else big)
            axes.append(axis)
            steps.append(1)
            drop.append(axis)
        elif isinstance(k, Tensor) and tensor_index is None:
            tensor_index = (axis, k)
            out_pos += k.ndim
        else:
            raise TraceError(f"unsupported index {k!r} (ints, slices, None, ..., one int tensor)")
        axis += 1
    y = slice(x, starts, ends, axes, steps) if axes else x
    if tensor_index is not None:
        at, indices = tensor_index
        y = gather(y, indices, at)
        drop = [d + indices.ndim - 1 if d > at else d for d in drop]
    if drop:
        y = squeeze(y, drop)
    for pos in new_axes:
        y = unsqueeze(y, pos)
    return y


# -- constants ----------------------------------------------------------------------------------


def full(shape: Sequence[int], value: float | int | bool, dtype: str = "float32") -> Tensor:
    value = float(value) if is_float(dtype) else bool(value) if dtype == "bool" else int(value)
    return emit1("full", [], {"shape": tuple(shape), "value": value, "dtype": dtype})


def zeros(shape: Sequence[int], dtype: str = "float32") -> Tensor:
    return full(shape, 0, dtype)


def ones(shape: Sequence[int], dtype: str = "float32") -> Tensor:
    return full(shape, 1, dtype)


def arange(start: int, stop: int | None = None, step: int = 1, dtype: str = "int64") -> Tensor:
    if stop is None:
        start, stop = 0, start
    return emit1("arange", [], {"start": start, "stop": stop, "step": step, "dtype": dtype})


def random_normal(shape: Sequence[int], mean: float = 0.0, std: float = 1.0, seed: int = 0,
                  dtype: str = "float32") -> Tensor:
    return emit1("random_normal", [], {"shape": tuple(shape), "mean": mean, "std": std,
                                       "seed": seed, "dtype": dtype})


def random_uniform(shape: Sequence[int], low: float = 0.0, high: float = 1.0, seed: int = 0,
                   dtype: str = "float32") -> Tensor:
    return emit1("random_uniform", [], {"shape": tuple(shape), "low": low, "high": high,
                                        "seed": seed, "dtype": dtype})


# -- neural-network ops -------------------------------------------------------------------------


def _tuple(v: int | Sequence[int], n: int) -> tuple[int, ...]:
    return (v,) * n if isinstance(v, int) else tuple(v)


def _conv_pads(padding, kernel: Sequence[int], dilation: Sequence[int], stride) -> tuple:
    """PyTorch's padding (int, per-axis tuple, 'valid' or 'same') as begins-then-ends pads."""
    n = len(kernel)
    if padding == "valid":
        return (0,) * 2 * n
    if padding == "same":
        if any(s != 1 for s in _tuple(stride, n)):
            raise TraceError("padding='same' needs stride 1 (as in PyTorch)")
        total = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return tuple(t // 2 for t in total) + tuple(t - t // 2 for t in total)
    p = _tuple(padding, n)
    return p + p


def _conv(op: str, n: int, x, weight, bias, stride, padding, dilation, groups) -> Tensor:
    w = as_tensor(weight)
    dil = _tuple(dilation, n)
    attrs = {"strides": _tuple(stride, n), "dilations": dil, "groups": groups,
             "pads": _conv_pads(padding, w.shape[2:], dil, stride)}
    return emit1(op, [x, w] + ([] if bias is None else [bias]), attrs)


def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> Tensor:
    return _conv("conv1d", 1, x, weight, bias, stride, padding, dilation, groups)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> Tensor:
    return _conv("conv2d", 2, x, weight, bias, stride, padding, dilation, groups)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1) -> Tensor:
    attrs = {"strides": _tuple(stride, 2), "pads": _tuple(padding, 2) * 2,
             "output_padding": _tuple(output_padding, 2), "dilations": _tuple(dilation, 2),
             "groups": groups}
    return emit1("conv_transpose2d", [x, weight] + ([] if bias is None else [bias]), attrs)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False) -> Tensor:
    attrs = {"kernel_shape": _tuple(kernel_size, 2),
             "strides": None if stride is None else _tuple(stride, 2),
             "pads": _tuple(padding, 2) * 2, "dilations": _tuple(dilation, 2),
             "ceil_mode": ceil_mode}
    return emit1("max_pool2d", [x], attrs)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True) -> Tensor:
    attrs = {"kernel_shape": _tuple(kernel_size, 2),
             "strides": None if stride is None else _tuple(stride, 2),
             "pads": _tuple(padding, 2) * 2, "ceil_mode": ceil_mode,
             "count_include_pad": count_include_pad}
    return emit1("avg_pool2d", [x], attrs)


def global_avg_pool2d(x: Any) -> Tensor:
    return emit1("global_avg_pool2d", [x])


def adaptive_avg_pool2d(x: Any, output_size: int | Sequence[int]) -> Tensor:
    """Global pooling for output 1x1; an exact average pool when the input divides evenly."""
    x = as_tensor(x)
    oh, ow = _tuple(output_size, 2)
    if (oh, ow) == (1, 1):
        return global_avg_pool2d(x)
    h, w = x.shape[-2:]
    if (h, w) == (oh, ow):
        return x
    if not (isinstance(h, int) and isinstance(w, int) and h % oh == 0 and w % ow == 0):
        raise UnsupportedOpError(
            f"adaptive_avg_pool2d from {h}x{w} to {oh}x{ow}: kiln supports 1x1 or sizes that "
            f"divide the input evenly")
    k = (h // oh, w // ow)
    return avg_pool2d(x, k, k)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5) -> Tensor:
    """Inference-form batch norm (PyTorch's argument order); training mode is not traced."""
    if training:
        raise UnsupportedOpError("batch_norm with training=True (batch statistics) is not "
                                 "supported; trace the model in eval mode")
    mean = as_tensor(running_mean)
    c = mean.shape[0]
    weight = ones((c,), mean.dtype) if weight is None else weight
    bias = zeros((c,), mean.dtype) if bias is None else bias
    return emit1("batch_norm", [x, weight, bias, mean, running_var], {"epsilon": eps})


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5) -> Tensor:
    n = len(_tuple(normalized_shape, 1))
    if bias is not None and weight is None:
        weight = ones(_tuple(normalized_shape, 1), as_tensor(x).dtype)
    inputs = [x] + [t for t in (weight, bias) if t is not None]
    return emit1("layer_norm", inputs, {"axis": -n, "epsilon": eps})


def local_response_norm(x, size: int, alpha=1e-4, beta=0.75, k=1.0) -> Tensor:
    return emit1("lrn", [x], {"size": size, "alpha": alpha, "beta": beta, "bias": k})


def dropout(x, p: float = 0.5, training: bool = False, seed: int = 0) -> Tensor:
    """Identity unless ``training``; then a seeded mask (kept values scaled by 1/(1-p))."""
    if not training or p == 0:
        return as_tensor(x)
    if p == 1:
        return mul(x, 0.0)
    return emit1("dropout", [x], {"p": p, "training": True, "seed": seed})


def embedding(ids: Any, weight: Any) -> Tensor:
    """Rows of ``weight`` [num_embeddings, dim] picked by integer ``ids``."""
    return gather(weight, ids, 0)


def as_constant(array) -> Tensor:
    """A numpy array as a named constant of the traced graph."""
    return constant(array)


__all__ = [name for name in dir() if not name.startswith("_") and name not in (
    "annotations", "builtins", "Any", "Sequence", "KilnError", "TraceError",
    "UnsupportedOpError", "Tensor", "as_tensor", "emit", "emit1", "is_float")]


__all__ = [
    "ValuesIndices", "abs", "adaptive_avg_pool2d", "add", "arange", "argmax", "argmin",
    "as_constant", "avg_pool2d", "batch_norm", "cast", "cat", "ceil", "chunk", "clamp", "clip",
    "concat", "conv1d", "conv2d", "conv_transpose2d", "cos", "div", "dropout", "elu",
    "embedding", "equal", "erf", "exp", "expand", "flatten", "floor", "full", "gather", "gelu",
    "global_avg_pool2d", "greater", "greater_equal", "hardswish", "hardtanh", "heaviside",
    "identity", "index", "layer_norm", "leaky_relu", "less", "less_equal", "linear",
    "local_response_norm", "log", "log_softmax", "logical_and", "logical_not", "logical_or",
    "logical_xor", "logsumexp", "masked_fill", "matmul", "max", "max_pool2d", "maximum", "mean",
    "min", "minimum", "mul", "neg", "not_equal", "one_hot", "ones", "pad", "pow", "prod",
    "random_normal", "random_uniform", "reciprocal", "relu", "repeat", "reshape", "round",
    "rsqrt", "sigmoid", "sign", "silu", "sin", "slice", "softmax", "softplus", "split", "sqrt",
    "squeeze", "stack", "std", "sub", "sum", "swapaxes", "take_along_axis", "tanh",
    "torch_names", "transpose", "tril", "triu", "unbind", "unsqueeze", "var", "where", "zeros"
]
