"""The "compiled" training backend: the step graph compiled once by kiln's codegen, run step
after step with the parameters and optimizer state kept in the runtime's buffers.

compiled == interpreted (the oracle), loss by loss and parameter by parameter; the digits MLP
reaches 95% with it; one build for the whole run; no state crosses into Python per step."""

from __future__ import annotations

import numpy as np
import pytest

import kiln
from kiln import nn
from kiln.errors import InputError
from kiln.ir import GraphBuilder, TensorType, interpret
from kiln.passes.optim import SGD, Adadelta, Adam
from kiln.runtime.executor import Model
from kiln.train import BACKENDS, CompiledStep, Trainer

RTOL, ATOL = 2e-4, 1e-5  # float32, kernels that sum in another order than numpy


def compare(model, loss, optimizer, spec, batches, target=None, rtol=RTOL, atol=ATOL):
    """Train ``model`` on ``batches`` [(target, inputs)] with both backends, side by side."""
    kw = dict(inputs=spec, target=target)
    interpreted = Trainer(model, loss, optimizer, **kw)
    compiled = Trainer(model, loss, optimizer, backend="compiled", **kw)
    assert compiled.stateful and not interpreted.stateful
    for k, (y, data) in enumerate(batches):
        want, got = interpreted.step(y, **data), compiled.step(y, **data)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=f"step {k}")
    for name, value in interpreted.state.items():
        np.testing.assert_allclose(compiled.state[name], value, rtol=rtol, atol=atol,
                                   err_msg=name)
    return interpreted, compiled


def test_backend_is_registered():
    assert BACKENDS["compiled"] is CompiledStep


def test_linear_regression():
    x = np.arange(1, 6, dtype=np.float32)[:, None]
    model = nn.Linear(1, 1)
    model.load_state_dict({"weight": np.zeros((1, 1)), "bias": np.zeros(1)})
    _, compiled = compare(model, "mse", SGD(lr=0.02, momentum=0.9),
                          {"x": kiln.TensorSpec((5, 1))}, [(2 * x, {"x": x})] * 8)
    for _ in range(300):
        compiled.step(2 * x, x=x)
    np.testing.assert_allclose(compiled.params["weight"], [[2.0]], atol=1e-3)
    np.testing.assert_allclose(compiled.params["bias"], [0.0], atol=3e-3)


def test_logistic_regression():
    data = np.random.default_rng(5)
    x = np.concatenate([data.normal(-2, 0.7, (20, 2)),
                        data.normal(2, 0.7, (20, 2))]).astype(np.float32)
    y = np.repeat([0.0, 1.0], 20)[:, None].astype(np.float32)
    nn.manual_seed(0)
    batches = [(y[i::4], {"x": x[i::4]}) for i in range(4)] * 2
    compare(nn.Linear(2, 1), "bce_with_logits", SGD(lr=0.5), {"x": kiln.TensorSpec((10, 2))},
            batches)


def test_worked_mlp_one_sgd_step():
    """The 3-4-2 MLP of examples/training/worked_mlp.py: loss 0.53753, then one SGD step."""
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    net.load_state_dict({
        "0.weight": np.array([[.2, .4, .6], [.5, .1, .3], [.8, .7, .9], [.3, .5, .7]]),
        "0.bias": np.array([.1, .2, .3, .4]),
        "2.weight": np.array([[.3, .5, .7, .9], [.2, .4, .6, .8]]),
        "2.bias": np.array([.1, .2])})
    x = np.array([[1.0, 0.5, 0.3]], np.float32)
    target = np.array([[1.0, 0.0]], np.float32)
    _, compiled = compare(net, "cross_entropy", SGD(lr=0.1), {"x": kiln.TensorSpec((1, 3))},
                          [(target, {"x": x})], target=kiln.TensorSpec((1, 2)))
    # dL/db2 = p - t = [-0.41581, 0.41581]: b2 moves by -lr times that
    np.testing.assert_allclose(compiled.params["2.bias"], [0.141581, 0.158419], atol=1e-5)


def test_mlp_adam():
    """Big enough that the runtime passes x, the first weight and its moments through its
    zero-copy slots (>= ZERO_COPY_BYTES) rather than its small buffers. Adam moves a
    parameter whose gradient is near 0 by up to lr times a ratio of tiny numbers, so float32
    rounding shows there at 1e-4 (1% of one step of lr 1e-2)."""
    data = np.random.default_rng(1)
    nn.manual_seed(1)
    model = nn.Sequential(nn.Linear(130, 128), nn.Tanh(), nn.Linear(128, 5))
    batches = [(data.integers(0, 5, 128), {"x": data.standard_normal((128, 130), np.float32)})
               for _ in range(5)]
    compare(model, "cross_entropy", Adam(lr=1e-2), {"x": kiln.TensorSpec((128, 130))},
            batches, atol=1e-4)


def test_cnn_sgd_momentum():
    data = np.random.default_rng(2)
    nn.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(64, 3))
    batches = [(data.integers(0, 3, 4), {"x": data.standard_normal((4, 1, 8, 8), np.float32)})
               for _ in range(4)]
    compare(model, "cross_entropy", SGD(lr=0.05, momentum=0.9),
            {"x": kiln.TensorSpec((4, 1, 8, 8))}, batches)


def test_adadelta():
    data = np.random.default_rng(3)
    nn.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    batches = [(data.standard_normal((4, 2), np.float32),
                {"x": data.standard_normal((4, 6), np.float32)}) for _ in range(4)]
    compare(model, "mse", Adadelta(lr=1.0, weight_decay=0.01), {"x": kiln.TensorSpec((4, 6))},
            batches)


def test_digits_mlp_reaches_95_percent_compiled_once_state_in_runtime(monkeypatch):
    """The acceptance run: MLP 64-128-10, Adam, batch 32, 15 epochs, compiled backend. One
    build for all 660 steps; each step passes only x and target to the runtime and reads no
    state back; the parameters are read once, at the end."""
    datasets = pytest.importorskip("sklearn.datasets")
    import kiln.codegen.api as api

    counts = {"build": 0, "read_state": 0, "run": 0}
    feeds_seen: set[tuple[str, ...]] = set()

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    real_step = Model.step

    def step(self, inputs):
        feeds_seen.add(tuple(sorted(inputs)))
        return real_step(self, inputs)

    monkeypatch.setattr(api, "build", counted("build", api.build))
    monkeypatch.setattr(Model, "read_state", counted("read_state", Model.read_state))
    monkeypatch.setattr(Model, "run", counted("run", Model.run))
    monkeypatch.setattr(Model, "step", step)

    digits = datasets.load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:1437], order[1437:]
    nn.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    trainer = Trainer(model, "cross_entropy", Adam(lr=1e-3), backend="compiled",
                      inputs={"x": kiln.TensorSpec((32, 64))})
    history = trainer.fit({"x": x[train]}, y[train], batch_size=32, epochs=15)
    assert trainer.steps == 15 * (1437 // 32)
    assert counts == {"build": 1, "read_state": 0, "run": 0}
    assert feeds_seen == {("target", "x")}
    assert history[-1] < history[0]
    model.load_state_dict(trainer.params, strict=False)
    assert counts["read_state"] == len(trainer.param_names) == 4
    full = kiln.trace(model, x=kiln.TensorSpec((len(test), 64)))
    (logits,) = interpret(full, {"x": x[test]})
    accuracy = float(np.mean(logits.argmax(1) == y[test]))
    assert accuracy >= 0.95, accuracy


# -- the runtime's state API on a small graph --------------------------------------------------


@pytest.fixture(scope="module")
def counter() -> Model:
    """s.next = s + x; total = sum(s) (x and s float32[4])."""
    b = GraphBuilder("counter")
    x = b.input("x", TensorType((4,), "float32"))
    s = b.input("s", TensorType((4,), "float32"))
    (nxt,) = b.op("add", [s, x])
    (total,) = b.op("sum", [s], {"axes": [0]})
    b.output(total, nxt)
    return kiln.compile(b.build()).model


def test_state_api(counter):
    m = counter
    out = m.outputs[1].name
    m.bind_state([(out, "s")], {"s": np.ones(4, np.float32)})
    assert m.state_names == ("s",)
    x = np.arange(4, dtype=np.float32)
    totals = [float(m.step({"x": x})[0]) for _ in range(3)]
    assert totals == [4.0, 10.0, 16.0]
    np.testing.assert_array_equal(m.read_state("s"), 1 + 3 * x)
    np.testing.assert_array_equal(m.read_state(out), 1 + 3 * x)
    m.write_state("s", np.zeros(4, np.float32))
    assert float(m.step({"x": x})[0]) == 0.0
    # run() still takes every input and returns every output
    total, nxt = m.run({"x": x, "s": x})
    assert float(total) == 6.0 and list(nxt) == [0, 2, 4, 6]
    np.testing.assert_array_equal(m.read_state("s"), x)  # untouched by run


def test_state_api_errors(counter):
    m = counter
    out = m.outputs[1].name
    with pytest.raises(InputError, match="not an output"):
        m.bind_state([("nope", "s")], {"s": np.ones(4, np.float32)})
    with pytest.raises(InputError, match="cannot feed"):
        m.bind_state([(m.outputs[0].name, "s")], {"s": np.ones(4, np.float32)})
    with pytest.raises(InputError, match=r"missing \['s'\]"):
        m.bind_state([(out, "s")], {})
    with pytest.raises(InputError, match="expected float32"):
        m.bind_state([(out, "s")], {"s": np.ones(4)})
    m.bind_state([(out, "s")], {"s": np.ones(4, np.float32)})
    with pytest.raises(InputError, match=r"unexpected input\(s\) \['s'\]"):
        m.step({"x": np.ones(4, np.float32), "s": np.ones(4, np.float32)})
    with pytest.raises(InputError, match="missing input 'x'"):
        m.step({})
    with pytest.raises(InputError, match="'x' is not bound state"):
        m.read_state("x")


def test_compiled_backend_takes_a_symbolic_batch():
    """One compiled step for every batch size (tests/codegen/test_symbolic.py checks it
    against the interpreter); the state is still read back by name."""
    t = Trainer(nn.Linear(3, 2), "mse", SGD(), inputs={"x": kiln.TensorSpec(("N", 3))},
                backend="compiled")
    for n in (4, 1):
        loss = t.step(np.zeros((n, 2), np.float32), x=np.ones((n, 3), np.float32))
        assert np.isfinite(loss)
    assert t.state["weight"].shape == (2, 3)


def test_kiln_train_backend_compiled(capsys):
    """``kiln train --backend compiled`` prints what the interpreted run prints."""
    import argparse
    from pathlib import Path

    pytest.importorskip("sklearn")
    from kiln.cli.train import add_parser

    model = Path(__file__).resolve().parents[2] / "examples" / "training" / "digits_mlp.py"
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    results = []
    for backend in ("interpret", "compiled"):
        args = parser.parse_args(["train", f"{model}:make_model", "--data", "digits",
                                  "--epochs", "2", "--backend", backend])
        assert args.fn(args) == 0
        out = capsys.readouterr().out
        assert f"backend {backend}" in out
        results.append([line for line in out.splitlines() if line.startswith("test accuracy")])
    assert results[0] == results[1] and len(results[0]) == 1


def test_a_bad_index_in_a_step_names_its_value():
    """step() reports a kernel's failed index check as run() does: the index and where."""
    b = GraphBuilder("lookup")
    ids = b.input("ids", TensorType((3,), "int64"))
    s = b.input("s", TensorType((6, 2), "float32"))
    (rows,) = b.op("gather", [s, ids], {"axis": 0})
    (nxt,) = b.op("mul", [s, b.param("two", np.full((6, 2), 2, np.float32))])
    b.output(rows, nxt)
    m = kiln.compile(b.build()).model
    m.bind_state([(m.outputs[1].name, "s")], {"s": np.ones((6, 2), np.float32)})
    assert m.step({"ids": np.array([0, 5, -6])})[0].shape == (3, 2)
    with pytest.raises(InputError, match=r"gather.*7 is out of range for size 6 .* at \[1\]"):
        m.step({"ids": np.array([0, 7, 1])})
