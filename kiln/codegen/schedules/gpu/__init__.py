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

import re

from kiln.codegen.lower import Tiling
from kiln.errors import KilnError
from kiln.ir.graph import Node
from kiln.targets import Target

KEEP = "kiln_keep"  # an identity function the device code defines (codegen/nvcc.py)
KEEP_DTYPES = ("float32", "float64")
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
    func = _no_unit_reductions(_thread_local_tuples(func))
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


def _no_unit_reductions(func):
    """A reduction over a single element (a matmul with K = 1, a sum over a unit axis) made
    an assignment of ``combine(identity, value)``. Left a reduction, dlight drops its unit
    axis and TVM then takes it for a plain elementwise block and inlines the consumer into it,
    initialization included: relu(x * w + b) became relu(relu(b) + x * w + b).

    TVM's Python API cannot rebuild a statement, so the rewrite goes through the function's
    TVMScript text, one block at a time: the ``T.init()`` store's value replaces the block's
    reads of its own output, the init goes, and the unit axes become spatial. A float value
    is wrapped in ``kiln_keep`` (an identity the device code defines, ``codegen/nvcc.py``):
    inlined as it is, a layer norm over one element read ``x - x``, which TVM's simplifier
    folds to 0 (wrong for inf and NaN).
    """
    import tvm
    from tvm import s_tir, tirx

    sch = s_tir.Schedule(func)
    names = []
    for block in _all_blocks(sch):
        stmt = sch.get(block)
        reduce_ivs = [iv for iv in stmt.iter_vars if iv.iter_type == tirx.IterVar.CommReduce]
        if stmt.init is not None and isinstance(stmt.init, tirx.BufferStore) and \
                reduce_ivs and all(int(iv.dom.extent) == 1 for iv in reduce_ivs):
            dtype = str(stmt.init.value.ty)
            names.append((stmt.name_hint, dtype if dtype in KEEP_DTYPES else None))
    if not names:
        return func
    lines = func.script().splitlines()
    for name, keep in names:
        lines = _assign_unit_reduction(lines, name, keep)
    rewritten = tvm.script.from_source("\n".join(lines))
    return rewritten.with_attrs(func.attrs) if func.attrs is not None else rewritten


def _assign_unit_reduction(lines: list[str], name: str, keep: str | None) -> list[str]:
    """``_no_unit_reductions`` on the block called ``name`` of a TVMScript listing; ``keep``:
    the dtype whose value is wrapped in ``kiln_keep`` (None: not wrapped)."""
    head = next(i for i, ln in enumerate(lines) if ln.strip() == f'with T.sblock("{name}"):')
    indent = len(lines[head]) - len(lines[head].lstrip())
    end = next((i for i in range(head + 1, len(lines))
                if lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) <= indent),
               len(lines))
    body = lines[head + 1:end]
    at = next(i for i, ln in enumerate(body) if ln.strip() == "with T.init():")
    init_store = body[at + 1].strip()
    target, _, identity = init_store.partition(" = ")
    kept = body[:at] + body[at + 2:]
    out = []
    for ln in kept:
        stripped = ln.strip()
        if stripped.startswith(target + " = "):
            lhs, _, rhs = ln.partition(" = ")
            rhs = rhs.replace(target, f"({identity})")
            if keep:
                rhs = f'T.call_pure_extern("{keep}", "{KEEP}", {rhs})'
            ln = f"{lhs} = {rhs}"
        elif "T.axis.remap(" in stripped:
            kinds = re.search(r'T\.axis\.remap\("([SR]+)"', ln)
            ln = ln.replace(f'"{kinds.group(1)}"', '"' + kinds.group(1).replace("R", "S") + '"')
        ln = ln.replace("T.axis.reduce(", "T.axis.spatial(")
        out.append(ln)
    return lines[:head + 1] + out + lines[end:]


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
