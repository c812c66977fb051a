"""LeNet-5 (LeCun et al., 1998): two convolution + subsampling stages and three fully
connected layers, for 1x32x32 images (or 1x28x28 MNIST digits, padded by 2 in conv1).

Run with the kiln CLI::

    kiln show examples/lenet.py:LeNet5 --input x=1x1x32x32:float32
    kiln interpret examples/lenet.py:LeNet5 --input x=1x1x32x32
    kiln show examples/lenet.py:lenet5_mnist --input x=Nx1x28x28:float32
"""

from __future__ import annotations

from typing import Any

from kiln import nn


class LeNet5(nn.Module):
    """conv(5x5, 6) - act - pool - conv(5x5, 16) - act - pool - fc 120 - act - fc 84 - act - fc.

    ``activation`` is 'tanh' (the paper) or 'relu'; ``pool`` is 'avg' (the paper's
    subsampling) or 'max'; ``input_size`` 28 pads conv1 by 2 so the rest is unchanged.
    """

    def __init__(self, num_classes: int = 10, input_size: int = 32, activation: str = "tanh",
                 pool: str = "avg"):
        super().__init__()
        if input_size not in (28, 32):
            raise ValueError(f"LeNet5 takes 28x28 or 32x32 inputs, not {input_size}")
        acts = {"tanh": nn.Tanh, "relu": nn.ReLU}
        pools = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}
        if activation not in acts or pool not in pools:
            raise ValueError(f"activation must be one of {list(acts)} and pool one of "
                             f"{list(pools)}, got {activation!r} and {pool!r}")
        self.conv1 = nn.Conv2d(1, 6, kernel_size=5, padding=(32 - input_size) // 2)
        self.act = acts[activation]()
        self.pool = pools[pool](kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: Any) -> Any:
        x = self.pool(self.act(self.conv1(x)))  # [N, 6, 14, 14]
        x = self.pool(self.act(self.conv2(x)))  # [N, 16, 5, 5]
        x = self.flatten(x)
        x = self.act(self.fc1(x))
        x = self.act(self.fc2(x))
        return self.fc3(x)


def lenet5_mnist() -> LeNet5:
    """The common MNIST variant: 28x28 inputs, ReLU and max pooling."""
    return LeNet5(input_size=28, activation="relu", pool="max")
