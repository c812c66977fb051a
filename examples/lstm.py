"""Recurrent sequence classifiers: an LSTM (or GRU, or Elman RNN) reads a sequence of feature
vectors; the final hidden states of the last layer (both directions) feed a linear classifier.

The sequence length must be static (kiln unrolls the recurrence); the batch may be symbolic.
Run with the kiln CLI::

    kiln show examples/lstm.py:LSTMClassifier --input x=8x1x16:float32
    kiln interpret examples/lstm.py:GRUClassifier --input x=8x4x16
    kiln show examples/lstm.py:RNNClassifier --input x=8xNx16:float32   # symbolic batch
    kiln show examples/lstm.py:lstm_batch_first --input x=2x8x16:float32

or from Python::

    import kiln, numpy as np
    from examples.lstm import LSTMClassifier
    graph = kiln.trace(LSTMClassifier(), x=kiln.TensorSpec((8, 1, 16)))
    kiln.interpret(graph, {"x": np.zeros((8, 1, 16), np.float32)})
"""

from __future__ import annotations

from typing import Any

from kiln import nn, ops

_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class SequenceClassifier(nn.Module):
    """``cell`` ('lstm', 'gru' or 'rnn') over x [L, N, input_size] ([N, L, input_size] if
    batch_first), then ``Linear(hidden_size * directions, num_classes)`` on the last layer's
    final hidden state(s). Returns logits [N, num_classes]."""

    def __init__(self, cell: str = "lstm", input_size: int = 16, hidden_size: int = 32,
                 num_layers: int = 2, num_classes: int = 5, bidirectional: bool = True,
                 batch_first: bool = False, dropout: float = 0.0):
        super().__init__()
        if cell not in _CELLS:
            raise ValueError(f"cell must be one of {sorted(_CELLS)}, got {cell!r}")
        self.cell = cell
        self.rnn = _CELLS[cell](input_size, hidden_size, num_layers=num_layers,
                                batch_first=batch_first, dropout=dropout,
                                bidirectional=bidirectional)
        self.directions = 2 if bidirectional else 1
        self.fc = nn.Linear(hidden_size * self.directions, num_classes)

    def forward(self, x: Any) -> Any:
        _, state = self.rnn(x)
        h_n = state[0] if self.cell == "lstm" else state  # [layers * directions, N, H]
        last = [h_n[-self.directions + i] for i in range(self.directions)]
        features = last[0] if len(last) == 1 else ops.concat(last, axis=-1)
        return self.fc(features)


class LSTMClassifier(SequenceClassifier):
    """A 2-layer bidirectional LSTM classifier (16 features, 32 hidden, 5 classes)."""

    def __init__(self, **kwargs: Any):
        super().__init__("lstm", **kwargs)


class GRUClassifier(SequenceClassifier):
    """The same with a GRU."""

    def __init__(self, **kwargs: Any):
        super().__init__("gru", **kwargs)


class RNNClassifier(SequenceClassifier):
    """The same with a tanh Elman RNN."""

    def __init__(self, **kwargs: Any):
        super().__init__("rnn", **kwargs)


def lstm_batch_first() -> SequenceClassifier:
    """A one-layer, one-direction LSTM classifier taking batch-first input [N, L, 16]."""
    return SequenceClassifier("lstm", num_layers=1, bidirectional=False, batch_first=True)
