"""Fresh-process tests: the runtime needs no compiler, and bad libraries never crash it.

The parent test process has imported tvm (to build the test library); these children have
not, so they also exercise loading the libtvm_runtime.so that the artifact carries.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from runtime_helpers import copy_artifact, rewrite_manifest

import kiln
from kiln.runtime import TORCH_ENV, pack
from kiln.runtime import format as fmt

ROOT = Path(kiln.__file__).resolve().parent.parent

RUN = """
import sys
import numpy as np
import kiln.runtime
model = kiln.runtime.load(sys.argv[1])
x = np.random.default_rng(0).standard_normal((4, 8), dtype=np.float32)
(y,) = model.run({"x": x})
weights = np.load(sys.argv[2], allow_pickle=False)
u = x @ weights["w"] + weights["b"]
np.testing.assert_allclose(y, np.maximum(u, 0) + u, rtol=1e-5, atol=1e-5)
compiler = sorted(m for m in sys.modules if m == "tvm" or m.startswith(
    ("tvm.", "kiln.ir", "kiln.codegen", "kiln.frontend", "kiln.passes", "onnx")))
assert not compiler, compiler
maps = open("/proc/self/maps").read()
assert "libtvm_runtime.so" in maps and "site-packages/tvm/" not in maps, "wrong thread pool"
assert model.notes == [], model.notes
print("OK", sorted(m for m in sys.modules if m.startswith("kiln")))
"""

LOAD = """
import sys
from kiln.errors import ArtifactError
import kiln.runtime
try:
    kiln.runtime.load(sys.argv[1])
except ArtifactError as e:
    print("ArtifactError:", e)
else:
    print("loaded")
"""


# `import tvm_ffi` imports torch whenever torch is installed (2-3 s); a deployment has no
# torch, and neither do these children.
NO_TORCH = "import sys; sys.modules['torch'] = None\n"


def child(code: str, *args, threads: dict | None = None, torch: bool = False,
          env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python; ``threads``: the thread variables it sees (default
    TVM_NUM_THREADS=2); ``torch``: leave torch importable; ``env``: more variables."""
    variables = {k: v for k, v in os.environ.items()
                 if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS", TORCH_ENV)}
    variables["PYTHONPATH"] = str(ROOT)
    variables.update({"TVM_NUM_THREADS": "2"} if threads is None else threads)
    variables.update(env or {})
    code = ("" if torch else NO_TORCH) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", code, *map(str, args)],
                          capture_output=True, text=True, env=variables, timeout=120)


def test_runtime_needs_no_compiler(small_artifact):
    result = child(RUN, small_artifact, small_artifact / fmt.WEIGHTS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK"), result.stdout


def test_packed_artifact_in_a_fresh_process(small_artifact, tmp_path):
    tar = pack(small_artifact, tmp_path / "m.kiln.tar")
    result = child(RUN, tar, small_artifact / fmt.WEIGHTS)
    assert result.returncode == 0, result.stderr


TORCH = """
import sys
import numpy as np
if sys.argv[2] == "torch-first":
    import torch
import kiln.runtime
model = kiln.runtime.load(sys.argv[1])
model.run({"x": np.ones((4, 8), np.float32)})
print("torch" in sys.modules)
import tvm_ffi
try:
    import torch
except ImportError:  # not installed
    print("none")
    raise SystemExit
t = torch.arange(6, dtype=torch.float32)  # torch works, its tensors pass to tvm_ffi
np.testing.assert_array_equal(np.from_dlpack(tvm_ffi.from_dlpack(t)), t.numpy())
print(type(tvm_ffi.convert(torch.float32)).__name__)  # "dtype" where tvm_ffi saw torch
"""


@pytest.mark.parametrize("mode", ["default", "opt-in", "torch-first"])
def test_runtime_does_not_import_torch(small_artifact, mode):
    """``import tvm_ffi`` imports torch whenever it is installed (1-3 s, most of a runtime
    start); the runtime keeps torch out unless torch is already imported or
    KILN_RUNTIME_TORCH=1 asks for tvm_ffi's torch helpers."""
    env = {TORCH_ENV: "1"} if mode == "opt-in" else {}
    result = child(TORCH, small_artifact, mode, torch=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    imported, helpers = result.stdout.split()
    if helpers == "none":  # torch is not installed here
        assert imported == "False"
        return
    assert imported == ("False" if mode == "default" else "True")
    assert helpers == ("OpaquePyObject" if mode == "default" else "dtype")


THREADS = """
import sys
import kiln.runtime
import tvm_ffi
from kiln.runtime.threads import physical_cores
kiln.runtime.load(sys.argv[1])
print(tvm_ffi.get_global_func("runtime.NumThreads")(), physical_cores())
"""


@pytest.mark.parametrize("threads", [{}, {"TVM_NUM_THREADS": "1"}, {"OMP_NUM_THREADS": "1"}],
                         ids=["default", "tvm_num_threads", "omp_num_threads"])
def test_thread_pool_size(small_artifact, threads):
    """One thread per physical core by default (TVM alone would take half the hardware
    threads on x86); the user's TVM_NUM_THREADS or OMP_NUM_THREADS wins."""
    result = child(THREADS, small_artifact, threads=threads)
    assert result.returncode == 0, result.stderr
    pool, cores = map(int, result.stdout.split())
    assert pool == (cores if not threads else 1)


def damage_truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def damage_random(path: Path) -> None:
    rng = np.random.default_rng(7)
    path.write_bytes(b"\x7fELF\x02\x01\x01" + rng.integers(0, 256, 20000, np.uint8).tobytes())


@pytest.mark.parametrize("damage", [damage_truncate, damage_random])
@pytest.mark.parametrize("fix_checksum", [False, True], ids=["checksum", "dlopen"])
def test_bad_library_never_crashes(small_artifact, tmp_path, damage, fix_checksum):
    """A damaged kernels.so is caught by its checksum; even with a matching checksum (a
    deliberately forged manifest), the ELF check or dlopen's refusal is an ArtifactError,
    not a crash (a truncated library would otherwise die of SIGBUS inside dlopen)."""
    art = copy_artifact(small_artifact, tmp_path / "m.kiln")
    damage(art / fmt.KERNELS)
    if fix_checksum:
        digest = fmt.sha256_file(art / fmt.KERNELS)
        rewrite_manifest(art, lambda m: m["files"].update({fmt.KERNELS: digest}))
    result = child(LOAD, art)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ArtifactError:"), result.stdout
    expected = "corrupt or was modified"
    if fix_checksum:
        expected = "truncated or damaged" if damage is damage_truncate else "not an ELF shared"
    assert expected in result.stdout
