"""Vector-Jacobian rules for elementwise, activation, reduction, matmul and shape ops, plus the
declarations of ops that have no gradient (see ``kiln.passes.autodiff`` for the rule protocol).

Conventions, chosen to match PyTorch where it has the op:

- kinks take the subgradient PyTorch takes: relu, leaky_relu, abs give 0 slope at 0 (abs:
  sign(0) = 0); clip passes the gradient on its bounds, hardtanh does not; elu at 0 uses
  alpha * e^0;
- ties split evenly: maximum/minimum of equal values give each half; max/min reductions share
  the gradient among all the tied maxima (as ``torch.amax``); max_pool2d, like PyTorch, gives
  it to the first maximum of each window only;
- pow's exponent gradient is 0 where the base is 0 and the exponent >= 0, as in PyTorch;
- prod handles zeros exactly (one zero: only it gets the product of the others);
- heaviside has a zero gradient (almost everywhere); floor, ceil, round and sign are declared
  non-differentiable instead, so a gradient asked through them is an error, not a silent 0.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from kiln.ir.types import is_float

if TYPE_CHECKING:
    from kiln.passes.autodiff import Var, VJPContext

BIG = 2**62  # a slice bound past either end of any axis


def ind(c: VJPContext, cond: Var, like: Var) -> Var:
    """1 where ``cond`` holds, else 0, in the dtype of ``like``."""
    return c.cast(cond, dtype=like.dtype)


def binary(da, db):
    """A rule for a broadcasting binary op from its cotangents at the output's shape."""

    def rule(c: VJPContext, g: Var):
        a, b = c.inputs
        return (c.unbroadcast(da(c, g, a, b), a) if c.needs[0] else None,
                c.unbroadcast(db(c, g, a, b), b) if c.needs[1] else None)

    return rule


def _pow_base(c, g, a, b):
    return c.where(c.equal(b, 0), 0, g * b * a ** (b - 1))


def _pow_exponent(c, g, a, b):
    return c.where(c.equal(a, 0) & (b >= 0), 0, g * c.y * c.log(a))


def _extremum(pick_a):
    """maximum/minimum: the winner takes the gradient; a tie splits it evenly."""

    def da(c, g, a, b):
        return g * (ind(c, pick_a(a, b), g) + ind(c, c.equal(a, b), g) * 0.5)

    def db(c, g, a, b):
        return g - da(c, g, a, b)

    return binary(da, db)


def _clip(c: VJPContext, g: Var) -> Var:
    lo, hi = c.attrs["min"], c.attrs["max"]
    keep = None
    for cond in ([c.x >= lo] if lo is not None else []) + ([c.x <= hi] if hi is not None else []):
        keep = cond if keep is None else keep & cond
    return g if keep is None else c.where(keep, g, 0)


def _gelu(c: VJPContext, g: Var) -> Var:
    x = c.x
    if c.attrs["approximate"] == "tanh":
        k = math.sqrt(2 / math.pi)
        t = c.tanh(k * (x + 0.044715 * x * x * x))
        return g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x))
    cdf = 0.5 * (1 + c.erf(x * (1 / math.sqrt(2))))
    pdf = c.exp(-0.5 * x * x) * (1 / math.sqrt(2 * math.pi))
    return g * (cdf + x * pdf)


def _silu(c: VJPContext, g: Var) -> Var:
    s = c.sigmoid(c.x)
    return g * s * (1 + c.x * (1 - s))


def _hardswish(c: VJPContext, g: Var) -> Var:
    # PyTorch's: 0 below -3, x / 3 + 1/2 on [-3, 3], 1 above
    return c.where(c.x < -3, 0, c.where(c.x <= 3, g * (c.x * (1 / 3) + 0.5), g))


def _softplus(c: VJPContext, g: Var) -> Var:
    bx = c.x * c.attrs["beta"]
    return c.where(bx > c.attrs["threshold"], g, g * c.sigmoid(bx))


ELEMENTWISE = {
    "add": binary(lambda c, g, a, b: g, lambda c, g, a, b: g),
    "sub": binary(lambda c, g, a, b: g, lambda c, g, a, b: -g),
    "mul": binary(lambda c, g, a, b: g * b, lambda c, g, a, b: g * a),
    "div": binary(lambda c, g, a, b: g / b, lambda c, g, a, b: -g * c.y / b),
    "pow": binary(_pow_base, _pow_exponent),
    "maximum": _extremum(lambda a, b: a > b),
    "minimum": _extremum(lambda a, b: a < b),
    "neg": lambda c, g: -g,
    "abs": lambda c, g: g * (ind(c, c.x > 0, g) - ind(c, c.x < 0, g)),
    "exp": lambda c, g: g * c.y,
    "log": lambda c, g: g / c.x,
    "sqrt": lambda c, g: g / (2 * c.y),
    "rsqrt": lambda c, g: -0.5 * g * c.y * c.y * c.y,
    "reciprocal": lambda c, g: -g * c.y * c.y,
    "sin": lambda c, g: g * c.cos(c.x),
    "cos": lambda c, g: -g * c.sin(c.x),
    "erf": lambda c, g: g * (2 / math.sqrt(math.pi)) * c.exp(-c.x * c.x),
    "where": lambda c, g: (None, c.unbroadcast(c.where(c.x, g, 0), c.inputs[1]),
                           c.unbroadcast(c.where(c.x, 0, g), c.inputs[2])),
    # float -> float only: an integer or bool input has no gradient, an integer output none
    "cast": lambda c, g: c.cast(g, dtype=c.x.dtype) if is_float(c.x.dtype) else None,
    "clip": _clip,
    "identity": lambda c, g: g,
    # activations
    "relu": lambda c, g: c.where(c.x > 0, g, 0),
    "leaky_relu": lambda c, g: c.where(c.x > 0, g, g * c.attrs["alpha"]),
    "elu": lambda c, g: c.where(c.x > 0, g, g * (c.y + c.attrs["alpha"])),
    "sigmoid": lambda c, g: g * c.y * (1 - c.y),
    "tanh": lambda c, g: g * (1 - c.y * c.y),
    "gelu": _gelu,
    "silu": _silu,
    "hardswish": _hardswish,
    "softplus": _softplus,
    "heaviside": lambda c, g: None,  # zero almost everywhere
    "hardtanh": lambda c, g: c.where((c.x > c.attrs["min_val"]) & (c.x < c.attrs["max_val"]),
                                     g, 0),
}

# -- reductions, softmax, matmul ---------------------------------------------------------------


def _axes(c: VJPContext) -> tuple[int, ...]:
    axes, rank = c.attrs["axes"], c.x.rank
    return tuple(range(rank)) if axes is None else tuple(sorted(a % rank for a in axes))


def _mean(c: VJPContext, g: Var) -> Var:
    return c.restore(g, c.attrs["axes"], c.attrs["keepdims"]) / c.count(c.x, _axes(c))


def _prod(c: VJPContext, g: Var) -> Var:
    """d prod / d x_i = product of the others, exact with zeros in the slice."""
    x, axes = c.x, _axes(c)
    zero = c.equal(x, 0)
    zeros = c.sum(ind(c, zero, x), axes=axes, keepdims=True)
    safe = c.where(zero, 1, x)
    others = c.prod(safe, axes=axes, keepdims=True)  # product of the non-zero entries
    d = c.where(c.equal(zeros, 0), others / safe, c.where(zero & c.equal(zeros, 1), others, 0))
    return c.restore(g, c.attrs["axes"], c.attrs["keepdims"]) * d


def _extreme(c: VJPContext, g: Var) -> Var:
    """max/min over axes: the gradient is shared evenly among the tied extremes."""
    axes, keep = c.attrs["axes"], c.attrs["keepdims"]
    hit = ind(c, c.equal(c.x, c.restore(c.y, axes, keep)), c.x)
    return c.restore(g, axes, keep) * hit / c.sum(hit, axes=_axes(c), keepdims=True)


def _logsumexp(c: VJPContext, g: Var) -> Var:
    axes, keep = c.attrs["axes"], c.attrs["keepdims"]
    return c.restore(g, axes, keep) * c.exp(c.x - c.restore(c.y, axes, keep))


def swap_last(c: VJPContext, v: Var) -> Var:
    """Transpose the last two axes."""
    perm = tuple(range(v.rank - 2)) + (v.rank - 1, v.rank - 2)
    return c.transpose(v, perm=perm)


def _matmul(c: VJPContext, g: Var):
    """1-D operands are lifted to matrices, batch broadcasting is undone by summing."""
    a, b = c.inputs
    a2 = c.unsqueeze(a, axes=(0,)) if a.rank == 1 else a
    b2 = c.unsqueeze(b, axes=(1,)) if b.rank == 1 else b
    if b.rank == 1:
        g = c.unsqueeze(g, axes=(g.rank,))
    if a.rank == 1:
        g = c.unsqueeze(g, axes=(g.rank - 1,))
    da = db = None
    if c.needs[0]:
        da = c.unbroadcast(c.matmul(g, swap_last(c, b2)), a2)
        da = c.squeeze(da, axes=(0,)) if a.rank == 1 else da
    if c.needs[1]:
        db = c.unbroadcast(c.matmul(swap_last(c, a2), g), b2)
        db = c.squeeze(db, axes=(1,)) if b.rank == 1 else db
    return da, db


REDUCTIONS = {
    "sum": lambda c, g: c.restore(g, c.attrs["axes"], c.attrs["keepdims"]),
    "mean": _mean,
    "prod": _prod,
    "max": _extreme,
    "min": _extreme,
    "logsumexp": _logsumexp,
    "softmax": lambda c, g: (g - c.sum(g * c.y, axes=(c.attrs["axis"],), keepdims=True)) * c.y,
    "log_softmax": lambda c, g: g - c.exp(c.y) * c.sum(g, axes=(c.attrs["axis"],),
                                                       keepdims=True),
    "matmul": _matmul,
}

# -- shape ops ---------------------------------------------------------------------------------


def slice_axis(c: VJPContext, v: Var, axis: int, start: int, end: int, step: int = 1) -> Var:
    return c.slice(v, starts=(start,), ends=(end,), axes=(axis,), steps=(step,))


def pad_axis(c: VJPContext, v: Var, axis: int, before: int, after: int) -> Var:
    if not before and not after:
        return v
    pads = [0] * (2 * v.rank)
    pads[axis], pads[v.rank + axis] = before, after
    return c.pad(v, pads=tuple(pads))


def unslice(c: VJPContext, g: Var, axis: int, start: int, step: int, size: int) -> Var:
    """The adjoint of taking ``g.shape[axis]`` elements from ``start`` every ``step`` along
    ``axis`` of a tensor with ``size`` there: g's elements put back in place, zeros around."""
    n = g.shape[axis]
    if n == 0:
        return pad_axis(c, g, axis, size, 0)
    if step < 0:  # reverse, then it is a forward slice starting at the last element taken
        g = slice_axis(c, g, axis, -1, -BIG, -1)
        start, step = start + (n - 1) * step, -step
    if step > 1 and n > 1:  # spread out: n elements, step - 1 zeros after each, trimmed
        g = pad_axis(c, c.unsqueeze(g, axes=(axis + 1,)), axis + 1, 0, step - 1)
        g = c.flatten(g, start_dim=axis, end_dim=axis + 1)
        g = slice_axis(c, g, axis, 0, (n - 1) * step + 1)
    return pad_axis(c, g, axis, start, size - start - g.shape[axis])


def _slice(c: VJPContext, g: Var) -> Var:
    a = c.attrs
    n = len(a["starts"])
    axes = a["axes"] if a["axes"] is not None else tuple(range(n))
    steps = a["steps"] if a["steps"] is not None else (1,) * n
    for axis, start, end, step in zip(axes, a["starts"], a["ends"], steps):
        axis %= c.x.rank
        size = c.x.shape[axis]
        if not isinstance(size, int):
            continue  # the whole of a symbolic axis
        taken = range(*slice(start, end, step).indices(size))
        g = unslice(c, g, axis, taken.start if len(taken) else 0, step, size)
    return g


def _split(c: VJPContext, g: Var | list[Var]) -> Var:
    return c.concat(*(g if isinstance(g, list) else [g]), axis=c.attrs["axis"])


def _concat(c: VJPContext, g: Var):
    if len(c.inputs) == 1:
        return (g,)
    axis = c.attrs["axis"] % c.x.rank
    return tuple(c.emit("split", [g], {"axis": axis,
                                       "sizes": tuple(x.shape[axis] for x in c.inputs)}))


def _transpose(c: VJPContext, g: Var) -> Var:
    perm = c.attrs["perm"]
    if perm is None:
        return c.transpose(g)
    perm = [p % c.x.rank for p in perm]
    return c.transpose(g, perm=tuple(sorted(range(len(perm)), key=perm.__getitem__)))


def _squeeze(c: VJPContext, g: Var) -> Var:
    axes = c.attrs["axes"]
    if axes is None:
        axes = tuple(i for i, d in enumerate(c.x.shape) if d == 1)
    axes = tuple(sorted(a % c.x.rank for a in axes))
    return c.unsqueeze(g, axes=axes) if axes else g


def _unsqueeze(c: VJPContext, g: Var) -> Var:
    return c.squeeze(g, axes=tuple(sorted(a % c.y.rank for a in c.attrs["axes"])))


def _need_static(c: VJPContext, d: Any, what: str) -> int:
    if not isinstance(d, int):
        raise c.error(f"{what} is the symbolic size {d!r}; this gradient needs it static")
    return d


def _gather(c: VJPContext, g: Var):
    """Scatter-add of g into data's shape, as one_hot(indices)^T @ g (no scatter op yet)."""
    if not c.needs[0]:
        return None, None
    x, idx = c.inputs
    axis = c.attrs["axis"] % x.rank
    depth = _need_static(c, x.shape[axis], f"axis {axis} of the data")
    hot = c.one_hot(idx, depth=depth, dtype=x.dtype)  # idx.shape + [depth]
    k, pre, post = idx.rank, axis, x.rank - axis - 1
    if k == 0:  # a scalar index took one slice: put it back, scaled by the one-hot
        hot = c.reshape(hot, shape=(depth,) + (1,) * post)
        return c.unsqueeze(g, axes=(axis,)) * hot, None
    if k > 1:
        g = c.flatten(g, start_dim=axis, end_dim=axis + k - 1)
        hot = c.flatten(hot, start_dim=0, end_dim=k - 1)
    rank = pre + 1 + post
    moved = c.transpose(g, perm=tuple(range(pre)) + tuple(range(pre + 1, rank)) + (pre,))
    out = c.matmul(moved, hot)  # pre + post + [depth]
    perm = tuple(range(pre)) + (rank - 1,) + tuple(range(pre, rank - 1))
    return c.transpose(out, perm=perm), None


def _take_along_axis(c: VJPContext, g: Var):
    if not c.needs[0]:
        return None, None
    x, idx = c.inputs
    axis = c.attrs["axis"] % x.rank
    depth = _need_static(c, x.shape[axis], f"axis {axis} of the data")
    hot = c.one_hot(idx, depth=depth, dtype=x.dtype)  # idx.shape + [depth]
    spread = c.sum(c.unsqueeze(g, axes=(g.rank,)) * hot, axes=(axis,), keepdims=True)
    perm = list(range(spread.rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    back = c.squeeze(c.transpose(spread, perm=tuple(perm)), axes=(spread.rank - 1,))
    return c.unbroadcast(back, x), None


def _pad(c: VJPContext, g: Var) -> Var:
    """Crop; edge and reflect padding also fold the padded cotangents back onto the border
    elements (edge) or the mirrored ones (reflect)."""
    pads, mode, rank = c.attrs["pads"], c.attrs["mode"], c.x.rank
    for axis in range(rank):
        b, a = pads[axis], pads[rank + axis]
        if not b and not a:
            continue
        d = c.x.shape[axis]
        out = slice_axis(c, g, axis, b, b + d)
        if mode == "edge":
            if b:
                first = c.sum(slice_axis(c, g, axis, 0, b), axes=(axis,), keepdims=True)
                out = out + pad_axis(c, first, axis, 0, d - 1)
            if a:
                last = c.sum(slice_axis(c, g, axis, b + d, b + d + a), axes=(axis,),
                             keepdims=True)
                out = out + pad_axis(c, last, axis, d - 1, 0)
        elif mode == "reflect":
            if b:  # g[b-1], ..., g[0] mirror x[1], ..., x[b]
                out = out + pad_axis(c, slice_axis(c, g, axis, b - 1, -BIG, -1), axis, 1,
                                     d - 1 - b)
            if a:  # g[b+d], ..., g[b+d+a-1] mirror x[d-2], ..., x[d-1-a]
                mirrored = slice_axis(c, g, axis, b + d + a - 1, b + d - 1, -1)
                out = out + pad_axis(c, mirrored, axis, d - 1 - a, 1)
        g = out
    return g


SHAPES = {
    "reshape": lambda c, g: c.reshape(g, shape=c.x.shape),
    "flatten": lambda c, g: c.reshape(g, shape=c.x.shape),
    "transpose": _transpose,
    "concat": _concat,
    "split": _split,
    "slice": _slice,
    "gather": _gather,
    "take_along_axis": _take_along_axis,
    "expand": lambda c, g: c.unbroadcast(g, c.x),
    "squeeze": _squeeze,
    "unsqueeze": _unsqueeze,
    "pad": _pad,
    "tril": lambda c, g: c.tril(g, k=c.attrs["k"]),
    "triu": lambda c, g: c.triu(g, k=c.attrs["k"]),
}

RULES = {**ELEMENTWISE, **REDUCTIONS, **SHAPES}

# Ops with no gradient, and why. A cotangent reaching their (float) output from an input that
# needs a gradient is an error; integer and bool results carry no cotangent, so paths through
# them add nothing.
_INDEX, _BOOL, _SOURCE = "an integer result", "a bool result", "no inputs"
_STEP = "piecewise constant: zero almost everywhere, undefined at the steps"
NON_DIFFERENTIABLE: dict[str, str] = {
    "argmax": _INDEX, "argmin": _INDEX, "one_hot": "an integer input",
    "matmul_integer": _INDEX, "conv2d_integer": _INDEX,
    **dict.fromkeys(("equal", "not_equal", "less", "less_equal", "greater", "greater_equal",
                     "logical_and", "logical_or", "logical_xor", "logical_not"), _BOOL),
    **dict.fromkeys(("arange", "full", "dims", "random_uniform", "random_normal"), _SOURCE),
    **dict.fromkeys(("floor", "ceil", "round", "sign"), _STEP),
}

# Ops that are differentiable but have no rule yet: op -> why.
_LAYOUT = ("made by the O3 layout pass, which runs after autodiff: differentiate the NCHW "
           "graph, then lay it out")
NOT_YET: dict[str, str] = dict.fromkeys((
    "layout_transform", "conv2d_nchwc", "depthwise_conv2d_nchwc", "max_pool2d_nchwc",
    "avg_pool2d_nchwc",
    "global_avg_pool2d_nchwc"), _LAYOUT)
