"""Training losses: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss, from gathers and
reductions."""

from __future__ import annotations

import numpy as np

from kiln.frontend.onnx.context import NodeContext, Ref
from kiln.frontend.onnx.registry import converter


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


@converter("NegativeLogLikelihoodLoss", 13, 22)
def negative_log_likelihood_loss(n: NodeContext) -> Ref:
    return nll(n, n.x, n.inputs[1], n.input(2))


@converter("SoftmaxCrossEntropyLoss", 13)
def softmax_cross_entropy_loss(n: NodeContext) -> list[Ref]:
    logp = n.op("log_softmax", n.x, axis=1)
    return [nll(n, logp, n.inputs[1], n.input(2)), logp]
