"""``kiln.nn.Module``: PyTorch's module model (parameters, buffers, children, state dicts)
over numpy arrays, so that a PyTorch model definition ports by changing its imports.

Differences from PyTorch, on purpose: modules start in eval mode (kiln compiles inference
graphs unless asked to train), and parameters initialize from kiln's own seeded generator
(``kiln.nn.manual_seed``), so the same model built twice has the same weights.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterator, Mapping

import numpy as np

from kiln.errors import KilnError, TraceError
from kiln.frontend.dsl import Tensor, TensorOps, _Tracer, call_problem, current_tracer

_rng = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Reseed the generator that initializes parameters."""
    global _rng
    _rng = np.random.default_rng(seed)


def generator() -> np.random.Generator:
    return _rng


def _as_array(value: Any) -> np.ndarray:
    """numpy arrays as they are; torch tensors (or anything with .numpy()) converted."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


class Parameter(TensorOps):
    """A trainable array. Inside a trace it stands for its graph parameter."""

    def __init__(self, data: np.ndarray, requires_grad: bool = True):
        self.data = np.asarray(data, order="C")  # (ascontiguousarray makes 0-d arrays 1-d)
        self.requires_grad = requires_grad

    def _lift(self) -> Tensor:
        tr = current_tracer()
        try:
            return Tensor(tr.lifted[id(self)])
        except KeyError:
            raise KilnError(
                f"a Parameter of shape {self.data.shape} belongs to no module being traced; "
                "assign it as an attribute of the traced module"
            ) from None

    def numpy(self) -> np.ndarray:
        return self.data

    def __repr__(self) -> str:
        return f"Parameter({self.data.dtype}{list(self.data.shape)})"


class Buffer(Parameter):
    """A non-trainable array saved in the state dict (e.g. batch norm's running mean)."""

    def __init__(self, data: np.ndarray):
        super().__init__(data, requires_grad=False)

    def __repr__(self) -> str:
        return f"Buffer({self.data.dtype}{list(self.data.shape)})"


class Module:
    """Base class of layers and models: override ``forward``."""

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", False)

    # -- registration -------------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise KilnError(f"{type(self).__name__}.__init__ must call super().__init__() "
                            f"before assigning {name!r}")
        for table in (self._parameters, self._buffers, self._modules):
            table.pop(name, None)
        if isinstance(value, Buffer):
            self._buffers[name] = value
        elif isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        else:
            object.__setattr__(self, name, value)
            return
        self.__dict__.pop(name, None)

    def __getattr__(self, name: str) -> Any:
        for table in ("_parameters", "_buffers", "_modules"):
            entries = self.__dict__.get(table)
            if entries is not None and name in entries:
                return entries[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        for table in (self._parameters, self._buffers, self._modules):
            if name in table:
                del table[name]
                return
        object.__delattr__(self, name)

    def register_buffer(self, name: str, array: np.ndarray | None) -> None:
        if array is None:
            self._buffers.pop(name, None)
            object.__setattr__(self, name, None)
            return
        setattr(self, name, Buffer(np.asarray(array)))

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        if param is None:
            object.__setattr__(self, name, None)
            return
        setattr(self, name, param)

    def add_module(self, name: str, module: Module | None) -> None:
        setattr(self, name, module)

    # -- traversal ----------------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        return (m for _, m in self.named_modules())

    def named_children(self) -> Iterator[tuple[str, Module]]:
        return iter(self._modules.items())

    def children(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def named_tensors(self) -> Iterator[tuple[str, Parameter]]:
        """Parameters then buffers of each module, depth first: PyTorch's state-dict order."""
        seen: set[int] = set()
        for prefix, module in self.named_modules():
            for table in (module._parameters, module._buffers):
                for name, p in table.items():
                    if id(p) not in seen:
                        seen.add(id(p))
                        yield (f"{prefix}.{name}" if prefix else name), p

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        return ((n, p) for n, p in self.named_tensors() if not isinstance(p, Buffer))

    def parameters(self) -> Iterator[Parameter]:
        return (p for _, p in self.named_parameters())

    def named_buffers(self) -> Iterator[tuple[str, Buffer]]:
        return ((n, p) for n, p in self.named_tensors() if isinstance(p, Buffer))

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Name -> array, with PyTorch's names, order and layouts."""
        return OrderedDict((n, p.data) for n, p in self.named_tensors())

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Load arrays by name (numpy arrays or torch tensors); shapes must match."""
        own = dict(self.named_tensors())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise KilnError(f"load_state_dict: missing keys {missing}, unexpected keys "
                            f"{unexpected}")
        bad = []
        for name, value in state.items():
            if name not in own:
                continue
            array = _as_array(value)
            if array.shape != own[name].data.shape:
                bad.append(f"{name}: model has {own[name].data.shape}, state has {array.shape}")
        if bad:
            raise KilnError("load_state_dict: shape mismatch: " + "; ".join(bad))
        for name, value in state.items():
            if name in own:
                target = own[name]
                target.data = np.asarray(_as_array(value), target.data.dtype, order="C")

    def apply(self, fn: Any) -> Module:
        """Call ``fn`` on every submodule (children first) and on this module, as PyTorch."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def num_parameters(self) -> int:
        return sum(p.data.size for p in self.parameters())

    # -- calling ------------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise KilnError(f"{type(self).__name__} defines no forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        tr = _Tracer.current
        if tr is None:
            return self.forward(*args, **kwargs)
        problem = call_problem(self.forward, args, kwargs)
        if problem:  # at the caller's line, before this layer's frame hides it
            raise TraceError(f"{tr.origin()}: {self._path(tr)} called with {len(args)} "
                             f"positional and {len(kwargs)} keyword argument(s): {problem}")
        tr.layers.append(self._path(tr))
        try:
            return self.forward(*args, **kwargs)
        finally:
            tr.layers.pop()

    def _path(self, tr: _Tracer) -> str:
        """This module's state-dict prefix in the traced model, for origins and errors."""
        name = tr.module_names.get(id(self))
        kind = type(self).__name__
        return f"{name} ({kind})" if name else kind

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"({name}): {repr(m).replace(chr(10), chr(10) + '  ')}"
                 for name, m in self._modules.items()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"


class Sequential(Module):
    """Children called in order."""

    def __init__(self, *modules: Module):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], Mapping):
            for name, m in modules[0].items():
                setattr(self, name, m)
        else:
            for i, m in enumerate(modules):
                setattr(self, str(i), m)

    def forward(self, x: Any) -> Any:
        for m in self._modules.values():
            x = m(x)
        return x

    def __getitem__(self, i: int | slice) -> Module:
        if isinstance(i, slice):
            return Sequential(OrderedDict(list(self._modules.items())[i]))
        return list(self._modules.values())[i]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def append(self, module: Module) -> Sequential:
        setattr(self, str(len(self._modules)), module)
        return self


class ModuleList(Module):
    """A list of children, indexed like a list and named '0', '1', ... in the state dict."""

    def __init__(self, modules: Any = ()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module: Module) -> ModuleList:
        setattr(self, str(len(self._modules)), module)
        return self

    def extend(self, modules: Any) -> ModuleList:
        for m in modules:
            self.append(m)
        return self

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())
