"""The DSL core: tracing, Tensor operators, indexing, scalar lifting, output naming, errors."""

import numpy as np
import pytest
import torch

import kiln
from kiln import nn, ops
from kiln.errors import KilnError, ShapeError, TraceError
from kiln.ir import interpret, parse, verify

F32 = np.float32


def run(fn, **arrays):
    specs = {k: kiln.TensorSpec(v.shape, v.dtype.name) for k, v in arrays.items()}
    graph = verify(kiln.trace(fn, **specs))
    return graph, interpret(graph, arrays)


def test_operators_match_numpy():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 3)).astype(F32)
    b = rng.standard_normal((3,)).astype(F32) + 3

    def f(a, b):
        return (a + b, a - b, a * b, a / b, -a, abs(a), 2.0 - a, 1.0 / b, a ** 2.0, a @ a.T,
                a > b, (a < 0) & (b > 0), ~(a >= 0), a.T)

    _, outs = run(f, a=a, b=b)
    expected = [a + b, a - b, a * b, a / b, -a, np.abs(a), 2 - a, 1 / b, a**2, a @ a.T,
                a > b, (a < 0) & (b > 0), ~(a >= 0), a.T]
    for got, want in zip(outs, expected):
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("key", [
    0, -1, (slice(None), 1), (slice(1, None),), (slice(None, None, -1),), (Ellipsis, 0),
    (None, 0), (0, None, slice(1, 3)), (slice(None), slice(None, None, 2), -2),
    (Ellipsis, None), (slice(-3, -1), Ellipsis, slice(None, 1)),
])
def test_indexing_matches_numpy(key):
    x = np.arange(60, dtype=F32).reshape(3, 4, 5)
    _, (out,) = run(lambda x: x[key], x=x)
    np.testing.assert_array_equal(out, x[key])


def test_index_with_integer_tensor_gathers():
    x = np.arange(12, dtype=F32).reshape(4, 3)
    idx = np.array([3, 0, 0], np.int64)
    _, (out,) = run(lambda x, i: x[i], x=x, i=idx)
    np.testing.assert_array_equal(out, x[idx])


def test_tensor_methods_match_torch():
    x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(F32)

    def f(x):
        return (x.reshape(6, 4), x.view(-1), x.transpose(0, 2), x.permute(1, 0, 2),
                x.flatten(1), x.unsqueeze(1), x.sum(1), x.mean(-1, keepdims=True),
                x.max(), x.argmax(1), x.softmax(-1), x.masked_fill(x > 0, -1.0))

    _, outs = run(f, x=x)
    t = torch.from_numpy(x)
    expected = [t.reshape(6, 4), t.view(-1), t.transpose(0, 2), t.permute(1, 0, 2),
                t.flatten(1), t.unsqueeze(1), t.sum(1), t.mean(-1, keepdim=True), t.max(),
                t.argmax(1), t.softmax(-1), t.masked_fill(t > 0, -1.0)]
    for got, want in zip(outs, expected):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)


def test_functional_helpers_match_torch():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 6, 5)).astype(F32)

    def f(x):
        a, b = ops.split(x, 3, axis=1)
        c = ops.chunk(x, 3, axis=2)
        return (a, b, *c, ops.stack([x, x], 1), ops.pad(x, (1, 2), "reflect"),
                ops.pad(x, (1, 0, 0, 2), value=0.5), ops.expand(x[:, :1], (-1, 4, -1)),
                ops.where(x > 0, x, 0.0), ops.clamp(x, -0.5, 0.5))

    _, outs = run(f, x=x)
    t = torch.from_numpy(x)
    F = torch.nn.functional
    expected = [*torch.split(t, 3, 1), *torch.chunk(t, 3, 2), torch.stack([t, t], 1),
                F.pad(t, (1, 2), "reflect"), F.pad(t, (1, 0, 0, 2), value=0.5),
                t[:, :1].expand(-1, 4, -1), torch.where(t > 0, t, 0.0), t.clamp(-0.5, 0.5)]
    assert len(outs) == len(expected)
    for got, want in zip(outs, expected):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-6)


def test_scalars_take_the_tensor_dtype():
    x = np.arange(4, dtype=np.int64)
    _, (out,) = run(lambda x: x * 3 + 1, x=x)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, x * 3 + 1)
    with pytest.raises(ShapeError, match="float constant 0.5 combined with a int64"):
        run(lambda x: x * 0.5, x=x)


def test_numpy_arrays_become_named_constants():
    table = np.arange(6, dtype=F32).reshape(2, 3)
    graph, (out,) = run(lambda x: x + table, x=np.ones((2, 3), F32))
    assert [p.name for p in graph.params] == ["const1"]
    np.testing.assert_array_equal(out, table + 1)


def test_output_naming():
    x = np.ones((2,), F32)
    graph, _ = run(lambda x: x + 1.0, x=x)
    assert graph.output_names == ["output"]
    graph, _ = run(lambda x: (x + 1.0, (x * 2.0, x)), x=x)
    assert graph.output_names == ["output_0", "output_1_0", "output_1_1"]
    graph, outs = run(lambda x: {"logits": x * 2.0, "same": x}, x=x)
    assert graph.output_names == ["logits", "same"]
    np.testing.assert_array_equal(outs[1], x)  # an input returned as is is copied out


def test_graph_round_trips_through_text():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(np.ones((3, 2), F32))

        def forward(self, x):
            return ops.softmax(x @ self.w + 1.0, axis=-1)

    graph = kiln.trace(M(), x=kiln.TensorSpec(("batch", 3)))
    again = parse(str(graph), graph.weights)
    assert again.same_as(graph)


def test_symbolic_batch_dimension_runs_at_any_size():
    graph = kiln.trace(lambda x: ops.relu(x).sum(1), x=kiln.TensorSpec(("N", 4)))
    assert graph.outputs[0].type.shape == ("N",)
    for n in (1, 5):
        (out,) = interpret(graph, {"x": np.ones((n, 4), F32)})
        assert out.shape == (n,)


def test_errors_name_the_layer_and_shapes():
    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(np.ones((5, 2), F32))

        def forward(self, x):
            return x @ self.w

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Inner()

        def forward(self, x):
            return self.block(x)

    with pytest.raises(ShapeError, match=r"float32\[2, 3\].*float32\[5, 2\].*block \(Inner\)"):
        kiln.trace(Outer(), x=kiln.TensorSpec((2, 3)))


def test_trace_errors():
    with pytest.raises(TraceError, match="no truth value"):
        kiln.trace(lambda x: x if x else x, x=kiln.TensorSpec((2,)))
    with pytest.raises(TraceError, match="must return tensors"):
        kiln.trace(lambda x: 3, x=kiln.TensorSpec((2,)))
    with pytest.raises(TraceError, match="TensorSpec"):
        kiln.trace(lambda x: x, x=(2, 3))
    with pytest.raises(TraceError, match="inside kiln.trace"):
        ops.relu(np.ones(2, F32))
    stray = nn.Parameter(np.ones(2, F32))
    with pytest.raises(KilnError, match="belongs to no module"):
        kiln.trace(lambda x: x + stray, x=kiln.TensorSpec((2,)))
    with pytest.raises(TraceError, match="out of range"):
        kiln.trace(lambda x: x[5], x=kiln.TensorSpec((2,)))


def test_module_state_dict_and_registration():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(np.zeros((2,), F32))
            self.register_buffer("stat", np.ones((2,), F32))
            self.child = nn.Sequential(Leaf(), Leaf())

    class Leaf(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(np.zeros((1,), F32))

    m = M()
    assert list(m.state_dict()) == ["a", "stat", "child.0.w", "child.1.w"]
    assert [n for n, _ in m.named_parameters()] == ["a", "child.0.w", "child.1.w"]
    m.load_state_dict({"a": np.array([1, 2], F32), "stat": torch.zeros(2),
                       "child.0.w": np.ones(1), "child.1.w": np.ones(1)})
    assert m.state_dict()["child.0.w"].dtype == F32
    with pytest.raises(KilnError, match=r"missing keys \['child.1.w'\]"):
        m.load_state_dict({"a": np.zeros(2), "stat": np.zeros(2), "child.0.w": np.zeros(1)})
    with pytest.raises(KilnError, match="shape mismatch: a"):
        m.load_state_dict({**m.state_dict(), "a": np.zeros(3)})
    assert not m.training and m.train().child[0].training


# PyTorch's argument names and methods, as model code writes them: (kiln, torch) per case
TORCH_FORMS = {
    "sum(-1, keepdim=True)": (lambda x: x.sum(-1, keepdim=True),
                              lambda t: t.sum(-1, keepdim=True)),
    "mean(dim=1, keepdim=True)": (lambda x: x.mean(dim=1, keepdim=True),
                                  lambda t: t.mean(dim=1, keepdim=True)),
    "softmax(dim=-1)": (lambda x: x.softmax(dim=-1), lambda t: t.softmax(dim=-1)),
    "log_softmax(dim=1)": (lambda x: x.log_softmax(dim=1), lambda t: t.log_softmax(dim=1)),
    "ops.cat(dim=1)": (lambda x: ops.cat([x, x], dim=1), lambda t: torch.cat([t, t], dim=1)),
    "ops.stack(dim=1)": (lambda x: ops.stack([x, x], dim=1),
                         lambda t: torch.stack([t, t], dim=1)),
    "chunk(2, dim=-1)[1]": (lambda x: x.chunk(2, dim=-1)[1], lambda t: t.chunk(2, dim=-1)[1]),
    "split(3, dim=1)[1]": (lambda x: x.split(3, dim=1)[1], lambda t: t.split(3, dim=1)[1]),
    "max(dim=1).values": (lambda x: x.max(dim=1).values, lambda t: t.max(dim=1).values),
    "max(dim=1).indices": (lambda x: x.max(dim=1).indices, lambda t: t.max(dim=1).indices),
    "min(dim=0)[0]": (lambda x: x.min(dim=0)[0], lambda t: t.min(dim=0)[0]),
    "max()": (lambda x: x.max(), lambda t: t.max()),
    "argmax(dim=1)": (lambda x: x.argmax(dim=1), lambda t: t.argmax(dim=1)),
    "var(dim=1)": (lambda x: x.var(dim=1), lambda t: t.var(dim=1)),
    "var(unbiased=False)": (lambda x: x.var(unbiased=False), lambda t: t.var(unbiased=False)),
    "std(dim=0, keepdim=True)": (lambda x: x.std(dim=0, keepdim=True),
                                 lambda t: t.std(dim=0, keepdim=True)),
    "repeat(2, 1, 3)": (lambda x: x.repeat(2, 1, 3), lambda t: t.repeat(2, 1, 3)),
    "unbind(1)[2]": (lambda x: x.unbind(1)[2], lambda t: t.unbind(1)[2]),
    "unsqueeze(dim=0)": (lambda x: ops.unsqueeze(x, dim=0), lambda t: t.unsqueeze(dim=0)),
    "detach().clamp(min=0)": (lambda x: x.detach().clamp(min=0.0),
                              lambda t: t.detach().clamp(min=0.0)),
    "pow(2).type_as(x)": (lambda x: x.pow(2).type_as(x), lambda t: t.pow(2).type_as(t)),
    "expand_as": (lambda x: x[:1].expand_as(x), lambda t: t[:1].expand_as(t)),
}


@pytest.mark.parametrize("form", TORCH_FORMS)
def test_pytorch_argument_names_and_methods(form):
    kiln_fn, torch_fn = TORCH_FORMS[form]
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    _, (got,) = run(kiln_fn, x=x)
    want = torch_fn(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_pytorch_and_numpy_names_together_are_an_error():
    with pytest.raises(TraceError, match="give axis or dim, not both"):
        kiln.trace(lambda x: ops.sum(x, axis=0, dim=1), x=kiln.TensorSpec((2, 3)))
