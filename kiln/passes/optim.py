"""Optimizers as graph builders: SGD (momentum, dampening, Nesterov, weight decay), Adam and
Adadelta, with torch.optim's update formulas.

An optimizer declares its state (``state_types``: per-parameter buffers named
``<param>.<slot>``, and a scalar int64 ``step`` where it counts steps) and emits one step's
update (``update``): new parameters and new state from the parameters, their gradients and the
state. All state starts at zero, which reproduces PyTorch's lazily created buffers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from kiln.errors import KilnError
from kiln.ir.types import TensorType
from kiln.passes.autodiff import Emitter, Var

State = dict[str, Var]


class Optimizer:
    """Base class: subclasses set ``slots`` and implement ``update_param``."""

    slots: tuple[str, ...] = ()

    def counts_steps(self) -> bool:
        """Whether the state holds a step counter ``step`` (int64, starting at 0)."""
        return False

    def state_types(self, params: Mapping[str, TensorType]) -> dict[str, TensorType]:
        """State name -> type, for parameters name -> type."""
        out = {f"{name}.{slot}": t for name, t in params.items() for slot in self.slots}
        if self.counts_steps():
            out["step"] = TensorType((), "int64")
        return out

    def update(self, em: Emitter, params: Mapping[str, Var], grads: Mapping[str, Var],
               state: Mapping[str, Var]) -> tuple[dict[str, Var], State]:
        """One step: (new parameters, new state), keyed like the inputs."""
        step = state.get("step")
        new_params, new_state = {}, {}
        for name, p in params.items():
            slots = {s: state[f"{name}.{s}"] for s in self.slots}
            new_params[name], slots = self.update_param(em, p, grads[name], slots, step)
            new_state.update({f"{name}.{s}": v for s, v in slots.items()})
        if step is not None:
            new_state["step"] = step + 1
        return new_params, new_state

    def update_param(self, em: Emitter, p: Var, g: Var, slots: State,
                     step: Var | None) -> tuple[Var, State]:
        """The new value of one parameter and of its slots; ``step`` counts earlier steps."""
        raise NotImplementedError

    def _check(self, **values: float) -> None:
        for key, v in values.items():
            if not v >= 0:
                raise KilnError(f"{type(self).__name__}: {key} must be >= 0, got {v}")


@dataclass
class SGD(Optimizer):
    """torch.optim.SGD: d = g + wd p; buf = momentum buf + (1 - dampening) d (buf = d at the
    first step); d = d + momentum buf (Nesterov) or buf; p -= lr d."""

    lr: float = 1e-3
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        self._check(lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise KilnError("SGD: Nesterov momentum requires a momentum and zero dampening")
        self.slots = ("momentum_buffer",) if self.momentum else ()

    def counts_steps(self) -> bool:
        # with dampening, the first step differs (the buffer starts as the gradient itself)
        return bool(self.momentum and self.dampening)

    def update_param(self, em, p, g, slots, step):
        d = g + self.weight_decay * p if self.weight_decay else g
        if self.momentum:
            buf = self.momentum * slots["momentum_buffer"] + (1 - self.dampening) * d
            if self.dampening:
                buf = em.where(em.equal(step, 0), d, buf)
            slots = {"momentum_buffer": buf}
            d = d + self.momentum * buf if self.nesterov else buf
        return p - self.lr * d, slots


@dataclass
class Adam(Optimizer):
    """torch.optim.Adam (L2 weight decay added to the gradient, bias-corrected moments)."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    slots = ("exp_avg", "exp_avg_sq")

    def __post_init__(self) -> None:
        self._check(lr=self.lr, eps=self.eps, weight_decay=self.weight_decay)
        if not all(0 <= b < 1 for b in self.betas):
            raise KilnError(f"Adam: betas must be in [0, 1), got {self.betas}")

    def counts_steps(self) -> bool:
        return True

    def update_param(self, em, p, g, slots, step):
        b1, b2 = self.betas
        d = g + self.weight_decay * p if self.weight_decay else g
        m, v = slots["exp_avg"], slots["exp_avg_sq"]
        m = m + (1 - b1) * (d - m)  # torch's lerp
        v = b2 * v + (1 - b2) * d * d
        t = em.cast(step + 1, dtype=p.dtype)
        step_size = self.lr / (1 - b1 ** t)
        denom = em.sqrt(v) / em.sqrt(1 - b2 ** t) + self.eps
        return p - step_size * m / denom, {"exp_avg": m, "exp_avg_sq": v}


@dataclass
class Adadelta(Optimizer):
    """torch.optim.Adadelta: E[g^2] and E[dx^2] running averages with decay rho."""

    lr: float = 1.0
    rho: float = 0.9
    eps: float = 1e-6
    weight_decay: float = 0.0
    slots = ("square_avg", "acc_delta")

    def __post_init__(self) -> None:
        self._check(lr=self.lr, eps=self.eps, weight_decay=self.weight_decay)
        if not 0 <= self.rho <= 1:
            raise KilnError(f"Adadelta: rho must be in [0, 1], got {self.rho}")

    def update_param(self, em, p, g, slots, step):
        rho = self.rho
        d = g + self.weight_decay * p if self.weight_decay else g
        square_avg = rho * slots["square_avg"] + (1 - rho) * d * d
        acc = slots["acc_delta"]
        delta = em.sqrt(acc + self.eps) / em.sqrt(square_avg + self.eps) * d
        acc = rho * acc + (1 - rho) * delta * delta
        return p - self.lr * delta, {"square_avg": square_avg, "acc_delta": acc}
