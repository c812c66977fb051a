"""Loading an artifact: find it, check it, then (only then) load its native code.

Checks, in order, each failing with an ArtifactError that says what is wrong and what to do:
the path is an artifact directory or a .kiln.tar; ``manifest.json`` is present, valid JSON, of
the right format and version and internally consistent; the target fits this machine (kind
"llvm" and the CPU features it needs, or a GPU for "cuda"); every file matches its SHA-256.
The checksums and a structural check of each library (``elf``) come before any ``dlopen``:
loading a truncated or corrupt .so can crash the process, these checks cannot.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import tarfile
import tempfile
import threading
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from kiln.errors import ArtifactError
from kiln.runtime import format as fmt
from kiln.runtime.elf import check_elf
from kiln.runtime.executor import Model
from kiln.runtime.planner import check_plan
from kiln.runtime.threads import set_thread_defaults


def load(path: str | os.PathLike) -> Model:
    """Load a compiled artifact (a ``NAME.kiln`` directory or ``NAME.kiln.tar``) to run it."""
    path = Path(path)
    if path.is_dir():
        return _load_dir(path, path)
    if not path.exists():
        raise ArtifactError(f"no artifact at {path}: compile one with `kiln compile`")
    if not tarfile.is_tarfile(path):
        raise ArtifactError(f"{path} is not a kiln artifact: expected a NAME.kiln directory "
                            "or a NAME.kiln.tar archive made by `kiln compile`")
    with tempfile.TemporaryDirectory(prefix="kiln-") as tmp:
        _extract(path, Path(tmp))
        # Once dlopen'ed, the library stays mapped after its file is deleted (POSIX).
        return _load_dir(Path(tmp), path)


def read_manifest(folder: Path, shown: Path | None = None) -> dict[str, Any]:
    """Read, parse and validate ``folder/manifest.json`` (no file checks, no loading)."""
    shown = shown or folder
    try:
        text = (folder / fmt.MANIFEST).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(f"{shown} has no {fmt.MANIFEST}: it is not a kiln artifact "
                            "(or an incomplete one); compile it again with `kiln compile`"
                            ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ArtifactError(f"cannot read {shown}/{fmt.MANIFEST}: {e}") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{shown}/{fmt.MANIFEST} is not valid JSON ({e}); the artifact "
                            f"is corrupt: {fmt.REBUILD_HINT}") from None
    fmt.validate_manifest(manifest)
    keep = ({s["name"] for s in manifest["inputs"] + manifest["outputs"]}
            | set(manifest["constants"]))
    try:
        check_plan(manifest["kernels"], manifest["values"], keep, manifest["memory"])
    except ArtifactError as e:
        raise ArtifactError(f"{shown}: {e}; {fmt.REBUILD_HINT}") from None
    return manifest


def _load_dir(folder: Path, shown: Path) -> Model:
    manifest = read_manifest(folder, shown)
    notes = check_host(manifest)
    _check_files(folder, manifest, shown)
    check_elf(folder / fmt.RUNTIME_LIB)
    check_elf(folder / fmt.KERNELS)
    constants = _read_weights(folder / fmt.WEIGHTS, manifest)
    notes += _ensure_thread_pool(folder / fmt.RUNTIME_LIB)
    notes += _version_notes(manifest)
    return Model(manifest, _load_library(folder / fmt.KERNELS, shown), constants, notes)


def check_host(manifest: dict[str, Any]) -> list[str]:
    """Check that this machine can run the artifact's target; return notes on skipped checks."""
    kind = manifest["target"]["kind"]
    if kind == "cuda":
        if not _has_nvidia_gpu():
            raise ArtifactError("the artifact was built for a CUDA GPU and this machine has "
                                "none: rebuild it for the CPU with `kiln compile` "
                                "(target llvm)")
        raise ArtifactError("CUDA artifacts cannot run in kiln's CPU runtime yet: rebuild "
                            "it for the CPU with `kiln compile` (target llvm)")
    needed = manifest.get("cpu_features", [])
    if not needed:
        return []
    system, machine = platform.system(), platform.machine().lower()
    if system != "Linux" or machine not in ("x86_64", "amd64"):
        return [f"CPU feature check skipped on {system}/{machine}"]
    flags = cpu_flags()
    if flags is None:
        return ["CPU feature check skipped: /proc/cpuinfo has no flags"]
    missing = [f for f in needed if f not in flags]
    if missing:
        raise ArtifactError(
            f"this CPU lacks {', '.join(missing)}, which the artifact's code needs (it was "
            f"built for {manifest['target'].get('mcpu', 'another CPU')}): {fmt.REBUILD_HINT}"
        )
    return []


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str] | None:
    """This CPU's feature flags from /proc/cpuinfo, or None where there are none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key.strip() == "flags":
                    return frozenset(rest.split())
    except OSError:
        pass
    return None


def _has_nvidia_gpu() -> bool:
    dev = Path("/dev")
    return (dev / "nvidiactl").exists() or any(dev.glob("nvidia[0-9]*"))


def _check_files(folder: Path, manifest: dict[str, Any], shown: Path) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"{shown}/{fmt.MANIFEST} lists no file checksums; "
                            f"{fmt.REBUILD_HINT}")
    for name in fmt.REQUIRED_FILES:
        if name not in files:
            raise ArtifactError(f"{shown}/{fmt.MANIFEST} has no checksum for {name}; "
                                f"{fmt.REBUILD_HINT}")
    for name, expected in files.items():
        if not fmt.plain_name(name):
            raise ArtifactError(f"{shown}/{fmt.MANIFEST} lists the file {name!r}, which is "
                                "not a plain file name; the artifact is not trustworthy")
        try:
            actual = fmt.sha256_file(folder / name)
        except FileNotFoundError:
            raise ArtifactError(f"{shown} lacks {name}: the artifact is incomplete; "
                                f"{fmt.REBUILD_HINT}") from None
        except OSError as e:
            raise ArtifactError(f"cannot read {shown}/{name}: {e}") from None
        if actual != expected:
            raise ArtifactError(
                f"{shown}/{name} is corrupt or was modified after the build (SHA-256 "
                f"{actual[:16]}..., the manifest says {str(expected)[:16]}...): "
                f"{fmt.REBUILD_HINT}"
            )


def _read_weights(path: Path, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files if name in manifest["constants"]}
    except Exception as e:  # zipfile, format and pickle errors alike
        raise ArtifactError(f"cannot read {fmt.WEIGHTS}: {e}; {fmt.REBUILD_HINT}") from None
    for name in manifest["constants"]:
        info, array = manifest["values"][name], arrays.get(name)
        if array is None:
            raise ArtifactError(f"{fmt.WEIGHTS} lacks the constant {name!r}; "
                                f"{fmt.REBUILD_HINT}")
        if str(array.dtype) != info["dtype"] or list(array.shape) != info["shape"]:
            raise ArtifactError(f"constant {name!r} in {fmt.WEIGHTS} is {array.dtype}"
                                f"{list(array.shape)}, the manifest says {info['dtype']}"
                                f"{info['shape']}; {fmt.REBUILD_HINT}")
    return arrays


_thread_pool: str | None = None
_thread_pool_lock = threading.Lock()


def _ensure_thread_pool(lib: Path) -> list[str]:
    """Make TVM's thread pool (libtvm_runtime) globally visible before any kernel loads.

    Loaded once per process. If a TVM runtime is already in the process (``import tvm``, or an
    artifact loaded earlier), a second copy must not be loaded: its static initializers would
    re-register TVM's global functions and abort the process. Then its exported symbols serve.
    """
    with _thread_pool_lock:
        return _load_thread_pool(lib)


def _load_thread_pool(lib: Path) -> list[str]:
    global _thread_pool
    if _thread_pool is not None:
        return []
    set_thread_defaults()  # one thread per physical core, unpinned, unless the user chose
    import tvm_ffi

    if tvm_ffi.get_global_func("runtime.NumThreads", allow_missing=True) is not None:
        if not hasattr(ctypes.CDLL(None), "TVMBackendParallelLaunch"):
            raise ArtifactError("a TVM runtime is already loaded in this process without "
                                "global symbols, so kernels cannot reach its thread pool; "
                                "load the artifact in a process that has not loaded TVM")
        _thread_pool = "already loaded"
        return ["using the TVM runtime already loaded in this process"]
    try:
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        raise ArtifactError(f"cannot load {fmt.RUNTIME_LIB}: {e}; {fmt.REBUILD_HINT}"
                            ) from None
    _thread_pool = str(lib)
    return []


def _version_notes(manifest: dict[str, Any]) -> list[str]:
    import tvm_ffi

    built = manifest.get("build", {}).get("apache-tvm-ffi")
    if built and built != tvm_ffi.__version__:
        return [f"built with apache-tvm-ffi {built}, running with {tvm_ffi.__version__}"]
    return []


def _load_library(lib: Path, shown: Path):
    import tvm_ffi

    try:
        return tvm_ffi.load_module(str(lib))
    except Exception as e:
        raise ArtifactError(f"cannot load {shown}/{fmt.KERNELS}: {e}; it may be built for "
                            f"another platform: {fmt.REBUILD_HINT}") from None


def _extract(archive: Path, dest: Path) -> None:
    """Extract a .kiln.tar into ``dest``, refusing anything but plain files.

    Members must be regular files named ``FILE`` or ``TOP/FILE`` (one top folder); absolute
    names, ``..``, links and devices are rejected. Members are copied by hand, never through
    ``tarfile.extract``.
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            tops = set()
            for member in tar.getmembers():
                parts = PurePosixPath(member.name).parts
                if member.name.startswith(("/", "\\")) or not parts or len(parts) > 2 \
                        or not all(fmt.plain_name(p) for p in parts):
                    raise ArtifactError(f"{archive} holds the unsafe member {member.name!r}; "
                                        "it is not a kiln artifact")
                if member.isdir() and len(parts) == 1:
                    tops.add(parts[0])
                    continue
                if not member.isfile():
                    raise ArtifactError(f"{archive} holds {member.name!r}, which is not a "
                                        "plain file; it is not a kiln artifact")
                if len(parts) == 2:
                    tops.add(parts[0])
                if len(tops) > 1:
                    raise ArtifactError(f"{archive} holds several folders; it is not a kiln "
                                        "artifact")
                source = tar.extractfile(member)
                with source, open(dest / parts[-1], "xb") as out:
                    while chunk := source.read(1 << 20):
                        out.write(chunk)
    except FileExistsError as e:
        raise ArtifactError(f"{archive} holds {Path(e.filename).name} twice") from None
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ArtifactError(f"cannot read the archive {archive}: {e}") from None
