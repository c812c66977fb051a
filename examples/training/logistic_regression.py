"""Logistic regression on a separable toy set: two Gaussian blobs in 2-D, one per class.

The model is one ``kiln.nn.Linear(2, 1)`` producing a logit; the loss is binary cross-entropy
on logits (``"bce_with_logits"``: the stable form of sigmoid + BCE). Training uses
``Trainer.fit`` (shuffled mini-batches) with a symbolic batch size ``"N"``, so the same forward
graph then predicts all points at once. The blobs are separable, so training reaches 100%
accuracy.

Run it (after ``pip install -e .``)::

    python examples/training/logistic_regression.py
"""

from __future__ import annotations

import numpy as np

import kiln
from kiln import nn
from kiln.passes.optim import SGD
from kiln.train import Trainer


def toy_data(n_per_class: int = 50, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """x: [2n, 2] float32 points around (-2, -2) (class 0) and (2, 2) (class 1); y: [2n, 1]
    float32 labels 0.0 / 1.0."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(-2, 0.7, (n_per_class, 2)),
                        rng.normal(2, 0.7, (n_per_class, 2))]).astype(np.float32)
    y = np.repeat([0.0, 1.0], n_per_class)[:, None].astype(np.float32)
    return x, y


def train(epochs: int = 10, batch_size: int = 10, lr: float = 0.5,
          verbose: bool = False) -> tuple[float, list[float]]:
    """Train on the toy set; returns (accuracy on it, mean loss of each epoch)."""
    x, y = toy_data()
    nn.manual_seed(0)
    model = nn.Linear(2, 1)
    trainer = Trainer(model, "bce_with_logits", SGD(lr=lr),
                      inputs={"x": kiln.TensorSpec(("N", 2))})
    history = trainer.fit({"x": x}, y, batch_size=batch_size, epochs=epochs, seed=0)
    if verbose:
        for epoch, loss in enumerate(history, 1):
            print(f"epoch {epoch:2d}/{epochs}  loss {loss:.4f}")
    (logits,) = trainer.predict(x=x)
    accuracy = float(np.mean((logits > 0) == (y > 0.5)))
    return accuracy, history


def main() -> None:
    accuracy, _ = train(verbose=True)
    print(f"accuracy {accuracy:.1%} on {len(toy_data()[0])} points")


if __name__ == "__main__":
    main()
