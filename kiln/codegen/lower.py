"""Lowering: kiln nodes and sub-graphs to TVM tensor expressions (TE), one PrimFunc per group.

``LOWERINGS`` maps an op name to a TE builder ``fn(inputs, attrs, out_types) -> [te.Tensor]``
(``kiln/codegen/ops/*.py`` register them). ``lower_group`` composes the builders of a
sub-graph, so a fused group becomes ONE PrimFunc; a single node is the one-node group.

A builder's compute says what is computed; how it is tiled comes from the target's schedule
strategy (``schedules/<kind>``) as a ``Tiling`` in the private attribute ``_tiling`` (read it
with ``ops.common.tiling``): vector lanes and register tiles never appear in a builder as
constants. Besides it, the packed-layout markers that ``pack.py`` adds when it re-laid out a
constant input at compile time are private attributes too (``_packed_b``, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from kiln.errors import KilnError, UnsupportedOpError
from kiln.ir.dims import rebuild
from kiln.ir.graph import Node, Value
from kiln.ir.types import TensorType, format_types

Lowering = Callable[[list, dict, list[TensorType]], Any]


@dataclass(frozen=True)
class Tiling:
    """How a target's strategy wants one op's compute laid out: ``lanes`` elements of the
    output dtype per vector, GEMM register tiles of ``gemm_rows`` rows x ``gemm_cols(n)``
    columns swept over row blocks of A of at most ``gemm_block_bytes`` (and at least
    ``tasks`` blocks x column panels, for the threads), and about ``conv_pixels`` output
    pixels per convolution register tile. ``blocked`` False (GPU targets) asks for the plain
    computes instead: matmuls and convolutions as sums over their inputs as they lie, no
    weights re-laid out at compile time, reductions in one stage; the GPU schedules tile
    those themselves. ``raises`` False (GPU kernels, which cannot return an error): a
    failed input check (an index out of range, an integer division by zero) traps the
    device instead (``ops/checks.py``). ``bf16_dot`` True: bfloat16 matmuls and
    convolutions call kiln's native GEMM (``ops/gemm_native.py``: AVX512-BF16 or AMX);
    ``int8_dot`` True: so do uint8 x int8 ones (AVX512-VNNI or AMX-INT8)."""

    lanes: int
    gemm_rows: int
    gemm_vectors: int  # vectors per GEMM register-tile row when N is wider than one vector
    conv_pixels: int
    gemm_block_bytes: int
    tasks: int
    blocked: bool = True
    raises: bool = True
    bf16_dot: bool = False
    int8_dot: bool = False

    def gemm_cols(self, n: int) -> int:
        """Columns of a GEMM register tile (and of a packed B panel) for N = ``n``."""
        return self.lanes if n <= self.lanes else self.gemm_vectors * self.lanes

LOWERINGS: dict[str, Lowering] = {}
# Ops deliberately without a lowering, with the reason (the coverage test reads this).
ABSENT: dict[str, str] = {}
# Ops that lower_group handles itself rather than through LOWERINGS.
GROUP_OPS = {"fused": "its sub-graph is lowered node by node into one PrimFunc"}


def lowering(*ops: str) -> Callable[[Lowering], Lowering]:
    """Decorator: register ``fn`` as the TE builder of each op in ``ops``."""

    def wrap(fn: Lowering) -> Lowering:
        for op in ops:
            if op in LOWERINGS:
                raise KilnError(f"op {op!r} has two lowerings")
            LOWERINGS[op] = fn
        return fn

    return wrap


def _ensure_registered() -> None:
    import kiln.codegen.ops  # noqa: F401  (registers every lowering)


def node_context(node: Node) -> str:
    """'node %3 (matmul, at m.py:1) on float32[2, 3], float32[3, 4]' for error messages."""
    return f"{node.describe()} on {format_types([v.type for v in node.inputs]) or 'no inputs'}"


def unsupported(node: Node, why: str = "") -> UnsupportedOpError:
    """The error for a node that codegen cannot lower (names the node, op and shapes)."""
    _ensure_registered()
    reason = why or ABSENT.get(node.op) or "no TVM lowering is registered for it yet"
    return UnsupportedOpError(f"{node_context(node)}: cannot generate code for op "
                              f"{node.op!r}: {reason}")


def fused_body(node: Node):
    """The sub-graph of a ``fused`` node (the Graph-valued attribute), else None."""
    from kiln.ir.graph import Graph

    if node.op != "fused":
        return None
    for value in node.attrs.values():
        if isinstance(value, Graph):
            return value
    raise KilnError(f"{node.describe()}: a fused node without a sub-graph attribute")


def flatten_nodes(nodes: Sequence[Node]) -> tuple[list[Node], dict[Value, Value]]:
    """Expand ``fused`` nodes into their bodies; returns the nodes and a value renaming
    (body input/output -> outer value) to apply when looking values up."""
    out: list[Node] = []
    alias: dict[Value, Value] = {}
    for n in nodes:
        body = fused_body(n)
        if body is None:
            out.append(n)
            continue
        inner, inner_alias = flatten_nodes(body.nodes)
        alias.update(inner_alias)
        alias.update(zip(body.inputs, n.inputs))
        alias.update(zip(body.outputs, n.outputs))
        out.extend(inner)
    return out, alias


def check_lowerable(nodes: Sequence[Node]) -> list[UnsupportedOpError]:
    """Every node (fused bodies included) that has no lowering, as errors."""
    _ensure_registered()
    flat, _ = flatten_nodes(nodes)
    return [unsupported(n) for n in flat if n.op not in LOWERINGS]


def _ident(name: str) -> str:
    s = re.sub(r"\W", "_", name)
    return s if s and not s[0].isdigit() else "v" + s


def _copy(t, name: str):
    from tvm import te

    return te.compute(t.shape, lambda *i: t[i] if i else t[()], name=name)


@dataclass(frozen=True)
class TeType:
    """A value's type as a TE builder sees it: ``shape`` holds ints and, for symbolic sizes,
    TIR expressions of the kernel's size variables (``te_shape``)."""

    shape: tuple
    dtype: str

    @property
    def rank(self) -> int:
        return len(self.shape)


def te_dim(d: Any, sizes: dict[str, Any]) -> Any:
    """A kiln dim as a TE extent: an int, or the symbolic size's expression over the int32
    variables in ``sizes`` (one per name, made on first use)."""
    from tvm import tirx

    def var(name: str) -> Any:
        if name not in sizes:
            sizes[name] = tirx.Var(name, "int32")
        return sizes[name]

    return rebuild(d, var, tirx.floordiv)


def te_shape(t: TensorType, sizes: dict[str, Any]) -> tuple:
    return tuple(te_dim(d, sizes) for d in t.shape)


def same_extent(a: Any, b: Any) -> bool:
    """Whether two TE extents (ints or TIR expressions) are the same size."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    import tvm_ffi

    return not isinstance(a, int) and not isinstance(b, int) and \
        bool(tvm_ffi.structural_equal(a, b))


@dataclass
class LoweredGroup:
    """The TE of one group: placeholders (args) and outputs, plus constants made on the way."""

    tensors: list  # te placeholders then te output tensors, in PrimFunc argument order
    args: list[str]  # value names, inputs then outputs (packed constants under their new names)
    num_outputs: int
    new_constants: dict[str, np.ndarray] = field(default_factory=dict)
    sizes: dict[str, Any] = field(default_factory=dict)  # symbolic size name -> int32 var

    @property
    def size_names(self) -> list[str]:
        """The symbolic sizes the kernel takes after its tensors, as int32 arguments."""
        return sorted(self.sizes)

    def prim_func(self):
        """The unscheduled PrimFunc ``(inputs..., outputs..., sizes...)``."""
        from tvm import te

        return te.create_prim_func(self.tensors + [self.sizes[n] for n in self.size_names])

    def natives(self) -> set[str]:
        """The native (C) kernels it calls (``kiln/codegen/native``)."""
        from kiln.codegen.native import natives_of

        return natives_of(self.tensors[len(self.tensors) - self.num_outputs:])


def lower_group(
    nodes: Sequence[Node],
    inputs: Sequence[Value],
    outputs: Sequence[Value],
    constants: Mapping[str, np.ndarray],
    tiling: Callable[[Node], Tiling],
) -> LoweredGroup:
    """Compose the TE of ``nodes`` reading ``inputs`` and producing ``outputs``.

    ``constants`` are the arrays of the inputs that are constants: ``pack.py``'s rules may
    re-lay them out at compile time (the kernel then reads the new constant). ``tiling(node)``
    is the target strategy's tiling of each node's compute.
    """
    from tvm import te

    from kiln.codegen.pack import plan_packing

    _ensure_registered()
    flat, alias = flatten_nodes(nodes)
    env: dict[Value, Any] = {}
    args: list[str] = []
    tensors: list = []
    new_constants: dict[str, np.ndarray] = {}
    packed_env: dict[tuple[Value, str], Any] = {}
    sizes: dict[str, Any] = {}

    def placeholder(name: str, t: TensorType):
        ph = te.placeholder(te_shape(t, sizes), dtype=t.dtype, name=_ident(name))
        args.append(name)
        tensors.append(ph)
        return ph

    external = list(dict.fromkeys(inputs))
    for v in external:
        env[v] = None  # created lazily: an input read only in a packed layout is not passed raw

    def lookup(v: Value):
        v = alias.get(v, v)
        if v not in env:
            raise KilnError(f"value %{v.name} is read by the group but neither an input of it "
                            "nor computed in it")
        if env[v] is None:
            env[v] = placeholder(v.name, v.type)
        return env[v]

    for node in flat:
        fn = LOWERINGS.get(node.op)
        if fn is None:
            raise unsupported(node)
        attrs = dict(node.attrs)
        attrs["_tiling"] = tiling(node)
        attrs["_sizes"] = sizes  # the kernel's symbolic size variables (``te_dim``)
        args_te = []
        for pos, v in enumerate(node.inputs):
            outer = alias.get(v, v)
            plan = None
            if outer in env and env.get(outer) is None and outer.name in constants:
                plan = plan_packing(node, pos, constants[outer.name], attrs)
            if plan is None:
                args_te.append(lookup(v))
                continue
            key = (outer, plan.suffix)
            if key not in packed_env:
                pname = f"{outer.name}.{plan.suffix}"
                new_constants[pname] = plan.array
                packed_env[key] = placeholder(pname, TensorType.of(plan.array))
            attrs.update(plan.attrs)
            args_te.append(packed_env[key])
        try:
            result = fn(args_te, attrs,
                        [TeType(te_shape(v.type, sizes), v.dtype) for v in node.outputs])
        except (UnsupportedOpError, NotImplementedError) as e:  # a case the builder lacks
            raise unsupported(node, str(e)) from None
        results = list(result) if isinstance(result, (list, tuple)) else [result]
        if len(results) != len(node.outputs):
            raise KilnError(f"{node_context(node)}: lowering gave {len(results)} outputs")
        for v, t in zip(node.outputs, results):
            want = te_shape(v.type, sizes)
            if len(t.shape) != len(want) or t.dtype != v.dtype or not all(
                    same_extent(te_extent(a), b) for a, b in zip(t.shape, want)):
                raise KilnError(f"{node_context(node)}: lowering gave {t.dtype}"
                                f"{[te_extent(d) for d in t.shape]}, type inference says "
                                f"{v.type}")
            env[alias.get(v, v)] = t

    outs = []
    seen: set = set()
    for v in outputs:
        t = lookup(v)
        # An output must be its own compute stage: copy inputs and repeated tensors.
        if id(t) in seen or any(t is p for p in tensors):
            t = _copy(t, _ident(v.name) + "_copy")
        seen.add(id(t))
        outs.append(t)
    in_tensors = list(tensors)
    return LoweredGroup(in_tensors + outs, args + [v.name for v in outputs], len(outputs),
                        new_constants, sizes)


def te_extent(d: Any) -> Any:
    """A TE shape entry as an int where it is constant, else the (symbolic) expression."""
    return int(d) if hasattr(d, "value") or isinstance(d, int) else d
