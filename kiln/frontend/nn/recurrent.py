"""Recurrent layers: ``RNN``, ``LSTM``, ``GRU`` and their one-step cells, as in PyTorch.

Same constructor arguments, parameter names, layouts, init distribution and forward
signature as ``torch.nn``. The sequence length must be static: the loop is unrolled, so the
graph holds one step's nodes per time step. The input projection ``x @ W_ih^T + b`` runs once
for all time steps (one large matmul), and each step adds only ``h @ W_hh^T``. Without an
initial state the first step skips the hidden matmul (its input is zero), which also keeps a
symbolic batch dimension usable.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np

from kiln.errors import KilnError
from kiln.frontend import ops
from kiln.frontend.dsl import Tensor, as_tensor, current_tracer
from kiln.frontend.nn.layers import _describe, _shape_error
from kiln.frontend.nn.module import Module, Parameter, generator

_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


def _uniform(shape: tuple[int, ...], bound: float) -> Parameter:
    return Parameter(generator().uniform(-bound, bound, shape).astype(np.float32))


def _dims(shape: tuple) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _step(mode: str, xg: Tensor, h: Tensor | None, c: Tensor | None, w_hh_t: Tensor,
          b_hh: Tensor | None, w_hr_t: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """One time step. ``xg`` is the input projection with its biases (GRU: ``b_ih`` only; the
    others: ``b_ih + b_hh``); ``h``/``c`` are None for a zero state. Returns (h', c')."""
    hg = None if h is None else ops.matmul(h, w_hh_t)
    if mode in ("RNN_TANH", "RNN_RELU"):
        pre = xg if hg is None else xg + hg
        return (ops.tanh(pre) if mode == "RNN_TANH" else ops.relu(pre)), None
    if mode == "LSTM":
        gates = xg if hg is None else xg + hg
        i, f, g, o = ops.chunk(gates, 4, axis=-1)
        i, f, g, o = ops.sigmoid(i), ops.sigmoid(f), ops.tanh(g), ops.sigmoid(o)
        c = i * g if c is None else f * c + i * g
        h = o * ops.tanh(c)
        return (h if w_hr_t is None else ops.matmul(h, w_hr_t)), c
    # GRU: r, z, n = ...; n = tanh(x_n + r * (W_hn h + b_hn)); h' = (1 - z) * n + z * h
    if hg is not None and b_hh is not None:
        hg = hg + b_hh
    elif hg is None:
        hg = b_hh  # a zero state: W_hh h vanishes, only the bias is left
    xr, xz, xn = ops.chunk(xg, 3, axis=-1)
    if hg is None:
        r, z, n = ops.sigmoid(xr), ops.sigmoid(xz), ops.tanh(xn)
    else:
        hr, hz, hn = ops.chunk(hg, 3, axis=-1)
        r, z = ops.sigmoid(xr + hr), ops.sigmoid(xz + hz)
        n = ops.tanh(xn + r * hn)
    return ((1.0 - z) * n if h is None else (1.0 - z) * n + z * h), None


class RNNBase(Module):
    """Shared by RNN, LSTM and GRU (PyTorch's ``nn.RNNBase``); ``mode`` is 'RNN_TANH',
    'RNN_RELU', 'LSTM' or 'GRU'."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0) -> None:
        super().__init__()
        name = type(self).__name__
        if mode not in _GATES:
            raise KilnError(f"{name}: unknown mode {mode!r}; use one of {sorted(_GATES)}")
        if not (isinstance(num_layers, int) and num_layers >= 1):
            raise KilnError(f"{name}: num_layers must be an int >= 1, got {num_layers!r}")
        if not (0.0 <= float(dropout) <= 1.0):
            raise KilnError(f"{name}: dropout must be in [0, 1], got {dropout}")
        if proj_size and mode != "LSTM":
            raise KilnError(f"{name}: proj_size is for LSTM only")
        if not 0 <= proj_size < hidden_size:
            raise KilnError(f"{name}: proj_size must be in [0, hidden_size={hidden_size}), "
                            f"got {proj_size}")
        self.mode, self.input_size, self.hidden_size = mode, input_size, hidden_size
        self.num_layers, self.bias, self.batch_first = num_layers, bias, batch_first
        self.dropout, self.bidirectional, self.proj_size = float(dropout), bidirectional, proj_size
        out = proj_size or hidden_size
        gates, dirs = _GATES[mode] * hidden_size, 2 if bidirectional else 1
        bound = 1.0 / math.sqrt(hidden_size)
        for layer in range(num_layers):
            size = input_size if layer == 0 else out * dirs
            for d in range(dirs):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                self.register_parameter("weight_ih" + sfx, _uniform((gates, size), bound))
                self.register_parameter("weight_hh" + sfx, _uniform((gates, out), bound))
                if bias:
                    self.register_parameter("bias_ih" + sfx, _uniform((gates,), bound))
                    self.register_parameter("bias_hh" + sfx, _uniform((gates,), bound))
                if proj_size:
                    self.register_parameter("weight_hr" + sfx,
                                            _uniform((proj_size, hidden_size), bound))

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        for key, default in (("num_layers", 1), ("bias", True), ("batch_first", False),
                             ("dropout", 0.0), ("bidirectional", False), ("proj_size", 0)):
            if getattr(self, key) != default:
                s += f", {key}={getattr(self, key)}"
        return s

    def forward(self, input: Any, hx: Any = None) -> tuple[Tensor, Any]:
        """``input``: [L, N, input_size] ([N, L, input_size] if batch_first) or unbatched
        [L, input_size]; ``hx``: h_0 (LSTM: the pair (h_0, c_0)), [D * num_layers, N, H].
        Returns (output, h_n), or for LSTM (output, (h_n, c_n)), as PyTorch does."""
        x = as_tensor(input)
        if x.ndim not in (2, 3) or x.shape[-1] != self.input_size:
            layout = "[N, L, H_in]" if self.batch_first else "[L, N, H_in]"
            raise _shape_error(self, f"input {_describe(x)} must be {layout} or unbatched "
                                     f"[L, H_in] with H_in = input_size = {self.input_size}")
        batched = x.ndim == 3
        tax = 1 if batched and self.batch_first else 0  # the time axis
        if not batched:
            x = ops.unsqueeze(x, 1)
        steps, batch = x.shape[tax], x.shape[1 - tax]
        if not isinstance(steps, int) or steps < 1:
            raise _shape_error(self, f"the sequence length must be a static int >= 1 (the "
                                     f"loop is unrolled); input is {_describe(as_tensor(input))}")
        dirs = 2 if self.bidirectional else 1
        h0, c0 = self._initial_states(hx, batched, batch)
        h_n: list[Tensor] = []
        c_n: list[Tensor] = []
        for layer in range(self.num_layers):
            if layer and self.training and self.dropout:
                path = current_tracer().module_names.get(id(self), "")
                seed = zlib.crc32(f"{type(self).__name__}:{path}:l{layer}".encode())
                x = ops.dropout(x, self.dropout, training=True, seed=seed)
            outs = []
            for d in range(dirs):
                k = layer * dirs + d
                y, h, c = self._direction(x, tax, steps, layer, d, h0[k], c0[k])
                outs.append(y)
                h_n.append(h)
                if c is not None:
                    c_n.append(c)
            x = outs[0] if dirs == 1 else ops.concat(outs, axis=-1)
        hn = ops.stack(h_n, 0)
        cn = ops.stack(c_n, 0) if c_n else None
        if not batched:
            x, hn = ops.squeeze(x, 1), ops.squeeze(hn, 1)
            cn = None if cn is None else ops.squeeze(cn, 1)
        return (x, (hn, cn)) if self.mode == "LSTM" else (x, hn)

    def _initial_states(self, hx: Any, batched: bool, batch: Any) -> tuple[list, list]:
        """Per (layer, direction) initial h and c (None where the state starts at zero)."""
        count = self.num_layers * (2 if self.bidirectional else 1)
        none = [None] * count
        if hx is None:
            return none, none
        if self.mode == "LSTM":
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise _shape_error(self, "hx must be the pair (h_0, c_0)")
            pairs = [("h_0", hx[0], self.proj_size or self.hidden_size),
                     ("c_0", hx[1], self.hidden_size)]
        else:
            pairs = [("h_0", hx, self.hidden_size)]
        states = []
        for what, t, size in pairs:
            t = as_tensor(t)
            want = (count, batch, size) if batched else (count, size)
            if tuple(t.shape) != want:
                kind = "batched" if batched else "unbatched"
                raise _shape_error(self, f"{what} {_describe(t)} must be {_dims(want)} for "
                                         f"{kind} input ([D * num_layers, (N,) H])")
            if not batched:
                t = ops.unsqueeze(t, 1)
            pieces = ops.split(t, 1, axis=0) if count > 1 else [t]
            states.append([ops.squeeze(p, 0) for p in pieces])
        return states[0], (states[1] if len(states) > 1 else none)

    def _direction(self, x: Tensor, tax: int, steps: int, layer: int, d: int,
                   h: Tensor | None, c: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Run one layer in one direction; returns (outputs stacked on the time axis, h, c)."""
        sfx = f"_l{layer}" + ("_reverse" if d else "")
        w_ih, w_hh = getattr(self, "weight_ih" + sfx), getattr(self, "weight_hh" + sfx)
        b_ih = getattr(self, "bias_ih" + sfx) if self.bias else None
        b_hh = getattr(self, "bias_hh" + sfx) if self.bias else None
        w_hr_t = ops.transpose(getattr(self, "weight_hr" + sfx)) if self.proj_size else None
        xp = ops.matmul(x, ops.transpose(w_ih))  # all time steps at once
        if self.bias:
            xp = xp + (b_ih if self.mode == "GRU" else b_ih + b_hh)
        gru_b_hh = b_hh if self.mode == "GRU" else None
        pieces = ops.split(xp, 1, axis=tax) if steps > 1 else [xp]
        w_hh_t = ops.transpose(w_hh)
        ys: list[Any] = [None] * steps
        for t in (reversed(range(steps)) if d else range(steps)):
            h, c = _step(self.mode, ops.squeeze(pieces[t], tax), h, c, w_hh_t, gru_b_hh, w_hr_t)
            ys[t] = h
        return ops.stack(ys, tax), h, c


class RNN(RNNBase):
    """Elman RNN: ``h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)`` (or relu)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise KilnError(f"RNN: unknown nonlinearity {nonlinearity!r}; use 'tanh' or 'relu'")
        super().__init__("RNN_" + nonlinearity.upper(), input_size, hidden_size, num_layers,
                         bias, batch_first, dropout, bidirectional)
        self.nonlinearity = nonlinearity


class LSTM(RNNBase):
    """Long short-term memory, gates (i, f, g, o) stacked in that order in the weights;
    ``proj_size > 0`` adds PyTorch's output projection ``weight_hr``."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0) -> None:
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, proj_size)


class GRU(RNNBase):
    """Gated recurrent unit, gates (r, z, n); ``n = tanh(W_in x + b_in + r * (W_hn h +
    b_hn))``."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False) -> None:
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional)


class RNNCellBase(Module):
    """One step of a recurrent layer (PyTorch's ``RNNCell``/``LSTMCell``/``GRUCell``)."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__()
        self.mode, self.input_size, self.hidden_size, self.bias = (
            mode, input_size, hidden_size, bias)
        gates, bound = _GATES[mode] * hidden_size, 1.0 / math.sqrt(hidden_size)
        self.weight_ih = _uniform((gates, input_size), bound)
        self.weight_hh = _uniform((gates, hidden_size), bound)
        self.register_parameter("bias_ih", _uniform((gates,), bound) if bias else None)
        self.register_parameter("bias_hh", _uniform((gates,), bound) if bias else None)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")

    def forward(self, input: Any, hx: Any = None) -> Any:
        """``input`` [N, input_size] or [input_size]; ``hx`` h (LSTM: (h, c)) [N, H] or [H].
        Returns h' (LSTM: (h', c'))."""
        x = as_tensor(input)
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise _shape_error(self, f"input {_describe(x)} must be [N, {self.input_size}] or "
                                     f"[{self.input_size}]")
        want = x.shape[:-1] + (self.hidden_size,)
        states = [None, None]
        if hx is not None:
            given = list(hx) if self.mode == "LSTM" else [hx]
            if self.mode == "LSTM" and len(given) != 2:
                raise _shape_error(self, "hx must be the pair (h, c)")
            for i, s in enumerate(given):
                s = as_tensor(s)
                if tuple(s.shape) != want:
                    raise _shape_error(self, f"hidden state {_describe(s)} must be "
                                             f"{_dims(want)}")
                states[i] = s
        xg = ops.matmul(x, ops.transpose(self.weight_ih))
        if self.bias:
            xg = xg + (self.bias_ih if self.mode == "GRU" else self.bias_ih + self.bias_hh)
        b_hh = self.bias_hh if self.bias and self.mode == "GRU" else None
        h, c = _step(self.mode, xg, states[0], states[1], ops.transpose(self.weight_hh), b_hh)
        return (h, c) if self.mode == "LSTM" else h


class RNNCell(RNNCellBase):
    """One Elman RNN step (tanh or relu)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh") -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise KilnError(f"RNNCell: unknown nonlinearity {nonlinearity!r}; use 'tanh' or "
                            "'relu'")
        super().__init__("RNN_" + nonlinearity.upper(), input_size, hidden_size, bias)
        self.nonlinearity = nonlinearity


class LSTMCell(RNNCellBase):
    """One LSTM step; forward returns (h', c')."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__("LSTM", input_size, hidden_size, bias)


class GRUCell(RNNCellBase):
    """One GRU step."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__("GRU", input_size, hidden_size, bias)
