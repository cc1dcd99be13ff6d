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

import os
from pathlib import Path
from typing import Any

from vers.errors import FuseError, VMError
from vers.fuse.backing import BackingDaemon, BackingFile, base_of_image
from vers.objects.model import PAGE_SIZE
from vers.vmm.backing import MemoryBacking


class FuseMemoryBacking(MemoryBacking):
    """Guest RAM as a lazily-read, write-tracking FUSE file. State: path, size, name, state_dir."""

    kind = "fuse"
    #: fork_begin makes the child's file as an empty placeholder that fork_end fills, so a child
    #: QEMU (started with -incoming, which maps guest RAM but touches no page until the device
    #: state loads) can start up while the parent still runs
    opens_before_fork_end = True
    cheap_fork_begin = True

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

    def pre_stop(self) -> None:
        """Write back what the guest dirtied so far while it still runs, so that the flush inside
        the pause only has the pages written since (measured at 1% of RAM dirty: 33 ms of pause
        without, 2-3 ms with). An idle guest re-dirties ~250 pages within ~0.1 s, so one flush
        takes ~10 ms whatever came before."""
        self.file.flush()

    def capture(self) -> tuple[Path, list[int] | None]:
        twin, dirty = self.file.capture()
        self._state["capture"] = twin.name
        return twin.path, dirty

    def commit_done(self, ok: bool) -> None:
        if self._state.pop("capture", None) is not None:
            self.file.capture_done(ok)

    def fork_begin(self, vm_id: str) -> FuseMemoryBacking:
        """Guest still running: nothing to pre-copy; the child's file exists from now on as an
        empty placeholder, so its QEMU can start (and map it) before the parent pauses."""
        try:
            f = self.file.placeholder(f"{vm_id}.memory")
        except FuseError as exc:
            raise VMError(f"cannot create the child's FUSE memory backing: {exc}") from exc
        return FuseMemoryBacking({"path": str(f.path), "size": self.size, "name": f.name,
                                  "state_dir": self._state["state_dir"]})

    def fork_end(self, child: MemoryBacking) -> int:
        """Guest stopped: freeze our content under both files (copy-on-write). Copies 0 pages."""
        if not isinstance(child, FuseMemoryBacking):
            raise VMError("a FUSE memory backing can only fork into another FUSE memory backing")
        try:
            self.file.branch(child._state["name"], into_placeholder=True)
        except FuseError as exc:
            raise VMError(f"cannot fork guest RAM into {child.path}: {exc}") from exc
        return 0

    def stats(self) -> dict[str, int]:
        return self.file.stats()

    def destroy(self) -> None:
        self.file.remove()


DISK_BASE_PREFIX = "disk-"


def _disk_base_name(base: dict[str, Any]) -> str:
    from vers.objects.model import hash_bytes

    repo_tag = hash_bytes(os.fsencode(base["repo"])).hex()[:8]
    return f"{DISK_BASE_PREFIX}{repo_tag}-{base['tree'][:40]}"


def disk_base(repo: Any, commit: str, image: str, where: Path | None = None) -> Path:
    """A commit's disk as a lazily-read file on the backing daemon, for QEMU to use read-only
    under a qcow2 overlay: a restore copies nothing up front, and a block is read from the store
    only when the guest touches it. Shared by every VM of this repository restored from the same
    disk tree."""
    img = repo.open_image(commit, image)
    base = base_of_image(img)
    if base is None or img.size % PAGE_SIZE:
        raise VMError(f"disk {image!r} of {commit[:12]} cannot be served lazily "
                      f"(size {img.size} is not a multiple of {PAGE_SIZE})")
    name = _disk_base_name(base)
    daemon = BackingDaemon(where)
    try:
        daemon.ensure_running()
        if name not in daemon.request("list")["files"]:
            try:
                BackingFile.create(daemon, name, img.size, base)
            except FuseError as exc:
                if "already exists" not in str(exc):  # another restore made it meanwhile
                    raise
    except FuseError as exc:
        raise VMError(f"cannot serve disk {image!r} lazily: {exc}") from exc
    return daemon.mountpoint / name


def release_disk_bases(repo_dir: str | os.PathLike[str], in_use: set[str],
                       where: Path | None = None) -> list[str]:
    """Remove this repository's lazily-served disk bases that no VM's disk chain names (so an idle
    daemon can exit). Returns the names removed."""
    daemon = BackingDaemon(where)
    if not daemon.alive():
        return []
    prefix = _disk_base_name({"repo": os.fspath(repo_dir), "tree": ""})
    removed = []
    try:
        for name in daemon.request("list")["files"]:
            if name.startswith(prefix) and str(daemon.mountpoint / name) not in in_use:
                daemon.request("remove", name=name)
                removed.append(name)
    except FuseError:
        pass  # best effort: a dead daemon holds nothing
    return removed
