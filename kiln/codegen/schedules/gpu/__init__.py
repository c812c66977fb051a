"""The GPU strategy (CUDA): plain computes, scheduled by TVM's dlight rules.

``tiling`` asks the op builders for their plain computes (``Tiling.blocked`` False): matmuls
and convolutions as sums over their inputs as they lie, reductions in one stage, no weight
re-laid out at compile time. ``schedule`` hands each PrimFunc (a node or a fused group) to
dlight's GPU rules, first match wins: ``Matmul`` (shared-memory tiled GEMM, epilogue fused),
``GEMV``, ``Reduction`` and ``GeneralReduction`` (softmax, norms: a thread block per row,
cross-thread reductions), then ``Fallback`` (each stage flattened onto blocks x threads, a
reduction serial in each thread). kiln's NaN-propagating max/min are registered with TVM
(``register_reducers``); its arg-reductions, which TVM cannot split, take ``Fallback`` alone.
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


_REGISTERED: list[bool] = []


def register_reducers() -> None:
    """Teach TVM's reducer registry kiln's float max/min reducers, once per process: its
    cross-thread reductions need the combiner and identity matched there, and TVM knows
    max/min only with a finite identity and no NaN test (kiln's start from -inf/+inf, so an
    all -inf row reduces to -inf, and propagate NaN).

    The registry is a static C++ vector that outlives the interpreter: the Python functions
    it holds get one extra reference that is never dropped, or their release at process exit
    would call into a finalized Python (a crash).
    """
    if _REGISTERED:
        return
    import ctypes

    import tvm_ffi

    from kiln.codegen.ops.reduce import combiner, identity

    ffi = ctypes.CDLL(tvm_ffi.libinfo.find_libtvm_ffi(), mode=ctypes.RTLD_GLOBAL)
    register = tvm_ffi.get_global_func("s_tir.schedule.RegisterReducer")

    def kept(fn):
        f = tvm_ffi.convert(fn)
        ffi.TVMFFIObjectIncRef(ctypes.c_void_p(f.__chandle__()))
        return f

    for op in ("max", "min", "shift"):
        for test_value in (True, False):
            register(1, kept(lambda x, y, f=combiner(op, test_value): [f(x[0], y[0])]),
                     kept(lambda values, op=op: [identity(op, str(values[0].ty))]))
    _REGISTERED.append(True)


def _rules(func):
    from tvm.s_tir import dlight as dl

    if not _reducers_tvm_knows(func):
        return (dl.gpu.Fallback(),)
    return (dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
            dl.gpu.Fallback())


def _reducers_tvm_knows(func) -> bool:
    """Are all of ``func``'s reductions ones that TVM can split across threads (its own and
    ``register_reducers``')? kiln's arg-reductions carry (index, value) pairs, which it does
    not know: those are reduced by one thread per output instead (``Fallback``)."""
    from tvm import s_tir, tirx

    sch = s_tir.Schedule(func)
    for block in _all_blocks(sch):
        init = sch.get(block).init
        if isinstance(init, tirx.SeqStmt) and len(init.seq) > 1:
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

    register_reducers()
    mod = tvm.IRModule({"main": _thread_local_tuples(func)})
    with target.tvm_target():
        mod = dl.ApplyDefaultSchedule(*_rules(func))(mod)
    scheduled = mod["main"]
    unbound = unbound_stages(scheduled)
    if unbound:
        raise KilnError(f"no GPU schedule binds the stage(s) {', '.join(unbound)} to threads "
                        "(they would run as one serial thread)")
    return scheduled


def _thread_local_tuples(func):
    """A reduction over (index, value) pairs (argmax) writes both, but only the index leaves
    the function: the values become thread-local (a GPU kernel cannot allocate global
    memory, and each thread reduces its own output elements)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    if not _has_root(sch):
        return func
    made_here = {b.name for b in sch.get(sch.get_sblock("root")).alloc_buffers}
    for block in _all_blocks(sch):
        writes = sch.get(block).writes
        if len(writes) > 1:
            for i, region in enumerate(writes):
                if region.source.name in made_here:
                    sch.set_scope(block, i, "local")
    return sch.mod["main"]


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
