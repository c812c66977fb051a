"""Shape ops through GraphBuilder + interpret: references against PyTorch (hand math where
PyTorch lacks the op), inference on hypothesis-drawn shapes (static and symbolic), and one test
per error path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from kiln.errors import AttributeError_, KilnError, ShapeError
from kiln.ir import GraphBuilder, TensorType, interpret
from kiln.ir.dims import evaluate, symbol

RNG = np.random.default_rng(0)
BIG = 2**63 - 1  # ONNX's "to the end" sentinel


def arr(*shape: int, dtype: str = "float32") -> np.ndarray:
    if dtype.startswith("int"):
        return RNG.integers(-9, 9, shape).astype(dtype)
    return RNG.standard_normal(shape).astype(dtype)


def idx(values, dtype: str = "int64") -> np.ndarray:
    return np.array(values, dtype=dtype)


def build(op: str, types: list[TensorType], attrs: dict):
    b = GraphBuilder()
    ins = [b.input(f"x{i}", t) for i, t in enumerate(types)]
    b.output(*b.op(op, ins, attrs))
    return b.build()


def infer(op: str, types: list[TensorType], attrs: dict | None = None) -> list[TensorType]:
    return [v.type for v in build(op, types, attrs or {}).outputs]


def run(op: str, arrays: list[np.ndarray], attrs: dict | None = None, types=None) -> list:
    types = types or [TensorType.of(a) for a in arrays]
    graph = build(op, types, attrs or {})
    return interpret(graph, {f"x{i}": a for i, a in enumerate(arrays)})


def check_symbolic(op: str, arrays: list, attrs: dict, names: list, static_attrs=None) -> list:
    """``names[k][d]`` names dim d of input k (or None). Inference on the symbolic types, with
    the names bound, must equal inference on the static types (given ``static_attrs`` if the
    attributes hold names too), and the graph must run."""
    types = [
        TensorType(tuple(n or d for n, d in zip(nm, a.shape)), a.dtype.name)
        for nm, a in zip(names, arrays)
    ]
    bind = {n: d for nm, a in zip(names, arrays) for n, d in zip(nm, a.shape) if n}
    sym = infer(op, types, attrs)
    static = [TensorType.of(a) for a in arrays]
    want = [t.shape for t in infer(op, static, attrs if static_attrs is None else static_attrs)]
    assert [tuple(evaluate(d, bind) for d in t.shape) for t in sym] == want
    assert [o.shape for o in run(op, arrays, attrs, types)] == want
    return sym


# -- references against PyTorch ----------------------------------------------------------------

X, X4, COL, ONES = arr(2, 3, 4), arr(1, 2, 3, 4), arr(3, 1), arr(1, 3, 1)
XI, SCALAR = arr(3, 4, dtype="int32"), np.array(1.5, np.float32)
SEL, TAKE = RNG.integers(0, 4, (2, 3, 5)), torch.take_along_dim


def sl(starts, ends, axes=None, steps=None) -> dict:
    return {"starts": starts, "ends": ends, "axes": axes, "steps": steps}


def pad(pads, mode="constant", **kw) -> dict:
    return {"pads": pads, "mode": mode, **kw}


CASES = [
    ("reshape", [X], {"shape": (6, 4)}, lambda x: x.reshape(6, 4)),
    ("reshape", [X], {"shape": (4, -1)}, lambda x: x.reshape(4, -1)),
    ("reshape", [X], {"shape": (-1,)}, lambda x: x.reshape(-1)),
    ("reshape", [arr(0, 5)], {"shape": (5, 0)}, lambda x: x.reshape(5, 0)),
    ("transpose", [X], {}, lambda x: x.permute(2, 1, 0)),
    ("transpose", [X], {"perm": (1, 0, 2)}, lambda x: x.permute(1, 0, 2)),
    ("transpose", [X], {"perm": (-1, 0, 1)}, lambda x: x.permute(-1, 0, 1)),
    ("concat", [X, arr(2, 1, 4), arr(2, 5, 4)], {"axis": 1}, lambda *xs: torch.cat(xs, 1)),
    ("concat", [X, X], {"axis": -1}, lambda *xs: torch.cat(xs, -1)),
    ("concat", [XI], {}, lambda x: torch.cat([x])),
    ("split", [X], {"axis": 1, "sizes": (1, 2)}, lambda x: torch.split(x, [1, 2], 1)),
    ("split", [X], {"axis": -1, "sizes": (4,)}, lambda x: torch.split(x, [4], -1)),
    ("split", [X], {"axis": 2, "sizes": (0, 3, 1)}, lambda x: torch.split(x, [0, 3, 1], 2)),
    ("slice", [X], sl((1,), (3,), (2,)), lambda x: x[:, :, 1:3]),
    ("slice", [X], sl((0, -3), (BIG, -1)), lambda x: x[0:, -3:-1]),
    ("slice", [X], sl((1,), (99,), (-1,), (2,)), lambda x: x[..., 1::2]),
    ("slice", [X], sl((-1,), (-BIG - 1,), (2,), (-1,)), lambda x: x.flip(2)),
    ("slice", [X], sl((5,), (0,), (1,)), lambda x: x[:, 5:0]),
    # ONNX clamps this start to 0 (Python slicing would take nothing)
    ("slice", [X], sl((-9,), (-BIG - 1,), (1,), (-1,)), lambda x: x[:, :1]),
    ("gather", [X, idx([[0, -1], [1, 1]])], {"axis": 1}, lambda x, i: x[:, i]),
    ("gather", [X, idx(1)], {}, lambda x, i: x[i]),
    ("gather", [X, idx([-1, 0, 3], "int32")], {"axis": -1}, lambda x, i: x[..., i.long()]),
    ("take_along_axis", [arr(2, 3, 4), SEL], {"axis": 2}, lambda x, i: TAKE(x, i, 2)),
    ("take_along_axis", [X, idx([[[3, 0]]])], {"axis": -1}, lambda x, i: TAKE(x, i, -1)),
    ("take_along_axis", [X, idx([[[1]], [[0]]])], {"axis": 0}, lambda x, i: TAKE(x, i, 0)),
    ("expand", [COL], {"shape": (2, 3, 4)}, lambda x: x.expand(2, 3, 4)),
    ("expand", [arr(4, dtype="int64")], {"shape": (2, 4)}, lambda x: x.expand(2, 4)),
    ("squeeze", [ONES], {}, lambda x: x.squeeze()),
    ("squeeze", [ONES], {"axes": (-1,)}, lambda x: x.squeeze(-1)),
    ("squeeze", [ONES], {"axes": 0}, lambda x: x.squeeze(0)),
    ("unsqueeze", [X], {"axes": (0, -1)}, lambda x: x.unsqueeze(0).unsqueeze(-1)),
    ("unsqueeze", [X], {"axes": (1, 3)}, lambda x: x.unsqueeze(1).unsqueeze(3)),
    ("unsqueeze", [SCALAR], {"axes": 0}, lambda x: x.unsqueeze(0)),
    ("pad", [X], pad((0, 1, 2, 1, 0, 3)), lambda x: F.pad(x, (2, 3, 1, 0, 0, 1))),
    ("pad", [XI], pad((1, 0, 0, 2), value=-3), lambda x: F.pad(x, (0, 2, 1, 0), value=-3)),
    ("pad", [X], pad((0, 0, 1, 0, 0, 3), "reflect"), lambda x: F.pad(x, (1, 3), "reflect")),
    (
        "pad",
        [X4],
        pad((0, 0, 1, 2, 0, 0, 2, 1), "reflect"),
        lambda x: F.pad(x, (2, 1, 1, 2), "reflect"),
    ),
    (
        "pad",
        [X4],
        pad((0, 0, 2, 0, 0, 0, 0, 5), "edge"),
        lambda x: F.pad(x, (0, 5, 2, 0), "replicate"),
    ),
    ("flatten", [X], {}, lambda x: torch.flatten(x, 1)),
    ("flatten", [X], {"start_dim": 0}, torch.flatten),
    ("flatten", [X4], {"start_dim": 1, "end_dim": 2}, lambda x: torch.flatten(x, 1, 2)),
    ("flatten", [X4], {"start_dim": -2, "end_dim": -2}, lambda x: torch.flatten(x, -2, -2)),
    ("flatten", [SCALAR], {"start_dim": 0}, torch.flatten),
    ("tril", [X], {}, torch.tril),
    ("tril", [X4], {"k": -1}, lambda x: torch.tril(x, -1)),
    ("triu", [XI], {"k": 2}, lambda x: torch.triu(x, 2)),
    ("triu", [X > 0], {}, torch.triu),
    ("one_hot", [idx([[0, 2], [1, 3]])], {"depth": 4}, lambda i: F.one_hot(i, 4).float()),
    (
        "one_hot",
        [idx([1, 0], "int32")],
        {"depth": 3, "dtype": "int64"},
        lambda i: F.one_hot(i.long(), 3),
    ),
]


@pytest.mark.parametrize(
    "op, arrays, attrs, torch_fn", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_reference_matches_torch(op, arrays, attrs, torch_fn):
    got = run(op, arrays, attrs)
    want = torch_fn(*(torch.from_numpy(np.array(a)) for a in arrays))
    want = [want] if isinstance(want, torch.Tensor) else list(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        w = w.numpy()
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)


def test_negative_indices_count_from_the_end():
    i = idx([[[-1, 2, -4]]])
    (got,) = run("take_along_axis", [X, i], {"axis": 2})
    np.testing.assert_array_equal(got, np.take_along_axis(X, i % 4, axis=2))
    (got,) = run("one_hot", [idx([-1, 0, -3])], {"depth": 3})
    np.testing.assert_array_equal(got, np.eye(3, dtype=np.float32)[[2, 0, 0]])


@pytest.mark.parametrize(
    "op, arrays, attrs",
    [
        ("gather", [X, idx([0, 3])], {"axis": 1}),
        ("gather", [X, idx([-4])], {"axis": 1}),
        ("take_along_axis", [X, idx([[[4]]])], {"axis": -1}),
        ("one_hot", [idx([0, 3])], {"depth": 3}),
    ],
)
def test_out_of_range_index_raises(op, arrays, attrs):
    with pytest.raises(KilnError, match=rf"{op}.*index -?\d is out of range for size"):
        run(op, arrays, attrs)


# -- inference on hypothesis shapes ------------------------------------------------------------

dims = st.integers(1, 4)
shapes = st.lists(dims, min_size=1, max_size=4).map(tuple)


def sym_names(data, rank: int, prefix: str = "d") -> list:
    mask = data.draw(st.lists(st.booleans(), min_size=rank, max_size=rank))
    return [f"{prefix}{i}" if m else None for i, m in enumerate(mask)]


@given(st.data(), shapes)
def test_reshape_regroups(data, shape):
    flat = data.draw(st.permutations([d for d in shape]))
    cuts = sorted(data.draw(st.sets(st.integers(1, len(flat)), max_size=3)) - {len(flat)})
    target = [int(np.prod(flat[a:b])) for a, b in zip([0, *cuts], [*cuts, len(flat)])]
    if data.draw(st.booleans()):
        target[data.draw(st.integers(0, len(target) - 1))] = -1
    x = arr(*shape)
    (got,) = run("reshape", [x], {"shape": tuple(target)})
    np.testing.assert_array_equal(got, torch.from_numpy(x).reshape(target).numpy())


@given(st.data(), st.lists(dims, min_size=1, max_size=3).map(tuple), st.booleans())
def test_reshape_keeps_leading_and_trailing_symbols(data, rest, minus_one):
    b, s = data.draw(dims), data.draw(dims)
    x = arr(b, *rest, s)
    middle = (-1,) if minus_one else (int(np.prod(rest)),)
    attrs, static = {"shape": ("B", *middle, "S")}, {"shape": (b, *middle, s)}
    (t,) = check_symbolic("reshape", [x], attrs, [["B", *[None] * len(rest), "S"]], static)
    assert t.shape == ("B", int(np.prod(rest)), "S")


def test_reshape_sizes_names_from_their_places():
    t, x, sizes = TensorType(("B", 2, 3, "S")), arr(4, 2, 3, 5), {"B": 4, "S": 5}
    for target in [("B", 6, "S"), ("B", 3, -1, "S"), ("B", -1, "S"), ("B", 2, 3, "S")]:
        (got,) = run("reshape", [x], {"shape": target}, [t])
        np.testing.assert_array_equal(got, x.reshape([sizes.get(d, d) for d in target]))
    # a single unknown may sit anywhere: it is computed, not placed
    (got,) = run("reshape", [arr(2, 5, 3)], {"shape": (3, "S", 2)}, [TensorType((2, "S", 3))])
    assert got.shape == (3, 5, 2)


def test_reshape_minus_one_stands_for_a_symbol():
    (t,) = infer("reshape", [TensorType(("B", 3, 4))], {"shape": (-1, 12)})
    assert t.shape == ("B", 12)
    (got,) = run("reshape", [X], {"shape": (-1, 12)}, [TensorType(("B", 3, 4))])
    assert got.shape == (2, 12)


@given(st.data(), st.lists(st.integers(0, 4), max_size=4).map(tuple))
def test_transpose_permutes_dims_and_symbols(data, shape):
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    x = arr(*shape)
    check_symbolic("transpose", [x], {"perm": perm}, [sym_names(data, len(shape))])
    (got,) = run("transpose", [x], {"perm": perm})
    np.testing.assert_array_equal(got, torch.from_numpy(x).permute(perm).numpy())


@given(st.data(), shapes, st.lists(st.integers(0, 3), min_size=1, max_size=3))
def test_concat_sums_the_axis(data, shape, sizes):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    a = axis % len(shape)
    xs = [arr(*shape[:a], n, *shape[a + 1 :]) for n in sizes]
    names = sym_names(data, len(shape))
    names[a] = None
    check_symbolic("concat", xs, {"axis": axis}, [names] * len(xs))
    np.testing.assert_array_equal(
        run("concat", xs, {"axis": axis})[0], torch.cat([torch.from_numpy(x) for x in xs], axis)
    )


@given(st.data(), shapes)
def test_split_partitions_the_axis(data, shape):
    axis = data.draw(st.integers(0, len(shape) - 1))
    cuts = sorted(data.draw(st.lists(st.integers(0, shape[axis]), max_size=3)))
    sizes = tuple(b - a for a, b in zip([0, *cuts], [*cuts, shape[axis]]))
    x = arr(*shape)
    names = sym_names(data, len(shape))
    names[axis] = None
    check_symbolic("split", [x], {"axis": axis, "sizes": sizes}, [names])
    for got, want in zip(
        run("split", [x], {"axis": axis, "sizes": sizes}),
        torch.split(torch.from_numpy(x), list(sizes), axis),
    ):
        np.testing.assert_array_equal(got, want)


def onnx_slice_indices(dim: int, start: int, end: int, step: int) -> np.ndarray:
    """The ONNX Slice spec's clamping, written out as index arrays (no Python slices)."""
    start = np.clip(start + dim if start < 0 else start, 0, dim if step > 0 else dim - 1)
    end = np.clip(
        end + dim if end < 0 else end, 0 if step > 0 else -1, dim if step > 0 else dim - 1
    )
    return np.arange(start, end, step, dtype=np.int64)


bounds = st.one_of(st.integers(-6, 6), st.sampled_from([BIG, -BIG - 1, 2**31 - 1, -(2**31)]))


@given(st.data(), st.lists(st.integers(0, 5), min_size=1, max_size=3).map(tuple))
def test_slice_follows_onnx_clamping(data, shape):
    axes = data.draw(st.lists(st.integers(0, len(shape) - 1), unique=True, min_size=1))
    n = len(axes)
    starts, ends = (tuple(data.draw(st.lists(bounds, min_size=n, max_size=n))) for _ in "se")
    steps = tuple(data.draw(st.lists(st.integers(-3, 3).filter(bool), min_size=n, max_size=n)))
    x = arr(*shape)
    attrs = {"starts": starts, "ends": ends, "axes": tuple(axes), "steps": steps}
    want = x
    for a, s, e, k in zip(axes, starts, ends, steps):
        want = np.take(want, onnx_slice_indices(shape[a], s, e, k), axis=a)
    names = [None if i in axes else f"d{i}" for i in range(len(shape))]
    check_symbolic("slice", [x], attrs, [names])
    np.testing.assert_array_equal(run("slice", [x], attrs)[0], want)


@given(st.data(), shapes, st.lists(st.integers(0, 3), max_size=2).map(tuple))
def test_gather_shape_and_values(data, shape, ishape):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    n, size = shape[axis], int(np.prod(ishape))
    i = np.array(data.draw(st.lists(st.integers(-n, n - 1), min_size=size, max_size=size)))
    i = i.astype(np.int64).reshape(ishape)
    x = arr(*shape)
    names = [sym_names(data, len(shape), "d"), sym_names(data, len(ishape), "i")]
    names[0][axis] = None
    check_symbolic("gather", [x, i], {"axis": axis}, names)
    (got,) = run("gather", [x, i], {"axis": axis})
    sel = (slice(None),) * (axis % len(shape)) + (torch.from_numpy(i),)
    np.testing.assert_array_equal(got, torch.from_numpy(x)[sel].numpy())


@given(st.data(), shapes)
def test_expand_squeeze_unsqueeze_flatten_keep_symbols(data, shape):
    x, rank = arr(*shape), len(shape)
    names = sym_names(data, rank)
    lead = data.draw(st.lists(dims, max_size=2))
    wide = tuple(d if n is None else n for d, n in zip(shape, names))
    static = {"shape": (*lead, *shape)}
    check_symbolic("expand", [x], {"shape": (*lead, *wide)}, [names], static)
    ones = [i for i, d in enumerate(shape) if d == 1 and names[i] is None]
    check_symbolic("squeeze", [x], {"axes": tuple(ones)}, [names])
    axes = data.draw(st.lists(st.integers(-rank - 1, rank), max_size=1))
    check_symbolic("unsqueeze", [x], {"axes": tuple(axes)}, [names])
    start = data.draw(st.integers(0, rank - 1))
    (t,) = check_symbolic("flatten", [x], {"start_dim": start}, [names])
    assert t.shape[start] == math.prod(symbol(n) if n else d
                                       for d, n in zip(shape[start:], names[start:]))


@given(st.data(), shapes, st.sampled_from(["constant", "reflect", "edge"]))
def test_pad_matches_numpy(data, shape, mode):
    rank = len(shape)
    hi = [d - 1 if mode == "reflect" else 3 for d in shape] * 2
    pads = tuple(data.draw(st.integers(0, h)) for h in hi)
    # a constant pad adds to a symbolic size; the others need static sizes
    names = [None if mode != "constant" and (pads[i] or pads[i + rank]) else f"d{i}"
             for i in range(rank)]
    x = arr(*shape)
    check_symbolic("pad", [x], {"pads": pads, "mode": mode}, [names])
    (got,) = run("pad", [x], {"pads": pads, "mode": mode, "value": 2.0})
    kw = {"constant_values": 2.0} if mode == "constant" else {}
    np.testing.assert_array_equal(got, np.pad(x, list(zip(pads[:rank], pads[rank:])), mode, **kw))


def test_symbols_pass_through_simple_ops():
    t = TensorType(("B", "S", 8))
    assert infer("tril", [t])[0] == t
    assert infer("one_hot", [TensorType(("B",), "int32")], {"depth": 5})[0].shape == ("B", 5)
    s = infer("slice", [t], {"starts": (0, 2), "ends": (BIG, 6), "axes": (1, 2)})[0]
    assert s.shape == ("B", "S", 4)
    assert infer("take_along_axis", [t, TensorType(("B", 1, 8), "int64")], {"axis": 1})[0] == (
        TensorType(("B", 1, 8))
    )


# -- error paths -------------------------------------------------------------------------------

F32, I64 = "float32", "int64"


def ty(*shape, dtype: str = F32) -> TensorType:
    return TensorType(shape, dtype)


ERRORS = [
    ("reshape", [ty(2, 3)], {"shape": (-1, -1)}, AttributeError_, "-1 once"),
    ("reshape", [ty(2, 3)], {"shape": (2, -3)}, AttributeError_, "no other negative"),
    ("reshape", [ty(2, 3)], {"shape": (2.0, 3)}, AttributeError_, "tuple of ints or names"),
    ("reshape", [ty(2, 3)], {"shape": (4, 2)}, ShapeError, "sizes differ"),
    ("reshape", [ty(2, 3)], {"shape": (4, -1)}, ShapeError, "no integer size"),
    ("reshape", [ty(0, 3)], {"shape": (0, -1)}, ShapeError, "no integer size"),
    ("reshape", [ty("B", 3)], {"shape": ("S", 3)}, ShapeError, "'S' .* not in input"),
    ("reshape", [ty("B", 3)], {"shape": (3, 2)}, ShapeError, r"sizes differ \(3\*B elements, 6"),
    ("reshape", [ty("B", 3)], {"shape": (2, -1)}, ShapeError, r"no integer size \(3\*B elem"),
    ("reshape", [ty("B", "S")], {"shape": ("S", "S")}, ShapeError, r"B\*S elements, S\*S in"),
    ("reshape", [ty("B", 3)], {"shape": ("B % 2", 3)}, AttributeError_, "not a size"),
    ("transpose", [ty(2, 3)], {"perm": (0, 0)}, ShapeError, "not a permutation"),
    ("transpose", [ty(2, 3)], {"perm": ("a", "b")}, AttributeError_, "tuple of ints, got"),
    ("transpose", [ty(2, 3)], {"perm": (0, 1, 2)}, ShapeError, "not a permutation"),
    ("concat", [ty(2, 3), ty(3, 3)], {"axis": 1}, ShapeError, "equal other dims"),
    ("concat", [ty(2, 3), ty(2, 3, 1)], {}, ShapeError, "equal other dims"),
    ("concat", [ty(2), ty(2, dtype=I64)], {}, ShapeError, "dtypes differ"),
    ("concat", [ty()], {}, ShapeError, "rank >= 1"),
    ("concat", [ty(2)], {"axis": 1}, ShapeError, "axis 1 is out of range"),
    ("split", [ty(4)], {"sizes": (1, 2)}, ShapeError, "sum to dim 4"),
    ("split", [ty(4)], {"sizes": (5, -1)}, ShapeError, ">= 0"),
    ("split", [ty(4)], {"sizes": ()}, ShapeError, "sum to dim"),
    ("split", [ty("B")], {"sizes": (1,)}, ShapeError, "sum to dim B of axis 0"),
    ("split", [ty("B")], {"sizes": ("B//2", "B//2")}, ShapeError, r"sum to dim B"),
    ("split", [ty()], {"sizes": (1,)}, ShapeError, "rank >= 1"),
    ("slice", [ty(4)], {"starts": (0,), "ends": (1, 2)}, AttributeError_, "differ in length"),
    ("slice", [ty(4)], {"starts": (0,), "ends": (1,), "steps": (0,)}, AttributeError_, "nonzero"),
    (
        "slice",
        [ty(4, 4)],
        {"starts": (0, 0), "ends": (1, 1), "axes": (0, -2)},
        ShapeError,
        "repeated axis",
    ),
    ("slice", [ty("B")], {"starts": (0,), "ends": (BIG,), "steps": (2,)}, ShapeError,
     "sliced axis 0 must be"),
    ("slice", [ty(4)], {"starts": (0,), "ends": (1,), "axes": (1,)}, ShapeError, "out of range"),
    ("gather", [ty(4), ty(2)], {}, ShapeError, "int32 or int64, got float32"),
    ("gather", [ty(), ty(2, dtype=I64)], {}, ShapeError, "rank >= 1"),
    ("gather", [ty(4), ty(2, dtype=I64)], {"axis": 1}, ShapeError, "out of range"),
    ("take_along_axis", [ty(4, 2), ty(4, dtype=I64)], {"axis": 0}, ShapeError, "equal rank"),
    ("take_along_axis", [ty(), ty(dtype=I64)], {"axis": 0}, ShapeError, "rank >= 1"),
    ("take_along_axis", [ty(4), ty(4, dtype="int8")], {"axis": 0}, ShapeError, "int32 or int64"),
    ("take_along_axis", [ty(4, 2), ty(1, 3, dtype=I64)], {"axis": 0}, ShapeError, "broadcast"),
    ("take_along_axis", [ty(4), ty(4, dtype=I64)], {}, AttributeError_, "missing required"),
    ("expand", [ty(2, 3)], {"shape": (3,)}, ShapeError, "fewer dims"),
    ("expand", [ty(2, 3)], {"shape": (4, 3)}, ShapeError, "dim 2 does not broadcast to 4"),
    ("expand", [ty(2, 3)], {"shape": ("B", 3)}, ShapeError, "dim 2 does not broadcast to B"),
    ("expand", [ty("A", 3)], {"shape": ("B", 3)}, ShapeError, "dim A does not broadcast to B"),
    ("expand", [ty(3)], {"shape": (-1, 3)}, AttributeError_, "negative size"),
    ("squeeze", [ty("B", 1)], {}, ShapeError, "ambiguous"),
    ("squeeze", [ty(2, 1)], {"axes": (0,)}, ShapeError, "size is 2, not 1"),
    ("squeeze", [ty("B", 1)], {"axes": (0,)}, ShapeError, "size is B, not 1"),
    ("unsqueeze", [ty(2)], {"axes": (2,)}, ShapeError, "out of range"),
    ("unsqueeze", [ty(2)], {"axes": (0, -3)}, ShapeError, "repeated axis"),
    ("flatten", [ty(2, 3, 4)], {"start_dim": 2, "end_dim": 1}, ShapeError, "after end_dim"),
    ("flatten", [ty(2)], {}, ShapeError, "axis 1 is out of range"),
    ("pad", [ty(2)], {"pads": (1, 1), "mode": "wrap"}, AttributeError_, "not one of constant"),
    ("pad", [ty(2)], {"pads": (1, 1, 1, 1)}, ShapeError, "must hold 2 ints"),
    ("pad", [ty(2)], {"pads": (-1, 1)}, AttributeError_, "non-negative"),
    ("pad", [ty(2, dtype=I64)], {"pads": (1, 1), "value": 0.5}, AttributeError_, "not exact"),
    ("pad", [ty(2)], {"pads": (1, 1), "value": "x"}, AttributeError_, "must be a number"),
    ("pad", [ty(2)], {"pads": (2, 0), "mode": "reflect"}, ShapeError, "below the size 2"),
    ("pad", [ty(0)], {"pads": (1, 0), "mode": "edge"}, ShapeError, "non-empty axis 0"),
    ("pad", [ty("B")], {"pads": (1, 0), "mode": "edge"}, ShapeError, "axis 0 padded in mode"),
    ("tril", [ty(3)], {}, ShapeError, "rank >= 2"),
    ("triu", [ty(3, 3)], {"k": 0.5}, AttributeError_, "k must be an int"),
    ("one_hot", [ty(3, dtype=I64)], {"depth": 0}, AttributeError_, "positive int"),
    ("one_hot", [ty(3)], {"depth": 2}, ShapeError, "int32 or int64, got float32"),
    ("one_hot", [ty(3, dtype=I64)], {"depth": 2, "dtype": "f32"}, AttributeError_, "unknown dt"),
]


@pytest.mark.parametrize(
    "op, types, attrs, exc, match", ERRORS, ids=[f"{e[0]}-{i}" for i, e in enumerate(ERRORS)]
)
def test_error(op, types, attrs, exc, match):
    with pytest.raises(exc, match=match) as info:
        infer(op, types, attrs)
    assert str(info.value).startswith(f"{op}(%x0: ")  # infer_node names the node and types


def test_every_shape_op_has_no_flops():
    from kiln.ir import OPS

    ops = {c[0] for c in CASES}
    assert len(ops) == 15
    assert all(OPS[op].flops([ty(2, 3)], [ty(6)], {}) == 0 for op in ops)
