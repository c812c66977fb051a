"""Writing artifacts: contents, checksums, atomicity, replacement and packing.

The writer never looks inside the libraries, so these tests use stand-in files and need no
TVM (loading real artifacts is tested in test_runtime_load.py).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from runtime_helpers import model_manifest, model_weights

import kiln
from kiln.errors import ArtifactError
from kiln.runtime import format as fmt
from kiln.runtime import pack, write_artifact
from kiln.runtime import writer as writer_module


@pytest.fixture
def libs(tmp_path):
    lib, runtime = tmp_path / "src" / "k.so", tmp_path / "src" / "rt.so"
    lib.parent.mkdir()
    lib.write_bytes(b"\x7fELF pretend kernels")
    runtime.write_bytes(b"\x7fELF pretend runtime")
    return lib, runtime


def write(path, libs, manifest=None, weights=None):
    return write_artifact(path, manifest or model_manifest(), libs[0],
                          weights or model_weights(), libs[1])


def leftovers(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(name + "."))


def test_writes_files_checksums_and_plan(tmp_path, libs):
    original = model_manifest()
    snapshot = copy.deepcopy(original)
    path = write(tmp_path / "m.kiln", libs, manifest=original)
    assert original == snapshot  # the caller's manifest is untouched
    assert sorted(p.name for p in path.iterdir()) == sorted(
        [fmt.MANIFEST, fmt.MANIFEST_DIGEST, *fmt.REQUIRED_FILES])
    digest = hashlib.sha256((path / fmt.MANIFEST).read_bytes()).hexdigest()
    assert (path / fmt.MANIFEST_DIGEST).read_text() == f"{digest}  manifest.json\n"
    m = json.loads((path / fmt.MANIFEST).read_text())
    for name, digest in m["files"].items():
        assert hashlib.sha256((path / name).read_bytes()).hexdigest() == digest
    assert (path / fmt.KERNELS).read_bytes() == libs[0].read_bytes()
    assert m["format"] == "kiln-artifact" and m["format_version"] == fmt.FORMAT_VERSION
    assert m["kiln_version"] == kiln.__version__
    assert m["memory"]["assign"] == {"t": 0, "u": 1, "v": 0}
    assert m["memory"]["peak_bytes"] < m["memory"]["naive_bytes"]
    with np.load(path / fmt.WEIGHTS, allow_pickle=False) as npz:
        for name, array in model_weights().items():
            np.testing.assert_array_equal(npz[name], array)
    assert leftovers(tmp_path, "m.kiln") == []


def test_weights_with_awkward_names(tmp_path, libs):
    m = model_manifest()
    m["values"]["file"] = m["values"].pop("w")
    m["values"]["allow_pickle"] = m["values"].pop("b")
    m["constants"] = ["file", "allow_pickle"]
    m["kernels"][0]["args"][1] = "file"
    m["kernels"][1]["args"][1] = "allow_pickle"
    w = model_weights()
    path = write(tmp_path / "m.kiln", libs, manifest=m,
                 weights={"file": w["w"], "allow_pickle": w["b"]})
    with np.load(path / fmt.WEIGHTS, allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["file"], w["w"])


class Boom(Exception):
    pass


def explode(*args, **kwargs):
    raise Boom("disk full")


def test_failure_leaves_nothing(tmp_path, libs, monkeypatch):
    monkeypatch.setattr(writer_module, "_write_npz", explode)
    with pytest.raises(Boom):
        write(tmp_path / "m.kiln", libs)
    assert not (tmp_path / "m.kiln").exists()
    assert leftovers(tmp_path, "m.kiln") == []


def test_failure_keeps_the_old_artifact(tmp_path, libs, monkeypatch):
    path = write(tmp_path / "m.kiln", libs)
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    monkeypatch.setattr(writer_module.fmt, "sha256_file", explode)
    with pytest.raises(Boom):
        write(path, libs)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert leftovers(tmp_path, "m.kiln") == []


def test_success_replaces_the_old_artifact(tmp_path, libs):
    path = write(tmp_path / "m.kiln", libs)
    weights = {k: v + 1 for k, v in model_weights().items()}
    write(path, libs, weights=weights)
    with np.load(path / fmt.WEIGHTS, allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["b"], weights["b"])
    assert leftovers(tmp_path, "m.kiln") == []


def test_refuses_to_replace_a_foreign_directory(tmp_path, libs):
    precious = tmp_path / "m.kiln"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(ArtifactError, match="refusing to replace"):
        write(precious, libs)
    assert (precious / "thesis.tex").read_text() == "years of work"
    assert leftovers(tmp_path, "m.kiln") == []


@pytest.mark.parametrize("weights, message", [
    ({"w": np.zeros((8, 16), np.float32)}, "do not match the manifest's constants"),
    ({"w": np.zeros((8, 16), np.float64), "b": np.zeros(16, np.float32)}, "weight 'w' is"),
    ({"w": np.zeros((16, 8), np.float32), "b": np.zeros(16, np.float32)}, "weight 'w' is"),
])
def test_inconsistent_weights_are_refused(tmp_path, libs, weights, message):
    with pytest.raises(ArtifactError, match=message):
        write(tmp_path / "m.kiln", libs, weights=weights)
    assert not (tmp_path / "m.kiln").exists()


def test_inconsistent_manifest_is_refused(tmp_path, libs):
    m = model_manifest()
    m["kernels"].reverse()
    with pytest.raises(ArtifactError, match="before any kernel writes it"):
        write(tmp_path / "m.kiln", libs, manifest=m)
    assert list(tmp_path.iterdir()) == [tmp_path / "src"]


def test_pack_is_deterministic_and_flat(tmp_path, libs):
    path = write(tmp_path / "m.kiln", libs)
    tar = pack(path)
    assert tar == tmp_path / "m.kiln.tar"
    with tarfile.open(tar) as t:
        names = sorted(t.getnames())
        assert all(m.isfile() and m.mtime == 0 and m.uid == 0 for m in t.getmembers())
    assert names == sorted(f"m.kiln/{n}" for n in [fmt.MANIFEST, fmt.MANIFEST_DIGEST,
                                                  *fmt.REQUIRED_FILES])
    first = tar.read_bytes()
    os.utime(path / fmt.KERNELS, (0, 12345))
    assert pack(path, tmp_path / "again.tar").read_bytes() == first
    assert leftovers(tmp_path, "m.kiln.tar") == []


def test_find_tvm_runtime_library_does_not_import_tvm():
    if importlib.util.find_spec("tvm") is None:
        pytest.skip("tvm is not installed")
    code = ("import sys; from kiln.runtime.buildtime import find_tvm_runtime_library as f; "
            "p = f(); print(p); assert p.name == 'libtvm_runtime.so' and p.is_file(); "
            "assert 'tvm' not in sys.modules")
    root = Path(kiln.__file__).parent.parent
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(root)})
    assert result.returncode == 0, result.stderr
    assert "tvm" in result.stdout
