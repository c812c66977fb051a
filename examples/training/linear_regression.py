"""Linear regression by gradient descent: fit y = w x + b to x = 1..5, y = 2x.

The model is ``kiln.nn.Linear(1, 1)``; ``Trainer`` builds one graph doing forward, mean squared
error, backward and the SGD update, and runs it once per step on the whole data set (full-batch
gradient descent). The fit converges to slope 2 and intercept 0.

Run it (after ``pip install -e .``)::

    python examples/training/linear_regression.py [--backend compiled]
"""

from __future__ import annotations

import argparse

import numpy as np

import kiln
from kiln import nn
from kiln.passes.optim import SGD
from kiln.train import Trainer

X = np.arange(1, 6, dtype=np.float32)[:, None]  # [5, 1]: five samples of one feature
Y = 2 * X


def train(steps: int = 300, lr: float = 0.02, momentum: float = 0.9,
          verbose: bool = False, backend: str = "interpret") -> tuple[float, float, float]:
    """Full-batch gradient descent (heavy-ball momentum) from w = b = 0 on ``backend``
    ("interpret" or "compiled"); returns (slope, intercept, final loss)."""
    model = nn.Linear(1, 1)
    model.load_state_dict({"weight": np.zeros((1, 1)), "bias": np.zeros(1)})
    trainer = Trainer(model, "mse", SGD(lr=lr, momentum=momentum),
                      inputs={"x": kiln.TensorSpec((5, 1))}, backend=backend)
    for step in range(steps):
        loss = trainer.step(Y, x=X)  # the loss before this step's update
        if verbose and (step % 50 == 0 or step == steps - 1):
            w, b = trainer.params["weight"].item(), trainer.params["bias"].item()
            print(f"step {step:4d}  loss {loss:.3e}  w {w:.5f}  b {round(b, 5) + 0.0:+.5f}")
    (pred,) = trainer.predict(x=X)
    final = float(np.mean((pred - Y) ** 2))
    return trainer.params["weight"].item(), trainer.params["bias"].item(), final


def main(backend: str = "interpret") -> None:
    slope, intercept, loss = train(verbose=True, backend=backend)
    print(f"fitted y = {slope:.4f} x {intercept:+.4f}  (want y = 2x + 0), mse {loss:.2e}")


def parse_args() -> dict:
    """``--backend interpret|compiled`` from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("interpret", "compiled"), default="interpret",
                        help="run each step in the numpy interpreter (default) or compiled "
                        "once by kiln's codegen, the state kept in the runtime")
    return vars(parser.parse_args())


if __name__ == "__main__":
    main(**parse_args())
