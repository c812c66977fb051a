"""``compile(graph) -> CompiledModel``: build, write the artifact (docs/artifact.md), load it
with the deployable runtime, and run it."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from kiln.codegen.build import BuildResult, Progress, build, export, reporter
from kiln.codegen.layout_tuning import pass_context
from kiln.errors import ArtifactError
from kiln.ir.graph import Graph
from kiln.ir.specialize import fix_sizes
from kiln.passes.context import PassContext


def manifest(result: BuildResult) -> dict[str, Any]:
    """The manifest fields codegen owns; the runtime's writer adds format, memory, files."""
    return {
        "target": result.target.to_dict(),
        "cpu_features": list(result.target.features),
        "inputs": result.signature(result.inputs),
        "outputs": result.signature(result.outputs),
        "values": {n: {"shape": list(t.shape), "dtype": t.dtype}
                   for n, t in result.values.items()},
        "constants": sorted(result.constants),
        "kernels": [k.to_json() for k in result.kernels],
        **({"tuning": result.tuning} if result.tuning else {}),
        **({"sizes": result.sizes} if result.sizes else {}),
        **({"variants": [{**{k: v for k, v in var.items() if k != "calls"},
                          "kernels": [k.to_json() for k in var["calls"]]}
                         for var in result.variants]} if result.variants else {}),
        **({"gpu": result.gpu} if result.gpu else {}),
    }


def write(result: BuildResult, path: str | os.PathLike) -> Path:
    """Write ``result`` as the artifact directory ``path`` (``NAME.kiln``); returns it."""
    from kiln.runtime import write_artifact

    with _writing(path), tempfile.TemporaryDirectory(prefix="kiln-lib-") as tmp:
        lib = export(result, tmp)
        weights = {n: np.ascontiguousarray(a) if a.ndim else np.array(a)
                   for n, a in result.constants.items()}
        return write_artifact(path, manifest(result), lib, weights,
                              target_files=target_files(result))


def target_files(result: BuildResult) -> dict[str, Any]:
    """The files a target kind adds to the artifact: a CUDA build's device code and TVM's
    CUDA runtime library (its device API and module loader)."""
    if result.target.kind != "cuda":
        return {}
    from kiln.runtime import format as fmt
    from kiln.runtime.buildtime import find_tvm_runtime_library

    return {fmt.DEVICE_CODE: result.device_code,
            fmt.CUDA_RUNTIME_LIB: find_tvm_runtime_library(fmt.CUDA_RUNTIME_LIB)}


@contextlib.contextmanager
def _writing(path: str | os.PathLike) -> Iterator[None]:
    """An OSError while writing the artifact (no such folder, no permission, a full disk)
    as an ArtifactError that names the path."""
    try:
        yield
    except OSError as e:
        raise ArtifactError(f"cannot write the artifact {os.fspath(path)!r}: "
                            f"{e.strerror or e}") from None


class CompiledModel:
    """A compiled graph, loaded with kiln's runtime: ``run`` it, or ``save`` the artifact."""

    def __init__(self, result: BuildResult, artifact: Path, workdir: str,
                 reports: dict[str, Any] | None = None, graph: Graph | None = None):
        from kiln.runtime import load

        self.build = result
        self.graph = graph  # the optimized graph it was built from
        self.reports = reports or {}  # what the passes decided (PassContext.reports)
        self.artifact = artifact
        self._workdir = workdir
        # a GPU artifact is built anywhere, loaded where it runs (on first use)
        self._model = load(artifact) if result.target.kind != "cuda" else None

    @property
    def model(self):
        """The artifact loaded with the runtime (a GPU one: an ArtifactError without a GPU)."""
        if self._model is None:
            from kiln.runtime import load

            self._model = load(self.artifact)
        return self._model

    @property
    def inputs(self):
        return self.model.inputs

    @property
    def outputs(self):
        return self.model.outputs

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run on ``{input name: array}``; returns the outputs in graph order."""
        return self.model.run(dict(inputs))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the artifact to ``path``: a directory ``NAME.kiln``, or one archive if the
        path ends in ``.tar``. An old artifact there is replaced atomically; any other
        existing file or folder is left alone (ArtifactError). Returns the path written."""
        from kiln.runtime import copy_artifact, pack

        path = Path(path)
        with _writing(path):
            if path.suffix == ".tar":
                return pack(self.artifact, path)
            return copy_artifact(self.artifact, path)

    def __del__(self):  # the loaded library stays mapped; the files can go
        shutil.rmtree(getattr(self, "_workdir", ""), ignore_errors=True)


def optimize(
    graph: Graph,
    opt_level: int | str = 2,
    target: Any = "llvm",
    progress: Progress | bool | None = None,
    layout_budget: float = 30.0,
    layout_cache: str | os.PathLike | bool | None = None,
    precision: str = "fp32",
    **pass_options: Any,
) -> Graph:
    """The optimized graph that ``compile`` would build, with the same arguments: the
    ``O<opt_level>`` pipeline for ``target``, with the PassContext that ``compile`` makes."""
    return _optimize(graph, opt_level, target, progress, layout_budget, layout_cache,
                     precision, pass_options)[0]


def _optimize(graph, opt_level, target, progress, layout_budget, layout_cache, precision,
              pass_options) -> tuple[Graph, PassContext]:
    from kiln.passes.manager import optimize as run_pipeline

    ctx = pass_context(target, opt_level, layout_budget, layout_cache, progress, precision)
    return run_pipeline(graph, opt_level, ctx=ctx, **pass_options), ctx


def compile(
    graph: Graph,
    target: Any = "llvm",
    opt_level: int = 2,
    progress: Progress | bool | None = None,
    layout_budget: float = 30.0,
    layout_cache: str | os.PathLike | bool | None = None,
    precision: str = "fp32",
    bounds: Mapping[str, tuple[int, int | None]] | None = None,
    specialize: Mapping[str, Sequence[int]] | Sequence[Mapping[str, int]] | None = None,
    **pass_options: Any,
) -> CompiledModel:
    """Optimize ``graph`` with the ``O<opt_level>`` pipeline, compile it for ``target`` and
    load it with the runtime.

    ``pass_options`` go to ``kiln.passes.manager.optimize`` (``verify``, ``disable``,
    ``dump_after``, ``dump``, ``records``). ``target``: "llvm" (this machine), "portable",
    an x86-64 level, "cuda" (``"cuda -arch=sm_90"``; built without a GPU, run on one), or
    a dict (see ``kiln.targets.resolve_target``).
    At O3 the layout pass measures conv block sizes on the target for at most
    ``layout_budget`` seconds (0: the heuristic and cached measurements only), cached in
    ``layout_cache`` (default ``~/.cache/kiln/layout.json``; False: no cache); the choices
    are in the manifest's ``tuning`` (``kiln/codegen/layout_tuning.py``).
    ``precision``: "fp32", or "bf16"/"fp16" to run matmuls, convolutions and the
    elementwise chains between them in that type (accumulating in float32; weights
    converted once), keeping float32 for sums, statistics and softmax
    (``kiln/passes/precision.py``); inputs and outputs keep their types. Where the target
    has no fast instructions for it, a ``PrecisionWarning`` says so and it compiles in
    float32. A quantized model (QDQ ONNX) runs its matmuls and convolutions on int8 kernels
    where the target has AVX512-VNNI (the ``int8`` pass; ``reports["int8"]`` says which).
    A graph with symbolic dims (``TensorSpec(("batch", 128))``, an ONNX model's
    ``dim_param``s) compiles into one model for every size (docs/shapes.md); ``bounds``
    ({"batch": (1, 32)}, high None for none) limits the sizes it accepts; ``specialize``
    also builds the model with sizes fixed, run where a call has those sizes: {"seq": [1,
    2]} (each value of each size on its own) or [{"batch": 1, "seq": 1}] (together: a
    decoder's one-token step then runs on kernels made for one row).
    """
    report = reporter(progress)
    report(f"optimizing {graph.name!r} ({len(graph.nodes)} nodes) at O{opt_level}")
    source = graph
    graph, ctx = _optimize(graph, opt_level, target, progress, layout_budget, layout_cache,
                           precision, pass_options)
    specialized = []
    for sizes in _specializations(specialize):
        report(f"optimizing the specialization {sizes}")
        fixed, _ = _optimize(fix_sizes(source, sizes), opt_level, target, progress,
                             layout_budget, layout_cache, precision, pass_options)
        specialized.append((sizes, fixed))
    report(f"lowering and scheduling {len(graph.nodes)} nodes")
    result = build(graph, target=ctx.target, progress=progress, bounds=bounds,
                   specialized=specialized)
    layout = ctx.reports.get("layout")
    if layout is not None and layout.choices:
        result.tuning["layout"] = layout.to_json()
    workdir = tempfile.mkdtemp(prefix="kiln-")
    report("writing and loading the artifact")
    try:
        artifact = write(result, Path(workdir) / f"{_safe(graph.name)}.kiln")
        return CompiledModel(result, artifact, workdir, ctx.reports, graph)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def _specializations(spec: Any) -> list[dict[str, int]]:
    """``specialize`` as a list of {name: size} (see ``compile``)."""
    if not spec:
        return []
    if isinstance(spec, Mapping):
        return [{name: int(v)} for name, values in spec.items() for v in values]
    return [{name: int(v) for name, v in dict(sizes).items()} for sizes in spec]


def _safe(name: str) -> str:
    """The graph's name as a file name: safe characters, at most 100 of them (a fused
    group's graph is named after all of its ops)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:100] or "model"
