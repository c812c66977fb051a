"""The artifact format: names, schema constants and manifest validation (docs/artifact.md).

Shared by the writer (build time) and the loader (deploy time), so that a manifest that the
writer accepts is exactly one that the loader accepts. Imports only the standard library and
kiln.errors.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

from kiln.errors import ArtifactError

FORMAT_NAME = "kiln-artifact"
FORMAT_VERSION = 1

MANIFEST = "manifest.json"
KERNELS = "kernels.so"
WEIGHTS = "weights.npz"
RUNTIME_LIB = "libtvm_runtime.so"
#: files every artifact carries besides the manifest (all checksummed in manifest["files"])
REQUIRED_FILES = (KERNELS, WEIGHTS, RUNTIME_LIB)

#: every buffer handed to generated code is aligned to this many bytes (TVM assumes it)
ALIGNMENT = 64

#: bytes per element of the dtypes the runtime can hold in numpy arrays
DTYPE_SIZES = {
    "bool": 1,
    "int8": 1, "int16": 2, "int32": 4, "int64": 8,
    "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8,
    "float16": 2, "float32": 4, "float64": 8,
}
#: dtypes that kiln's IR knows but the numpy-based runtime cannot hold yet
UNSUPPORTED_DTYPES = {"bfloat16": 2}

TARGET_KINDS = ("llvm", "cuda")

REBUILD_HINT = "rebuild the artifact for this machine with `kiln compile`"


def round_up(nbytes: int, multiple: int = ALIGNMENT) -> int:
    """Round ``nbytes`` up to a multiple of ``multiple`` (at least one multiple)."""
    return max(multiple, -(-nbytes // multiple) * multiple)


def value_nbytes(info: dict[str, Any]) -> int:
    """Bytes of a value described by ``{"shape": [...], "dtype": "..."}``."""
    dtype = info["dtype"]
    size = DTYPE_SIZES.get(dtype) or UNSUPPORTED_DTYPES.get(dtype)
    if size is None:
        raise ArtifactError(f"unknown dtype {dtype!r}")
    return math.prod(info["shape"]) * size


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def split_args(kernel: dict[str, Any]) -> tuple[list[str], list[str]]:
    """A kernel's (input names, output names): its args are inputs first, then outputs."""
    args, n_out = kernel["args"], kernel["num_outputs"]
    return list(args[: len(args) - n_out]), list(args[len(args) - n_out:])


def plain_name(name: str) -> bool:
    """True for a file name without any directory part (safe to join to a folder)."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


def check_format(manifest: Any) -> None:
    """Check that ``manifest`` is a kiln manifest of the version this runtime reads."""
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{MANIFEST} is not a JSON object; this is not a kiln artifact")
    name = manifest.get("format")
    if name != FORMAT_NAME:
        raise ArtifactError(
            f"{MANIFEST} has format {name!r}, expected {FORMAT_NAME!r}: this is not a kiln "
            "artifact"
        )
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        what = "upgrade kiln, or rebuild it" if newer else "rebuild it"
        raise ArtifactError(
            f"artifact has format_version {version!r}, but this kiln runtime reads version "
            f"{FORMAT_VERSION}: {what} with `kiln compile`"
        )


def validate_manifest(manifest: Any) -> None:
    """Check the structure and internal consistency of a manifest (not the files).

    Raises ArtifactError naming the first problem found. The checks are what the executor
    relies on: every kernel argument is a described value, inputs and constants are never
    written, every intermediate is written once before it is read, every graph output is
    produced, and the memory plan covers every intermediate (its soundness is checked by
    ``planner.check_plan``).
    """
    check_format(manifest)
    m = manifest
    for key, kind in (("target", dict), ("inputs", list), ("outputs", list),
                      ("values", dict), ("constants", list), ("kernels", list),
                      ("memory", dict)):
        if not isinstance(m.get(key), kind):
            raise _bad(f"field {key!r} is missing or not a JSON {kind.__name__}")
    if m["target"].get("kind") not in TARGET_KINDS:
        raise _bad(f"target kind {m['target'].get('kind')!r} is not one of {TARGET_KINDS}")
    if not isinstance(m.get("cpu_features", []), list):
        raise _bad("field 'cpu_features' is not a list")
    values = m["values"]
    for name, info in values.items():
        _check_value(name, info)
    for io in ("inputs", "outputs"):
        for sig in m[io]:
            if not isinstance(sig, dict) or not isinstance(sig.get("name"), str):
                raise _bad(f"an entry of {io!r} has no name")
            _check_value(sig["name"], sig)
            known = values.get(sig["name"])
            if known is None or list(known["shape"]) != list(sig["shape"]) \
                    or known["dtype"] != sig["dtype"]:
                raise _bad(f"{io[:-1]} {sig['name']!r} does not match its entry in 'values'")
    input_names = [s["name"] for s in m["inputs"]]
    if len(set(input_names)) != len(input_names):
        raise _bad("two graph inputs have the same name")
    fixed = set(input_names) | set(m["constants"])
    for name in m["constants"]:
        if name not in values:
            raise _bad(f"constant {name!r} has no entry in 'values'")
    if set(input_names) & set(m["constants"]):
        raise _bad("a name is both a graph input and a constant")
    written = _check_kernels(m["kernels"], values, fixed)
    for sig in m["outputs"]:
        if sig["name"] not in written and sig["name"] not in fixed:
            raise _bad(f"graph output {sig['name']!r} is produced by no kernel")
    _check_memory(m["memory"], written - {s["name"] for s in m["outputs"]})


def _check_value(name: str, info: Any) -> None:
    if not isinstance(info, dict) or not isinstance(info.get("shape"), list) \
            or not all(isinstance(d, int) and d >= 0 for d in info["shape"]):
        raise _bad(f"value {name!r} has no static shape (a list of non-negative ints)")
    dtype = info.get("dtype")
    if dtype in UNSUPPORTED_DTYPES:
        raise _bad(f"value {name!r} has dtype {dtype}, which the kiln runtime cannot hold yet")
    if dtype not in DTYPE_SIZES:
        raise _bad(f"value {name!r} has unknown dtype {dtype!r}")


def _check_kernels(kernels: list, values: dict, fixed: set[str]) -> set[str]:
    """Check the call sequence; return the names that kernels write."""
    written: set[str] = set()
    for i, k in enumerate(kernels):
        if not isinstance(k, dict) or not isinstance(k.get("func"), str):
            raise _bad(f"kernel #{i} has no 'func' name")
        args, n_out = k.get("args"), k.get("num_outputs")
        if not isinstance(args, list) or not isinstance(n_out, int) \
                or not 1 <= n_out <= len(args):
            raise _bad(f"kernel #{i} ({k['func']}) needs 'args' and 1 <= num_outputs <= len(args)")
        ins, outs = split_args(k)
        for name in args:
            if name not in values:
                raise _bad(f"kernel #{i} ({k['func']}) uses {name!r}, which is not in 'values'")
        for name in ins:
            if name not in fixed and name not in written:
                raise _bad(f"kernel #{i} ({k['func']}) reads {name!r} before any kernel writes it")
        for name in outs:
            if name in fixed:
                raise _bad(f"kernel #{i} ({k['func']}) writes the input or constant {name!r}")
            if name in written or name in ins or outs.count(name) > 1:
                raise _bad(f"kernel #{i} ({k['func']}) writes {name!r}, which is written twice")
            written.add(name)
    return written


def _check_memory(memory: dict, intermediates: set[str]) -> None:
    buffers, assign = memory.get("buffers"), memory.get("assign")
    if not isinstance(buffers, list) or not isinstance(assign, dict):
        raise _bad("'memory' needs 'buffers' (a list) and 'assign' (an object)")
    for i, b in enumerate(buffers):
        if not isinstance(b, dict) or b.get("id") != i or not isinstance(b.get("nbytes"), int):
            raise _bad(f"memory buffer #{i} must be {{'id': {i}, 'nbytes': int}}")
    missing = intermediates - set(assign)
    if missing:
        raise _bad(f"the memory plan assigns no buffer to {sorted(missing)}")
    for name, buf in assign.items():
        if name not in intermediates:
            raise _bad(f"the memory plan assigns a buffer to {name!r}, not an intermediate")
        if not isinstance(buf, int) or not 0 <= buf < len(buffers):
            raise _bad(f"the memory plan assigns {name!r} to unknown buffer {buf!r}")


def _bad(what: str) -> ArtifactError:
    return ArtifactError(f"malformed {MANIFEST}: {what}; {REBUILD_HINT}")
