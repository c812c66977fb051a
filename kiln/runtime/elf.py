"""Checks of an ELF shared library before it is dlopen'ed: its structure and its identity.

The checksum in the manifest catches damage; these catch what a checksum cannot, for a file
whose manifest was rewritten to match it:

- structure: a library built for another CPU architecture, or a truncated file. dlopen maps a
  library's segments from the file, so a segment that reaches past the end of the file kills
  the process with SIGBUS on first touch instead of failing cleanly.
- identity: the library is the one its role needs. kernels.so must define every kernel the
  manifest calls (as ``__tvm_ffi_<func>``, what TVM's export writes) and none of the TVM
  runtime's own symbols: a TVM runtime (libtvm_runtime.so, libtvm_ffi.so) loaded a second
  time re-registers its global functions and aborts the process inside dlopen.
  libtvm_runtime.so must define the thread pool and workspace functions that kernels call.

This is no defence against a malicious library (its initializers run at dlopen): an artifact
is code, so load only artifacts you trust (docs/artifact.md, "Trust").
"""

from __future__ import annotations

import platform
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from kiln.errors import ArtifactError
from kiln.runtime.format import open_regular

# e_machine values (System V ABI) of the architectures TVM's LLVM backend targets
_MACHINES = {3: "i386", 40: "arm", 62: "x86_64", 183: "aarch64", 243: "riscv64"}
_HOST = {"x86_64": 62, "amd64": 62, "i386": 3, "i686": 3, "aarch64": 183, "arm64": 183,
         "riscv64": 243}
_PT_LOAD = 1
_ET_DYN = 3
_SHT_DYNSYM = 11

#: the prefix TVM's export gives each kernel's packed-function symbol
KERNEL_SYMBOL_PREFIX = "__tvm_ffi_"
#: symbols only a TVM runtime defines (C API, and C++ in namespaces tvm and tvm::ffi)
_RUNTIME_PREFIXES = ("TVMFFI", "TVMBackend", "TVMAPI", "TVMFunc", "TVMArray", "TVMMod",
                     "_ZN3tvm", "_ZNK3tvm")
#: what generated kernels call in libtvm_runtime.so (the thread pool and workspaces)
RUNTIME_EXPORTS = ("TVMBackendParallelLaunch", "TVMBackendParallelBarrier",
                   "TVMBackendAllocWorkspace", "TVMBackendFreeWorkspace")


@dataclass(frozen=True)
class _Elf:
    name: str
    data: bytes
    wide: bool  # 64-bit
    order: str  # struct byte order
    shoff: int
    shentsize: int
    shnum: int


def check_elf(path: Path) -> None:
    """Raise ArtifactError unless ``path`` is a complete ELF library for this machine.

    Only on Linux (elsewhere libraries are not ELF and the checks are skipped).
    """
    if platform.system() == "Linux":
        _parse(path)


def check_kernels_library(path: Path, funcs: Iterable[str]) -> None:
    """Check kernels.so: complete, for this machine, defining every kernel in ``funcs`` and
    nothing of the TVM runtime's own."""
    if platform.system() != "Linux":
        return
    symbols = defined_symbols(_parse(path))
    foreign = sorted(s for s in symbols if s.startswith(_RUNTIME_PREFIXES))
    if foreign:
        raise ArtifactError(f"{path.name} defines TVM runtime symbols ({foreign[0]}, "
                            f"{len(foreign)} in all): it is a TVM runtime library, not "
                            "generated kernels, and loading it would abort the process; "
                            "rebuild the artifact with `kiln compile`")
    missing = sorted({f for f in funcs if KERNEL_SYMBOL_PREFIX + f not in symbols})
    if missing:
        raise ArtifactError(f"{path.name} does not define the kernel(s) {missing[:5]} that the "
                            "manifest calls: it is not this artifact's kernel library; "
                            "rebuild it with `kiln compile`")


def check_runtime_library(path: Path) -> None:
    """Check libtvm_runtime.so: complete, for this machine, with the functions kernels call."""
    if platform.system() != "Linux":
        return
    symbols = defined_symbols(_parse(path))
    missing = [s for s in RUNTIME_EXPORTS if s not in symbols]
    if missing:
        raise ArtifactError(f"{path.name} does not define {missing[0]}: it is not TVM's "
                            "runtime library; rebuild the artifact with `kiln compile`")


def defined_symbols(elf: _Elf) -> set[str]:
    """Names of the symbols that the library's dynamic symbol table defines (not imports)."""
    names: set[str] = set()
    for offset, size, entsize, link in _sections(elf, _SHT_DYNSYM):
        if entsize < (24 if elf.wide else 16) or link >= elf.shnum:
            raise _damaged(elf.name)
        strtab = _section_bounds(elf, link)
        for at in range(offset + entsize, offset + size - entsize + 1, entsize):  # 0: null
            if elf.wide:
                st_name, _, _, shndx = struct.unpack_from(elf.order + "IBBH", elf.data, at)
            else:
                st_name, shndx = struct.unpack_from(elf.order + "I8xxxH", elf.data, at)
            if shndx != 0:  # SHN_UNDEF: an import
                names.add(_string(elf, strtab, st_name))
    if not names:
        raise ArtifactError(f"{elf.name} has no dynamic symbol table: it is not a library "
                            "that kiln built; rebuild the artifact with `kiln compile`")
    return names


def _parse(path: Path) -> _Elf:
    with open_regular(path) as f:
        data = f.read()
    name = path.name
    if data[:4] != b"\x7fELF" or len(data) < 64 or data[4] not in (1, 2) \
            or data[5] not in (1, 2):
        raise ArtifactError(f"{name} is not an ELF shared library")
    wide, order = data[4] == 2, "<" if data[5] == 1 else ">"
    kind, machine = struct.unpack_from(order + "HH", data, 16)
    if kind != _ET_DYN:
        raise ArtifactError(f"{name} is not an ELF shared library (ELF type {kind})")
    host = _HOST.get(platform.machine().lower())
    if host is not None and machine != host:
        built = _MACHINES.get(machine, f"machine type {machine}")
        raise ArtifactError(f"{name} was built for {built}, but this machine is "
                            f"{platform.machine()}: rebuild the artifact for this machine "
                            "with `kiln compile`")
    if wide:
        phoff, shoff = struct.unpack_from(order + "QQ", data, 32)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", data, 54)
    else:
        phoff, shoff = struct.unpack_from(order + "II", data, 28)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", data, 42)
    size = len(data)
    if phoff + phnum * phentsize > size or (shoff and shoff + shnum * shentsize > size) \
            or (phnum and phentsize < (56 if wide else 32)) \
            or (shnum and shentsize < (64 if wide else 40)):
        raise _damaged(name)
    for i in range(phnum):
        at = phoff + i * phentsize
        if wide:
            p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(order + "IIQQQQ", data, at)
        else:
            p_type, p_offset, _, _, p_filesz = struct.unpack_from(order + "IIIII", data, at)
        if p_type == _PT_LOAD and p_offset + p_filesz > size:
            raise _damaged(name)
    return _Elf(name, data, wide, order, shoff, shentsize, shnum if shoff else 0)


def _sections(elf: _Elf, kind: int) -> list[tuple[int, int, int, int]]:
    """(offset, size, entsize, link) of every section of type ``kind``, bounds-checked."""
    found = []
    for i in range(elf.shnum):
        at = elf.shoff + i * elf.shentsize
        if elf.wide:
            _, sh_type, _, _, offset, size, link, _, _, entsize = struct.unpack_from(
                elf.order + "IIQQQQIIQQ", elf.data, at)
        else:
            _, sh_type, _, _, offset, size, link, _, _, entsize = struct.unpack_from(
                elf.order + "IIIIIIIIII", elf.data, at)
        if sh_type == kind:
            if offset + size > len(elf.data):
                raise _damaged(elf.name)
            found.append((offset, size, entsize, link))
    return found


def _section_bounds(elf: _Elf, index: int) -> tuple[int, int]:
    at = elf.shoff + index * elf.shentsize
    if elf.wide:
        offset, size = struct.unpack_from(elf.order + "QQ", elf.data, at + 24)
    else:
        offset, size = struct.unpack_from(elf.order + "II", elf.data, at + 16)
    if offset + size > len(elf.data):
        raise _damaged(elf.name)
    return offset, offset + size


def _string(elf: _Elf, bounds: tuple[int, int], index: int) -> str:
    start, end = bounds
    if start + index >= end:
        raise _damaged(elf.name)
    stop = elf.data.find(b"\0", start + index, end)
    return elf.data[start + index:stop if stop >= 0 else end].decode("utf-8", "replace")


def _damaged(name: str) -> ArtifactError:
    return ArtifactError(f"{name} is truncated or damaged (its ELF headers point past the end "
                         "of the file): rebuild it with `kiln compile`")
