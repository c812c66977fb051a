"""Small queries and moves on an ``s_tir.Schedule`` that every scheduler uses."""

from __future__ import annotations

from math import prod
from typing import Any

from tvm import s_tir

from kiln.codegen.ops.common import NOMINAL_SIZE

ScheduleError = s_tir.ScheduleError

SCHED = "kiln.sched"  # block annotation naming the scheduler a TE builder asked for
DATA_PAR, REDUCE = 0, 2  # IterVar types


def blocks(sch) -> list:
    """The child blocks of the root, in program order."""
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def name(sch, block) -> str:
    return sch.get(block).name_hint


def annotations(sch, block) -> dict[str, Any]:
    return {str(k): v for k, v in sch.get(block).annotations.items()}


def kind(sch, block) -> str:
    return str(annotations(sch, block).get(SCHED, ""))


def is_reduction(sch, block) -> bool:
    return any(int(iv.iter_type) == REDUCE for iv in sch.get(block).iter_vars)


def is_output(sch, block) -> bool:
    """Whether the block writes a function argument (not a buffer allocated inside)."""
    allocated = sch.get(sch.get_sblock("root")).alloc_buffers
    return any(not any(b.same_as(w.source) for b in allocated) for w in sch.get(block).writes)


def extent(sch, loop) -> int | None:
    """The loop's trip count, or None when it is not a constant (after compute_at with an
    index that is not affine, e.g. a flattened ``i * W + j``)."""
    e = sch.get(loop).extent
    return int(e) if hasattr(e, "value") or isinstance(e, int) else None


def extents(sch, loops) -> list[int]:
    return [extent(sch, lp) for lp in loops]


def work(sch, loops) -> int:
    """The iterations of ``loops`` for a heuristic (whether to parallelize): a loop over a
    symbolic size (or a non-constant extent) counts as ``NOMINAL_SIZE``."""
    return prod(NOMINAL_SIZE if e is None else e for e in extents(sch, loops))


# An intermediate whose expression (with what was inlined into it) has this many nodes is
# computed once into a buffer when its consumers read it more than once, not inlined at
# every read: a chain of requantizations (each float->int cast reads its operand twice)
# over GELU's erf grew 16-fold inlined, and BERT int8's GELU kernel ran 10x slower.
# GPT-2 int8's GELU kernel (tanh, six requantizations): 48 nodes 4.4 ms, 32: 3.7 ms,
# 24: 1.2 ms, 16: 1.3 ms, 8: 1.8 ms (more buffers); its ops unfused: 1.0 ms
REPEAT_NODES = 24


def inline_injective(sch, keep=()) -> None:
    """Inline every injective intermediate stage into its consumers (where TVM can), except
    big expressions read more than once (``REPEAT_NODES``)."""
    for b in blocks(sch):
        if is_output(sch, b) or is_reduction(sch, b) or kind(sch, b) or name(sch, b) in keep:
            continue
        if _costly_to_repeat(sch, b):
            continue
        try:
            sch.compute_inline(b)
        except ScheduleError:
            pass


def _costly_to_repeat(sch, block) -> bool:
    body = sch.get(block).body
    if expr_size(getattr(body, "value", body)) < REPEAT_NODES:
        return False
    buffer = str(sch.get(block).writes[0].source)
    reads = 0
    for consumer in sch.get_consumers(block):
        cbody = sch.get(consumer).body
        reads += len(loads_of(getattr(cbody, "value", cbody), buffer))
    return reads > 1


def computes_float32(expr) -> bool:
    """Does the expression compute any float32 value?"""
    return str(getattr(expr, "ty", "")) == "float32" or any(
        computes_float32(c) for c in subexpressions(expr))


def expr_size(expr) -> int:
    """Nodes in a TIR expression tree (repeated subtrees counted each time)."""
    return 1 + sum(expr_size(c) for c in subexpressions(expr))


def vectorize_inner(sch, loop, lanes: int, unroll_rest: bool = False) -> None:
    """Split ``loop`` by ``lanes`` and vectorize the inner part (the whole loop if shorter;
    a loop over a symbolic size gets a predicated last vector)."""
    n = extent(sch, loop)
    if n is not None and n <= 1:
        return
    if n is not None and n <= lanes:
        sch.vectorize(loop)
        return
    outer, inner = sch.split(loop, [None, lanes])
    sch.vectorize(inner)
    if n is None:
        partition_tail(sch, outer)
    elif unroll_rest:
        sch.unroll(outer)


def partition_tail(sch, loop) -> None:
    """Ask TVM to split the loop over a symbolic size's vectors into whole vectors and the
    last partial one: otherwise every vector is predicated, and scalarized (an elementwise
    kernel over [384, S] ran 3x slower)."""
    sch.annotate(loop, "pragma_loop_partition_hint", 1)


_CHILDREN = ("a", "b", "value", "condition", "true_value", "false_value", "args", "indices")


def subexpressions(expr) -> list:
    """The direct operands of a TIR expression (a load's indices, a call's arguments)."""
    out: list = []
    for attr in _CHILDREN:
        child = getattr(expr, attr, None)
        if child is None or isinstance(child, (str, int, float)):
            continue
        out.extend(child if isinstance(child, (list, tuple)) or hasattr(child, "__len__")
                   and not hasattr(child, "ty") else [child])
    return out


def loads_of(expr, buffer_name: str | None) -> list:
    """The index tuples with which ``expr`` reads the buffer called ``buffer_name`` (every
    buffer for None)."""
    found: list = []

    def walk(e) -> None:
        if type(e).__name__ in ("TensorLoad", "BufferLoad") and \
                (buffer_name is None or str(e.source) == buffer_name):
            found.append(list(e.indices))
        for c in subexpressions(e):
            walk(c)

    walk(expr)
    return found


def reads_tile_exactly(sch, consumer, producer, allow_divmod: bool = False) -> bool:
    """Whether every read of ``producer``'s buffer in ``consumer`` indexes each axis by one
    iteration variable (or, with ``allow_divmod``, its floordiv/floormod by a constant).

    ``reverse_compute_at`` under a register tile is only sound then: for an index like
    ``i * W + j`` TVM 0.27 covers the tile with whole rows and lets the consumer write
    elements that the tile never computed (a 1x1 conv as GEMM came out wrong that way).
    """
    target = str(sch.get(producer).writes[0].source)
    body = sch.get(consumer).body
    loads = loads_of(getattr(body, "value", body), target)
    if not loads:
        return False
    for idx in loads:
        for e in idx:
            kind_ = type(e).__name__
            if kind_ == "Var":
                continue
            if allow_divmod and kind_ in ("FloorDiv", "FloorMod") and \
                    type(e.a).__name__ == "Var" and type(e.b).__name__ == "IntImm":
                continue
            return False
    return True


def uses_var(expr, var) -> bool:
    """Whether the index expression ``expr`` mentions the variable ``var``."""
    if type(expr).__name__ == "Var":
        return expr.same_as(var)
    return any(uses_var(getattr(expr, a), var) for a in ("a", "b", "value")
               if getattr(expr, a, None) is not None and not isinstance(getattr(expr, a),
                                                                        (int, float, str)))


def transposed_axis(sch, block) -> int | None:
    """For a block that reads some input across its rows along its own contiguous axis (a
    transpose, also inlined into an elementwise op): the position of the iteration variable
    that indexes that input's contiguous axis; None for any other block."""
    ivs = [iv.var for iv in sch.get(block).iter_vars]
    if len(ivs) < 2:
        return None
    body = sch.get(block).body
    for idx in loads_of(getattr(body, "value", body), None):
        if len(idx) < 2 or uses_var(idx[-1], ivs[-1]) or \
                not any(uses_var(e, ivs[-1]) for e in idx[:-1]):
            continue
        for pos, v in enumerate(ivs[:-1]):
            if uses_var(idx[-1], v):
                return pos
    return None
