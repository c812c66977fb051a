"""The Atari DQN Q-network (Mnih et al., 2015, "Human-level control through deep
reinforcement learning") and its one-step TD loss.

``DQN`` maps a stack of 4 grey 84x84 frames (pixel values 0..255, as float32) to one Q-value
per action: conv 32 8x8/4, conv 64 4x4/2, conv 64 3x3/1, dense 512, dense num_actions, ReLUs
between. Its module names are CleanRL's ``dqn_atari.py`` (``network.0`` ... ``network.9``,
frames divided by 255 inside), so those checkpoints load.

``DQNLoss`` is the loss of a batch of transitions (s, a, r, done, s'), with the target
network's Q-values Q'(s', .) given as an input (the target network runs separately, e.g. the
same compiled Q-network with older weights)::

    y    = r + gamma * (1 - done) * max_a' Q'(s', a')
    loss = mean(huber(Q(s, a) - y))          # or the squared error, huber=False

Huber with delta 1 is PyTorch's ``smooth_l1_loss`` (the paper's error clipping). The loss is
a Module traced like a model: ``dqn_loss_graph`` appends its gradients with ``kiln.grad``, and
``dqn_trainer`` makes a ``Trainer`` of it (``loss=None``: the model is its own loss), whose
compiled step runs forward, TD loss, backward and the optimizer's update as one program.

Run with the kiln CLI::

    kiln show examples/dqn.py:DQN --input x=1x4x84x84:float32
    kiln interpret examples/dqn.py:dqn_small --input x=2x4x44x44
"""

from __future__ import annotations

from typing import Any, Sequence

import kiln
from kiln import nn, ops


def conv_output_size(size: int, kernels: Sequence[tuple[int, int]]) -> int:
    """The side of the feature map after unpadded convolutions of (kernel, stride)."""
    for kernel, stride in kernels:
        size = (size - kernel) // stride + 1
    return size


class DQN(nn.Module):
    """Frames [N, in_channels, input_size, input_size] in 0..255 -> Q-values [N, actions]."""

    def __init__(self, num_actions: int = 18, in_channels: int = 4, input_size: int = 84,
                 channels: Sequence[int] = (32, 64, 64), hidden: int = 512):
        super().__init__()
        self.num_actions, self.in_channels, self.input_size = num_actions, in_channels, input_size
        c1, c2, c3 = channels
        side = conv_output_size(input_size, [(8, 4), (4, 2), (3, 1)])
        if side < 1:
            raise ValueError(f"input_size {input_size} is too small: at least 36")
        self.network = nn.Sequential(
            nn.Conv2d(in_channels, c1, 8, stride=4), nn.ReLU(),
            nn.Conv2d(c1, c2, 4, stride=2), nn.ReLU(),
            nn.Conv2d(c2, c3, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
            nn.Linear(c3 * side * side, hidden), nn.ReLU(),  # 3136 = 64 x 7 x 7 at 84x84
            nn.Linear(hidden, num_actions),
        )

    def forward(self, x: Any) -> Any:
        return self.network(x / 255.0)


class DQNLoss(nn.Module):
    """The mean TD loss of a batch: ``obs`` [N, C, H, W] float32, ``action`` [N] int64,
    ``reward`` [N] float32, ``done`` [N] float32 (1 at episode ends: no bootstrap),
    ``next_q`` [N, num_actions] the target network's Q-values of the next observations.
    Parameters are the Q-network's, under ``q_net.``."""

    def __init__(self, q_net: nn.Module, gamma: float = 0.99, huber: bool = True):
        super().__init__()
        self.q_net, self.gamma, self.huber = q_net, gamma, huber

    def forward(self, obs: Any, action: Any, reward: Any, done: Any, next_q: Any) -> Any:
        q = self.q_net(obs)
        q_taken = ops.take_along_axis(q, action.unsqueeze(1), axis=1).squeeze(1)
        target = reward + self.gamma * (1.0 - done) * next_q.max(1)
        td = q_taken - target
        if not self.huber:
            return (td * td).mean()
        err = abs(td)  # 0.5 td^2 inside [-1, 1], linear outside
        return ops.where(err < 1.0, 0.5 * td * td, err - 0.5).mean()


def dqn_loss_graph(q_net: DQN, batch_size: int, gamma: float = 0.99,
                   huber: bool = True) -> kiln.Graph:
    """The TD loss of ``batch_size`` transitions traced for ``q_net``, followed by its
    gradient with respect to every parameter (outputs: loss, then ``grad_q_net.<name>`` in
    ``named_parameters`` order)."""
    n, c, side = batch_size, q_net.in_channels, q_net.input_size
    loss = DQNLoss(q_net, gamma, huber)
    graph = kiln.trace(loss, name="dqn_loss",
                       obs=kiln.TensorSpec((n, c, side, side)),
                       action=kiln.TensorSpec((n,), "int64"),
                       reward=kiln.TensorSpec((n,)), done=kiln.TensorSpec((n,)),
                       next_q=kiln.TensorSpec((n, q_net.num_actions)))
    return kiln.grad(graph, [name for name, _ in loss.named_parameters()])


def dqn_trainer(q_net: DQN, batch_size: int, optimizer: Any = None, gamma: float = 0.99,
                huber: bool = True, backend: str = "compiled") -> Any:
    """A ``Trainer`` of ``q_net`` on the TD loss of ``batch_size`` transitions:
    ``trainer.step(obs=..., action=..., reward=..., done=..., next_q=...)`` returns the loss and
    updates the parameters (default optimizer: Adam, lr 1e-4); ``trainer.params`` holds them
    by ``q_net.``-prefixed name."""
    from kiln.passes.optim import Adam
    from kiln.train import Trainer

    n, c, side = batch_size, q_net.in_channels, q_net.input_size
    specs = {"obs": kiln.TensorSpec((n, c, side, side)),
             "action": kiln.TensorSpec((n,), "int64"), "reward": kiln.TensorSpec((n,)),
             "done": kiln.TensorSpec((n,)), "next_q": kiln.TensorSpec((n, q_net.num_actions))}
    return Trainer(DQNLoss(q_net, gamma, huber), None, optimizer or Adam(lr=1e-4),
                   inputs=specs, backend=backend)


def dqn() -> DQN:
    """The Nature DQN for all 18 Atari actions on 4x84x84 frames (1.7M parameters)."""
    return DQN()


def dqn_small(num_actions: int = 4) -> DQN:
    """A narrow DQN for 4x44x44 frames (channels 8-16-16, 2x2 last map, hidden 32)."""
    return DQN(num_actions, input_size=44, channels=(8, 16, 16), hidden=32)
