"""The GPU strategy (CUDA): plain computes, scheduled by TVM's dlight rules.

``tiling`` asks the op builders for their plain computes (``Tiling.blocked`` False): matmuls
and convolutions as sums over their inputs as they lie, reductions in one stage, no weight
re-laid out at compile time. ``schedule`` hands each PrimFunc (a node or a fused group) to
dlight's GPU rules, first match wins: ``Matmul`` (shared-memory tiled GEMM, epilogue fused),
``GEMV``, ``GeneralReduction`` (softmax, norms, reductions: a thread block per row,
cross-thread reductions; dlight's ``Reduction`` rule is left out, it mis-scheduled an
epilogue), then ``Fallback`` (each stage flattened onto blocks x threads, a
reduction serial in each thread). ``prepare.py`` first rewrites what dlight or TVM would get
wrong, and teaches TVM kiln's reducers; a function whose reduction TVM cannot lower after
dlight's rules is scheduled by ``Fallback`` alone.
A function that comes out with a stage not bound to GPU threads fails the build with a
KilnError naming the stage: it would otherwise run as a serial loop, or not at all.
"""

from __future__ import annotations

from kiln.codegen.lower import Tiling
from kiln.codegen.schedules.gpu.prepare import (
    all_blocks,
    no_unit_reductions,
    reducers_tvm_knows,
    register_reducers,
    thread_local_tuples,
)
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

    if not reducers_tvm_knows(func):
        return (dl.gpu.Fallback(),)
    # not dl.gpu.Reduction: on a grouped convolution with a relu it read the reduction's
    # per-thread result from other threads (wrong values; found by kiln fuzz --gpu-schedules)
    return (dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.GeneralReduction(), dl.gpu.Fallback())


def schedule(func, target: Target) -> object:
    """Schedule ``func`` (an unscheduled TE PrimFunc) for ``target`` (a CudaTarget)."""
    import tvm
    from tvm.s_tir import dlight as dl

    register_reducers()
    func = no_unit_reductions(thread_local_tuples(func))
    with target.tvm_target():
        mod = dl.ApplyDefaultSchedule(*_rules(func))(tvm.IRModule({"main": func}))
        if not _lowers(mod):  # dlight split a reduction TVM then cannot lower: keep it serial
            mod = dl.ApplyDefaultSchedule(dl.gpu.Fallback())(tvm.IRModule({"main": func}))
    scheduled = mod["main"]
    unbound = unbound_stages(scheduled)
    if unbound:
        raise KilnError(f"no GPU schedule binds the stage(s) {', '.join(unbound)} to threads "
                        "(they would run as one serial thread)")
    return scheduled


def _lowers(mod) -> bool:
    """Does TVM's cross-thread reduction lowering accept ``mod``? (dlight's reduction rules
    sometimes bind a reduction whose loops TVM then refuses: a transposed convolution of a
    1x1 input.)"""
    from tvm import s_tir

    try:
        s_tir.transform.LowerCrossThreadReduction()(mod)
    except Exception:  # noqa: BLE001  (TVM's check failures)
        return False
    return True


def unbound_stages(func) -> list[str]:
    """Names of the compute stages of ``func`` outside every GPU thread loop."""
    from tvm import s_tir, tirx

    sch = s_tir.Schedule(func)
    out = []
    for block in all_blocks(sch):
        if sch.get_child_blocks(block):
            continue  # a block holding others: its leaves are checked
        if not any(sch.get(lp).kind == tirx.ForKind.THREAD_BINDING
                   for lp in sch.get_loops(block)):
            out.append(sch.get(block).name_hint)
    return out
