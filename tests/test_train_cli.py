"""``kiln train`` (kiln/cli/train.py), driven through its own sub-parser: training on digits and
on .npz files, the progress bar, the saved weights, and the error messages."""

from __future__ import annotations

import argparse
import io
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln import nn
from kiln.cli.train import ProgressBar, add_parser, load_digits
from kiln.errors import CLIError, KilnError
from tests.examples_util import module_at

ROOT = Path(__file__).resolve().parent.parent
DIGITS_MLP = f"{ROOT / 'examples' / 'training' / 'digits_mlp.py'}:make_model"

MODELS = textwrap.dedent("""
    from kiln import nn

    def cnn():
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(64, 10))

    def regressor():
        return nn.Linear(3, 1)

    def classifier():
        return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))

    def two_inputs(x, y):
        return x + y
""")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kiln")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["train", *argv])


def train(argv: list[str]) -> int:
    args = parse(argv)
    return args.fn(args)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """A model file and .npz data sets, good and bad."""
    d = tmp_path_factory.mktemp("train_cli")
    (d / "models.py").write_text(MODELS)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 3)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5], np.float32) + 0.3
    np.savez(d / "reg.npz", x_train=x[:80], y_train=y[:80], x_test=x[80:], y_test=y[80:])
    np.savez(d / "cls.npz", x_train=x, y_train=(y > 0).astype(np.int32))
    np.savez(d / "bad_keys.npz", x=x, y=y)
    np.savez(d / "objects.npz", x_train=np.array([{"a": 1}] * 4, dtype=object), y_train=y[:4])
    np.savez(d / "lengths.npz", x_train=x, y_train=y[:50])
    np.savez(d / "half_test.npz", x_train=x, y_train=y, x_test=x)
    np.savez(d / "labels.npz", x_train=x, y_train=np.full(100, 7))
    np.save(d / "single.npy", x)
    (d / "single.npz").write_bytes((d / "single.npy").read_bytes())
    (d / "text.npz").write_text("not an archive")
    return d


def test_parser_defaults():
    args = parse(["m.py:M", "--data", "digits"])
    assert (args.loss, args.optimizer, args.lr, args.momentum) == ("cross_entropy", "adam",
                                                                   None, None)
    assert (args.epochs, args.batch_size, args.seed, args.backend) == (5, 32, 0, "interpret")
    assert args.command == "train" and args.save_weights is None


def test_digits_mlp_one_epoch_prints_accuracy_and_saves_the_state_dict(tmp_path, capsys):
    out = tmp_path / "mlp.npz"
    assert train([DIGITS_MLP, "--data", "digits", "--optimizer", "sgd", "--lr", "0.05",
                  "--momentum", "0.9", "--epochs", "1", "--save-weights", str(out)]) == 0
    captured = capsys.readouterr()
    assert "x: float32[64]" in captured.out
    assert "sgd (lr 0.05, momentum 0.9), batch 32, 1 epoch," in captured.out
    m = re.search(r"^test accuracy: (\d+\.\d\d)% \((\d+)/360\)$", captured.out, re.M)
    assert m, captured.out
    assert float(m[1]) > 80
    # not a terminal: one progress line per epoch, on stderr
    assert re.fullmatch(r"epoch 1/1 \[=+\] loss [\d.]+ \([\d.]+ s\)\n", captured.err)
    assert f"saved 4 weights to {out}" in captured.out

    # the weights: the model's state-dict names and shapes, trained, and as accurate as printed
    nn.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    with np.load(out, allow_pickle=False) as saved:
        weights = dict(saved)
    assert list(weights) == list(model.state_dict())
    assert all(weights[k].shape == v.shape for k, v in model.state_dict().items())
    assert not np.allclose(weights["0.weight"], model.state_dict()["0.weight"])
    model.load_state_dict(weights)
    data = load_digits()
    graph = kiln.trace(model, x=kiln.TensorSpec(data.x_test.shape))
    (logits,) = kiln.interpret(graph, {"x": data.x_test})
    assert int(np.sum(logits.argmax(1) == data.y_test)) == int(m[2])


def test_digits_go_in_as_images_for_a_conv_model(files, capsys):
    assert train([f"{files / 'models.py'}:cnn", "--data", "digits", "--epochs", "1",
                  "--batch-size", "64", "--lr", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "x: float32[1, 8, 8]" in out
    assert float(re.search(r"test accuracy: ([\d.]+)%", out)[1]) > 30  # 22 steps: learning


def test_npz_regression_reports_the_test_loss(files, capsys, tmp_path):
    argv = [f"{files / 'models.py'}:regressor", "--data", str(files / "reg.npz"), "--loss",
            "mse", "--optimizer", "sgd", "--lr", "0.1", "--epochs", "30", "--batch-size", "16",
            "--save-weights", str(tmp_path / "w.npz")]
    assert train(argv) == 0
    out = capsys.readouterr().out
    assert float(re.search(r"^test loss \(mse\): (\S+)$", out, re.M)[1]) < 1e-4
    with np.load(tmp_path / "w.npz") as w:
        np.testing.assert_allclose(w["weight"], [[1.0, -2.0, 0.5]], atol=1e-2)
        np.testing.assert_allclose(w["bias"], [0.3], atol=1e-2)


def test_npz_without_a_test_split_reports_training_accuracy(files, capsys):
    assert train([f"{files / 'models.py'}:classifier", "--data", str(files / "cls.npz"),
                  "--lr", "0.01", "--epochs", "20", "--batch-size", "16"]) == 0
    m = re.search(r"^train accuracy: ([\d.]+)% \(\d+/100\)$", capsys.readouterr().out, re.M)
    assert float(m[1]) >= 95


def test_cli_digits_split_is_the_examples_split():
    example = module_at(ROOT / "examples" / "training" / "digits_mlp.py",
                        "_kiln_example_digits_mlp_split")
    data = load_digits()
    for ours, theirs in zip((data.x_train, data.y_train, data.x_test, data.y_test),
                            example.load_digits()):
        np.testing.assert_array_equal(ours, theirs)


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_redraws_in_place_on_a_terminal():
    stream = FakeTerminal()
    bar = ProgressBar(epochs=2, steps=4, stream=stream, width=8)
    for epoch in (1, 2):
        for step in range(1, 5):
            bar._last = 0.0  # no throttling in the test
            bar.update(epoch, step, 1.0 / step)
        bar.end_epoch(epoch, 0.5, 1.25)
    text = stream.getvalue()
    assert text.startswith("\repoch 1/2 [==>     ] loss 1\repoch 1/2 [====>   ] loss 0.5\r")
    assert "\repoch 1/2 [========] loss 0.5 (1.2 s)\n\repoch 2/2 [==>     ] loss 1\r" in text
    assert text.count("\n") == 2
    plain = io.StringIO()
    bar = ProgressBar(epochs=2, steps=4, stream=plain, width=8)
    bar.update(1, 2, 0.25)
    bar.end_epoch(1, 0.25, 0.5)
    assert plain.getvalue() == "epoch 1/2 [========] loss 0.25 (0.5 s)\n"


@pytest.mark.parametrize("argv, message", [
    (["--data", "missing.npz"], r"'missing.npz': no such file .*x_train, y_train"),
    (["--data", "mnist"], r"'mnist': expected one of \['digits'\] or an .npz file"),
    (["--data", "{d}/bad_keys.npz"], r"has arrays \['x', 'y'\]; it needs x_train and y_train"),
    (["--data", "{d}/half_test.npz"], r"x_test with y_test \(both or neither\)"),
    (["--data", "{d}/objects.npz"], r"cannot read 'x_train': Object arrays"),
    (["--data", "{d}/lengths.npz"], r"x_train \[100, 3\] and y_train \[50\] must hold the same"),
    (["--data", "{d}/single.npz"], r"holds one array, not an .npz archive"),
    (["--data", "{d}/text.npz"], r"is not an .npz archive .*never unpickles"),
    (["--data", "{d}/reg.npz", "--loss", "hinge"], r"--loss 'hinge': unknown; use one of"),
    (["--data", "{d}/reg.npz", "--optimizer", "rmsprop"], r"'rmsprop': unknown; use one of sgd"),
    (["--data", "{d}/reg.npz", "--momentum", "0.9"], r"--momentum applies to --optimizer sgd"),
    (["--data", "{d}/reg.npz", "--backend", "gpu"], r"--backend 'gpu': unknown; .*interpret"),
    (["--data", "{d}/reg.npz", "--batch-size", "500"], r"larger than the 80 training samples"),
    (["--data", "{d}/reg.npz", "--epochs", "0"], r"must be at least 1"),
    (["--data", "digits"], r"does not fit the model's input 'x'; tried it as x: float32\[32, 64\]"
                           r": ShapeError: .*in_features=3; as x: float32\[32, 1, 8, 8\]"),
    (["--data", "{d}/labels.npz", "--model", "classifier"],
     r"y_train: labels run from 7 to 7 but the model predicts 2 classes"),
    (["--data", "{d}/reg.npz", "--model", "classifier", "--loss", "mse"],
     r"y_train: targets \[80\] do not match the model's output float32\[32, 2\]"),
    (["--data", "{d}/reg.npz", "--model", "two_inputs"], r"needs a model with one input, but it "
                                                         r"takes \['x', 'y'\]"),
    (["--data", "{d}/reg.npz", "--loss", "mse", "--save-weights", "{d}/no/such/w.npz"],
     r"folder .* does not exist"),
    (["--data", "{d}/reg.npz", "--loss", "mse", "--optimizer", "sgd", "--lr", "1e6"],
     r"the loss became (inf|nan) at epoch \d+, step \d+; try a smaller --lr"),
])
def test_errors_are_clear(files, argv, message):
    argv = [a.replace("{d}", str(files)) for a in argv]
    model = "regressor"
    if "--model" in argv:
        i = argv.index("--model")
        model = argv.pop(i + 1)
        argv.pop(i)
    with pytest.raises(KilnError, match=message) as info:
        train([f"{files / 'models.py'}:{model}", *argv])
    if "loss became" not in message:
        assert isinstance(info.value, CLIError)
