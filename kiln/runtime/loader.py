"""Loading an artifact: find it, check it, then (only then) load its native code.

Checks, in order, each failing with an ArtifactError that says what is wrong and what to do:
the path is an artifact directory or an uncompressed .kiln.tar of exactly the artifact's
regular files (never a FIFO or a device: those are refused before any open); manifest.json
matches manifest.sha256 (and manifest.sig, when the caller holds a key), is strict JSON, of
the right format and version, with every field of the right type and bounds and a sound
memory plan; the target fits this machine (kind "llvm" and the CPU features it needs); every
file matches its SHA-256. The checksums and the ELF checks of each library (``elf``: complete,
for this CPU, the right library for its role) come before any ``dlopen``: loading a truncated
or foreign .so can crash the process, these checks cannot.
"""

from __future__ import annotations

import ctypes
import os
import platform
import stat
import tarfile
import tempfile
import threading
import zipfile
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np

from kiln.errors import ArtifactError, KilnError
from kiln.runtime import format as fmt
from kiln.runtime.dynamic import DynamicModel
from kiln.runtime.elf import check_kernels_library, check_runtime_library
from kiln.runtime.executor import Model
from kiln.runtime.gpu import GpuModel, device_module, load_cuda_runtime
from kiln.runtime.sizes import is_symbolic
from kiln.runtime.threads import set_thread_defaults

#: the files an archive may hold (a top folder aside), each with the most bytes it may take
#: before the manifest is read (the weights are then bounded by the manifest's constants)
_ARCHIVE_LIMITS = {fmt.MANIFEST: fmt.MAX_MANIFEST_BYTES, fmt.MANIFEST_DIGEST: fmt.MAX_DIGEST_BYTES,
                   fmt.SIGNATURE: fmt.MAX_DIGEST_BYTES, fmt.KERNELS: fmt.MAX_LIBRARY_BYTES,
                   fmt.RUNTIME_LIB: fmt.MAX_LIBRARY_BYTES, fmt.WEIGHTS: 1 << 62,
                   fmt.DEVICE_CODE: fmt.MAX_LIBRARY_BYTES,
                   fmt.CUDA_RUNTIME_LIB: fmt.MAX_LIBRARY_BYTES}
#: leading bytes of compressed or foreign archives (refused with a message that says so)
_MAGIC = {b"\x1f\x8b": "gzip-compressed", b"BZh": "bzip2-compressed",
          b"\xfd7zXZ\x00": "xz-compressed", b"\x28\xb5\x2f\xfd": "zstd-compressed",
          b"PK\x03\x04": "a zip archive, not a tar"}


def load(path: str | os.PathLike, key: bytes | None = None) -> Model | GpuModel:
    """Load a compiled artifact (a ``NAME.kiln`` directory or ``NAME.kiln.tar``) to run it.

    With ``key`` (the bytes of the key the artifact was signed with, see ``sign_artifact``),
    an artifact whose manifest.sig does not match is refused right after its digest is
    checked, before its manifest is parsed or any other file read.
    """
    if key is not None:
        fmt.check_key(key)
    path = Path(path)
    if _artifact_kind(path) == "directory":
        return _load_dir(path, path, key)
    with tempfile.TemporaryDirectory(prefix="kiln-") as tmp:
        _extract(path, Path(tmp), key)
        # Once dlopen'ed, the library stays mapped after its file is deleted (POSIX).
        return _load_dir(Path(tmp), path, key)


def _artifact_kind(path: Path) -> str:
    """"directory" or "archive"; anything else (a FIFO, a device) is refused unopened."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ArtifactError(f"no artifact at {path}: compile one with `kiln compile`") from None
    except OSError as e:
        raise ArtifactError(f"cannot read {path}: {e}") from None
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISREG(mode):
        return "archive"
    raise ArtifactError(f"{path} is {fmt.file_kind(mode)}, not a kiln artifact: expected a "
                        "NAME.kiln directory or a NAME.kiln.tar archive made by `kiln compile`")


def read_manifest(folder: Path, shown: Path | None = None,
                  key: bytes | None = None) -> dict[str, Any]:
    """Read ``folder/manifest.json``, check it against manifest.sha256 (and manifest.sig when
    ``key`` is given), parse and validate it (no file checks, no loading)."""
    shown = shown or folder
    raw = _read_small(folder, fmt.MANIFEST, fmt.MAX_MANIFEST_BYTES, shown)
    if raw is None:
        raise ArtifactError(f"{shown} has no {fmt.MANIFEST}: it is not a kiln artifact "
                            "(or an incomplete one); compile it again with `kiln compile`")
    sealed = _read_small(folder, fmt.MANIFEST_DIGEST, fmt.MAX_DIGEST_BYTES, shown)
    if sealed is None:
        _explain_missing_digest(raw, shown)
    digest = fmt.check_digest(raw, sealed, str(shown))
    if key is not None:
        signature = _read_small(folder, fmt.SIGNATURE, fmt.MAX_DIGEST_BYTES, shown)
        fmt.check_signature(key, digest, signature, str(shown))
    manifest = fmt.parse_manifest(raw, str(shown))
    fmt.validate_manifest(manifest)
    return manifest


def _read_small(folder: Path, name: str, limit: int, shown: Path) -> bytes | None:
    """The bytes of an artifact's small file, or None where it does not exist."""
    try:
        return fmt.read_limited(folder / name, limit)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ArtifactError(f"cannot read {shown}/{name}: {e}") from None


def _explain_missing_digest(raw: bytes, shown: Path) -> None:
    """No manifest.sha256: an artifact of an older format (say so), else an incomplete one."""
    fmt.check_format(fmt.parse_manifest(raw, str(shown)))
    raise ArtifactError(f"{shown} has no {fmt.MANIFEST_DIGEST}, which covers its manifest: the "
                        f"artifact is incomplete; {fmt.REBUILD_HINT}")


def _load_dir(folder: Path, shown: Path, key: bytes | None) -> Model | GpuModel:
    manifest = read_manifest(folder, shown, key)
    notes = check_host(manifest)
    gpu = manifest["target"]["kind"] == "cuda"
    if not gpu and not is_symbolic(manifest):  # (symbolic: checked per call size)
        _check_memory_needs(manifest, shown)
    _check_files(folder, manifest, shown)
    check_runtime_library(folder / fmt.RUNTIME_LIB)
    check_kernels_library(folder / fmt.KERNELS, [k["func"] for k in manifest["kernels"]] + [
        k["func"] for v in manifest.get("variants", []) for k in v["kernels"]])
    constants = _read_weights(folder / fmt.WEIGHTS, manifest)
    notes += _ensure_thread_pool(folder / fmt.RUNTIME_LIB)
    notes += _version_notes(manifest)
    if gpu:
        load_cuda_runtime(folder / fmt.CUDA_RUNTIME_LIB)
    library = _load_library(folder / fmt.KERNELS, shown)
    try:
        if gpu:
            import tvm_ffi

            code = fmt.read_limited(folder / fmt.DEVICE_CODE, fmt.MAX_LIBRARY_BYTES)
            tvm_ffi.get_global_func("ffi.ModuleImportModule")(library, device_module(code))
            return GpuModel(manifest, library, constants, notes)
        if is_symbolic(manifest):
            return DynamicModel(manifest, library, constants, notes)
        return Model(manifest, library, constants, notes)
    except MemoryError:
        raise ArtifactError(f"{shown} needs more memory for its buffers than this process "
                            "can allocate") from None


def check_host(manifest: dict[str, Any]) -> list[str]:
    """Check that this machine can run the artifact's target; return notes on skipped checks."""
    kind = manifest["target"]["kind"]
    if kind == "cuda":
        if not _has_nvidia_gpu():
            raise ArtifactError("the artifact was built for a CUDA GPU and this machine has "
                                "none: rebuild it for the CPU with `kiln compile` "
                                "(target llvm)")
        return []
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
    for name in fmt.files_of(manifest):
        expected = manifest["files"][name]
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
                f"{actual[:16]}..., the manifest says {expected[:16]}...): {fmt.REBUILD_HINT}"
            )


def _check_memory_needs(manifest: dict[str, Any], shown: Path) -> None:
    """Refuse buffers bigger than this machine's memory (the manifest's shapes say how big)."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return  # no sysconf: the allocation itself will say
    if physical <= 0:
        return
    values = manifest["values"]
    io = {s["name"] for s in manifest["inputs"] + manifest["outputs"]}
    needed = manifest["memory"]["peak_bytes"] + sum(fmt.value_nbytes(values[n]) for n in io)
    if needed > physical:
        raise ArtifactError(f"{shown} needs {needed} bytes for its buffers, more than this "
                            f"machine's {physical} bytes of memory; its manifest is damaged, "
                            f"or it is built for a bigger machine: {fmt.REBUILD_HINT}")


def _read_weights(path: Path, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    """The constants from weights.npz: uncompressed .npy members, one per constant, each
    header checked against the manifest before its data is read (no pickles, no bombs)."""
    try:
        with fmt.open_regular(path) as f, zipfile.ZipFile(f) as npz:
            return _weights_from_zip(npz, manifest)
    except KilnError:
        raise
    except Exception as e:  # zipfile and numpy's header parser raise many kinds on bad bytes
        raise ArtifactError(f"cannot read {fmt.WEIGHTS}: {e}; {fmt.REBUILD_HINT}") from None


def _weights_from_zip(npz: zipfile.ZipFile, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    members = {name + ".npy": name for name in manifest["constants"]}
    arrays: dict[str, np.ndarray] = {}
    for member in npz.infolist():
        name = members.get(member.filename)
        if name is None or name in arrays:
            raise ArtifactError(f"{fmt.WEIGHTS} holds {member.filename[:80]!r}, which is not "
                                f"(or twice) a constant of the manifest; {fmt.REBUILD_HINT}")
        arrays[name] = _read_npy(npz, member, name, manifest["values"][name])
    for name in manifest["constants"]:
        if name not in arrays:
            raise ArtifactError(f"{fmt.WEIGHTS} lacks the constant {name!r}; "
                                f"{fmt.REBUILD_HINT}")
    return arrays


_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}


def _read_npy(npz: zipfile.ZipFile, member: zipfile.ZipInfo, name: str,
              info: dict[str, Any]) -> np.ndarray:
    nbytes = fmt.value_nbytes(info)
    if member.compress_type != zipfile.ZIP_STORED \
            or member.file_size > nbytes + fmt.MAX_NPY_HEADER_BYTES:
        raise ArtifactError(f"constant {name!r} in {fmt.WEIGHTS} is compressed or larger than "
                            f"its {info['dtype']}{info['shape']}; {fmt.REBUILD_HINT}")
    with npz.open(member) as f:
        reader = _NPY_HEADER_READERS.get(np.lib.format.read_magic(f))
        if reader is None:
            raise ArtifactError(f"constant {name!r} in {fmt.WEIGHTS} has an unknown .npy "
                                f"version; {fmt.REBUILD_HINT}")
        shape, fortran, dtype = reader(f)
        if str(dtype) != fmt.storage_dtype(info["dtype"]) or list(shape) != info["shape"] \
                or dtype.hasobject:
            raise ArtifactError(f"constant {name!r} in {fmt.WEIGHTS} is {dtype}{list(shape)}, "
                                f"the manifest says {info['dtype']}{info['shape']}; "
                                f"{fmt.REBUILD_HINT}")
        if fortran and len(shape) > 1:
            raise ArtifactError(f"constant {name!r} in {fmt.WEIGHTS} is in Fortran order; "
                                f"{fmt.REBUILD_HINT}")
        data = f.read(nbytes + 1)
    if len(data) != nbytes:
        held = "more than" if len(data) > nbytes else f"only {len(data)} of"
        raise ArtifactError(f"constant {name!r} in {fmt.WEIGHTS} holds {held} {nbytes} bytes "
                            f"of data; {fmt.REBUILD_HINT}")
    return np.frombuffer(data, dtype).reshape(shape)


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


def _extract(archive: Path, dest: Path, key: bytes | None) -> None:
    """Extract a .kiln.tar into ``dest``: exactly the artifact's files, regular ones only.

    Members must be named ``FILE`` or ``TOP/FILE`` (one top folder) for a FILE of the format;
    anything else (absolute names, ``..``, links, devices, sparse files, extra files, a
    compressed tar) is refused before a byte is extracted. The manifest is extracted and
    checked first; every other member's size is then checked against its bound (the weights
    against the manifest's constants) before it is copied out, by hand, never through
    ``tarfile.extract``. An uncompressed, non-sparse tar never unpacks to more than its size.
    """
    try:
        with fmt.open_regular(archive) as f:
            _refuse_foreign(f, archive)
            with tarfile.open(fileobj=f, mode="r:") as tar:
                members = _archive_members(tar, archive, os.fstat(f.fileno()).st_size)
                _copy_members(tar, members, (fmt.MANIFEST, fmt.MANIFEST_DIGEST, fmt.SIGNATURE),
                              dest)
                manifest = read_manifest(dest, archive, key)
                for name in fmt.files_of(manifest):
                    if name not in members:
                        raise ArtifactError(f"{archive} lacks {name}: the artifact is "
                                            f"incomplete; {fmt.REBUILD_HINT}")
                if members[fmt.WEIGHTS].size > fmt.weights_bound(manifest):
                    raise ArtifactError(f"{archive} holds a {fmt.WEIGHTS} of "
                                        f"{members[fmt.WEIGHTS].size} bytes, more than the "
                                        f"manifest's constants take; {fmt.REBUILD_HINT}")
                _copy_members(tar, members, fmt.files_of(manifest), dest)
    except KilnError:
        raise
    except tarfile.ReadError as e:
        raise ArtifactError(f"{archive} is not a kiln artifact ({e}): expected a NAME.kiln "
                            "directory or an uncompressed NAME.kiln.tar made by `kiln compile`"
                            ) from None
    except Exception as e:  # tarfile raises many kinds (EOFError, ValueError...) on bad bytes
        raise ArtifactError(f"cannot read the archive {archive}: {e}") from None


def _refuse_foreign(f: IO[bytes], archive: Path) -> None:
    head = f.read(8)
    f.seek(0)
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            raise ArtifactError(f"{archive} is {what}: a kiln artifact archive is an "
                                "uncompressed tar (`kiln compile -o NAME.kiln.tar`, or "
                                "`tar cf`); unpack it, or repack it without compression")


def _archive_members(tar: tarfile.TarFile, archive: Path,
                     size: int) -> dict[str, tarfile.TarInfo]:
    """Read the members' headers; return {file name: member}, refusing anything unsafe."""
    members: dict[str, tarfile.TarInfo] = {}
    folders: set[tuple[str, ...]] = set()
    for count, member in enumerate(iter(tar.next, None)):
        if count > len(_ARCHIVE_LIMITS):  # every file and a top folder
            raise ArtifactError(f"{archive} holds more members than a kiln artifact has")
        parts = PurePosixPath(member.name).parts  # "./x" is ("x",), "." is ()
        if member.isdir() and len(parts) <= 1:
            folders.add(parts)
        elif member.name.startswith("/") or not parts or len(parts) > 2 \
                or not all(fmt.plain_name(p) for p in parts):
            raise ArtifactError(f"{archive} holds the unsafe member {member.name[:80]!r}; "
                                "it is not a kiln artifact")
        elif member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            raise ArtifactError(f"{archive} holds {member.name[:80]!r}, which is not a "
                                "plain file; it is not a kiln artifact")
        else:
            _check_member(member, parts[-1], members, archive, size)
            members[parts[-1]] = member
            folders.add(parts[:-1])
        if len(folders) > 1:
            raise ArtifactError(f"{archive} holds several folders; it is not a kiln artifact")
    return members


def _check_member(member: tarfile.TarInfo, name: str, members: dict[str, tarfile.TarInfo],
                  archive: Path, size: int) -> None:
    limit = _ARCHIVE_LIMITS.get(name)
    if limit is None:
        raise ArtifactError(f"{archive} holds {member.name[:80]!r}, which is not a file of a "
                            "kiln artifact")
    if name in members:
        raise ArtifactError(f"{archive} holds {name} twice")
    if member.size > limit:
        raise ArtifactError(f"{archive} holds a {name} of {member.size} bytes, more than the "
                            f"{limit} it may take; the archive is damaged or not an artifact")
    if member.offset_data + member.size > size:
        raise ArtifactError(f"{archive} is truncated: {name} ends past the end of the file; "
                            f"{fmt.REBUILD_HINT}")


def _copy_members(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo],
                  names: tuple[str, ...], dest: Path) -> None:
    for name in names:
        if name not in members:
            continue
        source = tar.extractfile(members[name])
        with source, open(dest / name, "xb") as out:
            while chunk := source.read(1 << 20):
                out.write(chunk)
