"""Rewrites of a GPU function before TVM's dlight rules see it, each for a case that dlight
or TVM gets wrong or cannot do, and the reducers kiln teaches TVM.

- ``register_reducers``: kiln's NaN-propagating float max/min, so TVM splits them across
  threads;
- ``tuple_reductions``: kiln's arg-reductions, which TVM cannot split (one thread per output);
- ``thread_local_tuples``: an arg-reduction's value buffer, kept per thread;
- ``no_unit_reductions``: a reduction over one element made an assignment.
"""

from __future__ import annotations

import re

KEEP = "kiln_keep"  # an identity function the device code defines (codegen/nvcc.py)
KEEP_DTYPES = ("float32", "float64")


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

    def combine(fn):
        return lambda x, y: [fn(x[0], y[0])]

    def start(op):
        return lambda values: [identity(op, str(values[0].ty))]

    for op in ("max", "min", "shift"):
        for test_value in (True, False):
            register(1, kept(combine(combiner(op, test_value))), kept(start(op)))
    _REGISTERED.append(True)


def reducers_tvm_knows(func) -> bool:
    """Are all of ``func``'s reductions ones that TVM can split across threads (its own and
    ``register_reducers``')? kiln's arg-reductions carry (index, value) pairs, which it does
    not know: those are reduced by one thread per output instead (``Fallback``)."""
    from tvm import s_tir, tirx

    sch = s_tir.Schedule(func)
    for block in all_blocks(sch):
        init = sch.get(block).init
        if isinstance(init, tirx.SeqStmt) and len(init.seq) > 1:
            return False
    return True


def thread_local_tuples(func):
    """A reduction over (index, value) pairs (argmax) writes both, but only the index leaves
    the function: the values become thread-local (a GPU kernel cannot allocate global
    memory, and each thread reduces its own output elements)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    if not has_root(sch):
        return func
    made_here = {b.name for b in sch.get(sch.get_sblock("root")).alloc_buffers}
    for block in all_blocks(sch):
        writes = sch.get(block).writes
        if len(writes) > 1:
            for i, region in enumerate(writes):
                if region.source.name in made_here:
                    sch.set_scope(block, i, "local")
    return sch.mod["main"]


def no_unit_reductions(func):
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
    for block in all_blocks(sch):
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
    """``no_unit_reductions`` on the block called ``name`` of a TVMScript listing; ``keep``:
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


def all_blocks(sch) -> list:
    if not has_root(sch):
        return []
    out, stack = [], list(sch.get_child_blocks(sch.get_sblock("root")))
    while stack:
        block = stack.pop()
        out.append(block)
        stack.extend(sch.get_child_blocks(block))
    return out


def has_root(sch) -> bool:
    try:
        sch.get_sblock("root")
    except Exception:  # noqa: BLE001  (TVM's error: no block of that name)
        return False
    return True
