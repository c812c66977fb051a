"""The CPU strategy: the tiling of each op's compute, and schedules for the PrimFuncs that
``lower.py`` makes.

``tiling(node, target)`` sizes the compute for the target's vector registers: lanes of the
output dtype, GEMM register tiles of 8 rows x 2 vectors (16 accumulators), conv register
tiles of about 28 output pixels (28 accumulators + a weight vector fit AVX-512's 32
registers; kept on AVX2 too, where it has not been measured against a smaller tile).
``schedule(func, target)`` inlines the injective stages, hands each anchor stage (the ones a
TE builder annotated with ``kiln.sched``: ``gemm``, ``conv2d``) to its scheduler together
with its epilogue, schedules row-wise normalizations as one row loop, and gives every other
stage the generic parallel + vectorized schedule. Each step runs on a copy of the schedule:
if TVM refuses it, the step falls back to a simpler schedule instead of failing the build.
"""

from __future__ import annotations

import logging
from typing import Callable

from tvm import s_tir

from kiln.codegen.lower import Tiling
from kiln.codegen.schedules.cpu.common import (
    ScheduleError,
    blocks,
    computes_float32,
    extents,
    inline_injective,
    is_output,
    is_reduction,
    kind,
    name,
)
from kiln.codegen.schedules.cpu.conv import schedule_conv2d
from kiln.codegen.schedules.cpu.gemm import schedule_gemm
from kiln.codegen.schedules.cpu.generic import (
    schedule_injective,
    schedule_pack,
    schedule_reduction,
    schedule_rows,
)
from kiln.ir.graph import Node
from kiln.targets import Target

log = logging.getLogger("kiln.codegen")

GEMM_ROWS = 8  # rows of a GEMM register tile (x 2 vectors = 16 accumulators)
GEMM_VECTORS = 2
CONV_PIXELS = 28
# Every column panel of B streams once past a row block of A (read from L2/L3 per panel), so
# a weight that comes from memory is read once per block. Up to 4 MB of A per block: on the
# 2-core Sapphire Rapids VM 4 MB beat 1 MB by 9% on ViT-B/16, 5% on BERT-base, 2% on
# ConvNeXt-tiny and BERT at batch 8 (GPT-2 equal), interleaved at 2 threads
GEMM_BLOCK_BYTES = 1 << 22
TASKS_PER_CORE = 4  # parallel GEMM tasks per core, so that a straggler costs little


def tiling(node: Node, target: Target) -> Tiling:
    """The CPU tiling of ``node``'s compute on ``target``."""
    dtype = node.outputs[0].dtype if node.outputs else "float32"
    return Tiling(target.lanes(dtype), GEMM_ROWS, GEMM_VECTORS, CONV_PIXELS,
                  GEMM_BLOCK_BYTES, TASKS_PER_CORE * target.num_cores,
                  bf16_dot="avx512_bf16" in target.features,
                  int8_dot="avx512_vnni" in target.features)


# anchor kind -> fn(sch, block, lanes, cores, epilogue) -> names of the blocks it scheduled
ANCHORS: dict[str, Callable] = {"gemm": schedule_gemm, "conv2d": schedule_conv2d}


def _dtype(sch, block) -> str:
    """The type whose vectors the block computes in: its output's, except that a narrow
    integer output computed in float32 (a requantization's uint8) vectorizes as float32:
    in 64 lanes of uint8, GPT-2 int8's GELU ran 4x slower than unfused."""
    body = sch.get(block).body
    buf = getattr(body, "buffer", None)
    dtype = str(buf.dtype) if buf is not None else "float32"
    if dtype in ("int8", "uint8", "bool") and computes_float32(getattr(body, "value", body)):
        return "float32"
    return dtype


def _attempt(sch, step: Callable) -> tuple[object, bool, object]:
    """Run ``step`` on a copy: (schedule to keep, whether it went through, its result)."""
    trial = sch.copy()
    try:
        return trial, True, step(trial)
    except (ScheduleError, RuntimeError, ValueError) as e:  # TVM's InternalError too
        log.debug("schedule step refused, falling back: %s", str(e).splitlines()[-1:])
        return sch, False, None


def _step(fn: Callable, block_name: str, *args) -> Callable:
    """A schedule step applying ``fn`` to the block called ``block_name``."""
    return lambda s: fn(s, s.get_sblock(block_name), *args)


def schedule(func, target: Target) -> object:
    """Schedule ``func`` (an unscheduled TE PrimFunc) for ``target`` (a CpuTarget)."""
    cores = target.num_cores
    sch = s_tir.Schedule(func)
    inline_injective(sch)
    done: set[str] = set()

    for b in blocks(sch):
        k = kind(sch, b)
        if k not in ANCHORS:
            continue
        bname, lanes = name(sch, b), target.lanes(_dtype(sch, b))
        fn = ANCHORS[k]
        for epilogue in (True, False):
            sch, ok, names = _attempt(sch, _step(fn, bname, lanes, cores, epilogue))
            if ok:
                break
        if ok:
            done.update(names)
            done.update(n + "_init" for n in names)  # made by decompose_reduction

    rest = [name(sch, b) for b in blocks(sch) if name(sch, b) not in done]
    outputs = [n for n in rest if is_output(sch, sch.get_sblock(n))]
    if not done and len(outputs) == 1 and any(
        is_reduction(sch, sch.get_sblock(n)) for n in rest if n != outputs[0]
    ):
        out = outputs[0]
        lanes = target.lanes(_dtype(sch, sch.get_sblock(out)))
        trial, ok, fits = _attempt(
            sch, lambda s: schedule_rows(s, s.get_sblock(out), lanes, cores))
        if ok and fits:
            return trial.mod["main"]

    for n in rest:
        b = sch.get_sblock(n)
        loops = sch.get_loops(b)
        if not loops or 0 in extents(sch, loops):
            # a call of a native kernel (it runs its own threads), or an empty tensor:
            # nothing to schedule (and TVM cannot vectorize the latter)
            continue
        lanes = target.lanes(_dtype(sch, b))
        if is_reduction(sch, b):
            fn = schedule_reduction
        else:
            fn = schedule_pack if kind(sch, b) == "pack" else schedule_injective
        sch, _, _ = _attempt(sch, _step(fn, n, lanes, cores))
    return sch.mod["main"]
