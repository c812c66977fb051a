"""Multi-layer perceptrons: the classic worked example with fixed weights, and a general MLP.

The worked example has 3 inputs, 4 ReLU hidden units and 2 softmax outputs. For the input
x = [1.0, 0.5, 0.3] its hidden pre-activations are [0.68, 0.84, 1.72, 1.16], its logits
[2.972, 2.632], and its outputs softmax([2.972, 2.632]) = [0.5842, 0.4158].

Run with the kiln CLI::

    kiln show examples/mlp.py:worked_example --input x=1x3:float32
    kiln show examples/mlp.py:MLP --input x=1x784:float32
    kiln show examples/mlp.py:MLP --input x=Nx784:float32      # symbolic batch

or from Python::

    import kiln, numpy as np
    from examples.mlp import worked_example
    graph = kiln.trace(worked_example(), x=kiln.TensorSpec((1, 3)))
    kiln.interpret(graph, {"x": np.array([[1.0, 0.5, 0.3]], np.float32)})
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from kiln import nn

W1 = [[0.2, 0.4, 0.6], [0.5, 0.1, 0.3], [0.8, 0.7, 0.9], [0.3, 0.5, 0.7]]
B1 = [0.1, 0.2, 0.3, 0.4]
W2 = [[0.3, 0.5, 0.7, 0.9], [0.2, 0.4, 0.6, 0.8]]
B2 = [0.1, 0.2]


class MLP(nn.Module):
    """Linear layers of the given ``sizes`` with ReLU between them; ``softmax`` adds a final
    softmax over the last axis (for probabilities rather than logits)."""

    def __init__(self, sizes: Sequence[int] = (784, 512, 512, 10), softmax: bool = False):
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"an MLP needs at least an input and an output size, got {sizes}")
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        if softmax:
            layers.append(nn.Softmax(dim=-1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Any) -> Any:
        return self.layers(x)


def worked_example() -> MLP:
    """The 3-4-2 network with the fixed weights above and a softmax output."""
    model = MLP((3, 4, 2), softmax=True)
    model.load_state_dict({
        "layers.0.weight": np.array(W1, np.float32), "layers.0.bias": np.array(B1, np.float32),
        "layers.2.weight": np.array(W2, np.float32), "layers.2.bias": np.array(B2, np.float32),
    })
    return model
