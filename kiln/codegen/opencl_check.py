"""Run kiln's GPU schedules without a GPU: the same scheduled kernels, through TVM's OpenCL
code generator, on a CPU OpenCL device (PoCL).

A CUDA build can be compiled anywhere but only run on an NVIDIA GPU. The schedules are where
GPU mistakes hide (an index or a bound of a thread-tiled loop, a missing barrier around
shared memory), and they do not depend on CUDA: ``run_gpu_schedules`` takes the functions
that ``schedule_graph`` made for a cuda target, generates OpenCL C for them (blocks and
threads become work-groups and work-items, shared memory becomes ``__local``), and launches
each kernel in the order of the calls with ``pyopencl`` on the first OpenCL device (PoCL
on a machine without a GPU: ``pip install pyopencl pocl-binary-distribution``). What this
does not check: code that only CUDA has (warp shuffles: TVM's OpenCL reductions go through
``__local`` memory instead; ``__trap`` for a failed input check, which here yields 0).

The launcher: a scheduled function's kernels are its top-level loop nests in order, named
``<func>_kernel``, ``<func>_kernel_1``...; each one's grid and block sizes are the extents of
its ``blockIdx``/``threadIdx`` loops; its parameters are the function's buffers (``<name>_ptr``
in the OpenCL source), which map to the call's values.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from kiln.codegen.build import Scheduled, schedule_graph
from kiln.errors import KilnError
from kiln.ir.graph import Graph
from kiln.ir.types import to_numpy_dtype

#: OpenCL has no trap: a failed input check of a GPU kernel (``ops/checks.py``) yields 0;
#: TVM's OpenCL code calls log1p by its CUDA name; ``kiln_keep``, max and min as in
#: ``codegen/nvcc.py``
_INTS = (("int8", "char"), ("int16", "short"), ("int32", "int"), ("int64", "long"),
         ("uint8", "uchar"), ("uint16", "ushort"), ("uint32", "uint"), ("uint64", "ulong"))
_MIN_MAX = "".join(  # max/min as TVM's LLVM code means them (see codegen/nvcc.py, MIN_MAX)
    f"{t}{n} __attribute__((overloadable)) kiln_max({t}{n} a, {t}{n} b) "
    f"{{ return a > b ? a : b; }}\n"
    f"{t}{n} __attribute__((overloadable)) kiln_min({t}{n} a, {t}{n} b) "
    f"{{ return a < b ? a : b; }}\n"
    for t in ("float", "double", "char", "uchar", "short", "ushort", "int", "uint", "long",
              "ulong") for n in ("", "2", "3", "4", "8", "16")) + \
    "#undef max\n#undef min\n#define max kiln_max\n#define min kiln_min\n"
PRELUDE = _MIN_MAX + "#define log1pf log1p\n" + "".join(
    f"{t} __attribute__((overloadable)) kiln_keep({t} v) {{ return v; }}\n"
    for t in ("float", "double")) + "".join(
    f"{ctype} kiln_trap_{dtype}() {{ return 0; }}\n" for dtype, ctype in _INTS)
_KERNEL = re.compile(r"__kernel void (\w+)\(([^)]*)\)\s*\{")


def run_gpu_schedules(graph: Graph, inputs: Mapping[str, np.ndarray],
                      target: Any = "cuda") -> list[np.ndarray]:
    """The outputs of ``graph`` (already optimized) on ``inputs``, computed by the kernels
    that the GPU strategy schedules for ``target``, run through OpenCL."""
    try:
        import pyopencl as cl
    except ImportError:
        raise KilnError("running GPU kernels on the CPU needs pyopencl and an OpenCL device: "
                        "pip install pyopencl pocl-binary-distribution") from None

    scheduled = schedule_graph(graph, target)
    source = opencl_source(scheduled)
    params = {name: [p.strip().split()[-1] for p in args.split(",") if p.strip()]
              for name, args in _KERNEL.findall(source)}
    device = _device(cl)
    if "cl_khr_fp16" not in device.extensions and any(
            t.dtype == "float16" for t in scheduled.values.values()):
        raise KilnError(f"the OpenCL device here ({device.name.strip()}) has no float16 "
                        "(cl_khr_fp16): its GPU kernels cannot be checked on this CPU")
    context = cl.Context([device])
    queue = cl.CommandQueue(context)
    program = cl.Program(context, source).build()
    buffers = _buffers(cl, context, graph, scheduled, inputs)
    workspaces = {name: _workspaces(cl, context, f) for name, f in scheduled.funcs.items()}
    dims_of = {name: kernel_dims(f) for name, f in scheduled.funcs.items()}
    kernels = {name: cl.Kernel(program, name) for name in params}
    for call in scheduled.kernels:
        func = scheduled.funcs[call.func]
        names = [re.sub(r"\W", "_", str(p.name)) for p in func.params]  # as C spells them
        by_param = dict(zip(names, call.args))
        internal = workspaces[call.func]  # what the host side allocates
        if len(by_param) != len(names):
            raise KilnError(f"{call.func}: two buffers share the name that OpenCL gives "
                            f"their parameters ({names}); the launcher cannot tell them apart")
        for i, dims in enumerate(dims_of[call.func]):
            kernel_name = f"{call.func}_kernel" + (f"_{i}" if i else "")
            if kernel_name not in params:
                raise KilnError(f"the OpenCL code has no kernel {kernel_name}")
            unknown = [p for p in params[kernel_name]
                       if _param_name(p) not in by_param and _param_name(p) not in internal]
            if unknown:
                raise KilnError(f"{kernel_name} takes {unknown}, which are not buffers of "
                                f"{call.func} ({names})")
            args = [buffers[by_param[_param_name(p)]] if _param_name(p) in by_param
                    else internal[_param_name(p)] for p in params[kernel_name]]
            grid, block = dims
            kernels[kernel_name].set_args(*args)
            cl.enqueue_nd_range_kernel(queue, kernels[kernel_name],
                                       tuple(g * b for g, b in zip(grid, block)), tuple(block))
    queue.finish()
    out = []
    for v in graph.outputs:
        array = np.empty(v.type.shape, to_numpy_dtype(v.dtype))
        if array.nbytes:
            cl.enqueue_copy(queue, array, buffers[v.name])
        out.append(array)
    return out


def opencl_source(scheduled: Scheduled) -> str:
    """The OpenCL C of ``scheduled``'s functions (retargeted from CUDA)."""
    import tvm

    funcs = {name: f.without_attr("target") for name, f in scheduled.funcs.items()}
    target = tvm.target.Target({"kind": "opencl", "host": {"kind": "llvm"}})
    executable = tvm.compile(tvm.IRModule(funcs), target)
    device = [m for m in executable.mod.imports if m.kind == "opencl"]
    if len(device) != 1:
        raise KilnError("TVM produced no OpenCL module for the GPU schedules")
    code = str(device[0].inspect_source(""))
    # INT_MIN printed as a literal is a long in C, which makes select(int, long, int) ambiguous
    code = re.sub(r"(?<![\w.])-2147483648(?![\w.])", "(-2147483647 - 1)", code)
    return "#pragma OPENCL EXTENSION cl_khr_fp64 : enable\n" + PRELUDE + code


def kernel_dims(func) -> list[tuple[tuple[int, int, int], tuple[int, int, int]]]:
    """(grid, block) sizes of each kernel of a scheduled function, in launch order."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    body = sch.get(sch.get_sblock("root")).body
    out = []
    for stmt in _sequence(body):
        tags: dict[str, int] = {}
        _thread_extents(stmt, tags)
        if not tags:
            continue  # no loop bound to threads: not a kernel (the build refuses such)
        grid = tuple(tags.get(f"blockIdx.{a}", 1) for a in "xyz")
        block = tuple(tags.get(f"threadIdx.{a}", 1) for a in "xyz")
        out.append((grid, block))
    return out


def _sequence(stmt) -> list:
    from tvm import tirx

    if isinstance(stmt, tirx.SeqStmt):
        return [s for child in stmt.seq for s in _sequence(child)]
    return [stmt]


def _thread_extents(stmt, tags: dict[str, int]) -> None:
    """Collect the extent of every thread-bound loop under ``stmt``."""
    from tvm import tirx

    if isinstance(stmt, tirx.For):
        if stmt.kind == tirx.ForKind.THREAD_BINDING:
            tags[str(stmt.thread_binding.thread_tag)] = int(stmt.extent)
        _thread_extents(stmt.body, tags)
    elif isinstance(stmt, tirx.SeqStmt):
        for child in stmt.seq:
            _thread_extents(child, tags)
    elif isinstance(stmt, tirx.IfThenElse):
        _thread_extents(stmt.then_case, tags)
        if stmt.else_case is not None:
            _thread_extents(stmt.else_case, tags)
    elif hasattr(stmt, "block"):  # SBlockRealize
        _thread_extents(stmt.block.body, tags)
    elif hasattr(stmt, "body"):  # SBlock, LetStmt, AttrStmt...
        _thread_extents(stmt.body, tags)


def _workspaces(cl, context, func) -> dict[str, Any]:
    """A device buffer for each buffer ``func`` allocates in global memory (TVM's host code
    allocates those and passes them to its kernels), by the name OpenCL gives them."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    out = {}
    for buf in sch.get(sch.get_sblock("root")).alloc_buffers:
        if str(buf.scope()) in ("global", ""):
            nbytes = int(np.prod([int(d) for d in buf.shape], dtype=np.int64)) * \
                np.dtype(to_numpy_dtype(str(buf.dtype))).itemsize
            out[re.sub(r"\W", "_", str(buf.name))] = cl.Buffer(
                context, cl.mem_flags.READ_WRITE, max(nbytes, 64))
    return out


def _param_name(param: str) -> str:
    return param[: -len("_ptr")] if param.endswith("_ptr") else param


def _device(cl):
    for platform in cl.get_platforms():
        devices = platform.get_devices()
        if devices:
            return devices[0]
    raise KilnError("no OpenCL device: install PoCL (pip install pocl-binary-distribution)")


def _buffers(cl, context, graph: Graph, scheduled: Scheduled,
             inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """One device buffer per value a kernel touches: inputs and constants copied in."""
    known = dict(scheduled.constants)
    known.update({k: np.asarray(v) for k, v in inputs.items()})
    flags = cl.mem_flags
    out = {}
    for name in {a for k in scheduled.kernels for a in k.args} | set(graph.output_names):
        t = scheduled.values[name]
        array = known.get(name)
        if array is not None:
            array = np.ascontiguousarray(array, to_numpy_dtype(t.dtype))
            out[name] = cl.Buffer(context, flags.READ_WRITE | flags.COPY_HOST_PTR,
                                  hostbuf=array) if array.nbytes else \
                cl.Buffer(context, flags.READ_WRITE, 64)
        else:
            nbytes = int(np.prod(t.shape, dtype=np.int64)) * np.dtype(
                to_numpy_dtype(t.dtype)).itemsize
            out[name] = cl.Buffer(context, flags.READ_WRITE, max(nbytes, 64))
    return out
