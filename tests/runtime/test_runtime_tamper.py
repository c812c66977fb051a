"""Tampered and malformed artifacts (docs/artifact.md, "Trust"): a few fixed cases of each
class that campaigns/artifacts.py draws at random, and a short run of that campaign.

Tampered manifests get a recomputed manifest.sha256 (and tampered files recomputed checksums),
as a deliberate editor would, so that what is tested is the validation behind the digest.
Cases that could hang (FIFOs, /dev/zero) or crash (foreign libraries) load in a child
process with a timeout.
"""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from runtime_helpers import (
    copy_artifact,
    model_weights,
    reference,
    reseal_manifest,
    rewrite_manifest,
)

import kiln
from kiln.cli import main as kiln_main
from kiln.errors import ArtifactError
from kiln.runtime import format as fmt
from kiln.runtime import load, pack, sign_artifact
from kiln.runtime.elf import _parse, defined_symbols
from tests.examples_util import module_at

ROOT = Path(kiln.__file__).resolve().parent.parent
KEY = b"0123456789abcdef-test-key"


@pytest.fixture
def art(small_artifact, tmp_path):
    """A private copy of the small artifact, free to damage."""
    return copy_artifact(small_artifact, tmp_path / "m.kiln")


def fails(path, match, key=None):
    with pytest.raises(ArtifactError, match=match):
        load(path, key=key)


def runs_correctly(path, key=None):
    model = load(path, key=key)
    x = np.random.default_rng(1).standard_normal(model.inputs[0].shape, dtype=np.float32)
    np.testing.assert_allclose(model.run({"x": x})[0], reference(x, model_weights()),
                               rtol=1e-5, atol=1e-5)


def refresh_checksums(art: Path) -> None:
    """Recompute "files" and the digest after replacing files (a deliberate edit)."""
    rewrite_manifest(art, lambda m: m["files"].update(
        {n: fmt.sha256_file(art / n) for n in fmt.REQUIRED_FILES}))


LOAD = """
import sys
from kiln.errors import KilnError
import kiln.runtime
try:
    kiln.runtime.load(sys.argv[1])
except KilnError as e:
    print("refused:", e)
else:
    print("loaded")
"""


def load_in_child(path: Path) -> str:
    """Load ``path`` in a fresh Python (a hang or crash would otherwise take pytest down)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TVM_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", LOAD, str(path)], capture_output=True,
                            text=True, env=env, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


# -- the manifest: digest, strict JSON ----------------------------------------------------------

@pytest.mark.parametrize("raw, match", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"flops": ' + b"9" * 5000 + b"}", "5000-digit integer"),
    (b'{"flops": -' + b"9" * 31 + b"}", "31-digit integer"),
    (b'{"flops": NaN}', "holds NaN"),
    (b'{"flops": -Infinity}', "holds -Infinity"),
    (b'{"flops": 1e999}', "overflows a float"),
    (b'{"kernels": [], "kernels": [1]}', "'kernels' appears twice"),
    (b'{"a": {"b": 1, "b": 1}}', "'b' appears twice"),
    (b"\xef\xbb\xbf{}", "BOM"),
    (b'{"a": "\xff"}', "not UTF-8"),
    (b"", "not valid JSON"),
])
def test_malformed_json_is_an_artifact_error(raw, match):
    with pytest.raises(ArtifactError, match=match):
        fmt.parse_manifest(raw, "m.kiln")


def test_deeply_nested_manifest_in_an_artifact(art):
    text = (art / fmt.MANIFEST).read_text()
    (art / fmt.MANIFEST).write_text(text.replace('"sources"', '"deep": ' + "[" * 50_000
                                                 + "]" * 50_000 + ', "sources"', 1))
    reseal_manifest(art)
    fails(art, "nested too deeply")


def test_a_manifest_over_the_size_limit(art, monkeypatch):
    monkeypatch.setattr(fmt, "MAX_MANIFEST_BYTES", 1000)
    fails(art, "larger than 1000 bytes")


def test_huge_but_valid_whitespace_is_fine(art):
    """A harmless change with a recomputed digest loads (the digest is not a signature)."""
    (art / fmt.MANIFEST).write_bytes((art / fmt.MANIFEST).read_bytes() + b" " * 100_000)
    reseal_manifest(art)
    runs_correctly(art)


# -- the memory plan ----------------------------------------------------------------------------

def shift_onto_negative_buffer(m):
    """The reported bug: an unused buffer of negative size before the others moved every
    later buffer back onto an earlier one, and runs returned wrong numbers."""
    mem = m["memory"]
    mem["buffers"] = [{"id": 0, "nbytes": -4096}] + [
        {"id": b["id"] + 1, "nbytes": b["nbytes"]} for b in mem["buffers"]]
    mem["assign"] = {k: v + 1 for k, v in mem["assign"].items()}


@pytest.mark.parametrize("edit, match", [
    (shift_onto_negative_buffer, "-4096 bytes, not a positive multiple of 64"),
    (lambda m: m["memory"]["assign"].update(v=m["memory"]["assign"]["u"]), "share buffer"),
    (lambda m: m["memory"]["buffers"][0].update(nbytes=1024), "largest value it holds"),
    (lambda m: m["memory"]["buffers"].append({"id": 2, "nbytes": 64}), "holds no value"),
])
def test_unsound_plans_never_run(art, edit, match):
    rewrite_manifest(art, edit)
    fails(art, match)


def test_an_equivalent_plan_runs(art):
    """Buffers renumbered: a different plan, just as sound, runs and agrees."""
    def renumber(m):
        mem = m["memory"]
        mem["buffers"] = mem["buffers"][::-1]
        last = len(mem["buffers"]) - 1
        for i, b in enumerate(mem["buffers"]):
            b["id"] = i
        mem["assign"] = {k: last - v for k, v in mem["assign"].items()}

    rewrite_manifest(art, renumber)
    runs_correctly(art)


def test_buffers_bigger_than_the_machine_are_refused_at_load(art):
    """A 1 TiB output passes the format's bounds but not this machine's memory: refused at
    load, before anything is allocated."""
    if os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >= 1 << 40:
        pytest.skip("a 1 TiB buffer fits in this machine's memory: nothing to refuse")

    def huge(m):
        for info in (m["values"]["y"], m["outputs"][0]):
            info["shape"] = [1 << 20, 1 << 18]

    rewrite_manifest(art, huge)
    fails(art, "more than this machine's")


# -- files: regular ones only, refused before any open ------------------------------------------

def make_fifo(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.mkfifo(path)


def make_dev_zero(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.symlink("/dev/zero", path)


@pytest.mark.parametrize("make", [make_fifo, make_dev_zero])
@pytest.mark.parametrize("where", ["artifact", fmt.WEIGHTS, fmt.MANIFEST, fmt.MANIFEST_DIGEST])
def test_fifos_and_devices_are_refused_unopened(art, tmp_path, make, where):
    target = tmp_path / "x.kiln.tar" if where == "artifact" else art / where
    make(target)
    out = load_in_child(target)
    kind = "a FIFO" if make is make_fifo else "a character device"
    assert out.startswith("refused:") and kind in out, out


def test_a_directory_in_place_of_a_file(art):
    (art / fmt.KERNELS).unlink()
    (art / fmt.KERNELS).mkdir()
    fails(art, "kernels.so is a directory, not a regular file")


def test_a_symlink_to_an_identical_file_is_fine(art, tmp_path):
    copy = tmp_path / "runtime-copy.so"
    (art / fmt.RUNTIME_LIB).rename(copy)
    (art / fmt.RUNTIME_LIB).symlink_to(copy)
    runs_correctly(art)


# -- archives: an uncompressed tar of exactly the artifact's regular files ----------------------

def members_of(art: Path, top: str = "m.kiln/") -> list[tuple[tarfile.TarInfo, bytes | None]]:
    names = [fmt.MANIFEST, fmt.MANIFEST_DIGEST, *fmt.REQUIRED_FILES]
    return [(tarfile.TarInfo(top + n), (art / n).read_bytes()) for n in names]


# campaigns/artifacts.py: its tar writer and member maker serve here too
CAMPAIGN = module_at(ROOT / "campaigns" / "artifacts.py", "artifacts_campaign")


def write_tar(path: Path, members) -> Path:
    return CAMPAIGN.tar_of(members, path, tarfile.DEFAULT_FORMAT)


def special(name: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    return CAMPAIGN.member(name, kind), None


def test_gzip_compressed_archive_is_refused(small_artifact, tmp_path):
    tar = pack(small_artifact, tmp_path / "m.kiln.tar")
    gz = tmp_path / "m.kiln.tar.gz"
    gz.write_bytes(gzip.compress(tar.read_bytes()))
    fails(gz, "gzip-compressed")


@pytest.mark.parametrize("change, match", [
    (lambda ms: ms + [(tarfile.TarInfo("m.kiln/README"), b"hi")], "not a file of a kiln"),
    (lambda ms: ms[:-1], "lacks libtvm_runtime.so"),
    (lambda ms: ms + ms[:1], "manifest.json twice"),
    (lambda ms: ms + [special("m.kiln/pipe", tarfile.FIFOTYPE)], "not a plain file"),
    (lambda ms: ms[:-1] + [special("m.kiln/" + fmt.RUNTIME_LIB, tarfile.GNUTYPE_SPARSE)],
     "not a plain file"),
    (lambda ms: ms + [special("m.kiln/sub", tarfile.DIRTYPE)], "not a plain file"),
    (lambda ms: ms[:3] + [(tarfile.TarInfo("n.kiln/" + i.name.split("/")[1]), d)
                          for i, d in ms[3:]], "several folders"),
])
def test_archives_hold_exactly_the_artifacts_files(art, tmp_path, change, match):
    fails(write_tar(tmp_path / "x.kiln.tar", change(members_of(art))), match)


def test_archive_layouts_that_are_fine(art, tmp_path):
    runs_correctly(write_tar(tmp_path / "flat.kiln.tar", members_of(art, "")))
    runs_correctly(write_tar(tmp_path / "dot.kiln.tar", members_of(art, "./")[::-1]))


def test_sizes_are_checked_before_extraction(art, tmp_path, monkeypatch):
    """A member claiming more than the manifest allows is never extracted: here a weights.npz
    of 300 KB for 576 bytes of constants, and a claimed 8 GiB that is not there."""
    extracted = []
    original = tarfile.TarFile.extractfile

    def spy(self, member):
        extracted.append(Path(member.name).name)
        return original(self, member)

    monkeypatch.setattr(tarfile.TarFile, "extractfile", spy)
    (art / fmt.WEIGHTS).write_bytes((art / fmt.WEIGHTS).read_bytes() + bytes(300_000))
    refresh_checksums(art)
    fails(write_tar(tmp_path / "pad.kiln.tar", members_of(art)),
          "more than the manifest's constants take")
    assert fmt.WEIGHTS not in extracted and fmt.KERNELS not in extracted
    bomb = tarfile.TarInfo("m.kiln/" + fmt.WEIGHTS)
    bomb.size = 8 << 30
    (tmp_path / "bomb.kiln.tar").write_bytes(bomb.tobuf(tarfile.GNU_FORMAT) + bytes(1 << 16))
    fails(tmp_path / "bomb.kiln.tar", "truncated: weights.npz ends past the end")


# -- libraries: their identity, checked before dlopen -------------------------------------------

def test_kernel_library_symbols(kernels_so, small_artifact):
    symbols = defined_symbols(_parse(kernels_so))
    assert "__tvm_ffi_matmul_small" in symbols and "__tvm_ffi_ew_add" in symbols
    assert not any(s.startswith("TVMBackend") for s in symbols)
    runtime = defined_symbols(_parse(small_artifact / fmt.RUNTIME_LIB))
    assert "TVMBackendParallelLaunch" in runtime


def foreign_libraries(art: Path) -> dict[str, Path]:
    import _ctypes

    import tvm_ffi

    return {"tvm runtime": art / fmt.RUNTIME_LIB, "python extension": Path(_ctypes.__file__),
            "tvm_ffi": Path(tvm_ffi.__file__).parent / "lib" / "libtvm_ffi.so",
            "kernels": art / fmt.KERNELS}


@pytest.mark.parametrize("name, source, match", [
    (fmt.KERNELS, "tvm runtime", "defines TVM runtime symbols"),
    (fmt.KERNELS, "python extension", "does not define the kernel"),
    (fmt.RUNTIME_LIB, "tvm_ffi", "does not define TVMBackendParallelLaunch"),
    (fmt.RUNTIME_LIB, "kernels", "does not define TVMBackendParallelLaunch"),
])
def test_a_replaced_library_is_refused_before_dlopen(art, tmp_path, name, source, match):
    """The reported abort: kernels.so replaced by TVM's own runtime (checksums recomputed)
    re-registered TVM's globals inside dlopen."""
    data = foreign_libraries(art)[source].read_bytes()
    (art / name).write_bytes(data)
    refresh_checksums(art)
    out = load_in_child(art)
    assert out.startswith("refused:") and match in out, out


# -- weights.npz: member by member, headers before data -----------------------------------------

def npy(array, version=None) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, version=version)
    return buf.getvalue()


def rewrite_weights(art: Path, members: list[tuple[str, bytes, int]]) -> None:
    with warnings.catch_warnings(), zipfile.ZipFile(art / fmt.WEIGHTS, "w") as zf:
        warnings.simplefilter("ignore")  # zipfile warns of a duplicate name: it is the test
        for name, data, compression in members:
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    refresh_checksums(art)


STORED, DEFLATED = zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED
W, B = model_weights()["w"], model_weights()["b"]
BIG = io.BytesIO()
np.lib.format.write_array_header_1_0(BIG, {"descr": "<f4", "fortran_order": False,
                                           "shape": (1 << 28,)})


@pytest.mark.parametrize("members, match", [
    ([("w.npy", npy(W), DEFLATED), ("b.npy", npy(B), STORED)], "'w' in weights.npz is comp"),
    ([("w.npy", BIG.getvalue() + bytes(1 << 20), DEFLATED), ("b.npy", npy(B), STORED)],
     "'w' in weights.npz is compressed"),
    ([("w.npy", BIG.getvalue(), STORED), ("b.npy", npy(B), STORED)], r"float32\[268435456\]"),
    ([("w.npy", npy(np.asfortranarray(W)), STORED), ("b.npy", npy(B), STORED)], "Fortran"),
    ([("w.npy", npy(W) + b"\0" * 8, STORED), ("b.npy", npy(B), STORED)],
     "holds more than 512 bytes of data"),
    ([("w.npy", npy(W)[:-4], STORED), ("b.npy", npy(B), STORED)],
     "holds only 508 of 512 bytes of data"),
    ([("w.npy", npy(W.astype(">f4")), STORED), ("b.npy", npy(B), STORED)], r">f4\[8, 16\]"),
    ([("w.npy", npy(W), STORED), ("b.npy", npy(B), STORED), ("x.npy", npy(B), STORED)],
     "holds 'x.npy'"),
    ([("w.npy", npy(W), STORED), ("b.npy", npy(B), STORED), ("b.npy", npy(B), STORED)],
     "holds 'b.npy'"),
    ([("w.npy", npy(W), STORED)], "lacks the constant 'b'"),
])
def test_weights_are_checked_before_they_are_read(art, members, match):
    rewrite_weights(art, members)
    fails(art, match)


def test_npy_version_2_is_fine(art):
    rewrite_weights(art, [("b.npy", npy(B, (2, 0)), STORED), ("w.npy", npy(W), STORED)])
    runs_correctly(art)


# -- signatures: what checksums cannot catch ----------------------------------------------------

@pytest.fixture
def signed(art):
    sign_artifact(art, KEY)
    return art


def test_a_signed_artifact_loads_with_its_key_and_without(signed, tmp_path):
    runs_correctly(signed, key=KEY)
    runs_correctly(signed)
    runs_correctly(pack(signed, tmp_path / "s.kiln.tar"), key=KEY)


def test_a_deliberate_edit_passes_the_digest_but_not_the_signature(signed):
    """Changing a weight and recomputing every checksum is invisible without a key."""
    with np.load(signed / fmt.WEIGHTS) as npz:
        w, b = npz["w"].copy(), npz["b"]
    w[0, 0] += 1
    rewrite_weights(signed, [("w.npy", npy(w), STORED), ("b.npy", npy(b), STORED)])
    load(signed)  # loads: checksums catch damage, not malice
    fails(signed, "not signed with this key", key=KEY)


def test_wrong_or_missing_signatures(signed):
    fails(signed, "not signed with this key", key=b"another key, 16+ bytes")
    (signed / fmt.SIGNATURE).unlink()
    fails(signed, "is not signed", key=KEY)


def test_keys_and_signing_need_care(art, tmp_path):
    with pytest.raises(ArtifactError, match="at least 16 bytes"):
        sign_artifact(art, b"short")
    (art / fmt.WEIGHTS).write_bytes(b"damaged")
    with pytest.raises(ArtifactError, match="refusing to sign"):
        sign_artifact(art, KEY)
    short = tmp_path / "short.key"
    short.write_bytes(b"abc")
    with pytest.raises(ArtifactError, match="at least 16 bytes"):
        fmt.read_key(short)


def test_cli_key_file(signed, tmp_path, capsys):
    good, bad = tmp_path / "good.key", tmp_path / "bad.key"
    good.write_bytes(KEY)
    bad.write_bytes(b"x" * 32)
    assert kiln_main(["run", str(signed), "--key-file", str(good)]) == 0
    assert kiln_main(["run", str(signed), "--key-file", str(bad)]) == 2
    assert "not signed with this key" in capsys.readouterr().err


# -- the campaign -------------------------------------------------------------------------------

def test_a_short_campaign(tmp_path):
    """20 cases of campaigns/artifacts.py (one per family and more): no crash, hang, raw
    exception, wrong output or missed refusal."""
    pytest.importorskip("tvm")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "campaigns" / "artifacts.py"), "--count", "20",
         "--jobs", "2", "--seed", "3", "--quiet"],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = result.stdout.splitlines()[0]
    assert summary.startswith("20 artifact cases") and "crash 0, hang 0" in summary, summary
