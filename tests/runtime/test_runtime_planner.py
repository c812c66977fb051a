"""Memory planner: soundness on random kernel sequences, reuse, and the plan checker."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiln.errors import ArtifactError
from kiln.runtime.planner import check_plan, plan_memory

DTYPES = {"float32": 4, "float16": 2, "int64": 8, "bool": 1, "int8": 1}


@st.composite
def programs(draw):
    """Random kernel sequences in destination-passing style over random-size values."""
    values, defined = {}, []

    def new_value(prefix):
        name = f"{prefix}{len(values)}"
        shape = draw(st.lists(st.integers(0, 9), max_size=3))
        values[name] = {"shape": shape, "dtype": draw(st.sampled_from(sorted(DTYPES)))}
        return name

    inputs = [new_value("in") for _ in range(draw(st.integers(1, 3)))]
    defined += inputs
    kernels = []
    for i in range(draw(st.integers(0, 12))):
        ins = draw(st.lists(st.sampled_from(defined), min_size=1, max_size=3))
        outs = [new_value("t") for _ in range(draw(st.integers(1, 3)))]
        kernels.append({"func": f"k{i}", "args": ins + outs, "num_outputs": len(outs)})
        defined += outs
    produced = defined[len(inputs):]
    outputs = draw(st.lists(st.sampled_from(produced), max_size=3)) if produced else []
    return kernels, values, set(inputs) | set(outputs)


def nbytes(info):
    n = DTYPES[info["dtype"]]
    for d in info["shape"]:
        n *= d
    return n


def intervals(kernels, keep):
    """Live ranges computed independently of the planner: [writer, last reader]."""
    live = {}
    for i, k in enumerate(kernels):
        for name in k["args"]:
            if name not in keep:
                live[name] = (live.get(name, (i, i))[0], i)
    return live


@given(programs())
def test_plan_is_sound_and_no_worse_than_naive(program):
    kernels, values, keep = program
    memory = plan_memory(kernels, values, keep)
    live = intervals(kernels, keep)
    assign, sizes = memory["assign"], [b["nbytes"] for b in memory["buffers"]]
    assert set(assign) == set(live)
    assert all(size % 64 == 0 and size > 0 for size in sizes)
    for name, (first, last) in live.items():
        assert sizes[assign[name]] >= nbytes(values[name])
        for other, (first2, last2) in live.items():
            if other != name and first <= last2 and first2 <= last:
                assert assign[name] != assign[other], (name, other)
    assert memory["peak_bytes"] == sum(sizes)
    assert memory["peak_bytes"] <= memory["naive_bytes"]
    assert memory["naive_bytes"] == sum(max(64, -(-nbytes(values[n]) // 64) * 64) for n in live)
    check_plan(kernels, values, keep, memory)


def f32(*shape):
    return {"shape": list(shape), "dtype": "float32"}


def test_chain_reuses_buffers():
    # a -> t1 -> t2 -> t3 -> t4 -> out: two buffers suffice for any chain
    names = ["a", "t1", "t2", "t3", "t4", "out"]
    kernels = [{"func": f"k{i}", "args": [names[i], names[i + 1]], "num_outputs": 1}
               for i in range(5)]
    values = {n: f32(100) for n in names}
    memory = plan_memory(kernels, values, {"a", "out"})
    assert len(memory["buffers"]) == 2
    assert memory["peak_bytes"] == 2 * 448 and memory["naive_bytes"] == 4 * 448


def test_outputs_never_share_with_inputs_of_the_same_kernel():
    # t1 dies at k1, which also writes t2: touching lifetimes must not share a buffer
    kernels = [{"func": "k0", "args": ["a", "t1"], "num_outputs": 1},
               {"func": "k1", "args": ["t1", "t2"], "num_outputs": 1},
               {"func": "k2", "args": ["t2", "out"], "num_outputs": 1}]
    values = {n: f32(16) for n in ("a", "t1", "t2", "out")}
    memory = plan_memory(kernels, values, {"a", "out"})
    assert memory["assign"]["t1"] != memory["assign"]["t2"]


def test_unread_output_still_gets_a_buffer_of_its_own():
    kernels = [{"func": "k0", "args": ["a", "t1", "junk"], "num_outputs": 2},
               {"func": "k1", "args": ["t1", "out"], "num_outputs": 1}]
    values = {n: f32(8) for n in ("a", "t1", "junk", "out")}
    memory = plan_memory(kernels, values, {"a", "out"})
    assert memory["assign"]["t1"] != memory["assign"]["junk"]


def test_best_fit_then_grow():
    # big dies, then a small value takes the small free buffer rather than the big one
    kernels = [{"func": "k0", "args": ["a", "big", "small"], "num_outputs": 2},
               {"func": "k1", "args": ["big", "small", "x"], "num_outputs": 1},
               {"func": "k2", "args": ["x", "y"], "num_outputs": 1},
               {"func": "k3", "args": ["y", "x", "z"], "num_outputs": 1},
               {"func": "k4", "args": ["z", "out"], "num_outputs": 1}]
    values = {"a": f32(1), "big": f32(1000), "small": f32(10), "x": f32(1000),
              "y": f32(16), "z": f32(2000), "out": f32(1)}
    memory = plan_memory(kernels, values, {"a", "out"})
    a = memory["assign"]
    assert a["y"] == a["small"]  # best fit among the free buffers {big, small}
    assert a["z"] == a["big"]  # the largest free buffer grows rather than a new one
    sizes = [b["nbytes"] for b in memory["buffers"]]
    assert sizes[a["z"]] == 8000
    check_plan(kernels, values, {"a", "out"}, memory)


def test_check_plan_rejects_overlap_and_small_buffers():
    kernels = [{"func": "k0", "args": ["a", "t1"], "num_outputs": 1},
               {"func": "k1", "args": ["t1", "t2"], "num_outputs": 1},
               {"func": "k2", "args": ["t2", "out"], "num_outputs": 1}]
    values = {n: f32(16) for n in ("a", "t1", "t2", "out")}
    bad = {"buffers": [{"id": 0, "nbytes": 64}], "assign": {"t1": 0, "t2": 0}}
    with pytest.raises(ArtifactError, match="share buffer 0"):
        check_plan(kernels, values, {"a", "out"}, bad)
    small = {"buffers": [{"id": 0, "nbytes": 32}, {"id": 1, "nbytes": 64}],
             "assign": {"t1": 0, "t2": 1}}
    with pytest.raises(ArtifactError, match="too small"):
        check_plan(kernels, values, {"a", "out"}, small)


def test_read_before_write_is_rejected():
    kernels = [{"func": "k0", "args": ["t9", "out"], "num_outputs": 1}]
    with pytest.raises(ArtifactError, match="before any kernel writes it"):
        plan_memory(kernels, {"t9": f32(1), "out": f32(1)}, {"out"})


def test_check_plan_wants_exact_sizes():
    """Buffers lie end to end in one arena: a size other than the planned one (a negative
    one in particular) would move every later buffer, so only exact sizes pass."""
    kernels = [{"func": "k0", "args": ["a", "t1"], "num_outputs": 1},
               {"func": "k1", "args": ["t1", "out"], "num_outputs": 1}]
    values = {n: f32(16) for n in ("a", "t1", "out")}
    keep = {"a", "out"}
    plan = plan_memory(kernels, values, keep)
    check_plan(kernels, values, keep, plan)
    for edit, message in [
        (lambda p: p["buffers"][0].update(nbytes=128), "largest value it holds needs 64"),
        (lambda p: p["buffers"].append({"id": 1, "nbytes": -64}), "holds no value"),
        (lambda p: p.update(peak_bytes=0), "peak_bytes is 0"),
        (lambda p: p.update(naive_bytes=128), "naive_bytes is 128"),
        (lambda p: p["assign"].update(a=0), "'a' is not an intermediate"),
    ]:
        bad = {"buffers": [dict(b) for b in plan["buffers"]], "assign": dict(plan["assign"]),
               "peak_bytes": plan["peak_bytes"], "naive_bytes": plan["naive_bytes"]}
        edit(bad)
        with pytest.raises(ArtifactError, match=message):
            check_plan(kernels, values, keep, bad)
