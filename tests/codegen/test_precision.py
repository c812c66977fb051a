"""Reduced precision compiled: ``kiln.compile(precision="bf16")`` against the interpreter
running the same policy (``kiln.optimize(..., precision=...)``: the interpreter knows the
casts), kiln's native bf16 GEMM on both of its paths (AMX tiles and AVX512-BF16), the
generic bf16 TVM kernels, the fallback where the CPU has no fast instructions, and bf16
weights in artifacts.

Tolerance: compiled kernels round to bf16 once per kernel (a fused chain computes in
float32), the interpreter after every op, so results differ by a few bf16 roundings (8
significant bits): errors are compared with ``TOL`` x the output's largest magnitude."""

import ctypes
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import kiln
from kiln.codegen.build import build
from kiln.errors import ArtifactError, PrecisionWarning
from kiln.ir import interpret, parse, verify
from kiln.passes.context import PassContext
from kiln.passes.manager import optimize
from kiln.targets import host_target, resolve_target

TOL = 3e-2
BF16 = np.dtype(ml_dtypes.bfloat16)
HOST = host_target()
# The native bf16 GEMM runs only where the CPU has AVX512-BF16; elsewhere kiln compiles
# float32 (test_no_fast_instructions_means_float32_with_a_warning) and the generic bf16
# kernels are still checked (test_generic_bf16_kernels_sum_in_float32)
needs_bf16 = pytest.mark.skipif("avx512_bf16" not in HOST.features,
                                reason="this CPU has no AVX512-BF16, which the native bf16 "
                                       "GEMM needs (kiln compiles float32 here)")
rng = np.random.default_rng(0)


def close(got, want):
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        finite = np.isfinite(w)
        np.testing.assert_array_equal(np.isfinite(g), finite)
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
        scale = max(float(np.abs(w[finite]).max(initial=0.0)), 1e-30)
        err = float(np.abs(g[finite].astype(np.float64) - w[finite]).max(initial=0.0))
        assert err <= TOL * scale, f"error {err:.3g} above {TOL} x {scale:.3g}"


def check(graph, inputs, opt_level=2):
    """Compile with precision bf16; compare with the interpreter of the same policy, on
    every path of the native GEMM this CPU has. Returns the compiled model."""
    want = interpret(kiln.optimize(graph, opt_level, precision="bf16", layout_budget=0), inputs)
    compiled = kiln.compile(graph, opt_level=opt_level, precision="bf16", layout_budget=0)
    for amx in (1, 0):
        if compiled.build.natives:
            use_amx(compiled, amx)
        close(compiled.run(inputs), want)
    return compiled


def use_amx(compiled, wanted: int) -> int:
    """Select the native GEMM's path in the loaded artifact (AMX only where the CPU has it)."""
    lib = ctypes.CDLL(str(compiled.artifact / "kernels.so"))
    return lib.kiln_gemm_bf16_use_amx(wanted)


def matmul_graph(m, k, n, batch=(), runtime_b=False, bias=True):
    a_shape = (*batch, m, k)
    b_shape = (*batch, k, n) if runtime_b else (k, n)
    ins = f"%a: float32{list(a_shape)}" + (f", %b: float32{list(b_shape)}" if runtime_b else "")
    out = list((*batch, m, n))
    body = [f"%c: float32{out} = matmul(%a, %b)"]
    if bias:
        body += [f"%d: float32{out} = add(%c, %bias)", f"%e: float32{out} = relu(%d)"]
    params = ("" if runtime_b else f"param %b: float32{list(b_shape)}\n") + (
        f"param %bias: float32[{n}]\n" if bias else "")
    text = (f"graph mm({ins}) {{\n{params}" + "\n".join(body)
            + f"\nreturn {'%e' if bias else '%c'}\n}}")
    weights = {}
    if not runtime_b:
        weights["b"] = rng.standard_normal(b_shape).astype(np.float32)
    if bias:
        weights["bias"] = rng.standard_normal(n).astype(np.float32)
    g = verify(parse(text, weights))
    inputs = {"a": rng.standard_normal(a_shape).astype(np.float32)}
    if runtime_b:
        inputs["b"] = rng.standard_normal(b_shape).astype(np.float32)
    return g, inputs


@needs_bf16
@pytest.mark.parametrize("m,k,n", [(1, 64, 16), (15, 48, 17), (16, 32, 32), (33, 100, 40),
                                   (64, 96, 48)])
def test_bf16_matmul_with_a_weight_on_every_path(m, k, n):
    g, inputs = matmul_graph(m, k, n)
    compiled = check(g, inputs)
    assert compiled.build.natives == ("kiln_gemm_bf16",)


@needs_bf16
def test_bf16_batched_matmul_of_two_activations():
    g, inputs = matmul_graph(20, 40, 24, batch=(2, 3), runtime_b=True, bias=False)
    check(g, inputs)


CONV = textwrap.dedent("""
    graph conv(%x: float32[{n}, {c}, {h}, {w}]) {{
      param %k: float32[{o}, {cg}, {kh}, {kw}]
      param %bias: float32[{o}]
      %y: float32{out} = conv2d(%x, %k, %bias) {{strides=({s}, {s}), \
pads=({p}, {p}, {p}, {p}), dilations=({d}, {d}), groups={groups}}}
      %z: float32{out} = relu(%y)
      return %z
    }}""")


def conv_graph(n=1, c=8, h=9, w=9, o=16, kh=3, kw=3, s=1, p=1, d=1, groups=1):
    oh = (h + 2 * p - d * (kh - 1) - 1) // s + 1
    ow = (w + 2 * p - d * (kw - 1) - 1) // s + 1
    out = [n, o, oh, ow]
    text = CONV.format(n=n, c=c, h=h, w=w, o=o, cg=c // groups, kh=kh, kw=kw, s=s, p=p, d=d,
                       groups=groups, out=out)
    weights = {"k": rng.standard_normal((o, c // groups, kh, kw)).astype(np.float32),
               "bias": rng.standard_normal(o).astype(np.float32)}
    return verify(parse(text, weights)), {"x": rng.standard_normal((n, c, h, w)).astype(
        np.float32)}


@needs_bf16
@pytest.mark.parametrize("shape", [
    dict(),                                        # 3x3, kernel rows of 24: padded to 32
    dict(c=3, h=20, w=20, o=8, kh=7, kw=7, s=2, p=3),  # a stem: 3 channels, stride 2
    dict(c=32, kh=1, kw=1, p=0),                   # 1x1: rows of 32, no padding
    dict(c=16, o=24, s=2, d=2, p=2, n=2),          # dilated, strided, batch 2
    dict(c=8, o=16, groups=2),                     # grouped: TVM's kernel, float32 sums
    dict(c=16, o=16, groups=16),                   # depthwise: the same
])
def test_bf16_convolutions(shape):
    g, inputs = conv_graph(**shape)
    compiled = check(g, inputs)
    assert bool(compiled.build.natives) == (shape.get("groups", 1) == 1)


@needs_bf16
def test_a_zoo_model_in_bf16():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    import resnet
    import transformer

    x = rng.standard_normal((1, 64, 14, 14)).astype(np.float32)
    check(kiln.trace(resnet.resnet_block(), x=kiln.TensorSpec(x.shape)), {"x": x})
    t = rng.standard_normal((2, 6, 32)).astype(np.float32)
    mask = np.zeros((2, 6), bool)
    mask[1, 4:] = True
    enc = kiln.trace(transformer.CausalEncoder(), x=kiln.TensorSpec(t.shape),
                     padding_mask=kiln.TensorSpec(mask.shape, "bool"))
    check(enc, {"x": t, "padding_mask": mask})


@needs_bf16
def test_non_finite_values_through_the_native_gemm():
    g, inputs = matmul_graph(32, 64, 32)
    a = inputs["a"]
    a[0, 0], a[5, 7], a[9, :] = np.nan, np.inf, -np.inf
    check(g, inputs)


def test_generic_bf16_kernels_sum_in_float32():
    """bf16 graphs on a target without AVX512-BF16 (the policy forced): TVM's own kernels,
    every sum of products widened to float32."""
    target = resolve_target("x86-64-v3")
    for g, inputs in (matmul_graph(9, 300, 10), conv_graph(c=16, groups=4),
                      conv_graph(c=4, h=6, w=6)):
        low = optimize(g, 2, ctx=PassContext(target=target, precision="bfloat16"))
        assert any(v.dtype == "bfloat16" for n in low.nodes for v in n.outputs)
        result = build(low, target=target)
        assert not result.natives
        close(result.run(inputs), interpret(low, inputs))


def test_no_fast_instructions_means_float32_with_a_warning():
    g, _ = matmul_graph(4, 8, 4)
    with pytest.warns(PrecisionWarning, match="no AVX512-BF16"):
        out = kiln.optimize(g, 2, target="x86-64-v3", precision="bf16")
    assert all(v.dtype == "float32" for n in out.nodes for v in n.outputs)
    with pytest.warns(PrecisionWarning, match="float16"):
        kiln.optimize(g, 2, precision="fp16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kiln.optimize(g, 2, target="cuda", precision="fp16")  # GPUs multiply fp16 fast


@needs_bf16
def test_bf16_weights_in_the_artifact(tmp_path):
    g, inputs = matmul_graph(8, 32, 16)
    compiled = kiln.compile(g, precision="bf16")
    path = compiled.save(tmp_path / "mm.kiln")
    manifest = kiln.runtime.load(path)
    np.testing.assert_array_equal(manifest.run(inputs)[0], compiled.run(inputs)[0])
    with zipfile.ZipFile(path / "weights.npz") as z:
        names = [n for n in z.namelist() if "bf16" in n]
    assert names  # stored as their bits, uint16
    stored = np.load(path / "weights.npz")
    assert all(stored[n[:-4]].dtype == np.uint16 for n in names)
    # a bf16 weight rewritten as float32 is refused (its size and type disagree)
    bad = tmp_path / "bad.kiln"
    compiled.save(bad)
    arrays = {k: stored[k] for k in stored.files}
    name = names[0][:-4]
    arrays[name] = arrays[name].astype(np.float32)
    np.savez(bad / "weights.npz", **arrays)
    with pytest.raises(ArtifactError):
        kiln.runtime.load(bad)


def test_bfloat16_inputs_and_outputs_are_ml_dtypes_arrays(tmp_path):
    g = verify(parse(textwrap.dedent("""
        graph g(%x: bfloat16[4, 40]) {
          param %w: bfloat16[40, 8]
          %y: bfloat16[4, 8] = matmul(%x, %w)
          %z: float32[4, 8] = cast(%y) {dtype="float32"}
          return %y, %z, %w
        }"""), {"w": rng.standard_normal((40, 8)).astype(BF16)}))
    x = rng.standard_normal((4, 40)).astype(BF16)
    want = interpret(g, {"x": x})
    compiled = kiln.compile(g)
    model = kiln.runtime.load(compiled.save(tmp_path / "g.kiln"))
    got = model.run({"x": x})
    assert [a.dtype for a in got] == [BF16, np.float32, BF16]
    close([a.astype(np.float32) for a in got], [a.astype(np.float32) for a in want])
    np.testing.assert_array_equal(got[2], g.weights["w"])  # a constant output, as it is
    with pytest.raises(kiln.errors.InputError, match=r"astype\(ml_dtypes.bfloat16\)"):
        model.run({"x": x.astype(np.float32)})


@needs_bf16
def test_bf16_conv_chains_stay_nhwc_at_o3():
    """At O3 the layout pass keeps bf16 conv chains in whole-channel blocks (NHWC), which the
    native GEMM reads and writes in place: transforms only at the chain's ends."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    import resnet

    x = rng.standard_normal((1, 64, 14, 14)).astype(np.float32)
    graph = kiln.trace(resnet.resnet_block(), x=kiln.TensorSpec(x.shape))
    opt = kiln.optimize(graph, 3, precision="bf16", layout_budget=0, disable={"fuse"})
    convs = [n for n in opt.nodes if n.op == "conv2d_nchwc"]
    assert convs and all(n.inputs[0].shape[1] == 1 and n.outputs[0].shape[1] == 1
                         and n.inputs[0].dtype == "bfloat16" for n in convs)
    assert sum(n.op == "layout_transform" for n in opt.nodes) == 2  # in and out
    compiled = check(graph, {"x": x}, opt_level=3)
    assert compiled.build.natives == ("kiln_gemm_bf16",)


@needs_bf16
@pytest.mark.parametrize("shape", [dict(c=32, kh=1, kw=1, p=0),  # multiplies x in place
                                   dict(c=16, o=40, s=2), dict(c=3, kh=7, kw=7, p=3)])
def test_bf16_blocked_convolutions_at_o3(shape):
    g, inputs = conv_graph(**shape)
    compiled = check(g, inputs, opt_level=3)
    assert compiled.build.natives == ("kiln_gemm_bf16",)


@needs_bf16
@pytest.mark.parametrize("k", [64, 40])  # in place, and through the zero-padded copy
def test_bf16_batched_rows_times_one_weight_are_one_gemm(k):
    g, inputs = matmul_graph(7, k, 48, batch=(1, 7))
    check(g, inputs)
