"""What a store reports about itself: the objects a scan finds, its size, what a sweep removed.

fsck and gc read these; they live apart from vers.objects.store (which still exports them) so
that a command that only reads objects does not build them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vers.objects.store import Record


@dataclass(frozen=True)
class StoredObject:
    """One object as a scan of the store finds it: its record, or (``record`` None) why the
    store's index does not lead to one."""

    oid: bytes
    kind: int
    record: Record | None
    problem: str = ""


@dataclass(frozen=True)
class StoreStats:
    objects: int
    bytes: int  # what the stored records take, dead ones not yet reclaimed included


@dataclass
class SweepReport:
    """What a sweep removed (or, dry, would remove)."""

    objects_removed: int = 0
    bytes_removed: int = 0  # payload bytes of the removed objects
    packs_rewritten: int = 0
    young_unreachable: int = 0  # unreachable, but stored too recently to be removed
    dead_bytes_left: int = 0  # removed from the index; their space is reclaimed in a later sweep
