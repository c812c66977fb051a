"""TE builders of reductions, arg-reductions, softmax and log-softmax.

A reduction whose axes include the last (contiguous) one is built in two stages when that
axis is long enough: ``partial[..., lane]`` keeps one running result per vector lane over
``x[..., q * lanes + lane]`` (a guard covers a ragged last chunk), then a short reduce over
the lanes. The stages carry annotations for the scheduler (``schedules/generic.py``):
``kiln.sched = "lanes"``, ``kiln.row`` = how many leading axes are rows (kept, not reduced),
``kiln.outer = 1`` when the last axis is kept (so the scheduler vectorizes it instead).
"""

from __future__ import annotations

from typing import Callable, Sequence

from tvm import te, tirx

from kiln.codegen.lower import lowering
from kiln.codegen.ops import common as c
from kiln.codegen.ops.common import const, dtype_of, shape_of
from kiln.ir.ops.registry import normalize_axes
from kiln.ir.types import HALF_DTYPES, is_float


def identity(op: str, dtype: str):
    """The identity of ``op``'s reducer for ``dtype`` (-inf for a float max: a finite stand-in
    would be the result of an all -inf row)."""
    if op == "sum":
        return const(0, dtype)
    if op == "prod":
        return const(1, dtype)
    largest = op in ("max", "shift")
    if is_float(dtype):
        return const(float("-inf") if largest else float("inf"), dtype)
    return tirx.min_value(dtype) if largest else tirx.max_value(dtype)


_COMBINE = {
    "sum": lambda a, b: a + b,
    "prod": lambda a, b: a * b,
    # a NaN anywhere makes the result NaN (te.max would drop it). Not common.maximum's
    # ``isnan(a) ? a : max(a, b)``: made the combiner of a max pool, that form took 1.4-2.1x
    # the time (its select sits on the accumulator's chain)
    "max": lambda a, b: _nan_first(tirx.max, a, a > b, b),
    "min": lambda a, b: _nan_first(tirx.min, a, a < b, b),
    # the shift of softmax, log_softmax and logsumexp: a NaN of the row reaches their result
    # through the sum of exp(x - shift) whether the shift kept it or not, so the shift may
    # drop it (one max instruction; the NaN-propagating max made a softmax 1.16x slower)
    "shift": lambda a, b: tirx.max(a, b),
}


def _nan_first(plain, a, a_wins, b):
    """``a`` where it wins or is NaN, else ``b`` (so a NaN ``b`` too: a NaN never wins);
    ``plain(a, b)`` for integers."""
    if not is_float(dtype_of(a)):
        return plain(a, b)
    return tirx.Select(tirx.Or(a_wins, c.isnan(a)), a, b)


def reducer(op: str, test_value: bool = True):
    """The comm_reducer of ``op`` (sum, prod, max, min); max and min propagate NaN.

    Their combiner tests the new value for NaN (``test_value``): off the accumulator's chain
    of dependent instructions (the max of 1536 rows of 128: 1.57x -> 1.16x the time of
    te.max, measured as a softmax's shift). A
    value that is an expensive expression (the masked strided load of a pool's window) is
    better tested through the accumulator: it then appears twice, not three times, and LLVM
    does not merge the repeated masked loads (an NCHW max pool 4.8x -> 0.93x)."""
    return te.comm_reducer(combiner(op, test_value), lambda t: identity(op, str(t)), name=op)


def combiner(op: str, test_value: bool = True) -> Callable:
    """``(accumulator, value) -> combined`` of ``reducer(op, test_value)``."""
    if test_value and op in ("max", "min"):
        return lambda acc, value: _COMBINE[op](value, acc)
    return _COMBINE[op]


# A float32 sum over more elements than this accumulates in float64: its lane accumulators
# would each add up ~n/16 values in sequence (a layer norm over a 1536x2048 plane was off by
# 1.2e-4 from the float64 reference, 6.4e-7 so); such rows are memory-bound (1.02x the time)
LONG_SUM = 1 << 16


def reduce_rows(
    read: Callable[[Sequence], object],
    in_shape: Sequence[int],
    axes: Sequence[int],
    op: str,
    dtype: str,
    lanes: int,
    name: str,
):
    """A keepdims-shaped tensor: ``op`` over ``axes`` of the expression ``read(index)``."""
    rank = len(in_shape)
    axes = tuple(axes)
    out_shape = tuple(1 if i in axes else d for i, d in enumerate(in_shape))
    depth = min(axes) if axes else rank
    ann = {"kiln.row": depth}
    if op in ("sum", "prod") and dtype in HALF_DTYPES:  # 16-bit floats sum in float32
        # (``lanes`` of a 16-bit float are float32's already: ``Target.lanes``)
        wide = reduce_rows(lambda i: read(i).astype("float32"), in_shape, axes, op, "float32",
                           lanes, name + "_f32")
        return te.compute(out_shape, lambda *i: wide[i].astype(dtype), name=name, attrs=ann)
    if op == "sum" and dtype == "float32" and \
            c.nominal_prod(in_shape[a] for a in axes) > LONG_SUM:
        wide = reduce_rows(lambda i: read(i).astype("float64"), in_shape, axes, op, "float64",
                           max(1, lanes // 2), name + "_f64")
        return te.compute(out_shape, lambda *i: wide[i].astype(dtype), name=name, attrs=ann)
    reduce_op = reducer(op)
    last = rank - 1
    if rank and last in axes and lanes > 1 and c.nominal(in_shape[last]) >= 2 * lanes:
        return _reduce_lanes(read, in_shape, axes, op, lanes, name, out_shape, ann)
    raxes = [te.reduce_axis((0, in_shape[a]), name=f"r{a}") for a in axes]

    def fn(*idx):
        full = list(idx)
        for a, r in zip(axes, raxes):
            full[a] = r
        return reduce_op(read(full), axis=raxes) if raxes else read(full)

    if last not in axes:
        ann["kiln.outer"] = 1
    return te.compute(out_shape, fn, name=name, attrs=ann)


def _reduce_lanes(read, in_shape, axes, op, lanes, name, out_shape, ann):
    """Full vector chunks of the last axis into per-lane partials, the ragged tail (fewer
    than ``lanes`` elements) reduced on its own: no vector load ever reads past a row."""
    reduce_op = reducer(op)
    last = len(in_shape) - 1
    n = in_shape[last]
    # (a symbolic row length always gets the tail stage, which may run no iterations)
    chunks, tail = divmod(n, lanes) if c.is_static(n) else (
        tirx.floordiv(n, lanes), tirx.floormod(n, lanes))
    others = [a for a in axes if a != last]

    def indexer(outer, r_other, pos):
        full = list(outer)
        for a, r in zip(others, r_other):
            full[a] = r
        full[last] = pos
        return full

    r_other = [te.reduce_axis((0, in_shape[a]), name=f"r{a}") for a in others]
    q = te.reduce_axis((0, chunks), name="q")
    partial = te.compute(
        out_shape + (lanes,),
        lambda *i: reduce_op(read(indexer(i[:-1], r_other, q * lanes + i[-1])),
                            axis=[*r_other, q]),
        name=name + "_lanes", attrs={"kiln.sched": "lanes", **ann})
    lane = te.reduce_axis((0, lanes), name="lane")
    body = te.compute(out_shape, lambda *i: reduce_op(partial[(*i, lane)], axis=lane),
                      name=name + ("" if c.is_static(tail) and not tail else "_body"),
                      attrs=ann)
    if c.is_static(tail) and not tail:
        return body
    r_tail = [te.reduce_axis((0, in_shape[a]), name=f"t{a}") for a in others]
    t = te.reduce_axis((0, tail), name="t")
    rest = te.compute(
        out_shape,
        lambda *i: reduce_op(read(indexer(i, r_tail, chunks * lanes + t)), axis=[*r_tail, t]),
        name=name + "_tail", attrs=ann)
    return te.compute(out_shape, lambda *i: _COMBINE[op](body[i], rest[i]), name=name,
                      attrs=ann)


def squeeze_to(t, out_shape: Sequence[int], axes: Sequence[int], keepdims: bool, post=None):
    """View a keepdims-shaped ``t`` in ``out_shape`` (dropping ``axes`` unless keepdims)."""
    post = post or (lambda v: v)

    def fn(*idx):
        if keepdims:
            return post(t[idx] if idx else t[()])
        full, it = [], iter(idx)
        for i in range(len(t.shape)):
            full.append(0 if i in axes else next(it))
        return post(t[tuple(full)] if full else t[()])

    return te.compute(tuple(out_shape), fn, name="reduced")


def _simple(op: str):
    @lowering(op)
    def build(inputs, attrs, out_types):
        x = inputs[0]
        shape = shape_of(x)
        axes = normalize_axes(attrs["axes"], len(shape))
        dt = dtype_of(x)
        base = "sum" if op == "mean" else op
        r = reduce_rows(lambda i: x[tuple(i)], shape, axes, base, dt, c.target_lanes(attrs), op)
        post = None
        if op == "mean":
            count = 1
            for a in axes:
                count *= shape[a]
            if c.is_static(count):
                post = lambda v: v * const(1.0 / max(count, 1), dt)  # noqa: E731
            else:  # the mean over a symbolic size divides by it per call (0 for none)
                n = tirx.max(count, 1).astype(dt)
                post = lambda v: v / n  # noqa: E731
        return squeeze_to(r, out_types[0].shape, axes, attrs["keepdims"], post)

    return build


for _op in ("sum", "mean", "prod", "max", "min"):
    _simple(_op)


def _shift(m):
    """max with non-finite values replaced by 0 (as the reference's logsumexp)."""
    return lambda *i: tirx.Select(c.isfinite(m(*i)), m(*i), const(0, dtype_of(m(*i))))


@lowering("logsumexp")
def logsumexp(inputs, attrs, out_types):
    x = inputs[0]
    shape, dt, lanes = shape_of(x), dtype_of(x), c.target_lanes(attrs)
    axes = normalize_axes(attrs["axes"], len(shape))
    m = reduce_rows(lambda i: x[tuple(i)], shape, axes, "shift", dt, lanes, "lse_max")
    m0 = te.compute(m.shape, _shift(m), name="lse_shift")

    def kept(i):
        return tuple(0 if a in axes else v for a, v in enumerate(i))

    s = reduce_rows(lambda i: c.exp(x[tuple(i)] - m0[kept(i)]), shape, axes, "sum", dt, lanes,
                    "lse_sum")
    out = te.compute(m.shape, lambda *i: tirx.log(s[i]) + m0[i], name="lse")
    return squeeze_to(out, out_types[0].shape, axes, attrs["keepdims"])


# Longest softmax row (elements) whose exponentials are stored rather than recomputed:
# 1536x128 went from 10.6 to 16 GFLOP/s with them stored, 8x30522 from 10.8 down to 6.
ROW_IN_CACHE = 4096


def _softmax(log: bool):
    def build(inputs, attrs, out_types):
        x = inputs[0]
        shape, dt, lanes = shape_of(x), dtype_of(x), c.target_lanes(attrs)
        axis = attrs["axis"] % len(shape)

        def kept(i):
            return tuple(0 if a == axis else v for a, v in enumerate(i))

        m = reduce_rows(lambda i: x[tuple(i)], shape, (axis,), "shift", dt, lanes, "sm_max")
        if log or c.nominal(shape[axis]) > ROW_IN_CACHE:
            s = reduce_rows(lambda i: c.exp(x[tuple(i)] - m[kept(i)]), shape, (axis,), "sum",
                            dt, lanes, "sm_sum")
            if log:
                fn = lambda *i: x[i] - m[kept(i)] - tirx.log(s[kept(i)])  # noqa: E731
            else:
                fn = lambda *i: c.exp(x[i] - m[kept(i)]) / s[kept(i)]  # noqa: E731
            return te.compute(tuple(shape), fn, name="log_softmax" if log else "softmax")
        # a short row: e = exp(x - max) is kept (one exp per element; the row stays in L1)
        # and scaled by the reciprocal of its sum (a multiply per element, not a divide)
        e = te.compute(tuple(shape), lambda *i: c.exp(x[i] - m[kept(i)]), name="sm_exp",
                       attrs={"kiln.sched": "keep", "kiln.row": axis})
        s = reduce_rows(lambda i: e[tuple(i)], shape, (axis,), "sum", dt, lanes, "sm_sum")
        one = const(1, dt)
        return te.compute(tuple(shape), lambda *i: e[i] * (one / s[kept(i)]), name="softmax")

    return build


lowering("softmax")(_softmax(False))
lowering("log_softmax")(_softmax(True))


def _arg_take(op: str, floats: bool):
    """take(lhs, rhs): whether (index, value) ``rhs`` replaces ``lhs`` in argmax/argmin: the
    first extreme wins, and NaN is the most extreme value, so a row holding NaN gives the
    index of its first NaN (numpy, PyTorch). Testing the accumulator for NaN first keeps the
    common path short: argmax of 64 rows of 30522 takes 0.75-0.96x the time of the NaN-blind
    form. (``c.isnan``, not ``tirx.isnan``: TVM's scalar fallback for a vectorized loop,
    which a reduction over an outer axis is, got these selects wrong.)"""
    strictly = (lambda a, b: a > b) if op == "argmax" else (lambda a, b: a < b)

    def take(lhs, rhs):
        earlier = rhs[0] < lhs[0]
        if not floats:
            return tirx.Or(strictly(rhs[1], lhs[1]), tirx.And(rhs[1] == lhs[1], earlier))
        lhs_nan, rhs_nan = c.isnan(lhs[1]), c.isnan(rhs[1])
        beats = tirx.Or(tirx.Or(strictly(rhs[1], lhs[1]), rhs_nan),
                        tirx.And(rhs[1] == lhs[1], earlier))
        return tirx.Select(lhs_nan, tirx.And(rhs_nan, earlier), beats)

    return take


def _arg(op: str):
    @lowering(op)
    def build(inputs, attrs, out_types):
        x = inputs[0]
        shape = shape_of(x)
        axis = attrs["axis"] % len(shape)
        take_rhs = _arg_take(op, is_float(dtype_of(x)))

        def combine(lhs, rhs):
            take = take_rhs(lhs, rhs)
            return (tirx.Select(take, rhs[0], lhs[0]), tirx.Select(take, rhs[1], lhs[1]))

        def arg_identity(t0, t1):
            # the worst value at an index after every real one: a row of only that value
            # (all -inf for argmax) still gives its first index
            worst = identity("max" if op == "argmax" else "min", str(t1))
            return (tirx.max_value(str(t0)), worst)

        reducer = te.comm_reducer(combine, arg_identity, name=op)
        r = te.reduce_axis((0, shape[axis]), name="r")

        def fn(*idx):
            full = list(idx)
            if attrs["keepdims"]:
                full[axis] = r
            else:
                full.insert(axis, r)
            return reducer((r.var.astype("int64"), x[tuple(full)]), axis=r)

        ann = {"kiln.row": axis}
        if axis != len(shape) - 1:
            ann["kiln.outer"] = 1
        idx, _ = te.compute(tuple(out_types[0].shape), fn, name=op, attrs=ann)
        return idx

    return build


_arg("argmax")
_arg("argmin")
