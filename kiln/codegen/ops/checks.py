"""Input checks inside kernels: a stage that asserts a condition on every element of a tensor
before the kernel uses it, so that a bad index or a zero integer divisor raises an error
instead of reading outside a buffer, clamping silently or trapping (SIGFPE).

``checked`` is a ``te.extern`` stage: a serial loop over the tensor that asserts the
condition and stores the (normalized) element, which the consumer then reads. A failing
assertion makes the kernel return an error whose message starts with ``KERNEL_CHECK``; the
runtime turns it into an ``InputError`` naming the node and the first offending element
(``kiln.runtime.executor.kernel_check_error``). The message holds no value names, so that
structurally identical kernels still compile once.

The cost is one compare per checked element, outside the kernel's main loops: an embedding
lookup checks its ids, not the rows it copies.

GPU kernels cannot return an error (``raises`` False): there the check is an elementwise stage
whose failing element calls ``kiln_trap_<dtype>()``, a device function that executes
``__trap()`` (``codegen/nvcc.py`` defines it): the launch fails, and the runtime reports the
kernel. A trapped CUDA context stays unusable, so the process must load the model again.
"""

from __future__ import annotations

from typing import Callable

import tvm
from tvm import te, tirx

from kiln.codegen.ops.common import const, dtype_of, shape_of
from kiln.runtime.executor import KERNEL_CHECK


def _describe(t) -> str:
    return f"{dtype_of(t)}{list(shape_of(t))}"


TRAP = "kiln_trap_"  # + dtype: the device function a failed GPU check calls


def checked(t, ok: Callable, op: str, message: str, out: Callable | None = None,
            dtype: str | None = None, kind: str = "ValueError", name: str = "check",
            raises: bool = True):
    """A copy of ``t`` (``out(v)`` of each element ``v``, of ``dtype``) made after asserting
    ``ok(v)`` for each element; a failure raises ``kind`` with ``message``, in which the
    runtime fills ``{value}`` and ``{at}`` with the first offending element and its position
    (found in the kernel input of ``t``'s dtype and shape) and names the node of ``op``."""
    shape = shape_of(t)
    out = out or (lambda v: v)
    dtype = dtype or dtype_of(t)
    text = f"{KERNEL_CHECK}[{op}] {message} (in {_describe(t)})"
    if not raises:
        def trap_or_value(*idx):
            v = t[idx] if idx else t[()]
            return tirx.if_then_else(ok(v), out(v).astype(dtype),
                                     tirx.call_extern(dtype, TRAP + dtype))

        return te.compute(shape, trap_or_value, name=name)

    def body(ins, outs):
        idx = [tirx.Var(f"i{a}", "int32") for a in range(len(shape))]
        v = tirx.BufferLoad(ins[0], idx)
        stmt = tirx.SeqStmt([
            tirx.AssertStmt(ok(v), tvm.ir.StringImm(kind), [tvm.ir.StringImm(text)]),
            tirx.BufferStore(outs[0], out(v).astype(dtype), idx),
        ])
        for var, extent in reversed(list(zip(idx, shape))):
            stmt = tirx.For(var, const(0, "int32"), _int32(extent),
                            tirx.ForKind.SERIAL, stmt)
        return stmt

    return te.extern(shape, [t], body, name=name, dtype=dtype)


def _int32(extent):
    """A loop extent (an int, or a symbolic size's int32 expression) as an int32 expression."""
    return const(extent, "int32") if isinstance(extent, int) else extent


def checked_index(ind, size: int, what: str, raises: bool = True):
    """``ind`` (int32/int64) as int32 indices into an axis of ``size``: negatives count from
    the end (ONNX, numpy); any index outside [-size, size) raises an IndexError worded as
    the interpreter's."""
    dt = dtype_of(ind)
    n = const(size, dt) if isinstance(size, int) else size.astype(dt)
    message = (f"{what} index {{value}} is out of range for size {size} "
               f"(-{size}..{size - 1}) at {{at}}")
    return checked(ind, lambda v: tirx.all(v >= -n, v < n), what, message,
                   out=lambda v: tirx.Select(v < const(0, dt), v + n, v), dtype="int32",
                   kind="IndexError", name="check_index", raises=raises)


def checked_divisor(b, raises: bool = True):
    """The integer divisor ``b``, asserted nonzero (onnxruntime and PyTorch raise too)."""
    return checked(b, lambda v: v != const(0, dtype_of(b)), "div",
                   "integer division by zero: divisor {value} at {at}", name="check_divisor",
                   raises=raises)
