"""Looking at a root file system tree from the host, as the guest will see it.

Paths are resolved inside the root (an absolute symlink such as ``/bin/sh -> /bin/busybox`` points
into the tree, not into the host), so a tree can be checked before it is made into an image.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

#: ELF e_machine values worth naming in an error.
ELF_MACHINES = {3: "i386", 8: "mips", 20: "ppc", 21: "ppc64", 22: "s390x", 40: "arm",
                62: "x86_64", 183: "aarch64", 243: "riscv"}
EM_X86_64 = 62
MAX_SYMLINKS = 40


def resolve_in_root(root: Path, path: str) -> Path | None:
    """Where ``path`` lands inside ``root`` after following symlinks the guest's way; None if it
    does not exist (or the links loop)."""
    parts = [p for p in path.split("/") if p]
    cur: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if cur:
                cur.pop()
            continue
        cand = root.joinpath(*cur, part)
        if cand.is_symlink():
            hops += 1
            if hops > MAX_SYMLINKS:
                return None
            target = os.readlink(cand)
            if target.startswith("/"):
                cur = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        if not cand.exists():
            return None
        cur.append(part)
    return root.joinpath(*cur)


def elf_machine(path: Path) -> tuple[int, int] | None:
    """(ELF class, e_machine) of an ELF file (class 1 = 32-bit, 2 = 64-bit); None if not ELF."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    order = "<" if head[5] == 1 else ">"
    (machine,) = struct.unpack_from(f"{order}H", head, 18)
    return head[4], machine


def machine_name(machine: int) -> str:
    return ELF_MACHINES.get(machine, f"ELF machine {machine}")
