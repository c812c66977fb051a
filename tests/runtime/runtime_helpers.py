"""Helpers for runtime tests: tiny real artifacts built with TVM directly (not kiln.codegen).

The library holds, for each size config, a parallel matmul, a bias add, a relu and an add;
the model is ``t = x @ w; u = t + b; y = relu(u) + u``. Its memory plan reuses t's buffer for
relu(u). Elementwise kernels over [N] (``ew_add``, ``ew_mul``, ``ew_sub``) serve the randomized
executor test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

# Sizes per config: "small" keeps every input/output under the zero-copy threshold, "big"
# puts x and y over it (128 KiB each).
CONFIGS = {"small": (4, 8, 16), "big": (256, 128, 128)}
EW_N = 32


def _model_funcs(tag: str, m: int, k: int, n: int) -> dict:
    from tvm import te, topi

    x = te.placeholder((m, k), "float32", name="x")
    w = te.placeholder((k, n), "float32", name="w")
    r = te.reduce_axis((0, k), "r")
    t = te.compute((m, n), lambda i, j: te.sum(x[i, r] * w[r, j], axis=r), name="mm")
    a = te.placeholder((m, n), "float32", name="a")
    b = te.placeholder((n,), "float32", name="b")
    c = te.placeholder((m, n), "float32", name="c")
    return {
        f"matmul_{tag}": [x, w, t],
        f"bias_{tag}": [a, b, te.compute((m, n), lambda i, j: a[i, j] + b[j])],
        f"relu_{tag}": [a, topi.nn.relu(a)],
        f"add_{tag}": [a, c, te.compute((m, n), lambda i, j: a[i, j] + c[i, j])],
    }


def build_library(path: Path) -> None:
    """Compile every kernel of the test models into one library at ``path``."""
    tvm = pytest.importorskip("tvm")
    from tvm import s_tir, te

    funcs = {}
    for tag, (m, k, n) in CONFIGS.items():
        funcs.update(_model_funcs(tag, m, k, n))
    p = te.placeholder((EW_N,), "float32", name="p")
    q = te.placeholder((EW_N,), "float32", name="q")
    funcs["ew_add"] = [p, q, te.compute((EW_N,), lambda i: p[i] + q[i])]
    funcs["ew_mul"] = [p, q, te.compute((EW_N,), lambda i: p[i] * q[i])]
    funcs["ew_sub"] = [p, q, te.compute((EW_N,), lambda i: p[i] - q[i])]
    mod = tvm.IRModule({name: te.create_prim_func(args).with_attr("global_symbol", name)
                        for name, args in funcs.items()})
    sch = s_tir.Schedule(mod)
    for tag in CONFIGS:  # a parallel loop needs TVM's thread pool (libtvm_runtime.so)
        block = sch.get_sblock("mm", func_name=f"matmul_{tag}")
        sch.parallel(sch.get_loops(block)[0])
    lib = tvm.compile(sch.mod, target=tvm.target.Target({"kind": "llvm"}))
    lib.export_library(str(path))


def model_manifest(tag: str = "small") -> dict:
    """The hand-written manifest of the config's model (without memory and files)."""
    m, k, n = CONFIGS[tag]
    values = {
        "x": {"shape": [m, k], "dtype": "float32"},
        "w": {"shape": [k, n], "dtype": "float32"},
        "b": {"shape": [n], "dtype": "float32"},
        "t": {"shape": [m, n], "dtype": "float32"},
        "u": {"shape": [m, n], "dtype": "float32"},
        "v": {"shape": [m, n], "dtype": "float32"},
        "y": {"shape": [m, n], "dtype": "float32"},
    }
    return {
        "target": {"kind": "llvm", "num-cores": 2},
        "cpu_features": ["sse2"],
        "inputs": [{"name": "x", **values["x"]}],
        "outputs": [{"name": "y", **values["y"]}],
        "values": values,
        "constants": ["w", "b"],
        "kernels": [
            {"func": f"matmul_{tag}", "args": ["x", "w", "t"], "num_outputs": 1,
             "sources": ["%0 matmul"], "flops": 2 * m * k * n},
            {"func": f"bias_{tag}", "args": ["t", "b", "u"], "num_outputs": 1,
             "sources": ["%1 add"], "flops": m * n},
            {"func": f"relu_{tag}", "args": ["u", "v"], "num_outputs": 1,
             "sources": ["%2 relu"], "flops": m * n},
            {"func": f"add_{tag}", "args": ["v", "u", "y"], "num_outputs": 1,
             "sources": ["%3 add"], "flops": m * n},
        ],
    }


def model_weights(tag: str = "small") -> dict[str, np.ndarray]:
    m, k, n = CONFIGS[tag]
    rng = np.random.default_rng(0)
    return {"w": rng.standard_normal((k, n), dtype=np.float32),
            "b": rng.standard_normal(n, dtype=np.float32)}


def reference(x: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    u = x @ weights["w"] + weights["b"]
    return np.maximum(u, 0) + u


def rewrite_manifest(path: Path, edit, reseal: bool = True) -> None:
    """Apply ``edit(manifest)`` to an artifact's manifest.json in place; ``reseal`` rewrites
    manifest.sha256 to match (what a deliberate edit does), else it is left stale."""
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))
    if reseal:
        reseal_manifest(path)


def reseal_manifest(path: Path) -> None:
    """Rewrite manifest.sha256 to match manifest.json as it is now."""
    from kiln.runtime import format as fmt

    raw = (path / fmt.MANIFEST).read_bytes()
    (path / fmt.MANIFEST_DIGEST).write_text(fmt.digest_text(raw))


def copy_artifact(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest
