"""Guest RAM backing: the file QEMU maps with share=on, and how to find what changed in it.

The driver only talks to the ``MemoryBacking`` interface, so another implementation (the FUSE
engineer's lazily-read, write-tracking memory file, issue #4) can replace the default without
touching the driver: register it in ``BACKINGS`` and name it with ``--memory-backing``.

``ShmMemoryBacking`` (default) keeps guest RAM in a /dev/shm file and, next to it, a *reference*
copy equal to the memory image of the VM's base commit. This kernel has no soft-dirty bits, so the
changed pages are found by comparing the two (see changed_pages and docs/vmm.md); the changed pages
are then copied into the reference, which thereby becomes the captured image that the store reads
after the guest has resumed. The reference costs a second copy of guest RAM in /dev/shm.
"""

from __future__ import annotations

import importlib
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

from vers.errors import VMError

PAGE = 4096


class MemoryBacking(ABC):
    """One VM's guest RAM. Lives across vers commands: ``state()`` is saved in the VM record."""

    kind: ClassVar[str]
    #: True if the file ``fork_begin`` returns may be opened (by the child QEMU) before
    #: ``fork_end``: the branch then starts child QEMUs before pausing the parent.
    opens_before_fork_end: ClassVar[bool] = False
    #: True if ``fork_begin`` copies nothing (so a standby child may hold its result for long;
    #: a pre-copy would go stale and cost a full copy of RAM per VM)
    cheap_fork_begin: ClassVar[bool] = False

    def __init__(self, state: dict[str, Any]) -> None:
        self._state = dict(state)

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, **self._state}

    @property
    def path(self) -> Path:
        """The file QEMU maps as guest RAM."""
        return Path(self._state["path"])

    @property
    def size(self) -> int:
        return int(self._state["size"])

    @classmethod
    @abstractmethod
    def create(cls, vm_id: str, size: int, source: Any = None,
               where: Path | None = None) -> MemoryBacking:
        """New RAM file; ``source`` is a readable image (e.g. repo.open_image) to start from."""

    def warm_up(self) -> None:
        """Called before the guest is stopped: do any one-off set-up now, not inside the pause."""

    def pre_stop(self) -> None:
        """Called right before the guest is stopped (it still runs): shrink what ``capture`` or
        ``fork_end`` will have to do inside the pause, e.g. flush pages written so far. May be
        called more than once (a commit calls it early for the backlog, then right before stop)."""

    @abstractmethod
    def capture(self) -> tuple[Path, list[int] | None]:
        """Called with the guest stopped: make an image of RAM as of now that stays stable after
        the guest resumes, and return it with the pages changed since the base commit (None when
        unknown, e.g. on the first commit: the store then reads every page)."""

    @abstractmethod
    def commit_done(self, ok: bool) -> None:
        """The store accepted (or rejected) the last capture as the new base commit."""

    @abstractmethod
    def fork_begin(self, vm_id: str) -> MemoryBacking:
        """Called while the guest still runs: the child's RAM, possibly pre-copied (racy)."""

    @abstractmethod
    def fork_end(self, child: MemoryBacking) -> int:
        """Called with the guest stopped: make the child's RAM equal ours; returns pages fixed."""

    def fork_reference(self, child: MemoryBacking) -> None:
        """After the parent resumed: let the child's first commit be incremental (optional)."""

    @abstractmethod
    def destroy(self) -> None:
        """Remove every file this backing made."""


def _copy_file(src: Path, dst: Path, size: int) -> None:
    """Kernel-side copy (no page faults in our process); tmpfs supports copy_file_range."""
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        fo.truncate(size)
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


def _fill_from_image(dst: Path, size: int, source: Any) -> None:
    """Write a committed image into a fresh file, skipping zero pages (left as holes)."""
    reader = getattr(source, "reader", None)
    if reader is not None and hasattr(reader, "tree") and hasattr(reader, "store"):
        # a store image (repo.open_image): walk its page IDs, never reading a zero page
        from vers.objects.imagetree import write_image

        with open(dst, "r+b") as fo:
            write_image(reader.store, reader.tree, fo)
        return
    with open(dst, "wb") as fo:
        fo.truncate(size)
        step = 16 * 1024 * 1024
        zero = bytes(step)
        for off in range(0, size, step):
            n = min(step, size - off)
            data = source.pread(off, n) if hasattr(source, "pread") else _seek_read(source, off, n)
            if data != zero[:len(data)]:
                os.pwrite(fo.fileno(), data, off)


def _seek_read(f: Any, off: int, n: int) -> bytes:
    f.seek(off)
    return f.read(n)  # type: ignore[no-any-return]


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
            first = off // PAGE
            if np is not None:
                pa = np.frombuffer(ba, dtype=np.uint64, count=want // 8).reshape(-1, PAGE // 8)
                pb = np.frombuffer(bb, dtype=np.uint64, count=want // 8).reshape(-1, PAGE // 8)
                out.extend((np.flatnonzero((pa != pb).any(axis=1)) + first).tolist())
            else:
                out.extend(first + i for i in range(want // PAGE)
                           if ba[i * PAGE:(i + 1) * PAGE] != bb[i * PAGE:(i + 1) * PAGE])
    return out


def copy_pages(src: Path, dst: Path, pages: Iterable[int]) -> None:
    """Copy the listed pages from src to dst in place, coalescing runs."""
    runs = _runs(sorted(pages))
    with open(src, "rb") as fi, open(dst, "r+b") as fo:
        for start, count in runs:
            off = start * PAGE
            n = os.copy_file_range(fi.fileno(), fo.fileno(), count * PAGE, off, off)
            if n != count * PAGE:
                data = os.pread(fi.fileno(), count * PAGE, off)
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
    #: may commit and branch by QEMU live migration (livecopy.py; experimental, $VERS_LIVE_COPY=1)
    live_capture = True

    @classmethod
    def create(cls, vm_id: str, size: int, source: Any = None,
               where: Path | None = None) -> ShmMemoryBacking:
        base = Path(where or "/dev/shm")
        if not base.is_dir():
            raise VMError(f"memory backing directory {base} does not exist")
        path = base / f"vers-{vm_id}.mem"
        ref = base / f"vers-{vm_id}.ref"
        with open(path, "wb") as f:
            f.truncate(size)
        ref_valid = False
        if source is not None:
            _fill_from_image(path, size, source)
            _copy_file(path, ref, size)
            ref_valid = True
        return cls({"path": str(path), "ref": str(ref), "size": size, "ref_valid": ref_valid})

    @property
    def ref(self) -> Path:
        return Path(self._state["ref"])

    def warm_up(self) -> None:
        try:  # importing numpy costs ~90 ms: not inside the guest's pause
            import numpy  # noqa: F401
        except ImportError:
            pass

    def capture(self) -> tuple[Path, list[int] | None]:
        if not self._state.get("ref_valid") or not self.ref.exists():
            _copy_file(self.path, self.ref, self.size)
            self._state["ref_valid"] = False
            return self.ref, None
        dirty = changed_pages(self.path, self.ref, self.size)
        self._state["ref_valid"] = False  # ref now runs ahead of the base commit until commit_done
        copy_pages(self.path, self.ref, dirty)
        return self.ref, dirty

    def adopt_capture(self, capture: Path) -> list[int] | None:
        """A RAM image captured elsewhere (live migration's shadow): the pages where it differs
        from the reference, or None when the reference is not trusted. The guest runs meanwhile."""
        self._state["pending"] = str(capture)
        if not self._state.get("ref_valid") or not self.ref.exists():
            return None
        return changed_pages(capture, self.ref, self.size)

    def commit_done(self, ok: bool) -> None:
        pending = self._state.pop("pending", None)
        if pending is None:
            self._state["ref_valid"] = ok
        elif ok:  # the capture is the new base commit's image: it becomes the reference
            os.replace(pending, self.ref)
            self._state["ref_valid"] = True
        else:  # the reference still equals the (unchanged) base commit
            Path(pending).unlink(missing_ok=True)

    def fork_begin(self, vm_id: str) -> ShmMemoryBacking:
        base = self.path.parent
        path = base / f"vers-{vm_id}.mem"
        _copy_file(self.path, path, self.size)
        return ShmMemoryBacking({"path": str(path), "ref": str(base / f"vers-{vm_id}.ref"),
                                 "size": self.size, "ref_valid": False})

    def fork_end(self, child: MemoryBacking) -> int:
        stale = changed_pages(self.path, child.path, self.size)
        copy_pages(self.path, child.path, stale)
        return len(stale)

    def fork_reference(self, child: MemoryBacking) -> None:
        """After the parent resumed: give the child our reference so its first commit is
        incremental too (the child's base commit is ours)."""
        if isinstance(child, ShmMemoryBacking) and self._state.get("ref_valid") \
                and self.ref.exists():
            _copy_file(self.ref, child.ref, self.size)
            child._state["ref_valid"] = True

    def destroy(self) -> None:
        for p in (self.path, self.ref):
            p.unlink(missing_ok=True)


BACKINGS: dict[str, type[MemoryBacking]] = {"shm": ShmMemoryBacking}
#: Implementations that live outside vers.vmm, imported only when named (vmm never needs FUSE).
PLUGINS = {"fuse": ("vers.fuse.vmm_backing", "FuseMemoryBacking")}


def backing_class(kind: str) -> type[MemoryBacking]:
    if kind not in BACKINGS and kind in PLUGINS:
        module, attr = PLUGINS[kind]
        try:
            BACKINGS[kind] = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise VMError(f"memory backing {kind!r} is not available: {exc}") from exc
    try:
        return BACKINGS[kind]
    except KeyError as exc:
        known = ", ".join(sorted({*BACKINGS, *PLUGINS}))
        raise VMError(f"unknown memory backing {kind!r} (known: {known})") from exc


def load_backing(state: dict[str, Any]) -> MemoryBacking:
    cls = backing_class(state.get("kind", "shm"))
    return cls({k: v for k, v in state.items() if k != "kind"})
