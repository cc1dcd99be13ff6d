"""pyfuse3 adapter for the read-only inspection mount: translates, decides nothing.

Everything about what exists and what it contains is in ``vers.fuse.vfs``. Here, only:
``KeyError``/``ObjectNotFound``/bad revision -> ENOENT, ``CorruptObject`` or any other store
error -> EIO (a read never returns bytes that failed their hash check), write attempts -> EROFS.

Store reads are synchronous LMDB reads: fast, and each handler runs to completion without an
``await`` in the middle, so no read transaction is held while trio waits for the next request.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import pyfuse3

from vers.errors import CorruptObject, ObjectNotFound, RefError, VersError
from vers.fuse.vfs import Attr, RepoView
from vers.objects.model import PAGE_SIZE

log = logging.getLogger(__name__)

T = TypeVar("T")

# Things under commits/ never change: let the kernel cache them for long. Refs and HEAD move.
_IMMUTABLE_TIMEOUT = 3600.0
_MUTABLE_TIMEOUT = 1.0


def translate(fn: Callable[[], T]) -> T:
    """Run one vfs call, mapping its failures to the errno a FUSE client should see."""
    try:
        return fn()
    except pyfuse3.FUSEError:
        raise
    except (KeyError, ObjectNotFound, RefError):
        raise pyfuse3.FUSEError(errno.ENOENT) from None
    except NotADirectoryError:
        raise pyfuse3.FUSEError(errno.ENOTDIR) from None
    except IsADirectoryError:
        raise pyfuse3.FUSEError(errno.EISDIR) from None
    except CorruptObject as exc:
        log.error("%s", exc)
        raise pyfuse3.FUSEError(errno.EIO) from None
    except (VersError, OSError, ValueError) as exc:
        log.error("store error: %s", exc)
        raise pyfuse3.FUSEError(errno.EIO) from None
    except Exception:  # anything else would end pyfuse3.main: fail this call only
        log.exception("unexpected error")
        raise pyfuse3.FUSEError(errno.EIO) from None


def entry_attributes(attr: Attr) -> pyfuse3.EntryAttributes:
    e = pyfuse3.EntryAttributes()
    e.st_ino = attr.inode
    e.generation = 0
    e.st_mode = attr.mode
    e.st_nlink = attr.nlink
    e.st_uid = os.getuid()
    e.st_gid = os.getgid()
    e.st_size = attr.size
    e.st_blksize = PAGE_SIZE
    e.st_blocks = (attr.size + 511) // 512
    e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = attr.mtime_ns
    timeout = _IMMUTABLE_TIMEOUT if attr.immutable else _MUTABLE_TIMEOUT
    e.attr_timeout = timeout
    e.entry_timeout = timeout
    return e


class InspectOperations(pyfuse3.Operations):
    """The read-only view of every commit. File handles are inode numbers (no per-open state)."""

    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, view: RepoView) -> None:
        super().__init__()
        self.view = view

    def _path(self, inode: int) -> str:
        return translate(lambda: self.view.path_of(inode))

    def _child(self, parent: int, name: bytes) -> str:
        parent_path = self._path(parent)
        text = os.fsdecode(name)
        return "/" + text if parent_path == "/" else f"{parent_path}/{text}"

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: Any = None
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        attr = translate(lambda: self.view.getattr(path))
        self.view.remember(path)
        return entry_attributes(attr)

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        path = self._path(inode)
        return entry_attributes(translate(lambda: self.view.getattr(path)))

    async def readlink(self, inode: int, ctx: Any = None) -> bytes:
        path = self._path(inode)
        return os.fsencode(translate(lambda: self.view.readlink(path)))

    async def opendir(self, inode: int, ctx: Any = None) -> int:
        path = self._path(inode)
        if not translate(lambda: self.view.is_dir(path)):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        path = self._path(fh)
        names = translate(lambda: self.view.listdir(path))
        # start_id is the index after the last entry the kernel accepted: a stable sorted listing
        # makes that resumable even when readdir needs several calls.
        for index in range(start_id, len(names)):
            child = "/" + names[index] if path == "/" else f"{path}/{names[index]}"
            try:
                attr = translate(partial(self.view.getattr, child))
            except pyfuse3.FUSEError:
                continue  # vanished between listing and stat (a ref moved): skip, don't fail
            if not pyfuse3.readdir_reply(token, os.fsencode(names[index]),
                                         entry_attributes(attr), index + 1):
                return
            self.view.remember(child)

    async def releasedir(self, fh: int) -> None:
        return None

    async def open(self, inode: int, flags: int, ctx: Any = None) -> pyfuse3.FileInfo:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        path = self._path(inode)
        attr = translate(lambda: self.view.getattr(path))
        if attr.kind == "dir":
            raise pyfuse3.FUSEError(errno.EISDIR)
        fi = pyfuse3.FileInfo(fh=inode)
        fi.keep_cache = attr.immutable  # commit content never changes: keep the page cache
        return fi

    async def read(self, fh: int, off: int, size: int) -> bytes:
        path = self._path(fh)
        return translate(lambda: self.view.read(path, off, size))

    async def release(self, fh: int) -> None:
        return None

    async def forget(self, inode_list: Any) -> None:
        return None  # inode numbers are path hashes: nothing to free, and they stay valid

    async def statfs(self, ctx: Any = None) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = PAGE_SIZE
        s.f_namemax = 255
        return s

    async def access(self, inode: int, mode: int, ctx: Any = None) -> bool:
        return not (mode & os.W_OK)

    # Everything that would change the tree: read-only file system.
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rename(self, *args: Any) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def symlink(self, *args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)
