"""A one-file FUSE file system whose file fails every read with EIO, like a dying disk:
``python3 eio_fs.py MOUNTPOINT SIZE`` serves MOUNTPOINT/bad.img of SIZE bytes until unmounted."""

from __future__ import annotations

import errno
import os
import stat
import sys

import pyfuse3
import trio

FILE_INODE = pyfuse3.ROOT_INODE + 1
NAME = b"bad.img"


class EioFs(pyfuse3.Operations):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None
                      ) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        if inode == pyfuse3.ROOT_INODE:
            attr.st_mode, attr.st_size = stat.S_IFDIR | 0o755, 0
        elif inode == FILE_INODE:
            attr.st_mode, attr.st_size = stat.S_IFREG | 0o644, self.size
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        attr.st_ino = inode
        attr.st_uid, attr.st_gid = os.getuid(), os.getgid()
        return attr

    async def lookup(self, parent: int, name: bytes, ctx: pyfuse3.RequestContext
                     ) -> pyfuse3.EntryAttributes:
        if parent != pyfuse3.ROOT_INODE or name != NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.getattr(FILE_INODE)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if start_id == 0:
            pyfuse3.readdir_reply(token, NAME, await self.getattr(FILE_INODE), 1)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=inode)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        raise pyfuse3.FUSEError(errno.EIO)


def main() -> None:
    mountpoint, size = sys.argv[1], int(sys.argv[2])
    pyfuse3.init(EioFs(size), mountpoint, set(pyfuse3.default_options) | {"fsname=vers-eio"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
