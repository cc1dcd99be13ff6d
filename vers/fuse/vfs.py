"""What a vers repository looks like as files: defined here and only here.

The layout (all read-only)::

    HEAD                     -> commits/<id>            (symlink; absent in an empty repository)
    commits/<id>/memory      one regular file per image of the commit, size = image size
    commits/<id>/disk ...
    commits/<id>/meta.json   the commit's parents, author, time, message, config and image sizes
    refs/heads/<branch>      -> ../../commits/<id>      (branch names with '/' become directories)
    tags/<tag>               -> ../commits/<id>

This module is pure: it maps paths to attributes, directory listings and bytes, and raises
``KeyError`` (or a ``VersError``) for anything that does not exist. It never imports pyfuse3, so it
is tested without mounting; ``vers.fuse.ops`` only translates it to the FUSE protocol (as borg
splits ``fuse.py`` from its archive model).

Why these choices:

* Inode numbers are a hash of the path, so they are the same on every mount (tools like ``find``,
  ``tar`` and backup programs compare them) and no table has to be persisted.
* ``commits/`` lists only the commits reachable from refs and HEAD (a walk of parents, cached per
  set of ref tips), but *looking up* any full commit ID works, so a mount never has to enumerate
  the store.
* Times are the commit's time, so two mounts of the same history give byte- and stat-identical
  trees.
* Image reads go through ``repo.open_image(...)`` (batched per request by the core's
  ``store.get_pages``): only the pages a read touches are fetched, and all-zero pages are answered
  without a store lookup.
"""

from __future__ import annotations

import json
import stat
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from blake3 import blake3

from vers.errors import BadRevision
from vers.history import ancestors

if TYPE_CHECKING:
    from vers.repo import Repo

ROOT_INODE = 1
_FULL_ID_LEN = 64
_HEX = frozenset("0123456789abcdef")
_OPEN_IMAGE_CACHE = 64  # open image readers kept per mount (cheap objects; avoids re-parsing trees)


class ImageReader(Protocol):
    size: int

    def pread(self, offset: int, n: int) -> bytes: ...


@dataclass(frozen=True)
class Attr:
    """What ``stat`` shows for one path. ``kind`` is 'dir', 'file' or 'link'."""

    inode: int
    kind: str
    size: int
    mtime_ns: int
    nlink: int = 1
    immutable: bool = False  # True when the content can never change (everything under commits/)

    @property
    def mode(self) -> int:
        if self.kind == "dir":
            return stat.S_IFDIR | 0o555
        if self.kind == "link":
            return stat.S_IFLNK | 0o777
        return stat.S_IFREG | 0o444


def inode_of(path: str) -> int:
    """Deterministic inode number for a path (1 for the root).

    63 bits of blake3: a collision among the paths one mount ever shows is vanishingly unlikely, and
    the kernel needs only uniqueness among live inodes.
    """
    if path == "/":
        return ROOT_INODE
    ino = int.from_bytes(blake3(path.encode()).digest(8), "little") & ((1 << 63) - 1)
    return ino if ino > ROOT_INODE else ino + 2


def _is_full_id(name: str) -> bool:
    return len(name) == _FULL_ID_LEN and set(name) <= _HEX


def _join(parent: str, name: str) -> str:
    return "/" + name if parent == "/" else f"{parent}/{name}"


class RepoView:
    """A read-only file-system view of one repository.

    Every method takes a path (absolute, '/'-separated, relative to the mount point). The view holds
    no store transaction between calls: each call reads what it needs and returns, so a long-lived
    daemon never pins an old LMDB snapshot.
    """

    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self._mount_time_ns = time.time_ns()
        self._paths: dict[int, str] = {ROOT_INODE: "/"}
        self._readers: OrderedDict[tuple[str, str], ImageReader] = OrderedDict()
        self._commits: dict[str, Any] = {}
        self._reachable: tuple[tuple[str, ...], list[str]] | None = None

    # ----------------------------------------------------------------- inode table
    def path_of(self, inode: int) -> str:
        """The path an inode number was handed out for (KeyError if never handed out)."""
        return self._paths[inode]

    def remember(self, path: str) -> int:
        ino = inode_of(path)
        self._paths[ino] = path
        return ino

    # ----------------------------------------------------------------- repository access
    def commit(self, cid: str) -> Any:
        c = self._commits.get(cid)
        if c is None:
            try:
                c = self.repo.get_commit(cid)
            except BadRevision:
                raise KeyError(cid) from None
            if c.id != cid:  # a prefix or name resolved to something else: not this path
                raise KeyError(cid)
            self._commits[cid] = c
        return c

    def image(self, cid: str, name: str) -> ImageReader:
        key = (cid, name)
        reader = self._readers.get(key)
        if reader is None:
            if name not in self.commit(cid).images:
                raise KeyError(name)
            reader = self.repo.open_image(cid, name)
            self._readers[key] = reader
            if len(self._readers) > _OPEN_IMAGE_CACHE:
                _, old = self._readers.popitem(last=False)
                close = getattr(old, "close", None)
                if close:
                    close()
        else:
            self._readers.move_to_end(key)
        return reader

    def refs(self, kind: str) -> dict[str, str]:
        """{name: commit id} for 'heads' or 'tags'."""
        return list_refs(self.repo, kind)

    def head(self) -> str | None:
        head = self.repo.head_commit()  # None for an unborn HEAD: then HEAD is simply absent
        return str(head) if head else None

    def reachable_commits(self) -> list[str]:
        """Commits reachable from HEAD, branches and tags (cached while the tips stay the same)."""
        tips = set(self.refs("heads").values()) | set(self.refs("tags").values())
        head = self.head()
        if head:
            tips.add(head)
        key = tuple(sorted(tips))
        if self._reachable is not None and self._reachable[0] == key:
            return self._reachable[1]
        result = sorted(ancestors(self.commit, key))
        self._reachable = (key, result)
        return result

    # ----------------------------------------------------------------- path resolution
    def _split(self, path: str) -> list[str]:
        if not path.startswith("/"):
            raise KeyError(path)
        return [p for p in path.split("/") if p]

    def _ref_target(self, kind: str, name: str) -> str | None:
        """The commit of ref ``name`` or None if ``name`` is a directory of refs (KeyError:
        neither)."""
        refs = self.refs(kind)
        if name in refs:
            return refs[name]
        if any(r.startswith(name + "/") for r in refs):
            return None
        raise KeyError(name)

    def getattr(self, path: str) -> Attr:
        parts = self._split(path)
        ino = inode_of(path)
        dir_attr = Attr(ino, "dir", 0, self._mount_time_ns, nlink=2)
        if not parts:
            return dir_attr
        top = parts[0]
        if top == "HEAD" and len(parts) == 1:
            head = self.head()
            if head is None:
                raise KeyError(path)
            target = self.readlink(path)
            return Attr(ino, "link", len(target), self._commit_time_ns(head))
        if top == "commits":
            if len(parts) == 1:
                return dir_attr
            cid = parts[1]
            if not _is_full_id(cid):
                raise KeyError(path)
            c = self.commit(cid)
            mtime = self._commit_time_ns(cid)
            if len(parts) == 2:
                return Attr(ino, "dir", 0, mtime, nlink=2, immutable=True)
            if len(parts) == 3:
                if parts[2] == "meta.json":
                    return Attr(ino, "file", len(self._meta(cid)), mtime, immutable=True)
                if parts[2] in c.images:
                    return Attr(ino, "file", self.image(cid, parts[2]).size, mtime, immutable=True)
            raise KeyError(path)
        if top in ("refs", "tags"):
            if top == "refs":
                if len(parts) == 1:
                    return dir_attr
                if parts[1] != "heads":
                    raise KeyError(path)
                kind, rest = "heads", parts[2:]
            else:
                kind, rest = "tags", parts[1:]
            if not rest:
                return dir_attr
            ref_target = self._ref_target(kind, "/".join(rest))
            if ref_target is None:
                return dir_attr
            link = self.readlink(path)
            return Attr(ino, "link", len(link), self._commit_time_ns(ref_target))
        raise KeyError(path)

    def is_dir(self, path: str) -> bool:
        return self.getattr(path).kind == "dir"

    def listdir(self, path: str) -> list[str]:
        """Entry names of a directory, sorted (stable readdir offsets need a stable order)."""
        parts = self._split(path)
        if not parts:
            names = ["commits", "refs", "tags"]
            if self.head() is not None:
                names.append("HEAD")
            return sorted(names)
        if parts == ["commits"]:
            return self.reachable_commits()
        if parts[0] == "commits" and len(parts) == 2 and _is_full_id(parts[1]):
            return sorted([*self.commit(parts[1]).images, "meta.json"])
        if parts == ["refs"]:
            return ["heads"]
        if parts[0] == "refs" and len(parts) >= 2 and parts[1] == "heads":
            return self._ref_dir("heads", parts[2:], path)
        if parts[0] == "tags":
            return self._ref_dir("tags", parts[1:], path)
        raise KeyError(path)

    def _ref_dir(self, kind: str, rest: list[str], path: str) -> list[str]:
        prefix = "/".join(rest) + "/" if rest else ""
        names = {r[len(prefix):].split("/", 1)[0] for r in self.refs(kind) if r.startswith(prefix)}
        if rest and not names:
            raise KeyError(path)
        if rest and "/".join(rest) in self.refs(kind):
            raise NotADirectoryError(path)
        return sorted(names)

    def readlink(self, path: str) -> str:
        parts = self._split(path)
        if parts == ["HEAD"]:
            head = self.head()
            if head is None:
                raise KeyError(path)
            return f"commits/{head}"
        if len(parts) >= 3 and parts[:2] == ["refs", "heads"]:
            kind, rest = "heads", parts[2:]
        elif len(parts) >= 2 and parts[0] == "tags":
            kind, rest = "tags", parts[1:]
        else:
            raise KeyError(path)
        target = self._ref_target(kind, "/".join(rest))
        if target is None:
            raise IsADirectoryError(path)
        up = "../" * (len(parts) - 1)
        return f"{up}commits/{target}"

    def read(self, path: str, offset: int, size: int) -> bytes:
        parts = self._split(path)
        if len(parts) != 3 or parts[0] != "commits" or not _is_full_id(parts[1]):
            raise KeyError(path)
        cid, name = parts[1], parts[2]
        if name == "meta.json":
            return self._meta(cid)[offset : offset + size]
        reader = self.image(cid, name)
        if offset >= reader.size:
            return b""
        return reader.pread(offset, min(size, reader.size - offset))

    def walk(self, path: str = "/") -> Iterator[str]:
        """Every path below ``path`` (for tests and tools; the mount never calls this)."""
        yield path
        if self.getattr(path).kind == "dir":
            for name in self.listdir(path):
                yield from self.walk(_join(path, name))

    # ----------------------------------------------------------------- helpers
    def _commit_time_ns(self, cid: str) -> int:
        return self.commit(cid).time_us * 1000

    def _meta(self, cid: str) -> bytes:
        c = self.commit(cid)
        meta = {
            "id": c.id,
            "parents": list(c.parents),
            "author": c.author,
            "time": c.time,
            "time_us": c.time_us,
            "message": c.message,
            "config": c.config,
            "images": {
                name: {"tree": tree, "size": self.image(cid, name).size}
                for name, tree in sorted(c.images.items())
            },
        }
        return (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()


def list_refs(repo: Repo, kind: str) -> dict[str, str]:
    """{short name: commit id} of refs/<kind>/* (symbolic refs followed; dangling ones left out)."""
    prefix = f"refs/{kind}/"
    out: dict[str, str] = {}
    for name, value in repo.refs.list_refs(prefix).items():
        if value.startswith("ref: "):
            resolved = repo.refs.resolve(name)
            if resolved is None:
                continue
            value = resolved
        out[name.removeprefix(prefix)] = value
    return out
