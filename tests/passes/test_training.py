"""Losses, optimizers and training steps: against torch (values, gradients, updates), the
worked 3-4-2 MLP's figures, and small models that must learn."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kiln
from kiln import nn
from kiln.errors import KilnError
from kiln.ir import GraphBuilder, TensorType, interpret, verify
from kiln.passes import grad
from kiln.passes.autodiff import Emitter
from kiln.passes.losses import LOSSES
from kiln.passes.optim import SGD, Adadelta, Adam
from kiln.train import Trainer, make_train_step

# -- losses against torch ----------------------------------------------------------------------


def loss_and_grad(loss, pred: np.ndarray, target: np.ndarray, **kw):
    em = Emitter(GraphBuilder("loss"))
    p = em.var(em.builder.input("pred", TensorType.of(pred)))
    t = em.var(em.builder.input("target", TensorType.of(target)))
    em.builder.output(LOSSES[loss](em, p, t, **kw).value)
    g = verify(grad(em.builder.build(), ["pred"]))
    return interpret(g, {"pred": pred, "target": target})


def torch_loss_and_grad(fn, pred, target, **kw):
    tp = torch.tensor(pred, requires_grad=True)
    value = fn(tp, torch.tensor(target), **kw)
    value.backward()
    return value.detach().numpy(), tp.grad.numpy()


rng = np.random.default_rng(0)
LOGITS = rng.standard_normal((4, 3)) * 3
PROBS = np.array([[0.0, 0.3, 1.0], [0.5, 1e-50, 0.999999]])
LOSS_CASES = [
    ("mse", F.mse_loss, rng.standard_normal((3, 2)), rng.standard_normal((3, 2))),
    ("bce", F.binary_cross_entropy, PROBS, rng.random((2, 3))),
    ("bce_with_logits", F.binary_cross_entropy_with_logits,
     np.array([[-120.0, -3.0, 0.0], [0.5, 30.0, 800.0]]), rng.random((2, 3))),
    ("cross_entropy", F.cross_entropy, LOGITS, np.array([0, 2, 1, 2])),
    ("cross_entropy", F.cross_entropy, LOGITS, rng.dirichlet(np.ones(3), 4)),
    ("cross_entropy", F.cross_entropy, rng.standard_normal((2, 3, 4)),
     rng.integers(0, 3, (2, 4))),
    ("cross_entropy", F.cross_entropy, LOGITS[0], np.array(1)),
]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("case", range(len(LOSS_CASES)))
def test_losses_match_torch(case, reduction):
    name, fn, pred, target = LOSS_CASES[case]
    value, dpred = loss_and_grad(name, pred, target, reduction=reduction)
    want, dwant = torch_loss_and_grad(fn, pred, target, reduction=reduction)
    np.testing.assert_allclose(value, want, rtol=1e-10, atol=1e-12)
    if name == "bce":  # torch clamps its gradient's denominator at 1e-12; ours is exact
        finite = (PROBS > 0) & (PROBS < 1) & (PROBS > 1e-12)
        assert np.isfinite(dpred).all()
        dpred, dwant = dpred[finite], dwant[finite]
    np.testing.assert_allclose(dpred, dwant, rtol=1e-8, atol=1e-12)


def test_loss_errors():
    with pytest.raises(KilnError, match="target must have the prediction's type"):
        loss_and_grad("mse", np.zeros((2, 3)), np.zeros((3,)))
    with pytest.raises(KilnError, match=r"class indices must have shape \[4\]"):
        loss_and_grad("cross_entropy", LOGITS, np.zeros((4, 1), np.int64))
    with pytest.raises(KilnError, match="reduction must be"):
        loss_and_grad("mse", np.zeros(2), np.zeros(2), reduction="avg")


# -- the worked example ------------------------------------------------------------------------


def test_worked_mlp_gradients():
    """3-4-2 MLP, ReLU, softmax + cross-entropy, target class 0: dL/dz2 = p - t and
    dL/dz1 = W2^T dL/dz2 (all hidden units active), read as the biases' gradients."""
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    model.load_state_dict({
        "0.weight": np.array([[.2, .4, .6], [.5, .1, .3], [.8, .7, .9], [.3, .5, .7]]),
        "0.bias": np.array([.1, .2, .3, .4]),
        "2.weight": np.array([[.3, .5, .7, .9], [.2, .4, .6, .8]]),
        "2.bias": np.array([.1, .2])})
    step = make_train_step(model, "cross_entropy", SGD(lr=0.0),
                           inputs={"x": kiln.TensorSpec((1, 3))})
    names = [v.name for v in step.inputs]
    assert names == ["x", "target", "0.weight", "0.bias", "2.weight", "2.bias"]
    g = grad(step, ["0.bias", "2.bias"], output=0)  # the loss is output 0 of the step
    feeds = {"x": np.array([[1, .5, .3]], np.float32), "target": np.array([0]),
             **{k: v for k, v in model.state_dict().items()}}
    _, dz1, dz2 = interpret(g, feeds)
    np.testing.assert_allclose(dz2, [-0.41581, 0.41581], atol=1e-5)
    np.testing.assert_allclose(dz1, [-0.041581] * 4, atol=1e-5)


# -- optimizers against torch.optim ------------------------------------------------------------

OPTIMIZERS = [
    (SGD(lr=0.1), partial(torch.optim.SGD, lr=0.1)),
    (SGD(lr=0.1, momentum=0.9), partial(torch.optim.SGD, lr=0.1, momentum=0.9)),
    (SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
     partial(torch.optim.SGD, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (SGD(lr=0.1, momentum=0.5, dampening=0.3),
     partial(torch.optim.SGD, lr=0.1, momentum=0.5, dampening=0.3)),
    (Adam(), torch.optim.Adam),
    (Adam(lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1),
     partial(torch.optim.Adam, lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1)),
    (Adadelta(), torch.optim.Adadelta),
    (Adadelta(lr=0.5, rho=0.8, eps=1e-5, weight_decay=0.05),
     partial(torch.optim.Adadelta, lr=0.5, rho=0.8, eps=1e-5, weight_decay=0.05)),
]


@pytest.mark.parametrize("case", range(len(OPTIMIZERS)), ids=lambda i: repr(OPTIMIZERS[i][0]))
def test_optimizer_steps_match_torch(case):
    ours, theirs = OPTIMIZERS[case]
    data = np.random.default_rng(case)
    w0, b0 = data.standard_normal((2, 3)), data.standard_normal(2)
    x, y = data.standard_normal((5, 3)), data.standard_normal((5, 2))
    b = GraphBuilder("linear")
    xv = b.input("x", TensorType.of(x))
    wv, bv = b.param("w", w0), b.param("b", b0)
    (wt,) = b.op("transpose", [wv])
    b.output(b.op("add", [b.op("matmul", [xv, wt])[0], bv])[0])
    trainer = Trainer(b.build(), "mse", ours)
    tw, tb = (torch.tensor(a, requires_grad=True) for a in (w0, b0))
    opt = theirs([tw, tb])
    for _ in range(4):
        opt.zero_grad()
        want = F.mse_loss(torch.tensor(x) @ tw.T + tb, torch.tensor(y))
        want.backward()
        opt.step()
        loss = trainer.step(y, x=x)
        np.testing.assert_allclose(loss, want.item(), rtol=1e-12)
        np.testing.assert_allclose(trainer.params["w"], tw.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(trainer.params["b"], tb.detach().numpy(), rtol=1e-12)


def test_optimizer_argument_checks():
    with pytest.raises(KilnError, match="Nesterov"):
        SGD(lr=0.1, nesterov=True)
    with pytest.raises(KilnError, match="betas"):
        Adam(betas=(0.9, 1.0))
    with pytest.raises(KilnError, match="lr must be >= 0"):
        Adadelta(lr=-1)


# -- the step graph ----------------------------------------------------------------------------


def test_step_graph_signature_and_state():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    step = verify(make_train_step(model, "cross_entropy", Adam(),
                                  inputs={"x": kiln.TensorSpec((8, 3))}))
    params = ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"]
    state = [f"{p}.{s}" for p in params for s in ("exp_avg", "exp_avg_sq")] + ["step"]
    assert [v.name for v in step.inputs] == ["x", "target"] + params + state
    assert step.inputs[1].type == TensorType((8,), "int64")
    assert step.output_names == ["loss"] + [f"{n}.next" for n in params + state]
    # buffers stay constants of the graph; only parameters are inputs
    assert {v.name for v in step.params} >= {"1.running_mean", "1.running_var"}


def test_step_graph_errors():
    model = nn.Linear(3, 2)
    spec = {"x": kiln.TensorSpec((4, 3))}
    with pytest.raises(KilnError, match="unknown loss 'hinge'"):
        make_train_step(model, "hinge", SGD(), inputs=spec)
    with pytest.raises(KilnError, match="loss must be a scalar"):
        make_train_step(model, partial(LOSSES["mse"], reduction="none"), SGD(), inputs=spec)
    with pytest.raises(KilnError, match="pass inputs="):
        make_train_step(model, "mse", SGD())
    with pytest.raises(KilnError, match=r"\['w'\] are not parameters"):
        make_train_step(model, "mse", SGD(), inputs=spec, params=["w"])


def test_symbolic_batch_step():
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    trainer = Trainer(model, "cross_entropy", SGD(lr=0.1),
                      inputs={"x": kiln.TensorSpec(("N", 4))})
    assert trainer.graph.inputs[1].type == TensorType(("N",), "int64")
    data = np.random.default_rng(0)
    x, y = data.standard_normal((6, 4)).astype(np.float32), np.array([0, 1, 2, 0, 1, 2])
    first = [trainer.step(y, x=x) for _ in range(20)]
    assert first[-1] < first[0]
    assert trainer.step(y[:2], x=x[:2]) > 0  # another batch size, same graph
    # a convolution's weight gradient sums over the batch (as a convolution's channels):
    # one group at a symbolic batch builds; grouped ones need the batch static
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(4, 2))
    make_train_step(conv, "mse", SGD(), inputs={"x": kiln.TensorSpec(("N", 1, 4, 3))})
    grouped = nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(KilnError, match=r"conv2d.*batch size of a grouped convolution is the "
                                        r"symbolic size 'N'"):
        make_train_step(grouped, "mse", SGD(), inputs={"x": kiln.TensorSpec(("N", 2, 4, 3))})


class WeightedSquaredError(nn.Module):
    """A model that computes its own loss from three inputs (no prediction/target pair)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(np.array([[0.5], [-1.0], [2.0]], np.float32))

    def forward(self, x, y, weight):
        err = x @ self.w - y
        return (weight * err * err).mean()


@pytest.mark.parametrize("backend", ["interpret", "compiled"])
def test_a_model_that_computes_its_own_loss(backend):
    """loss=None: the model's scalar output is the loss; the step has no target input, and
    one SGD step moves w by -lr * dL/dw (computed by hand here)."""
    data = np.random.default_rng(4)
    x = data.standard_normal((5, 3)).astype(np.float32)
    y = data.standard_normal((5, 1)).astype(np.float32)
    weight = data.random((5, 1)).astype(np.float32)
    specs = {"x": kiln.TensorSpec((5, 3)), "y": kiln.TensorSpec((5, 1)),
             "weight": kiln.TensorSpec((5, 1))}
    trainer = Trainer(WeightedSquaredError(), None, SGD(lr=0.1), inputs=specs, backend=backend)
    assert [v.name for v in trainer.graph.inputs] == ["x", "y", "weight", "w"]
    w0 = np.array(trainer.params["w"])
    loss = trainer.step(x=x, y=y, weight=weight)
    err = x @ w0 - y
    np.testing.assert_allclose(loss, np.mean(weight * err * err), rtol=1e-5)
    dw = x.T @ (2 * weight * err) / len(x)
    np.testing.assert_allclose(trainer.params["w"], w0 - 0.1 * dw, rtol=1e-5, atol=1e-6)
    with pytest.raises(KilnError, match="computes its own loss"):
        trainer.step(y, x=x, y=y, weight=weight)
    history = trainer.fit({"x": x, "y": y, "weight": weight}, None, batch_size=5, epochs=30)
    assert history[-1] < history[0]


def test_own_loss_errors():
    spec = {"x": kiln.TensorSpec((4, 3))}
    with pytest.raises(KilnError, match="the model's output must be a scalar"):
        make_train_step(nn.Linear(3, 2), None, SGD(), inputs=spec)
    with pytest.raises(KilnError, match="takes no target"):
        make_train_step(nn.Linear(3, 2), None, SGD(), inputs=spec,
                        target=kiln.TensorSpec((4, 2)))
    trainer = Trainer(nn.Linear(3, 2), "mse", SGD(), inputs=spec)
    with pytest.raises(KilnError, match="pass the batch's target"):
        trainer.step(x=np.zeros((4, 3), np.float32))


# -- models that must learn --------------------------------------------------------------------


class Affine(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(np.zeros((1,), np.float32))
        self.b = nn.Parameter(np.zeros((1,), np.float32))

    def forward(self, x):
        return x * self.w + self.b


def test_linear_regression_finds_slope_2_intercept_0():
    x = np.arange(1, 6, dtype=np.float32)
    trainer = Trainer(Affine(), "mse", SGD(lr=0.05, momentum=0.9),
                      inputs={"x": kiln.TensorSpec((5,))})
    for _ in range(400):
        loss = trainer.step(2 * x, x=x)
    assert loss < 1e-6
    np.testing.assert_allclose(trainer.params["w"], [2.0], atol=1e-3)
    np.testing.assert_allclose(trainer.params["b"], [0.0], atol=1e-3)
    np.testing.assert_allclose(interpret(trainer.trained_graph(), {"x": x})[0], 2 * x,
                               atol=1e-3)


@pytest.mark.parametrize("loss", ["bce", "bce_with_logits"])
def test_logistic_regression_separates_a_toy_set(loss):
    data = np.random.default_rng(5)
    x = np.concatenate([data.normal(-2, 0.7, (20, 2)), data.normal(2, 0.7, (20, 2))])
    y = np.repeat([0.0, 1.0], 20)[:, None].astype(np.float32)
    x = x.astype(np.float32)
    linear = nn.Linear(2, 1)
    model = nn.Sequential(linear, nn.Sigmoid()) if loss == "bce" else linear
    trainer = Trainer(model, loss, SGD(lr=0.5), inputs={"x": kiln.TensorSpec((40, 2))})
    for _ in range(50):
        trainer.step(y, x=x)
    (out,) = trainer.predict(x=x)
    predicted = out > (0.5 if loss == "bce" else 0.0)
    assert (predicted == (y > 0.5)).all()


def test_digits_mlp_reaches_95_percent():
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:1437], order[1437:]
    nn.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    trainer = Trainer(model, "cross_entropy", Adam(lr=1e-3),
                      inputs={"x": kiln.TensorSpec((32, 64))})
    history = trainer.fit({"x": x[train]}, y[train], batch_size=32, epochs=15)
    assert history[-1] < history[0]
    model.load_state_dict(trainer.params, strict=False)
    full = kiln.trace(model, x=kiln.TensorSpec((len(test), 64)))
    (logits,) = interpret(full, {"x": x[test]})
    accuracy = float(np.mean(logits.argmax(1) == y[test]))
    assert accuracy >= 0.95, accuracy
