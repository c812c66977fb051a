"""kiln's CUDA artifacts on a real GPU: correctness of every op and example, and a benchmark.

Two halves, because the GPU machine has no TVM and no network, and at most 64 MiB travels:

    python benchmarks/gpu_check.py prepare gpu_check_out       # here: compile, strip
    bash benchmarks/gpu_check.sh gpu_check_out                 # on the GPU machine

``prepare`` compiles, for CUDA (sm_80 + sm_90): the graph of every op's case and each example
model (with their inputs and the interpreter's outputs), and the benchmark models (BERT-base
layer at sequence 128, ResNet-50 at 224x224, a GPT-2-sized decoder, 12 layers of 768, at
sequence 128; batch 1 and 32). It keeps one copy of the TVM runtime libraries, drops the
benchmark models' weights (the device draws random ones of the same shapes: timing does not
depend on the values), and downloads the apache-tvm-ffi wheel for the device's Python 3.12.

``run`` (what gpu_check.sh calls on the device) restores each artifact, loads it with kiln's
runtime, compares the check artifacts with the interpreter's outputs, and times the
benchmark models against PyTorch eager and ``torch.compile`` on the same GPU, inputs and
outputs on the device, alternating engines. It prints one table and writes results.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LIBS = ("libtvm_runtime.so", "libtvm_runtime_cuda.so")
TVM_FFI = "apache-tvm-ffi==0.1.14.post1"
RTOL, ATOL = 1e-3, 1e-3  # GPU sums in another order; fast exp/erf/tanh
BENCH = {  # name: (builder, input specs, batches)
    "bert_layer": ("bert_layer", {"src": ((128, 768), "float32")}, (1, 32)),
    "resnet50": ("resnet50", {"x": ((3, 224, 224), "float32")}, (1, 32)),
    "gpt2": ("gpt2", {"ids": ((128,), "int64")}, (1, 32)),
}


def kiln_model(name: str):
    from tests.examples_util import example

    if name == "bert_layer":
        return example("transformer").bert_base_layer()
    if name == "resnet50":
        return example("resnet").resnet50()
    return example("transformer").GPT(50257, 1024, 768, 12, 12)


def torch_model(name: str):
    import torch
    from torch import nn

    if name == "bert_layer":
        return nn.TransformerEncoderLayer(768, 12, 3072, 0.0, "gelu", 1e-12, batch_first=True)
    if name == "resnet50":
        from tests.examples_util import torch_port

        return torch_port("resnet").resnet50()

    class GPT2(nn.Module):  # the same architecture as examples/transformer.py's GPT
        def __init__(self):
            super().__init__()
            self.tokens, self.positions = nn.Embedding(50257, 768), nn.Embedding(1024, 768)
            block = nn.TransformerEncoderLayer(768, 12, 3072, 0.0, nn.GELU("tanh"),
                                               batch_first=True, norm_first=True)
            self.blocks = nn.TransformerEncoder(block, 12, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(768)

        def forward(self, ids):
            n = ids.shape[-1]
            x = self.tokens(ids) + self.positions(torch.arange(n, device=ids.device))
            mask = nn.Transformer.generate_square_subsequent_mask(n, device=ids.device)
            x = self.norm(self.blocks(x, mask=mask, is_causal=True))
            return x @ self.tokens.weight.T

    return GPT2()


def prepare(out: Path) -> None:
    import kiln
    from kiln.ir import interpret
    from tests.codegen.cases import case_graph
    from tests.codegen.test_cuda import every_op_cases
    from tests.codegen.test_examples_compiled import CASES, _trace

    out.mkdir(parents=True, exist_ok=True)
    arts, plan = out / "artifacts", {"checks": [], "bench": []}
    arts.mkdir(exist_ok=True)
    graphs = {}
    graph, feeds, _ = case_graph(every_op_cases())
    graphs["ops"] = (graph, feeds)
    for name in sorted(CASES):
        graphs[name] = _trace(name)
    for name, (graph, feeds) in graphs.items():
        t = time.perf_counter()
        kiln.compile(graph, target="cuda").save(arts / f"{name}.kiln")
        expected = interpret(graph, feeds)
        np.savez(arts / f"{name}.io.npz", **{f"in_{k}": v for k, v in feeds.items()},
                 **{f"out_{i}": v for i, v in enumerate(expected)})
        plan["checks"].append(name)
        print(f"check {name}: compiled in {time.perf_counter() - t:.1f} s", flush=True)
    for name, (builder, specs, batches) in BENCH.items():
        model = kiln_model(builder)
        for n in batches:
            tensor_specs = {k: kiln.TensorSpec((n, *shape), dt) for k, (shape, dt) in
                            specs.items()}
            t = time.perf_counter()
            graph = kiln.trace(model, name=f"{name}_b{n}", **tensor_specs)
            art = kiln.compile(graph, target="cuda").save(arts / f"{name}@{n}.kiln")
            (art / "weights.npz").unlink()  # the device draws its own
            plan["bench"].append({"name": name, "batch": n, "artifact": art.name})
            print(f"bench {name}@{n}: compiled in {time.perf_counter() - t:.1f} s", flush=True)
    libs = out / "libs"
    libs.mkdir(exist_ok=True)
    for art in arts.glob("*.kiln"):
        for lib in LIBS:
            if not (libs / lib).exists():
                shutil.copyfile(art / lib, libs / lib)
            (art / lib).unlink()
    (out / "plan.json").write_text(json.dumps(plan, indent=1))
    subprocess.run([sys.executable, "-m", "pip", "download", TVM_FFI, "--python-version", "3.12",
                    "--only-binary=:all:", "--no-deps", "-q", "-d", str(out / "wheels")],
                   check=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out}: {size / 2**20:.1f} MiB")


def restore(art: Path, libs: Path, random_weights: bool) -> None:
    """Put the shared libraries back; draw weights of the manifest's shapes and reseal."""
    from kiln.runtime import format as fmt
    from kiln.runtime.writer import _write_npz

    for lib in LIBS:
        if not (art / lib).exists():
            shutil.copyfile(libs / lib, art / lib)
    if not random_weights or (art / fmt.WEIGHTS).exists():
        return
    manifest = json.loads((art / fmt.MANIFEST).read_text())
    rng = np.random.default_rng(0)
    weights = {}
    for name in manifest["constants"]:
        info = manifest["values"][name]
        shape, dtype = tuple(info["shape"]), np.dtype(info["dtype"])
        weights[name] = (rng.standard_normal(shape) * 0.02).astype(dtype) \
            if dtype.kind == "f" else np.zeros(shape, dtype)
    _write_npz(art / fmt.WEIGHTS, weights)
    manifest["files"][fmt.WEIGHTS] = hashlib.sha256((art / fmt.WEIGHTS).read_bytes()).hexdigest()
    raw = (json.dumps(manifest, indent=1) + "\n").encode()
    (art / fmt.MANIFEST).write_bytes(raw)
    (art / fmt.MANIFEST_DIGEST).write_text(fmt.digest_text(raw))


def run(out: Path, deadline_s: float) -> int:
    import kiln.runtime

    start = time.perf_counter()
    plan = json.loads((out / "plan.json").read_text())
    arts, libs, results, failures = out / "artifacts", out / "libs", {}, 0
    print("== correctness: compiled for CUDA vs the interpreter ==", flush=True)
    for name in plan["checks"]:
        art = arts / f"{name}.kiln"
        restore(art, libs, random_weights=False)
        io = np.load(arts / f"{name}.io.npz")
        model = kiln.runtime.load(art)
        got = model.run({k[3:]: io[k] for k in io.files if k.startswith("in_")})
        bad = []
        for i, g in enumerate(got):
            w = io[f"out_{i}"]
            ok = g.shape == w.shape and (np.allclose(g, w, RTOL, ATOL, equal_nan=True)
                                         if w.dtype.kind == "f" else np.array_equal(g, w))
            if not ok:
                bad.append(i)
        failures += bool(bad)
        results[name] = {"outputs": len(got), "mismatched": bad}
        print(f"{name:14s} {len(got) - len(bad)}/{len(got)} outputs match"
              + (f"; mismatched outputs {bad}" if bad else ""), flush=True)
    print("== benchmark: ms per run, inputs and outputs on the GPU ==", flush=True)
    print(f"{'model':14s} {'kiln':>9s} {'eager':>9s} {'compile':>9s} {'eager/kiln':>10s} "
          f"{'compile/kiln':>12s}", flush=True)
    for entry in plan["bench"]:
        row = bench(arts / entry["artifact"], libs, entry, start, deadline_s)
        results[entry["artifact"]] = row
        print(f"{entry['name'] + '@' + str(entry['batch']):14s} {row['kiln_ms']:9.2f} "
              f"{row['eager_ms']:9.2f} {row.get('compile_ms', float('nan')):9.2f} "
              f"{row['eager_ms'] / row['kiln_ms']:10.2f} "
              f"{row.get('compile_ms', float('nan')) / row['kiln_ms']:12.2f}", flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"done in {time.perf_counter() - start:.0f} s; {failures} check(s) failed")
    return 1 if failures else 0


def bench(art: Path, libs: Path, entry: dict, start: float, deadline_s: float) -> dict:
    import torch

    import kiln.runtime
    from benchmarks.timing import paired_medians

    restore(art, libs, random_weights=True)
    model = kiln.runtime.load(art)
    gen = torch.Generator(device="cuda").manual_seed(0)
    inputs = {}
    for info in model.inputs:
        if info.dtype == "int64":
            inputs[info.name] = torch.randint(0, 1000, info.shape, device="cuda", generator=gen)
        else:
            inputs[info.name] = torch.randn(info.shape, device="cuda", generator=gen)
    ref = torch_model(entry["name"]).cuda().eval()
    args = list(inputs.values())

    def sync(fn):
        def timed():
            fn()
            torch.cuda.synchronize()
        return timed

    with torch.no_grad():
        fns = [sync(lambda: model.run_on_device(inputs)), sync(lambda: ref(*args))]
        compiled = None
        if time.perf_counter() - start < deadline_s:
            compiled = torch.compile(ref)
            compiled(*args)  # compiles here, outside the timing
            fns.append(sync(lambda: compiled(*args)))
        times = paired_medians(fns, repeat=30, budget_s=2.0)
    row = {"kiln_ms": times[0] * 1e3, "eager_ms": times[1] * 1e3}
    if compiled is not None:
        row["compile_ms"] = times[2] * 1e3
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=("prepare", "run"))
    p.add_argument("out", type=Path)
    p.add_argument("--deadline", type=float, default=360.0, metavar="SECONDS",
                   help="run: after this long, skip the remaining torch.compile timings")
    args = p.parse_args()
    if args.step == "prepare":
        prepare(args.out)
        return 0
    return run(args.out, args.deadline)


if __name__ == "__main__":
    sys.exit(main())
