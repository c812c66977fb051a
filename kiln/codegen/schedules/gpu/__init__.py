"""The GPU strategy (CUDA): plain computes, scheduled by TVM's dlight rules.

``tiling`` asks the op builders for their plain computes (``Tiling.blocked`` False): matmuls
and convolutions as sums over their inputs as they lie, reductions in one stage, no weight
re-laid out at compile time. ``schedule`` hands each PrimFunc (a node or a fused group) to
dlight's GPU rules, first match wins: ``Matmul`` (shared-memory tiled GEMM, epilogue fused),
``GEMV``, ``Reduction`` and ``GeneralReduction`` (softmax, norms: a thread block per row,
cross-thread reductions), then ``Fallback`` (each stage flattened onto blocks x threads, a
reduction serial in each thread). Reductions TVM cannot split across threads (kiln's
NaN-propagating max/min, arg-reductions) take ``Fallback`` alone.
A function that comes out with a stage not bound to GPU threads fails the build with a
KilnError naming the stage: it would otherwise run as a serial loop, or not at all.
"""

from __future__ import annotations

from kiln.codegen.lower import Tiling
from kiln.errors import KilnError
from kiln.ir.graph import Node
from kiln.targets import Target

PLAIN = Tiling(lanes=1, gemm_rows=1, gemm_vectors=1, conv_pixels=1,
               gemm_block_bytes=1 << 62, tasks=1, blocked=False, raises=False)


def tiling(node: Node, target: Target) -> Tiling:
    """The plain computes: GPU schedules tile them."""
    return PLAIN


def _rules(func):
    from tvm.s_tir import dlight as dl

    if not _reducers_tvm_knows(func):
        return (dl.gpu.Fallback(),)
    return (dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
            dl.gpu.Fallback())


def _reducers_tvm_knows(func) -> bool:
    """Are all of ``func``'s reductions ones that TVM can split across threads? Its cross-
    thread reduction needs a reducer it recognizes: a sum, or a max/min whose identity is the
    dtype's finite limit. kiln's float max/min start from -inf/+inf and propagate NaN (an all
    -inf row reduces to -inf), and its arg-reductions carry (index, value) pairs: those are
    reduced by one thread per output instead (``Fallback``)."""
    import math

    from tvm import s_tir, tirx

    sch = s_tir.Schedule(func)
    for block in _all_blocks(sch):
        init = sch.get(block).init
        if init is None:
            continue
        stores = list(init.seq) if isinstance(init, tirx.SeqStmt) else [init]
        if len(stores) != 1:
            return False
        value = getattr(stores[0], "value", None)
        if isinstance(value, tirx.FloatImm) and not math.isfinite(value.value):
            return False
    return True


def _all_blocks(sch) -> list:
    if not _has_root(sch):
        return []
    out, stack = [], list(sch.get_child_blocks(sch.get_sblock("root")))
    while stack:
        block = stack.pop()
        out.append(block)
        stack.extend(sch.get_child_blocks(block))
    return out


def schedule(func, target: Target) -> object:
    """Schedule ``func`` (an unscheduled TE PrimFunc) for ``target`` (a CudaTarget)."""
    import tvm
    from tvm.s_tir import dlight as dl

    mod = tvm.IRModule({"main": func})
    with target.tvm_target():
        mod = dl.ApplyDefaultSchedule(*_rules(func))(mod)
    scheduled = mod["main"]
    unbound = unbound_stages(scheduled)
    if unbound:
        raise KilnError(f"no GPU schedule binds the stage(s) {', '.join(unbound)} to threads "
                        "(they would run as one serial thread)")
    return scheduled


def unbound_stages(func) -> list[str]:
    """Names of the compute stages of ``func`` outside every GPU thread loop."""
    from tvm import s_tir, tirx

    sch = s_tir.Schedule(func)
    out = []
    for block in _all_blocks(sch):
        if sch.get_child_blocks(block):
            continue  # a block holding others: its leaves are checked
        if not any(sch.get(lp).kind == tirx.ForKind.THREAD_BINDING
                   for lp in sch.get_loops(block)):
            out.append(sch.get(block).name_hint)
    return out


def _has_root(sch) -> bool:
    try:
        sch.get_sblock("root")
    except Exception:  # noqa: BLE001  (TVM's error: no block of that name)
        return False
    return True
