"""End-to-end latency, side by side: kiln (each opt level) vs onnxruntime vs PyTorch eager vs
TVM Relax's default ONNX path vs kiln's numpy interpreter, same weights, same threads.

    python benchmarks/bench.py                         # mlp, bert, resnet50 at 2 threads
    python benchmarks/bench.py --models bert --levels 0,2 --threads 1 --repeat 50

The models are kiln's examples; PyTorch runs a twin module with the same weights (the example
source with ``from torch import nn``), and onnxruntime and TVM Relax run that twin as exported
by PyTorch's exporter. Every engine's output is checked against kiln's interpreter. kiln,
PyTorch and onnxruntime are timed in alternating blocks of calls (``timing.py``), so that a
noisy machine slows them alike; onnxruntime runs with its default settings (its workers
spin-wait after a call: the timer lets them go idle before another engine's block). Ratios
are engine latency / kiln's best latency (above 1: kiln is faster).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from timing import paired_medians  # noqa: E402


def set_threads(n: int) -> None:
    """Before any engine loads: every thread pool gets ``n`` threads."""
    for var in ("TVM_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def median_seconds(fn, repeat: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def torch_twin(example: str, factory: str, state: dict):
    """The example's module built with torch.nn, loaded with the kiln model's weights."""
    import torch

    source = (ROOT / "examples" / example).read_text()
    namespace: dict = {"__name__": f"torch_twin_{factory}"}
    exec(compile(source.replace("from kiln import nn", "from torch import nn"), example, "exec"),
         namespace)
    model = namespace[factory]()
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()})
    return model.eval()


def models(names: list[str]):
    """(name, kiln module, example file, factory, {input name: array})"""
    import numpy as np

    sys.path.insert(0, str(ROOT / "examples"))
    import mlp
    import resnet
    import transformer

    rng = np.random.default_rng(0)
    table = {
        "mlp": (lambda: mlp.MLP((784, 512, 512, 10)), "mlp.py", "MLP",
                {"x": rng.standard_normal((1, 784)).astype(np.float32)}),
        "bert": (transformer.bert_base_layer, "transformer.py", "bert_base_layer",
                 {"src": rng.standard_normal((1, 128, 768)).astype(np.float32)}),
        "resnet50": (resnet.resnet50, "resnet.py", "resnet50",
                     {"x": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)}),
    }
    for name in names:
        make, example, factory, inputs = table[name]
        yield name, make(), example, factory, inputs


def export_onnx(twin, inputs: dict, path: Path) -> Path:
    import torch

    class Exported(torch.nn.Module):
        # the TorchScript exporter needs is_causal spelled out for transformer layers
        def __init__(self):
            super().__init__()
            self.twin = twin

        def forward(self, *xs):
            if isinstance(self.twin, torch.nn.TransformerEncoderLayer):
                return self.twin(*xs, is_causal=False)
            return self.twin(*xs)

    args = tuple(torch.from_numpy(a) for a in inputs.values())
    torch.onnx.export(Exported().eval(), args, str(path), input_names=list(inputs), dynamo=False,
                      opset_version=17)
    return path


def run_model(name, module, example, factory, inputs, args, out: list) -> None:
    """Build every engine, check its output against the interpreter, then time them all in
    alternating blocks (``timing.paired_medians``) so that each meets the same machine load."""
    import numpy as np
    import onnxruntime as ort
    import torch

    import kiln
    from kiln.codegen.api import compile as kiln_compile

    module.eval()
    graph = kiln.trace(module, name=name, **{k: kiln.TensorSpec(v.shape) for k, v in
                                             inputs.items()})
    t0 = time.perf_counter()
    (reference,) = kiln.interpret(graph, inputs)[:1]
    interp_s = time.perf_counter() - t0
    engines = []  # (engine, compile seconds or None, run, max abs error, kernels)

    def first(got):
        got = got[0] if isinstance(got, (list, tuple)) else got
        return got.numpy() if hasattr(got, "numpy") else np.asarray(got)

    for level in args.levels:
        t0 = time.perf_counter()
        compiled = kiln_compile(graph, opt_level=level)
        build_s = time.perf_counter() - t0
        err = float(np.abs(first(compiled.run(inputs)) - reference).max())
        engines.append((f"kiln O{level}", build_s, lambda c=compiled: c.run(inputs), err,
                        len(compiled.build.kernels)))

    twin = torch_twin(example, factory, module.state_dict())
    torch.set_num_threads(args.threads)
    tin = tuple(torch.from_numpy(a) for a in inputs.values())

    def torch_run():
        with torch.inference_mode():
            return twin(*tin)

    err = float(np.abs(first(torch_run()) - reference).max())
    engines.append(("pytorch eager", None, torch_run, err, None))

    onnx_path = Path(args.workdir) / f"{name}.onnx"
    export_onnx(twin, inputs, onnx_path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
    t0 = time.perf_counter()
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    build_s = time.perf_counter() - t0
    err = float(np.abs(first(sess.run(None, inputs)) - reference).max())
    engines.append(("onnxruntime", build_s, lambda: sess.run(None, inputs), err, None))

    medians = paired_medians([e[2] for e in engines], args.repeat)
    rows = [(e[0], e[1], lat, e[3], e[4]) for e, lat in zip(engines, medians)]
    if name in args.relax:
        rows.append(relax_row(onnx_path, inputs, reference, args))
    rows.append(("numpy interpreter", None, interp_s, 0.0, len(graph.nodes)))
    best = min(r[2] for r in rows if r[0].startswith("kiln"))
    out.append((name, rows, best))
    print_table(name, rows, best)


def relax_row(onnx_path: Path, inputs: dict, reference, args):
    """TVM's own ONNX path with its default (untuned) CPU build (slow: timed on its own)."""
    import numpy as np
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    t0 = time.perf_counter()
    mod = from_onnx(onnx.load(str(onnx_path)), keep_params_in_input=False)
    ex = tvm.compile(mod, target="llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    build_s = time.perf_counter() - t0
    tin = [tvm.runtime.tensor(a) for a in inputs.values()]
    got = vm["main"](*tin)
    got = (got[0] if isinstance(got, (list, tuple)) or hasattr(got, "__len__") and
           not hasattr(got, "numpy") else got).numpy()
    lat = median_seconds(lambda: vm["main"](*tin), max(3, args.repeat // 10), warmup=1)
    return ("tvm relax (untuned)", build_s, lat, float(np.abs(got - reference).max()), None)


def print_table(name: str, rows, best: float) -> None:
    print(f"\n== {name}: median latency, {ARGS.threads} thread(s); ratio = engine / kiln best")
    print(f"{'engine':<22}{'compile s':>10}{'latency ms':>12}{'ratio':>8}{'max err':>10}"
          f"{'kernels':>9}")
    for engine, build_s, lat, err, kernels in rows:
        build = f"{build_s:.1f}" if build_s is not None else "-"
        print(f"{engine:<22}{build:>10}{lat * 1e3:>12.3f}{lat / best:>8.2f}{err:>10.1e}"
              f"{kernels if kernels is not None else '-':>9}")
    sys.stdout.flush()


def main(argv=None) -> int:
    global ARGS
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mlp,bert,resnet50")
    p.add_argument("--levels", default="0,1,2,3", help="kiln opt levels to compile at")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--relax", default="mlp,bert",
                   help="models to also run through TVM Relax's default ONNX path (slow)")
    p.add_argument("--workdir", default="/tmp/kiln-bench")
    ARGS = args = p.parse_args(argv)
    set_threads(args.threads)
    args.levels = [int(x) for x in args.levels.split(",")]
    args.relax = set(filter(None, args.relax.split(",")))
    os.makedirs(args.workdir, exist_ok=True)
    results: list = []
    for spec in models(args.models.split(",")):
        run_model(*spec, args, results)
    return 0


ARGS = None

if __name__ == "__main__":
    sys.exit(main())
