"""One artifact at every size: kiln compiled with symbolic sizes against a static kiln build
of each size and onnxruntime, on real architectures (random weights from their configs).

    python benchmarks/dynamic.py --model bert --batches 1,3,8 --seqs 7,64,128,384
    python benchmarks/dynamic.py --model gpt2 --batches 1 --seqs 1,16,64,256 \
        --specialize batch=1,seq=1
    python benchmarks/dynamic.py --model resnet50 --batches 1,4,16

Each model is exported to ONNX once with symbolic axes (batch and sequence, or batch for a
CNN; cached in ~/.cache/kiln/bench-models), imported by kiln without fixing them and
compiled once (``--input seq=1..MAX``-style bounds from the sizes asked for). Per size: a
static kiln build of that size (the same opt level; O3's conv layouts from the heuristic
for both, ``layout_budget=0``), the symbolic artifact, and onnxruntime on the same ONNX
file (default settings, ``--threads`` intra-op threads), timed in alternating blocks in one
process (``timing.paired_medians``). Prints per size: the three medians, dynamic/static
(the cost of symbolic extents; the issue asks for at most 1.15) and ort/dynamic (above 1:
kiln faster), and the largest difference of the symbolic artifact's outputs from
onnxruntime's. Needs the ``bench`` extra (transformers).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (this folder leaves the path once timing.py is imported: its kernels.py would shadow the
# `kernels` package that transformers imports)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE))
from timing import paired_medians  # noqa: E402

sys.path.remove(str(HERE))

CACHE = Path(os.environ.get("KILN_BENCH_CACHE", Path.home() / ".cache" / "kiln" /
                            "bench-models"))
CACHE_VERSION = 1


def _hf_text(cls: str, config: str, vocab: int, mask: bool, **kw):
    import torch
    import transformers

    inner = getattr(transformers, cls)(getattr(transformers, config)(**kw)).eval()

    class Text(torch.nn.Module):  # keyword arguments: positions differ between models
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask=None):
            if mask:
                return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                                  return_dict=False)[0]
            return self.inner(input_ids=input_ids, return_dict=False)[0]

    def inputs(batch: int, seq: int) -> dict:
        import numpy as np

        rng = np.random.default_rng(seq)
        out = {"input_ids": rng.integers(0, vocab, (batch, seq)).astype(np.int64)}
        if mask:
            m = np.ones((batch, seq), np.int64)
            m[:, seq - seq // 8:] = 0  # the last seq/8 positions are padding
            out["attention_mask"] = m
        return out

    axes = {"input_ids": {0: "batch", 1: "seq"}}
    if mask:
        axes["attention_mask"] = {0: "batch", 1: "seq"}
    return Text().eval(), inputs, axes


def _resnet50():
    import torch
    import transformers

    inner = transformers.ResNetForImageClassification(transformers.ResNetConfig()).eval()

    class Vision(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values):
            return self.inner(pixel_values=pixel_values, return_dict=False)[0]

    def inputs(batch: int, seq: int) -> dict:
        import numpy as np

        rng = np.random.default_rng(batch)
        return {"pixel_values": rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)}

    return Vision().eval(), inputs, {"pixel_values": {0: "batch"}}


MODELS = {
    "bert": (lambda: _hf_text("BertModel", "BertConfig", 30522, True), 2, True),
    "gpt2": (lambda: _hf_text("GPT2Model", "GPT2Config", 50257, True, use_cache=False), 2,
             True),
    "resnet50": (_resnet50, 3, False),
}


def export(name: str, model, inputs, axes) -> Path:
    import torch

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{name}-dynamic-v{CACHE_VERSION}-torch{torch.__version__}.onnx"
    if path.exists():
        return path
    example = inputs(2, 16)
    tmp = path.with_suffix(".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(torch.from_numpy(a) for a in example.values()),
                          str(tmp), input_names=list(example), output_names=["out"],
                          dynamic_axes={**axes, "out": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    os.replace(tmp, path)
    return path


def _call(fn, *args):
    return lambda: fn(*args)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="bert")
    ap.add_argument("--batches", default="1,3,8")
    ap.add_argument("--seqs", default="7,64,128,384", help="sequence lengths (text models)")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--specialize", default="", metavar="NAME=SIZE[,NAME=SIZE]",
                    help="also build the artifact specialized for these sizes together "
                         "(batch=1,seq=1: a decoder's one-token step)")
    args = ap.parse_args()

    import numpy as np
    import onnxruntime as ort

    import kiln

    make, level, text = MODELS[args.model]
    model, inputs, axes = make()
    path = export(args.model, model, inputs, axes)
    batches = [int(b) for b in args.batches.split(",")]
    seqs = [int(s) for s in args.seqs.split(",")] if text else [0]
    bounds = {"batch": (1, max(batches))}
    if text:
        bounds["seq"] = (1, max(seqs))
    t0 = time.perf_counter()
    graph = kiln.from_onnx(str(path))
    specialize = None
    if args.specialize:  # NAME=SIZE[,NAME=SIZE]: one specialization, its sizes together
        specialize = [{n: int(v) for n, _, v in (p.partition("=")
                                                for p in args.specialize.split(","))}]
    dynamic = kiln.compile(graph, opt_level=level, layout_budget=0, bounds=bounds,
                           specialize=specialize)
    print(f"{args.model}: inputs {', '.join(f'{v.name}: {v.type}' for v in graph.inputs)}; "
          f"one artifact (O{level}) compiled in {time.perf_counter() - t0:.0f} s, bounds "
          f"{bounds}{f', specialized for {specialize}' if specialize else ''}; "
          f"{args.threads} threads", flush=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    print(f"{'batch':>5} {'seq':>5} {'dynamic ms':>11} {'static ms':>10} {'ort ms':>8} "
          f"{'dyn/static':>10} {'ort/dyn':>8} {'max |dyn-ort|':>14}", flush=True)
    for batch in batches:
        for seq in seqs:
            feeds = inputs(batch, seq)
            sizes = {"batch": batch, **({"seq": seq} if text else {})}
            static = kiln.compile(kiln.from_onnx(str(path), input_shapes=sizes),
                                  opt_level=level, layout_budget=0)
            want = session.run(None, feeds)[0]
            got = dynamic.run(feeds)[0]
            err = float(np.abs(got - want).max())
            dyn_s, static_s, ort_s = paired_medians(
                [_call(dynamic.run, feeds), _call(static.run, feeds),
                 _call(session.run, None, feeds)], args.repeat)
            print(f"{batch:>5} {seq if text else '-':>5} {dyn_s * 1e3:>11.2f} "
                  f"{static_s * 1e3:>10.2f} {ort_s * 1e3:>8.2f} {dyn_s / static_s:>10.2f} "
                  f"{ort_s / dyn_s:>8.2f} {err:>14.2e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
