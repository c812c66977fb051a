"""LSTM, GRU and RNN, unrolled over a static sequence length as kiln.nn's recurrent layers are.

ONNX stacks gates in its own orders: LSTM (i, o, f, c), GRU (z, r, h); PyTorch uses (i, f, g,
o) and (r, z, n). Nothing is reordered here: each gate is cut out of ONNX's weights by its
ONNX position. The input projection ``X W^T + b`` runs once for all time steps; each step adds
``H R^T``. A missing initial state is zero, so the first step skips its ``H R^T``.
"""

from __future__ import annotations

import numpy as np

from kiln.frontend.onnx.context import NodeContext, Ref
from kiln.frontend.onnx.converters.activation import activation
from kiln.frontend.onnx.converters.shape import static
from kiln.frontend.onnx.registry import converter
from kiln.frontend.onnx.validate import Check, Spec, at_least, finite, flag, one_of, positive

_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"),
                "RNN": ("Tanh",)}
# kiln unrolls the recurrence: one step per element of the sequence, each a few nodes
MAX_STEPS = 4096


class _Cell:
    """Per-direction weights and activations of one recurrent node."""

    def __init__(self, n: NodeContext, kind: str, d: int, hidden: int):
        self.n, self.kind, self.hidden = n, kind, hidden
        gates = _GATES[kind] * hidden

        def pick(t: Ref) -> Ref:  # direction d of a [directions, ...] tensor
            if t.shape[0] == 1:
                return n.op("squeeze", t, axes=(0,))
            return n.op("gather", t, np.int64(d))

        self.w_t = n.op("transpose", pick(n.inputs[1]))  # [in, G*H]
        self.r = pick(n.inputs[2])  # [G*H, H]
        b = n.input(3)
        self.wb = self.rb = None
        if b is not None:
            self.wb, self.rb = n.ops("split", [pick(b)], sizes=(gates, gates))
        p = n.input(7) if kind == "LSTM" else None
        self.peep = None if p is None else n.ops("split", [pick(p)], sizes=(hidden,) * 3)
        names = list(n.attr("activations", _ACTIVATIONS[kind]))
        count = len(_ACTIVATIONS[kind])
        first = d * count if len(names) >= 2 * count else 0
        alphas, betas = list(n.attr("activation_alpha", [])), list(n.attr("activation_beta", []))
        self.acts = [(names[i], alphas[i] if i < len(alphas) else None,
                      betas[i] if i < len(betas) else None) for i in range(first, first + count)]
        self.clip = n.attr("clip")

    def act(self, k: int, x: Ref) -> Ref:
        if self.clip is not None and k < 2:  # the cell clip bounds every gate's input
            x = self.n.op("clip", x, min=-float(self.clip), max=float(self.clip))
        name, alpha, beta = self.acts[k]
        return activation(self.n, name, x, alpha, beta)

    def project(self, x: Ref) -> Ref:
        """X W^T plus the biases that do not depend on H: [seq, batch, G*H]."""
        n = self.n
        xp = n.op("matmul", x, self.w_t)
        if self.wb is None:
            return xp
        if self.kind == "GRU":  # GRU's recurrent bias of gate h sits inside r * (...)
            return n.op("add", xp, self.wb)
        return n.op("add", xp, n.op("add", self.wb, self.rb))

    def split(self, x: Ref, parts: int) -> list[Ref]:
        return self.n.ops("split", [x], axis=-1, sizes=(self.hidden,) * parts)

    def hr(self, h: Ref | None, rows: slice | None = None) -> Ref | None:
        """H R^T (for the given gate rows of R)."""
        if h is None:
            return None
        n = self.n
        r = self.r if rows is None else n.op("slice", self.r, starts=(rows.start,),
                                              ends=(rows.stop,), axes=(0,))
        return n.op("matmul", h, n.op("transpose", r))

    def step(self, xt: Ref, h: Ref | None, c: Ref | None) -> tuple[Ref, Ref | None]:
        n, add = self.n, (lambda a, b: a if b is None else self.n.op("add", a, b))
        if self.kind == "RNN":
            return self.act(0, add(xt, self.hr(h))), None
        if self.kind == "LSTM":
            i, o, f, g = self.split(add(xt, self.hr(h)), 4)
            if self.peep is not None and c is not None:
                i = n.op("add", i, n.op("mul", self.peep[0], c))
                f = n.op("add", f, n.op("mul", self.peep[2], c))
            i, f, g = self.act(0, i), self.act(0, f), self.act(1, g)
            ig = n.op("mul", i, g)
            c = ig if c is None else n.op("add", n.op("mul", f, c), ig)
            if self.peep is not None:
                o = n.op("add", o, n.op("mul", self.peep[1], c))
            return n.op("mul", self.act(0, o), self.act(2, c)), c
        return self._gru(xt, h), None

    def _gru(self, xt: Ref, h: Ref | None) -> Ref:
        n, hid = self.n, self.hidden
        xz, xr, xh = self.split(xt, 3)
        rbz = rbr = rbh = None
        if self.rb is not None:
            rbz, rbr, rbh = self.split(self.rb, 3)
        hz_hr = self.hr(h, slice(0, 2 * hid))
        hz, hr = self.split(hz_hr, 2) if hz_hr is not None else (None, None)
        z = self.act(0, _sum(n, xz, hz, rbz))
        r = self.act(0, _sum(n, xr, hr, rbr))
        if n.attr("linear_before_reset", 0):
            inner = _sum(n, self.hr(h, slice(2 * hid, 3 * hid)), rbh)
            hh = xh if inner is None else n.op("add", xh, n.op("mul", r, inner))
        else:
            rh = None if h is None else self.hr(n.op("mul", r, h), slice(2 * hid, 3 * hid))
            hh = _sum(n, xh, rh, rbh)
        hh = self.act(1, hh)
        new = n.op("mul", n.op("sub", n.const_like(1, z), z), hh)
        return new if h is None else n.op("add", new, n.op("mul", z, h))


def _sum(n: NodeContext, *terms: Ref | None) -> Ref | None:
    out = None
    for t in terms:
        if t is not None:
            out = t if out is None else n.op("add", out, t)
    return out


def _concat(n: NodeContext, pieces: list[Ref], axis: int) -> Ref:
    return pieces[0] if len(pieces) == 1 else n.op("concat", *pieces, axis=axis)


def _stack(n: NodeContext, steps: list[Ref]) -> Ref:
    """[batch, hidden] per step -> [steps, 1, batch, hidden], in 4 kernels, not one per step:
    side by side [batch, steps * hidden], split into [batch, steps, hidden], steps first."""
    if len(steps) == 1:
        return n.op("unsqueeze", steps[0], axes=(0, 1))
    batch, hidden = steps[0].shape
    wide = n.op("reshape", n.op("concat", *steps, axis=1), shape=(batch, len(steps), hidden))
    return n.op("unsqueeze", n.op("transpose", wide, perm=(1, 0, 2)), axes=(1,))


def _recurrent(n: NodeContext, kind: str) -> list[Ref | None]:
    x, seq_lens = n.x, n.input(4)
    if n.attr("input_forget", 0):
        raise n.unsupported("LSTM with input_forget=1 is not supported")
    layout = int(n.attr("layout", 0))
    h0, c0 = n.input(5), n.input(6) if kind == "LSTM" else None
    # a zero state of symbolic batch (ConstantOfShape) is no state
    h0, c0 = (None if s is not None and s.fill is not None and not s.fill.any() else s
              for s in (h0, c0))
    if layout:  # batch first: [batch, seq, ...] -> [seq, batch, ...]
        x = n.op("transpose", x, perm=(1, 0, 2))
        h0, c0 = (None if s is None else n.op("transpose", s, perm=(1, 0, 2)) for s in (h0, c0))
    steps = static(n, x.shape[0], "the sequence length (kiln unrolls the recurrence)")
    if seq_lens is not None and not (seq_lens.is_const and np.all(seq_lens.const == steps)):
        raise n.unsupported("sequence_lens shorter than the sequence are not supported")
    hidden = int(n.attr("hidden_size", n.inputs[2].shape[-1]))
    direction = n.attr("direction", "forward")
    dirs = ("reverse",) if direction == "reverse" else (
        ("forward", "reverse") if direction == "bidirectional" else ("forward",))
    ys, hs, cs = [], [], []
    for d, way in enumerate(dirs):
        cell = _Cell(n, kind, d, hidden)
        xp = cell.project(x)
        pieces = n.ops("split", [xp], axis=0, sizes=(1,) * steps) if steps > 1 else [xp]
        h = None if h0 is None else n.op("gather", h0, np.int64(d))
        c = None if c0 is None else n.op("gather", c0, np.int64(d))
        out: list = [None] * steps
        for t in (reversed(range(steps)) if way == "reverse" else range(steps)):
            h, c = cell.step(n.op("squeeze", pieces[t], axes=(0,)), h, c)
            out[t] = h
        ys.append(_stack(n, out))
        hs.append(n.op("unsqueeze", h, axes=(0,)))
        if c is not None:
            cs.append(n.op("unsqueeze", c, axes=(0,)))
    y = _concat(n, ys, 1) if n.wants_output(0) else None
    y_h = _concat(n, hs, 0)
    y_c = _concat(n, cs, 0) if cs else None
    if layout:
        y = None if y is None else n.op("transpose", y, perm=(2, 0, 1, 3))
        y_h, y_c = (None if s is None else n.op("transpose", s, perm=(1, 0, 2))
                    for s in (y_h, y_c))
    return [y, y_h, y_c] if kind == "LSTM" else [y, y_h]


def _shapes(kind: str) -> Check:
    """Every input's shape against X [seq, batch, in] (layout 1: [batch, seq, in]), the
    directions D and the hidden size H (from R [D, G*H, H], or hidden_size): W [D, G*H, in],
    B [D, 2*G*H], sequence_lens [batch], initial states [D, batch, H] (layout 1:
    [batch, D, H]) and LSTM's peepholes P [D, 3*H]."""

    def check(n: NodeContext) -> str | None:
        x, w, r = n.inputs[:3]
        if not (w.type.is_static and r.type.is_static):
            return f"the weights W {w.type} and R {r.type} must have static shapes"
        dirs = 2 if n.attr("direction", "forward") == "bidirectional" else 1
        hidden = n.attr("hidden_size", r.shape[-1])
        gates = _GATES[kind] * hidden
        layout = n.attr("layout", 0)
        steps, batch = (x.shape[1], x.shape[0]) if layout else x.shape[:2]
        state = (batch, dirs, hidden) if layout else (dirs, batch, hidden)
        want = {1: (dirs, gates, x.shape[2]), 2: (dirs, gates, hidden), 3: (dirs, 2 * gates),
                4: (batch,), 5: state, 6: state, 7: (dirs, 3 * hidden)}
        for i, shape in want.items():
            ref = n.input(i)
            if ref is not None and ref.shape != shape:
                return (f"input {i} ({n.node.input[i]!r}) is {ref.type}, but X {x.type}, "
                        f"{dirs} direction(s) and hidden size {hidden} make it "
                        f"{list(shape)}")
        if isinstance(steps, int) and not 1 <= steps <= MAX_STEPS:
            return f"a sequence of {steps} steps: kiln unrolls 1 to {MAX_STEPS}"
        return None

    return check


def _activations(kind: str) -> Check:
    """One activation list for each direction, or one for all."""

    def check(n: NodeContext) -> str | None:
        names = n.attr("activations")
        per = len(_ACTIVATIONS[kind])
        dirs = 2 if n.attr("direction", "forward") == "bidirectional" else 1
        if names is not None and len(names) not in (per, per * dirs):
            return (f"{kind} takes {per} activation(s) per direction ({per * dirs} for "
                    f"{dirs} direction(s)), got {list(names)}")
        return None

    return check


def _spec(kind: str) -> Spec:
    return Spec(
        ranks={0: (3, 3), 1: (3, 3), 2: (3, 3), 3: (2, 2), 4: (1, 1), 5: (3, 3), 6: (3, 3),
               7: (2, 2)},
        attrs={"direction": one_of("forward", "reverse", "bidirectional"), "layout": flag,
               "hidden_size": at_least(1), "clip": positive,
               "activation_alpha": finite, "activation_beta": finite, "input_forget": flag,
               "linear_before_reset": flag},
        checks=(_shapes(kind), _activations(kind)))


@converter("LSTM", 7, 14, 22, spec=_spec("LSTM"))
def lstm(n: NodeContext) -> list[Ref | None]:
    return _recurrent(n, "LSTM")


@converter("GRU", 7, 14, 22, spec=_spec("GRU"))
def gru(n: NodeContext) -> list[Ref | None]:
    return _recurrent(n, "GRU")


@converter("RNN", 7, 14, 22, spec=_spec("RNN"))
def rnn(n: NodeContext) -> list[Ref | None]:
    return _recurrent(n, "RNN")
