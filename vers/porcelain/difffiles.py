"""``vers diff A B --files`` and ``--memory``: what changed, in the guest's own terms.

``files_diff`` maps the disk blocks that changed between two commits (from ``repo.diff``, which
prunes equal subtrees) to the guest files they belong to, for ext2/3/4 disks:

1. changed blocks inside inode tables name the inodes that changed (records compared byte by
   byte between A and B, so an untouched neighbour in the same block is not reported);
2. the other changed blocks are explained by those inodes' data and mapping blocks, by the
   journal, by fixed metadata (superblocks, descriptors, bitmaps), or by being free in both
   bitmaps. Only if some allocated block is still unexplained (a file rewritten in place with an
   identical inode, as a second ``mkfs -d`` can produce) are the inode tables scanned for its
   owner, debugfs-``icheck`` style;
3. changed directories are diffed entry by entry (added/deleted names, replaced inodes); changed
   files are compared (size, mode, owner, mtime, content) and their paths found by walking the
   directory tree from the root until every one is placed.

Everything is read through ``repo.open_image(...).pread``: cost follows the changed blocks (and
the directories walked), not the disk size. ``memory_diff`` summarises changed memory pages as
guest-physical ranges (guest-physical address = offset in the memory image).
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from vers.errors import BadInput
from vers.ext4.reader import ROOT_INO, Ext4, Inode
from vers.objects.model import PAGE_SIZE
from vers.repo import Repo


@dataclass
class FileChange:
    path: str
    status: str  # "added", "deleted", "modified"
    kind: str  # "file", "dir", "symlink", "other"
    inode_a: int | None = None
    inode_b: int | None = None
    size_a: int | None = None
    size_b: int | None = None
    changes: list[str] = field(default_factory=list)  # for "modified": what differs

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "status": self.status, "kind": self.kind,
                "inode_a": self.inode_a, "inode_b": self.inode_b, "size_a": self.size_a,
                "size_b": self.size_b, "changes": self.changes}


@dataclass
class FilesDiff:
    a: str
    b: str
    image: str
    changed_blocks: int
    files: list[FileChange]
    block_size: int = 4096
    scanned_inode_tables: bool = False  # True if the slow owner search had to run

    @property
    def changed(self) -> bool:
        return bool(self.files)

    def to_json(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "image": self.image, "block_size": self.block_size,
                "changed_blocks": self.changed_blocks, "changed": self.changed,
                "scanned_inode_tables": self.scanned_inode_tables,
                "files": [f.to_json() for f in self.files]}

    def format_text(self) -> str:
        letter = {"added": "A", "deleted": "D", "modified": "M"}
        lines = []
        for f in self.files:
            suffix = "/" if f.kind == "dir" else ""
            extra = f"  ({', '.join(f.changes)})" if f.changes else ""
            lines.append(f"{letter[f.status]}\t{f.path}{suffix}{extra}")
        return "\n".join(lines)


def files_diff(repo: Repo, a: str, b: str, image: str = "disk") -> FilesDiff:
    """Guest files added, deleted and modified on ext4 image ``image`` between commits a and b."""
    ca, cb = repo.get_commit(a), repo.get_commit(b)
    if image not in ca.images and image not in cb.images:
        raise BadInput(f"neither commit has an image {image!r}")
    fa = _open(repo, ca.id, image) if image in ca.images else None
    fb = _open(repo, cb.id, image) if image in cb.images else None
    if fa is None or fb is None:  # the whole disk appeared or disappeared
        fs = fa or fb
        assert fs is not None
        status = "deleted" if fb is None else "added"
        files = [_entry(p, n, status, fs) for p, n in _walk(fs, ROOT_INO, "")]
        return FilesDiff(ca.id, cb.id, image, 0, files, fs.block_size)
    if fa.geometry() != fb.geometry():
        raise BadInput(f"the filesystems on {image!r} differ in geometry (resized or re-made "
                       "with other options); --files needs the same layout on both sides")
    ranges: list[Any] = next(
        (d.ranges for d in repo.diff(ca.id, cb.id).images if d.name == image), [])
    per_page = PAGE_SIZE // fb.block_size
    changed = {p * per_page + k for r in ranges for p in range(r.start, r.start + r.count)
               for k in range(per_page)}
    if per_page > 1:  # small blocks: keep only those of the changed pages that really differ
        changed = {n for n in changed if fa.block(n) != fb.block(n)}
    return _Differ(fa, fb, changed, ca.id, cb.id, image).run()


def _open(repo: Repo, cid: str, image: str) -> Ext4:
    f = repo.open_image(cid, image)
    return Ext4(f.pread, f.size)


def _walk(fs: Ext4, ino: int, prefix: str) -> list[tuple[str, Inode]]:
    """Every path under directory ``ino`` (breadth first), as (path, inode)."""
    out: list[tuple[str, Inode]] = []
    queue = deque([(ino, prefix)])
    while queue:
        d, path = queue.popleft()
        for name, (child, _t) in sorted(fs.listdir(d).items()):
            if name in (".", ".."):
                continue
            node = fs.inode(child)
            out.append((f"{path}/{name}", node))
            if node.kind == "dir":
                queue.append((child, f"{path}/{name}"))
    return out


def _in_ranges(blk: int, ranges: list[tuple[int, int]]) -> bool:
    return any(start <= blk < start + count for start, count in ranges)


def _entry(path: str, node: Inode, status: str, fs: Ext4) -> FileChange:
    side_a = status == "deleted"
    return FileChange(path, status, node.kind,
                      inode_a=node.ino if side_a else None, inode_b=None if side_a else node.ino,
                      size_a=node.size if side_a else None, size_b=None if side_a else node.size)



class _Differ:
    def __init__(self, fa: Ext4, fb: Ext4, changed: set[int], a: str, b: str, image: str):
        self.fa, self.fb, self.changed = fa, fb, changed
        self.a, self.b, self.image = a, b, image
        self.out: dict[str, FileChange] = {}
        self.scanned = False

    def run(self) -> FilesDiff:
        inodes = self._changed_inodes()
        dirs, files = [], []
        for ino in sorted(inodes):
            if ino < self.fb.first_ino and ino != ROOT_INO:
                continue  # journal, resize inode, ...: not guest files
            na, nb = self.fa.inode(ino), self.fb.inode(ino)
            if not (na.in_use and nb.in_use and na.generation == nb.generation):
                continue  # created or deleted: found through the parent directory's entries
            if na.kind == nb.kind == "dir":
                dirs.append(ino)
            elif na.kind == nb.kind:
                files.append(ino)
        for d in dirs:
            path = self._dir_path(self.fb, d)
            # same number, same place: the same directory (mkfs -d reuses numbers for others)
            if path is not None and path == self._dir_path(self.fa, d):
                self._diff_dir(d, d, path)
                self._compare(path or "/", self.fa.inode(d), self.fb.inode(d))
        pending = {i for i in files if not any(
            c.inode_b == i and c.status != "deleted" for c in self.out.values())}
        for path, ino in self._find_paths(self.fb, pending):
            if self.fa.lookup(path) == ino:
                self._compare(path, self.fa.inode(ino), self.fb.inode(ino))
        files_out = sorted(self.out.values(), key=lambda c: c.path)
        return FilesDiff(self.a, self.b, self.image, len(self.changed), files_out,
                         self.fb.block_size, self.scanned)

    # -- which inodes changed --------------------------------------------------------------
    def _changed_inodes(self) -> set[int]:
        fa, fb = self.fa, self.fb
        per = fb.block_size // fb.inode_size
        out: set[int] = set()
        rest: set[int] = set()
        for blk in self.changed:
            loc = fb.inode_table_block(blk)
            if loc is None:
                rest.add(blk)
                continue
            first = loc[1]
            ba, bb = fa.block(blk), fb.block(blk)
            for k in range(per):
                s = slice(k * fb.inode_size, (k + 1) * fb.inode_size)
                if ba[s] != bb[s]:
                    out.add(first + k)
        if rest:
            known = fb.fixed_metadata()
            for fs in (fa, fb):
                known += fs.block_ranges(fs.inode(fs.journal_ino))
                for ino in out:
                    known += fs.block_ranges(fs.inode(ino))
            rest = {blk for blk in rest if not _in_ranges(blk, known)
                    and (fa.block_in_use(blk) or fb.block_in_use(blk))}
        if rest:
            self.scanned = True
            for node in fb.used_inodes():
                if node.ino in out or node.ino == fb.journal_ino:
                    continue
                owned = fb.block_ranges(node)
                if any(_in_ranges(blk, owned) for blk in rest):
                    out.add(node.ino)
        return out

    # -- paths -----------------------------------------------------------------------------
    def _dir_path(self, fs: Ext4, ino: int) -> str | None:
        parts: list[str] = []
        seen = set()
        while ino != ROOT_INO:
            if ino in seen:
                return None
            seen.add(ino)
            parent = fs.listdir(ino).get("..", (0, 0))[0]
            if not parent:
                return None
            name = next((n for n, (i, _t) in fs.listdir(parent).items()
                         if i == ino and n not in (".", "..")), None)
            if name is None:
                return None
            parts.append(name)
            ino = parent
        return "/" + "/".join(reversed(parts)) if parts else ""

    def _find_paths(self, fs: Ext4, targets: set[int]) -> list[tuple[str, int]]:
        """Paths of ``targets`` (inode numbers): walk directories from the root until all are
        placed (hard links: every name seen until then)."""
        found: list[tuple[str, int]] = []
        left = set(targets)
        queue = deque([(ROOT_INO, "")])
        while queue and left:
            d, path = queue.popleft()
            for name, (child, ftype) in sorted(fs.listdir(d).items()):
                if name in (".", ".."):
                    continue
                if child in targets:
                    found.append((f"{path}/{name}", child))
                    left.discard(child)
                if ftype == 2 or (ftype == 0 and fs.inode(child).kind == "dir"):
                    queue.append((child, f"{path}/{name}"))
        return found

    # -- comparing -------------------------------------------------------------------------
    def _diff_dir(self, da: int, db: int, path: str) -> None:
        ea, eb = self.fa.listdir(da), self.fb.listdir(db)
        for name in sorted(set(ea) | set(eb)):
            if name in (".", ".."):
                continue
            ia, ib = ea.get(name, (0, 0))[0], eb.get(name, (0, 0))[0]
            p = f"{path}/{name}"
            if ia == ib and (not ia or self.fa.inode(ia).generation ==
                             self.fb.inode(ib).generation):
                continue  # same inode: reported (if changed) by its own inode's comparison
            na = self.fa.inode(ia) if ia else None
            nb = self.fb.inode(ib) if ib else None
            if na is not None and nb is not None and na.kind == nb.kind:
                if na.kind == "dir":
                    self._diff_dir(ia, ib, p)
                self._compare(p, na, nb)
                continue
            if na is not None:
                self._add(self.fa, p, na, "deleted")
            if nb is not None:
                self._add(self.fb, p, nb, "added")

    def _add(self, fs: Ext4, path: str, node: Inode, status: str) -> None:
        self.out[path + "\0" + status] = _entry(path, node, status, fs)
        if node.kind == "dir":
            for p, n in _walk(fs, node.ino, path):
                self.out[p + "\0" + status] = _entry(p, n, status, fs)

    def _compare(self, path: str, na: Inode, nb: Inode) -> None:
        what = []
        if na.size != nb.size and na.kind != "dir":  # a directory's size is its entries' business
            what.append("size")
        if na.mode != nb.mode:
            what.append("mode")
        if (na.uid, na.gid) != (nb.uid, nb.gid):
            what.append("owner")
        if na.kind != "dir":
            if (na.mtime, na.mtime_extra) != (nb.mtime, nb.mtime_extra):
                what.append("mtime")
            if self._content_differs(na, nb):
                what.insert(0, "content")
        if what:
            self.out[path + "\0modified"] = FileChange(
                path, "modified", nb.kind, na.ino, nb.ino, na.size, nb.size, what)

    def _content_differs(self, na: Inode, nb: Inode) -> bool:
        if na.size != nb.size:
            return True
        ra, _ = self.fa.extents(na)
        rb, _ = self.fb.extents(nb)
        if ra == rb and na.flags == nb.flags and na.has_block_data:
            return any(blk in self.changed for _l, s, c in rb for blk in range(s, s + c))
        return b"".join(self.fa.read_file(na)) != b"".join(self.fb.read_file(nb)) if \
            na.size <= 64 << 20 else _stream_differs(self.fa, na, self.fb, nb)


def _stream_differs(fa: Ext4, na: Inode, fb: Ext4, nb: Inode) -> bool:
    buf_a = buf_b = b""
    ia, ib = fa.read_file(na), fb.read_file(nb)
    while True:
        while len(buf_a) < 1 << 20:
            piece = next(ia, None)
            if piece is None:
                break
            buf_a += piece
        while len(buf_b) < len(buf_a) or (not buf_a and len(buf_b) < 1 << 20):
            piece = next(ib, None)
            if piece is None:
                break
            buf_b += piece
        n = min(len(buf_a), len(buf_b))
        if buf_a[:n] != buf_b[:n]:
            return True
        if n == 0:
            return len(buf_a) != len(buf_b)
        buf_a, buf_b = buf_a[n:], buf_b[n:]


# -- memory ---------------------------------------------------------------------------------
@dataclass
class MemoryRange:
    start: int  # guest-physical address of the first changed byte
    size: int
    pages: int

    @property
    def end(self) -> int:
        return self.start + self.size

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "size": self.size, "pages": self.pages,
                "start_hex": f"0x{self.start:x}", "end_hex": f"0x{self.end:x}"}


@dataclass
class MemoryDiff:
    a: str
    b: str
    image: str
    memory_size: int
    ranges: list[MemoryRange]

    @property
    def changed_pages(self) -> int:
        return sum(r.pages for r in self.ranges)

    def to_json(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "image": self.image, "memory_size": self.memory_size,
                "changed_pages": self.changed_pages,
                "changed_bytes": self.changed_pages * PAGE_SIZE,
                "ranges": [r.to_json() for r in self.ranges]}

    def format_text(self) -> str:
        lines = [f"0x{r.start:012x}-0x{r.end - 1:012x}  {_human(r.size):>10}  "
                 f"({r.pages} page{'s' if r.pages != 1 else ''} changed)" for r in self.ranges]
        lines.append(f"{self.changed_pages} page(s), {_human(self.changed_pages * PAGE_SIZE)} "
                     f"changed of {_human(self.memory_size)} in {len(self.ranges)} range(s)")
        return "\n".join(lines)


def memory_diff(repo: Repo, a: str, b: str, image: str = "memory", gap: int = 0) -> MemoryDiff:
    """Changed pages of the memory image as guest-physical ranges.

    ``gap``: join ranges separated by at most this many unchanged bytes (0: exact ranges), for a
    coarse picture of a mostly-scattered change; ``pages`` still counts only changed pages.
    """
    ca, cb = repo.get_commit(a), repo.get_commit(b)
    d = next((x for x in repo.diff(ca.id, cb.id).images if x.name == image), None)
    if d is None:
        raise BadInput(f"neither commit has an image {image!r}")
    out: list[MemoryRange] = []
    for r in d.ranges:
        start, size = r.start * PAGE_SIZE, r.count * PAGE_SIZE
        if out and start - out[-1].end <= gap:
            last = out[-1]
            out[-1] = MemoryRange(last.start, start + size - last.start, last.pages + r.count)
        else:
            out.append(MemoryRange(start, size, r.count))
    return MemoryDiff(ca.id, cb.id, image, d.size_b or d.size_a or 0, out)


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}".replace(".0 ", " ")
        n /= 1024  # type: ignore[assignment]
    return str(n)


def render(repo: Repo, a: str, b: str, files: bool, memory: bool, image: str | None,
           fmt: str) -> tuple[str, bool]:
    """What ``vers diff --files/--memory`` prints, and whether anything changed (--exit-code)."""
    parts: list[Any] = []
    if files:
        parts.append(files_diff(repo, a, b, image or "disk"))
    if memory:
        parts.append(memory_diff(repo, a, b, "memory" if files or not image else image))
    changed = any(p.changed if isinstance(p, FilesDiff) else bool(p.ranges) for p in parts)
    if fmt == "json":
        value = {("files" if isinstance(p, FilesDiff) else "memory"): p.to_json() for p in parts}
        return json.dumps(value if len(parts) > 1 else next(iter(value.values())), indent=2,
                          sort_keys=True), changed
    return "\n".join(t for t in (p.format_text() for p in parts) if t), changed
