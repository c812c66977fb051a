"""Target selection from /proc/cpuinfo text, and code for a portable target still correct."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.codegen.build import build
from kiln.errors import KilnError
from kiln.ir import GraphBuilder, TensorType, interpret
from kiln.targets import MCPU_FEATURES, host_target, portable_target, resolve_target


def _cpuinfo(vendor: str, flags) -> str:
    return f"processor\t: 0\nvendor_id\t: {vendor}\nflags\t\t: {' '.join(flags)}\n"


@pytest.mark.parametrize("vendor, flags, mcpu, bits", [
    ("AuthenticAMD", MCPU_FEATURES["znver4"], "znver4", 512),
    ("GenuineIntel", MCPU_FEATURES["sapphirerapids"], "sapphirerapids", 512),
    ("GenuineIntel", MCPU_FEATURES["x86-64-v4"], "x86-64-v4", 512),
    ("AuthenticAMD", MCPU_FEATURES["x86-64-v3"], "x86-64-v3", 256),
    ("AuthenticAMD", set(MCPU_FEATURES["znver4"]) - {"avx512_bf16"}, "x86-64-v4", 512),
    ("Other", ("sse4_1",), "x86-64", 128),
])
def test_host_target_from_cpuinfo(monkeypatch, vendor, flags, mcpu, bits):
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    t = host_target(_cpuinfo(vendor, flags), num_cores=2)
    assert (t.mcpu, t.vector_bits, t.num_cores) == (mcpu, bits, 2)
    assert set(t.features) <= set(flags)  # never asks for a feature the host lacks
    assert t.to_dict()["kind"] == "llvm" and t.lanes("float32") == bits // 32


def test_resolve_target_forms():
    assert resolve_target("x86-64-v3").mcpu == "x86-64-v3"
    assert resolve_target({"kind": "llvm", "mcpu": "znver4", "num-cores": 4}).num_cores == 4
    with pytest.raises(KilnError, match="llvm .CPU. and cuda"):
        resolve_target({"kind": "opencl"})


def test_portable_target_code_is_correct():
    rng = np.random.default_rng(0)
    b = GraphBuilder("portable")
    x = b.input("x", TensorType((5, 33)))
    (y,) = b.op("matmul", [x, b.param("w", rng.standard_normal((33, 20)).astype("float32"))])
    (y,) = b.op("softmax", [y])
    b.output(y)
    g = b.build()
    res = build(g, target=portable_target("x86-64-v3", num_cores=2))
    assert res.target.to_dict()["mcpu"] == "x86-64-v3" and "avx512f" not in res.target.features
    feeds = {"x": rng.standard_normal((5, 33)).astype("float32")}
    np.testing.assert_allclose(res.run(feeds)[0], interpret(g, feeds)[0], rtol=1e-5, atol=1e-6)
