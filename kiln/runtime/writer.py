"""Writing artifacts: ``write_artifact`` (a NAME.kiln directory), ``pack`` (one .kiln.tar) and
``sign_artifact`` (a manifest.sig for users who load with a key).

All write atomically: everything goes into a temporary name beside the target, which is
renamed into place only once complete. On any exception the temporary is removed and an
artifact already at the target is left as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from kiln import __version__ as kiln_version
from kiln.errors import ArtifactError
from kiln.runtime import format as fmt
from kiln.runtime.planner import plan_memory


def write_artifact(
    path: str | os.PathLike,
    manifest: dict[str, Any],
    library_path: str | os.PathLike,
    weights: dict[str, np.ndarray],
    runtime_lib_path: str | os.PathLike | None = None,
    sign_key: bytes | None = None,
    target_files: Mapping[str, bytes | str | os.PathLike] | None = None,
) -> Path:
    """Write the artifact directory ``path`` and return it.

    ``manifest`` is the contract's manifest without "files" (computed here); "format",
    "format_version", "kiln_version", "build" (package versions), "constants" (the names of
    ``weights``) and "memory" (``plan_memory``) are filled in when absent. ``library_path`` is
    the exported kernel library, ``weights`` the constants, ``runtime_lib_path`` TVM's
    ``libtvm_runtime.so`` (default: the installed TVM's, see ``buildtime``),
    ``target_files`` the files of the target kind (``fmt.TARGET_FILES``: a CUDA artifact's
    device code and CUDA runtime library), as bytes or paths. The caller's manifest is not
    modified. Raises ArtifactError for an inconsistent manifest or weights.
    """
    path = Path(path)
    if runtime_lib_path is None:
        from kiln.runtime.buildtime import find_tvm_runtime_library

        runtime_lib_path = find_tvm_runtime_library()
    m = _complete_manifest(manifest, weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{path.name}.tmp-", dir=path.parent))
    try:
        shutil.copyfile(library_path, tmp / fmt.KERNELS)
        _write_npz(tmp / fmt.WEIGHTS, {name: _stored(weights[name]) for name in m["constants"]})
        shutil.copyfile(runtime_lib_path, tmp / fmt.RUNTIME_LIB)
        extra = dict(target_files or {})
        if sorted(extra) != sorted(fmt.files_of(m)[len(fmt.REQUIRED_FILES):]):
            raise ArtifactError(f"a {m['target'].get('kind')} artifact carries "
                                f"{list(fmt.files_of(m))}; got the extra files {sorted(extra)}")
        for name, content in extra.items():
            if isinstance(content, bytes):
                (tmp / name).write_bytes(content)
            else:
                shutil.copyfile(content, tmp / name)
        m["files"] = {name: fmt.sha256_file(tmp / name) for name in fmt.files_of(m)}
        fmt.validate_manifest(m)
        raw = (json.dumps(m, indent=1) + "\n").encode()
        fmt.parse_manifest(raw, str(path))  # what the loader will parse, limits included
        (tmp / fmt.MANIFEST).write_bytes(raw)
        (tmp / fmt.MANIFEST_DIGEST).write_text(fmt.digest_text(raw))
        if sign_key is not None:
            (tmp / fmt.SIGNATURE).write_text(fmt.signature_text(sign_key, _digest(raw)))
        for name in os.listdir(tmp):
            _fsync(tmp / name)
        _replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def copy_artifact(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy the artifact directory ``src`` to ``dst`` atomically, replacing an old artifact
    there (never a folder that is not one)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{dst.name}.tmp-", dir=dst.parent))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        _replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def sign_artifact(artifact_dir: str | os.PathLike, key: bytes) -> Path:
    """Sign the artifact directory with ``key``: write manifest.sig, an HMAC-SHA256 of the
    manifest's digest, which ``load(path, key=key)`` verifies. The manifest covers every
    file's checksum, so the signature covers the whole artifact. The artifact is checked
    (manifest, digest, file checksums) before it is signed; returns the path of manifest.sig.
    """
    src = Path(artifact_dir)
    raw = _sealed_manifest(src)
    manifest = fmt.parse_manifest(raw, str(src))
    fmt.validate_manifest(manifest)
    for name, expected in manifest["files"].items():
        try:
            actual = fmt.sha256_file(src / name)
        except OSError as e:
            raise ArtifactError(f"refusing to sign {src}: cannot read {name}: {e}") from None
        if actual != expected:
            raise ArtifactError(f"refusing to sign {src}: {name} does not match its checksum")
    return _write_atomic(src / fmt.SIGNATURE, fmt.signature_text(key, _digest(raw)).encode())


def pack(artifact_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Pack an artifact directory into one uncompressed tar archive; return its path.

    The default ``out`` is ``NAME.kiln.tar`` beside ``NAME.kiln``. Members are manifest.json,
    manifest.sha256, manifest.sig (if signed) and the files the manifest lists, under the top
    folder ``NAME.kiln/`` (so ``tar xf`` recreates the directory): regular files only (a
    symlink's target is packed), with ownership and times zeroed so equal artifacts pack to
    equal bytes. An artifact whose manifest does not match its digest is refused.
    """
    src = Path(artifact_dir)
    manifest = fmt.parse_manifest(_sealed_manifest(src), str(src))
    names = [fmt.MANIFEST, fmt.MANIFEST_DIGEST, *sorted(fmt.files_of(manifest))]
    if (src / fmt.SIGNATURE).exists():
        names.insert(2, fmt.SIGNATURE)
    dest = Path(out) if out is not None else src.with_name(src.name + ".tar")
    fd, tmp = tempfile.mkstemp(prefix=f"{dest.name}.tmp-", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
            for name in names:
                _add_regular(tar, src / name, f"{src.name}/{name}")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def _sealed_manifest(src: Path) -> bytes:
    """The bytes of ``src``'s manifest, checked against its manifest.sha256."""
    try:
        raw = fmt.read_limited(src / fmt.MANIFEST, fmt.MAX_MANIFEST_BYTES)
        sealed = fmt.read_limited(src / fmt.MANIFEST_DIGEST, fmt.MAX_DIGEST_BYTES)
    except OSError as e:
        raise ArtifactError(f"{src} is not a complete artifact directory: {e}") from None
    fmt.check_digest(raw, sealed, str(src))
    return raw


def _digest(raw: bytes) -> str:
    return fmt.digest_text(raw)[:64]


def _add_regular(tar: tarfile.TarFile, path: Path, arcname: str) -> None:
    """Add a regular file (a symlink's target) as a plain member with owners and times
    zeroed, so equal artifacts pack to equal bytes and the loader accepts every member."""
    with fmt.open_regular(path) as f:
        info = tarfile.TarInfo(arcname)
        info.size, info.mode = os.fstat(f.fileno()).st_size, 0o644
        tar.addfile(info, f)


def _write_atomic(path: Path, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _complete_manifest(manifest: dict[str, Any], weights: dict[str, np.ndarray]) -> dict:
    try:  # a deep copy that also proves the manifest is plain JSON
        m = json.loads(json.dumps(manifest, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"the manifest is not JSON-serializable: {e}") from e
    m.setdefault("format", fmt.FORMAT_NAME)
    m.setdefault("format_version", fmt.FORMAT_VERSION)
    m.setdefault("kiln_version", kiln_version)
    m.setdefault("cpu_features", [])
    m.setdefault("constants", sorted(weights))
    if "build" not in m:
        from kiln.runtime.buildtime import build_versions

        m["build"] = build_versions()
    m.pop("files", None)
    fixed = {s["name"] for s in m.get("inputs", [])} | set(m["constants"])
    keep = fixed | {s["name"] for s in m.get("outputs", [])}
    if "sizes" in m:
        m.setdefault("memory", {})  # planned per call size when the model runs
    elif "memory" not in m and isinstance(m.get("kernels"), list):
        m["memory"] = plan_memory(m["kernels"], m.get("values", {}), keep)
    fmt.validate_manifest(m, with_files=False)
    if set(weights) != set(m["constants"]):
        raise ArtifactError(f"weights {sorted(weights)} do not match the manifest's constants "
                            f"{sorted(m['constants'])}")
    for name, array in weights.items():
        info = m["values"][name]
        if not isinstance(array, np.ndarray) or str(array.dtype) != info["dtype"] \
                or list(array.shape) != info["shape"]:
            got = (getattr(array, "dtype", type(array).__name__), getattr(array, "shape", None))
            raise ArtifactError(f"weight {name!r} is {got}, but the manifest says "
                                f"{info['dtype']}{info['shape']}")
    return m


def _stored(array: np.ndarray) -> np.ndarray:
    """``array`` as weights.npz holds it: a dtype numpy lacks (ml_dtypes' bfloat16) as its
    bits (``format.STORAGE_DTYPES``)."""
    held = fmt.storage_dtype(array.dtype.name)
    return array.view(held) if held != array.dtype.name else array


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays as an .npz that ``np.load(allow_pickle=False)`` reads.

    This is what ``np.savez`` writes (a zip of .npy members), done by hand because savez's own
    parameters (``file``, ``allow_pickle``) would collide with weights of those names; and
    ``allow_pickle=False`` here guarantees that no pickle ends up in the file.
    """
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, array in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as member:
                # ascontiguousarray makes a 0-d array 1-d: keep scalars as they are
                np.lib.format.write_array(member, np.ascontiguousarray(array) if array.ndim
                                          else np.asarray(array), allow_pickle=False)


def _replace(tmp: Path, path: Path) -> None:
    """Rename the finished directory ``tmp`` to ``path``, replacing an old artifact there."""
    if not path.exists() and not path.is_symlink():
        os.replace(tmp, path)
        return
    if not path.is_dir() or path.is_symlink() or (
            any(path.iterdir()) and not (path / fmt.MANIFEST).is_file()):
        raise ArtifactError(f"refusing to replace {path}: it exists and is not a kiln artifact")
    old = Path(tempfile.mkdtemp(prefix=f"{path.name}.old-", dir=path.parent))
    os.replace(path, old)  # rename(2) may replace the empty directory `old`
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())

