"""The guest-RAM interface the VM driver talks to: one file QEMU maps with share=on, and how to
find what changed in it.

The driver never asks which implementation it has (``vers.vmm.memory.shm``: a /dev/shm file and a
reference copy; ``vers.vmm.memory.fuse``: a lazily-read, write-tracking FUSE file); it calls the
hooks below at fixed points of run, commit, branch and restore. ``state()`` is saved in the VM
record, so a later ``vers`` command rebuilds the same backing with ``load_backing``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from vers.objects.imagetree import ImageFile


class MemoryBacking(ABC):
    """One VM's guest RAM. Lives across vers commands: ``state()`` is saved in the VM record."""

    kind: ClassVar[str]
    #: True if the file ``fork_begin`` returns may be opened (by the child QEMU) before
    #: ``fork_end``: the branch then starts child QEMUs before pausing the parent.
    opens_before_fork_end: ClassVar[bool] = False
    #: True if ``fork_begin`` copies nothing (so a standby child may hold its result for long;
    #: a pre-copy would go stale and cost a full copy of RAM per VM)
    cheap_fork_begin: ClassVar[bool] = False

    def __init__(self, state: dict[str, Any]) -> None:
        self._state = dict(state)

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this backing cannot work on this machine, or None if it can."""
        return None

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, **self._state}

    @property
    def path(self) -> Path:
        """The file QEMU maps as guest RAM."""
        return Path(self._state["path"])

    @property
    def size(self) -> int:
        return int(self._state["size"])

    @classmethod
    @abstractmethod
    def create(cls, vm_id: str, size: int, source: ImageFile | None = None,
               where: Path | None = None) -> MemoryBacking:
        """New RAM file; ``source`` is a committed image (``repo.open_image``) to start from."""

    def warm_up(self) -> None:
        """Called before the guest is stopped: do any one-off set-up now, not inside the pause."""

    def pre_stop(self) -> None:
        """Called right before the guest is stopped (it still runs): shrink what ``capture`` or
        ``fork_end`` will have to do inside the pause, e.g. flush pages written so far."""

    @abstractmethod
    def capture(self) -> tuple[Path, list[int] | None]:
        """Called with the guest stopped: make an image of RAM as of now that stays stable after
        the guest resumes, and return it with the pages changed since the base commit (None when
        unknown, e.g. on the first commit: the store then reads every page). When the pages are
        given, only they are read, so the file need hold the right bytes only there."""

    @abstractmethod
    def commit_done(self, ok: bool) -> None:
        """The store accepted (or rejected) the last capture as the new base commit."""

    @abstractmethod
    def fork_begin(self, vm_id: str) -> MemoryBacking:
        """Called while the guest still runs: the child's RAM, possibly pre-copied (racy)."""

    @abstractmethod
    def fork_end(self, children: list[MemoryBacking]) -> int:
        """Called with the guest stopped: make every child's RAM equal ours (all of a branch's
        children at once, so what is done once per fork is done once); returns pages fixed."""

    def fork_reference(self, child: MemoryBacking) -> None:
        """After the parent resumed: let the child's first commit be incremental (optional)."""

    def drop_cache(self) -> None:
        """Called once the guest has settled (a branch child after its start-up): give back
        the host page cache of the RAM file that QEMU has not mapped, where the kernel keeps
        more of it than the guest touched (optional, best effort)."""

    def lost(self) -> str | None:
        """Why the RAM file can no longer be used (commit, branch), with what to do; None while
        it is fine. What ``vers ps`` and ``vers status`` report."""
        return None

    @abstractmethod
    def destroy(self) -> None:
        """Remove every file this backing made."""
