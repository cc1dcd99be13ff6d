"""Files and directories vers creates are its owner's alone: 0600 files in 0700 directories,
whatever the umask (machine images and their history can hold anything the guest held).

A umask can only take permissions away, so creating with these modes is enough; existing files
and directories are left as they are.
"""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def make_private_dirs(path: str | os.PathLike[str]) -> Path:
    """``mkdir -p`` where every directory created is 0700."""
    p = Path(path)
    missing = []
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            pass  # another process made it meanwhile
    return Path(path)


def open_private(path: str | os.PathLike[str], flags: int) -> int:
    """``os.open`` that creates the file 0600 (``flags`` should include ``os.O_CREAT``)."""
    return os.open(path, flags, FILE_MODE)


def write_private(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Replace ``path`` by rename, so a reader sees the old or the new content, never half."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = f"{os.fspath(path)}.{os.getpid()}.tmp"
    fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_private(path: str | os.PathLike[str], text: str) -> None:
    with os.fdopen(open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "a",
                   encoding="utf-8") as f:
        f.write(text)


def vers_cache() -> Path:
    """``$XDG_CACHE_HOME/vers`` (default ``~/.cache/vers``): what vers keeps for this user across
    repositories (guest images, boot files, the host's measured TSC rate)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")) / "vers"
