"""The artifact format: names, schema constants and manifest validation (docs/artifact.md).

Shared by the writer (build time) and the loader (deploy time), so that a manifest that the
writer accepts is exactly one that the loader accepts. Imports only the standard library and
kiln.errors.

Everything here treats its input as hostile: a manifest is parsed with limits (size, number
digits, no NaN, no duplicate keys, bounded nesting) and every field is checked for type and
bounds before anything else reads it, so that a damaged or tampered manifest is an
ArtifactError and never a raw exception, a huge allocation or a buffer laid over another.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any, BinaryIO

from kiln.errors import ArtifactError

FORMAT_NAME = "kiln-artifact"
#: 2: manifest.sha256 covers manifest.json; "files" lists exactly ``files_of`` the manifest
FORMAT_VERSION = 2

MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest.sha256"
SIGNATURE = "manifest.sig"
KERNELS = "kernels.so"
WEIGHTS = "weights.npz"
RUNTIME_LIB = "libtvm_runtime.so"
#: files every artifact carries besides the manifest (all checksummed in manifest["files"])
REQUIRED_FILES = (KERNELS, WEIGHTS, RUNTIME_LIB)
DEVICE_CODE = "kernels.cuda"  # the GPU kernels: a fat binary and TVM's function table
CUDA_RUNTIME_LIB = "libtvm_runtime_cuda.so"  # TVM's CUDA device API and module loader
#: what an artifact of each target kind carries besides REQUIRED_FILES
TARGET_FILES = {"llvm": (), "cuda": (DEVICE_CODE, CUDA_RUNTIME_LIB)}

#: every buffer handed to generated code is aligned to this many bytes (TVM assumes it)
ALIGNMENT = 64

#: bytes per element of the dtypes the runtime can hold in numpy arrays
DTYPE_SIZES = {
    "bool": 1,
    "int8": 1, "int16": 2, "int32": 4, "int64": 8,
    "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8,
    "float16": 2, "float32": 4, "float64": 8, "bfloat16": 2,
}
#: dtypes numpy lacks: weights.npz stores them as their bits in an unsigned integer array of
#: the same size; graph inputs and outputs are ml_dtypes' arrays; kernels see the real dtype
#: (``executor.tvm_tensor``)
STORAGE_DTYPES = {"bfloat16": "uint16"}


def storage_dtype(dtype: str) -> str:
    """The numpy dtype that holds the bits of kiln dtype ``dtype`` (in weights.npz)."""
    return STORAGE_DTYPES.get(dtype, dtype)


TARGET_KINDS = ("llvm", "cuda")


def files_of(manifest: dict[str, Any]) -> tuple[str, ...]:
    """The files (besides the manifest) that an artifact with ``manifest`` carries."""
    target = manifest.get("target")
    kind = target.get("kind") if isinstance(target, dict) else None
    return REQUIRED_FILES + TARGET_FILES.get(kind, ())

# Limits on what a loader reads before it trusts anything: a manifest is kilobytes to a few
# megabytes; values stay far below int64 so that no size computed from them overflows.
MAX_MANIFEST_BYTES = 64 << 20
MAX_DIGEST_BYTES = 4096
MAX_JSON_INT_DIGITS = 30
MAX_RANK = 32
MAX_VALUE_BYTES = 1 << 40
MAX_FLOPS = 1 << 62
MAX_NAME_CHARS = 4096
#: what an archive member may hold: a library, or one .npy header in weights.npz
MAX_LIBRARY_BYTES = 1 << 30
MAX_NPY_HEADER_BYTES = 1 << 16

_HEX64 = re.compile(r"[0-9a-f]{64}")
_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

REBUILD_HINT = "rebuild the artifact for this machine with `kiln compile`"


def round_up(nbytes: int, multiple: int = ALIGNMENT) -> int:
    """Round ``nbytes`` up to a multiple of ``multiple`` (at least one multiple)."""
    return max(multiple, -(-nbytes // multiple) * multiple)


def value_nbytes(info: dict[str, Any]) -> int:
    """Bytes of a value described by ``{"shape": [...], "dtype": "..."}``."""
    dtype = info["dtype"]
    size = DTYPE_SIZES.get(dtype)
    if size is None:
        raise ArtifactError(f"unknown dtype {dtype!r}")
    return math.prod(info["shape"]) * size


def weights_bound(manifest: dict[str, Any]) -> int:
    """The most bytes a validated manifest's weights.npz can take: every constant's data, and
    room for its .npy header and zip records."""
    constants = manifest["constants"]
    data = sum(value_nbytes(manifest["values"][name]) for name in constants)
    return data + (len(constants) + 1) * (MAX_NPY_HEADER_BYTES + 4 * MAX_NAME_CHARS)


def split_args(kernel: dict[str, Any]) -> tuple[list[str], list[str]]:
    """A kernel's (input names, output names): its args are inputs first, then outputs."""
    args, n_out = kernel["args"], kernel["num_outputs"]
    return list(args[: len(args) - n_out]), list(args[len(args) - n_out:])


def plain_name(name: str) -> bool:
    """True for a file name without any directory part (safe to join to a folder)."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


# -- files: regular files only, read with limits ---------------------------------------------

def open_regular(path: str | Path) -> BinaryIO:
    """Open ``path`` for reading if it is a regular file (symlinks to one are followed).

    A FIFO, a device (/dev/zero), a socket or a directory is an ArtifactError before any
    open: opening a FIFO blocks, and reading /dev/zero never ends. The type is checked again
    on the open descriptor (opened non-blocking), so a file swapped in between cannot slip
    through. FileNotFoundError propagates for the caller to word.
    """
    _require_regular(path, os.stat(path).st_mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        _require_regular(path, os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def _require_regular(path: str | Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise ArtifactError(f"{path} is {file_kind(mode)}, not a regular file; an artifact "
                            "holds regular files only")


def file_kind(mode: int) -> str:
    """What an ``st_mode`` is, in words ("a FIFO", "a directory", ...)."""
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    return next((text for test, text in kinds if test(mode)), "not a regular file")


def read_limited(path: str | Path, limit: int) -> bytes:
    """The bytes of the regular file ``path``, refusing one longer than ``limit``."""
    with open_regular(path) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ArtifactError(f"{path} is larger than {limit} bytes, far more than an artifact's "
                            f"{Path(path).name} holds; the artifact is corrupt: {REBUILD_HINT}")
    return data


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a regular file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open_regular(path) as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# -- the manifest's digest and optional signature --------------------------------------------

def digest_text(manifest_bytes: bytes) -> str:
    """The content of manifest.sha256 for these manifest bytes (``sha256sum`` format)."""
    return f"{hashlib.sha256(manifest_bytes).hexdigest()}  {MANIFEST}\n"


def check_digest(manifest_bytes: bytes, text: bytes, shown: str) -> str:
    """Check manifest.sha256's ``text`` against the manifest; return the hex digest."""
    expected = digest_text(manifest_bytes)
    if not hmac.compare_digest(text, expected.encode()):
        raise ArtifactError(f"{shown}/{MANIFEST} is corrupt or was modified after the build "
                            f"(it does not match {MANIFEST_DIGEST}): {REBUILD_HINT}")
    return expected[:64]


def signature_text(key: bytes, digest: str) -> str:
    """The content of manifest.sig: HMAC-SHA256 of the manifest's digest under ``key``."""
    check_key(key)
    mac = hmac.new(key, f"{FORMAT_NAME} {MANIFEST} sha256 {digest}".encode(), hashlib.sha256)
    return mac.hexdigest() + "\n"


def check_signature(key: bytes, digest: str, text: bytes | None, shown: str) -> None:
    """Check manifest.sig (``None`` when absent) against the key the user holds."""
    if text is None:
        raise ArtifactError(f"{shown} is not signed (no {SIGNATURE}), but a key was given: "
                            "load only artifacts signed with your key")
    if not hmac.compare_digest(text, signature_text(key, digest).encode()):
        raise ArtifactError(f"{shown} is not signed with this key (its {SIGNATURE} does not "
                            "match): it was modified after signing or signed by someone else; "
                            "do not load it")


def check_key(key: bytes) -> None:
    """Refuse a key that is not bytes, or too short to be a secret."""
    if not isinstance(key, (bytes, bytearray)) or len(key) < 16:
        raise ArtifactError("a signing key must be at least 16 bytes (e.g. `openssl rand -hex "
                            "32 > kiln.key`)")


def read_key(path: str | os.PathLike) -> bytes:
    """A signing key from a file: its bytes, as they are (at least 16, at most 64 KiB)."""
    try:
        with open_regular(path) as f:
            key = f.read((1 << 16) + 1)
    except OSError as e:
        raise ArtifactError(f"cannot read the key file {path}: {e}") from None
    if len(key) > 1 << 16:
        raise ArtifactError(f"the key file {path} is larger than 64 KiB; is it a key?")
    check_key(key)
    return key


# -- parsing ----------------------------------------------------------------------------------

def parse_manifest(raw: bytes, shown: str) -> Any:
    """Parse manifest bytes as strict JSON: UTF-8, no NaN or infinities, no duplicate keys,
    no integer longer than ``MAX_JSON_INT_DIGITS`` digits, nesting within Python's limit."""
    where = f"{shown}/{MANIFEST}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{where} is not UTF-8 text ({e}); {REBUILD_HINT}") from None
    try:
        return json.loads(text, object_pairs_hook=_object_without_duplicates,
                          parse_constant=_no_constant, parse_int=_bounded_int,
                          parse_float=_finite_float)
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{where} is not valid JSON ({e}); the artifact is corrupt: "
                            f"{REBUILD_HINT}") from None
    except RecursionError:  # the C scanner checks its depth against the recursion limit
        raise ArtifactError(f"{where} is nested too deeply to be a manifest; {REBUILD_HINT}"
                            ) from None
    except ArtifactError as e:
        raise ArtifactError(f"{where} is not a manifest: {e}; {REBUILD_HINT}") from None


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise ArtifactError(f"the key {_show(key)} appears twice in one object")
        seen.add(key)
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise ArtifactError(f"it holds {name}, which is not JSON")


def _bounded_int(digits: str) -> int:
    length = len(digits.lstrip("-"))
    if length > MAX_JSON_INT_DIGITS:
        raise ArtifactError(f"it holds a {length}-digit integer")
    return int(digits)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ArtifactError(f"it holds the number {text[:40]}, which overflows a float")
    return value


# -- validation -------------------------------------------------------------------------------

def check_format(manifest: Any) -> None:
    """Check that ``manifest`` is a kiln manifest of the version this runtime reads."""
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{MANIFEST} is not a JSON object; this is not a kiln artifact")
    name = manifest.get("format")
    if name != FORMAT_NAME:
        raise ArtifactError(
            f"{MANIFEST} has format {_show(name)}, expected {FORMAT_NAME!r}: this is not a "
            "kiln artifact"
        )
    version = manifest.get("format_version")
    if not _is_int(version) or version != FORMAT_VERSION:
        newer = _is_int(version) and version > FORMAT_VERSION
        what = "upgrade kiln, or rebuild it" if newer else "rebuild it"
        raise ArtifactError(
            f"artifact has format_version {_show(version)}, but this kiln runtime reads "
            f"version {FORMAT_VERSION}: {what} with `kiln compile`"
        )


def validate_manifest(manifest: Any, *, with_files: bool = True) -> None:
    """Check the types, bounds and internal consistency of a manifest (not the files).

    Raises ArtifactError naming the first problem found. The checks are what the executor
    relies on: every field has its type and bounds; every kernel argument is a described
    value; inputs and constants are never written; every intermediate is written once before
    it is read; every graph output is produced; and the memory plan gives each intermediate
    a buffer of exactly the planned size that no value live at the same time shares
    (``planner.check_plan``). ``with_files=False`` skips "files" (the writer checks the
    manifest before it has written them).
    """
    check_format(manifest)
    m = manifest
    for key, kind in (("target", dict), ("inputs", list), ("outputs", list),
                      ("values", dict), ("constants", list), ("kernels", list),
                      ("memory", dict)) + ((("files", dict),) if with_files else ()):
        if not isinstance(m.get(key), kind):
            raise _bad(f"field {key!r} is missing or not a JSON {_json_kind(kind)}")
    _check_metadata(m)
    values = m["values"]
    symbolic = "sizes" in m  # dims may be size expressions (kiln/runtime/sizes.py)
    for name, info in values.items():
        _check_value(name, info, symbolic)
    input_names = _check_signatures(m["inputs"], "inputs", values, symbolic)
    output_names = _check_signatures(m["outputs"], "outputs", values, symbolic)
    if len(set(input_names)) != len(input_names):
        raise _bad("two graph inputs have the same name")
    constants = _check_constants(m["constants"], values, set(input_names))
    fixed = set(input_names) | constants
    written = _check_kernels(m["kernels"], values, fixed, symbolic)
    for name in output_names:
        if name not in written and name not in fixed:
            raise _bad(f"graph output {name!r} is produced by no kernel")
    if with_files:
        _check_file_digests(m["files"], files_of(m))
    if symbolic:
        from kiln.runtime.sizes import check_sizes_section

        try:
            check_sizes_section(m)
        except ArtifactError as e:
            raise _bad(str(e)) from None
        if m["memory"]:
            raise _bad("a model with symbolic sizes plans its memory per call size: its "
                       "'memory' must be empty")
        from kiln.runtime.sizes import check_variants

        try:
            variants = check_variants(m)
        except ArtifactError as e:
            raise _bad(str(e)) from None
        for variant in variants:  # each as a manifest of its own (the files are shared)
            validate_manifest(variant, with_files=False)
        return
    _check_memory(m["memory"], written - set(output_names))
    from kiln.runtime.planner import check_plan  # planner imports this module

    try:
        check_plan(m["kernels"], values, fixed | set(output_names), m["memory"])
    except ArtifactError as e:
        raise _bad(str(e)) from None


def _check_metadata(m: dict[str, Any]) -> None:
    """Fields that only inform (versions, CPU flags, target options): types only."""
    if "kiln_version" in m and not _is_name(m["kiln_version"]):
        raise _bad("'kiln_version' is not a string")
    build = m.get("build", {})
    if not isinstance(build, dict) or not all(_is_name(v) for v in build.values()):
        raise _bad("'build' is not an object of version strings")
    features = m.get("cpu_features", [])
    if not isinstance(features, list) or not all(_is_name(f) for f in features):
        raise _bad("'cpu_features' is not a list of strings")
    if not isinstance(m.get("gpu", {}), dict):
        raise _bad("'gpu' is not an object")
    target = m["target"]
    if target.get("kind") not in TARGET_KINDS:
        raise _bad(f"target kind {_show(target.get('kind'))} is not one of {TARGET_KINDS}")
    for key in ("mcpu", "mtriple"):
        if key in target and not _is_name(target[key]):
            raise _bad(f"target {key!r} is not a string")
    if "mattr" in target and not (isinstance(target["mattr"], list)
                                  and all(_is_name(a) for a in target["mattr"])):
        raise _bad("target 'mattr' is not a list of strings")
    cores = target.get("num-cores", 1)
    if not _is_int(cores) or not 1 <= cores <= 1 << 20:
        raise _bad(f"target 'num-cores' is {_show(cores)}, not a positive int")


def _check_value(name: str, info: Any, symbolic: bool = False) -> None:
    from kiln.runtime.sizes import is_expression

    if not isinstance(info, dict):
        raise _bad(f"value {_show(name)} is not an object with 'shape' and 'dtype'")
    shape = info.get("shape")
    if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(
            _is_int(d) and 0 <= d <= MAX_VALUE_BYTES or symbolic and is_expression(d)
            for d in shape):
        what = "shape (a list of at most {} non-negative ints or size expressions" if \
            symbolic else "static shape (a list of at most {} non-negative ints"
        raise _bad(f"value {_show(name)} has no {what.format(MAX_RANK)}), it has "
                   f"{_show(shape)}")
    if not all(_is_int(d) for d in shape):
        shape = [1]  # a symbolic size: its bytes are checked per call size
    dtype = info.get("dtype")
    if not isinstance(dtype, str):
        raise _bad(f"value {_show(name)} has unknown dtype {_show(dtype)}")
    if dtype not in DTYPE_SIZES:
        raise _bad(f"value {_show(name)} has unknown dtype {_show(dtype)}")
    if value_nbytes({**info, "shape": shape}) > MAX_VALUE_BYTES:
        raise _bad(f"value {_show(name)} would take {value_nbytes(info)} bytes, more than the "
                   f"{MAX_VALUE_BYTES} a kiln artifact may describe")


def _check_signatures(sigs: list, io: str, values: dict[str, Any],
                      symbolic: bool = False) -> list[str]:
    """Check graph inputs or outputs against "values"; return their names in order."""
    names = []
    for sig in sigs:
        if not isinstance(sig, dict) or not _is_name(sig.get("name")):
            raise _bad(f"an entry of {io!r} has no name")
        name = sig["name"]
        _check_value(name, sig, symbolic)
        known = values.get(name)
        if known is None or known["shape"] != sig["shape"] or known["dtype"] != sig["dtype"]:
            raise _bad(f"{io[:-1]} {_show(name)} does not match its entry in 'values'")
        names.append(name)
    return names


def _check_constants(names: list, values: dict[str, Any], inputs: set[str]) -> set[str]:
    for name in names:
        if not _is_name(name):
            raise _bad(f"'constants' holds {_show(name)}, not a value name")
        if name not in values:
            raise _bad(f"constant {_show(name)} has no entry in 'values'")
        if name in inputs:
            raise _bad("a name is both a graph input and a constant")
    if len(set(names)) != len(names):
        raise _bad("a constant is listed twice")
    return set(names)


def _check_kernels(kernels: list, values: dict, fixed: set[str],
                   symbolic: bool = False) -> set[str]:
    """Check the call sequence; return the names that kernels write."""
    written: set[str] = set()
    for i, k in enumerate(kernels):
        if not isinstance(k, dict) or not isinstance(k.get("func"), str) \
                or not _SYMBOL.fullmatch(k["func"]) or len(k["func"]) > MAX_NAME_CHARS:
            raise _bad(f"kernel #{i} has no 'func' name (a C identifier)")
        func = k["func"]
        args, n_out = k.get("args"), k.get("num_outputs")
        if not isinstance(args, list) or not all(_is_name(a) for a in args) \
                or not _is_int(n_out) or not 1 <= n_out <= len(args):
            raise _bad(f"kernel #{i} ({func}) needs 'args' (value names) and "
                       "1 <= num_outputs <= len(args)")
        _check_kernel_info(i, k, symbolic)
        ins, outs = split_args(k)
        for name in args:
            if name not in values:
                raise _bad(f"kernel #{i} ({func}) uses {_show(name)}, which is not in 'values'")
        for name in ins:
            if name not in fixed and name not in written:
                raise _bad(f"kernel #{i} ({func}) reads {_show(name)} before any kernel "
                           "writes it")
        for name in outs:
            if name in fixed:
                raise _bad(f"kernel #{i} ({func}) writes the input or constant {_show(name)}")
            if name in written or name in ins or outs.count(name) > 1:
                raise _bad(f"kernel #{i} ({func}) writes {_show(name)}, which is written twice")
            written.add(name)
    return written


def _check_kernel_info(i: int, kernel: dict[str, Any], symbolic: bool = False) -> None:
    """The optional profiling fields: "sources" (strings) and "flops" (an int; a size
    expression where sizes are symbolic), and the size arguments of one call size."""
    from kiln.runtime.sizes import MAX_SIZE, is_expression

    sources = kernel.get("sources", [])
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise _bad(f"kernel #{i} ({kernel['func']}) has 'sources' that are not strings")
    values = kernel.get("size_values", [])
    if not isinstance(values, list) or not all(_is_int(v) and 0 <= v <= MAX_SIZE
                                               for v in values):
        raise _bad(f"kernel #{i} ({kernel['func']}) has 'size_values' that are not sizes")
    flops = kernel.get("flops", 0)
    if symbolic and is_expression(flops):
        return
    if not _is_int(flops) or not 0 <= flops <= MAX_FLOPS:
        raise _bad(f"kernel #{i} ({kernel['func']}) has 'flops' {_show(flops)}, not a "
                   "non-negative int")


def _check_file_digests(files: dict[str, Any], expected: tuple[str, ...]) -> None:
    if sorted(files) != sorted(expected):
        raise _bad(f"'files' lists {sorted(files, key=str)[:8]}, not exactly "
                   f"{list(expected)}")
    for name, digest in files.items():
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise _bad(f"the checksum of {name} is not a SHA-256 in lowercase hex")


def _check_memory(memory: dict, intermediates: set[str]) -> None:
    """The plan's types and bounds; its soundness is ``planner.check_plan``'s."""
    buffers, assign = memory.get("buffers"), memory.get("assign")
    if not isinstance(buffers, list) or not isinstance(assign, dict):
        raise _bad("'memory' needs 'buffers' (a list) and 'assign' (an object)")
    for i, b in enumerate(buffers):
        if not isinstance(b, dict) or b.get("id") != i or not _is_int(b["id"]) \
                or not _is_int(b.get("nbytes")):
            raise _bad(f"memory buffer #{i} must be {{'id': {i}, 'nbytes': int}}")
        if not ALIGNMENT <= b["nbytes"] <= round_up(MAX_VALUE_BYTES) \
                or b["nbytes"] % ALIGNMENT:
            raise _bad(f"memory buffer #{i} has {_show(b['nbytes'])} bytes, not a positive "
                       f"multiple of {ALIGNMENT}")
    missing = intermediates - set(assign)
    if missing:
        raise _bad(f"the memory plan assigns no buffer to {sorted(missing)[:8]}")
    for name, buf in assign.items():
        if name not in intermediates:
            raise _bad(f"the memory plan assigns a buffer to {_show(name)}, not an "
                       "intermediate")
        if not _is_int(buf) or not 0 <= buf < len(buffers):
            raise _bad(f"the memory plan assigns {_show(name)} to unknown buffer {_show(buf)}")
    for key in ("peak_bytes", "naive_bytes"):
        if not _is_int(memory.get(key)):
            raise _bad(f"'memory' needs {key!r} (an int)")


def _is_int(x: Any) -> bool:
    """An int that is not a bool (JSON true would otherwise pass as 1)."""
    return isinstance(x, int) and not isinstance(x, bool)


def _is_name(x: Any) -> bool:
    return isinstance(x, str) and len(x) <= MAX_NAME_CHARS


def _json_kind(kind: type) -> str:
    return {dict: "object", list: "list"}.get(kind, kind.__name__)


def _show(x: Any) -> str:
    """A short repr for messages (a tampered field may be megabytes long)."""
    text = repr(x)
    return text if len(text) <= 80 else text[:77] + "..."


def _bad(what: str) -> ArtifactError:
    return ArtifactError(f"malformed {MANIFEST}: {what}; {REBUILD_HINT}")
