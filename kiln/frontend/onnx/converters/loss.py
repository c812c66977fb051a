"""Training losses: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss, from gathers and
reductions."""

from __future__ import annotations

import numpy as np

from kiln.frontend.onnx.context import NodeContext, Ref
from kiln.frontend.onnx.registry import converter
from kiln.frontend.onnx.validate import Spec, one_of


def nll(n: NodeContext, logp: Ref, target: Ref, weight: Ref | None) -> Ref:
    """-logp[n, target[n, ...], ...] * weight[target], reduced as ``reduction`` says; targets
    equal to ``ignore_index`` count with weight 0."""
    target = n.cast(target, "int64")
    ignore = n.attr("ignore_index")
    valid = None
    if ignore is not None:
        valid = n.op("not_equal", target, np.int64(ignore))
        target = n.op("where", valid, target, np.int64(0))
    picked = n.op("take_along_axis", logp, n.op("unsqueeze", target, axes=(1,)), axis=1)
    loss = n.op("neg", n.op("squeeze", picked, axes=(1,)))
    w = None if weight is None else n.op("gather", weight, target)
    if valid is not None:
        mask = n.cast(valid, logp.dtype)
        w = mask if w is None else n.op("mul", w, mask)
    if w is not None:
        loss = n.op("mul", loss, w)
    reduction = n.attr("reduction", "mean")
    if reduction == "none":
        return loss
    total = n.op("sum", loss)
    if reduction == "sum":
        return total
    if w is None:
        return n.op("mean", loss)
    return n.op("div", total, n.op("sum", w))


def _targets_fit(n: NodeContext) -> str | None:
    """Targets are [N, d1, ...] for scores [N, C, d1, ...]; a weight holds one per class."""
    scores, target, weight = n.x, n.inputs[1], n.input(2)
    if target.shape != scores.shape[:1] + scores.shape[2:]:
        return f"the target {target.type} must be [N, d1, ...] for the scores {scores.type}"
    if weight is not None and weight.shape != scores.shape[1:2]:
        return f"the weight {weight.type} must hold one value per class of {scores.type}"
    return None


_LOSS = Spec(ranks={0: (2, None)}, attrs={"reduction": one_of("none", "sum", "mean")},
             checks=(_targets_fit,))


@converter("NegativeLogLikelihoodLoss", 13, 22, spec=_LOSS)
def negative_log_likelihood_loss(n: NodeContext) -> Ref:
    return nll(n, n.x, n.inputs[1], n.input(2))


@converter("SoftmaxCrossEntropyLoss", 13, spec=_LOSS)
def softmax_cross_entropy_loss(n: NodeContext) -> list[Ref]:
    logp = n.op("log_softmax", n.x, axis=1)
    return [nll(n, logp, n.inputs[1], n.input(2)), logp]
