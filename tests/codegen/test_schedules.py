"""The GEMM and conv schedules against numpy and torch on shapes that are not multiples of
the register tiles, and checks that the blocked schedules (not a fallback) were applied."""

from __future__ import annotations

import re

import numpy as np
import pytest

from kiln.codegen.build import build
from kiln.ir import GraphBuilder, TensorType

RNG = np.random.default_rng(0)


def _randn(*shape):
    return RNG.standard_normal(shape).astype("float32")


GEMM_SHAPES = [(1, 1, 1), (1, 1000, 512), (7, 9, 13), (33, 65, 17), (100, 100, 77),
               (129, 31, 200), (64, 96, 1)]


@pytest.mark.parametrize("b_const", [True, False])
def test_gemm_odd_shapes_match_numpy(b_const):
    feeds, refs = [], []
    builder = GraphBuilder("gemms")
    for i, (m, n, k) in enumerate(GEMM_SHAPES):
        a, b = _randn(m, k), _randn(k, n)
        av = builder.input(f"a{i}", TensorType.of(a))
        bv = builder.param(f"b{i}", b) if b_const else builder.input(f"b{i}", TensorType.of(b))
        (y,) = builder.op("matmul", [av, bv])
        builder.output(y)
        feeds.append((f"a{i}", a))
        if not b_const:
            feeds.append((f"b{i}", b))
        refs.append(a.astype(np.float64) @ b.astype(np.float64))
    res = build(builder.build())
    got = res.run(dict(feeds))
    for (m, n, k), g, r in zip(GEMM_SHAPES, got, refs):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * np.sqrt(k),
                                   err_msg=f"{m}x{n}x{k}")
    gemm_kernels = [f for f in res.module.functions.values() if "gemm_local" in f.script()]
    assert len(gemm_kernels) >= 5  # the register-tiled schedule, not a fallback


@pytest.mark.parametrize("b_const", [True, False])
def test_one_row_batches_fold_into_one_gemm_with_its_epilogue(b_const):
    """[S, 1, K] @ [K, N] (+ bias, relu) is one register-tiled GEMM over S rows with the
    epilogue in its write-back; S = 37 is no multiple of the tile's rows."""
    s, k, n = 37, 50, 70
    a, w, bias = _randn(s, 1, k), _randn(k, n), _randn(n)
    builder = GraphBuilder("fold")
    av = builder.input("a", TensorType.of(a))
    wv = builder.param("w", w) if b_const else builder.input("w", TensorType.of(w))
    (y,) = builder.op("matmul", [av, wv])
    (y,) = builder.op("add", [y, builder.param("bias", bias)])
    (y,) = builder.op("relu", [y])
    builder.output(y)
    from kiln.passes.manager import optimize

    res = build(optimize(builder.build(), 2))
    feeds = {"a": a} if b_const else {"a": a, "w": w}
    want = np.maximum(np.matmul(a.astype(np.float64), w) + bias, 0)
    np.testing.assert_allclose(res.run(feeds)[0], want, rtol=1e-4, atol=1e-4)
    (script,) = [f.script() for f in res.module.functions.values()]
    # the tile stays in registers and the epilogue is written from them, under one
    # parallel loop: no global gemm buffer, no second loop nest for the epilogue
    # one [Mp, 96] GEMM (37 rows padded to whole 8-row tiles), not 37 [1, 96] ones
    rows = re.search(r'gemm_local = T.sblock_alloc_buffer\(\((\d+), 96\), scope="local"\)',
                     script)
    assert rows and int(rows[1]) >= 37 and int(rows[1]) % 8 == 0
    assert "gemm = T.sblock_alloc_buffer" not in script and script.count("T.parallel(") == 1
    assert script.index("T.parallel(") < script.index('T.sblock("relu")')


@pytest.mark.parametrize("shape", [(2, 3, 5, 24), (1, 7, 7, 40), (3, 9, 1, 16)], ids=str)
def test_batches_of_a_2d_weight_fold_into_one_gemm(shape):
    """[..., M, K] @ [K, N] + bias, relu with few rows per batch: one GEMM over all rows
    (the epilogue computed over the product), compiled == numpy."""
    *batch, m, k = shape
    n = 37
    a, w, bias = _randn(*shape), _randn(k, n), _randn(n)
    builder = GraphBuilder("fold_batches")
    (y,) = builder.op("matmul", [builder.input("a", TensorType.of(a)), builder.param("w", w)])
    (y,) = builder.op("add", [y, builder.param("bias", bias)])
    (y,) = builder.op("relu", [y])
    builder.output(y)
    from kiln.passes.manager import optimize

    res = build(optimize(builder.build(), 2))
    want = np.maximum(np.matmul(a.astype(np.float64), w) + bias, 0)
    np.testing.assert_allclose(res.run({"a": a})[0], want, rtol=1e-4, atol=1e-4)
    (script,) = [f.script() for f in res.module.functions.values()]
    rows = int(np.prod(batch)) * m
    gemm = re.search(r"gemm(?:_local)? = T.sblock_alloc_buffer\(\((\d+), 64\)", script)
    assert gemm and int(gemm[1]) >= rows  # one [rows, N] GEMM, not a batch of [M, N] ones


def test_batched_and_broadcast_matmul_match_numpy():
    cases = [((2, 3, 17, 19), (2, 3, 19, 23)), ((4, 33, 8), (8, 40)), ((5, 7), (3, 7, 9)),
             ((2, 1, 6, 5), (1, 3, 5, 34))]
    builder = GraphBuilder("bmm")
    feeds, refs = {}, []
    for i, (sa, sb) in enumerate(cases):
        a, b = _randn(*sa), _randn(*sb)
        feeds[f"a{i}"], feeds[f"b{i}"] = a, b
        (y,) = builder.op("matmul", [builder.input(f"a{i}", TensorType.of(a)),
                                     builder.input(f"b{i}", TensorType.of(b))])
        builder.output(y)
        refs.append(np.matmul(a.astype(np.float64), b.astype(np.float64)))
    for g, r in zip(build(builder.build()).run(feeds), refs):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


CONV_CASES = [
    # (N, C, H, W, O, k, stride, pads, dilation)
    (1, 3, 31, 29, 17, 7, 2, (3, 3, 3, 3), 1),
    (2, 19, 13, 41, 33, 3, 1, (1, 0, 1, 2), 1),
    (1, 64, 14, 14, 70, 1, 1, (0, 0, 0, 0), 1),
    (1, 16, 17, 61, 16, 3, 2, (1, 1, 1, 1), 2),
    (1, 5, 9, 9, 3, 5, 1, (2, 2, 2, 2), 1),
]


def test_conv2d_odd_shapes_match_torch():
    torch = pytest.importorskip("torch")
    builder = GraphBuilder("convs")
    feeds, refs = {}, []
    for i, (n, c, h, w, o, k, s, p, d) in enumerate(CONV_CASES):
        x, wt, b = _randn(n, c, h, w), _randn(o, c, k, k), _randn(o)
        feeds[f"x{i}"] = x
        attrs = {"strides": (s, s), "pads": p, "dilations": (d, d)}
        (y,) = builder.op("conv2d", [builder.input(f"x{i}", TensorType.of(x)),
                                     builder.param(f"w{i}", wt), builder.param(f"b{i}", b)],
                          attrs)
        (y,) = builder.op("relu", [y])
        builder.output(y)
        xt = torch.nn.functional.pad(torch.from_numpy(x).double(), (p[1], p[3], p[0], p[2]))
        ref = torch.nn.functional.conv2d(xt, torch.from_numpy(wt).double(),
                                         torch.from_numpy(b).double(), stride=s, dilation=d)
        refs.append(torch.relu(ref).numpy())
    res = build(builder.build())
    for case, g, r in zip(CONV_CASES, res.run(feeds), refs):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4, err_msg=str(case))
    # register-tiled: NCHWc blocks, or a GEMM for the 1x1 case (its tile crosses image rows,
    # so it is stored to a global result first, but still accumulates in registers)
    scripts = [f.script() for f in res.module.functions.values()]
    assert sum("conv_nchwc_local" in s for s in scripts) == len(CONV_CASES) - 1
    assert sum("gemm_local" in s for s in scripts) == 1


TRANSPOSES = [((48, 32), (1, 0)), ((2, 3, 32, 16), (0, 1, 3, 2)), ((32, 4, 16), (2, 1, 0)),
              ((20, 35), (1, 0)), ((16, 8), (1, 0)),
              # [pixels, channels] -> NCHW with pixels in no whole tiles (a native conv's
              # epilogue at 11 x 11): tiles with a partial last one
              ((1, 121, 32), (0, 2, 1)), ((3, 49, 16), (0, 2, 1))]


def test_transposes_tiled_and_fused_match_numpy():
    """Transposes whose output rows walk the input across its rows get lanes x lanes tiles
    (schedule_transpose); shapes that do not tile fall back. Alone and inlined into an
    elementwise op (an optimizer update with a transposed gradient), values are exact."""
    builder, feeds, want = GraphBuilder("transposes"), {}, []
    for i, (shape, perm) in enumerate(TRANSPOSES):
        x = _randn(*shape)
        xv = builder.input(f"x{i}", TensorType.of(x))
        (y,) = builder.op("transpose", [xv], {"perm": perm})
        builder.output(y)
        feeds[f"x{i}"] = x
        want.append(x.transpose(perm))
    w, g = _randn(32, 48), _randn(48, 32)
    wv, gv = builder.input("w", TensorType.of(w)), builder.input("g", TensorType.of(g))
    (gt,) = builder.op("transpose", [gv], {"perm": (1, 0)})
    (y,) = builder.op("sub", [wv, gt])
    builder.output(y)
    feeds.update(w=w, g=g)
    want.append(w - g.T)
    res = build(builder.build())
    for got, expected in zip(res.run(feeds), want, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_transposes_without_whole_tiles_still_tile():
    """The contiguous axes of 121 pixels make no whole 16-wide tiles: one tile axis with a
    partial last tile (a predicate), not one gather per element across the flat index."""
    builder = GraphBuilder("odd")
    xv = builder.input("x", TensorType((1, 121, 32)))
    (y,) = builder.op("transpose", [xv], {"perm": (0, 2, 1)})
    builder.output(y)
    res = build(builder.build())
    script = res.module[res.kernels[0].func].script()
    assert "T.where" in script and "T.vectorized" in script and "% 121" not in script
    x = _randn(1, 121, 32)
    np.testing.assert_array_equal(res.run({"x": x})[0], x.transpose(0, 2, 1))


def test_transposed_axis_finds_the_walked_axis():
    from tvm import s_tir, te

    from kiln.codegen.schedules.cpu.common import blocks, transposed_axis

    x = te.placeholder((8, 16, 32), name="x")
    t = te.compute((32, 16, 8), lambda i, j, k: x[k, j, i] + 1.0, name="t")
    same = te.compute((8, 16, 32), lambda i, j, k: x[i, j, k] * 2.0, name="same")
    for out, axis in ((t, 0), (same, None)):
        sch = s_tir.Schedule(te.create_prim_func([x, out]))
        (block,) = blocks(sch)
        assert transposed_axis(sch, block) == axis


@pytest.mark.parametrize("parts, shape, axis", [(3, (2, 5, 7), 1), (4, (3, 33), 1),
                                                (9, (2, 3, 5, 5), 1), (33, (2, 7), 1),
                                                (17, (3, 4), 0), (6, (2, 3, 17), 2)])
def test_concat_chain_and_tree_forms_match_numpy(parts, shape, axis):
    """concat picks its part with a chain of selects up to CONCAT_CHAIN_MAX parts and a
    balanced tree above; parts of different sizes along the axis, values exact."""
    builder, arrays = GraphBuilder("concat"), []
    for i in range(parts):
        part = list(shape)
        part[axis] += i % 3  # unequal sizes
        arrays.append(_randn(*part))
    values = [builder.input(f"x{i}", TensorType.of(a)) for i, a in enumerate(arrays)]
    (y,) = builder.op("concat", values, {"axis": axis})
    builder.output(y)
    (got,) = build(builder.build()).run({f"x{i}": a for i, a in enumerate(arrays)})
    np.testing.assert_array_equal(got, np.concatenate(arrays, axis))


GROUPED = [  # (C, O, groups, kernel, stride, pad, dilation): RegNet-, ResNeXt- and odd widths
    (48, 48, 6, 3, 1, 1, 1),     # group width 8: blocks of 2 groups (16 channels)
    (40, 40, 5, 3, 2, 1, 1),     # O % 16 != 0: blocks of one group (8 channels)
    (32, 64, 2, 3, 1, (0, 1, 2, 1), 2),  # wide groups (og 32): blocks inside one group
    (24, 48, 3, 1, 1, 0, 1),     # grouped 1x1
    (32, 32, 8, 3, 1, 1, 1),     # group width 4 (ResNeXt-like): 4 groups per block
]


@pytest.mark.parametrize("b_const", [True, False])
@pytest.mark.parametrize("case", GROUPED, ids=str)
def test_grouped_convs_are_blocked_by_groups(case, b_const):
    from kiln.ir import interpret
    from kiln.passes.manager import optimize

    c, o, g, k, s, p, d = case
    pads = p if isinstance(p, tuple) else (p,) * 4
    x, w, bias = _randn(2, c, 9, 11), _randn(o, c // g, k, k), _randn(o)
    builder = GraphBuilder("grouped")
    xv = builder.input("x", TensorType.of(x))
    wv = builder.param("w", w) if b_const else builder.input("w", TensorType.of(w))
    (y,) = builder.op("conv2d", [xv, wv, builder.param("bias", bias)],
                      {"groups": g, "strides": (s, s), "pads": pads, "dilations": (d, d)})
    (y,) = builder.op("relu", [y])
    builder.output(y)
    graph = optimize(builder.build(), 2)
    res = build(graph)
    feeds = {"x": x} if b_const else {"x": x, "w": w}
    np.testing.assert_allclose(res.run(feeds)[0], interpret(graph, feeds)[0], rtol=1e-4,
                               atol=1e-4)
    (script,) = [f.script() for f in res.module.functions.values()]
    assert 'T.sblock("conv_nchwc' in script and "conv_direct" not in script
    assert 'scope="local"' in script  # the register tile, relu written from it


def test_group_widths_without_a_block_use_the_direct_formula():
    from kiln.codegen.ops.conv import group_blocks

    assert group_blocks(16, 32, 16, 16) is None  # og = 1: 8 groups per block, too wasteful
    assert group_blocks(16, 32, 32, 16) == (8, 8)  # og = 2: 4 groups in half a vector
    assert group_blocks(8, 32, 32, 16) == (16, 16)  # og = 4: 4 groups per block
    assert group_blocks(6, 48, 48, 16) == (16, 16)
    assert group_blocks(5, 40, 40, 16) == (8, 8)
    assert group_blocks(2, 32, 64, 16) == (16, 16)
    assert group_blocks(1, 32, 64, 16) is None
