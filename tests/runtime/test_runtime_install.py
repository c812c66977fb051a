"""The runtime installs alone: ``pip install kiln`` (no extras) into a fresh venv gives numpy
and apache-tvm-ffi, no TVM, and that venv loads and runs an artifact that the full kiln
compiled, with the same outputs.

pip needs the package index (numpy, apache-tvm-ffi, and setuptools for the build) or, offline,
``PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR`` with those wheels in DIR. About 10-20 s; deselect with
``-m "not install"``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln import nn, ops

pytestmark = pytest.mark.install

ROOT = Path(kiln.__file__).resolve().parent.parent
COMPILER_DISTS = {"apache-tvm", "onnx", "networkx"}

RUN = textwrap.dedent("""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np

    art, x_path, expected_path = sys.argv[1:4]
    assert importlib.util.find_spec("tvm") is None, "tvm is installed"
    try:
        import tvm  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise AssertionError("import tvm worked")

    import kiln
    import kiln.runtime
    assert Path(kiln.__file__).is_relative_to(sys.prefix), kiln.__file__  # the installed copy
    model = kiln.runtime.load(art)
    (y,) = model.run({"x": np.load(x_path)})
    np.testing.assert_allclose(y, np.load(expected_path), rtol=1e-6, atol=1e-6)
    assert model.notes == [], model.notes
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in ("tvm", "onnx", "torch")
                    or m.startswith(("kiln.codegen", "kiln.frontend", "kiln.passes")))
    assert not loaded, loaded
    maps = Path("/proc/self/maps").read_text()
    assert "libtvm_runtime.so" in maps, "the artifact's thread pool is not loaded"

    # the compiler's entry points say how to install it
    try:
        kiln.compile
    except kiln.KilnError as e:
        assert 'pip install "kiln[compiler]"' in str(e), e
    else:
        raise AssertionError("kiln.compile without tvm")
    kiln_cmd = str(Path(sys.executable).parent / "kiln")
    run = subprocess.run([kiln_cmd, "run", art], capture_output=True, text=True)
    assert run.returncode == 0 and "output: float32[2, 4]" in run.stdout, run
    comp = subprocess.run([kiln_cmd, "compile", "model.py:M", "--input", "x=1x8", "-o", "m.kiln"],
                          capture_output=True, text=True)
    assert comp.returncode == 2 and "the compiler is not installed" in comp.stderr, comp
    print("OK")
""")


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return ops.softmax(self.fc2(ops.relu(self.fc1(x))), axis=-1)


def sh(cmd: list, cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(list(map(str, cmd)), cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, (f"{cmd} failed ({result.returncode}):\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def test_runtime_installs_alone(tmp_path):
    # the compiler side: compile with the full kiln, keep an input and its output
    nn.manual_seed(0)
    graph = kiln.trace(Small(), x=kiln.TensorSpec((2, 8)))
    compiled = kiln.compile(graph, opt_level=2)
    art = tmp_path / "small.kiln"
    compiled.save(art)
    x = np.random.default_rng(0).standard_normal((2, 8), dtype=np.float32)
    (expected,) = compiled.run({"x": x})
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", expected)

    # the package as pip builds it, from a copy (an in-tree build would leave build/ and
    # kiln.egg-info in the repository)
    src = tmp_path / "src"
    shutil.copytree(ROOT / "kiln", src / "kiln",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)

    # a fresh venv, as a deployment machine makes one; nothing of this process leaks in
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["TVM_NUM_THREADS"] = "1"
    venv = tmp_path / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    sh([base_python, "-m", "venv", venv], tmp_path, env)
    python = venv / "bin" / "python"
    sh([python, "-m", "pip", "install", "-q", src], tmp_path, env)

    listed = sh([python, "-m", "pip", "list", "--format=json"], tmp_path, env).stdout
    dists = {d["name"].lower() for d in json.loads(listed)}
    assert {"kiln", "numpy", "apache-tvm-ffi"} <= dists, dists
    assert not dists & COMPILER_DISTS, dists

    # the example for `kiln compile` (which must fail with the install hint)
    (tmp_path / "model.py").write_text("from kiln import nn\n\ndef M():\n"
                                       "    return nn.Linear(8, 4)\n")
    result = subprocess.run([str(python), "-c", RUN, str(art), str(tmp_path / "x.npy"),
                             str(tmp_path / "expected.npy")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.strip().endswith("OK"), result.stdout
