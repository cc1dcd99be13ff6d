"""Images as Merkle trees of pages: build from a file, patch from a dirty set, read, diff.

Level 1 nodes hold page IDs, level L nodes hold level L-1 node IDs, the root is at level
``depth``. Page ``i`` lives under child ``(i // FANOUT**(L-1)) % FANOUT`` at level ``L``. A new node
is stored as a delta against the node at the same position in the base tree (usually the parent
commit's), which keeps an incremental commit's metadata proportional to the pages it changed.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, cast

from vers.errors import BadInput
from vers.objects.model import (
    FANOUT,
    ID_LEN,
    KIND_TREE,
    NODE_ENTRIES_LEN,
    PAGE_SIZE,
    ZERO_ENTRIES,
    ZERO_ID,
    ZERO_PAGE,
    Tree,
    hash_bytes,
    node_bytes,
)
from vers.objects.pagehash import ChunkHasher
from vers.objects.store import ObjectStore, ObjectWriter


class TreeReader:
    """Random access to one image tree: page IDs, pages and nodes, with the store's node cache."""

    def __init__(self, store: ObjectStore, tree: Tree) -> None:
        self.store = store
        self.tree = tree

    def node_at(self, level: int, index: int) -> bytes:
        """Entries of the node at ``level`` covering node-index ``index`` (ZERO_ID if absent)."""
        return self.store.get_node(self.node_id_at(level, index))

    def node_id_at(self, level: int, index: int) -> bytes:
        oid = self.tree.root
        for lvl in range(self.tree.depth, level, -1):
            if oid == ZERO_ID:
                return ZERO_ID
            entries = self.store.get_node(oid)
            child = (index // FANOUT ** (lvl - 1 - level)) % FANOUT
            oid = entries[child * ID_LEN : (child + 1) * ID_LEN]
        return oid

    def page_id(self, page: int) -> bytes:
        entries = self.node_at(1, page // FANOUT)
        j = page % FANOUT
        return entries[j * ID_LEN : (j + 1) * ID_LEN]

    def read_page(self, page: int) -> bytes:
        """The page's bytes, truncated at the image's end."""
        data = self.store.get_page(self.page_id(page))
        end = min(PAGE_SIZE, self.tree.size - page * PAGE_SIZE)
        return data[:end] if end < len(data) else data

    def page_ids(self, first: int, last: int) -> list[bytes]:
        """IDs of pages ``first..last`` (inclusive), one leaf lookup per 256 pages."""
        oids: list[bytes] = []
        page = first
        while page <= last:
            leaf = page // FANOUT
            entries = self.node_at(1, leaf)
            end = min(last + 1, (leaf + 1) * FANOUT)
            j0, j1 = page % FANOUT, (end - 1) % FANOUT + 1
            oids += [entries[j * ID_LEN : (j + 1) * ID_LEN] for j in range(j0, j1)]
            page = end
        return oids

    def pread(self, offset: int, length: int) -> bytes:
        size = self.tree.size
        if offset >= size or length <= 0:
            return b""
        length = min(length, size - offset)
        first, last = offset // PAGE_SIZE, (offset + length - 1) // PAGE_SIZE
        data = b"".join(self.store.get_pages(self.page_ids(first, last)))
        skip = offset - first * PAGE_SIZE
        return data[skip : skip + length]


class _NodeSink:
    """Stores the nodes of a tree being built, as deltas against the base tree when possible."""

    def __init__(self, writer: ObjectWriter, base: TreeReader | None) -> None:
        self.writer = writer
        self.base = base

    def finish(self, level: int, index: int, entries: bytes) -> bytes:
        if entries == ZERO_ENTRIES:
            return ZERO_ID
        data = node_bytes(level, entries)
        oid = hash_bytes(data)
        base_oid = self.base.node_id_at(level, index) if self.base else None
        if oid != base_oid and not self.writer.has(oid):
            self.writer.add_node(oid, data, base_oid)
        return oid


def _compatible_base(store: ObjectStore, base: Tree | None, size: int) -> TreeReader | None:
    if base is None or base.depth != Tree.depth_for(size):
        return None
    return TreeReader(store, base)


def build_tree(
    writer: ObjectWriter,
    source: BinaryIO,
    size: int,
    base: Tree | None = None,
    progress: Callable[[int], None] | None = None,
    helper: bool | None = None,
) -> bytes:
    """Hash and store every page of ``source`` (``size`` bytes); returns the tree's ID.

    Pages equal to the base tree's page at the same index are neither looked up nor stored.
    The image is read in 8 MiB chunks; a large one is hashed on two cores (``pagehash``;
    ``helper`` forces that on or off).
    """
    store = writer.store
    depth = Tree.depth_for(size)
    base_reader = _compatible_base(store, base, size)
    sink = _NodeSink(writer, base_reader)
    # levels[L] collects the child IDs of the node being filled at level L+1.
    levels: list[bytearray] = [bytearray() for _ in range(depth)]
    counts = [0] * depth  # index of the node being filled at each level
    root_holder: list[bytes] = []

    def push(level: int, oid: bytes) -> None:
        levels[level] += oid
        if len(levels[level]) == NODE_ENTRIES_LEN:
            flush_level(level)

    def flush_level(level: int) -> None:
        entries = bytes(levels[level]).ljust(NODE_ENTRIES_LEN, b"\0")
        oid = sink.finish(level + 1, counts[level], entries)
        levels[level] = bytearray()
        counts[level] += 1
        if level + 1 < depth:
            push(level + 1, oid)
        else:
            root_holder.append(oid)

    with ChunkHasher(size, helper) as hasher:
        try:
            for offset, view, ids in hasher.chunks(source):
                first = offset // PAGE_SIZE
                new: dict[bytes, int] = {}  # ID -> its page's index in this chunk
                for a in range(0, len(ids), FANOUT):
                    leaf = ids[a : a + FANOUT]
                    entries = b"".join(leaf)
                    base_leaf = (base_reader.node_at(1, (first + a) // FANOUT)
                                 if base_reader is not None else ZERO_ENTRIES)
                    if entries != base_leaf[: len(entries)]:
                        for j, oid in enumerate(leaf):
                            if oid != ZERO_ID and oid != base_leaf[j * ID_LEN : (j + 1) * ID_LEN]:
                                new.setdefault(oid, a + j)
                    levels[0] += entries
                    if len(levels[0]) == NODE_ENTRIES_LEN:
                        flush_level(0)
                if new:
                    missing = writer.missing(list(new))
                    writer.add_pages([(oid, bytes(view[new[oid] * PAGE_SIZE:
                                                      (new[oid] + 1) * PAGE_SIZE]))
                                      for oid in missing])
                if progress:
                    progress(len(view))
        except EOFError as exc:
            raise BadInput(f"image ended after {exc.args[0]} bytes, expected {size}") from None
    # Close the partial nodes from the bottom up; an empty image still gets a (zero) root.
    for level in range(depth):
        if levels[level] or counts[level] == 0:
            flush_level(level)
    return store_tree(writer, Tree(size=size, root=root_holder[-1], depth=depth))


class _KeepNothing:
    """What ``build_tree`` writes to, keeping nothing: for ``tree_id``."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def missing(self, oids: list[bytes]) -> list[bytes]:
        return []

    def has(self, oid: bytes) -> bool:
        return True

    def add(self, oid: bytes, kind: int, data: bytes, compress: bool = True) -> None:
        pass

    def add_pages(self, pages: list[tuple[bytes, bytes]]) -> None:
        pass


def tree_id(store: ObjectStore, source: BinaryIO, size: int) -> bytes:
    """The ID of the tree ``build_tree`` would make of ``source``, storing nothing (a file
    checked against a tree ID without a copy of it in the store)."""
    return build_tree(cast("ObjectWriter", _KeepNothing(store)), source, size, helper=False)


def store_tree(writer: ObjectWriter, tree: Tree) -> bytes:
    data = tree.serialize()
    oid = hash_bytes(data)
    writer.add(oid, KIND_TREE, data, compress=False)
    return oid


#: the most consecutive dirty pages ``patch_tree`` reads in one ``read_run`` call (1 MiB)
RUN_PAGES = 256


def _runs(pages: list[int]) -> Iterator[tuple[int, int]]:
    """(first page, count) of each run of consecutive pages, at most RUN_PAGES long."""
    i = 0
    while i < len(pages):
        j = i + 1
        while j < len(pages) and pages[j] == pages[j - 1] + 1 and j - i < RUN_PAGES:
            j += 1
        yield pages[i], j - i
        i = j


def patch_tree(
    writer: ObjectWriter,
    base: Tree,
    pages: Iterable[int],
    read_page: Callable[[int], bytes],
    read_run: Callable[[int, int], bytes] | None = None,
) -> bytes:
    """A tree equal to ``base`` except at ``pages``, whose content ``read_page`` supplies.

    Only the listed pages are read and only the nodes above them are rewritten, so the cost follows
    the number of dirty pages, not the image size. ``read_run(first, count)``, if given, reads
    consecutive pages in one call (one system call per run instead of per page: on a FUSE file
    each read is a round trip to its daemon).
    """
    store = writer.store
    reader = TreeReader(store, base)
    sink = _NodeSink(writer, reader)
    changed: dict[int, bytes] = {}
    wanted = sorted(set(pages))
    for p in (wanted[0], wanted[-1]) if wanted else ():
        if not 0 <= p < base.num_pages:
            raise BadInput(f"dirty page {p} outside the image ({base.num_pages} pages)")

    def contents() -> Iterator[tuple[int, bytes]]:
        for first, count in _runs(wanted):
            if read_run is None or count == 1:
                for p in range(first, first + count):
                    yield p, read_page(p)
                continue
            buf = memoryview(read_run(first, count))
            for k in range(count):
                yield first + k, bytes(buf[k * PAGE_SIZE:(k + 1) * PAGE_SIZE])

    new: dict[bytes, bytes] = {}  # pages to store, looked up and compressed a batch at a time

    def store_new() -> None:
        if new:
            missing = writer.missing(list(new))
            writer.add_pages([(oid, new[oid]) for oid in missing])
            new.clear()

    for p, data in contents():
        expect = min(PAGE_SIZE, base.size - p * PAGE_SIZE)
        if len(data) != expect:
            raise BadInput(f"page {p}: read {len(data)} bytes, expected {expect}")
        if data == ZERO_PAGE[:expect]:
            oid = ZERO_ID
        else:
            oid = hash_bytes(data)
            new.setdefault(oid, data)
            if len(new) >= RUN_PAGES:
                store_new()
        changed[p] = oid
    store_new()
    level_changes = changed
    for level in range(1, base.depth + 1):
        by_node: dict[int, dict[int, bytes]] = {}
        for idx, oid in level_changes.items():
            by_node.setdefault(idx // FANOUT, {})[idx % FANOUT] = oid
        next_changes: dict[int, bytes] = {}
        for node_idx, slots in by_node.items():
            entries = bytearray(reader.node_at(level, node_idx))
            for j, oid in slots.items():
                entries[j * ID_LEN : (j + 1) * ID_LEN] = oid
            next_changes[node_idx] = sink.finish(level, node_idx, bytes(entries))
        level_changes = next_changes
    root = level_changes.get(0, base.root)
    return store_tree(writer, Tree(size=base.size, root=root, depth=base.depth))


@dataclass(frozen=True)
class PageRange:
    start: int  # first page
    count: int


def diff_trees(store: ObjectStore, a: Tree, b: Tree) -> list[PageRange]:
    """Page ranges whose content differs; equal subtrees are pruned without being read."""
    if a.depth != b.depth or a.size != b.size:
        n = max(a.num_pages, b.num_pages)
        return [PageRange(0, n)] if n else []
    pages: list[int] = []

    def walk(level: int, base_index: int, x: bytes, y: bytes) -> None:
        if x == y:
            return
        ex, ey = store.get_node(x), store.get_node(y)
        for j in range(FANOUT):
            cx = ex[j * ID_LEN : (j + 1) * ID_LEN]
            cy = ey[j * ID_LEN : (j + 1) * ID_LEN]
            if cx != cy:
                if level == 1:
                    pages.append(base_index * FANOUT + j)
                else:
                    walk(level - 1, base_index * FANOUT + j, cx, cy)

    walk(a.depth, 0, a.root, b.root)
    return merge_ranges(p for p in pages if p < a.num_pages)


def merge_ranges(pages: Iterable[int]) -> list[PageRange]:
    out: list[PageRange] = []
    for p in pages:
        if out and out[-1].start + out[-1].count == p:
            out[-1] = PageRange(out[-1].start, out[-1].count + 1)
        else:
            out.append(PageRange(p, 1))
    return out


class ImageFile(io.RawIOBase):
    """A committed image as a read-only, seekable file; reads touch only the pages they cover."""

    def __init__(self, store: ObjectStore, tree: Tree, name: str = "") -> None:
        super().__init__()
        self.reader = TreeReader(store, tree)
        self.size = tree.size
        self.name = name
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.pread(self._pos, len(b))
        n = len(data)
        memoryview(b)[:n] = data
        self._pos += n
        return n

    def pread(self, offset: int, length: int) -> bytes:
        return self.reader.pread(offset, length)


def write_image(store: ObjectStore, tree: Tree, out: BinaryIO,
                progress: Callable[[int], None] | None = None) -> None:
    """Write an image to a file, seeking over zero pages so the result is sparse; ``progress``
    gets the bytes of each batch of pages done."""
    reader = TreeReader(store, tree)
    size = tree.size
    step = 16 * FANOUT  # 16 MiB of pages per batch
    for first in range(0, tree.num_pages, step):
        last = min(first + step, tree.num_pages) - 1
        oids = reader.page_ids(first, last)
        pages = store.get_pages(oids)
        run_start = None
        for k, oid in enumerate([*oids, ZERO_ID]):
            if oid != ZERO_ID and run_start is None:
                run_start = k
            elif oid == ZERO_ID and run_start is not None:
                off = (first + run_start) * PAGE_SIZE
                out.seek(off)
                out.write(b"".join(pages[run_start:k])[: size - off])
                run_start = None
        if progress:
            progress(min((last + 1) * PAGE_SIZE, size) - first * PAGE_SIZE)
    out.truncate(size)
    end = out.seek(0, os.SEEK_END)
    if end < size:  # in-memory files do not grow on truncate
        out.write(bytes(size - end))
