"""A structural check of an ELF shared library before it is dlopen'ed.

The checksum in the manifest catches damage; this catches what a checksum cannot: a library
built for another CPU architecture, and a truncated file whose manifest was rewritten to
match. dlopen maps a library's segments from the file, so a segment that reaches past the end
of the file kills the process with SIGBUS on first touch instead of failing cleanly.

This is no defence against a malicious library (its initializers run at dlopen): an artifact
is code, so load only artifacts you trust.
"""

from __future__ import annotations

import platform
import struct
from pathlib import Path

from kiln.errors import ArtifactError

# e_machine values (System V ABI) of the architectures TVM's LLVM backend targets
_MACHINES = {3: "i386", 40: "arm", 62: "x86_64", 183: "aarch64", 243: "riscv64"}
_HOST = {"x86_64": 62, "amd64": 62, "i386": 3, "i686": 3, "aarch64": 183, "arm64": 183,
         "riscv64": 243}
_PT_LOAD = 1
_ET_DYN = 3


def check_elf(path: Path) -> None:
    """Raise ArtifactError unless ``path`` is a complete ELF library for this machine.

    Only on Linux (elsewhere libraries are not ELF and the check is skipped).
    """
    if platform.system() != "Linux":
        return
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or len(data) < 64 or data[4] not in (1, 2) \
            or data[5] not in (1, 2):
        raise ArtifactError(f"{path.name} is not an ELF shared library")
    wide, order = data[4] == 2, "<" if data[5] == 1 else ">"
    kind, machine = struct.unpack_from(order + "HH", data, 16)
    if kind != _ET_DYN:
        raise ArtifactError(f"{path.name} is not an ELF shared library (ELF type {kind})")
    host = _HOST.get(platform.machine().lower())
    if host is not None and machine != host:
        built = _MACHINES.get(machine, f"machine type {machine}")
        raise ArtifactError(f"{path.name} was built for {built}, but this machine is "
                            f"{platform.machine()}: rebuild the artifact for this machine "
                            "with `kiln compile`")
    if wide:
        phoff, shoff = struct.unpack_from(order + "QQ", data, 32)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", data, 54)
    else:
        phoff, shoff = struct.unpack_from(order + "II", data, 28)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", data, 42)
    size = len(data)
    truncated = ArtifactError(f"{path.name} is truncated or damaged (its ELF headers point "
                              "past the end of the file): rebuild it with `kiln compile`")
    if phoff + phnum * phentsize > size or (shoff and shoff + shnum * shentsize > size) \
            or (phnum and phentsize < (56 if wide else 32)):
        raise truncated
    for i in range(phnum):
        at = phoff + i * phentsize
        if wide:
            p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(order + "IIQQQQ", data, at)
        else:
            p_type, p_offset, _, _, p_filesz = struct.unpack_from(order + "IIIII", data, at)
        if p_type == _PT_LOAD and p_offset + p_filesz > size:
            raise truncated
