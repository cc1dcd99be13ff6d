"""``vers mount`` / ``vers umount``: every commit of a repository as read-only files."""

from __future__ import annotations

import os
from pathlib import Path

from blake3 import blake3

from vers.errors import FuseError
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
        _log_path(repo, target),
    )


def umount(mountpoint: str | os.PathLike[str], lazy: bool = False) -> None:
    """Unmount a vers mount; a dead daemon's mount is detached lazily without being asked."""
    # Only mountinfo and fusermount3 here, no access to the mount itself: a stuck daemon must not
    # be able to hang the command that is meant to get rid of it.
    path = mnt.canonical(mountpoint)
    if not mnt.is_mounted(path):
        raise FuseError(f"{mountpoint} is not mounted")
    try:
        mnt.detach(path, lazy=lazy)
    except FuseError as exc:
        if "busy" in str(exc).lower():
            raise FuseError(f"{exc} (files are open; close them or use --lazy)") from exc
        mnt.detach(path, lazy=True)  # a dead daemon's mount: detach it anyway
    mnt.wait_unmounted(path)
