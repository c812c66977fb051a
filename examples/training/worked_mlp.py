"""The worked 3-4-2 MLP (see ``examples/mlp.py``): gradients by hand, by ``kiln.grad``, and one
SGD step.

3 inputs, 4 ReLU hidden units, 2 outputs, softmax + cross-entropy, input x = [1.0, 0.5, 0.3],
target t = [1, 0]. Forward: hidden pre-activations z1 = W1 x + b1 = [0.68, 0.84, 1.72, 1.16]
(all positive, so every ReLU passes), logits z2 = W2 relu(z1) + b2 = [2.972, 2.632],
p = softmax(z2) = [0.58419, 0.41581], loss -log p[0] = 0.53753. Backward::

    dL/dz2 = p - t                 = [-0.41581, 0.41581]
    dL/dz1 = W2^T dL/dz2 * relu'   = [-0.041581] * 4

``kiln.grad`` differentiates with respect to inputs and parameters only; for one sample the
gradient of a layer's bias *is* the gradient of its pre-activation (z = W h + b), so the
biases' gradients are read as dL/dz2 and dL/dz1.

Run it (after ``pip install -e .``)::

    python examples/training/worked_mlp.py
"""

from __future__ import annotations

from typing import Any

import numpy as np

import kiln
from kiln import nn, ops
from kiln.passes.optim import SGD
from kiln.train import Trainer

W1 = [[0.2, 0.4, 0.6], [0.5, 0.1, 0.3], [0.8, 0.7, 0.9], [0.3, 0.5, 0.7]]
B1 = [0.1, 0.2, 0.3, 0.4]
W2 = [[0.3, 0.5, 0.7, 0.9], [0.2, 0.4, 0.6, 0.8]]
B2 = [0.1, 0.2]
X = np.array([[1.0, 0.5, 0.3]], np.float32)
TARGET = np.array([[1.0, 0.0]], np.float32)  # one-hot: class 0


def network() -> nn.Sequential:
    """The 3-4-2 network with the fixed weights, producing logits (no softmax: the loss
    applies it)."""
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    net.load_state_dict({"0.weight": np.array(W1), "0.bias": np.array(B1),
                         "2.weight": np.array(W2), "2.bias": np.array(B2)})
    return net


class WithLoss(nn.Module):
    """The network followed by softmax cross-entropy, written in the DSL: -sum(t log p)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Any, target: Any) -> Any:
        return -(target * ops.log_softmax(self.net(x), axis=-1)).sum()


def gradients() -> dict[str, np.ndarray]:
    """Loss, dL/dz2 and dL/dz1 for the worked example, computed with ``kiln.grad``."""
    graph = kiln.trace(WithLoss(network()), x=kiln.TensorSpec((1, 3)),
                       target=kiln.TensorSpec((1, 2)))
    backward = kiln.grad(graph, ["net.2.bias", "net.0.bias"])  # outputs: loss, then the grads
    loss, dz2, dz1 = kiln.interpret(backward, {"x": X, "target": TARGET})
    return {"loss": loss, "dL/dz2": dz2, "dL/dz1": dz1}


def sgd_step(lr: float = 0.1) -> tuple[float, float, dict[str, np.ndarray]]:
    """One SGD step with ``Trainer``; returns (loss before, loss after, new parameters)."""
    trainer = Trainer(network(), "cross_entropy", SGD(lr=lr), inputs={"x": kiln.TensorSpec((1, 3))},
                      target=kiln.TensorSpec((1, 2)))  # class probabilities, not indices
    before = trainer.step(TARGET, x=X)
    (logits,) = trainer.predict(x=X)
    after = float(-np.log(np.exp(logits[0, 0]) / np.exp(logits[0]).sum()))
    return before, after, trainer.params


def fmt(a: np.ndarray) -> str:
    """An array as nested lists of numbers with 5 significant digits."""
    if a.ndim == 0:
        return f"{float(a):.5g}"
    return "[" + ", ".join(fmt(row) for row in a) + "]"


def main() -> None:
    g = gradients()
    print(f"loss   = {fmt(g['loss'])}")
    print(f"dL/dz2 = {fmt(g['dL/dz2'])}   (p - t)")
    print(f"dL/dz1 = {fmt(g['dL/dz1'])}   (W2^T dL/dz2: every ReLU is active)")
    lr = 0.1
    before, after, params = sgd_step(lr)
    print(f"one SGD step, lr {lr}: loss {before:.5f} -> {after:.5f}; new parameters:")
    for name, value in params.items():
        print(f"  {name:9s}{fmt(value)}")


if __name__ == "__main__":
    main()
