"""The CUDA target, built on a machine without a GPU: every lowered op and every example
model compiles to a fat binary (one nvcc run per graph), each kernel function is bound to GPU
threads and launches one ``__global__`` kernel (a few multi-output groups aside, listed), and
the artifact holds the device code and refuses to load where there is no GPU."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

import kiln
from kiln.codegen.build import build
from kiln.codegen.lower import ABSENT, GROUP_OPS, LOWERINGS, _ensure_registered
from kiln.codegen.nvcc import find_nvcc, nvcc_command, parse_ptxas
from kiln.errors import ArtifactError, KilnError
from kiln.ir import GraphBuilder, TensorType
from kiln.runtime import format as fmt
from kiln.targets import CudaTarget, resolve_target
from tests.codegen.cases import Case, case_graph, positive, randn
from tests.codegen.test_examples_compiled import CASES as EXAMPLES
from tests.codegen.test_examples_compiled import _trace
from tests.codegen.test_ops import BINARY, COMPARE, POSITIVE, UNARY, WITH_ATTRS

try:
    find_nvcc()
    HAVE_NVCC = True
except KilnError:
    HAVE_NVCC = False
needs_nvcc = pytest.mark.skipif(not HAVE_NVCC, reason="no nvcc on this machine (CUDA toolkit)")

# ops that only the CPU's NCHWc layout pass creates (the cuda target skips that pass)
CPU_LAYOUT_OPS = {"layout_transform", "conv2d_nchwc", "depthwise_conv2d_nchwc",
                  "max_pool2d_nchwc", "avg_pool2d_nchwc", "global_avg_pool2d_nchwc"}
# kernel functions whose group writes several outputs: Fallback launches one kernel per output
MULTI_LAUNCH_OPS = {"split"}


def zoo_cases() -> dict:
    """The zoo's other examples at small sizes: name -> (model maker, inputs)."""
    from tests.examples_util import example

    rng = np.random.default_rng(5)
    f32 = np.float32
    return {
        "googlenet": (lambda: example("inception").googlenet_tiny(),
                      {"x": rng.standard_normal((2, 3, 32, 32)).astype(f32)}),
        "generator": (lambda: example("gan").generator_tiny(),
                      {"z": rng.standard_normal((2, 16, 1, 1)).astype(f32)}),
        "discriminator": (lambda: example("gan").discriminator_tiny(),
                          {"x": np.tanh(rng.standard_normal((3, 1, 16, 16))).astype(f32)}),
        "dqn": (lambda: example("dqn").dqn_small(),
                {"x": rng.uniform(0, 255, (2, 4, 44, 44)).astype(f32)}),
        "denoiser": (lambda: example("diffusion").denoiser_tiny(),
                     {"x": rng.standard_normal((2, 1, 16, 16)).astype(f32),
                      "t": np.array([999, 17], f32)}),
        "vgg": (lambda: example("vgg").vgg_tiny(),
                {"x": rng.standard_normal((2, 3, 32, 32)).astype(f32)}),
        "alexnet": (lambda: example("alexnet").AlexNet(num_classes=10, lrn=True),
                    {"x": rng.standard_normal((1, 3, 224, 224)).astype(f32)}),
    }


ZOO = zoo_cases()


def trace_zoo(name: str):
    """(graph, inputs) of a zoo example."""
    make, inputs = ZOO[name]
    specs = {k: kiln.TensorSpec(v.shape, v.dtype.name) for k, v in inputs.items()}
    return kiln.trace(make(), name=name, **specs), inputs


def every_op_cases() -> list[Case]:
    """One case (or a few) per op that has a lowering, at small shapes."""
    rng = np.random.default_rng(0)
    x, img = randn(rng, (3, 5, 7)), randn(rng, (2, 4, 9, 9))
    ints, bools = rng.integers(-5, 5, (3, 5)).astype("int64"), rng.random((3, 5)) < 0.5
    pool = {"kernel_shape": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1)}
    ch = [randn(rng, (4,)), randn(rng, (4,)), randn(rng, (4,)), positive(rng, (4,))]
    cases = [Case(op, [randn(rng, (3, 5, 7))]) for op in UNARY]
    cases += [Case(op, [positive(rng, (3, 5))]) for op in POSITIVE]
    cases += [Case(op, [randn(rng, (3, 5))], attrs) for op, attrs in WITH_ATTRS]
    cases += [Case(op, [randn(rng, (3, 5)), randn(rng, (5,))]) for op in BINARY + COMPARE]
    cases += [
        Case("div", [randn(rng, (3, 5)), positive(rng, (3, 5))]),
        Case("div", [ints, rng.integers(1, 4, (3, 5)).astype("int64")]),
        Case("pow", [positive(rng, (3, 5)), randn(rng, (3, 5))]),
        *[Case(op, [bools, bools[::-1]]) for op in ("logical_and", "logical_or",
                                                     "logical_xor")],
        Case("logical_not", [bools]),
        Case("where", [bools, randn(rng, (3, 5)), randn(rng, (5,))]),
        *[Case(op, [x], {"axes": (1, 2), "keepdims": False})
          for op in ("sum", "mean", "prod", "max", "min", "logsumexp")],
        *[Case(op, [x], {"axis": -1}) for op in ("softmax", "log_softmax", "argmax",
                                                  "argmin")],
        Case("layer_norm", [x, randn(rng, (7,)), randn(rng, (7,))]),
        Case("batch_norm", [img, *ch]),
        Case("expand", [randn(rng, (3, 1))], {"shape": (2, 3, 4)}),
        Case("full", [], {"shape": (2, 3), "value": 2.5}),
        Case("arange", [], {"start": -3, "stop": 17, "step": 3}),
        Case("dims", [], {"values": (3, 5, 7)}),
        Case("reshape", [x], {"shape": (5, -1)}),
        Case("transpose", [x], {"perm": (2, 0, 1)}),
        Case("concat", [x, x[:, :2]], {"axis": 1}),
        Case("split", [x], {"axis": 2, "sizes": (3, 4)}),
        Case("slice", [x], {"starts": (1,), "ends": (5,), "axes": (1,), "steps": (2,)}),
        Case("gather", [x, np.array([2, 0, -1], "int64")], {"axis": 1}),
        Case("take_along_axis", [x, rng.integers(0, 7, (3, 5, 2)).astype("int64")],
             {"axis": 2}),
        Case("one_hot", [np.array([0, 3, 1], "int64")], {"depth": 4}),
        Case("squeeze", [x[None]], {"axes": (0,)}),
        Case("unsqueeze", [x], {"axes": (1,)}),
        Case("flatten", [x], {"start_dim": 1, "end_dim": -1}),
        Case("pad", [x], {"pads": (0, 1, 2, 0, 1, 0), "mode": "reflect"}),
        Case("tril", [x], {"k": 1}),
        Case("triu", [x], {"k": -1}),
        Case("conv1d", [randn(rng, (2, 4, 11)), randn(rng, (6, 4, 3))], {"pads": (1, 1)}),
        Case("conv2d", [img, randn(rng, (8, 4, 3, 3)), randn(rng, (8,))],
             {"pads": (1, 1, 1, 1), "strides": (2, 2)}, consts=(1, 2)),
        Case("conv2d", [img, randn(rng, (4, 1, 3, 3))], {"groups": 4}),
        Case("conv2d", [img, randn(rng, (6, 2, 1, 1))], {"groups": 2}),
        Case("conv_transpose2d", [img, randn(rng, (4, 3, 3, 3))], {"strides": (2, 2)}),
        Case("conv2d_integer", [rng.integers(0, 256, (2, 4, 9, 9)).astype("uint8"),
                                rng.integers(-128, 128, (6, 4, 3, 3)).astype("int8")],
             {"pads": (1, 1, 1, 1), "pad_value": 7}, consts=(1,)),
        Case("matmul_integer", [rng.integers(0, 256, (5, 33)).astype("uint8"),
                                rng.integers(-128, 128, (33, 17)).astype("int8")], consts=(1,)),
        Case("max_pool2d", [img], pool),
        Case("avg_pool2d", [img], pool),
        Case("global_avg_pool2d", [img]),
        Case("lrn", [img], {"size": 3}),
        Case("matmul", [randn(rng, (2, 6, 33)), randn(rng, (33, 17))], consts=(1,)),
        Case("matmul", [randn(rng, (2, 6, 33)), randn(rng, (2, 33, 17))]),
        Case("matmul", [randn(rng, (6, 33)), randn(rng, (33,))]),
        # reductions over one element (made assignments for the GPU: schedules/gpu)
        Case("matmul", [randn(rng, (3, 1)), randn(rng, (1, 4))]),
        Case("layer_norm", [np.array([[np.inf], [1.5], [np.nan]], "float32")]),
        Case("random_uniform", [], {"shape": (4, 5), "seed": 3}),
        Case("random_normal", [], {"shape": (4, 5), "seed": 3}),
        Case("dropout", [randn(rng, (4, 5))], {"p": 0.3, "training": True, "seed": 7}),
    ]
    return cases


def test_the_op_cases_cover_every_lowered_op():
    _ensure_registered()
    covered = {c.op for c in every_op_cases()}
    missing = set(LOWERINGS) - covered - CPU_LAYOUT_OPS - set(ABSENT) - set(GROUP_OPS)
    assert not missing, f"ops without a CUDA case: {sorted(missing)}"


@needs_nvcc
def test_every_op_compiles_for_cuda():
    graph, _, _ = case_graph(every_op_cases())
    result = build(graph, target="cuda")
    gpu = result.gpu
    assert gpu["archs"] == ["sm_80", "sm_90"] and result.device_code.startswith(
        b"\x06\x00\x00\x00\x00\x00\x00\x00fatbin")
    for k in result.kernels:
        launches = gpu["kernels"][k.func]["launches"]
        assert launches and all(f"{name}(" in result.device_source for name in launches)
        op = graph.nodes[int(k.func.split("_")[0][1:])].op
        assert len(launches) == 1 or op in MULTI_LAUNCH_OPS, (k.func, launches)
        for name in launches:  # ptxas ran for each architecture
            assert set(gpu["kernels"][k.func]["ptxas"][name]) == {"sm_80", "sm_90"}


@needs_nvcc
@pytest.mark.parametrize("name", sorted(EXAMPLES) + sorted(ZOO))
def test_every_example_compiles_for_cuda(name):
    graph, _ = _trace(name) if name in EXAMPLES else trace_zoo(name)
    compiled = kiln.compile(graph, target="cuda", opt_level=2)
    gpu = compiled.build.gpu["kernels"]
    assert set(gpu) == {k.func for k in compiled.build.kernels}
    fused = [k.func for k in compiled.build.kernels if "fused" in k.func]
    assert fused, "O2 fuses these examples"
    for func in fused:  # a fused group is one GPU kernel
        if "split" not in func:
            assert len(gpu[func]["launches"]) == 1, (func, gpu[func])


@needs_nvcc
def test_cuda_artifact_holds_device_code_and_is_refused_without_a_gpu(tmp_path, monkeypatch):
    b = GraphBuilder("mm")
    x = b.input("x", TensorType((4, 8)))
    (y,) = b.op("matmul", [x, b.param("w", np.ones((8, 3), "float32"))])
    b.output(*b.op("relu", [y]))
    compiled = kiln.compile(b.build(), target="cuda -arch=sm_90")
    path = compiled.save(tmp_path / "mm.kiln")
    manifest = json.loads((path / fmt.MANIFEST).read_text())
    assert manifest["target"]["kind"] == "cuda" and manifest["gpu"]["archs"] == ["sm_90"]
    assert sorted(manifest["files"]) == sorted(fmt.REQUIRED_FILES + fmt.TARGET_FILES["cuda"])
    assert (path / fmt.DEVICE_CODE).read_bytes() == compiled.build.device_code
    tar = compiled.save(tmp_path / "mm.kiln.tar")
    with tarfile.open(tar) as t:
        assert {m.name.split("/")[-1] for m in t.getmembers()} >= set(fmt.files_of(manifest))
    monkeypatch.setattr("kiln.runtime.loader._has_nvidia_gpu", lambda: False)
    for artifact in (path, tar):
        with pytest.raises(ArtifactError, match="built for a CUDA GPU and this machine has"):
            kiln.runtime.load(artifact)
    with pytest.raises(ArtifactError, match="CUDA GPU"):
        compiled.run({"x": np.zeros((4, 8), "float32")})


def test_cuda_target_forms():
    assert resolve_target("cuda") == CudaTarget(("sm_80", "sm_90"))
    assert resolve_target("cuda -arch=sm_90").archs == ("sm_90",)
    assert resolve_target({"kind": "cuda", "archs": ["sm_90", "sm_80"]}).arch == "sm_80"
    t = resolve_target("cuda")
    assert not t.uses_pass("layout") and t.uses_pass("fuse") and t.lanes() == 1
    for bad, why in (("cuda -arch=gfx90a", "names like 'sm_80'"),
                     ("cuda -arch=sm_60", "before sm_70"),
                     ({"kind": "cuda", "warp": 64}, "unknown CUDA target options")):
        with pytest.raises(KilnError, match=why):
            resolve_target(bad)


def test_a_stage_no_rule_binds_fails_the_build(monkeypatch):
    monkeypatch.setattr("kiln.codegen.schedules.gpu._rules", lambda func: ())
    b = GraphBuilder("g")
    b.output(*b.op("relu", [b.input("x", TensorType((4, 8)))]))
    with pytest.raises(KilnError, match="no GPU schedule binds the stage"):
        build(b.build(), target="cuda")


def test_without_nvcc_the_build_says_how_to_get_one(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setenv("CUDA_HOME", "/nonexistent")
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setattr("pathlib.Path.is_file", lambda self: False)
    with pytest.raises(KilnError, match="needs nvcc.*nvidia-cuda-nvcc"):
        find_nvcc()


def test_nvcc_command_and_ptxas_figures():
    cmd = nvcc_command("nvcc", "k.cu", "k.fatbin", ("sm_90", "sm_80"))
    assert cmd[cmd.index("-gencode") + 1] == "arch=compute_80,code=sm_80"
    assert cmd[-1] == "arch=compute_90,code=compute_90"  # PTX for the newest
    text = ("ptxas info    : Compiling entry function 'k0_relu_kernel' for 'sm_90'\n"
            "ptxas info    : Used 12 registers, used 0 barriers, 1024 bytes smem, "
            "352 bytes cmem[0]\n"
            "ptxas info    : 8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n")
    assert parse_ptxas(text) == {"k0_relu_kernel": {"sm_90": {
        "registers": 12, "smem_bytes": 1024, "spill_bytes": 8}}}


@needs_nvcc
def test_with_a_gpu_but_no_driver_the_loader_says_what_is_missing(tmp_path, monkeypatch):
    import kiln.runtime.gpu as gpu

    b = GraphBuilder("r")
    b.output(*b.op("relu", [b.input("x", TensorType((4, 8)))]))
    path = kiln.compile(b.build(), target="cuda").save(tmp_path / "r.kiln")
    monkeypatch.setattr("kiln.runtime.loader._has_nvidia_gpu", lambda: True)
    monkeypatch.setattr(gpu, "_cuda_loaded", [])
    try:
        kiln.runtime.load(path)
    except ArtifactError as e:  # this machine has no driver (or no CUDA 13 runtime)
        assert "libcudart.so.13" in str(e) or "libcuda.so.1" in str(e), e
    else:
        pytest.skip("this machine has an NVIDIA driver, so loading gets past the point this "
                    "test checks; benchmarks/gpu_check.sh covers loading on a GPU host")
