"""Guest-RAM backings: the file QEMU maps as a VM's memory (``base.MemoryBacking``).

``shm`` (``shm.ShmMemoryBacking``): RAM in /dev/shm plus a reference copy, changed pages found by
comparing the two; works everywhere. ``fuse`` (``fuse.FuseMemoryBacking``): RAM as a file of the
backing daemon (``daemon``, over ``overlay``), read lazily from the store and tracking every write;
the default where FUSE works. Choose with ``vers run --memory-backing`` or $VERS_MEMORY_BACKING.
"""

from __future__ import annotations

import os
from typing import Any

from vers.errors import VMError
from vers.vmm.memory.base import MemoryBacking
from vers.vmm.memory.fuse import FuseMemoryBacking
from vers.vmm.memory.shm import ShmMemoryBacking

BACKINGS: dict[str, type[MemoryBacking]] = {"shm": ShmMemoryBacking, "fuse": FuseMemoryBacking}


def backing_class(kind: str) -> type[MemoryBacking]:
    """The backing named ``kind``; a VMError says why when it is unknown or cannot work here."""
    try:
        cls = BACKINGS[kind]
    except KeyError as exc:
        known = ", ".join(sorted(BACKINGS))
        raise VMError(f"unknown memory backing {kind!r} (known: {known})") from exc
    why = cls.unavailable()
    if why is not None:
        raise VMError(f"memory backing {kind!r} is not available: {why}")
    return cls


def load_backing(state: dict[str, Any]) -> MemoryBacking:
    """The backing a VM record's ``memory`` state describes (in any later vers process)."""
    kind = state.get("kind", "shm")
    if kind not in BACKINGS:
        raise VMError(f"unknown memory backing {kind!r} in a VM record")
    cls = BACKINGS[kind]
    return cls({k: v for k, v in state.items() if k != "kind"})


def default_backing() -> str:
    """Guest RAM backing when none is named: $VERS_MEMORY_BACKING, else the lazily-read,
    write-tracking FUSE file where FUSE works (restore reads no RAM up front, commit and branch
    copy no RAM: see docs/vmm.md for the measurements), else the /dev/shm one."""
    env = os.environ.get("VERS_MEMORY_BACKING")
    if env:
        return env
    return "fuse" if FuseMemoryBacking.unavailable() is None else "shm"


__all__ = ["BACKINGS", "FuseMemoryBacking", "MemoryBacking", "ShmMemoryBacking", "backing_class",
           "default_backing", "load_backing"]
