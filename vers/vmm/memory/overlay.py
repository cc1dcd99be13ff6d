"""Page-level copy-on-write images: a commit's image underneath, the VM's writes on top.

An ``OverlayImage`` is what a lazily-restored VM's memory (or disk) file contains::

    top layer        pages this VM wrote since its last branch point   (sparse file + bitmap)
    frozen layers    pages written before each branch point, shared    (read-only, refcounted)
    base             the commit's image, read page by page from the store (or zeros)

A read takes each page from the highest level that has it, in runs, so a 1 MiB read costs a few
``pread`` calls, not 256. A write goes to the top layer only (a partial page is completed from the
levels below first). Branching freezes the top layer and gives parent and child each a new empty top
over it: no page is copied, and neither side sees the other's later writes.

Separately from "which pages does the top layer hold", each image keeps a *dirty* bitmap: pages
written since the last commit of this image. That is exactly the ``dirty=`` set
``repo.snapshot()`` wants, so a commit after restore reads and hashes only the written pages.
A child inherits its parent's dirty bitmap at the branch point, because both continue from the same
last commit.

Pure Python and file descriptors only: no FUSE here, so it is tested directly.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from vers.objects.model import PAGE_SIZE

_ONE = b"\x01"
_ZERO = b"\x00"


class PageSource(Protocol):
    size: int

    def pread(self, offset: int, n: int) -> bytes: ...


class Layer:
    """Pages written at one level: a sparse file at page offsets plus a one-byte-per-page bitmap.

    One byte per page (not one bit) because ``bytearray.find`` then finds runs at C speed; 2 GiB of
    RAM costs a 512 KiB bitmap. Shared by every image that sits above it; the file is deleted when
    the last holder releases it.
    """

    _counter = 0
    _lock = threading.Lock()

    def __init__(self, directory: Path, npages: int) -> None:
        with Layer._lock:
            Layer._counter += 1
            n = Layer._counter
        self.path = directory / f"layer-{os.getpid()}-{n}.pages"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.ftruncate(self.fd, npages * PAGE_SIZE)
        self.present = bytearray(npages)
        self.refs = 1
        self.frozen = False

    def acquire(self) -> Layer:
        self.refs += 1
        return self

    def release(self) -> None:
        self.refs -= 1
        if self.refs == 0 and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def pages_held(self) -> int:
        return len(self.present) - self.present.count(0)


def runs(
    bitmap: bytearray | bytes, start: int = 0, end: int | None = None
) -> Iterator[tuple[int, int]]:
    """(first, count) of each run of non-zero bytes in ``bitmap[start:end]``."""
    end = len(bitmap) if end is None else end
    i = start
    while i < end:
        i = bitmap.find(_ONE, i, end)
        if i < 0:
            return
        j = bitmap.find(_ZERO, i, end)
        j = end if j < 0 else j
        yield i, j - i
        i = j


class OverlayImage:
    """A writable, fixed-size image over a read-only base. See the module docstring."""

    def __init__(
        self,
        directory: Path,
        size: int,
        base: PageSource | None = None,
        frozen: list[Layer] | None = None,
        dirty: bytearray | None = None,
    ) -> None:
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"image size {size} is not a positive multiple of {PAGE_SIZE}")
        if base is not None and base.size != size:
            raise ValueError(f"base image is {base.size} bytes, not {size}")
        self.directory = Path(directory)
        self.size = size
        self.npages = size // PAGE_SIZE
        self.base = base
        self.frozen = frozen or []  # lowest first
        self.top = Layer(self.directory, self.npages)
        self.dirty = dirty if dirty is not None else bytearray(self.npages)
        self.base_bytes_read = 0  # for tests and benchmarks: proof that restore is lazy
        self.bytes_written = 0
        self.closed = False

    # ------------------------------------------------------------------ reads
    def read(self, offset: int, n: int) -> bytes:
        return bytes(self.read_view(offset, n))

    def read_view(self, offset: int, n: int) -> memoryview:
        """Like ``read`` without the final copy (what the FUSE daemon hands the kernel: a guest
        fault on RAM mapped with MADV_HUGEPAGE asks for 2-4 MiB at once, so copies count)."""
        if offset >= self.size or n <= 0:
            return memoryview(b"")
        n = min(n, self.size - offset)
        first = offset // PAGE_SIZE
        last = (offset + n - 1) // PAGE_SIZE
        data = memoryview(self._read_pages(first, last - first + 1))
        skip = offset - first * PAGE_SIZE
        return data[skip : skip + n]

    def _levels(self) -> list[Layer]:
        return [self.top, *reversed(self.frozen)]

    def _read_pages(self, first: int, count: int) -> bytearray:
        out = bytearray(count * PAGE_SIZE)
        self._fill(memoryview(out), first, first, count, self._levels(), 0)
        return out

    def _fill(
        self, out: memoryview, origin: int, first: int, count: int, levels: list[Layer], level: int
    ) -> None:
        """Fill pages [first, first+count) of ``out`` (whose page 0 is ``origin``) from ``level``
        down."""
        end = first + count
        if level == len(levels):
            if self.base is not None:
                data = self.base.pread(first * PAGE_SIZE, count * PAGE_SIZE)
                if len(data) != count * PAGE_SIZE:
                    raise OSError(f"short read from base image at page {first}")
                self.base_bytes_read += len(data)
                pos = (first - origin) * PAGE_SIZE
                out[pos : pos + len(data)] = data
            return  # no base: zeros, already there
        layer = levels[level]
        i = first
        for run_first, run_count in runs(layer.present, first, end):
            if run_first > i:
                self._fill(out, origin, i, run_first - i, levels, level + 1)
            pos = (run_first - origin) * PAGE_SIZE
            want = run_count * PAGE_SIZE
            if os.preadv(layer.fd, [out[pos : pos + want]], run_first * PAGE_SIZE) != want:
                raise OSError(f"short read from layer {layer.path} at page {run_first}")
            i = run_first + run_count
        if i < end:
            self._fill(out, origin, i, end - i, levels, level + 1)

    # ------------------------------------------------------------------ writes
    def write(self, offset: int, data: bytes | memoryview) -> int:
        if offset < 0 or offset + len(data) > self.size:
            raise ValueError(f"write of {len(data)} bytes at {offset} is beyond the image size")
        if not data:
            return 0
        n = len(data)
        first = offset // PAGE_SIZE
        last = (offset + n - 1) // PAGE_SIZE
        head = offset - first * PAGE_SIZE
        tail = (last + 1) * PAGE_SIZE - (offset + n)
        if head or tail:
            # Partial pages: complete them from below first, so the top layer only holds whole
            # pages.
            buf = self._read_pages(first, last - first + 1)
            buf[head : head + n] = data
            os.pwrite(self.top.fd, buf, first * PAGE_SIZE)
        else:
            os.pwrite(self.top.fd, data, offset)
        count = last - first + 1
        self.top.present[first : last + 1] = _ONE * count
        self.dirty[first : last + 1] = _ONE * count
        self.bytes_written += n
        return n

    # ------------------------------------------------------------------ dirty tracking
    def dirty_pages(self) -> list[int]:
        out: list[int] = []
        for first, count in runs(self.dirty):
            out.extend(range(first, first + count))
        return out

    def dirty_runs(self) -> list[tuple[int, int]]:
        return list(runs(self.dirty))

    def mark_clean(self) -> None:
        """The current content is now committed: start a new dirty set."""
        self.dirty = bytearray(self.npages)

    # ------------------------------------------------------------------ branching
    def branch(self) -> OverlayImage:
        """Freeze the current top layer under both self and a new child image; return the child."""
        old_top = self.top
        layers = [*self.frozen, old_top]
        if old_top.pages_held() == 0:  # nothing to freeze: don't grow the chain
            layers = list(self.frozen)
        else:
            old_top.frozen = True
        child = OverlayImage(
            self.directory,
            self.size,
            self.base,
            [layer.acquire() for layer in layers],
            bytearray(self.dirty),
        )
        if layers and layers[-1] is old_top:
            self.frozen = [*self.frozen, old_top]  # self keeps its reference as a frozen layer
            self.top = Layer(self.directory, self.npages)
        return child

    def capture(self) -> OverlayImage:
        """Freeze the content as of now into a read-only twin that owns the current dirty set.

        The twin is what a commit reads while the VM runs on; this image starts a new dirty set
        (pages written after the capture). ``restore_dirty`` undoes that if the commit fails.
        """
        twin = self.branch()
        self.mark_clean()
        return twin

    def dirty_layer_path(self) -> Path | None:
        """The file of the newest frozen layer if it holds every dirty page, else None.

        After one commit interval with no branch in it (the usual case) a capture twin's dirty
        pages are exactly what its newest frozen layer holds, at their own offsets: a commit can
        read them from that file directly instead of through FUSE. The layer stays while the
        twin holds it, and it is frozen, so nothing writes to it any more."""
        if not self.frozen or not any(self.dirty):
            return None
        layer = self.frozen[-1]
        if int.from_bytes(self.dirty, "little") & ~int.from_bytes(layer.present, "little"):
            return None
        return layer.path

    def restore_dirty(self, other: bytearray) -> None:
        """OR another dirty bitmap back in (a failed commit must not lose its pages)."""
        merged = int.from_bytes(self.dirty, "little") | int.from_bytes(other, "little")
        self.dirty = bytearray(merged.to_bytes(self.npages, "little"))

    def squash(self) -> int:
        """Merge the newest frozen layers while nothing else shares them; returns pages copied.

        Without branches every commit freezes one more layer; merging the newest into the one
        below copies only the pages of one commit interval, so the chain stays short and the cost
        follows the dirty pages, not RAM size.
        """
        copied = 0
        while len(self.frozen) >= 2 and self.frozen[-1].refs == 1 and self.frozen[-2].refs == 1:
            upper, lower = self.frozen[-1], self.frozen[-2]
            for first, count in runs(upper.present):
                off = first * PAGE_SIZE
                data = os.pread(upper.fd, count * PAGE_SIZE, off)
                os.pwrite(lower.fd, data, off)
                lower.present[first : first + count] = _ONE * count
                copied += count
            upper.release()
            self.frozen.pop()
        return copied

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.top.release()
        for layer in self.frozen:
            layer.release()

    def stats(self) -> dict[str, int]:
        return {
            "size": self.size,
            "base_bytes_read": self.base_bytes_read,
            "bytes_written": self.bytes_written,
            "dirty_pages": self.npages - self.dirty.count(0),
            "top_pages": self.top.pages_held(),
            "frozen_layers": len(self.frozen),
        }
