"""Loss functions as graph builders, with PyTorch's formulas and reductions.

Each takes an ``Emitter``, the prediction and the target (``Var``s) and returns the loss: a
scalar for ``reduction="mean"`` (the mean over every element, or over every sample for
cross-entropy, as PyTorch) or ``"sum"``, the per-element losses for ``"none"``::

    loss = softmax_cross_entropy(em, logits, labels)   # labels: int class indices

Everything is built from differentiable ops, numerically stable forms included
(``log_softmax``; ``softplus`` for binary cross-entropy with logits).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

from kiln.errors import KilnError
from kiln.ir.types import TensorType, is_float, is_int
from kiln.passes.autodiff import Emitter, Var

LossFn = Callable[[Emitter, Var, Var], Var]


def reduce(em: Emitter, losses: Var, reduction: str) -> Var:
    """PyTorch's ``reduction``: 'mean', 'sum' or 'none'."""
    if reduction == "mean":
        return em.mean(losses)
    if reduction == "sum":
        return em.sum(losses)
    if reduction == "none":
        return losses
    raise KilnError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _same_type(pred: Var, target: Var, what: str) -> None:
    if not is_float(target.dtype) or target.type != pred.type:
        raise KilnError(f"{what}: the target must have the prediction's type {pred.type}, got "
                        f"{target.type}")


def mse_loss(em: Emitter, pred: Var, target: Var, reduction: str = "mean") -> Var:
    """(pred - target)^2."""
    _same_type(pred, target, "mse_loss")
    diff = pred - target
    return reduce(em, diff * diff, reduction)


def clamped_log(em: Emitter, p: Var) -> Var:
    """log(p) clamped below at -100 (PyTorch's BCELoss), with a finite gradient at p = 0."""
    positive = p > 0
    return em.where(positive, em.maximum(em.log(em.where(positive, p, 1)), -100), -100)


def binary_cross_entropy(em: Emitter, prob: Var, target: Var, reduction: str = "mean") -> Var:
    """-(t log p + (1 - t) log(1 - p)) from probabilities, logs clamped at -100 as PyTorch."""
    _same_type(prob, target, "binary_cross_entropy")
    losses = -(target * clamped_log(em, prob) + (1 - target) * clamped_log(em, 1 - prob))
    return reduce(em, losses, reduction)


def binary_cross_entropy_with_logits(em: Emitter, logits: Var, target: Var,
                                     reduction: str = "mean") -> Var:
    """BCE of sigmoid(x) in the stable form softplus(x) - t x (no log of 0, no overflow)."""
    _same_type(logits, target, "binary_cross_entropy_with_logits")
    return reduce(em, em.softplus(logits) - logits * target, reduction)


def _class_axis(logits: Var, axis: int | None) -> int:
    """PyTorch's class dimension: 1 for [N, C, ...], 0 for [C]."""
    if logits.rank == 0:
        raise KilnError(f"cross-entropy needs logits of rank >= 1, got {logits.type}")
    if axis is None:
        return 1 if logits.rank >= 2 else 0
    return axis % logits.rank


def softmax_cross_entropy(em: Emitter, logits: Var, target: Var, reduction: str = "mean",
                          axis: int | None = None) -> Var:
    """PyTorch's ``cross_entropy`` from logits: -log_softmax(logits)[target] for integer class
    indices (shape of logits without the class axis), or -sum(target * log_softmax(logits))
    for class probabilities or one-hot rows (shape of logits). ``axis`` is the class axis
    (default: 1, or 0 for 1-D logits)."""
    axis = _class_axis(logits, axis)
    logp = em.log_softmax(logits, axis=axis)
    if is_int(target.dtype):
        want = logits.shape[:axis] + logits.shape[axis + 1:]
        if tuple(target.shape) != want:
            raise KilnError(f"softmax_cross_entropy: class indices must have shape {list(want)} "
                            f"(the logits' {logits.type} without class axis {axis}), got "
                            f"{target.type}")
        picked = em.take_along_axis(logp, em.unsqueeze(target, axes=(axis,)), axis=axis)
        return reduce(em, -em.squeeze(picked, axes=(axis,)), reduction)
    _same_type(logits, target, "softmax_cross_entropy with class probabilities")
    return reduce(em, -em.sum(target * logp, axes=(axis,)), reduction)


cross_entropy = softmax_cross_entropy


def class_index_type(pred: TensorType) -> TensorType:
    """The type of integer labels for ``pred`` (logits): its shape without the class axis."""
    axis = 1 if pred.rank >= 2 else 0
    return TensorType(pred.shape[:axis] + pred.shape[axis + 1:], "int64")


LOSSES: dict[str, LossFn] = {
    "mse": mse_loss, "mse_loss": mse_loss,
    "bce": binary_cross_entropy, "binary_cross_entropy": binary_cross_entropy,
    "bce_with_logits": binary_cross_entropy_with_logits,
    "binary_cross_entropy_with_logits": binary_cross_entropy_with_logits,
    "cross_entropy": softmax_cross_entropy, "softmax_cross_entropy": softmax_cross_entropy,
}


def get_loss(loss: str | LossFn) -> LossFn:
    """A loss function from its name (see ``LOSSES``) or as given (any callable
    ``(em, prediction, target) -> Var``, e.g. ``partial(mse_loss, reduction="sum")``)."""
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise KilnError(f"unknown loss {loss!r}; kiln has {', '.join(sorted(LOSSES))}, or pass "
                        "a function (em, prediction, target) -> loss")
    return LOSSES[loss]


def default_target_type(loss: LossFn, pred: TensorType) -> TensorType:
    """The target type a loss expects by default: class indices for cross-entropy, the
    prediction's type otherwise."""
    fn = loss.func if isinstance(loss, partial) else loss
    return class_index_type(pred) if fn is softmax_cross_entropy else pred
