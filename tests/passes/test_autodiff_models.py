"""grad on whole models against torch autograd, and grad's contract: errors, kinks and ties,
zeros for unused names, accumulation, symbolic dims, second derivatives, the text form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kiln
from kiln import nn
from kiln import ops as K
from kiln.errors import KilnError
from kiln.ir import GraphBuilder, TensorType, interpret, parse, verify
from kiln.passes import grad
from kiln.passes.autodiff import Emitter, clone

tnn = torch.nn


def graph(body, **inputs: TensorType):
    """A graph from ``body(b, *input values) -> output value`` built with GraphBuilder."""
    b = GraphBuilder("g")
    xs = [b.input(n, t) for n, t in inputs.items()]
    b.output(body(b, *xs))
    return b.build()


def op(b, name, *xs, **attrs):
    return b.op(name, list(xs), attrs)[0]


def f64(*shape):
    return TensorType(shape, "float64")


def run_grad(g, wrt, **feeds):
    return interpret(verify(grad(g, wrt)), feeds)


# -- errors ------------------------------------------------------------------------------------


def test_output_must_be_a_float_scalar():
    g = graph(lambda b, x: op(b, "exp", x), x=f64(3))
    with pytest.raises(KilnError, match=r"scalar output .*float64\[3\].*sum or mean"):
        grad(g, ["x"])
    with pytest.raises(KilnError, match="out of range"):
        grad(g, ["x"], output=1)


def test_wrt_must_name_a_float_input_or_parameter():
    g = graph(lambda b, x, i: op(b, "sum", op(b, "gather", op(b, "exp", x), i)),
              x=f64(3), i=TensorType((2,), "int64"))
    with pytest.raises(KilnError, match="%i is int64.*only for floating-point"):
        grad(g, ["i"])
    with pytest.raises(KilnError, match="%nope is not a value"):
        grad(g, ["nope"])
    with pytest.raises(KilnError, match="%0 is an intermediate value"):
        grad(g, ["0"])


def test_gradient_through_a_non_differentiable_op_is_an_error_naming_the_node():
    def body(b, x):
        return op(b, "sum", op(b, "mul", op(b, "floor", x), x))

    with pytest.raises(KilnError, match=r"node %0 \(floor\).*not differentiable.*%x"):
        grad(graph(body, x=f64(3)), ["x"])


def test_paths_through_integer_results_contribute_nothing():
    # x reaches the loss only through argmax (an index): its gradient is zero, not an error
    def body(b, x, w):
        return op(b, "sum", op(b, "gather", w, op(b, "argmax", x)))

    x, w = np.array([[1.0, 3.0, 2.0]]), np.array([5.0, 6.0, 7.0])
    loss, dx, dw = run_grad(graph(body, x=f64(1, 3), w=f64(3)), ["x", "w"], x=x, w=w)
    assert loss == 6.0
    np.testing.assert_array_equal(dx, np.zeros((1, 3)))
    np.testing.assert_array_equal(dw, [0.0, 1.0, 0.0])


def test_unused_names_get_zeros_and_repeated_uses_accumulate():
    def body(b, x, y, u):  # x * x + x: 2x + 1; y twice through one node: 2y
        return op(b, "sum", op(b, "add", op(b, "add", op(b, "mul", x, x), x), op(b, "add", y, y)))

    x, y, u = np.array([1.0, -2.0]), np.array([3.0, 4.0]), np.ones((2, 2))
    _, dx, dy, du = run_grad(graph(body, x=f64(2), y=f64(2), u=f64(2, 2)), ["x", "y", "u"],
                             x=x, y=y, u=u)
    np.testing.assert_array_equal(dx, 2 * x + 1)
    np.testing.assert_array_equal(dy, [2.0, 2.0])
    np.testing.assert_array_equal(du, np.zeros((2, 2)))


# -- kinks, ties, zeros ------------------------------------------------------------------------


def test_subgradients_at_kinks_follow_pytorch():
    x = np.array([-1.0, 0.0, 1.0, 2.0])
    cases = [("relu", {}, torch.relu), ("abs", {}, torch.abs),
             ("leaky_relu", {"alpha": 0.1}, lambda t: tnn.functional.leaky_relu(t, 0.1)),
             ("clip", {"min": 0.0, "max": 1.0}, lambda t: torch.clamp(t, 0.0, 1.0)),
             ("hardtanh", {"min_val": 0.0, "max_val": 1.0},
              lambda t: tnn.functional.hardtanh(t, 0.0, 1.0)),
             ("elu", {"alpha": 0.5}, lambda t: tnn.functional.elu(t, 0.5)),
             ("heaviside", {}, lambda t: torch.zeros_like(t) * t)]
    for name, attrs, fn in cases:
        g = graph(lambda b, v, name=name, attrs=attrs: op(b, "sum", op(b, name, v, **attrs)),
                  v=f64(4))
        t = torch.tensor(x, requires_grad=True)
        fn(t).sum().backward()
        np.testing.assert_array_equal(run_grad(g, ["v"], v=x)[1], t.grad.numpy(), err_msg=name)


def test_ties_split_evenly_except_max_pool_which_picks_the_first():
    x = np.array([[1.0, 3.0, 3.0, 0.0]])
    _, dx = run_grad(graph(lambda b, v: op(b, "sum", op(b, "max", v, axes=(1,))), v=f64(1, 4)),
                     ["v"], v=x)
    np.testing.assert_array_equal(dx, [[0, 0.5, 0.5, 0]])
    _, da, db = run_grad(graph(lambda b, a, c: op(b, "sum", op(b, "maximum", a, c)),
                               a=f64(2), c=f64(2)), ["a", "c"], a=np.array([1.0, 2.0]),
                         c=np.array([1.0, 0.0]))
    np.testing.assert_array_equal(da, [0.5, 1.0])
    np.testing.assert_array_equal(db, [0.5, 0.0])
    img = np.array([[[[1.0, 1.0], [0.0, 1.0]]]])
    _, dimg = run_grad(graph(lambda b, v: op(b, "sum", op(b, "max_pool2d", v,
                                                          kernel_shape=(2, 2))),
                             v=f64(1, 1, 2, 2)), ["v"], v=img)
    t = torch.tensor(img, requires_grad=True)
    tnn.functional.max_pool2d(t, 2).sum().backward()
    np.testing.assert_array_equal(dimg, t.grad.numpy())
    np.testing.assert_array_equal(dimg, [[[[1.0, 0.0], [0.0, 0.0]]]])


def test_prod_with_zeros():
    g = graph(lambda b, v: op(b, "sum", op(b, "prod", v, axes=(1,))), v=f64(3, 3))
    x = np.array([[0.0, 2.0, 3.0], [0.0, 0.0, 5.0], [1.0, 2.0, 4.0]])
    np.testing.assert_array_equal(run_grad(g, ["v"], v=x)[1],
                                  [[6.0, 0, 0], [0, 0, 0], [8.0, 4.0, 2.0]])


def test_dropout_gradient_uses_the_forward_mask():
    def body(b, x):
        return op(b, "sum", op(b, "dropout", x, p=0.5, training=True, seed=7))

    g = graph(body, x=f64(50))
    ones = np.ones(50)
    mask = interpret(graph(lambda b, x: op(b, "dropout", x, p=0.5, training=True, seed=7),
                           x=f64(50)), {"x": ones})[0]
    np.testing.assert_array_equal(run_grad(g, ["x"], x=ones)[1], mask)
    assert 0 < np.count_nonzero(mask) < 50


def test_cast_between_float_widths():
    def body(b, x):
        return op(b, "sum", op(b, "mul", op(b, "cast", op(b, "cast", x, dtype="float32"),
                                            dtype="float64"), x))

    x = np.array([0.1, 2.0])
    np.testing.assert_allclose(run_grad(graph(body, x=f64(2)), ["x"], x=x)[1], 2 * x, rtol=1e-7)


# -- symbolic dims, second order, text form ----------------------------------------------------


def test_symbolic_batch():
    def body(b, x, w):
        h = op(b, "tanh", op(b, "add", op(b, "matmul", x, w), op(b, "full", shape=(), value=1.0,
                                                                     dtype="float64")))
        pooled = op(b, "global_avg_pool2d", op(b, "reshape", h, shape=("N", 1, 1, 3)))
        return op(b, "mean", op(b, "mul", h, op(b, "reshape", pooled, shape=("N", 1))))

    g = graph(body, x=TensorType(("N", 2), "float64"), w=f64(2, 3))
    gg = verify(grad(g, ["x", "w"]))
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((5, 2)), rng.standard_normal((2, 3))
    tx, tw = (torch.tensor(a, requires_grad=True) for a in (x, w))
    h = torch.tanh(tx @ tw + 1)
    (h * h.mean(1, keepdim=True)).mean().backward()
    _, dx, dw = interpret(gg, {"x": x, "w": w})
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-10)
    # a symbolic-shaped name the output does not use gets zeros of its shape
    g2 = graph(lambda b, x, u: op(b, "sum", x), x=f64(2), u=TensorType(("N", 2), "float64"))
    assert interpret(grad(g2, ["u"]), {"x": np.ones(2), "u": np.ones((4, 2))})[1].shape == (4, 2)


def test_second_derivative_through_the_rules():
    g = graph(lambda b, x: op(b, "sum", op(b, "mul", op(b, "tanh", x), op(b, "abs", x))),
              x=f64(4))
    first = grad(g, ["x"])
    em = Emitter(GraphBuilder("second"))
    env = clone(first, em)
    em.builder.output(em.sum(env[first.outputs[1]]).value)
    second = verify(grad(em.builder.build(), ["x"]))
    x = np.array([-1.5, -0.3, 0.4, 2.0])
    tx = torch.tensor(x, requires_grad=True)
    (gx,) = torch.autograd.grad((torch.tanh(tx) * tx.abs()).sum(), tx, create_graph=True)
    gx.sum().backward()
    np.testing.assert_allclose(interpret(second, {"x": x})[1], tx.grad.numpy(), rtol=1e-10)


def test_gradient_graph_prints_and_parses_back():
    g = graph(lambda b, x: op(b, "sum", op(b, "softmax", op(b, "max_pool2d", x,
                                                            kernel_shape=(2, 2)))),
              x=f64(1, 2, 4, 4))
    gg = grad(g, ["x"])
    assert [v.name for v in gg.outputs][1:] == ["grad_x"]
    assert "grad of max_pool2d" in str(gg)
    assert parse(str(gg), gg.weights).same_as(gg)


# -- whole models against torch ----------------------------------------------------------------


class Loss(nn.Module):
    """sum(model(*xs) * r) over the model's outputs."""

    def __init__(self, model: nn.Module, *rs: np.ndarray):
        super().__init__()
        self.m, self.rs = model, rs

    def forward(self, **xs):
        out = self.m(*xs.values())
        outs = out if isinstance(out, tuple) else (out,)
        return sum(K.sum(o * K.as_constant(r)) for o, r in zip(outs, self.rs))


def compare_with_torch(kmodel, tmodel, inputs: dict, rs, rtol=2e-4):
    tmodel.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in
                            kmodel.state_dict().items()})
    specs = {k: kiln.TensorSpec(v.shape) for k, v in inputs.items()}
    g = kiln.trace(Loss(kmodel, *rs), **specs)
    names = [n for n, _ in Loss(kmodel).named_parameters()]
    loss, *grads = interpret(verify(grad(g, names + list(inputs))), inputs)
    tins = {k: torch.tensor(v, requires_grad=True) for k, v in inputs.items()}
    out = tmodel(*tins.values())
    outs = out if isinstance(out, tuple) else (out,)
    tloss = sum((o * torch.from_numpy(r)).sum() for o, r in zip(outs, rs))
    tloss.backward()
    np.testing.assert_allclose(loss, tloss.item(), rtol=1e-4)
    tparams = dict(tmodel.named_parameters())
    want = [tparams[n[2:]].grad for n in names] + [t.grad for t in tins.values()]
    for name, got, w in zip(names + list(inputs), grads, want):
        np.testing.assert_allclose(got, w.numpy(), rtol=rtol, atol=1e-5, err_msg=name)


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def test_mlp_matches_torch():
    rng = np.random.default_rng(1)
    kmodel = nn.Sequential(nn.Linear(5, 8), nn.GELU(), nn.Linear(8, 8), nn.Tanh(),
                           nn.Linear(8, 3), nn.LogSoftmax(dim=1))
    tmodel = tnn.Sequential(tnn.Linear(5, 8), tnn.GELU(), tnn.Linear(8, 8), tnn.Tanh(),
                            tnn.Linear(8, 3), tnn.LogSoftmax(dim=1))
    compare_with_torch(kmodel, tmodel, {"x": _rand(rng, 4, 5)}, [_rand(rng, 4, 3)])


def test_conv_net_matches_torch():
    rng = np.random.default_rng(2)

    def net(m):
        return m.Sequential(m.Conv2d(2, 4, 3, padding=1), m.BatchNorm2d(4), m.ReLU(),
                            m.MaxPool2d(2), m.Conv2d(4, 6, 3, stride=2, groups=2),
                            m.AvgPool2d(2, ceil_mode=True), m.Flatten(), m.Linear(6, 3))

    kmodel, tmodel = net(nn), net(tnn).eval()
    kmodel.load_state_dict({k: v + 0.1 * _rand(rng, *v.shape) if v.dtype == np.float32 else v
                            for k, v in kmodel.state_dict().items()})
    compare_with_torch(kmodel, tmodel, {"x": _rand(rng, 2, 2, 8, 8)}, [_rand(rng, 2, 3)])


def test_lstm_cell_matches_torch():
    rng = np.random.default_rng(3)
    kmodel, tmodel = nn.LSTMCell(3, 4), tnn.LSTMCell(3, 4)
    inputs = {"x": _rand(rng, 2, 3), "h": _rand(rng, 2, 4), "c": _rand(rng, 2, 4)}

    class Cell(nn.Module):
        def __init__(self, cell):
            super().__init__()
            self.cell = cell

        def forward(self, x, h, c):
            return self.cell(x, (h, c))

    class TCell(tnn.Module):
        def __init__(self, cell):
            super().__init__()
            self.cell = cell

        def forward(self, x, h, c):
            return self.cell(x, (h, c))

    compare_with_torch(Cell(kmodel), TCell(tmodel), inputs, [_rand(rng, 2, 4), _rand(rng, 2, 4)])
