"""Rosenblatt's perceptron learning AND and OR, with the classic perceptron rule.

A perceptron outputs y = heaviside(w . x + b) (1 if w . x + b >= 0, else 0). Its step has no
useful gradient (zero almost everywhere, so ``kiln.grad`` cannot train it); the classic rule
needs none. For each sample in turn::

    y = heaviside(w . x + b);   w <- w + lr (t - y) x;   b <- b + lr (t - y)

The rule is one kiln graph, traced from ``update`` below; the loop feeds the new w and b back
in, one sample at a time, until a whole pass makes no mistake (the perceptron convergence
theorem guarantees it for linearly separable data such as AND and OR; XOR never converges).
With lr = 1 and 0/1 inputs the weights stay small integers, exact in float32, so rounding
never decides a sample that lands on w . x + b = 0.

Run it (after ``pip install -e .``)::

    python examples/training/perceptron.py
"""

from __future__ import annotations

from typing import Any

import numpy as np

import kiln
from kiln import ops

INPUTS = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
TARGETS = {"AND": np.array([0, 0, 0, 1], np.float32), "OR": np.array([0, 1, 1, 1], np.float32)}


def update(x: Any, t: Any, w: Any, b: Any, lr: Any) -> tuple[Any, Any, Any]:
    """One step of the perceptron rule on one sample: (prediction, new w, new b)."""
    y = ops.heaviside((x * w).sum() + b)
    error = t - y  # -1, 0 or +1
    return y, w + lr * error * x, b + lr * error


def rule_graph() -> kiln.Graph:
    """``update`` traced for 2 inputs; every argument is a graph input."""
    scalar, pair = kiln.TensorSpec(()), kiln.TensorSpec((2,))
    return kiln.trace(update, name="perceptron_rule", x=pair, t=scalar, w=pair, b=scalar,
                      lr=scalar)


def train(targets: np.ndarray, lr: float = 1.0, max_epochs: int = 100,
          verbose: bool = False) -> tuple[np.ndarray, float, int]:
    """Learn ``targets`` (one per row of INPUTS) from w = 0, b = 0; returns (w, b, epochs until
    a pass without mistakes)."""
    graph = rule_graph()
    w, b = np.zeros(2, np.float32), np.float32(0)
    lr32 = np.float32(lr)
    for epoch in range(1, max_epochs + 1):
        mistakes = 0
        for x, t in zip(INPUTS, targets):
            y, w, b = kiln.interpret(graph, {"x": x, "t": t, "w": w, "b": b, "lr": lr32})
            mistakes += int(y != t)
        if verbose:
            print(f"  epoch {epoch}: mistakes {mistakes}, w = {w.tolist()}, b = {float(b)}")
        if mistakes == 0:
            return w, float(b), epoch
    raise RuntimeError(f"the perceptron did not converge in {max_epochs} epochs")


def predict(w: np.ndarray, b: float) -> np.ndarray:
    """heaviside(x w + b) for every row of INPUTS, as a kiln graph."""
    graph = kiln.trace(lambda x: ops.heaviside(x @ w + np.float32(b)), name="perceptron",
                       x=kiln.TensorSpec(INPUTS.shape))
    (y,) = kiln.interpret(graph, {"x": INPUTS})
    return y


def main() -> None:
    for name, targets in TARGETS.items():
        print(f"{name}:")
        w, b, epochs = train(targets, verbose=True)
        y = predict(w, b)
        table = ", ".join(f"{a:.0f}{name[0]}{c:.0f}={o:.0f}" for (a, c), o in zip(INPUTS, y))
        print(f"  learned in {epochs} epochs: {table}; accuracy {np.mean(y == targets):.0%}")


if __name__ == "__main__":
    main()
