"""``FuseMemoryBacking``: the VMM's ``MemoryBacking`` interface on top of the FUSE backing daemon.

Compared with the default ``ShmMemoryBacking`` (a full copy of RAM in /dev/shm plus a reference
copy, diffed at commit time):

* restore: nothing is copied; the guest's first touch of a page reads it from the store;
* commit: the dirty set comes from the daemon (it saw every write-back), no comparison of RAM;
  the capture is a frozen copy-on-write twin, no copy of the dirty pages;
* branch: ``fork_end`` gives the child a copy-on-write twin, no copy of RAM, so the parent's
  pause does not grow with RAM size.

Registering it (the VMM owns ``vers/vmm/backing.py``)::

    from vers.fuse.vmm_backing import FuseMemoryBacking
    BACKINGS["fuse"] = FuseMemoryBacking
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vers.errors import FuseError, VMError
from vers.fuse.backing import BackingDaemon, BackingFile, base_of_image
from vers.vmm.backing import MemoryBacking


class FuseMemoryBacking(MemoryBacking):
    """Guest RAM as a lazily-read, write-tracking FUSE file. State: path, size, name, state_dir."""

    kind = "fuse"

    @property
    def file(self) -> BackingFile:
        return BackingFile(BackingDaemon(self._state["state_dir"]), self._state["name"], self.size)

    @classmethod
    def create(
        cls, vm_id: str, size: int, source: Any = None, where: Path | None = None
    ) -> FuseMemoryBacking:
        """``source``: ``repo.open_image(commit, "memory")`` (read lazily), a base dict for the
        daemon, or None for zeros. ``where``: the daemon's state directory (default per user)."""
        daemon = BackingDaemon(where)
        base: dict[str, Any] | None
        if source is None or isinstance(source, dict):
            base = source
        else:
            base = base_of_image(source)
            if base is None:
                raise VMError("FUSE memory backing needs a committed image as its source")
        try:
            f = BackingFile.create(daemon, f"{vm_id}.memory", size, base)
        except FuseError as exc:
            raise VMError(f"cannot create FUSE memory backing: {exc}") from exc
        return cls({"path": str(f.path), "size": size, "name": f.name,
                    "state_dir": str(daemon.state_dir)})

    def capture(self) -> tuple[Path, list[int] | None]:
        twin, dirty = self.file.capture()
        self._state["capture"] = twin.name
        return twin.path, dirty

    def commit_done(self, ok: bool) -> None:
        if self._state.pop("capture", None) is not None:
            self.file.capture_done(ok)

    def fork_begin(self, vm_id: str) -> FuseMemoryBacking:
        """Guest still running: nothing to pre-copy, only name the child's file (its path is
        final, so the child's QEMU command line can be prepared now)."""
        name = f"{vm_id}.memory"
        return FuseMemoryBacking({"path": str(self.file.daemon.mountpoint / name),
                                  "size": self.size, "name": name,
                                  "state_dir": self._state["state_dir"]})

    def fork_end(self, child: MemoryBacking) -> int:
        """Guest stopped: freeze our content under both files (copy-on-write). Copies 0 pages."""
        if not isinstance(child, FuseMemoryBacking):
            raise VMError("a FUSE memory backing can only fork into another FUSE memory backing")
        self.file.branch(child._state["name"])
        return 0

    def fork(self, vm_id: str) -> FuseMemoryBacking:
        child = self.fork_begin(vm_id)
        self.fork_end(child)
        return child

    def stats(self) -> dict[str, int]:
        return self.file.stats()

    def destroy(self) -> None:
        self.file.remove()
