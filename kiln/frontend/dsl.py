"""The DSL's core: symbolic tensors and tracing.

``trace(model, x=TensorSpec((1, 784)))`` calls ``model`` on symbolic ``Tensor``s; every
operation on them adds a typed node to a graph, so a shape mistake fails here, at the user's
line, naming the layer and the shapes.
"""

from __future__ import annotations

import abc
import inspect
import os
import sys
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Callable, Sequence

import numpy as np

from kiln.errors import KilnError, ShapeError, TraceError
from kiln.ir.graph import Graph, GraphBuilder, Value
from kiln.ir.types import Dim, TensorType, from_numpy_dtype, is_float

_KILN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class TensorSpec:
    """The shape and dtype of a traced input; dims may be ints or symbolic names."""

    shape: tuple[Dim, ...]
    dtype: str = "float32"

    def type(self) -> TensorType:
        return TensorType(tuple(self.shape), self.dtype)


class _Tracer:
    """The state of one trace: the graph being built and the modules being called."""

    current: _Tracer | None = None

    def __init__(self, name: str):
        self.builder = GraphBuilder(name)
        self.lifted: dict[int, Value] = {}  # id(Parameter or Buffer) -> graph parameter
        self.layers: list[str] = []  # names of the modules being called, outermost first
        self.module_names: dict[int, str] = {}  # id(module) -> its state-dict prefix
        self.constants = 0

    def origin(self) -> str:
        """'file.py:12 [encoder.layers.0.linear1]': the user's line and the current layer."""
        where = user_line()
        layer = self.layers[-1] if self.layers else ""
        return f"{where} [{layer}]" if layer else where


def user_line() -> str:
    """'file.py:12': the innermost line running now that is not kiln's own code."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_KILN_DIR):
        frame = frame.f_back
    return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}" if frame else ""


def raising_line(tb: TracebackType | None) -> str:
    """'file.py:12': the innermost line of a traceback that is not kiln's own code."""
    where = ""
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if not name.startswith(_KILN_DIR):
            where = f"{os.path.basename(name)}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where


def _signature(fn: Callable) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or C function: nothing to check
        return None


def _shown(signature: inspect.Signature) -> str:
    """'(x, mask=None)': the parameters without their annotations."""
    params = [p.replace(annotation=p.empty) for p in signature.parameters.values()]
    return f"({', '.join(map(str, params))})"


def call_problem(fn: Callable, args: Sequence, kwargs: dict) -> str | None:
    """Why ``fn(*args, **kwargs)`` cannot bind to ``fn``'s parameters ('too many positional
    arguments; it takes (x)'), or None if it can (or ``fn`` has no signature to check)."""
    signature = _signature(fn)
    if signature is None:
        return None
    try:
        signature.bind(*args, **kwargs)
    except TypeError as e:
        return f"{e}; it takes {_shown(signature)}"
    return None


def input_problem(model: Callable, names: Sequence[str]) -> str | None:
    """Why inputs named ``names`` do not fit ``model`` (a Module's forward, or a function):
    "Tiny takes (x): no spec for 'x'; no input named 'y'", or None if they fit."""
    from kiln.frontend.nn.module import Module

    fn = model.forward if isinstance(model, Module) else model
    signature = _signature(fn)
    if signature is None:
        return None
    params = list(signature.parameters.values())
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    missing = [p.name for p in named if p.default is p.empty and p.name not in names]
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params)
    unknown = [] if takes_any else [n for n in names if n not in {p.name for p in named}]
    if not missing and not unknown:
        return call_problem(fn, (), dict.fromkeys(names))
    label = getattr(model, "__name__", None) or type(model).__name__
    why = [f"no spec for {', '.join(map(repr, missing))}"] if missing else []
    why += [f"no input named {', '.join(map(repr, unknown))}"] if unknown else []
    return f"{label} takes {_shown(signature)}: {'; '.join(why)}"


def current_tracer() -> _Tracer:
    if _Tracer.current is None:
        raise TraceError("kiln ops run on symbolic tensors inside kiln.trace(...) only")
    return _Tracer.current


class TensorOps(abc.ABC):
    """Python operators for anything that lifts to a Tensor (tensors, parameters, buffers)."""

    @abc.abstractmethod
    def _lift(self) -> Tensor:
        """The graph value this object stands for in the current trace."""

    # arithmetic
    def __add__(self, o): return _ops().add(self, o)
    def __radd__(self, o): return _ops().add(o, self)
    def __sub__(self, o): return _ops().sub(self, o)
    def __rsub__(self, o): return _ops().sub(o, self)
    def __mul__(self, o): return _ops().mul(self, o)
    def __rmul__(self, o): return _ops().mul(o, self)
    def __truediv__(self, o): return _ops().div(self, o)
    def __rtruediv__(self, o): return _ops().div(o, self)
    def __pow__(self, o): return _ops().pow(self, o)
    def __rpow__(self, o): return _ops().pow(o, self)
    def __matmul__(self, o): return _ops().matmul(self, o)
    def __rmatmul__(self, o): return _ops().matmul(o, self)
    def __neg__(self): return _ops().neg(self)
    def __pos__(self): return self._lift()
    def __abs__(self): return _ops().abs(self)
    # comparisons build bool tensors (so tensors are unhashable, like PyTorch's are not)
    def __lt__(self, o): return _ops().less(self, o)
    def __le__(self, o): return _ops().less_equal(self, o)
    def __gt__(self, o): return _ops().greater(self, o)
    def __ge__(self, o): return _ops().greater_equal(self, o)
    def __eq__(self, o): return _ops().equal(self, o)  # type: ignore[override]
    def __ne__(self, o): return _ops().not_equal(self, o)  # type: ignore[override]
    def __and__(self, o): return _ops().logical_and(self, o)
    def __or__(self, o): return _ops().logical_or(self, o)
    def __xor__(self, o): return _ops().logical_xor(self, o)
    def __invert__(self): return _ops().logical_not(self)
    __hash__ = object.__hash__

    def __getitem__(self, index): return _ops().index(self, index)

    # shape
    @property
    def shape(self) -> tuple[Dim, ...]: return self._lift().value.type.shape
    @property
    def dtype(self) -> str: return self._lift().value.type.dtype
    @property
    def ndim(self) -> int: return len(self.shape)
    def dim(self) -> int: return self.ndim
    def size(self, axis: int | None = None):
        return self.shape if axis is None else self.shape[axis]
    @property
    def T(self) -> Tensor: return _ops().transpose(self)
    def reshape(self, *shape): return _ops().reshape(self, _varargs(shape))
    def view(self, *shape): return _ops().reshape(self, _varargs(shape))
    def transpose(self, a: int, b: int): return _ops().swapaxes(self, a, b)
    def permute(self, *perm): return _ops().transpose(self, _varargs(perm))
    def flatten(self, start_dim: int = 0, end_dim: int = -1):
        return _ops().flatten(self, start_dim, end_dim)
    def squeeze(self, axis=None): return _ops().squeeze(self, axis)
    def unsqueeze(self, axis: int): return _ops().unsqueeze(self, axis)
    def expand(self, *shape): return _ops().expand(self, _varargs(shape))
    def astype(self, dtype: str): return _ops().cast(self, dtype)
    def float(self): return _ops().cast(self, "float32")
    def contiguous(self): return self._lift()
    # reductions and friends: numpy's (axis, keepdims) or PyTorch's (dim, keepdim) names
    # (kiln.ops.torch_names); max/min given dim return PyTorch's (values, indices)
    def sum(self, *args, **kw): return _ops().sum(self, *args, **kw)
    def mean(self, *args, **kw): return _ops().mean(self, *args, **kw)
    def prod(self, *args, **kw): return _ops().prod(self, *args, **kw)
    def max(self, *args, **kw): return _ops().max(self, *args, **kw)
    def min(self, *args, **kw): return _ops().min(self, *args, **kw)
    def var(self, *args, **kw): return _ops().var(self, *args, **kw)
    def std(self, *args, **kw): return _ops().std(self, *args, **kw)
    def argmax(self, *args, **kw): return _ops().argmax(self, *args, **kw)
    def argmin(self, *args, **kw): return _ops().argmin(self, *args, **kw)
    def softmax(self, *args, **kw): return _ops().softmax(self, *args, **kw)
    def log_softmax(self, *args, **kw): return _ops().log_softmax(self, *args, **kw)
    # PyTorch's tensor methods that model code uses
    def chunk(self, chunks: int, *args, **kw): return _ops().chunk(self, chunks, *args, **kw)
    def split(self, size, *args, **kw): return _ops().split(self, size, *args, **kw)
    def unbind(self, *args, **kw): return _ops().unbind(self, *args, **kw)
    def repeat(self, *sizes): return _ops().repeat(self, *sizes)
    def detach(self): return self._lift()  # (tracing computes no gradients to stop)
    def type_as(self, other): return _ops().cast(self, other.dtype)
    def expand_as(self, other): return _ops().expand(self, other.shape)
    def view_as(self, other): return _ops().reshape(self, other.shape)
    def clamp(self, min=None, max=None): return _ops().clip(self, min, max)
    clip = clamp
    def pow(self, exponent): return self ** exponent
    def abs(self): return _ops().abs(self)
    def exp(self): return _ops().exp(self)
    def log(self): return _ops().log(self)
    def sqrt(self): return _ops().sqrt(self)
    def relu(self): return _ops().relu(self)
    def sigmoid(self): return _ops().sigmoid(self)
    def tanh(self): return _ops().tanh(self)
    def masked_fill(self, mask, value): return _ops().masked_fill(self, mask, value)


def _varargs(args: Sequence) -> tuple:
    """x.reshape(2, 3) and x.reshape((2, 3)) mean the same."""
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else args


def _ops():
    from kiln.frontend import ops

    return ops


class Tensor(TensorOps):
    """A symbolic tensor: one value of the graph being traced."""

    __slots__ = ("value",)

    def __init__(self, value: Value):
        self.value = value

    def _lift(self) -> Tensor:
        return self

    def __repr__(self) -> str:
        return f"Tensor(%{self.value.name}: {self.value.type})"

    def __bool__(self) -> bool:
        raise TraceError(
            f"{self!r} has no truth value while tracing: Python control flow cannot depend on "
            "tensor values; use kiln.ops.where instead"
        )

    def __iter__(self):
        n = self.shape[0] if self.shape else None
        if not isinstance(n, int):
            raise TraceError(f"cannot iterate over {self!r}: its first dimension is not static")
        return (self[i] for i in range(n))

    def __len__(self) -> int:
        n = self.shape[0] if self.shape else None
        if not isinstance(n, int):
            raise TraceError(f"len() of {self!r}: its first dimension is not static")
        return n


def constant(array: np.ndarray, name: str | None = None) -> Tensor:
    """A numpy array used inside a traced function becomes a named graph parameter."""
    tr = current_tracer()
    tr.constants += 1
    name = tr.builder.free_name(name or f"const{tr.constants}")
    value = tr.builder.param(name, np.asarray(array))
    return Tensor(value)


def as_tensor(x: Any, like: Tensor | None = None) -> Tensor:
    """Lift ``x`` (Tensor, Parameter, numpy array or Python scalar) to a Tensor.

    A Python scalar takes the dtype of ``like`` (so ``x * 2`` keeps x's dtype); a float scalar
    with an integer tensor is an error rather than a silent truncation.
    """
    if isinstance(x, TensorOps):
        return x._lift()
    if isinstance(x, np.ndarray):
        return constant(x)
    if isinstance(x, (bool, int, float, np.number)):
        if like is not None:
            dtype = like.dtype
            if isinstance(x, float) and not is_float(dtype):
                raise ShapeError(f"float constant {x} combined with a {dtype} tensor; cast first")
        else:
            dtype = "bool" if isinstance(x, bool) else from_numpy_dtype(np.asarray(x).dtype)
            dtype = {"float64": "float32"}.get(dtype, dtype)
        return _ops().full((), x, dtype)
    raise TraceError(f"cannot use {type(x).__name__} {x!r} as a tensor")


def emit(op: str, inputs: Sequence[Any], attrs: dict | None = None) -> list[Tensor]:
    """Add one node to the graph being traced; returns its outputs as Tensors."""
    tr = current_tracer()
    like = next((x._lift() for x in inputs if isinstance(x, TensorOps)), None)
    tensors = [as_tensor(x, like) for x in inputs]
    values = tr.builder.op(op, [t.value for t in tensors], attrs or {}, origin=tr.origin())
    return [Tensor(v) for v in values]


def emit1(op: str, inputs: Sequence[Any], attrs: dict | None = None) -> Tensor:
    return emit(op, inputs, attrs)[0]


def _flatten_outputs(result: Any, prefix: str) -> list[tuple[str, Tensor]]:
    if isinstance(result, TensorOps):
        return [(prefix, result._lift())]
    if isinstance(result, dict):
        return [item for k, v in result.items() for item in _flatten_outputs(v, str(k))]
    if isinstance(result, (tuple, list)):
        out = []
        for i, v in enumerate(result):
            out += _flatten_outputs(v, f"{prefix}_{i}")
        return out
    if result is None:
        return []
    raise TraceError(f"a traced model must return tensors (or tuples/dicts of them), "
                     f"not {type(result).__name__}")


def trace(model: Callable, name: str | None = None, **inputs: TensorSpec | TensorType) -> Graph:
    """Trace ``model`` (a kiln.nn.Module or a function) on symbolic inputs.

    Keyword names become the graph's input names; a Module's parameters and buffers become
    graph parameters named as in its ``state_dict()``. Returned tensors become the outputs:
    one tensor is called ``output``; a tuple gives ``output_0, output_1, ...`` (nested tuples
    flatten); a dict names them by its keys.
    """
    from kiln.frontend.nn.module import Module

    graph_name = name or getattr(model, "__name__", None) or type(model).__name__
    tr = _Tracer(graph_name)
    args = {}
    for key, spec in inputs.items():
        t = spec.type() if isinstance(spec, TensorSpec) else spec
        if not isinstance(t, TensorType):
            raise TraceError(f"input {key!r} must be a kiln.TensorSpec, got {spec!r}")
        args[key] = Tensor(tr.builder.input(key, t))
    if isinstance(model, Module):
        tr.module_names = {id(m): n for n, m in model.named_modules()}
        for pname, obj in model.named_tensors():
            tr.lifted[id(obj)] = tr.builder.param(pname, obj.data)
    if not callable(model):
        raise TraceError(f"{user_line()}: kiln.trace takes a kiln.nn.Module or a function, "
                         f"not {type(model).__name__}")
    problem = input_problem(model, list(args))
    if problem:
        raise TraceError(f"{user_line()}: kiln.trace: {problem}; give one TensorSpec per "
                         "input, named as its parameter")
    previous, _Tracer.current = _Tracer.current, tr
    try:
        try:
            result = model(**args)
        except KilnError:
            raise
        except Exception as e:  # the user's code failed: say where, keep the error as cause
            where = raising_line(e.__traceback__) or user_line()
            raise TraceError(f"{where}: tracing {graph_name} failed: {type(e).__name__}: "
                             f"{e}") from e
        outputs = _flatten_outputs(result, "output")
        if not outputs:
            raise TraceError(f"{graph_name} returned no tensors")
        if len(outputs) == 1 and not isinstance(result, dict):
            outputs = [("output", outputs[0][1])]
        _name_outputs(tr, outputs)
    finally:
        _Tracer.current = previous
    return tr.builder.build()


def _name_outputs(tr: _Tracer, outputs: list[tuple[str, Tensor]]) -> None:
    """Give output values their names, copying those that are inputs, params or repeated."""
    b = tr.builder
    renamed: dict[Value, Value] = {}  # traced value -> its renamed replacement
    seen: set[Value] = set()
    final = []
    for name, t in outputs:
        v = renamed.get(t.value, t.value)
        if v in seen or b.producer(v) is None:
            v = b.op("identity", [v])[0]
        if v.name != name:
            if b.has_name(name):
                raise TraceError(f"output name {name!r} clashes with an input or parameter")
            old, v = v, b.rename(v, name)
            renamed[old] = v
        seen.add(v)
        final.append(v)
    b.output(*final)
