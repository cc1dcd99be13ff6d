"""Keeping a VM's RAM, disk layers and control sockets to the user who runs it.

Guest RAM and disk layers hold whatever the guest holds (keys, passwords), and a control socket
lets whoever connects drive the VM: files are made 0600 and directories 0700 whatever the umask,
and a directory in a shared place (/tmp, /dev/shm) that another user made, or that others may
write to, is refused rather than used (they could read our files or put their own socket there).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from vers.errors import VMError

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> Path:
    """``path`` as a directory only we can use, made if missing; a VMError if it is not a
    directory, belongs to another user, or others may change it."""
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise VMError(f"cannot use {path}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise VMError(f"{path} is not a directory (a symlink?): refusing to keep VM files there")
    if st.st_uid != os.getuid():
        raise VMError(f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}): "
                      "refusing to keep VM files there; remove it or set TMPDIR/VERS_FUSE_DIR")
    if st.st_mode & 0o022:
        raise VMError(f"{path} can be written by other users (mode {st.st_mode & 0o777:o}): "
                      "refusing to keep VM files there")
    if st.st_mode & 0o077:
        os.chmod(path, DIR_MODE)  # ours, readable by others: nothing of theirs can be in it
    return path


def own_dir(path: Path) -> Path:
    """A directory of our own repository, made or tightened to 0700."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != DIR_MODE:
        os.chmod(path, DIR_MODE)
    return path


def private_file(path: Path, size: int | None = None) -> None:
    """Create (or truncate) ``path`` as a 0600 file; ``size``: make it that long (sparse)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # an existing file keeps its mode through O_CREAT
        if size is not None:
            os.ftruncate(fd, size)
    finally:
        os.close(fd)


def make_private(path: Path) -> None:
    """A file another program made (qemu-img, an export) under the umask: 0600 now."""
    os.chmod(path, FILE_MODE)
