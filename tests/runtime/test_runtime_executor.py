"""Running models: results, input validation, buffer reuse, zero-copy paths, profiling."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from runtime_helpers import EW_N, model_weights, reference

from kiln.errors import InputError
from kiln.runtime import format as fmt
from kiln.runtime import load
from kiln.runtime.executor import ZERO_COPY_BYTES, Model, aligned_empty
from kiln.runtime.planner import plan_memory


@pytest.fixture(scope="module")
def small(small_artifact):
    return load(small_artifact)


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_signature(small):
    (x,) = small.inputs
    assert (x.name, x.shape, x.dtype) == ("x", (4, 8), "float32")
    assert [(o.name, o.shape) for o in small.outputs] == [("y", (4, 16))]


def test_outputs_are_fresh_on_every_run(small):
    x1, x2 = np.ones((4, 8), np.float32), np.full((4, 8), -2.0, np.float32)
    (y1,) = small.run({"x": x1})
    keep = y1.copy()
    (y2,) = small.run({"x": x2})
    np.testing.assert_array_equal(y1, keep)
    assert not np.shares_memory(y1, y2)
    close(y2, reference(x2, model_weights()))


@pytest.mark.parametrize("inputs, message", [
    ({}, "missing input 'x' \\(float32\\[4, 8\\]\\)"),
    ({"x": np.zeros((4, 8), np.float32), "z": 1}, "unexpected input\\(s\\) \\['z'\\]"),
    ({"x": np.zeros((4, 8), np.float64)}, "'x' has dtype float64, expected float32"),
    ({"x": np.zeros((8, 4), np.float32)}, "'x' has shape \\[8, 4\\], expected \\[4, 8\\]"),
    ({"x": np.zeros((4, 16), np.float32)[:, ::2]}, "'x' is not C-contiguous"),
    ({"x": np.zeros((4, 8), np.float32).tolist()}, "'x' must be a numpy array"),
    ({"x": np.zeros((4, 8), ">f4")}, "has dtype >f4, expected float32"),
])
def test_bad_inputs(small, inputs, message):
    with pytest.raises(InputError, match=message):
        small.run(inputs)


def test_inputs_must_be_a_dict(small):
    with pytest.raises(InputError, match="takes a dict"):
        small.run([np.zeros((4, 8), np.float32)])


def test_memory_report(small):
    report = small.memory_report()
    assert report["peak_bytes"] == 512 and report["naive_bytes"] == 768
    assert report["buffers"] == 2 and report["intermediates"] == 3
    assert report["constant_bytes"] == (8 * 16 + 16) * 4


def test_profile_and_benchmark(small):
    x = np.ones((4, 8), np.float32)
    records = small.profile({"x": x}, repeat=3)
    assert [r.func for r in records] == ["matmul_small", "bias_small", "relu_small",
                                         "add_small"]
    assert records[0].sources == ("%0 matmul",) and records[0].flops == 2 * 4 * 8 * 16
    assert all(r.seconds > 0 and r.gflops > 0 for r in records)
    assert small.benchmark({"x": x}, repeat=5) > 0


@pytest.fixture(scope="module")
def big(kernels_so, tmp_path_factory):
    from runtime_helpers import model_manifest

    from kiln.runtime import write_artifact

    path = tmp_path_factory.mktemp("big") / "big.kiln"
    return load(write_artifact(path, model_manifest("big"), kernels_so, model_weights("big")))


def test_big_inputs_and_outputs(big):
    shape = big.inputs[0].shape
    assert np.prod(shape) * 4 >= ZERO_COPY_BYTES
    rng = np.random.default_rng(3)
    aligned = aligned_empty(shape, np.float32)
    aligned[...] = rng.standard_normal(shape)
    raw = np.empty(np.prod(shape) + 1, np.float32)  # 4 bytes past a 64-byte boundary or more
    start = 1 if raw.ctypes.data % 64 == 0 else 0
    unaligned = raw[start:start + np.prod(shape)].reshape(shape)
    unaligned[...] = rng.standard_normal(shape)
    assert unaligned.ctypes.data % 64
    readonly = aligned.copy()
    readonly.flags.writeable = False
    outputs = []
    for x in (aligned, unaligned, readonly, aligned):
        before = x.copy()
        (y,) = big.run({"x": x})
        np.testing.assert_array_equal(x, before)  # inputs are never written
        close(y, reference(x, model_weights("big")))
        outputs.append((y, y.copy()))
    for y, snapshot in outputs:
        np.testing.assert_array_equal(y, snapshot)  # later runs never touch earlier outputs


def test_concurrent_runs_are_serialized(big):
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal(big.inputs[0].shape, dtype=np.float32) for _ in range(4)]
    results = [None] * 4

    def work(i):
        for _ in range(5):
            results[i] = big.run({"x": xs[i]})[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for x, y in zip(xs, results):
        close(y, reference(x, model_weights("big")))


# -- random programs of elementwise kernels: the plan's reuse must never change results ------

OPS = {"ew_add": np.add, "ew_mul": np.multiply, "ew_sub": np.subtract}


@st.composite
def programs(draw):
    n_in, n_const = draw(st.integers(1, 3)), draw(st.integers(0, 2))
    inputs = [f"in{i}" for i in range(n_in)]
    consts = [f"c{i}" for i in range(n_const)]
    defined, kernels = inputs + consts, []
    for i in range(draw(st.integers(0, 10))):
        func = draw(st.sampled_from(sorted(OPS)))
        a, b = draw(st.sampled_from(defined)), draw(st.sampled_from(defined))
        kernels.append({"func": func, "args": [a, b, f"t{i}"], "num_outputs": 1})
        defined.append(f"t{i}")
    outputs = draw(st.lists(st.sampled_from(defined), min_size=1, max_size=4))
    return inputs, consts, kernels, outputs


@given(programs(), st.integers(0, 2**32 - 1))
def test_random_programs_match_numpy(ew_library, program, seed):
    inputs, consts, kernels, outputs = program
    names = inputs + consts + [k["args"][-1] for k in kernels]
    values = {n: {"shape": [EW_N], "dtype": "float32"} for n in names}
    keep = set(inputs) | set(consts) | set(outputs)
    manifest = {
        "format": fmt.FORMAT_NAME, "format_version": fmt.FORMAT_VERSION,
        "target": {"kind": "llvm"}, "values": values, "constants": consts,
        "inputs": [{"name": n, **values[n]} for n in inputs],
        "outputs": [{"name": n, **values[n]} for n in outputs],
        "kernels": kernels, "memory": plan_memory(kernels, values, keep),
    }
    fmt.validate_manifest(manifest, with_files=False)
    rng = np.random.default_rng(seed)
    env = {n: rng.standard_normal(EW_N, dtype=np.float32) for n in inputs + consts}
    model = Model(manifest, ew_library, {n: env[n] for n in consts})
    feed = {n: env[n].copy() for n in inputs}
    got = model.run(feed)
    for k in kernels:
        a, b, out = k["args"]
        env[out] = OPS[k["func"]](env[a], env[b])
    for name, array in zip(outputs, got):
        np.testing.assert_allclose(array, env[name], rtol=1e-6, atol=1e-6)
    assert len({id(a) for a in got}) == len(got)  # every output its own array
    for array in got:
        for n in inputs:
            assert not np.shares_memory(array, feed[n])


@pytest.fixture(scope="module")
def ew_library(small_artifact, kernels_so):
    import tvm_ffi

    load(small_artifact)  # makes sure TVM's thread pool is loaded
    return tvm_ffi.load_module(str(kernels_so))
