"""Training: ``make_train_step`` builds ONE graph doing forward, loss, backward and optimizer
update from a model (a Graph, a kiln.nn.Module or a traceable function); ``Trainer`` runs it
step after step, carrying parameters and optimizer state.

The step graph itself is built by ``kiln.passes.training.train_step_graph`` (see there for its
signature: data inputs, target, parameters, optimizer state in; loss, next parameters, next
state out). This module is the part that drives the pipeline: it traces models with the
frontend and compiles step graphs with the code generator.

Backends (``BACKENDS``): "interpret" runs the graph in the numpy interpreter, the Trainer
carrying the state in numpy arrays; "compiled" compiles it once (``kiln.compile``, O2) and
keeps the state in the runtime's buffers (``kiln.runtime.Model.bind_state``), so a step moves
only the batch in and the loss out.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from kiln.errors import KilnError
from kiln.ir.graph import Graph
from kiln.ir.interpreter import interpret
from kiln.ir.types import to_numpy_dtype
from kiln.passes.losses import LossFn
from kiln.passes.optim import Optimizer
from kiln.passes.training import float_params, train_step_graph

__all__ = ["BACKENDS", "CompiledStep", "Trainer", "forward_graph", "make_train_step"]

Runner = Callable[[Mapping[str, np.ndarray]], list]
Backend = Callable[[Graph], Runner]


class CompiledStep:
    """The "compiled" backend's runner: the step graph compiled once with kiln's codegen
    (``opt_level`` 2: fusion and canonicalization run on the training graph) and loaded with
    the runtime.

    Called with every input, it runs like any runner. It is also *stateful*, which is what
    ``Trainer`` uses: after ``bind_state(carried, initial)``, ``step(feeds)`` takes the data
    and target only and returns ``[loss]``; the parameters and optimizer state stay in the
    runtime's buffers between steps (no copy to Python and back) and ``read_state`` copies one
    out on request.
    """

    def __init__(self, graph: Graph, opt_level: int = 2) -> None:
        from kiln.codegen.api import compile as compile_graph

        # (a symbolic batch compiles into one artifact for every batch size, a last batch
        # smaller than the others included; its state then passes through each step)
        self.compiled = compile_graph(graph, opt_level=opt_level)
        self.model = self.compiled.model

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> list:
        return self.model.run(_contiguous(feeds))

    def bind_state(self, carried: Sequence[str], initial: Mapping[str, np.ndarray]) -> None:
        """The last ``len(carried)`` outputs feed the inputs ``carried``, starting at
        ``initial``."""
        outputs = [o.name for o in self.model.outputs]
        pairs = list(zip(outputs[len(outputs) - len(carried):], carried))
        self.model.bind_state(pairs, _contiguous(initial))

    def step(self, feeds: Mapping[str, np.ndarray]) -> list:
        """One step on the inputs that are not state; returns the other outputs (the loss)."""
        return self.model.step(_contiguous(feeds))

    def read_state(self, name: str) -> np.ndarray:
        """A copy of the current value of state input ``name``."""
        return self.model.read_state(name)


# backend name -> (graph -> runner)
BACKENDS: dict[str, Backend] = {
    "interpret": lambda graph: lambda feeds: interpret(graph, feeds),
    "compiled": CompiledStep,
}


def forward_graph(model: Any, inputs: Mapping[str, Any] | None) -> tuple[Graph, list[str]]:
    """The forward graph of a Graph or a traceable model, and its trainable parameter names
    (a Module's parameters, not its buffers; every float parameter of a Graph)."""
    from kiln.frontend.nn.module import Module

    if isinstance(model, Graph):
        return model, float_params(model)
    if not inputs:
        raise KilnError("make_train_step: pass inputs={name: kiln.TensorSpec(...)} to trace "
                        f"the {type(model).__name__}")
    from kiln.frontend.dsl import trace

    graph = trace(model, **inputs)
    if isinstance(model, Module):
        names = [n for n, p in model.named_parameters() if p.requires_grad]
    else:
        names = float_params(graph)
    return graph, names


def make_train_step(model: Any, loss: str | LossFn | None, optimizer: Optimizer,
                    inputs: Mapping[str, Any] | None = None, target: Any = None,
                    params: Sequence[str] | None = None, output: int = 0,
                    name: str | None = None) -> Graph:
    """One training step as one graph (its signature: ``kiln.passes.training``).

    ``model``: a Graph or a kiln.nn.Module / function traced on ``inputs`` (name ->
    TensorSpec). ``loss``: a name from ``kiln.passes.losses.LOSSES`` or a function ``(em,
    prediction, target) -> scalar``, applied to ``model``'s output number ``output``; or None
    when that output is itself the (scalar) loss: then the step has no target input.
    ``target``: the target's TensorSpec/TensorType (default: class indices for
    cross-entropy, else the prediction's type). ``params``: the names to train (default:
    the module's parameters, or every float parameter of a graph).
    """
    forward, trainable = forward_graph(model, inputs)
    return train_step_graph(forward, loss, optimizer, target=target,
                            params=trainable if params is None else params, output=output,
                            name=name)


class Trainer:
    """Trains ``model`` by running its step graph (``make_train_step``) on batches.

    ``backend`` runs a graph: a name in ``BACKENDS`` ("interpret", "compiled") or a function
    ``graph -> runner`` where ``runner(feeds: {input name: array}) -> [output arrays]``. The
    trainer carries the parameters and optimizer state (``self.state``) between steps, unless
    the runner is stateful (has ``bind_state``, ``step`` and ``read_state``, like
    ``CompiledStep``): then the state lives in the runner, each step passes only the batch,
    and ``state`` / ``params`` read it from the runner when asked.
    """

    def __init__(self, model: Any, loss: str | LossFn | None, optimizer: Optimizer,
                 inputs: Mapping[str, Any] | None = None, target: Any = None,
                 params: Sequence[str] | None = None, output: int = 0,
                 backend: str | Backend = "interpret"):
        self.forward, trainable = forward_graph(model, inputs)
        self.param_names = list(trainable if params is None else params)
        self.graph = train_step_graph(self.forward, loss, optimizer, target=target,
                                      params=self.param_names, output=output)
        carried = self.graph.inputs[len(self.graph.inputs) - (len(self.graph.outputs) - 1):]
        self.target_name = None if loss is None else \
            self.graph.inputs[len(self.forward.inputs)].name
        missing = [n for n in self.param_names if n not in self.forward.weights]
        if missing:
            raise KilnError(f"Trainer: parameters {missing} of {self.forward.name!r} have no "
                            "initial value in its weights")
        # parameters come first among the carried inputs (same names); the state starts at 0
        state = {n: np.array(self.forward.weights[n]) for n in self.param_names}
        for v in carried[len(self.param_names):]:
            state[v.name] = np.zeros(v.type.shape, to_numpy_dtype(v.type.dtype))
        self._carried = [v.name for v in carried]
        if isinstance(backend, str):
            if backend not in BACKENDS:
                raise KilnError(f"unknown backend {backend!r}; known: {sorted(BACKENDS)}")
            backend = BACKENDS[backend]
        self._run = backend(self.graph)
        self.stateful = all(callable(getattr(self._run, a, None))
                            for a in ("bind_state", "step", "read_state"))
        self._state: dict[str, np.ndarray] | None = None
        if self.stateful:
            self._run.bind_state(self._carried, state)
        else:
            self._state = state
        self.steps = 0

    def step(self, target: np.ndarray | None = None, /, **data: np.ndarray) -> float:
        """One optimizer step on one batch; returns the loss (before the update). Without a
        loss function (``loss=None``) there is no target: ``step(**data)``."""
        if (target is None) != (self.target_name is None):
            raise KilnError("Trainer.step: " + ("this model computes its own loss: pass only "
                            "its inputs" if target is not None else "pass the batch's target"))
        feeds = dict(data)
        if target is not None:
            feeds[self.target_name] = np.asarray(target)
        if self._state is None:  # a stateful runner keeps the state itself
            loss = self._run.step(feeds)[0]
        else:
            loss, *carried = self._run({**feeds, **self._state})
            self._state.update(zip(self._carried, carried))
        self.steps += 1
        return float(loss)

    @property
    def runner(self) -> Any:
        """The backend's runner (for "compiled", a CompiledStep: ``.model`` is its runtime
        Model)."""
        return self._run

    @property
    def state(self) -> dict[str, np.ndarray]:
        """The parameters and optimizer state by step-graph input name (copies read from the
        runner if it is stateful)."""
        if self._state is None:
            return {n: self._run.read_state(n) for n in self._carried}
        return self._state

    def fit(self, data: Mapping[str, np.ndarray], target: np.ndarray | None, batch_size: int,
            epochs: int = 1, seed: int = 0) -> list[float]:
        """Shuffled mini-batches of ``batch_size`` samples (the last, incomplete batch of an
        epoch is dropped: the step graph has a fixed batch size); returns each epoch's mean
        loss. ``target`` is None for a model that computes its own loss."""
        n = len(target) if target is not None else len(next(iter(data.values())))
        if n < batch_size:
            raise KilnError(f"fit: {n} samples are fewer than one batch of {batch_size}")
        rng = np.random.default_rng(seed)
        history = []
        for _ in range(epochs):
            order = rng.permutation(n)
            losses = [self.step(None if target is None else target[idx],
                                **{k: v[idx] for k, v in data.items()})
                      for idx in _batches(order, batch_size)]
            history.append(float(np.mean(losses)))
        return history

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The current values of the trained parameters."""
        if self._state is None:
            return {n: self._run.read_state(n) for n in self.param_names}
        return {n: self._state[n] for n in self.param_names}

    def trained_graph(self) -> Graph:
        """The forward graph with the trained parameter values as its weights."""
        f = self.forward
        return Graph(f.name, f.inputs, f.params, f.nodes, f.outputs, {**f.weights, **self.params})

    def predict(self, **data: np.ndarray) -> list[np.ndarray]:
        """The forward graph's outputs with the current parameters (interpreted)."""
        return interpret(self.forward, data, params=self.params)


def _contiguous(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The arrays as C-contiguous numpy arrays (0-d ones stay 0-d), copied only if needed."""
    out = {}
    for k, v in arrays.items():
        a = np.asarray(v)
        out[k] = a if a.flags.c_contiguous else np.ascontiguousarray(a)
    return out


def _batches(order: np.ndarray, size: int) -> Iterable[np.ndarray]:
    for start in range(0, len(order) - size + 1, size):
        yield order[start:start + size]
