"""kiln's GPU schedules checked without a GPU: the kernels the cuda strategy schedules, run
through TVM's OpenCL code generator on PoCL (``kiln/codegen/opencl_check.py``), against the
interpreter, for every op and every example model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.codegen import opencl_check  # pyopencl and PoCL come with the test extra
from kiln.fuzz import mismatch
from kiln.ir import interpret
from tests.codegen.cases import case_graph
from tests.codegen.test_cuda import ZOO, every_op_cases, trace_zoo
from tests.codegen.test_examples_compiled import CASES as EXAMPLES
from tests.codegen.test_examples_compiled import _trace

RTOL, ATOL = 1e-4, 1e-4  # sums in another order than numpy's; fast exp/erf/tanh


def _compare(got: list, want: list, labels: list[str]) -> list[str]:
    """``label: why`` for each output that differs (kiln.fuzz's rule: NaN and inf exactly)."""
    return [f"{label}: {why}" for g, w, label in zip(got, want, labels)
            if (why := mismatch(w, g, RTOL, ATOL))]


def _op_run():
    cases = every_op_cases()
    graph, feeds, counts = case_graph(cases)
    labels = [c.label() for c, n in zip(cases, counts) for _ in range(n)]
    return graph, feeds, labels


def test_every_op_through_the_gpu_schedules():
    graph, feeds, labels = _op_run()
    got = opencl_check.run_gpu_schedules(graph, feeds)
    assert not _compare(got, interpret(graph, feeds), labels)


@pytest.mark.parametrize("name", sorted(EXAMPLES) + sorted(ZOO))
def test_every_example_through_the_gpu_schedules(name):
    graph, inputs = _trace(name) if name in EXAMPLES else trace_zoo(name)
    optimized = kiln.optimize(graph, 2, target="cuda")
    got = opencl_check.run_gpu_schedules(optimized, inputs)
    labels = [f"{name} output {i}" for i in range(len(got))]
    assert not _compare(got, interpret(graph, inputs), labels)


def test_the_check_catches_a_kernel_that_misses_elements(monkeypatch):
    """Kernels launched with one thread per block (as a wrong bound would leave elements
    unwritten) must show up as wrong outputs."""
    real = opencl_check.kernel_dims

    def one_thread(func):
        return [(grid, (1, 1, 1)) for grid, _ in real(func)]

    monkeypatch.setattr(opencl_check, "kernel_dims", one_thread)
    graph, feeds, labels = _op_run()
    bad = _compare(opencl_check.run_gpu_schedules(graph, feeds), interpret(graph, feeds),
                   labels)
    assert any(label.startswith("relu(") for label in bad) and len(bad) > 20


def test_compile_for_cuda_checks_on_the_cpu_from_the_command_line(tmp_path, capsys):
    from kiln.cli import main

    example = Path(__file__).resolve().parents[2] / "examples" / "mlp.py"
    code = main(["compile", f"{example}:MLP", "--input", "x=2x784", "--target", "cuda",
                 "-o", str(tmp_path / "mlp.kiln"), "--check-on-cpu"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "kernel launches per run" in out and "GPU kernels match the interpreter" in out


def test_reductions_over_one_element_keep_their_epilogue_out_of_the_init():
    """Found by `kiln fuzz --gpu-schedules`: relu(x @ w + b) with K = 1 gave
    relu(relu(b) + x * w + b) (TVM inlined the epilogue into the reduction's init)."""
    from kiln.ir import GraphBuilder, TensorType

    rng = np.random.default_rng(0)
    b = GraphBuilder("unit")
    x = b.input("x", TensorType((3, 1)))
    (y,) = b.op("matmul", [x, b.param("w", rng.standard_normal((1, 4)).astype("float32"))])
    (y,) = b.op("add", [y, b.param("b", rng.standard_normal(4).astype("float32"))])
    b.output(*b.op("relu", [y]))
    (s,) = b.op("sum", [x], {"axes": (1,), "keepdims": True})
    b.output(*b.op("exp", [s]))
    (m,) = b.op("max", [x], {"axes": (1,), "keepdims": False})
    b.output(*b.op("neg", [m]))
    graph = kiln.optimize(b.build(), 2, target="cuda")
    feeds = {"x": rng.standard_normal((3, 1)).astype("float32")}
    got = opencl_check.run_gpu_schedules(graph, feeds)
    assert not _compare(got, interpret(graph, feeds), ["relu", "exp", "neg"])


def test_the_fuzzer_checks_gpu_schedules(tmp_path, capsys):
    from kiln.cli import main

    code = main(["fuzz", "--examples", "4", "--seed", "1", "--gpu-schedules",
                 "--out", str(tmp_path)])
    assert code == 0 and "no mismatch" in capsys.readouterr().out


def test_tanh_and_erf_saturate_to_exactly_one():
    """Found by `kiln fuzz --gpu-schedules`: through OpenCL, erf(-4) came out -0.99999994,
    so gelu(-1e30) was -6e22 and gelu(-inf) -inf (the interpreter: -0.0 and NaN)."""
    from kiln.ir import GraphBuilder, TensorType

    b = GraphBuilder("sat")
    x = b.input("x", TensorType((6,)))
    for op, attrs in (("gelu", {}), ("gelu", {"approximate": "tanh"}), ("erf", {}),
                      ("tanh", {})):
        b.output(*b.op(op, [x], attrs))
    graph = b.build()
    feeds = {"x": np.array([-np.inf, -1e30, -30.0, -4.0, 9.05, np.inf], "float32")}
    want = interpret(graph, feeds)
    for got in (opencl_check.run_gpu_schedules(kiln.optimize(graph, 2, target="cuda"), feeds),
                kiln.compile(graph).run(feeds)):
        assert not _compare(got, want, ["gelu", "gelu tanh", "erf", "tanh"])


def test_relu_and_clip_keep_nan_on_the_gpu():
    """Found by `kiln fuzz --gpu-schedules`: relu is max(0, x), which TVM's LLVM code computes
    as 0 > x ? 0 : x (a NaN stays) but CUDA's and OpenCL's max drop the NaN."""
    from kiln.ir import GraphBuilder, TensorType

    b = GraphBuilder("nan")
    x = b.input("x", TensorType((5,)))
    b.output(*b.op("relu", [x]))
    b.output(*b.op("clip", [x], {"min": -0.5, "max": 0.5}))
    graph = b.build()
    feeds = {"x": np.array([np.nan, -1, 0.2, np.inf, -np.inf], "float32")}
    got = opencl_check.run_gpu_schedules(kiln.optimize(graph, 2, target="cuda"), feeds)
    assert not _compare(got, interpret(graph, feeds), ["relu", "clip"])
    assert np.isnan(got[0][0]) and np.isnan(got[1][0])


def test_a_grouped_convolution_with_an_epilogue():
    """Found by `kiln fuzz --gpu-schedules`: dlight's Reduction rule kept each thread's part
    of a grouped 1x1 convolution in its own registers, then read it from other threads."""
    from kiln.ir import GraphBuilder, TensorType

    rng = np.random.default_rng(0)
    b = GraphBuilder("grouped")
    x = b.input("x", TensorType((1, 4, 1, 2)))
    w = b.param("w", rng.standard_normal((4, 2, 1, 1)).astype("float32"))
    (y,) = b.op("conv2d", [x, w], {"groups": 2})
    b.output(*b.op("relu", [y]))
    graph = kiln.optimize(b.build(), 2, target="cuda")
    feeds = {"x": rng.standard_normal((1, 4, 1, 2)).astype("float32")}
    got = opencl_check.run_gpu_schedules(graph, feeds)
    assert not _compare(got, interpret(graph, feeds), ["relu(conv2d)"])


@pytest.mark.parametrize("name", ["lenet", "transformer"])
def test_bf16_examples_through_the_gpu_schedules(name):
    """precision="bf16" on the GPU: matmuls and convolutions sum in float32 and round once;
    compared with the interpreter of the same policy, allowing a few bf16 roundings."""
    graph, inputs = _trace(name)
    optimized = kiln.optimize(graph, 2, target="cuda", precision="bf16")
    assert any(v.dtype == "bfloat16" for n in optimized.nodes for v in n.outputs)
    got = opencl_check.run_gpu_schedules(optimized, inputs)
    for g, w in zip(got, interpret(optimized, inputs)):
        scale = float(np.abs(w).max())
        assert not mismatch(w, g, 3e-2, 3e-2 * scale)


def test_float16_without_cl_khr_fp16_is_a_clear_error():
    graph, inputs = _trace("mlp")
    optimized = kiln.optimize(graph, 2, target="cuda", precision="fp16")
    try:
        got = opencl_check.run_gpu_schedules(optimized, inputs)
    except kiln.KilnError as e:
        assert "has no float16 (cl_khr_fp16)" in str(e)
    else:  # an OpenCL device with float16: then it must be right
        for g, w in zip(got, interpret(optimized, inputs)):
            assert not mismatch(w, g, 3e-2, 3e-2 * float(np.abs(w).max()))
