"""``ShmMemoryBacking``: guest RAM in a /dev/shm file, changed pages found by comparison.

Next to the RAM file it keeps a *reference* copy equal to the memory image of the VM's base commit.
The kernels vers was measured on have no soft-dirty bits (docs/vmm.md), so the changed pages are
found by comparing the two (``changed_pages``); the changed pages are then copied into the
reference, which thereby becomes the captured image that the store reads after the guest has
resumed. The reference costs a second copy of guest RAM in /dev/shm. This is the fallback where
FUSE is not available.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vers.errors import VMError
from vers.objects.imagetree import ImageFile, write_image
from vers.objects.model import PAGE_SIZE
from vers.vmm.memory.base import MemoryBacking
from vers.vmm.private import private_file


def _copy_file(src: Path, dst: Path, size: int) -> None:
    """Kernel-side copy (no page faults in our process); tmpfs supports copy_file_range."""
    private_file(dst, size)
    with open(src, "rb") as fi, open(dst, "r+b") as fo:
        off = 0
        while off < size:
            n = os.copy_file_range(fi.fileno(), fo.fileno(), size - off, off, off)
            if n <= 0:
                break
            off += n
        if off < size:
            fi.seek(off)
            fo.seek(off)
            shutil.copyfileobj(fi, fo, 16 * 1024 * 1024)


def _fill_from_image(dst: Path, source: ImageFile) -> None:
    """Write a committed image into a fresh file, walking its page IDs: a zero page is never read
    and stays a hole."""
    with open(dst, "r+b") as fo:
        write_image(source.reader.store, source.reader.tree, fo)


def changed_pages(a: Path, b: Path, size: int, threads: int = 2) -> list[int]:
    """Indices of the 4 KiB pages where files a and b differ.

    Reads both files in 256 KiB pieces into reused buffers (pread, not mmap: mapping a fresh
    256 MiB file costs ~65k page faults, measured 2-4x slower here), compares each piece as a whole
    first (memcmp) and page by page only where it differs. numpy and the reads release the GIL,
    so two threads use both cores.
    """
    if size <= 0:
        return []
    n_threads = max(1, min(threads, size // (64 * _PIECE) or 1))
    span = -(-size // n_threads // _PIECE) * _PIECE
    ranges = [(lo, min(size, lo + span)) for lo in range(0, size, span)]
    if len(ranges) == 1:
        return _diff_range(a, b, *ranges[0])
    with ThreadPoolExecutor(len(ranges)) as pool:
        parts = list(pool.map(lambda r: _diff_range(a, b, *r), ranges))
    return [p for part in parts for p in part]


_PIECE = 256 * 1024


def _diff_range(a: Path, b: Path, lo: int, hi: int) -> list[int]:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is present wherever vers is tested
        np = None  # type: ignore[assignment]
    ba, bb = bytearray(_PIECE), bytearray(_PIECE)
    out: list[int] = []
    with open(a, "rb", buffering=0) as fa, open(b, "rb", buffering=0) as fb:
        for off in range(lo, hi, _PIECE):
            want = min(_PIECE, hi - off)
            na = os.preadv(fa.fileno(), [memoryview(ba)[:want]], off)
            nb = os.preadv(fb.fileno(), [memoryview(bb)[:want]], off)
            if na != want or nb != want:
                raise VMError(f"short read comparing memory images at offset {off}")
            va, vb = memoryview(ba)[:want], memoryview(bb)[:want]
            if va == vb if want < _PIECE else ba == bb:
                continue
            first = off // PAGE_SIZE
            if np is not None:
                pa = np.frombuffer(ba, dtype=np.uint64, count=want // 8).reshape(-1, PAGE_SIZE // 8)
                pb = np.frombuffer(bb, dtype=np.uint64, count=want // 8).reshape(-1, PAGE_SIZE // 8)
                out.extend((np.flatnonzero((pa != pb).any(axis=1)) + first).tolist())
            else:
                page = PAGE_SIZE
                out.extend(first + i for i in range(want // page)
                           if ba[i * page:(i + 1) * page] != bb[i * page:(i + 1) * page])
    return out


def copy_pages(src: Path, dst: Path, pages: Iterable[int]) -> None:
    """Copy the listed pages from src to dst in place, coalescing runs."""
    runs = _runs(sorted(pages))
    with open(src, "rb") as fi, open(dst, "r+b") as fo:
        for start, count in runs:
            off = start * PAGE_SIZE
            n = os.copy_file_range(fi.fileno(), fo.fileno(), count * PAGE_SIZE, off, off)
            if n != count * PAGE_SIZE:
                data = os.pread(fi.fileno(), count * PAGE_SIZE, off)
                os.pwrite(fo.fileno(), data, off)


def _runs(pages: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for p in pages:
        if runs and runs[-1][0] + runs[-1][1] == p:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((p, 1))
    return runs


class ShmMemoryBacking(MemoryBacking):
    """Guest RAM in /dev/shm (or ``where``), with a reference copy for change detection."""

    kind = "shm"
    opens_before_fork_end = True

    @classmethod
    def create(cls, vm_id: str, size: int, source: ImageFile | None = None,
               where: Path | None = None) -> ShmMemoryBacking:
        base = Path(where or "/dev/shm")
        if not base.is_dir():
            raise VMError(f"memory backing directory {base} does not exist")
        path = base / f"vers-{vm_id}.mem"
        ref = base / f"vers-{vm_id}.ref"
        ref_valid = False
        try:
            private_file(path, size)
            if source is not None:
                _fill_from_image(path, source)
                _copy_file(path, ref, size)
                ref_valid = True
        except BaseException as exc:
            for p in (path, ref):  # no record names them yet: nobody else would remove them
                p.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise VMError(f"cannot create guest RAM in {base}: {exc.strerror}") from exc
            raise
        return cls({"path": str(path), "ref": str(ref), "size": size, "ref_valid": ref_valid})

    @property
    def ref(self) -> Path:
        return Path(self._state["ref"])

    def warm_up(self) -> None:
        try:  # importing numpy costs ~90 ms: not inside the guest's pause
            import numpy  # noqa: F401
        except ImportError:
            pass

    @property
    def _pending(self) -> Path:
        """Exists from a capture until its commit landed: a commit killed in between leaves the
        reference ahead of the base commit, and the VM record cannot say so (it is saved later),
        so the next capture must not trust the reference."""
        return self.ref.with_name(self.ref.name + ".pending")

    def capture(self) -> tuple[Path, list[int] | None]:
        trusted = self._state.get("ref_valid") and self.ref.exists() \
            and not self._pending.exists()
        self._pending.touch(mode=0o600)
        self._state["ref_valid"] = False  # ref now runs ahead of the base commit until commit_done
        if not trusted:
            _copy_file(self.path, self.ref, self.size)
            return self.ref, None
        dirty = changed_pages(self.path, self.ref, self.size)
        copy_pages(self.path, self.ref, dirty)
        return self.ref, dirty

    def commit_done(self, ok: bool) -> None:
        self._state["ref_valid"] = ok
        if ok:
            self._pending.unlink(missing_ok=True)

    def fork_begin(self, vm_id: str) -> ShmMemoryBacking:
        base = self.path.parent
        path = base / f"vers-{vm_id}.mem"
        _copy_file(self.path, path, self.size)
        return ShmMemoryBacking({"path": str(path), "ref": str(base / f"vers-{vm_id}.ref"),
                                 "size": self.size, "ref_valid": False})

    def fork_end(self, children: list[MemoryBacking]) -> int:
        fixed = 0
        for child in children:
            stale = changed_pages(self.path, child.path, self.size)
            copy_pages(self.path, child.path, stale)
            fixed += len(stale)
        return fixed

    def fork_reference(self, child: MemoryBacking) -> None:
        """After the parent resumed: give the child our reference so its first commit is
        incremental too (the child's base commit is ours)."""
        if isinstance(child, ShmMemoryBacking) and self._state.get("ref_valid") \
                and self.ref.exists():
            _copy_file(self.ref, child.ref, self.size)
            child._state["ref_valid"] = True

    def destroy(self) -> None:
        for p in (self.path, self.ref, self._pending):
            p.unlink(missing_ok=True)

