"""Training-step graphs: ``train_step_graph`` builds ONE graph doing forward, loss, backward
and optimizer update from a forward Graph, a loss (``kiln.passes.losses``) and an optimizer
(``kiln.passes.optim``). Pure graph construction: running the step (``Trainer``) and building
it from a Module (``make_train_step``) are in ``kiln.train``, which traces and compiles.

The step graph's signature is the contract a runtime needs::

    inputs:  *data inputs, target, *trainable parameters, *optimizer state
    outputs: loss, *new parameters, *new optimizer state

With ``loss=None`` the model computes its own scalar loss (a DQN's TD loss, a GAN's
discriminator loss: whatever needs more than one prediction and one target) and there is no
target input; everything it needs is a data input.

``outputs[1:]`` are the next values of the last ``len(outputs) - 1`` inputs, in the same order,
so a runner feeds them back as the next step's inputs. Optimizer state starts at zeros.

Errors name ``make_train_step``, the public entry point that leads here.
"""

from __future__ import annotations

from typing import Any, Sequence

from kiln.errors import KilnError
from kiln.ir.graph import Graph, GraphBuilder
from kiln.ir.types import TensorType, is_float
from kiln.passes.autodiff import Emitter, clone, grad
from kiln.passes.losses import LossFn, default_target_type, get_loss
from kiln.passes.optim import Optimizer


def float_params(graph: Graph) -> list[str]:
    """The names of ``graph``'s float parameters: what a Graph trains by default."""
    return [v.name for v in graph.params if is_float(v.dtype)]


def _as_type(spec: Any) -> TensorType:
    return spec.type() if callable(getattr(spec, "type", None)) else spec


def train_step_graph(forward: Graph, loss: str | LossFn | None, optimizer: Optimizer,
                     target: Any = None, params: Sequence[str] | None = None,
                     output: int = 0, name: str | None = None) -> Graph:
    """One training step of ``forward`` as one graph (see the module docstring for its
    signature).

    ``loss``: a name from ``kiln.passes.losses.LOSSES`` or a function ``(em, prediction,
    target) -> scalar``, applied to ``forward``'s output number ``output``; or None when that
    output is itself the (scalar) loss: then the step has no target input. ``target``: the
    target's TensorType (or anything with a ``type()`` method returning one, such as a
    TensorSpec; default: class indices for cross-entropy, else the prediction's type).
    ``params``: the names of the parameters to train (default: ``float_params(forward)``).
    """
    trainable = float_params(forward)
    if params is not None:
        known = {v.name for v in forward.params}
        unknown = [p for p in params if p not in known]
        if unknown:
            raise KilnError(f"make_train_step: {unknown} are not parameters of "
                            f"{forward.name!r} ({sorted(known)})")
        trainable = list(params)
    if not -len(forward.outputs) <= output < len(forward.outputs):
        raise KilnError(f"make_train_step: output={output} but {forward.name!r} has "
                        f"{len(forward.outputs)} outputs")
    # forward + loss, trainable parameters as inputs; then the backward pass
    em = Emitter(GraphBuilder(f"{forward.name}_loss"))
    env = clone(forward, em, as_inputs=trainable)
    pred = env[forward.outputs[output]]
    if loss is None:
        if target is not None:
            raise KilnError("make_train_step: loss=None (the model's output is the loss) "
                            "takes no target")
        value, target_names = pred, []
    else:
        loss_fn = get_loss(loss)
        target_type = (default_target_type(loss_fn, pred.type) if target is None
                       else _as_type(target))
        y = em.var(em.builder.input(em.builder.free_name("target"), target_type))
        em.origin = "loss"
        value, target_names = loss_fn(em, pred, y), [y.value.name]
    if value.shape != ():
        what = "the model's output" if loss is None else "the loss"
        raise KilnError(f"make_train_step: {what} must be a scalar, got {value.type} (use "
                        "reduction 'mean' or 'sum')")
    em.builder.output(em.emit("identity", [value], names=["loss"])[0].value)
    backward = grad(em.builder.build(), trainable)

    # + the optimizer's update, with its state as inputs
    em = Emitter(GraphBuilder(name or f"{forward.name}_train_step"))
    order = [v.name for v in forward.inputs] + target_names + list(trainable)
    env = clone(backward, em, order=order)
    values = {v.name: env[v] for v in backward.inputs}
    grads = {n: env[v] for n, v in zip(trainable, backward.outputs[1:])}
    types = {n: values[n].type for n in trainable}
    state = {key: em.var(em.builder.input(em.builder.free_name(key), t))
             for key, t in optimizer.state_types(types).items()}
    em.origin = type(optimizer).__name__
    new_params, new_state = optimizer.update(em, {n: values[n] for n in trainable}, grads, state)
    outs = [env[backward.outputs[0]]]
    outs += [em.emit("identity", [new_params[n]], names=[f"{n}.next"])[0] for n in trainable]
    outs += [em.emit("identity", [new_state[k]], names=[f"{state[k].value.name}.next"])[0]
             for k in state]
    em.builder.output(*(v.value for v in outs))
    return em.builder.build()
