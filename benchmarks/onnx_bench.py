"""Imported models: kiln (``kiln.from_onnx`` + ``kiln.compile``, O2 or ``--opt-level``) vs
onnxruntime on the same ``.onnx`` files, same threads, latency side by side.

    python benchmarks/onnx_bench.py                         # every model, both sizes, 2 threads
    python benchmarks/onnx_bench.py --models gpt,bert --sizes tiny --threads 1 --repeat 100

The models are the PyTorch twins of kiln's examples that tests/onnx/test_models.py checks
(MLP, LeNet, a ResNet block, LSTM, GRU, a Transformer encoder layer, BERT- and GPT-style
stacks) plus ResNet-50 (examples/resnet.py built with torch.nn), exported by PyTorch's
TorchScript exporter (``torch.onnx.export(..., dynamo=False)``, opset 17). ``tiny`` is the
test's size at batch 1; ``modest`` is a wider model (and for the small CNNs a batch). Latency
is the median wall time of one ``run`` call from Python (kiln's ``CompiledModel.run``,
onnxruntime's ``InferenceSession.run``), the engines timed in alternating blocks of calls so
that both meet the same machine load; ``ort/kiln`` above 1 means kiln is faster. ``compile
s`` is kiln's import + compile (+ artifact write and load) and onnxruntime's session
creation. ``max err`` is kiln's largest absolute difference from onnxruntime.

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
sys.path.insert(0, str(ROOT / "benchmarks"))

from timing import paired_medians  # noqa: E402

MODELS = ("mlp", "lenet", "resnet_block", "lstm", "gru", "encoder_layer", "bert", "gpt",
          "resnet50")


def set_threads(n: int) -> None:
    """Before any engine loads: every thread pool gets ``n`` threads."""
    for var in ("TVM_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def twins() -> dict[str, Callable[..., Any]]:
    """Name -> a PyTorch module factory taking the size's keyword arguments."""
    import torch
    from torch import nn

    class LeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
            self.f1, self.f2, self.f3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

        def forward(self, x):
            x = nn.functional.max_pool2d(torch.relu(self.c1(x)), 2)
            x = nn.functional.avg_pool2d(torch.relu(self.c2(x)), 2)
            return self.f3(torch.relu(self.f2(torch.relu(self.f1(torch.flatten(x, 1))))))

    class ResBlock(nn.Module):
        def __init__(self, c: int):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
            self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
            self.down = nn.Sequential(nn.Conv2d(c, 2 * c, 1, stride=2, bias=False),
                                      nn.BatchNorm2d(2 * c))
            self.conv3 = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)

        def forward(self, x):
            y = torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + x)
            return torch.relu(self.conv3(y) + self.down(y)).mean((2, 3))

    class Recurrent(nn.Module):
        def __init__(self, cell: str, d_in: int, hidden: int):
            super().__init__()
            self.rnn = getattr(nn, cell)(d_in, hidden, num_layers=2, bidirectional=True)
            self.fc = nn.Linear(2 * hidden, 3)

        def forward(self, x):
            return self.fc(self.rnn(x)[0][-1])

    class EncoderLayer(nn.Module):
        def __init__(self, d: int, heads: int):
            super().__init__()
            self.layer = nn.TransformerEncoderLayer(d, heads, 2 * d, batch_first=True)

        def forward(self, x):
            return self.layer(x, is_causal=False)

    class Embeddings(nn.Module):
        def __init__(self, vocab: int, max_len: int, d: int):
            super().__init__()
            self.tokens, self.positions = nn.Embedding(vocab, d), nn.Embedding(max_len, d)

        def forward(self, ids):
            return self.tokens(ids) + self.positions(torch.arange(ids.shape[-1]))

    class Bert(nn.Module):
        def __init__(self, vocab: int, max_len: int, d: int, heads: int, layers: int = 2):
            super().__init__()
            self.embeddings = Embeddings(vocab, max_len, d)
            self.norm = nn.LayerNorm(d, eps=1e-12)
            layer = nn.TransformerEncoderLayer(d, heads, 2 * d, 0.1, "gelu", 1e-12,
                                               batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.pooler = nn.Linear(d, d)

        def forward(self, ids, padding_mask):
            x = self.encoder(self.norm(self.embeddings(ids)), src_key_padding_mask=padding_mask)
            return x, torch.tanh(self.pooler(x[:, 0]))

    class GPT(nn.Module):
        def __init__(self, vocab: int, max_len: int, d: int, heads: int, layers: int = 2):
            super().__init__()
            self.embeddings = Embeddings(vocab, max_len, d)
            block = nn.TransformerEncoderLayer(d, heads, 4 * d, 0.1,
                                               nn.GELU(approximate="tanh"), batch_first=True,
                                               norm_first=True)
            self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(d)

        def forward(self, ids):
            n = ids.shape[-1]
            mask = torch.triu(torch.full((n, n), float("-inf")), 1)
            x = self.norm(self.blocks(self.embeddings(ids), mask=mask))
            return nn.functional.linear(x, self.embeddings.tokens.weight)

    def mlp(widths: tuple[int, ...]):
        layers: list = []
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers[:-1], nn.Softmax(-1))

    def resnet50():
        source = (ROOT / "examples" / "resnet.py").read_text()
        namespace: dict = {"__name__": "torch_resnet"}
        exec(compile(source.replace("from kiln import nn", "from torch import nn"),
                     "resnet.py", "exec"), namespace)
        return namespace["resnet50"]()

    return {"mlp": mlp, "lenet": LeNet, "resnet_block": ResBlock,
            "lstm": lambda **kw: Recurrent("LSTM", **kw),
            "gru": lambda **kw: Recurrent("GRU", **kw), "encoder_layer": EncoderLayer,
            "bert": Bert, "gpt": GPT, "resnet50": resnet50}


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
