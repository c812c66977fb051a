"""Loading real artifacts: success paths (directory, tar) and every way loading must fail.

Each failure is an ArtifactError that says what is wrong; none may crash the process (the
cases that would dlopen a bad library also run in a fresh process, test_runtime_isolation).
"""

from __future__ import annotations

import io
import json
import tarfile
import zipfile

import numpy as np
import pytest
from runtime_helpers import (
    copy_artifact,
    model_weights,
    reference,
    reseal_manifest,
    rewrite_manifest,
)

from kiln.errors import ArtifactError
from kiln.runtime import format as fmt
from kiln.runtime import load, pack
from kiln.runtime.loader import check_host, cpu_flags


def x_for(model, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(model.inputs[0].shape, dtype=np.float32)


def test_load_and_run(small_artifact):
    model = load(small_artifact)
    x = x_for(model)
    (y,) = model.run({"x": x})
    np.testing.assert_allclose(y, reference(x, model_weights()), rtol=1e-5, atol=1e-5)


def test_load_packed_archive(small_artifact, tmp_path):
    tar = pack(small_artifact, tmp_path / "m.kiln.tar")
    model = load(tar)
    x = x_for(model)
    np.testing.assert_allclose(model.run({"x": x})[0], reference(x, model_weights()),
                               rtol=1e-5, atol=1e-5)


def test_two_artifacts_with_the_same_kernel_names(make_artifact):
    small, big = load(make_artifact("small", "s.kiln")), load(make_artifact("big", "b.kiln"))
    for model, tag in ((small, "small"), (big, "big"), (small, "small")):
        x = x_for(model)
        np.testing.assert_allclose(model.run({"x": x})[0], reference(x, model_weights(tag)),
                                   rtol=1e-4, atol=1e-4)


@pytest.fixture
def art(small_artifact, tmp_path):
    """A private copy of the small artifact, free to damage."""
    return copy_artifact(small_artifact, tmp_path / "m.kiln")


def fails(path, match):
    with pytest.raises(ArtifactError, match=match):
        load(path)


def test_missing_path(tmp_path):
    fails(tmp_path / "nothing.kiln", "no artifact at")


def test_missing_manifest(art):
    (art / fmt.MANIFEST).unlink()
    fails(art, "has no manifest.json")


def test_bad_json(art):
    (art / fmt.MANIFEST).write_text('{"format": "kiln-artifact", ')
    reseal_manifest(art)
    fails(art, "not valid JSON")


def test_edited_manifest_is_caught_by_its_digest(art):
    rewrite_manifest(art, lambda m: m["kernels"][0].update(flops=1), reseal=False)
    fails(art, "manifest.json is corrupt or was modified after the build")


def test_missing_digest(art):
    (art / fmt.MANIFEST_DIGEST).unlink()
    fails(art, "has no manifest.sha256")


def test_older_format_is_refused_with_a_hint(art):
    """A format-1 artifact has no manifest.sha256: it is refused as older, not as damaged."""
    rewrite_manifest(art, lambda m: m.update(format_version=1))
    (art / fmt.MANIFEST_DIGEST).unlink()
    fails(art, "format_version 1.*rebuild it with `kiln compile`")


@pytest.mark.parametrize("version, match", [(fmt.FORMAT_VERSION + 1, "upgrade kiln"),
                                            (0, "rebuild it")])
def test_wrong_format_version(art, version, match):
    rewrite_manifest(art, lambda m: m.update(format_version=version))
    fails(art, match)


def test_foreign_manifest(art):
    (art / fmt.MANIFEST).write_text(json.dumps({"name": "some-package", "version": "1.0"}))
    reseal_manifest(art)
    fails(art, "not a kiln artifact")


def test_foreign_files(tmp_path):
    so = tmp_path / "libfoo.so"
    so.write_bytes(b"\x7fELF" + bytes(range(256)) * 8)
    fails(so, "not a kiln artifact")
    zipped = tmp_path / "model.zip"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("manifest.json", "{}")
    fails(zipped, "is a zip archive, not a tar")


@pytest.mark.parametrize("name", [fmt.KERNELS, fmt.WEIGHTS, fmt.RUNTIME_LIB])
def test_flipped_byte_is_caught_by_checksum(art, name):
    data = bytearray((art / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (art / name).write_bytes(bytes(data))
    fails(art, f"{name} is corrupt or was modified")


def test_truncated_library_is_caught_by_checksum(art):
    data = (art / fmt.KERNELS).read_bytes()
    (art / fmt.KERNELS).write_bytes(data[: len(data) // 3])
    fails(art, "kernels.so is corrupt")


def test_missing_file(art):
    (art / fmt.WEIGHTS).unlink()
    fails(art, "lacks weights.npz")


def test_unlisted_required_file(art):
    rewrite_manifest(art, lambda m: m["files"].pop(fmt.RUNTIME_LIB))
    fails(art, "'files' lists \\['kernels.so', 'weights.npz'\\], not exactly")


def test_files_are_exactly_the_artifacts(art):
    rewrite_manifest(art, lambda m: m["files"].update({"../../etc/passwd": "0" * 64}))
    fails(art, "'files' lists .*, not exactly")


def test_missing_cpu_feature(art):
    rewrite_manifest(art, lambda m: m.update(cpu_features=["sse2", "avx9000_quantum"]))
    if cpu_flags() is None:
        pytest.skip("no /proc/cpuinfo flags on this machine")
    fails(art, "this CPU lacks avx9000_quantum")


def test_cuda_artifact_without_gpu():
    manifest = {"target": {"kind": "cuda"}}
    with pytest.raises(ArtifactError, match="CUDA"):
        check_host(manifest)


def test_unknown_kernel_function(art):
    rewrite_manifest(art, lambda m: m["kernels"][0].update(func="no_such_kernel"))
    fails(art, "does not define the kernel\\(s\\) \\['no_such_kernel'\\]")


def test_unsound_memory_plan(art):
    rewrite_manifest(art, lambda m: m["memory"]["assign"].update(u=0))
    fails(art, "live at the same time")


def test_weights_that_disagree_with_the_manifest(art, tmp_path):
    with zipfile.ZipFile(art / fmt.WEIGHTS, "w") as z:  # a valid npz with the wrong shape
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.zeros(3, np.float32))
        z.writestr("w.npy", buf.getvalue())
        z.writestr("b.npy", buf.getvalue())
    rewrite_manifest(art, lambda m: m["files"].update(
        {fmt.WEIGHTS: fmt.sha256_file(art / fmt.WEIGHTS)}))
    fails(art, "constant 'w' in weights.npz is float32\\[3\\]")


def test_pickled_weights_are_refused(art):
    with zipfile.ZipFile(art / fmt.WEIGHTS, "w") as z:
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.array([{"evil": 1}], dtype=object),
                                  allow_pickle=True)
        z.writestr("w.npy", buf.getvalue())
    rewrite_manifest(art, lambda m: m["files"].update(
        {fmt.WEIGHTS: fmt.sha256_file(art / fmt.WEIGHTS)}))
    fails(art, "constant 'w' in weights.npz is object\\[1\\]")


def unsafe_tar(path, member_name, data=b"x", kind=tarfile.REGTYPE):
    with tarfile.open(path, "w") as t:
        info = tarfile.TarInfo(member_name)
        info.type = kind
        if kind == tarfile.SYMTYPE:
            info.linkname = "/etc/passwd"
            t.addfile(info)
        else:
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("member, kind", [
    ("../evil.so", tarfile.REGTYPE),
    ("/tmp/evil.so", tarfile.REGTYPE),
    ("m.kiln/../../evil", tarfile.REGTYPE),
    ("a/b/c", tarfile.REGTYPE),
    ("m.kiln/manifest.json", tarfile.SYMTYPE),
])
def test_unsafe_archives_are_refused(tmp_path, member, kind):
    tar = unsafe_tar(tmp_path / "evil.kiln.tar", member, kind=kind)
    fails(tar, "unsafe member|not a plain file")
    assert not (tmp_path.parent / "evil.so").exists()


def test_archive_without_manifest(tmp_path):
    tar = unsafe_tar(tmp_path / "x.kiln.tar", "x.kiln/kernels.so")
    fails(tar, "has no manifest.json")
