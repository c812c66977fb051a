"""Integer kernels compiled: ``matmul_integer`` and ``conv2d_integer`` on kiln's native
uint8 x int8 GEMM (both of its paths: AMX-INT8 tiles and AVX512-VNNI rows) and on the
generic TVM sums, exactly equal to the interpreter; quantized ONNX models compiled against
the interpreter and onnxruntime, and saved as artifacts."""

from __future__ import annotations

import ctypes

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings

import kiln
from kiln.ir import GraphBuilder, TensorType, interpret
from kiln.targets import host_target
from tests.passes.test_int8 import output_step, quantized_layers, within_one_step
from tests.quantized_models import inputs, quantized

HOST = host_target()
# The native int8 GEMM needs AVX512-VNNI; elsewhere the int8 pass keeps the float form and
# the generic integer kernels are still checked (test_generic_integer_kernels)
needs_vnni = pytest.mark.skipif("avx512_vnni" not in HOST.features,
                                reason="this CPU has no AVX512-VNNI, which the native int8 "
                                       "GEMM needs (the int8 pass keeps the float form here; "
                                       "test_generic_integer_kernels covers the rest)")
GENERIC = "llvm -mcpu=skylake-avx512"  # AVX-512 without VNNI: the TVM integer sums


def use_amx(compiled, wanted: int) -> int:
    lib = ctypes.CDLL(str(compiled.artifact / "kernels.so"))
    return lib.kiln_gemm_u8s8_use_amx(wanted)


def exact_on_every_path(graph, feeds, **options):
    want = interpret(graph, feeds)
    compiled = kiln.compile(graph, **options)
    for amx in (1, 0):
        if compiled.build.natives:
            use_amx(compiled, amx)
        for g, w in zip(compiled.run(feeds), want):
            assert g.dtype == w.dtype
            np.testing.assert_array_equal(g, w)
    return compiled


def integer_graph(a_shape, k, n, conv=None, a_dtype="uint8", seed=0):
    """matmul_integer of an input by an int8 weight, or (``conv``: x shape, weight shape,
    attrs) conv2d_integer; the extreme byte values included."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder("ints")
    info = np.iinfo(a_dtype)
    if conv is None:
        x = b.input("x", TensorType(a_shape, a_dtype))
        w = rng.integers(-128, 128, (k, n)).astype(np.int8)
        w.flat[0], w.flat[-1] = -128, 127
        b.output(b.op("matmul_integer", [x, b.param("w", w)])[0])
        shape = a_shape
    else:
        shape, w_shape, attrs = conv
        x = b.input("x", TensorType(shape, a_dtype))
        w = rng.integers(-128, 128, w_shape).astype(np.int8)
        b.output(b.op("conv2d_integer", [x, b.param("w", w)], attrs)[0])
    data = rng.integers(info.min, int(info.max) + 1, shape).astype(a_dtype)
    data.flat[0] = info.max
    return b.build(), {"x": data}


@needs_vnni
@pytest.mark.parametrize("m,k,n", [(1, 64, 16), (15, 48, 17), (16, 64, 32), (33, 100, 40),
                                   (70, 300, 48)])
def test_native_matmul_is_exact(m, k, n):
    graph, feeds = integer_graph((m, k), k, n)
    compiled = exact_on_every_path(graph, feeds, opt_level=2)
    assert compiled.build.natives == ("kiln_gemm_u8s8",)


@needs_vnni
def test_native_batched_matmul_is_exact():
    graph, feeds = integer_graph((2, 3, 20, 72), 72, 24)
    exact_on_every_path(graph, feeds, opt_level=2)


CONVS = [
    ((1, 3, 12, 12), (16, 3, 3, 3), {"pads": (1, 1, 1, 1), "pad_value": 131}),  # stem
    ((2, 64, 7, 7), (32, 64, 1, 1), {}),  # 1x1, whole K blocks
    ((1, 20, 9, 8), (24, 20, 3, 3), {"strides": (2, 2), "pads": (0, 1, 2, 1), "pad_value": 5}),
    ((1, 8, 10, 10), (8, 8, 3, 3), {"dilations": (2, 2), "pads": (2, 2, 2, 2),
                                    "pad_value": 255}),
]


@needs_vnni
@pytest.mark.parametrize("conv", CONVS, ids=["stem", "1x1", "strided", "dilated"])
def test_native_conv_is_exact(conv):
    graph, feeds = integer_graph(None, 0, 0, conv=conv)
    for level in (2, 3):
        compiled = exact_on_every_path(graph, feeds, opt_level=level)
        assert compiled.build.natives == ("kiln_gemm_u8s8",)


@pytest.mark.parametrize("case", ["matmul", "int8 x int8", "grouped conv"])
def test_generic_integer_kernels(case):
    """No native kernel (a target without VNNI, signed activations, groups): TVM's int32
    sums, exact too."""
    if case == "matmul":
        graph, feeds = integer_graph((5, 70), 70, 9)
    elif case == "int8 x int8":
        graph, feeds = integer_graph((5, 70), 70, 9, a_dtype="int8")
    else:
        graph, feeds = integer_graph(None, 0, 0, conv=(
            (1, 6, 8, 8), (9, 2, 3, 3), {"groups": 3, "pads": (1, 1, 1, 1), "pad_value": 9}))
    compiled = exact_on_every_path(graph, feeds, opt_level=2, target=GENERIC)
    assert compiled.build.natives == ()


@needs_vnni
@pytest.mark.parametrize("kind", [dict(), dict(activations="QUInt8", per_channel=True)],
                         ids=["int8-per-tensor", "uint8-per-channel"])
def test_quantized_models_match_the_interpreter_and_onnxruntime(tmp_path, kind):
    model = quantized(tmp_path, **kind)
    graph = kiln.from_onnx(model)
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    step = output_step(model)
    for level in (2, 3):
        compiled = kiln.compile(graph, opt_level=level)
        assert compiled.build.natives == ("kiln_gemm_u8s8",)
        for seed in (11, 12):
            feeds = inputs(seed)
            (got,) = compiled.run(feeds)
            (want,) = interpret(kiln.optimize(graph, level), feeds)
            within_one_step(got, want, step)
            within_one_step(got, session.run(None, feeds)[0], step)


@needs_vnni
def test_quantized_artifacts_keep_int8_weights(tmp_path):
    graph = kiln.from_onnx(quantized(tmp_path))
    compiled = kiln.compile(graph, opt_level=2)
    loaded = kiln.load(compiled.artifact)
    feeds = inputs(3)
    np.testing.assert_array_equal(loaded.run(feeds)[0], compiled.run(feeds)[0])
    with np.load(compiled.artifact / "weights.npz") as weights:
        assert any(weights[name].dtype == np.int8 for name in weights.files)


def test_chained_requantizations_stay_small():
    """GELU quantized after every op (what quantize_static makes of BERT's): each float->int
    cast reads its operand twice, so inlined, the kernel's expression doubled per
    requantization; a big expression read twice is computed once instead, and the kernel
    stays small (and right)."""
    from kiln.codegen.build import schedule_graph

    b = GraphBuilder("gelu8")
    x = b.input("x", TensorType((4, 96), "float32"))

    def requantize(v, scale):
        s = b.param(b.free_name("s"), np.array(scale, np.float32))
        q = b.op("cast", [b.op("clip", [b.op("round", [b.op("div", [v, s])[0]])[0]],
                               {"min": 0.0, "max": 255.0})[0]], {"dtype": "uint8"})[0]
        return b.op("mul", [b.op("cast", [q], {"dtype": "float32"})[0], s])[0]

    half = b.param("half", np.array(0.5, np.float32))
    e = requantize(b.op("erf", [requantize(x, 0.02)])[0], 0.01)
    y = requantize(b.op("add", [e, half])[0], 0.01)
    y = requantize(b.op("mul", [requantize(x, 0.02), y])[0], 0.02)
    b.output(requantize(b.op("mul", [y, half])[0], 0.02))
    graph = b.build()
    optimized = kiln.optimize(graph, 2)
    funcs = schedule_graph(optimized, HOST).funcs.values()
    assert sum(len(str(f)) for f in funcs) < 30_000
    feeds = {"x": np.random.default_rng(0).uniform(0, 5, (4, 96)).astype(np.float32)}
    (got,) = kiln.compile(graph, opt_level=2).run(feeds)
    (want,) = interpret(graph, feeds)
    within_one_step(got, want, 0.02)


def test_dynamically_quantized_models_match_onnxruntime(tmp_path):
    """quantize_dynamic's form: DynamicQuantizeLinear (the scale of each call's input), then
    MatMulInteger/ConvInteger with that zero point; the matmul runs on the native kernel,
    its zero points as corrections."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from tests.quantized_models import float_model

    src, dst = tmp_path / "f.onnx", tmp_path / "d.onnx"
    onnx.save(float_model(), src)
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    graph = kiln.from_onnx(str(dst))
    compiled = kiln.compile(graph, opt_level=2)
    if "avx512_vnni" in HOST.features:
        assert compiled.build.natives == ("kiln_gemm_u8s8",)
    session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    for seed in (1, 2):
        feeds = inputs(seed)
        want = session.run(None, feeds)[0]
        np.testing.assert_allclose(compiled.run(feeds)[0], want, rtol=0,
                                   atol=1e-3 * np.abs(want).max())


@needs_vnni
@settings(max_examples=10)
@given(quantized_layers())
def test_random_quantized_layers_compile_to_what_the_pass_made(case):
    """The int8 pass's graph of a random quantized layer (tests/passes/test_int8.py),
    compiled: the integer kernels (native on this CPU) against the interpreter."""
    graph, feeds, step = case
    want = interpret(kiln.optimize(graph, 2), feeds)[0]
    within_one_step(kiln.compile(graph, opt_level=2).run(feeds)[0], want, step)
