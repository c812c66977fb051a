"""``kiln compare``: every kernel's output against the reference value of the same node.

The model is optimized and built as ``kiln.compile`` does, then run in a debug run that
keeps every value in a buffer of its own (``codegen.execute.run_values``); the reference
(kiln's interpreter on the graph before optimization, or onnxruntime on an ONNX file) runs on
the same inputs. A kernel's outputs keep the names of the nodes they come from (a fused
group's outputs are its last nodes' values), so each is compared with the reference value of
that name; values inside a fused group have no buffer and are compared at the group's
boundary. A value the layout pass keeps blocked (``NCHW16c``) is laid back out to NCHW first;
a value without a twin (a layout conversion's) is listed without figures.

The first kernel with an output outside the tolerance (``|got - want| <= atol + rtol *
|want|``, NaN matching NaN) is the divergence: its inputs (as computed by the compiled model)
and the reference's values for them are saved as ``.npy``, with its node as a graph of its
own in kiln's text form and its scheduled TIR, so that it reproduces alone.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from kiln.ir.graph import Graph, GraphBuilder, Node
from kiln.ir.printer import print_graph


@dataclass
class ValueDiff:
    """One kernel output against its reference twin (``max_abs`` None: no twin)."""

    name: str
    shape: tuple
    max_abs: float | None = None
    max_rel: float | None = None  # max_abs over the reference's largest magnitude
    ok: bool = True
    note: str = ""  # why it has no twin, or how it was matched ("laid out from NCHW16c")


@dataclass
class KernelDiff:
    """One kernel call: its function, the source nodes it holds, its outputs' errors."""

    index: int
    func: str
    sources: list[str]
    outputs: list[ValueDiff]

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)


@dataclass
class Comparison:
    """The result of ``compare``: every kernel in execution order, the first divergence."""

    kernels: list[KernelDiff]
    reference: str
    atol: float
    rtol: float
    first_divergence: KernelDiff | None = None
    saved: str | None = None  # the folder holding the divergent kernel's reproduction
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.first_divergence is None

    def table(self) -> str:
        """The per-kernel table, as ``kiln compare`` prints it: each kernel's worst output,
        and the ops it holds with the origin of the first (the layer, or the ONNX node)."""
        width = max([len(k.func) for k in self.kernels] + [6]) + 2
        lines = [f"{'#':>4}  {'kernel':<{width}}{'max abs':>9} {'max rel':>9}  {'':4}holds"]
        for k in self.kernels:
            checked = [o for o in k.outputs if o.max_abs is not None]
            worst = max(checked, key=lambda o: (not o.ok, _nan_last(o.max_abs)), default=None)
            figures = ("        -         -" if worst is None
                       else f"{worst.max_abs:>9.2e} {worst.max_rel:>9.2e}")
            verdict = "" if worst is None else ("ok" if k.ok else "BAD")
            lines.append(f"{k.index:>4}  {k.func:<{width}}{figures}  {verdict:<4}"
                         f"{holds(k.sources)}")
        return "\n".join(lines)

    def summary(self) -> str:
        """What a person wants to know first: where the first divergence is, or that there
        is none."""
        tol = f"atol {self.atol:g}, rtol {self.rtol:g}"
        checked = sum(o.max_abs is not None for k in self.kernels for o in k.outputs)
        if self.ok:
            return (f"no divergence: {checked} kernel outputs match the {self.reference} "
                    f"reference ({tol})")
        k = self.first_divergence
        bad = next(o for o in k.outputs if not o.ok)
        lines = [f"first divergence: kernel #{k.index} {k.func}, output %{bad.name} off by "
                 f"{bad.max_abs:.3g} ({bad.max_rel:.3g} of its largest magnitude; {tol})",
                 "  it holds:"] + [f"    {s}" for s in k.sources]
        if self.saved:
            lines.append(f"  its inputs, node and TIR are in {self.saved}/ (README.txt says "
                         "how to rerun it alone)")
        return "\n".join(lines)


def compare(graph: Graph, inputs: Mapping[str, np.ndarray], *,
            reference: str = "interpreter", onnx_model: Any = None, opt_level: int = 2,
            target: Any = "llvm", precision: str = "fp32", atol: float = 1e-4,
            rtol: float = 1e-3, save: str | os.PathLike | None = None,
            layout_budget: float = 0.0, **pass_options: Any) -> Comparison:
    """Compile ``graph`` (as ``kiln.compile`` would, with these arguments) and compare every
    kernel's outputs with the ``reference``'s values of the same names: "interpreter" (kiln's
    numpy interpreter on ``graph`` as given) or "onnxruntime" (``onnx_model``: the ONNX file
    ``graph`` was imported from, or another version of it). ``save``: a folder for the first
    divergent kernel's reproduction."""
    from kiln.codegen.api import optimize
    from kiln.codegen.build import build
    from kiln.codegen.execute import run_values
    from kiln.debug.reference import reference_values

    inputs = {k: np.asarray(v) for k, v in inputs.items()}
    want = reference_values(graph, inputs, reference, onnx_model)
    optimized = optimize(graph, opt_level, target, precision=precision,
                         layout_budget=layout_budget, **pass_options)
    result = build(optimized, target=target)
    got = run_values(result, inputs)
    out = Comparison([], reference, atol, rtol)
    cast_from = _casts(optimized)
    for i, call in enumerate(result.kernels):
        outs = call.args[len(call.args) - call.num_outputs:]
        diffs = []
        for name in outs:
            twin = name
            while twin not in want and twin in cast_from:  # a cast's twin: what it casts
                twin = cast_from[twin]
            diffs.append(_diff(name, got[name], want.get(twin), atol, rtol))
            if twin != name and diffs[-1].max_abs is not None:
                diffs[-1].note = f"as %{twin}" + (f", {diffs[-1].note}" if diffs[-1].note
                                                  else "")
        kernel = KernelDiff(i, call.func, list(call.sources), diffs)
        out.kernels.append(kernel)
        if out.first_divergence is None and not kernel.ok:
            out.first_divergence = kernel
            if save is not None:
                out.saved = save_reproduction(os.fspath(save), optimized.nodes[i], i, call,
                                              result, optimized, got, want)
    return out


def _diff(name: str, got: np.ndarray, want: np.ndarray | None, atol: float,
          rtol: float) -> ValueDiff:
    if want is None:
        return ValueDiff(name, got.shape, note="no reference value of this name")
    note = ""
    if got.shape != want.shape:
        unblocked = _unblock(got, want.shape)
        if unblocked is None:
            return ValueDiff(name, got.shape, note=f"shape {list(got.shape)}, the "
                             f"reference's {list(want.shape)}")
        got, note = unblocked
    g, w = got.astype(np.float64), want.astype(np.float64)
    err = np.abs(g - w)
    err[np.isnan(g) & np.isnan(w)] = 0
    err[(g == w)] = 0  # (equal infinities)
    max_abs = float(np.nanmax(err, initial=0.0)) if err.size else 0.0
    if np.isnan(err).any():
        max_abs = float("nan")
    scale = float(np.abs(w[np.isfinite(w)]).max(initial=0.0))
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    ok = bool(np.isclose(g, w, rtol=rtol, atol=atol, equal_nan=True).all())
    return ValueDiff(name, tuple(got.shape), max_abs, max_rel, ok, note)


def _casts(graph: Graph) -> dict[str, str]:
    """Every cast's output name -> its input's name, fused bodies included (a value that a
    precision policy cast has the reference value of what it casts)."""
    from kiln.codegen.lower import flatten_nodes

    nodes, alias = flatten_nodes(graph.nodes)
    return {alias.get(n.outputs[0], n.outputs[0]).name: alias.get(n.inputs[0], n.inputs[0]).name
            for n in nodes if n.op == "cast"}


def _unblock(got: np.ndarray, shape: tuple) -> tuple[np.ndarray, str] | None:
    """A value the layout pass keeps in ``NCHW{c}c`` laid back out to the reference's NCHW."""
    from kiln.ir.ops.layout import relayout

    if got.ndim == 5 and len(shape) == 4 and got.shape[1] * got.shape[4] == shape[1] \
            and (got.shape[0], *got.shape[2:4]) == (shape[0], *shape[2:4]):
        layout = f"NCHW{got.shape[4]}c"
        return relayout(got, layout, "NCHW"), f"laid out from {layout}"
    return None


_DESCRIBED = re.compile(r"\((\w+)(?:, at (.*))?\)$")  # node.describe()'s "(op, at origin)"


def holds(sources: list[str]) -> str:
    """'conv2d_nchwc+add+relu at onnx:/layer1/conv1/Conv': a kernel's ops, and where the first
    comes from."""
    parsed = [_DESCRIBED.search(s) for s in sources]
    ops = "+".join(m.group(1) for m in parsed if m)
    origin = next((m.group(2) for m in parsed if m and m.group(2)), "")
    return (ops or "; ".join(sources)) + (f" at {origin}" if origin else "")


def _nan_last(x: float) -> float:
    return float("inf") if x != x else x


def save_reproduction(folder: str, node: Node, index: int, call, result, graph: Graph,
                      got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> str:
    """Write what reproduces one kernel alone into ``folder/kernel<index>_<func>``: its
    node as a one-node graph (``node.txt``, kiln's text form), the node's inputs as the
    compiled model computed them (``inputs/``) and as the reference did (``reference/``,
    where it has them), the reference's outputs, and the kernel's scheduled TIR. Returns
    the folder."""
    path = os.path.join(folder, f"kernel{index}_{call.func}")
    for sub in ("inputs", "reference"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    files: dict[str, str] = {}
    for v in dict.fromkeys(node.inputs):
        array = got.get(v.name)
        if array is None:
            array = graph.weights.get(v.name)
        if array is None or tuple(np.shape(array)) != tuple(v.type.shape):
            continue
        files[v.name] = _file(v.name)
        _save(os.path.join(path, "inputs", files[v.name]), array)
        if v.name in want and want[v.name].shape == np.shape(array):
            _save(os.path.join(path, "reference", files[v.name]), want[v.name])
    for v in node.outputs:
        if v.name in want:
            _save(os.path.join(path, "reference", _file(v.name)), want[v.name])
    with open(os.path.join(path, "node.txt"), "w") as f:
        f.write(print_graph(_alone(node)) + "\n")
    with open(os.path.join(path, "kernel.tir.txt"), "w") as f:
        f.write(result.module[call.func].script())
    with open(os.path.join(path, "README.txt"), "w") as f:
        f.write(_README.format(index=index, func=call.func, sources="\n".join(
            f"  {s}" for s in call.sources)))
    return path


def _save(path: str, array) -> None:
    """np.save, bfloat16 widened to float32 (exact; .npy has no bfloat16 type)."""
    array = np.asarray(array)
    np.save(path, array.astype(np.float32) if array.dtype.name == "bfloat16" else array)


def _alone(node: Node) -> Graph:
    """``node`` as a graph of its own: its inputs are the graph's inputs."""
    b = GraphBuilder(f"kernel_{node.op}")
    for v in dict.fromkeys(node.inputs):
        b.input(v.name, v.type)
    b.add_node(node)
    b.output(*node.outputs)
    return b.build()


def _file(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".npy"


_README = """Kernel #{index} ({func}) was the first to differ from the reference. It holds:
{sources}

node.txt        the node as a graph of its own (kiln.ir.parse reads it)
inputs/         its inputs as the compiled model computed them (file names: value names;
                bfloat16 values widened to float32, exactly: numpy's .npy has no bfloat16)
reference/      the reference's values of its inputs and outputs, where it has them
kernel.tir.txt  the kernel as TVM scheduled it

To run it alone:

    import os, re, numpy as np, kiln
    from kiln.ir import parse
    from kiln.ir.types import to_numpy_dtype
    graph = parse(open("node.txt").read())
    file = lambda name: os.path.join("inputs", re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".npy")
    feeds = {{v.name: np.load(file(v.name)).astype(to_numpy_dtype(v.dtype))
              for v in graph.inputs}}
    want = kiln.interpret(graph, feeds)
    got = kiln.compile(graph, opt_level=0).run(feeds)
"""
