"""RNN / LSTM / GRU (and their cells) against torch.nn, with torch's weights loaded."""

from __future__ import annotations

import itertools
import pathlib

import numpy as np
import pytest
import torch

from kiln.errors import KilnError, ShapeError
from kiln.frontend.dsl import TensorSpec, trace
from kiln.frontend.nn import (
    GRU,
    LSTM,
    RNN,
    GRUCell,
    LSTMCell,
    Module,
    RNNBase,
    RNNCell,
    manual_seed,
)
from kiln.ir.interpreter import interpret
from kiln.ir.verifier import verify
from tests.examples_util import module_at

RTOL, ATOL = 1e-4, 1e-5
L, N, I, H = 3, 2, 4, 5

LAYERS = {
    "rnn_tanh": (RNN, torch.nn.RNN, {}),
    "rnn_relu": (RNN, torch.nn.RNN, {"nonlinearity": "relu"}),
    "lstm": (LSTM, torch.nn.LSTM, {}),
    "gru": (GRU, torch.nn.GRU, {}),
}


def twins(kind: str, **kw):
    """A torch layer and its kiln twin holding the same weights."""
    kcls, tcls, extra = LAYERS[kind]
    theirs = tcls(I, H, **extra, **kw).eval()
    ours = kcls(I, H, **extra, **kw)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    return ours, theirs


def rand(*shape: int) -> np.ndarray:
    return np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)


def run(model, **inputs: np.ndarray) -> list[np.ndarray]:
    graph = verify(trace(model, **{k: TensorSpec(v.shape) for k, v in inputs.items()}))
    return interpret(graph, inputs)


def flat(result) -> list[np.ndarray]:
    if isinstance(result, torch.Tensor):
        return [result.detach().numpy()]
    return [a for r in result if r is not None for a in flat(r)]


def check(ours: list[np.ndarray], theirs) -> None:
    want = flat(theirs)
    assert len(ours) == len(want)
    for a, b in zip(ours, want):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


class WithState(Module):
    """Passes explicit initial states (traced inputs h0, c0) to the wrapped layer."""

    def __init__(self, layer: Module):
        super().__init__()
        self.layer = layer

    def forward(self, x, h0, c0=None):
        return self.layer(x, h0 if c0 is None else (h0, c0))


@pytest.mark.parametrize("kind,num_layers,bidirectional,batch_first,with_state", [
    (kind, *rest) for kind in LAYERS
    for rest in itertools.product([1, 2], [False, True], [False, True], [False, True])])
def test_matches_torch(kind, num_layers, bidirectional, batch_first, with_state):
    ours, theirs = twins(kind, num_layers=num_layers, bidirectional=bidirectional,
                         batch_first=batch_first)
    x = rand(N, L, I) if batch_first else rand(L, N, I)
    if not with_state:
        with torch.no_grad():
            check(run(ours, input=x), theirs(torch.from_numpy(x)))
        return
    states = {"h0": rand(num_layers * (1 + bidirectional), N, H)}
    if kind == "lstm":
        states["c0"] = rand(num_layers * (1 + bidirectional), N, H) * 0.5
    hx = tuple(torch.from_numpy(s) for s in states.values())
    with torch.no_grad():
        want = theirs(torch.from_numpy(x), hx if kind == "lstm" else hx[0])
    check(run(WithState(ours), x=x, **states), want)


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("with_state", [False, True])
def test_unbatched(kind, with_state):
    ours, theirs = twins(kind, num_layers=2, bidirectional=True, batch_first=True)
    x = rand(L, I)
    if not with_state:
        with torch.no_grad():
            check(run(ours, input=x), theirs(torch.from_numpy(x)))
        return
    states = {"h0": rand(4, H)} | ({"c0": rand(4, H)} if kind == "lstm" else {})
    hx = tuple(torch.from_numpy(s) for s in states.values())
    with torch.no_grad():
        want = theirs(torch.from_numpy(x), hx if kind == "lstm" else hx[0])
    check(run(WithState(ours), x=x, **states), want)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_no_bias_single_step(kind):
    ours, theirs = twins(kind, bias=False)
    x = rand(1, N, I)
    with torch.no_grad():
        check(run(ours, input=x), theirs(torch.from_numpy(x)))


@pytest.mark.filterwarnings("ignore:LSTM with projections")
def test_lstm_projection():
    ours, theirs = twins("lstm", num_layers=2, bidirectional=True, proj_size=3)
    assert ours.state_dict()["weight_hr_l1_reverse"].shape == (3, H)
    x, h0, c0 = rand(L, N, I), rand(4, N, 3), rand(4, N, H)
    with torch.no_grad():
        want = theirs(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0)))
    check(run(WithState(ours), x=x, h0=h0, c0=c0), want)


@pytest.mark.parametrize("kcls,tcls,kw", [
    (RNNCell, torch.nn.RNNCell, {}), (RNNCell, torch.nn.RNNCell, {"nonlinearity": "relu"}),
    (LSTMCell, torch.nn.LSTMCell, {}), (GRUCell, torch.nn.GRUCell, {}),
    (GRUCell, torch.nn.GRUCell, {"bias": False})])
@pytest.mark.parametrize("batched", [True, False])
def test_cells(kcls, tcls, kw, batched):
    theirs, ours = tcls(I, H, **kw), kcls(I, H, **kw)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    lead = (N,) if batched else ()
    x, h, c = rand(*lead, I), rand(*lead, H), rand(*lead, H)
    with torch.no_grad():
        check(run(ours, input=x), theirs(torch.from_numpy(x)))
        if kcls is LSTMCell:
            want = theirs(torch.from_numpy(x), (torch.from_numpy(h), torch.from_numpy(c)))
            check(run(WithState(ours), x=x, h0=h, c0=c), want)
        else:
            check(run(WithState(ours), x=x, h0=h), theirs(torch.from_numpy(x),
                                                           torch.from_numpy(h)))


def test_symbolic_batch():
    ours, theirs = twins("gru", num_layers=2, batch_first=True)
    graph = trace(ours, input=TensorSpec(("batch", L, I)))
    assert graph.outputs[0].type.shape == ("batch", L, H)
    x = rand(3, L, I)
    with torch.no_grad():
        check(interpret(graph, {"input": x}), theirs(torch.from_numpy(x)))


def test_unrolled_with_one_input_projection():
    ours, _ = twins("lstm")
    graph = trace(ours, input=TensorSpec((6, N, I)))
    ops = [n.op for n in graph.nodes]
    assert ops.count("matmul") == 1 + 5  # the input projection, then W_hh once per later step
    assert ops.count("tanh") == 6 * 2


def test_init_and_dropout():
    manual_seed(3)
    a = LSTM(I, H, num_layers=2, dropout=0.5)
    manual_seed(3)
    b = LSTM(I, H, num_layers=2, dropout=0.5)
    bound = 1 / np.sqrt(H)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert x.dtype == np.float32 and np.array_equal(x, y), name
        assert np.abs(x).max() <= bound and np.abs(x).max() > bound / 2, name
    ops_eval = [n.op for n in trace(a, input=TensorSpec((L, N, I))).nodes]
    ops_train = [n.op for n in trace(a.train(), input=TensorSpec((L, N, I))).nodes]
    assert "dropout" not in ops_eval and ops_train.count("dropout") == 1


@pytest.mark.parametrize("shape,match", [
    ((L, N, I + 1), r"LSTM at .*: input float32\[3, 2, 5\] must be \[L, N, H_in\] or unbatched "
                    r"\[L, H_in\] with H_in = input_size = 4"),
    ((L, N, 1, I), r"LSTM at .*: input float32\[3, 2, 1, 4\] must be"),
    (("T", N, I), r"LSTM at .*: the sequence length must be a static int.*\['T', 2, 4\]"),
])
def test_bad_input(shape, match):
    with pytest.raises(ShapeError, match=match):
        trace(LSTM(I, H), input=TensorSpec(shape))


def test_bad_state_names_layer_and_shapes():
    class Net(Module):
        def __init__(self):
            super().__init__()
            self.rnn = GRU(I, H, num_layers=2)

        def forward(self, x, h0):
            return self.rnn(x, h0)

    with pytest.raises(ShapeError, match=r"GRU at test_recurrent.py:\d+ \[rnn \(GRU\)\]: h_0 "
                                         r"float32\[1, 2, 5\] must be \[2, 2, 5\]"):
        trace(Net(), x=TensorSpec((L, N, I)), h0=TensorSpec((1, N, H)))
    with pytest.raises(ShapeError, match="pair"):
        trace(WithState(LSTM(I, H)), x=TensorSpec((L, N, I)), h0=TensorSpec((1, N, H)))
    with pytest.raises(ShapeError, match=r"LSTMCell at .*: input float32\[2, 3\] must be "
                                         r"\[N, 4\]"):
        trace(LSTMCell(I, H), input=TensorSpec((N, 3)))
    with pytest.raises(ShapeError, match=r"GRUCell at .*: hidden state float32\[2, 4\] must be "
                                         r"\[2, 5\]"):
        trace(WithState(GRUCell(I, H)), x=TensorSpec((N, I)), h0=TensorSpec((N, I)))


@pytest.mark.parametrize("make,match", [
    (lambda: RNN(I, H, nonlinearity="gelu"), "nonlinearity 'gelu'"),
    (lambda: RNNBase("GRU", I, H, proj_size=2), "proj_size is for LSTM only"),
    (lambda: RNNBase("SRU", I, H), "unknown mode"),
    (lambda: LSTM(I, H, proj_size=H), "proj_size must be in"),
    (lambda: LSTM(I, H, num_layers=0), "num_layers"),
    (lambda: GRU(I, H, dropout=1.5), "dropout"),
])
def test_bad_options(make, match):
    with pytest.raises(KilnError, match=match):
        make()


# -- the example models ----------------------------------------------------------------------


def example_module():
    return module_at(pathlib.Path(__file__).resolve().parents[2] / "examples" / "lstm.py",
                     "_example_lstm")


class TorchClassifier(torch.nn.Module):
    """examples/lstm.py's SequenceClassifier, in PyTorch."""

    def __init__(self, cell="lstm", input_size=16, hidden_size=32, num_layers=2, num_classes=5,
                 bidirectional=True, batch_first=False):
        super().__init__()
        cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
        self.cell, self.directions = cell, 2 if bidirectional else 1
        self.rnn = cls(input_size, hidden_size, num_layers=num_layers, batch_first=batch_first,
                       bidirectional=bidirectional)
        self.fc = torch.nn.Linear(hidden_size * self.directions, num_classes)

    def forward(self, x):
        _, state = self.rnn(x)
        h_n = state[0] if self.cell == "lstm" else state
        return self.fc(torch.cat([h_n[-self.directions + i] for i in range(self.directions)], -1))


@pytest.mark.parametrize("name,twin,shape", [
    ("LSTMClassifier", lambda: TorchClassifier("lstm"), (8, 2, 16)),
    ("GRUClassifier", lambda: TorchClassifier("gru"), (8, 2, 16)),
    ("RNNClassifier", lambda: TorchClassifier("rnn"), (8, 2, 16)),
    ("lstm_batch_first", lambda: TorchClassifier("lstm", num_layers=1, bidirectional=False,
                                                 batch_first=True), (2, 8, 16)),
])
def test_examples(name, twin, shape):
    ours, theirs = getattr(example_module(), name)(), twin().eval()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    x = rand(*shape)
    with torch.no_grad():
        check(run(ours, x=x), theirs(torch.from_numpy(x)))
