"""The GPU executor (kiln/runtime/gpu.py) without a GPU: it takes its device as an argument,
so a CPU artifact run through it on the CPU exercises its buffers, copies, DLPack inputs and
errors; a CUDA artifact's loading steps are checked up to the device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kiln
import kiln.runtime
from kiln.errors import ArtifactError, InputError
from kiln.ir import GraphBuilder, TensorType
from kiln.runtime import format as fmt
from kiln.runtime.gpu import GpuModel
from kiln.runtime.loader import _load_library, _read_weights, read_manifest


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    rng = np.random.default_rng(0)
    b = GraphBuilder("mlp")
    x = b.input("x", TensorType((3, 8)))
    ids = b.input("ids", TensorType((4,), "int64"))
    (h,) = b.op("matmul", [x, b.param("w", rng.standard_normal((8, 5)).astype("float32"))])
    (h,) = b.op("relu", [h])
    (rows,) = b.op("gather", [h, ids], {"axis": 0})
    b.output(h, rows)
    path = tmp_path_factory.mktemp("gpu") / "mlp.kiln"
    return kiln.compile(b.build()).save(path)


def _on_cpu(path):
    kiln.runtime.load(path)  # the thread pool and checks, as the loader does first
    manifest = read_manifest(path)
    return GpuModel(manifest, _load_library(path / fmt.KERNELS, path),
                    _read_weights(path / fmt.WEIGHTS, manifest), device_type="cpu")


def test_the_gpu_executor_runs_an_artifact_on_its_device(artifact):
    model, reference = _on_cpu(artifact), kiln.runtime.load(artifact)
    rng = np.random.default_rng(1)
    inputs = {"x": rng.standard_normal((3, 8)).astype("float32"),
              "ids": np.array([2, 0, -1, 1], "int64")}
    want = reference.run(inputs)
    for got, w in zip(model.run(inputs), want):
        np.testing.assert_array_equal(got, w)
    # a DLPack tensor on the model's device goes in without a copy
    as_torch = {"x": torch.from_numpy(inputs["x"]), "ids": torch.from_numpy(inputs["ids"])}
    for got, w in zip(model.run(as_torch), want):
        np.testing.assert_array_equal(got, w)
    assert model.run(inputs)[0] is not model.run(inputs)[0]  # fresh outputs every run


def test_the_gpu_executor_refuses_bad_inputs(artifact):
    model = _on_cpu(artifact)
    good = {"x": np.zeros((3, 8), "float32"), "ids": np.zeros(4, "int64")}
    for bad, why in (({"x": good["x"]}, "takes inputs"),
                     ({**good, "x": np.zeros((3, 9), "float32")}, "expected float32.3, 8."),
                     ({**good, "ids": torch.zeros(4, dtype=torch.int32)}, "expected int64")):
        with pytest.raises(InputError, match=why):
            model.run(bad)


def test_a_cuda_artifact_needs_a_gpu_and_the_cuda_runtime(artifact, tmp_path, monkeypatch):
    import kiln.runtime.gpu as gpu

    monkeypatch.setattr(gpu, "_cuda_loaded", [])
    monkeypatch.setattr(gpu.ctypes, "CDLL", _no_library)
    monkeypatch.setattr(gpu.sys, "path", [str(tmp_path)])
    with pytest.raises(ArtifactError, match="needs libcudart.so.13 .*nvidia-cuda-runtime"):
        gpu.load_cuda_runtime(tmp_path / fmt.CUDA_RUNTIME_LIB)


def _no_library(path, *args, **kwargs):
    raise OSError(f"{path}: cannot open shared object file")


def test_outputs_can_stay_on_the_device(artifact):
    model = _on_cpu(artifact)
    inputs = {"x": np.ones((3, 8), "float32"), "ids": np.array([0, 1, 2, 0], "int64")}
    on_device = model.run_on_device(inputs)
    for got, want in zip(on_device, model.run(inputs)):
        np.testing.assert_array_equal(torch.from_dlpack(got).numpy(), want)


def test_bench_figures_of_the_gpu_executor(artifact):
    model = _on_cpu(artifact)
    inputs = {"x": np.ones((3, 8), "float32"), "ids": np.array([0, 1, 2, 0], "int64")}
    assert model.benchmark(inputs, repeat=3) > 0
    profile = model.profile(inputs, repeat=2)
    assert [k.func for k in profile] == [k["func"] for k in model.manifest["kernels"]]
    report = model.memory_report()
    values = model.manifest["values"]
    constant_bytes = sum(int(np.prod(values[n]["shape"])) * np.dtype(values[n]["dtype"]).itemsize
                         for n in model.manifest["constants"])
    assert report["device_bytes"] > report["constant_bytes"] == constant_bytes > 0
