"""Imported models: kiln (``kiln.from_onnx`` + ``kiln.compile``, O2 or ``--opt-level``) vs
onnxruntime on the same ``.onnx`` files, same threads, latency side by side.

    python benchmarks/onnx_bench.py                         # every model, both sizes, 2 threads
    python benchmarks/onnx_bench.py --models gpt,bert --sizes tiny --threads 1 --repeat 100

The models are the PyTorch twins of kiln's examples that tests/onnx/test_models.py checks
(tests/onnx/torch_twins.py: MLP, LeNet, a ResNet block, LSTM, GRU, a Transformer encoder
layer, BERT- and GPT-style stacks) plus ResNet-50 (examples/resnet.py built with torch.nn),
exported by PyTorch's TorchScript exporter (``torch.onnx.export(..., dynamo=False)``,
opset 17). ``tiny`` is the test's size at batch 1; ``modest`` is a wider model (and for the
small CNNs a batch). Latency is the median wall time of one ``run`` call from Python (kiln's
``CompiledModel.run``, onnxruntime's ``InferenceSession.run``), the engines timed in
alternating blocks of calls so that both meet the same machine load; ``ort/kiln`` above 1
means kiln is faster. ``compile s`` is kiln's import + compile (+ artifact write and load)
and onnxruntime's session creation. ``max err`` is kiln's largest absolute difference from
onnxruntime.

Both engines live in one process. onnxruntime runs with its default settings: its workers
spin-wait after each call, which on a 2-core machine took the cores from kiln's thread pool
when calls alternated one by one (both engines' latencies swung by 2x); ``timing.py`` times
whole blocks of calls and sleeps between blocks until the spinning stops.
``--ort-no-spinning`` turns the spinning off (slower for small models: the MLP 0.13 ms instead
of 0.05 ms).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # the twins live beside the tests

from timing import paired_medians  # noqa: E402

MODELS = ("mlp", "lenet", "resnet_block", "lstm", "gru", "encoder_layer", "bert", "gpt",
          "resnet50")


def set_threads(n: int) -> None:
    """Before any engine loads: every thread pool gets ``n`` threads."""
    for var in ("TVM_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def twins() -> dict[str, Callable[..., Any]]:
    """Name -> a PyTorch module factory taking the size's keyword arguments."""
    from torch import nn

    from tests.examples_util import torch_port
    from tests.onnx.torch_twins import GPT, Bert, EncoderLayer, LeNet, Recurrent, ResBlock

    def mlp(widths: tuple[int, ...]):
        layers: list = []
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers[:-1], nn.Softmax(-1))

    return {"mlp": mlp, "lenet": LeNet, "resnet_block": ResBlock,
            "lstm": lambda **kw: Recurrent("LSTM", **kw),
            "gru": lambda **kw: Recurrent("GRU", **kw), "encoder_layer": EncoderLayer,
            "bert": Bert, "gpt": GPT, "resnet50": lambda: torch_port("resnet").resnet50()}


def _f32(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _ids(batch: int, n: int, vocab: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, vocab, (batch, n)).astype(np.int64)


# name -> size -> (factory keyword arguments, inputs); tiny = tests/onnx/test_models.py's size
SIZES: dict[str, dict[str, tuple[dict, Callable[[], dict[str, np.ndarray]]]]] = {
    "mlp": {"tiny": ({"widths": (8, 16, 4)}, lambda: {"x": _f32(1, 8)}),
            "modest": ({"widths": (784, 512, 512, 10)}, lambda: {"x": _f32(8, 784)})},
    "lenet": {"tiny": ({}, lambda: {"x": _f32(1, 1, 32, 32)}),
              "modest": ({}, lambda: {"x": _f32(16, 1, 32, 32)})},
    "resnet_block": {"tiny": ({"c": 8}, lambda: {"x": _f32(1, 8, 8, 8)}),
                     "modest": ({"c": 64}, lambda: {"x": _f32(1, 64, 56, 56)})},
    "lstm": {"tiny": ({"d_in": 6, "hidden": 5}, lambda: {"x": _f32(5, 1, 6)}),
             "modest": ({"d_in": 64, "hidden": 128}, lambda: {"x": _f32(32, 4, 64)})},
    "gru": {"tiny": ({"d_in": 6, "hidden": 5}, lambda: {"x": _f32(5, 1, 6)}),
            "modest": ({"d_in": 64, "hidden": 128}, lambda: {"x": _f32(32, 4, 64)})},
    "encoder_layer": {"tiny": ({"d": 16, "heads": 4}, lambda: {"x": _f32(1, 5, 16)}),
                      "modest": ({"d": 256, "heads": 4}, lambda: {"x": _f32(1, 64, 256)})},
    "bert": {"tiny": ({"vocab": 50, "max_len": 16, "d": 16, "heads": 2},
                      lambda: {"ids": _ids(1, 7, 50),
                               "padding_mask": np.arange(7)[None, :] >= 5}),
             "modest": ({"vocab": 1000, "max_len": 128, "d": 256, "heads": 4},
                        lambda: {"ids": _ids(1, 64, 1000),
                                 "padding_mask": np.arange(64)[None, :] >= 48})},
    "gpt": {"tiny": ({"vocab": 50, "max_len": 16, "d": 16, "heads": 2},
                     lambda: {"ids": _ids(1, 7, 50)}),
            "modest": ({"vocab": 1000, "max_len": 128, "d": 256, "heads": 4},
                       lambda: {"ids": _ids(1, 64, 1000)})},
    "resnet50": {"modest": ({}, lambda: {"x": _f32(1, 3, 224, 224)})},
}


def export(model, inputs: dict[str, np.ndarray]) -> bytes:
    """``model`` exported by PyTorch's TorchScript-based exporter, opset 17."""
    import torch

    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), tuple(torch.from_numpy(a) for a in inputs.values()), f,
                          input_names=list(inputs), opset_version=17, dynamo=False)
    return f.getvalue()


def bench_one(name: str, size: str, args) -> dict[str, Any]:
    """Export, compile and time one model at one size; a failure is returned, not raised."""
    import onnxruntime as ort
    import torch

    import kiln

    kwargs, make_inputs = SIZES[name][size]
    torch.manual_seed(0)
    inputs = make_inputs()
    data = export(twins()[name](**kwargs), inputs)  # (no no_grad: it takes torch's fast path)
    row: dict[str, Any] = {"model": name, "size": size, "onnx_nodes": _node_count(data)}
    try:
        t0 = time.perf_counter()
        graph = kiln.from_onnx(data)
        compiled = kiln.compile(graph, opt_level=args.opt_level)
        row["kiln_compile_s"] = time.perf_counter() - t0
        row["kernels"] = len(compiled.build.kernels)
    except Exception as e:  # report exactly why, and go on with the other models
        row["error"] = f"{type(e).__name__}: {e}"
        return row
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
    if args.ort_no_spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    t0 = time.perf_counter()
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    row["ort_compile_s"] = time.perf_counter() - t0
    want, got = sess.run(None, inputs), compiled.run(inputs)
    row["max_err"] = max(float(np.abs(g.astype(np.float64) - w).max()) for g, w in
                         zip(got, want))
    row["kiln_s"], row["ort_s"] = paired_medians(
        [lambda: compiled.run(inputs), lambda: sess.run(None, inputs)], args.repeat)
    return row


def _node_count(data: bytes) -> int:
    import onnx

    return len(onnx.load_from_string(data).graph.node)


def print_rows(rows: list[dict[str, Any]], threads: int) -> None:
    print(f"\n== imported ONNX models: median latency, {threads} thread(s); "
          "ort/kiln > 1 means kiln is faster")
    print(f"{'model':<15}{'size':<8}{'nodes':>6}{'kernels':>8}{'kiln compile s':>15}"
          f"{'ort session s':>14}{'kiln ms':>10}{'ort ms':>10}{'ort/kiln':>9}{'max err':>10}")
    for r in rows:
        head = f"{r['model']:<15}{r['size']:<8}{r['onnx_nodes']:>6}"
        if "error" in r:
            print(f"{head}  FAILED: {r['error'][:300]}")
            continue
        print(f"{head}{r['kernels']:>8}{r['kiln_compile_s']:>15.2f}{r['ort_compile_s']:>14.3f}"
              f"{r['kiln_s'] * 1e3:>10.3f}{r['ort_s'] * 1e3:>10.3f}"
              f"{r['ort_s'] / r['kiln_s']:>9.2f}{r['max_err']:>10.1e}")
    ok = [r for r in rows if "error" not in r]
    if ok:
        geo = float(np.exp(np.mean([np.log(r["ort_s"] / r["kiln_s"]) for r in ok])))
        print(f"geometric mean ort/kiln over {len(ok)} runs: {geo:.2f}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--sizes", default="tiny,modest")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--opt-level", type=int, default=2, choices=(0, 1, 2, 3),
                   help="kiln's; 3 adds layout tuning (timed conv blocks, cached)")
    p.add_argument("--repeat", type=int, default=50, help="timed runs per engine (at most)")
    p.add_argument("--ort-no-spinning", action="store_true",
                   help="stop onnxruntime's workers spin-waiting after each call")
    args = p.parse_args(argv)
    set_threads(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models.split(","):
        if name not in SIZES:
            p.error(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
        for size in args.sizes.split(","):
            if size in SIZES[name]:
                rows.append(bench_one(name, size, args))
                r = rows[-1]
                print(f"{name} {size}: " + ("FAILED" if "error" in r else
                      f"{r['kiln_s'] * 1e3:.3f} ms vs ort {r['ort_s'] * 1e3:.3f} ms"),
                      file=sys.stderr, flush=True)
    print_rows(rows, args.threads)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
