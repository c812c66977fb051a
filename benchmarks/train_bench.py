"""One training step, side by side: kiln's compiled backend vs PyTorch eager on the CPU, same
weights, same batch, same threads.

    python benchmarks/train_bench.py                     # mlp and bert at 2 threads
    python benchmarks/train_bench.py --models mlp --optimizer adam --threads 1 --repeat 50

A step is forward, loss, backward and the optimizer's update:

- ``mlp``: examples/mlp.py's MLP 784-512-512-10, batch 128, softmax cross-entropy on class
  indices;
- ``bert``: examples/transformer.py's BERT-base encoder layer (hidden 768, 12 heads, FFN 3072,
  eval mode: no dropout), batch 8 x sequence 128, MSE against a random target.

kiln: ``Trainer(..., backend="compiled")`` (the step graph compiled once at O2, the parameters
and optimizer state in the runtime's buffers); "compile s" is the Trainer's construction (step
graph + codegen + load). PyTorch: the same model written with ``torch.nn`` (bench.py's twin),
``zero_grad``, forward, ``backward``, ``torch.optim`` step. Times are the median over
``--repeat`` steps after ``--warmup`` steps (and the best); ratio = PyTorch / kiln medians
(above 1: kiln is faster).
The first step's losses are printed to show that both compute the same thing. ``--profile``
lists kiln's slowest kernels.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench import set_threads, torch_twin  # noqa: E402


def step_times(fn, repeat: int, warmup: int) -> tuple[float, float]:
    """(median, best) seconds of ``fn()`` over ``repeat`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2], times[0]


def setups(names: list[str]):
    """(name, kiln module, example file, factory, input name, x, y, loss)"""
    import numpy as np

    sys.path.insert(0, str(ROOT / "examples"))
    import mlp
    import transformer

    from kiln import nn

    rng = np.random.default_rng(0)
    nn.manual_seed(0)
    for name in names:
        if name == "mlp":
            yield (name, mlp.MLP((784, 512, 512, 10)), "mlp.py", "MLP", "x",
                   rng.standard_normal((128, 784)).astype(np.float32),
                   rng.integers(0, 10, 128), "cross_entropy")
        elif name == "bert":
            yield (name, transformer.bert_base_layer().eval(), "transformer.py",
                   "bert_base_layer", "src",
                   rng.standard_normal((8, 128, 768)).astype(np.float32),
                   rng.standard_normal((8, 128, 768)).astype(np.float32), "mse")
        else:
            raise SystemExit(f"unknown model {name!r}: use mlp, bert")


def optimizers(kind: str, lr: float):
    """(kiln optimizer, torch.optim factory) with the same settings."""
    import torch

    from kiln.passes.optim import SGD, Adam

    if kind == "sgd":
        return SGD(lr=lr, momentum=0.9), lambda ps: torch.optim.SGD(ps, lr=lr, momentum=0.9)
    return Adam(lr=lr), lambda ps: torch.optim.Adam(ps, lr=lr)


def run(name, module, example, factory, x_name, x, y, loss, args) -> None:
    import numpy as np
    import torch
    import torch.nn.functional as F

    import kiln
    from kiln.train import Trainer

    ours, theirs = optimizers(args.optimizer, args.lr)
    state = {k: np.array(v) for k, v in module.state_dict().items()}
    t0 = time.perf_counter()
    trainer = Trainer(module, loss, ours, inputs={x_name: kiln.TensorSpec(x.shape)},
                      backend="compiled")
    compile_s = time.perf_counter() - t0
    kernels = len(trainer.runner.model.manifest["kernels"])
    first_kiln = trainer.step(y, **{x_name: x})
    kiln_s, kiln_best = step_times(lambda: trainer.step(y, **{x_name: x}), args.repeat,
                                   args.warmup)

    torch.set_num_threads(args.threads)
    twin = torch_twin(example, factory, state)
    opt = theirs(list(twin.parameters()))
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    loss_fn = F.cross_entropy if loss == "cross_entropy" else F.mse_loss

    def torch_step() -> float:
        opt.zero_grad(set_to_none=True)
        out = twin(tx)
        value = loss_fn(out, ty)
        value.backward()
        opt.step()
        return value.item()

    first_torch = torch_step()
    torch_s, torch_best = step_times(torch_step, args.repeat, args.warmup)

    params = sum(v.size for v in state.values())
    print(f"\n== {name}: one training step ({loss}, {trainer.graph.name}), {params:,} "
          f"parameters, {args.optimizer} lr {args.lr:g}, {args.threads} thread(s), median of "
          f"{args.repeat} after {args.warmup} warm-up")
    print(f"{'engine':<22}{'compile s':>10}{'step ms':>10}{'best ms':>10}{'ratio':>8}"
          f"{'first loss':>13}{'kernels':>9}")
    print(f"{'kiln compiled (O2)':<22}{compile_s:>10.1f}{kiln_s * 1e3:>10.2f}"
          f"{kiln_best * 1e3:>10.2f}{1.0:>8.2f}{first_kiln:>13.6g}{kernels:>9}")
    print(f"{'pytorch eager':<22}{'-':>10}{torch_s * 1e3:>10.2f}{torch_best * 1e3:>10.2f}"
          f"{torch_s / kiln_s:>8.2f}{first_torch:>13.6g}{'-':>9}")
    if args.profile:
        profile(trainer, x_name, x, y, args.profile)
    sys.stdout.flush()


def profile(trainer, x_name: str, x, y, top: int) -> None:
    """kiln's ``top`` slowest kernels of one step (state read once from the runtime)."""
    model = trainer.runner.model
    feeds = {x_name: x, trainer.target_name: y, **trainer.state}
    records = sorted(model.profile(feeds, repeat=3), key=lambda r: -r.seconds)
    total = sum(r.seconds for r in records)
    print(f"  kiln kernels: {len(records)}, sum {total * 1e3:.1f} ms; slowest {top}:")
    for r in records[:top]:
        rate = f"{r.gflops:7.1f} GFLOP/s" if r.gflops else " " * 15
        origin = r.sources[0] if r.sources else ""
        print(f"  {r.seconds * 1e3:8.2f} ms {rate}  {r.func:<36.36} {origin[:60]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mlp,bert")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                   help="sgd: momentum 0.9 (default); adam: default betas")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also list kiln's N slowest kernels")
    args = p.parse_args(argv)
    set_threads(args.threads)  # before TVM's or torch's thread pool starts
    for spec in setups(args.models.split(",")):
        run(*spec, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
