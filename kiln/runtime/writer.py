"""Writing artifacts: ``write_artifact`` (a NAME.kiln directory) and ``pack`` (one .kiln.tar).

Both write atomically: everything goes into a temporary name beside the target, which is
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
from typing import Any

import numpy as np

from kiln import __version__ as kiln_version
from kiln.errors import ArtifactError
from kiln.runtime import format as fmt
from kiln.runtime.planner import check_plan, plan_memory


def write_artifact(
    path: str | os.PathLike,
    manifest: dict[str, Any],
    library_path: str | os.PathLike,
    weights: dict[str, np.ndarray],
    runtime_lib_path: str | os.PathLike | None = None,
) -> Path:
    """Write the artifact directory ``path`` and return it.

    ``manifest`` is the contract's manifest without "files" (computed here); "format",
    "format_version", "kiln_version", "build" (package versions), "constants" (the names of
    ``weights``) and "memory" (``plan_memory``) are filled in when absent. ``library_path`` is
    the exported kernel library, ``weights`` the constants, ``runtime_lib_path`` TVM's
    ``libtvm_runtime.so`` (default: the installed TVM's, see ``buildtime``). The caller's
    manifest is not modified. Raises ArtifactError for an inconsistent manifest or weights.
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
        _write_npz(tmp / fmt.WEIGHTS, {name: weights[name] for name in m["constants"]})
        shutil.copyfile(runtime_lib_path, tmp / fmt.RUNTIME_LIB)
        m["files"] = {name: fmt.sha256_file(tmp / name) for name in fmt.REQUIRED_FILES}
        with open(tmp / fmt.MANIFEST, "w") as f:
            json.dump(m, f, indent=1)
            f.write("\n")
        for name in (*fmt.REQUIRED_FILES, fmt.MANIFEST):
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


def pack(artifact_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Pack an artifact directory into one uncompressed tar archive; return its path.

    The default ``out`` is ``NAME.kiln.tar`` beside ``NAME.kiln``. Members are the manifest and
    the files it lists, under the top folder ``NAME.kiln/`` (so ``tar xf`` recreates the
    directory), with ownership and times zeroed so equal artifacts pack to equal bytes.
    """
    src = Path(artifact_dir)
    if not (src / fmt.MANIFEST).is_file():
        raise ArtifactError(f"{src} is not an artifact directory (no {fmt.MANIFEST})")
    try:
        files = json.loads((src / fmt.MANIFEST).read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"{src}/{fmt.MANIFEST} is unreadable or lists no files: {e}"
                            ) from None
    for name in files:
        if not fmt.plain_name(name):
            raise ArtifactError(f"{src}/{fmt.MANIFEST} lists {name!r}, not a plain file name")
    dest = Path(out) if out is not None else src.with_name(src.name + ".tar")
    fd, tmp = tempfile.mkstemp(prefix=f"{dest.name}.tmp-", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
            for name in (fmt.MANIFEST, *sorted(files)):
                tar.add(src / name, arcname=f"{src.name}/{name}", filter=_normalize)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def _complete_manifest(manifest: dict[str, Any], weights: dict[str, np.ndarray]) -> dict:
    try:  # a deep copy that also proves the manifest is plain JSON
        m = json.loads(json.dumps(manifest))
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
    if "memory" not in m and isinstance(m.get("kernels"), list):
        m["memory"] = plan_memory(m["kernels"], m.get("values", {}), keep)
    fmt.validate_manifest(m)
    check_plan(m["kernels"], m["values"], keep, m["memory"])
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


def _normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info
