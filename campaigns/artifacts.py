"""A campaign of corrupted and tampered artifacts: the runtime must refuse each with a
KilnError, or load and run it and agree bit for bit with the pristine artifact. Never a raw
exception, a crash, a hang or a wrong answer.

    python campaigns/artifacts.py --count 300 --seed 0 --jobs 2
    python campaigns/artifacts.py --seed 0 --case 17 --keep /tmp/case17   # one case, kept

Two small MLPs are compiled with kiln (the second only lends its kernels.so, whose kernel
names equal the first's but whose shapes do not). The first is "rigid": each of its values
has a shape of its own, so a manifest rewired to pass a value where another belongs fails
the kernels' own argument checks instead of computing something else. Each case copies it
(as a directory or a packed .kiln.tar) and applies one mutation drawn from its own generator
(seeded by ``--seed`` and the case number, so a case is reproducible alone). Families:

    flip, truncate  bytes of any file changed, no checksum recomputed
    field           one manifest field: wrong type, negative, huge, deleted, duplicated, ...
    memory          the memory plan: negative/odd/wrong sizes, overlapping values, ids
    json            JSON bombs: deep nesting, 5000-digit ints, NaN, duplicate keys, BOM,
                    non-UTF-8, byte flips, oversize
    digest          manifest.sha256 missing, wrong, a FIFO or /dev/zero
    files           a file replaced by a FIFO, a /dev/zero symlink, a directory, a loop
    libs            kernels.so or libtvm_runtime.so replaced by another library (TVM's
                    runtime, tvm_ffi, a Python extension, the other MLP's kernels),
                    truncated, or with ELF header fields changed
    weights         weights.npz compressed, a zip bomb, pickles, wrong dtype/shape/order,
                    extra/missing/duplicate members, trailing or missing data
    archive         the .tar compressed, a size-claim bomb, extra/missing/duplicate/
                    non-regular members, path traversal, several folders, truncated
    paths           the artifact path is a FIFO, /dev/zero, a socket, a loop, missing
    signed          a signed artifact altered by someone without the key (checksums and
                    digest recomputed: weights, kernels, args, signature), loaded with the key
    control         pristine artifacts (directory, tar, signed): they must load and agree

Unless said otherwise, a tampered manifest gets a recomputed manifest.sha256 (and tampered
files recomputed checksums), so that the validation behind the digest is what is tested.
Each case loads and runs in a fresh child process with a timeout (writing past 64 MiB kills
it, which catches an archive that unpacks to more than it holds). Classes:

    refused     a KilnError raised on purpose                                     good
    ok          loaded, ran, outputs equal the pristine artifact's                good
    missed      loaded although the mutation must be refused (e.g. a stale digest) bad
    wrong       loaded and ran, but an output differs from the pristine artifact's bad
    exception   any other exception                                               bad
    crash       the child died (signal, or exit without an answer)                bad
    hang        no answer within --timeout seconds                                bad

The counts are printed; the exit status is 1 if any case is in a bad class.
"""

from __future__ import annotations

import argparse
import bz2
import copy
import gzip
import hashlib
import io
import json
import lzma
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from kiln.runtime import format as fmt  # noqa: E402

BAD = ("missed", "wrong", "exception", "crash", "hang")
GOOD = ("refused", "ok")
#: what a child may write to any one file (the artifacts here are a few MB)
CHILD_FILE_LIMIT = 64 << 20
MARK = "KILN-CAMPAIGN "


# -- the pristine artifacts ---------------------------------------------------------------------

@dataclass
class Pristine:
    """What every case starts from, built once per campaign."""

    work: Path
    artifact: Path  # the rigid MLP, a directory
    archive: Path  # the same, packed
    signed: Path  # the same, signed with `key`
    other_kernels: Path  # the other MLP's kernels.so (same kernel names, other shapes)
    inputs: Path  # .npz of the inputs, in order
    key: bytes
    expected: dict[str, str]  # output name -> digest of dtype, shape and bytes
    foreign_libs: dict[str, Path]  # other ELF libraries to swap in


def _mlp(sizes: tuple[int, ...], batch: int, path: Path, seed: int) -> Path:
    import kiln
    from kiln import nn

    layers: list = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    rng = np.random.default_rng(seed)
    for param in model.parameters():
        param.data = rng.standard_normal(param.data.shape).astype(np.float32) * 0.5
    graph = kiln.trace(model, x=kiln.TensorSpec((batch, sizes[0])))
    return kiln.compile(graph, opt_level=2).save(path)


def build_pristine(work: Path, seed: int) -> Pristine:
    from kiln.runtime import pack, sign_artifact

    artifact = _mlp((24, 40, 56, 72, 88, 10), 2, work / "rigid.kiln", seed)
    other = _mlp((24, 48, 64, 80, 96, 12), 3, work / "other.kiln", seed + 1)
    archive = pack(artifact, work / "rigid.kiln.tar")
    key = hashlib.sha256(f"kiln campaign key {seed}".encode()).digest()
    signed = work / "signed.kiln"
    shutil.copytree(artifact, signed)
    sign_artifact(signed, key)
    rng = np.random.default_rng(seed)
    inputs = work / "inputs.npz"
    np.savez(inputs, rng.standard_normal((2, 24)).astype(np.float32))
    import _ctypes

    import tvm_ffi

    foreign = {"libtvm_ffi.so": Path(tvm_ffi.__file__).parent / "lib" / "libtvm_ffi.so",
               "a Python extension": Path(_ctypes.__file__),
               "the other MLP's kernels.so": other / fmt.KERNELS,
               "libtvm_runtime.so": artifact / fmt.RUNTIME_LIB,
               "kernels.so": artifact / fmt.KERNELS}
    p = Pristine(work, artifact, archive, signed, other / fmt.KERNELS, inputs, key, {},
                 {name: path for name, path in foreign.items() if path.is_file()})
    result = run_child(artifact, p, None, 120.0, work)
    if result.get("status") != "ok":
        raise SystemExit(f"the pristine artifact does not run: {result}")
    p.expected = {name: digest for name, digest in result["outputs"]}
    return p


# -- editing helpers (the campaign's own files are trusted; it never opens what it breaks) ------

def copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def reseal(art: Path) -> None:
    """Rewrite manifest.sha256 to match manifest.json (what a deliberate editor does)."""
    raw = (art / fmt.MANIFEST).read_bytes()
    (art / fmt.MANIFEST_DIGEST).write_text(fmt.digest_text(raw))


def read_manifest(art: Path) -> dict[str, Any]:
    return json.loads((art / fmt.MANIFEST).read_text())


def write_manifest(art: Path, manifest: Any) -> None:
    (art / fmt.MANIFEST).write_text(json.dumps(manifest, indent=1))
    reseal(art)


def write_manifest_bytes(art: Path, raw: bytes) -> None:
    (art / fmt.MANIFEST).write_bytes(raw)
    reseal(art)


def refresh_checksums(art: Path) -> None:
    """Recompute "files" for the files that are regular (never opening anything else)."""
    m = read_manifest(art)
    for name in fmt.REQUIRED_FILES:
        path = art / name
        if path.is_file() and not path.is_symlink():
            m["files"][name] = hashlib.sha256(path.read_bytes()).hexdigest()
    write_manifest(art, m)


def flip_bits(data: bytes, rng: random.Random, count: int, lo: int = 0,
              hi: int | None = None) -> bytes:
    out = bytearray(data)
    hi = len(out) if hi is None else hi
    for _ in range(count):
        at = rng.randrange(lo, hi)
        out[at] ^= 1 << rng.randrange(8)
    return bytes(out)


def npy_bytes(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, version=version, allow_pickle=True)
    return buf.getvalue()


def pristine_weights(art: Path) -> dict[str, np.ndarray]:
    with np.load(art / fmt.WEIGHTS, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    """A .npy header claiming ``shape`` (no data follows)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


#: in place of a member's bytes: write_npz streams 1 GiB of zero floats, deflated (~1 MB)
BOMB = b"(a zip bomb)"


def write_npz(path: Path, members: list[tuple[str, bytes, int]]) -> None:
    """Write a zip of (member name, bytes, compression) as given (duplicates included)."""
    with zipfile.ZipFile(path, "w", compresslevel=1) as zf:
        for name, data, compression in members:
            info = zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0))
            info.compress_type = compression
            if data is BOMB:
                with zf.open(info, "w") as f:
                    f.write(npy_header((1 << 28,)))
                    chunk = bytes(1 << 24)
                    for _ in range((1 << 30) // len(chunk)):
                        f.write(chunk)
            else:
                zf.writestr(info, data)


def tar_of(members: list[tuple[tarfile.TarInfo, bytes | None]], path: Path,
           form: int = tarfile.GNU_FORMAT) -> Path:
    with tarfile.open(path, "w", format=form) as tar:
        for info, data in members:
            if data is None:
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    return info


def artifact_members(art: Path, top: str = "rigid.kiln/") -> list[tuple[tarfile.TarInfo, bytes]]:
    names = [fmt.MANIFEST, fmt.MANIFEST_DIGEST, *fmt.REQUIRED_FILES]
    if (art / fmt.SIGNATURE).exists():
        names.append(fmt.SIGNATURE)
    return [(member(top + n), (art / n).read_bytes()) for n in names]


# -- mutations -----------------------------------------------------------------------------------

@dataclass
class Variant:
    path: Path
    what: str
    must_refuse: bool  # True: loading must fail (a stale digest, a bomb...); False: either
    key: bytes | None = None


Family = Callable[[random.Random, Pristine, Path], Variant]

WEIRD = [None, True, False, 0, -1, 1, 63, 65, 2**31, 2**63, -2**63, 10**30, 0.5, -0.0, 1e300,
         "", "x", "../../etc/passwd", "float32", "k0_fused_matmul_add_relu", "\x00",
         "\ud800", "a" * 100_000, [], {}, [1], [-1], [True], [None], ["x"], [[2, 24]],
         {"a": 1}, {"shape": [2, 24], "dtype": "float32"}]


def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a JSON tree (the root excluded)."""
    out = []
    items = tree.items() if isinstance(tree, dict) else (
        enumerate(tree) if isinstance(tree, list) else ())
    for key, sub in items:
        out.append(prefix + (key,))
        out.extend(_paths(sub, prefix + (key,)))
    return out


def _at(tree: Any, path: tuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _tweaks(value: Any, names: list[str], rng: random.Random) -> list[tuple[str, Any]]:
    """Candidate replacements for one value: (description, new value)."""
    out = [(f"set to {json.dumps(w)[:40]}", w) for w in WEIRD]
    if isinstance(value, int) and not isinstance(value, bool):
        out += [(f"{value} -> {v}", v) for v in
                (value + 1, value - 1, -value, value * 2, value + 64, value - 64, value * 2**40)]
    if isinstance(value, str):
        out += [(f"{value[:30]!r} -> {v[:30]!r}", v) for v in
                (value + "x", value.upper(), value[:-1], rng.choice(names))]
    if isinstance(value, list) and value:
        out += [("reversed", value[::-1]), ("first dropped", value[1:]),
                ("duplicated", value + value[:1]), ("wrapped", [value])]
    if isinstance(value, dict):
        out += [("unknown key added", {**value, "surprise": 1}),
                ("emptied", {})]
    return out


def fam_field(rng: random.Random, p: Pristine, case: Path) -> Variant:
    art = copy_dir(p.artifact, case / "a.kiln")
    m = read_manifest(art)
    top = rng.choice(sorted(m))
    paths = [(top,)] + [(top,) + q for q in _paths(m[top])]
    path = rng.choice(paths)
    parent, key = _at(m, path[:-1]), path[-1]
    names = sorted(m["values"]) + [k["func"] for k in m["kernels"]]
    ops = _tweaks(parent[key], names, rng) + [("deleted", None)]
    what, new = rng.choice(ops)
    if what == "deleted":
        del parent[key]
    else:
        parent[key] = copy.deepcopy(new)
    write_manifest(art, m)
    return Variant(art, f"{'.'.join(map(str, path))}: {what}", False)


def _memory_ops(m: dict[str, Any], rng: random.Random) -> list[tuple[str, bool, Callable]]:
    """(what, must refuse, edit of the manifest's memory plan)."""
    mem = m["memory"]
    buffers, assign = mem["buffers"], mem["assign"]
    b = rng.randrange(len(buffers))
    names = list(assign)
    a, c = names[0], names[1]  # "3" and "7": live at the same time (kernel 1)
    outsider = rng.choice([m["inputs"][0]["name"], m["outputs"][0]["name"], m["constants"][0]])

    def size(n):
        return lambda mem: mem["buffers"][b].update(nbytes=n)

    def prepend_negative(mem):
        mem["buffers"] = [{"id": 0, "nbytes": -4096}] + [
            {"id": x["id"] + 1, "nbytes": x["nbytes"]} for x in mem["buffers"]]
        mem["assign"] = {k: v + 1 for k, v in mem["assign"].items()}

    def permute(mem):  # a different but equally sound plan
        order = list(range(len(mem["buffers"])))[::-1]
        mem["buffers"] = [{"id": i, "nbytes": mem["buffers"][j]["nbytes"]}
                          for i, j in enumerate(order)]
        mem["assign"] = {k: order.index(v) for k, v in mem["assign"].items()}

    def naive(mem):  # one buffer per value: sound, exact, no reuse
        values = m["values"]
        names = list(mem["assign"])
        sizes = [fmt.round_up(fmt.value_nbytes(values[n])) for n in names]
        mem["buffers"] = [{"id": i, "nbytes": s} for i, s in enumerate(sizes)]
        mem["assign"] = {n: i for i, n in enumerate(names)}
        mem["peak_bytes"] = mem["naive_bytes"] = sum(sizes)

    n = buffers[b]["nbytes"]
    return [
        (f"buffer {b} nbytes -> -{n}", True, size(-n)),
        (f"buffer {b} nbytes -> 0", True, size(0)),
        (f"buffer {b} nbytes -> {n - 64}", True, size(n - 64)),
        (f"buffer {b} nbytes -> {n + 64}", True, size(n + 64)),
        (f"buffer {b} nbytes -> {n + 1}", True, size(n + 1)),
        (f"buffer {b} nbytes -> 2**62", True, size(2**62)),
        (f"buffer {b} nbytes -> true", True, size(True)),
        (f"buffer {b} nbytes -> {n}.0", True, size(float(n))),
        ("an unused buffer of -4096 bytes appended", True,
         lambda mem: mem["buffers"].append({"id": len(mem["buffers"]), "nbytes": -4096})),
        ("an unused buffer of 64 bytes appended", True,
         lambda mem: mem["buffers"].append({"id": len(mem["buffers"]), "nbytes": 64})),
        ("a -4096-byte buffer prepended (the next ones shift)", True, prepend_negative),
        (f"{c!r} shares {a!r}'s buffer (both live)", True,
         lambda mem: mem["assign"].update({c: mem["assign"][a]})),
        (f"{a!r} -> buffer {len(buffers)}", True,
         lambda mem: mem["assign"].update({a: len(mem["buffers"])})),
        (f"{a!r} -> buffer -1", True, lambda mem: mem["assign"].update({a: -1})),
        (f"{a!r} -> buffer true", True, lambda mem: mem["assign"].update({a: True})),
        (f"{a!r} -> buffer '0'", True, lambda mem: mem["assign"].update({a: "0"})),
        (f"{a!r} unassigned", True, lambda mem: mem["assign"].pop(a)),
        (f"{outsider!r} assigned a buffer", True,
         lambda mem: mem["assign"].update({outsider: 0})),
        ("buffer ids swapped", True, lambda mem: mem["buffers"].reverse()),
        ("peak_bytes + 64", True, lambda mem: mem.update(peak_bytes=mem["peak_bytes"] + 64)),
        ("naive_bytes -> -1", True, lambda mem: mem.update(naive_bytes=-1)),
        ("peak_bytes -> '1280'", True, lambda mem: mem.update(peak_bytes="1280")),
        ("buffers -> {}", True, lambda mem: mem.update(buffers={})),
        ("assign -> []", True, lambda mem: mem.update(assign=[])),
        ("buffers permuted (sound)", False, permute),
        ("one buffer per value (sound)", False, naive),
    ]


def fam_memory(rng: random.Random, p: Pristine, case: Path) -> Variant:
    art = copy_dir(p.artifact, case / "a.kiln")
    m = read_manifest(art)
    what, must, edit = rng.choice(_memory_ops(m, rng))
    edit(m["memory"])
    write_manifest(art, m)
    return Variant(art, f"memory plan: {what}", must)


def _json_ops(raw: bytes, rng: random.Random) -> list[tuple[str, bool, Callable[[], bytes]]]:
    text = raw.decode()

    def replace_first(old: str, new: str) -> Callable[[], bytes]:
        """Replace the first match of the regex ``old`` (which must match)."""
        def make() -> bytes:
            edited, n = re.subn(old, lambda _: new, text, count=1)
            if n != 1:
                raise ValueError(f"the pristine manifest has no {old!r}")
            return edited.encode()
        return make

    def flops(new: str) -> Callable[[], bytes]:
        return replace_first(r'"flops": \d+', '"flops": ' + new)

    return [
        ("a field nested 100000 deep", True, flops("[" * 100_000 + "]" * 100_000)),
        ("a field nested 5000 deep", True, flops("[" * 5000 + "]" * 5000)),
        ("the whole file nested 1000000 deep", True, lambda: b"[" * 10**6 + b"]" * 10**6),
        ("a 5000-digit int", True, flops("9" * 5000)),
        ("a 5000-digit int as a buffer size", True,
         replace_first(r'"nbytes": \d+', '"nbytes": ' + "1" * 5000)),
        ("a 31-digit int", True, flops("1" * 31)),
        ("NaN", True, flops("NaN")),
        ("Infinity", True, flops("Infinity")),
        ("-Infinity", True, flops("-Infinity")),
        ("1e999", True, flops("1e999")),
        ("a duplicate key", True, replace_first(r"\{", '{\n "kernels": [],')),
        ("a duplicate key in a value", True,
         replace_first(r'"dtype": "float32"', '"dtype": "float32", "dtype": "int8"')),
        ("a UTF-8 BOM", True, lambda: b"\xef\xbb\xbf" + raw),
        ("a byte that is not UTF-8", True, lambda: raw.replace(b"node", b"n\xffde", 1)),
        ("empty", True, lambda: b""),
        ("null", True, lambda: b"null"),
        ("a list", True, lambda: b"[]"),
        ("a string", True, lambda: b'"kiln-artifact"'),
        ("cut in half", True, lambda: raw[: len(raw) // 2]),
        ("a lone surrogate in a source", False,
         replace_first(r'"sources": \[', '"sources": ["\\ud800", ')),
        ("10 MB of trailing spaces", False, lambda: raw + b" " * (10 << 20)),
        ("65 MB of trailing spaces", True, lambda: raw + b" " * (65 << 20)),
        ("a 10 MB source string", False,
         replace_first(r'"sources": \[', '"sources": ["' + "s" * (10 << 20) + '", ')),
        ("compact (no indentation)", False,
         lambda: json.dumps(json.loads(raw)).encode()),
        ("keys reordered", False,
         lambda: json.dumps(dict(sorted(json.loads(raw).items(), reverse=True))).encode()),
    ] + [(f"{n} bit(s) flipped", False, lambda n=n: flip_bits(raw, rng, n)) for n in (1, 2, 3)]


def fam_json(rng: random.Random, p: Pristine, case: Path) -> Variant:
    art = copy_dir(p.artifact, case / "a.kiln")
    what, must, make = rng.choice(_json_ops((art / fmt.MANIFEST).read_bytes(), rng))
    write_manifest_bytes(art, make())
    return Variant(art, f"manifest text: {what} (digest recomputed)", must)


ALL_FILES = (fmt.MANIFEST, fmt.MANIFEST_DIGEST, *fmt.REQUIRED_FILES)


def fam_flip(rng: random.Random, p: Pristine, case: Path) -> Variant:
    art = copy_dir(p.artifact, case / "a.kiln")
    name = rng.choice(ALL_FILES)
    n = rng.choice((1, 1, 2, 8))
    data = (art / name).read_bytes()
    (art / name).write_bytes(flip_bits(data, rng, n))
    return Variant(art, f"{name}: {n} bit(s) flipped, nothing recomputed", True)


def fam_truncate(rng: random.Random, p: Pristine, case: Path) -> Variant:
    art = copy_dir(p.artifact, case / "a.kiln")
    name = rng.choice(ALL_FILES)
    data = (art / name).read_bytes()
    cut = rng.choice((0, 1, rng.randrange(len(data)), len(data) - 1))
    (art / name).write_bytes(data[:cut])
    return Variant(art, f"{name}: truncated to {cut} of {len(data)} bytes", True)


def fam_digest(rng: random.Random, p: Pristine, case: Path) -> Variant:
    art = copy_dir(p.artifact, case / "a.kiln")
    path = art / fmt.MANIFEST_DIGEST
    good = path.read_text()
    other = hashlib.sha256(b"another manifest").hexdigest() + "  manifest.json\n"
    ops: list[tuple[str, Callable[[], None]]] = [
        ("missing", path.unlink),
        ("empty", lambda: path.write_text("")),
        ("uppercase hex", lambda: path.write_text(good[:64].upper() + good[64:])),
        ("without the file name", lambda: path.write_text(good[:64] + "\n")),
        ("without the newline", lambda: path.write_text(good.rstrip("\n"))),
        ("another file name", lambda: path.write_text(good[:64] + "  weights.npz\n")),
        ("an extra line", lambda: path.write_text(good + other)),
        ("another manifest's digest", lambda: path.write_text(other)),
        ("1 MB of hex", lambda: path.write_text("a" * (1 << 20))),
        ("a directory", lambda: (path.unlink(), path.mkdir())),
        ("a FIFO", lambda: (path.unlink(), os.mkfifo(path))),
        ("a symlink to /dev/zero", lambda: (path.unlink(), os.symlink("/dev/zero", path))),
        ("a dangling symlink", lambda: (path.unlink(), os.symlink(art / "nowhere", path))),
    ]
    what, edit = rng.choice(ops)
    edit()
    return Variant(art, f"manifest.sha256: {what}", True)


def _replace_with_special(path: Path, kind: str) -> None:
    path.unlink()
    if kind == "a FIFO":
        os.mkfifo(path)
    elif kind == "a symlink to /dev/zero":
        os.symlink("/dev/zero", path)
    elif kind == "a symlink to /dev/null":
        os.symlink("/dev/null", path)
    elif kind == "a directory":
        path.mkdir()
    elif kind == "a dangling symlink":
        os.symlink(path.parent / "nowhere", path)
    elif kind == "a symlink loop":
        os.symlink(path, path)
    elif kind == "a socket":
        _make_socket(path)


def _make_socket(path: Path) -> None:
    """A Unix socket at ``path``: bound at a short name (socket paths are limited to about
    100 bytes), then renamed into place."""
    short = Path(tempfile.mkdtemp(prefix="ks-", dir="/tmp"))
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.bind(str(short / "s"))
        os.rename(short / "s", path)
    finally:
        shutil.rmtree(short, ignore_errors=True)


SPECIAL = ("a FIFO", "a symlink to /dev/zero", "a symlink to /dev/null", "a directory",
           "a dangling symlink", "a symlink loop", "missing")


def fam_files(rng: random.Random, p: Pristine, case: Path) -> Variant:
    art = copy_dir(p.artifact, case / "a.kiln")
    name = rng.choice(ALL_FILES)
    if rng.random() < 0.15:  # a symlink to an identical copy elsewhere: harmless
        target = case / ("copy-" + name)
        shutil.copyfile(art / name, target)
        (art / name).unlink()
        os.symlink(target, art / name)
        return Variant(art, f"{name}: a symlink to an identical copy", False)
    if rng.random() < 0.2:  # an empty file with a matching checksum
        (art / name).write_bytes(b"")
        if name in fmt.REQUIRED_FILES:
            refresh_checksums(art)
        return Variant(art, f"{name}: empty (checksums recomputed)", True)
    kind = rng.choice(SPECIAL)
    _replace_with_special(art / name, kind)
    return Variant(art, f"{name}: {kind}", True)


def _elf_edit(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    out = bytearray(data)
    ops = {
        "ELF magic broken": lambda: out.__setitem__(slice(1, 4), b"ELG"),
        "class 64 -> 32": lambda: out.__setitem__(4, 1),
        "class -> 7": lambda: out.__setitem__(4, 7),
        "byte order -> big": lambda: out.__setitem__(5, 2),
        "type -> executable": lambda: out.__setitem__(slice(16, 18), (2).to_bytes(2, "little")),
        "type -> relocatable": lambda: out.__setitem__(slice(16, 18), (1).to_bytes(2, "little")),
        "machine -> aarch64": lambda: out.__setitem__(slice(18, 20), (183).to_bytes(2, "little")),
        "machine -> riscv": lambda: out.__setitem__(slice(18, 20), (243).to_bytes(2, "little")),
        "section headers past the end": lambda: out.__setitem__(
            slice(40, 48), (len(data) + 4096).to_bytes(8, "little")),
        "program headers past the end": lambda: out.__setitem__(
            slice(32, 40), (len(data) + 4096).to_bytes(8, "little")),
        "no section headers": lambda: out.__setitem__(slice(40, 48), bytes(8)),
    }
    what = rng.choice(sorted(ops))
    ops[what]()
    return what, bytes(out)


def fam_libs(rng: random.Random, p: Pristine, case: Path) -> Variant:
    art = copy_dir(p.artifact, case / "a.kiln")
    name = rng.choice((fmt.KERNELS, fmt.KERNELS, fmt.RUNTIME_LIB))
    path = art / name
    data = path.read_bytes()
    choice = rng.randrange(5)
    if choice <= 1:
        sources = {k: v for k, v in p.foreign_libs.items() if k != name}
        what = rng.choice(sorted(sources))
        path.write_bytes(sources[what].read_bytes())
        what = f"replaced by {what}"
    elif choice == 2:
        cut = rng.randrange(64, len(data))
        path.write_bytes(data[:cut])
        what = f"truncated to {cut} bytes"
    elif choice == 3:
        what, edited = _elf_edit(data, rng)
        path.write_bytes(edited)
    else:
        what = rng.choice(("random bytes after an ELF magic", "empty", "a text file"))
        body = {"empty": b"", "a text file": b"#!/bin/sh\necho hi\n"}.get(
            what, b"\x7fELF\x02\x01\x01" + rng.randbytes(20000))
        path.write_bytes(body)
    refresh_checksums(art)
    return Variant(art, f"{name}: {what} (checksums recomputed)", True)


def _weights_ops(arrays: dict[str, np.ndarray], rng: random.Random) -> list:
    """(what, must refuse, members) for weights.npz, members as write_npz takes them."""
    names = sorted(arrays)
    victim = rng.choice(names)
    stored = zipfile.ZIP_STORED

    def members(**changes):
        out = []
        for n in names:
            if n in changes:
                if changes[n] is not None:
                    out.append((n + ".npy", changes[n], stored))
            else:
                out.append((n + ".npy", npy_bytes(arrays[n]), stored))
        return out

    a = arrays[victim]
    body = npy_bytes(a)
    bomb_header = npy_header((1 << 28,))
    v3 = npy_bytes(a, (2, 0)).replace(b"\x93NUMPY\x02\x00", b"\x93NUMPY\x03\x00", 1)
    return [
        ("a member deflated", True,
         [(n + ".npy", npy_bytes(arrays[n]), zipfile.ZIP_DEFLATED) for n in names]),
        ("a zip bomb (1 GiB of zeros, deflated)", True,
         members(**{victim: None}) + [(victim + ".npy", BOMB, zipfile.ZIP_DEFLATED)]),
        ("a header claiming 2**28 floats", True, members(**{victim: bomb_header})),
        ("an extra member", True, members() + [("evil.npy", body, stored)]),
        ("a member missing", True, members(**{victim: None})),
        ("a member twice", True, members() + [(victim + ".npy", body, stored)]),
        ("a pickled object array", True,
         members(**{victim: npy_bytes(np.array([{"a": 1}], dtype=object))})),
        ("float64", True, members(**{victim: npy_bytes(a.astype(np.float64))})),
        ("big-endian", True, members(**{victim: npy_bytes(a.astype(">f4"))})),
        ("int32", True, members(**{victim: npy_bytes(a.view(np.int32))})),
        ("reshaped", True, members(**{victim: npy_bytes(a.reshape(1, -1))})),
        ("Fortran order", True, members(**{victim: npy_bytes(np.asfortranarray(
            a.reshape(a.shape[0], -1) if a.ndim < 2 else a))})),
        ("trailing bytes", True, members(**{victim: body + b"\0" * 16})),
        ("data cut short", True, members(**{victim: body[:-4]})),
        (".npy version 3", True, members(**{victim: v3})),
        ("a header that is code", True, members(**{victim: body.replace(
            b"'descr'", b"__import__('os').system('true') or 'descr'", 1)})),
        ("not .npy at all", True, members(**{victim: b"hello"})),
        (".npy version 2 (equal data)", False, members(**{victim: npy_bytes(a, (2, 0))})),
        ("members reordered", False, members()[::-1]),
    ]


def fam_weights(rng: random.Random, p: Pristine, case: Path) -> Variant:
    art = copy_dir(p.artifact, case / "a.kiln")
    path = art / fmt.WEIGHTS
    if rng.random() < 0.2:
        data = path.read_bytes()
        # zipfile finds a zip inside a tar (it allows data before the archive): harmless
        what, must = rng.choice((("wrapped in a tar", False), ("random bytes", True),
                                 ("a zip header byte flipped", False)))
        if what == "wrapped in a tar":
            path.write_bytes(tar_of([(member("w.npy"), data)], case / "w.tar").read_bytes())
        elif what == "random bytes":
            path.write_bytes(rng.randbytes(len(data)))
        else:  # outside the arrays' payload: the first 30 bytes are the first local header
            path.write_bytes(flip_bits(data, rng, 1, 0, 30))
    else:
        what, must, members = rng.choice(_weights_ops(pristine_weights(art), rng))
        write_npz(path, members)
    refresh_checksums(art)
    return Variant(art, f"weights.npz: {what} (checksums recomputed)", must)


def fam_archive(rng: random.Random, p: Pristine, case: Path) -> Variant:
    good = artifact_members(p.artifact)
    dropped = rng.choice(good)
    tar = p.archive.read_bytes()
    out = case / "a.kiln.tar"
    ops: list[tuple[str, bool, Callable[[], Any]]] = [
        ("gzip-compressed", True, lambda: out.write_bytes(gzip.compress(tar, 1))),
        ("bzip2-compressed", True, lambda: out.write_bytes(bz2.compress(tar, 1))),
        ("xz-compressed", True, lambda: out.write_bytes(lzma.compress(tar))),
        ("a gzip bomb (1 GiB member in 1 MB)", True, lambda: _gzip_bomb(out)),
        ("a member claiming 8 GiB", True, lambda: _claim(out, fmt.WEIGHTS, 8 << 30)),
        ("a manifest claiming 100 MB", True, lambda: _claim(out, fmt.MANIFEST, 100 << 20)),
        ("an extra member", True,
         lambda: tar_of(good + [(member("rigid.kiln/README"), b"hi")], out)),
        ("an extra .so", True,
         lambda: tar_of(good + [(member("rigid.kiln/evil.so"), b"\x7fELF")], out)),
        ("a member twice", True, lambda: tar_of(good + good[:1], out)),
        ("a symlink member", True, lambda: tar_of(
            [m for m in good if not m[0].name.endswith(fmt.WEIGHTS)]
            + [(member("rigid.kiln/" + fmt.WEIGHTS, tarfile.SYMTYPE, "/etc/passwd"), None)],
            out)),
        ("a hard link member", True, lambda: tar_of(
            [m for m in good if not m[0].name.endswith(fmt.KERNELS)]
            + [(member("rigid.kiln/" + fmt.KERNELS, tarfile.LNKTYPE, "/bin/sh"), None)], out)),
        ("a FIFO member", True, lambda: tar_of(
            good + [(member("rigid.kiln/fifo", tarfile.FIFOTYPE), None)], out)),
        ("a character device member", True, lambda: tar_of(
            [m for m in good if not m[0].name.endswith(fmt.MANIFEST)]
            + [(member("rigid.kiln/" + fmt.MANIFEST, tarfile.CHRTYPE), None)], out)),
        ("a nested folder", True, lambda: tar_of(
            good + [(member("rigid.kiln/sub", tarfile.DIRTYPE), None)], out)),
        ("an absolute name", True,
         lambda: tar_of(good + [(member("/tmp/kiln-evil.so"), b"x")], out)),
        ("a '..' name", True,
         lambda: tar_of(good + [(member("rigid.kiln/../kiln-evil.so"), b"x")], out)),
        ("a deep name", True, lambda: tar_of(good + [(member("a/b/c"), b"x")], out)),
        ("two top folders", True, lambda: tar_of(
            good[:2] + [(member("other.kiln/" + m[0].name.split("/")[1]), m[1])
                        for m in good[2:]], out)),
        ("a backslash name", True,
         lambda: tar_of(good + [(member("rigid.kiln\\evil"), b"x")], out)),
        ("a name that is not UTF-8", True,
         lambda: tar_of(good + [(member("rigid.kiln/\udcff.so"), b"x")], out)),
        (f"{dropped[0].name} missing", True, lambda: tar_of(
            [m for m in good if m[0] is not dropped[0]], out)),
        ("a tar inside a tar", True, lambda: tar_of([(member("inner.tar"), tar)], out)),
        ("a zip", True, lambda: _zip_of(out, good)),
        ("empty", True, lambda: out.write_bytes(b"")),
        ("512 zero bytes", True, lambda: out.write_bytes(bytes(512))),
        ("random bytes", True, lambda: out.write_bytes(rng.randbytes(len(tar)))),
        ("truncated", False, lambda: out.write_bytes(tar[: rng.randrange(len(tar))])),
        ("bits flipped", False, lambda: out.write_bytes(flip_bits(tar, rng, 4))),
        ("a header byte flipped", True, lambda: out.write_bytes(flip_bits(tar, rng, 1, 0, 100))),
        ("no top folder", False, lambda: tar_of(artifact_members(p.artifact, ""), out)),
        ("'./' names", False, lambda: tar_of(artifact_members(p.artifact, "./"), out)),
        ("PAX format", False, lambda: tar_of(good, out, tarfile.PAX_FORMAT)),
        ("USTAR format", False, lambda: tar_of(good, out, tarfile.USTAR_FORMAT)),
        ("members reordered", False, lambda: tar_of(good[::-1], out)),
    ]
    what, must, make = rng.choice(ops)
    make()
    return Variant(out, f"archive: {what}", must)


def _claim(out: Path, name: str, size: int) -> None:
    """A tar whose first member ``name`` claims ``size`` bytes (1 MiB of them is there)."""
    info = member("rigid.kiln/" + name)
    info.size = size
    out.write_bytes(info.tobuf(tarfile.GNU_FORMAT) + bytes(1 << 20))


def _gzip_bomb(out: Path) -> None:
    """gzip of a tar holding a 1 GiB weights.npz: about 1 MB on disk."""
    info = member("rigid.kiln/" + fmt.WEIGHTS)
    info.size = 1 << 30
    out.write_bytes(_deflated(info.tobuf(tarfile.GNU_FORMAT), 1 << 30, bytes(1024), 31))


_DEFLATED: dict[tuple, bytes] = {}


def _deflated(head: bytes, zeros: int, tail: bytes, wbits: int) -> bytes:
    """``head + zeros * b"\\0" + tail`` deflated (``wbits`` 31: gzip, -15: raw), made in
    chunks and kept (the same bombs recur)."""
    key = (head, zeros, tail, wbits)
    if key not in _DEFLATED:
        z = zlib.compressobj(1, zlib.DEFLATED, wbits)
        chunk = bytes(1 << 24)
        parts = [z.compress(head)] + [z.compress(chunk) for _ in range(zeros // len(chunk))]
        _DEFLATED[key] = b"".join(parts) + z.compress(tail) + z.flush()
    return _DEFLATED[key]


def _zip_of(out: Path, good: list) -> None:
    with zipfile.ZipFile(out, "w") as zf:
        for info, data in good:
            zf.writestr(info.name, data)


def fam_paths(rng: random.Random, p: Pristine, case: Path) -> Variant:
    path = case / rng.choice(("a.kiln", "a.kiln.tar"))
    kinds = ["a FIFO", "a symlink to /dev/zero", "a symlink to /dev/null", "a socket",
             "a symlink loop", "missing", "an empty directory", "a directory of junk",
             "a symlink to the pristine artifact"]
    kind = rng.choice(kinds)
    if kind == "an empty directory":
        path.mkdir()
    elif kind == "a directory of junk":
        path.mkdir()
        (path / "notes.txt").write_text("hello")
    elif kind == "a symlink to the pristine artifact":
        os.symlink(p.artifact if path.suffix == ".kiln" else p.archive, path)
        return Variant(path, f"artifact path: {kind}", False)
    else:
        path.touch()
        _replace_with_special(path, kind)
    return Variant(path, f"artifact path: {kind}", True)


def fam_signed(rng: random.Random, p: Pristine, case: Path) -> Variant:
    """Someone without the key alters a signed artifact and recomputes what they can."""
    art = copy_dir(p.signed, case / "a.kiln")
    m = read_manifest(art)
    key = p.key
    ops = ["a weight changed", "two args swapped", "a kernel name swapped", "flops edited",
           "kernels.so code flipped", "kernels.so from the other MLP", "signature removed",
           "signature garbage", "signed with another key", "loaded with another key",
           "signature of another manifest"]
    what = rng.choice(ops)
    if what == "a weight changed":
        arrays = pristine_weights(art)
        name = rng.choice(sorted(arrays))
        arrays[name].flat[rng.randrange(arrays[name].size)] += 1.0
        write_npz(art / fmt.WEIGHTS, [(n + ".npy", npy_bytes(a), zipfile.ZIP_STORED)
                                      for n, a in arrays.items()])
    elif what == "two args swapped":
        k = rng.choice(m["kernels"])
        k["args"][0], k["args"][1] = k["args"][1], k["args"][0]
    elif what == "a kernel name swapped":
        a, b = rng.sample(m["kernels"], 2)
        a["func"], b["func"] = b["func"], a["func"]
    elif what == "flops edited":
        m["kernels"][0]["flops"] += 1
    elif what == "kernels.so code flipped":
        data = (art / fmt.KERNELS).read_bytes()
        (art / fmt.KERNELS).write_bytes(flip_bits(data, rng, 1, 0x1000, 0x3000))
    elif what == "kernels.so from the other MLP":
        shutil.copyfile(p.other_kernels, art / fmt.KERNELS)
    elif what == "signature removed":
        (art / fmt.SIGNATURE).unlink()
    elif what == "signature garbage":
        (art / fmt.SIGNATURE).write_text(rng.randbytes(32).hex() + "\n")
    elif what == "signed with another key":
        (art / fmt.SIGNATURE).write_text(fmt.signature_text(b"k" * 32, "0" * 64))
    elif what == "loaded with another key":
        key = hashlib.sha256(b"another key").digest()
    elif what == "signature of another manifest":
        (art / fmt.SIGNATURE).write_text(fmt.signature_text(key, "0" * 64))
    write_manifest(art, m)
    refresh_checksums(art)
    return Variant(art, f"signed: {what} (checksums and digest recomputed)", True, key)


def fam_control(rng: random.Random, p: Pristine, case: Path) -> Variant:
    which = rng.choice(("directory", "archive", "signed, with its key", "signed, no key"))
    if which == "directory":
        return Variant(copy_dir(p.artifact, case / "a.kiln"), "control: pristine", False)
    if which == "archive":
        shutil.copyfile(p.archive, case / "a.kiln.tar")
        return Variant(case / "a.kiln.tar", "control: pristine archive", False)
    key = p.key if which == "signed, with its key" else None
    return Variant(copy_dir(p.signed, case / "a.kiln"), f"control: {which}", False, key)


#: the order in which cases cycle through the families (weights by repetition)
SCHEDULE: tuple[Family, ...] = (
    fam_control, fam_field, fam_memory, fam_json, fam_flip, fam_field, fam_archive,
    fam_libs, fam_field, fam_weights, fam_memory, fam_digest, fam_field, fam_files,
    fam_json, fam_truncate, fam_field, fam_archive, fam_signed, fam_paths, fam_field,
    fam_memory, fam_weights, fam_libs, fam_field, fam_json, fam_files, fam_signed,
    fam_archive, fam_field,
)


def make_case(seed: int, case: int, p: Pristine, folder: Path) -> tuple[str, Variant]:
    family = SCHEDULE[case % len(SCHEDULE)]
    rng = random.Random(f"{seed}:{case}")
    return family.__name__[4:], family(rng, p, folder)


# -- running a case in a child -------------------------------------------------------------------

CHILD = r"""
import hashlib, json, resource, signal, sys, traceback
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # writing past the limit kills: a bomb
limit = int(sys.argv[4])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

def report(**fields):
    print("MARK" + json.dumps(fields, ensure_ascii=True), flush=True)

def main():
    import numpy as np
    import kiln.runtime
    from kiln.errors import KilnError
    key = None if sys.argv[3] == "-" else bytes.fromhex(sys.argv[3])
    try:
        model = kiln.runtime.load(sys.argv[1], key=key)
        with np.load(sys.argv[2]) as npz:
            arrays = [npz[f"arr_{i}"] for i in range(len(npz.files))]
        outputs = model.run({sig.name: a for sig, a in zip(model.inputs, arrays)})
    except KilnError as e:
        report(status="refused", type=type(e).__name__, message=str(e)[:400])
        return
    except BaseException as e:
        report(status="exception", type=type(e).__name__, message=str(e)[:400],
               traceback=traceback.format_exc()[-3000:])
        return
    digests = []
    for sig, out in zip(model.outputs, outputs):
        h = hashlib.sha256(f"{out.dtype}{list(out.shape)}".encode())
        h.update(np.ascontiguousarray(out).tobytes())
        digests.append([sig.name, h.hexdigest()])
    report(status="ok", outputs=digests)

main()
""".replace("MARK", MARK)


def run_child(path: Path, p: Pristine, key: bytes | None, timeout: float,
              tmp: Path) -> dict[str, Any]:
    """Load and run ``path`` in a fresh Python; its answer, or a crash or hang record."""
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS",)}
    env.update(PYTHONPATH=str(ROOT), TMPDIR=str(tmp), TVM_NUM_THREADS="1")
    args = [sys.executable, "-c", CHILD, str(path), str(p.inputs),
            key.hex() if key else "-", str(CHILD_FILE_LIMIT)]
    try:
        done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"status": "hang", "message": f"no answer in {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    how = (f"killed by signal {-done.returncode}" if done.returncode < 0
           else f"exit status {done.returncode}")
    return {"status": "crash", "message": f"{how}: {done.stderr[-600:]}"}


def classify(result: dict[str, Any], variant: Variant, p: Pristine) -> tuple[str, str]:
    status = result["status"]
    if status == "ok":
        outputs = result["outputs"]
        differ = [name for name, digest in outputs if p.expected.get(name) != digest]
        if differ or not outputs:
            return "wrong", f"outputs {differ or '(none)'} differ from the pristine artifact"
        if variant.must_refuse:
            return "missed", "loaded and ran, but this mutation must be refused"
        return "ok", "same outputs as the pristine artifact"
    detail = result.get("message", "")
    if status == "refused":
        return "refused", f"{result['type']}: {detail}"
    if status == "exception":
        return "exception", f"{result['type']}: {detail}\n{result.get('traceback', '')}"
    return status, detail


@dataclass
class Outcome:
    case: int
    family: str
    what: str
    cls: str
    detail: str


def run_case(seed: int, case: int, p: Pristine, timeout: float, keep: Path | None) -> Outcome:
    folder = Path(tempfile.mkdtemp(prefix=f"case{case}-", dir=keep or p.work))
    try:
        try:
            family, variant = make_case(seed, case, p, folder)
        except Exception as e:  # a bug of the campaign itself: report it, never hide it
            return Outcome(case, "?", "the case failed to build", "exception", repr(e))
        result = run_child(variant.path, p, variant.key, timeout, folder)
        cls, detail = classify(result, variant, p)
        return Outcome(case, family, variant.what, cls, detail)
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)


def campaign(seed: int, cases: list[int], jobs: int, timeout: float, p: Pristine,
             progress: bool) -> list[Outcome]:
    results: list[Outcome] = []
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(run_case, seed, c, p, timeout, None) for c in cases]
        for n, future in enumerate(futures, 1):
            results.append(future.result())
            if progress and (n % 25 == 0 or n == len(futures)):
                bad = sum(r.cls in BAD for r in results)
                print(f"  {n}/{len(futures)} cases, {bad} bad", file=sys.stderr, flush=True)
    return results


def report(results: list[Outcome], seconds: float, show: tuple[str, ...] = ()) -> int:
    counts = Counter(r.cls for r in results)
    print(f"{len(results)} artifact cases in {seconds:.0f} s: "
          + ", ".join(f"{c} {counts[c]}" for c in GOOD + BAD))
    families = sorted({r.family for r in results})
    print("by family: " + "; ".join(
        f"{f} " + "/".join(str(sum(r.family == f and r.cls == c for r in results))
                           for c in GOOD + BAD) for f in families)
        + "  (" + "/".join(GOOD + BAD) + ")")
    for r in results:
        if r.cls in BAD or r.cls in show:
            print(f"\n[{r.cls}] case {r.case} ({r.family}): {r.what}\n  {r.detail}")
    return 1 if any(r.cls in BAD for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=300, help="cases to run (default 300)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="child processes")
    ap.add_argument("--start", type=int, default=0, help="first case number")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per case")
    ap.add_argument("--case", type=int, help="run this one case and show what it did")
    ap.add_argument("--keep", type=Path, metavar="DIR", help="with --case: keep it in DIR")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    ap.add_argument("--show", action="append", default=[], choices=GOOD,
                    help="also list the cases of this good class")
    args = ap.parse_args(argv)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="kiln-artifact-campaign-") as tmp:
        p = build_pristine(Path(tmp), args.seed)
        if args.case is not None:
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
            r = run_case(args.seed, args.case, p, args.timeout, args.keep)
            print(f"case {r.case} ({r.family}): {r.what}\n[{r.cls}] {r.detail}")
            return 1 if r.cls in BAD else 0
        cases = list(range(args.start, args.start + args.count))
        results = campaign(args.seed, cases, args.jobs, args.timeout, p, not args.quiet)
    return report(results, time.time() - t0, tuple(args.show))


if __name__ == "__main__":
    sys.exit(main())
