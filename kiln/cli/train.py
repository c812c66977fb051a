"""``kiln train``: train a model on a data set from the command line.

    kiln train examples/training/digits_mlp.py:make_model --data digits --epochs 10
    kiln train net.py:Net --data data.npz --loss mse --optimizer sgd --lr 0.05 --momentum 0.9 \\
        --save-weights net.npz

The model is named as for ``kiln show`` (``FILE.py:NAME``: a Module class, a factory, or a
function of one input). ``--data`` is a built-in data set or an ``.npz`` file:

- ``digits``: scikit-learn's 1797 handwritten digits, pixels scaled to [0, 1], labels 0-9,
  split by a seeded permutation into 1437 training and 360 test images (the split of
  ``examples/training/digits_mlp.py``). The images go in as ``[N, 64]`` if the model accepts
  that, else as ``[N, 1, 8, 8]`` (a model that starts with a Linear layer gets the first, one
  that starts with a Conv2d the second).
- ``FILE.npz``: arrays ``x_train``, ``y_train`` and optionally ``x_test``, ``y_test`` (read with
  ``allow_pickle=False``). Float ``x`` becomes float32, integer ``x`` int64. For
  ``cross_entropy``, ``y`` holds integer class indices ``[N]`` (or class probabilities shaped
  like the logits); for ``mse``/``bce``, ``y`` is shaped like the model's output (``[N]`` is
  taken as ``[N, 1]`` for a model with one output column).

Training shuffles the training set each epoch (``--seed`` fixes the shuffle and the model's
initial parameters) and drops the last incomplete batch: the step graph has a fixed batch size.
A progress bar goes to stderr; the test accuracy (classification) or test loss (``mse``) goes to
stdout, measured on the training set when the data has no test split. ``--save-weights`` writes
the trained state dict (parameter names as in ``model.state_dict()``) as ``.npz``, loadable with
``model.load_state_dict(dict(np.load(path)))``. ``--backend compiled`` compiles the step graph
once with kiln's codegen and keeps the parameters and optimizer state in the runtime's buffers
(the evaluation afterwards is interpreted).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import sys
import time
from typing import Any, TextIO

import numpy as np

from kiln.cli.common import instantiate, load_model
from kiln.errors import CLIError, KilnError

LOSSES = ("cross_entropy", "mse", "bce", "bce_with_logits")
OPTIMIZERS = {"sgd": 0.1, "adam": 1e-3, "adadelta": 1.0}  # name -> default learning rate


@dataclasses.dataclass
class Dataset:
    """Training (and maybe test) arrays; ``layouts``: the sample shapes to offer the model, in
    order of preference (x is reshaped to the first one the model accepts)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    layouts: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        self.layouts = self.layouts or (tuple(self.x_train.shape[1:]),)


def load_digits() -> Dataset:
    """scikit-learn's digits with the fixed split described in the module docstring."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise CLIError("--data digits needs scikit-learn: pip install scikit-learn") from None
    digits = sklearn_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:1437], order[1437:]
    return Dataset("digits", x[train], y[train], x[test], y[test], layouts=((64,), (1, 8, 8)))


DATASETS = {"digits": load_digits}


def _array(data: Any, key: str, path: str) -> np.ndarray:
    try:
        array = data[key]
    except ValueError as e:  # an object array: numpy refuses to unpickle it
        raise CLIError(f"--data {path!r}: cannot read {key!r}: {e}") from None
    if array.dtype.kind == "f":
        return array.astype(np.float32)
    if array.dtype.kind in "iu":
        return array.astype(np.int64)
    raise CLIError(f"--data {path!r}: {key!r} is {array.dtype}; kiln train needs numbers")


def load_npz(path: str) -> Dataset:
    """An .npz with x_train, y_train[, x_test, y_test], checked for consistency."""
    if not os.path.isfile(path):
        raise CLIError(f"--data {path!r}: no such file (give one of {sorted(DATASETS)} or an "
                       ".npz file with x_train, y_train[, x_test, y_test])")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError):
        raise CLIError(f"--data {path!r} is not an .npz archive (write one with np.savez; kiln "
                       "never unpickles data)") from None
    if not hasattr(data, "files"):
        raise CLIError(f"--data {path!r} holds one array, not an .npz archive with x_train, "
                       "y_train[, x_test, y_test] (write it with np.savez)")
    with data:
        keys = set(data.files)
        missing = [k for k in ("x_train", "y_train") if k not in keys]
        if missing or ("x_test" in keys) != ("y_test" in keys):
            raise CLIError(f"--data {path!r} has arrays {sorted(keys)}; it needs x_train and "
                           "y_train, and x_test with y_test (both or neither)")
        arrays = {k: _array(data, k, path) for k in ("x_train", "y_train", "x_test", "y_test")
                  if k in keys}
    for split in ("train", "test"):
        x, y = arrays.get(f"x_{split}"), arrays.get(f"y_{split}")
        if x is None:
            continue
        if x.ndim == 0 or y.ndim == 0 or len(x) != len(y) or len(x) == 0:
            raise CLIError(f"--data {path!r}: x_{split} {list(x.shape)} and y_{split} "
                           f"{list(y.shape)} must hold the same number (> 0) of samples along "
                           "their first axis")
    if "x_test" in arrays and arrays["x_test"].shape[1:] != arrays["x_train"].shape[1:]:
        raise CLIError(f"--data {path!r}: x_test samples are {list(arrays['x_test'].shape[1:])}"
                       f" but x_train samples are {list(arrays['x_train'].shape[1:])}")
    return Dataset(os.path.basename(path), arrays["x_train"], arrays["y_train"],
                   arrays.get("x_test"), arrays.get("y_test"))


def load_data(spec: str) -> Dataset:
    """A built-in data set by name, or an .npz file."""
    if spec in DATASETS:
        return DATASETS[spec]()
    if not spec.endswith(".npz"):
        raise CLIError(f"--data {spec!r}: expected one of {sorted(DATASETS)} or an .npz file")
    return load_npz(spec)


def make_optimizer(name: str, lr: float | None, momentum: float | None) -> Any:
    """An optimizer from its CLI name; ``lr`` None takes the default of OPTIMIZERS."""
    from kiln.passes.optim import SGD, Adadelta, Adam

    if name not in OPTIMIZERS:
        raise CLIError(f"--optimizer {name!r}: unknown; use one of {', '.join(OPTIMIZERS)}")
    if momentum is not None and name != "sgd":
        raise CLIError(f"--momentum applies to --optimizer sgd, not {name}")
    lr = OPTIMIZERS[name] if lr is None else lr
    if name == "sgd":
        return SGD(lr=lr, momentum=momentum or 0.0)
    return Adam(lr=lr) if name == "adam" else Adadelta(lr=lr)


def _required(fn: Any) -> list[str]:
    """The names of ``fn``'s parameters that have no default ([] if it has no signature)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _number(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def describe(optimizer: Any) -> str:
    """'sgd (lr 0.1, momentum 0.9)': the name and the settings that differ from the defaults."""
    fields = dataclasses.fields(optimizer)
    changed = [f"{f.name} {_number(getattr(optimizer, f.name))}" for f in fields
               if f.name == "lr" or getattr(optimizer, f.name) != f.default]
    return f"{type(optimizer).__name__.lower()} ({', '.join(changed)})"


def _input_name(model: Any, ref: str) -> str:
    """The name of the model's one input: the parameter of ``forward`` or of the function."""
    params = _required(getattr(model, "forward", model))
    if len(params) != 1:
        raise CLIError(f"{ref}: kiln train needs a model with one input, but it takes "
                       f"{params or 'none'}")
    return params[0]


def build_model(ref: str, data: Dataset, batch: int) -> tuple[Any, str, Any]:
    """Load and instantiate ``ref``; trace it on the first layout of ``data`` it accepts.
    Returns (model, input name, forward graph)."""
    from kiln.frontend.dsl import TensorSpec, trace

    obj = load_model(ref)
    # a function with required parameters is the model itself; one without is a factory
    model = instantiate(obj, [] if isinstance(obj, type) else _required(obj))
    name = _input_name(model, ref)
    dtype = data.x_train.dtype.name
    failures = []
    for layout in data.layouts:
        spec = TensorSpec((batch, *layout), dtype)
        try:
            return model, name, trace(model, name=ref.rpartition(":")[2], **{name: spec})
        except KilnError as e:
            failures.append(f"as {name}: {dtype}{[batch, *layout]}: {type(e).__name__}: {e}")
    raise CLIError(f"the data {data.name} does not fit the model's input {name!r}; tried it "
                   + "; ".join(failures))


def prepare_targets(loss: str, y: np.ndarray, pred: Any, what: str) -> np.ndarray:
    """``y`` checked against the model's output type ``pred`` (TensorType) for ``loss``."""
    sample = tuple(pred.shape[1:])
    if loss == "cross_entropy" and y.dtype == np.int64:
        want = sample[1:]  # class indices: the output without its class axis
        if tuple(y.shape[1:]) != want:
            raise CLIError(f"{what}: class labels must be [N{''.join(f', {d}' for d in want)}] "
                           f"for the model's output {pred}, got {list(y.shape)}")
        n_classes = sample[0] if sample else 0
        if y.min() < 0 or y.max() >= n_classes:
            raise CLIError(f"{what}: labels run from {y.min()} to {y.max()} but the model "
                           f"predicts {n_classes} classes (output {pred})")
        return y
    y = y.astype(np.float32)
    if y.shape[1:] == () and sample == (1,):
        y = y[:, None]
    if tuple(y.shape[1:]) != sample:
        raise CLIError(f"{what}: targets {list(y.shape)} do not match the model's output {pred}"
                       f" (want [N, {', '.join(map(str, sample))}] for --loss {loss})")
    return y


class ProgressBar:
    """``epoch 2/5 [=====>    ] loss 0.123`` on ``stream``: redrawn in place (``\\r``) on a
    terminal, one line per epoch otherwise (logs, pipes)."""

    def __init__(self, epochs: int, steps: int, stream: TextIO | None = None, width: int = 30):
        self.epochs, self.steps, self.width = epochs, steps, width
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = 0.0
        self._shown = 0

    def line(self, epoch: int, step: int, loss: float) -> str:
        done = self.width * step // self.steps
        bar = "=" * done + (">" + " " * (self.width - done - 1) if done < self.width else "")
        return f"epoch {epoch}/{self.epochs} [{bar}] loss {loss:.4g}"

    def update(self, epoch: int, step: int, loss: float) -> None:
        """After each step: redraw, at most 20 times a second, on a terminal."""
        now = time.perf_counter()
        if self.tty and (now - self._last > 0.05 or step == self.steps):
            self._last = now
            self._draw(self.line(epoch, step, loss))

    def end_epoch(self, epoch: int, loss: float, seconds: float) -> None:
        text = f"{self.line(epoch, self.steps, loss)} ({seconds:.1f} s)"
        if self.tty:
            self._draw(text)
            self.stream.write("\n")
            self._shown = 0
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _draw(self, text: str) -> None:
        self.stream.write("\r" + text.ljust(self._shown))
        self._shown = len(text)
        self.stream.flush()


def train_epochs(trainer: Any, name: str, x: np.ndarray, y: np.ndarray, batch: int,
                 epochs: int, seed: int, bar: ProgressBar) -> list[float]:
    """``Trainer.fit``'s loop (shuffled batches, the last partial one dropped), with progress;
    returns each epoch's mean loss. Stops at a non-finite loss."""
    rng = np.random.default_rng(seed)
    history = []
    for epoch in range(1, epochs + 1):
        t0, order, losses = time.perf_counter(), rng.permutation(len(y)), []
        for k in range(bar.steps):
            idx = order[k * batch:(k + 1) * batch]
            losses.append(trainer.step(y[idx], **{name: x[idx]}))
            if not np.isfinite(losses[-1]):
                raise KilnError(f"the loss became {losses[-1]} at epoch {epoch}, step {k + 1}; "
                                "try a smaller --lr")
            bar.update(epoch, k + 1, float(np.mean(losses)))
        history.append(float(np.mean(losses)))
        bar.end_epoch(epoch, history[-1], time.perf_counter() - t0)
    return history


def predict(trainer: Any, name: str, x: np.ndarray, batch: int) -> np.ndarray:
    """The model's first output on all of ``x``, in batches of the graph's fixed size (the
    last one padded with zeros, whose outputs are dropped)."""
    outs = []
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - n, *x.shape[1:]), x.dtype)])
        outs.append(trainer.predict(**{name: chunk})[0][:n])
    return np.concatenate(outs)


def evaluate(loss: str, pred: np.ndarray, y: np.ndarray) -> str:
    """'accuracy: 97.22% (350/360)' for classification, 'loss (mse): 0.0123' for mse."""
    if loss == "mse":
        return f"loss (mse): {float(np.mean((pred - y) ** 2)):.6g}"
    if loss == "cross_entropy":
        labels = y if y.dtype == np.int64 else y.argmax(axis=1)
        right, total = int(np.sum(pred.argmax(axis=1) == labels)), labels.size
    else:  # bce on probabilities, bce_with_logits on logits
        hit = (pred > (0.5 if loss == "bce" else 0.0)) == (y > 0.5)
        right, total = int(hit.sum()), hit.size
    return f"accuracy: {right / total:.2%} ({right}/{total})"


def save_weights(path: str, model: Any, trainer: Any) -> int:
    """The trained weights as .npz under their state-dict names (no pickle; written to a
    temporary file, then renamed). Returns how many arrays were written."""
    from kiln.frontend.nn.module import Module

    if isinstance(model, Module):
        model.load_state_dict(trainer.params, strict=False)
        weights = dict(model.state_dict())
    else:
        weights = dict(trainer.trained_graph().weights)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CLIError(f"--save-weights {path!r}: folder {folder!r} does not exist")
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, **weights)
    os.replace(tmp, path)
    return len(weights)


def cmd_train(args: argparse.Namespace) -> int:
    """Run ``kiln train`` (see the module docstring); returns the exit status."""
    from kiln.frontend.dsl import TensorSpec
    from kiln.frontend.nn import manual_seed
    from kiln.train import BACKENDS, Trainer

    if args.loss not in LOSSES:
        raise CLIError(f"--loss {args.loss!r}: unknown; use one of {', '.join(LOSSES)}")
    if args.epochs < 1 or args.batch_size < 1:
        raise CLIError("--epochs and --batch-size must be at least 1")
    if args.backend not in BACKENDS:
        raise CLIError(f"--backend {args.backend!r}: unknown; use one of {', '.join(BACKENDS)}")
    optimizer = make_optimizer(args.optimizer, args.lr, args.momentum)
    data = load_data(args.data)
    n = len(data.y_train)
    if n < args.batch_size:
        raise CLIError(f"--batch-size {args.batch_size} is larger than the {n} training samples")
    manual_seed(args.seed)  # before the model is built: its initial parameters
    model, name, forward = build_model(args.model, data, args.batch_size)
    layout = tuple(forward.inputs[0].type.shape[1:])
    x_train = data.x_train.reshape(n, *layout)
    pred = forward.outputs[0].type
    y_train = prepare_targets(args.loss, data.y_train, pred, "y_train")
    # class indices are the default target; anything else is shaped like the output
    target = None if y_train.dtype == np.int64 else TensorSpec((args.batch_size,
                                                                *y_train.shape[1:]))
    trainer = Trainer(model, args.loss, optimizer, target=target, backend=args.backend,
                      inputs={name: TensorSpec((args.batch_size, *layout), x_train.dtype.name)})
    n_params = sum(trainer.params[p].size for p in trainer.param_names)
    print(f"training {args.model}: {n_params:,} parameters; {data.name}: {n} training samples, "
          f"{name}: {x_train.dtype}{list(layout)}")
    print(f"{args.loss} loss, {describe(optimizer)}, batch {args.batch_size}, {args.epochs} "
          f"epoch{'s' * (args.epochs != 1)}, backend {args.backend}")
    sys.stdout.flush()
    bar = ProgressBar(args.epochs, n // args.batch_size)
    with np.errstate(over="ignore", invalid="ignore"):  # a diverging loss stops with an error
        train_epochs(trainer, name, x_train, y_train, args.batch_size, args.epochs, args.seed,
                     bar)
    if data.x_test is not None:
        split, x_eval = "test", data.x_test.reshape(len(data.x_test), *layout)
        y_eval = prepare_targets(args.loss, data.y_test, pred, "y_test")
    else:
        split, x_eval, y_eval = "train", x_train, y_train
    outputs = predict(trainer, name, x_eval, args.batch_size)
    print(f"{split} {evaluate(args.loss, outputs, y_eval)}")
    if args.save_weights:
        count = save_weights(args.save_weights, model, trainer)
        print(f"saved {count} weights to {args.save_weights}")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``train`` on the ``kiln`` command's sub-parsers; returns its parser."""
    sp = subparsers.add_parser(
        "train", help="train a model on a data set (digits or an .npz)",
        description="Train a model (forward, loss, backward and optimizer update built into "
        "one step graph) and report its test accuracy or loss.")
    sp.add_argument("model", help="FILE.py:NAME (Module class, factory or function)")
    sp.add_argument("--data", required=True, metavar="digits|FILE.npz",
                    help="a built-in data set, or an .npz with x_train, y_train[, x_test, y_test]")
    sp.add_argument("--loss", default="cross_entropy", metavar="|".join(LOSSES),
                    help="default: cross_entropy (on logits, labels as class indices)")
    sp.add_argument("--optimizer", default="adam", metavar="|".join(OPTIMIZERS),
                    help="default: adam")
    sp.add_argument("--lr", type=float, help="learning rate (default: "
                    + ", ".join(f"{k} {v:g}" for k, v in OPTIMIZERS.items()) + ")")
    sp.add_argument("--momentum", type=float, help="SGD momentum (default 0)")
    sp.add_argument("--epochs", type=int, default=5, help="default: 5")
    sp.add_argument("--batch-size", type=int, default=32, help="default: 32")
    sp.add_argument("--seed", type=int, default=0,
                    help="seeds the initial parameters and the shuffling (default 0)")
    sp.add_argument("--backend", default="interpret",
                    help="what runs the step graph: interpret (numpy, the default) or compiled "
                    "(kiln's codegen, compiled once; the state stays in the runtime)")
    sp.add_argument("--save-weights", metavar="FILE.npz",
                    help="write the trained state dict to FILE.npz")
    sp.set_defaults(fn=cmd_train, command="train")
    return sp
