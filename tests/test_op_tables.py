"""Every op's kind, and what the passes derive from it.

The per-layer tables have their own coverage tests (lowering: tests/codegen/test_build.py,
gradient: tests/passes/test_autodiff.py, ONNX export: tests/onnx/test_exporter.py); this one
checks the kinds on the op definitions, and that fusion needs nothing but the kind: every
elementwise op joins a matmul's epilogue without fusion naming it.
"""

from __future__ import annotations

import numpy as np
import pytest

from kiln.errors import KilnError, ShapeError
from kiln.ir import OPS, GraphBuilder, TensorType, interpret, verify
from kiln.ir.ops.registry import (
    ANCHOR,
    BROADCAST,
    ELEMENTWISE,
    KINDS,
    REDUCTION,
    register,
)
from kiln.passes.fusion import fuse_with_report


def test_every_op_has_a_kind_and_consistent_flags():
    for name, opdef in OPS.items():
        assert opdef.kind in KINDS, name
        if opdef.epilogue:  # an epilogue is computed into a kernel of the op's own
            assert opdef.kind in (ANCHOR, REDUCTION, BROADCAST), name
        if opdef.prologue:
            assert opdef.epilogue, name
    assert {k for k in KINDS} == {d.kind for d in OPS.values()}, "a kind no op has"


def test_register_refuses_an_op_without_a_valid_kind():
    with pytest.raises(TypeError):
        register("no_kind", infer=lambda t, a: t[0])  # kind is a required argument
    with pytest.raises(KilnError, match="kind 'pointwise' is not one of"):
        register("bad_kind", kind="pointwise", infer=lambda t, a: t[0])
    assert "no_kind" not in OPS and "bad_kind" not in OPS


def _epilogue_graph(op: str):
    """x @ w followed by ``op`` on the product (its other operands graph inputs), or None
    when ``op`` does not take a float32 [4, 8] operand (logic ops)."""
    shape = (4, 8)
    for arg_forms in (["mm"], ["mm", "y"], ["cond", "mm", "y"]):
        b = GraphBuilder(op)
        x = b.input("x", TensorType((4, 6)))
        w = b.input("w", TensorType((6, 8)))
        (mm,) = b.op("matmul", [x, w])
        dtypes = {"y": "float32", "cond": "bool"}
        args = [mm if f == "mm" else b.input(f, TensorType(shape, dtypes[f]))
                for f in arg_forms]
        try:
            outs = b.op(op, args)
        except ShapeError:
            continue
        b.output(*outs)
        return b.build()
    return None


# the logic ops (bool operands) cannot follow a float32 matmul: the next test counts them
FLOAT_ELEMENTWISE = sorted(o for o, d in OPS.items()
                           if d.kind == ELEMENTWISE and _epilogue_graph(o) is not None)


@pytest.mark.parametrize("op", FLOAT_ELEMENTWISE)
def test_every_elementwise_op_fuses_into_a_matmul_epilogue(op):
    g = _epilogue_graph(op)
    fused, report = fuse_with_report(g)
    verify(fused)
    assert [n.op for n in fused.nodes] == ["fused"], report
    assert fused.nodes[0].attrs["pattern"] == f"matmul+{op}"
    rng = np.random.default_rng(0)
    inputs = {v.name: (rng.random(v.type.shape) < 0.5 if v.dtype == "bool"
                       else rng.standard_normal(v.type.shape).astype(v.dtype))
              for v in g.inputs}
    with np.errstate(all="ignore"):  # log, sqrt, pow of negative numbers: NaN both ways
        for want, got in zip(interpret(g, inputs), interpret(fused, inputs)):
            np.testing.assert_array_equal(want, got)


def test_the_epilogue_test_covers_every_elementwise_op_but_logic():
    """Guard against the test above leaving ops out."""
    ops = [o for o, d in OPS.items() if d.kind == ELEMENTWISE]
    assert sorted(set(ops) - set(FLOAT_ELEMENTWISE)) == [
        "logical_and", "logical_not", "logical_or", "logical_xor"]
