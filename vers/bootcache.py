"""Kernels and initrds that restores on this host have used, by the ID of their image tree:
``$XDG_CACHE_HOME/vers/boot/<tree ID>`` (0600 files in a 0700 directory; the newest ``KEEP``).

A restore into a repository that lacks a commit's boot files (a fresh repository restoring
from a remote) takes them from here instead of fetching them: ``vers.vmm.boot`` uses a file
only if it hashes to the commit's tree, so a damaged or foreign file here costs a fetch, never
a wrong kernel.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from vers.files import make_private_dirs, open_private, vers_cache
from vers.objects.model import is_object_id

#: boot files kept (each kernel or initrd ~8 MiB); the least recently used beyond go
KEEP = 8


def boot_cache() -> Path:
    return vers_cache() / "boot"


def cached(tree: str, size: int) -> Path | None:
    """The kept file of image tree ``tree`` if there is one of ``size`` bytes (marked used)."""
    if not is_object_id(tree):
        return None
    path = boot_cache() / tree
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return None
        os.utime(path)
    except OSError:
        return None
    return path


def copy_private(src: Path, dest: Path) -> None:
    """``src`` copied to a new 0600 file ``dest``."""
    fd = open_private(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
        shutil.copyfileobj(f, out, 1 << 20)


def keep(src: Path, tree: str) -> None:
    """Keep a copy of ``src``, the file of image tree ``tree`` (best effort: a cache)."""
    if not is_object_id(tree):
        return
    try:
        d = make_private_dirs(boot_cache())
        tmp = d / f".{tree}.{os.getpid()}.tmp"
        try:
            copy_private(src, tmp)
            os.replace(tmp, d / tree)
        finally:
            tmp.unlink(missing_ok=True)
        kept = sorted(((p.stat().st_mtime, p) for p in d.iterdir() if is_object_id(p.name)),
                      reverse=True)
        for _mtime, p in kept[KEEP:]:
            p.unlink(missing_ok=True)
    except OSError:
        pass


def forget(tree: str) -> None:
    """Drop a kept file that turned out not to be what its name says."""
    if is_object_id(tree):
        (boot_cache() / tree).unlink(missing_ok=True)
