"""Build: a kiln Graph -> one IRModule of scheduled PrimFuncs, compiled with ONE tvm.compile.

Each node (a ``fused`` node being one group) becomes one kernel in destination-passing style:
its arguments are value names, inputs first, then outputs (docs/artifact.md). Kernels that
are structurally identical (same op, shapes and attributes: the repeated layers of a ResNet
or a BERT) are compiled once and called under one name.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from kiln.codegen.lower import (
    check_lowerable,
    flatten_nodes,
    fused_body,
    lower_group,
    node_context,
)
from kiln.codegen.nvcc import device_module
from kiln.errors import InputError, KilnError, UnsupportedOpError
from kiln.ir.dims import Sym, as_dim, symbols_in
from kiln.ir.graph import Graph, Node, Value
from kiln.ir.ops import get_op
from kiln.ir.types import TensorType, to_numpy_dtype
from kiln.targets import Target, resolve_target

Progress = Callable[[str], None]
_LOADED = time.perf_counter()  # progress lines count seconds from here

# (op, dtype) pairs TVM 0.27 cannot compile: the dtype of the op's first input ("in->out" for
# cast). Found by compiling every op on every dtype its type rule accepts; refused before
# lowering, so that the error names the node rather than coming from inside TVM.
_FLOAT_FIRST = "cast to float32 first"
NO_CODE_FOR: dict[tuple[str, str], str] = {
    **{(op, "bool"): "TVM has no arithmetic on bool; cast to uint8 first"
       for op in ("add", "mul", "maximum", "minimum")},
    **{(op, dtype): f"TVM's {op} reduction cannot compare {dtype} values; {_FLOAT_FIRST}"
       for op in ("argmax", "argmin") for dtype in ("bfloat16", "bool")},
    **{(op, "bfloat16"): f"TVM lowers {op} on float16/32/64 only; {_FLOAT_FIRST}"
       for op in ("logsumexp", "lrn", "max_pool2d", "pow")},
    **{("pow", dtype): f"TVM's power takes floats only; {_FLOAT_FIRST}"
       for dtype in ("int8", "uint8", "int32", "int64")},
    **{(op, "uint8"): "TVM cannot form -1 in an unsigned type; cast to int32 first"
       for op in ("neg", "sign")},
    ("softplus", "float16"): f"TVM has no float16 log1p; {_FLOAT_FIRST}",
    ("cast", "bool->bool"): "TVM cannot compile a cast of bool to bool; drop it",
}


def _dtype_key(node: Node) -> str:
    if node.op == "cast":
        return f"{node.inputs[0].dtype}->{node.outputs[0].dtype}"
    return node.inputs[0].dtype if node.inputs else node.outputs[0].dtype


def check_dtypes(nodes: list[Node]) -> list[UnsupportedOpError]:
    """Every node (fused bodies included) on a dtype TVM cannot compile its op for."""
    flat, _ = flatten_nodes(nodes)
    errors = []
    for node in flat:
        why = NO_CODE_FOR.get((node.op, _dtype_key(node)))
        if why:
            errors.append(UnsupportedOpError(
                f"{node_context(node)}: kiln cannot compile {node.op} on {_dtype_key(node)}: "
                f"{why}"))
    return errors


@dataclass
class KernelCall:
    """One call of the kernel sequence (the manifest's ``kernels`` entry)."""

    func: str
    args: list[str]
    num_outputs: int
    sources: list[str]
    flops: int | str  # a symbolic size's text where it depends on one
    sizes: list[str] = field(default_factory=list)  # symbolic sizes passed after the args

    def to_json(self) -> dict[str, Any]:
        out = {"func": self.func, "args": list(self.args), "num_outputs": self.num_outputs,
               "sources": list(self.sources),
               "flops": self.flops if isinstance(self.flops, str) else int(self.flops)}
        if self.sizes:
            out["sizes"] = list(self.sizes)
        return out


@dataclass
class BuildResult:
    """What codegen hands to the artifact writer: the compiled library and its call plan."""

    name: str
    target: Target
    module: Any  # the scheduled tvm.IRModule
    executable: Any  # what tvm.compile returned (export_library, ["func"])
    kernels: list[KernelCall]
    constants: dict[str, np.ndarray]
    values: dict[str, TensorType]
    inputs: list[str]
    outputs: list[str]
    build_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    tuning: dict[str, Any] = field(default_factory=dict)  # measured choices (the manifest's)
    gpu: dict[str, Any] = field(default_factory=dict)  # GPU kernels: launches, ptxas figures
    device_code: bytes = b""  # a GPU build's device module (fat binary + function table)
    device_source: str = ""  # the CUDA C of a GPU build
    natives: tuple[str, ...] = ()  # the C kernels its kernels call (kiln/codegen/native)
    sizes: dict[str, Any] = field(default_factory=dict)  # symbolic sizes (kiln/runtime/sizes.py)
    variants: list[dict[str, Any]] = field(default_factory=list)  # specializations

    def signature(self, names: list[str]) -> list[dict[str, Any]]:
        return [{"name": n, "shape": list(self.values[n].shape), "dtype": self.values[n].dtype}
                for n in names]

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the kernels in this process (tests and debugging; the runtime does this for
        deployed artifacts). Returns the outputs in order."""
        from kiln.codegen.execute import run_in_process

        return run_in_process(self, inputs)


def _func_name(index: int, node: Node) -> str:
    label = node.op
    if node.op == "fused":
        label = "fused_" + str(node.attrs.get("pattern") or node.attrs.get("name") or "group")
    return f"k{index}_" + re.sub(r"\W", "_", label)[:40]


def _sources(node: Node) -> list[str]:
    body = fused_body(node)
    if body is None:
        return [node.describe()]
    return [n.describe() for n in body.nodes]


def _flops(node: Node) -> int | str:
    """The node's floating-point operations: an int, or for symbolic shapes the text of
    the size expression (the runtime evaluates it per call size)."""
    body = fused_body(node)
    if body is not None:
        total = sum(as_dim(_flops(n)) for n in body.nodes)
        return total if isinstance(total, int) else str(total)
    fn = get_op(node.op).flops
    if fn is None:
        return 0
    types = [v.type for v in (*node.inputs, *node.outputs)]
    try:
        count = fn(types[:len(node.inputs)], types[len(node.inputs):], node.attrs)
    except (KilnError, TypeError, ValueError):
        if all(t.is_static for t in types):
            raise  # a bug in the op's count, not a size it cannot count
        return 0  # a count that needs static sizes: unknown at a symbolic size
    return int(count) if not isinstance(count, Sym) else str(count)


def _check_sizes(graph: Graph, target: Target) -> None:
    """Symbolic sizes compile where each is the size of some input dimension (the runtime
    reads them off the inputs) and the target is a CPU."""
    used = symbols_in(d for v in graph.all_values() for d in v.type.shape)
    if not used:
        return
    if target.kind != "cpu":
        ins = [f"%{v.name}: {v.type}" for v in graph.inputs if not v.type.is_static]
        raise KilnError(f"graph {graph.name!r} has symbolic dimensions ({', '.join(ins)}); "
                        f"the {target.kind} target needs concrete shapes: give the inputs "
                        "fixed sizes (e.g. batch=1) before compiling")
    named = {str(d) for v in graph.inputs for d in v.type.shape
             if isinstance(d, Sym) and d.is_name}
    unbound = sorted(used - named)
    if unbound:
        raise KilnError(f"graph {graph.name!r} uses the symbolic size(s) {unbound}, which "
                        "no input has as a dimension of its own: a compiled model reads its "
                        "sizes off its inputs, so give them values (e.g. "
                        f"{unbound[0]}=1) before compiling")


def symbolic_sizes(graph: Graph, bounds: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest's ``sizes`` of a graph with symbolic dims ({} for a static one): the
    names, ``bounds`` ({name: (low, high or None)}) and the least sizes its slices need."""
    from kiln.ir.ops.shape import slice_requirements

    names = sorted(symbols_in(d for v in graph.all_values() for d in v.type.shape))
    if not names:
        if bounds:
            raise KilnError(f"bounds for {sorted(bounds)} given, but graph {graph.name!r} has "
                            "no symbolic sizes")
        return {}
    out: dict[str, Any] = {"names": names}
    unknown = sorted(set(bounds or {}) - set(names))
    if unknown:
        raise KilnError(f"bounds for {unknown}, which are not sizes of graph {graph.name!r} "
                        f"(its sizes: {names})")
    if bounds:
        out["bounds"] = {}
        for name, (low, high) in bounds.items():
            if not (isinstance(low, int) and low >= 0 and (high is None or isinstance(
                    high, int) and high >= low)):
                raise KilnError(f"size {name}: bounds must be 0 <= low <= high (ints), got "
                                f"{low}..{high}")
            out["bounds"][name] = [low, high]
    flat, _ = flatten_nodes(graph.nodes)
    require: dict[tuple, str] = {}
    for node in flat:
        if node.op == "slice":
            for dim, low, high in slice_requirements(node.inputs[0].type, node.attrs):
                require.setdefault((str(dim), low, high), node.describe())
    if require:
        out["require"] = [[d, low, high, at] for (d, low, high), at in sorted(
            require.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0))]
    return out


def reporter(progress: Progress | bool | None) -> Progress:
    """``progress`` True: one line per stage on stderr with the seconds since the compiler
    was loaded (terminal or not: a log shows them too)."""
    if progress is True:
        return lambda msg: print(f"kiln [{time.perf_counter() - _LOADED:6.1f} s] {msg}",
                                 file=sys.stderr, flush=True)
    if callable(progress):
        return progress
    return lambda msg: None


@dataclass
class Scheduled:
    """A graph lowered and scheduled, not compiled yet: one scheduled PrimFunc per distinct
    kernel, the calls, and the constants and value types they use."""

    target: Target
    funcs: dict[str, Any]
    kernels: list[KernelCall]
    constants: dict[str, np.ndarray]
    values: dict[str, TensorType]
    natives: set[str] = field(default_factory=set)


def schedule_graph(graph: Graph, target: Any = None, report: Progress = lambda _: None,
                   prefix: str = "") -> Scheduled:
    """Lower every node of ``graph`` (a fused node being one group) and schedule it for
    ``target``; structurally identical kernels are scheduled once. ``prefix`` starts every
    function name (a specialization's kernels live in the same library)."""
    import tvm_ffi

    from kiln.codegen.schedules import schedule, tiling_for

    tgt = resolve_target(target)
    tiling = tiling_for(tgt)
    _check_sizes(graph, tgt)
    missing = [v.name for v in graph.params if v.name not in graph.weights]
    if missing:
        raise KilnError(f"graph {graph.name!r}: parameters {missing} have no values; codegen "
                        "needs every parameter's array (Graph.weights)")
    errors = check_lowerable(graph.nodes) + check_dtypes(graph.nodes)
    if errors:
        listing = "\n  ".join(str(e) for e in errors)
        raise UnsupportedOpError(f"{len(errors)} node(s) cannot be compiled:\n  {listing}")

    weights = {v.name: np.asarray(graph.weights[v.name]) for v in graph.params}
    constants: dict[str, np.ndarray] = {}
    values: dict[str, TensorType] = {v.name: v.type for v in graph.all_values()}
    funcs: dict[str, Any] = {}
    seen: dict[int, list[tuple[Any, str]]] = {}
    kernels: list[KernelCall] = []
    natives: set[str] = set()
    n = len(graph.nodes)
    for index, node in enumerate(graph.nodes):
        if index % 25 == 0 and n > 25:
            report(f"lowering node {index + 1}/{n}")
        ins = list(dict.fromkeys(node.inputs))
        const_arrays = {v.name: weights[v.name] for v in ins if v.name in weights}
        with _tvm_failure(f"{node_context(node)}: TVM could not lower it"):
            group = lower_group([node], ins, list(node.outputs), const_arrays, tiling)
        for pname, arr in group.new_constants.items():
            if pname in values and pname not in constants:
                raise KilnError(f"{node_context(node)}: the packed weight's name %{pname} is "
                                "already a value of the graph; rename that value")
            constants.setdefault(pname, arr)
            values[pname] = TensorType.of(arr)
        for a in group.args[: len(group.args) - group.num_outputs]:
            if a in weights:
                constants.setdefault(a, weights[a])
        natives |= group.natives()
        with _tvm_failure(f"{node_context(node)}: TVM could not schedule it"):
            func = group.prim_func()
            key = tvm_ffi.structural_hash(func)
            fname = next((nm for f, nm in seen.get(key, [])
                          if tvm_ffi.structural_equal(f, func)), None)
            if fname is None:
                fname = prefix + _func_name(index, node)
                seen.setdefault(key, []).append((func, fname))
                funcs[fname] = schedule(func, tgt).with_attr("global_symbol", fname)
        kernels.append(KernelCall(fname, group.args, group.num_outputs, _sources(node),
                                  _flops(node), group.size_names))
    for v in graph.outputs:
        if v.name in weights:
            constants.setdefault(v.name, weights[v.name])
    if not funcs:  # every output is an input or a constant: still ship a (trivial) library
        funcs["kiln_noop"] = schedule(_noop(), tgt).with_attr("global_symbol", "kiln_noop")
    return Scheduled(tgt, funcs, kernels, constants, values, natives)


def build(graph: Graph, target: Any = None, progress: Progress | bool | None = None,
          bounds: Mapping[str, Any] | None = None,
          specialized: Sequence[tuple[Mapping[str, int], Graph]] = ()) -> BuildResult:
    """Lower, schedule and compile every node of ``graph`` into one library.

    ``target``: None/"llvm" (this machine), "portable", "cuda", or see
    ``target.resolve_target``. ``progress``: True prints progress lines on stderr; a
    callable receives them. ``bounds``: {size name: (low, high or None)} for the symbolic
    sizes of ``graph`` (the runtime refuses a call outside them). ``specialized``: (sizes,
    the graph with those sizes fixed) pairs whose kernels join the library; the runtime
    runs one where a call has its sizes (``BuildResult.variants``).
    """
    import tvm

    t_start = time.perf_counter()
    report = reporter(progress)
    sizes = symbolic_sizes(graph, bounds)
    done = schedule_graph(graph, target, report)
    tgt, funcs, kernels = done.target, dict(done.funcs), done.kernels
    constants, natives = dict(done.constants), set(done.natives)
    variants = []
    for i, (fixed, g) in enumerate(specialized):
        if not sizes or not set(fixed) <= set(sizes["names"]):
            raise KilnError(f"a specialization for {dict(fixed)} needs those symbolic sizes "
                            f"in graph {graph.name!r}")
        report(f"specializing for {dict(fixed)}")
        v = _own_names(schedule_graph(g, tgt, report, prefix=f"s{i}_"), g, done, f"s{i}.")
        funcs.update(v.funcs)
        constants.update(v.constants)
        natives |= v.natives
        variants.append(_variant(g, fixed, v))
    all_kernels = kernels + [k for v in variants for k in v["calls"]]
    report(f"compiling {len(funcs)} kernels ({len(all_kernels)} calls) for "
           f"{tgt.to_dict()} with LLVM")
    t0 = time.perf_counter()
    module = tvm.IRModule(funcs)
    executable = _compile(funcs, tgt, all_kernels)
    device, source, ptxas = b"", "", {}
    if tgt.kind == "cuda":
        report(f"compiling the CUDA kernels for {', '.join(tgt.archs)} with nvcc")
        device, source, ptxas = device_module(executable.mod, tgt.archs)
    report(f"compiled in {time.perf_counter() - t0:.1f} s")
    used = {a for k in kernels for a in k.args} | set(graph.input_names) | set(graph.output_names)
    return BuildResult(
        name=graph.name,
        target=tgt,
        module=module,
        executable=executable,
        kernels=kernels,
        constants=constants,
        # (and the types of the specializations' own constants: the manifest's constants
        # are one list, each described in the main "values")
        values={**{k: v for k, v in done.values.items() if k in used},
                **{n: TensorType.of(a) for n, a in constants.items()
                   if n not in done.constants}},
        inputs=graph.input_names,
        outputs=graph.output_names,
        build_seconds=time.perf_counter() - t_start,
        gpu=gpu_report(tgt, list(funcs), source, ptxas) if tgt.kind == "cuda" else {},
        device_code=device,
        device_source=source,
        natives=tuple(sorted(natives)),
        sizes=sizes,
        variants=variants,
    )


def _own_names(v: Scheduled, graph: Graph, main: Scheduled, prefix: str) -> Scheduled:
    """A specialization's values under names of their own (``prefix`` + name), but for the
    graph's inputs and outputs and the constants it shares with the main graph: names are
    unique per graph only, and the manifest's constants are one list."""
    keep = set(graph.input_names) | set(graph.output_names) | {
        n for n, a in v.constants.items()
        if n in main.constants and np.array_equal(main.constants[n], a)}
    taken = set(main.values) | set(main.constants)

    def own(name: str) -> str:
        if name in keep:
            return name
        new = prefix + name
        if new in taken:
            raise KilnError(f"a specialization's value %{name} cannot be named {new!r}: the "
                            "main graph has that name")
        return new

    kernels = [KernelCall(k.func, [own(a) for a in k.args], k.num_outputs, k.sources,
                          k.flops, k.sizes) for k in v.kernels]
    return Scheduled(v.target, v.funcs, kernels, {own(n): a for n, a in v.constants.items()},
                     {own(n): t for n, t in v.values.items()}, v.natives)


def _variant(graph: Graph, fixed: Mapping[str, int], done: Scheduled) -> dict[str, Any]:
    """A specialization as the manifest's ``variants`` holds it (``calls``: its
    KernelCalls, for the build only)."""
    used = {a for k in done.kernels for a in k.args} | set(graph.input_names) | \
        set(graph.output_names)

    def sig(names: list[str]) -> list[dict[str, Any]]:
        return [{"name": n, "shape": list(done.values[n].shape),
                 "dtype": done.values[n].dtype} for n in names]

    return {"sizes": dict(fixed), "inputs": sig(graph.input_names),
            "outputs": sig(graph.output_names),
            "values": {n: {"shape": list(t.shape), "dtype": t.dtype}
                       for n, t in done.values.items() if n in used},
            "calls": done.kernels}


def gpu_report(target: Target, funcs: list[str], source: str, ptxas: dict) -> dict[str, Any]:
    """The manifest's ``gpu``: per kernel function, its CUDA kernels (``__global__``s, one
    launch each) and what ptxas said of each on each architecture."""
    kernels = sorted(set(re.findall(r"__global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(",
                                    source)))
    per_func: dict[str, Any] = {}
    for name in funcs:
        mine = [k for k in kernels if re.fullmatch(re.escape(name) + r"_kernel(_\d+)?", k)]
        per_func[name] = {"launches": mine,
                          "ptxas": {k: ptxas.get(k, {}) for k in mine}}
    return {"archs": list(target.archs), "kernels": per_func}


@contextlib.contextmanager
def _tvm_failure(what: str) -> Iterator[None]:
    """Any error but a KilnError (TVM's own, or a builder's) becomes a KilnError that starts
    with ``what`` (which names the node) and ends with the error's first line."""
    try:
        yield
    except KilnError:
        raise
    except Exception as e:  # noqa: BLE001  (TVM raises its own error types, and others)
        raise KilnError(f"{what}: {_first_line(e)}") from e


def _first_line(error: BaseException) -> str:
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:500]


def _compile(funcs: dict[str, Any], target: Target, kernels: list[KernelCall]) -> Any:
    """``tvm.compile`` of every kernel at once; if it fails, each kernel alone, so that the
    error names the kernels TVM cannot compile and the kiln nodes they come from."""
    import tvm

    tvm_target = target.tvm_target()
    try:
        return tvm.compile(tvm.IRModule(funcs), tvm_target)
    except Exception as e:  # noqa: BLE001  (TVM raises its own error types, and others)
        failing = []
        for name, func in funcs.items():
            try:
                tvm.compile(tvm.IRModule({name: func}), tvm_target)
            except Exception as each:  # noqa: BLE001
                sources = next((k.sources for k in kernels if k.func == name), [])
                failing.append(f"kernel {name} (from {'; '.join(sources)}): "
                               f"{_first_line(each)}")
        listing = "\n  ".join(failing) or f"the whole module: {_first_line(e)}"
        raise KilnError(f"TVM could not compile {len(failing) or 'the'} kernel(s) for "
                        f"{target.to_dict()}:\n  {listing}") from e


def _noop():
    from tvm import te

    x = te.placeholder((1,), name="x")
    y = te.compute((1,), lambda i: x[i], name="y")
    return te.create_prim_func([x, y]).with_attr("global_symbol", "kiln_noop")


def export(result: BuildResult, directory: str, name: str = "kernels.so") -> str:
    """Write the compiled library to ``directory/name`` (export_library, with the native
    kernels it calls linked in); returns its path."""
    import os

    from kiln.codegen import native as natives

    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    try:
        if result.natives:
            result.executable.export_library(path, addons=natives.objects(result.natives))
        else:
            result.executable.export_library(path)
    except Exception as e:  # noqa: BLE001  (the linker's failure, as TVM reports it)
        raise KilnError(f"linking the kernels of {result.name!r} for {result.target.to_dict()} "
                        f"failed: {_linker_error(e)}") from e
    return path


def _linker_error(error: BaseException) -> str:
    """The line of a linker's output that says what went wrong."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    for line in lines:
        if ("error" in line.lower() or "fatal" in line.lower()) and not line.endswith(":"):
            return line[:300]  # not a header such as TVM's 'Compilation error:'
    return lines[0][:300] if lines else type(error).__name__


def check_inputs(result: BuildResult, inputs: Mapping[str, np.ndarray]
                 ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Validate inputs against the signature (names, shapes, dtypes) with a clear error;
    returns the arrays and the symbolic sizes they fix."""
    from kiln.ir.interpreter import bind_shape

    missing = [n for n in result.inputs if n not in inputs]
    extra = sorted(set(inputs) - set(result.inputs))
    if missing or extra:
        raise InputError(f"{result.name!r} takes inputs {result.inputs}; missing {missing}, "
                         f"unexpected {extra}")
    out: dict[str, np.ndarray] = {}
    sizes: dict[str, int] = {}
    for nm in result.inputs:
        t = result.values[nm]
        arr = np.asarray(inputs[nm])
        if arr.dtype != to_numpy_dtype(t.dtype) or arr.ndim != t.rank:
            raise InputError(f"input %{nm} expects {t}, got {arr.dtype.name}{list(arr.shape)}")
        try:
            bind_shape(Value(nm, t), arr, sizes, "input")
        except KilnError as e:
            raise InputError(str(e)) from None
        out[nm] = arr
    return out, sizes
