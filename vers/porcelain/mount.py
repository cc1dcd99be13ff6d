"""``vers mount`` / ``vers umount``: every commit of a repository as read-only files."""

from __future__ import annotations

import os
from pathlib import Path

from blake3 import blake3

from vers.errors import BadInput, Busy, FuseError
from vers.fuse import mount as mnt
from vers.repo import Repo


def _log_path(repo: Repo, mountpoint: Path) -> Path:
    key = blake3(os.fsencode(mountpoint)).hexdigest()[:16]
    return Path(repo.vers_dir) / "fuse" / f"mount-{key}.log"


def mount(repo: Repo, mountpoint: str | os.PathLike[str], foreground: bool = False) -> int | None:
    """Mount ``repo`` at ``mountpoint``. Returns the daemon's pid, or None after a foreground run.

    In the background case this returns only once the files are visible; a failure to mount raises
    FuseError with the daemon's reason. A stale mount left by a dead daemon is detached first.
    """
    target = mnt.prepare_mountpoint(mountpoint)
    log = _log_path(repo, target)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()  # also what tells `vers umount` this repository mounted here
    if foreground:
        from vers.fuse.daemon import INSPECT_READ_AHEAD_KB
        from vers.fuse.ops import InspectOperations
        from vers.fuse.serve import serve
        from vers.fuse.vfs import RepoView

        try:
            serve(InspectOperations(RepoView(repo)), os.fspath(target), ("ro",),
                  read_ahead_kb=INSPECT_READ_AHEAD_KB)
        except RuntimeError as exc:
            raise FuseError(f"mount failed: {exc}") from exc
        return None
    return mnt.spawn_daemon(
        "vers.fuse.daemon",
        ["inspect", os.fspath(repo.root), os.fspath(target)],
        log,
    )


def umount(repo: Repo, mountpoint: str | os.PathLike[str], lazy: bool = False) -> None:
    """Unmount an inspection mount of ``repo``; a dead daemon's mount is detached lazily without
    being asked. Any other mount (another repository's, the VM memory backing's that running VMs
    depend on, anything not vers) is refused: one repository must not break another's."""
    # Only mountinfo and fusermount3 here, no access to the mount itself: a stuck daemon must not
    # be able to hang the command that is meant to get rid of it.
    path = mnt.canonical(mountpoint)
    if not mnt.is_mounted(path):
        raise FuseError(f"{mountpoint} is not mounted")
    if not _log_path(repo, Path(path)).exists():
        raise BadInput(f"{mountpoint} is not a `vers mount` of this repository ({repo.root}): "
                       "not unmounting it")
    try:
        mnt.detach(path, lazy=lazy)
    except Busy:
        if _serving(path):
            raise  # files are open on a working mount: only --lazy detaches it
        mnt.detach(path, lazy=True)  # stuck on a dead or stopped daemon: nothing works anyway
    except FuseError:
        mnt.detach(path, lazy=True)  # a dead daemon's mount: detach it anyway
    mnt.wait_unmounted(path)


def _serving(path: str) -> bool:
    """True if the daemon behind ``path`` answers (probed with a timeout, never a hang)."""
    try:
        return not mnt.is_stale(path)
    except FuseError:
        return False  # it does not respond
