"""The VM memory backing daemon: writable, lazily-read image files served over FUSE, one per VM
image. ``python -m vers.vmm.memory.daemon [--ready-fd N] STATE_DIR MOUNTPOINT``; started on first
use by ``vers.vmm.memory.fuse.BackingDaemon``.

One daemon per state directory (one per user by default) serves a flat directory
``<state>/mnt/<name>`` of ``OverlayImage`` files (``vers.vmm.memory.overlay``). QEMU maps a memory
file with ``memory-backend-file,share=on``: the kernel asks this daemon for a page the first time
the guest touches it (we read it from the commit) and writes dirty pages back to us (we keep them
in the overlay and mark them dirty). Parent and child of a branch must share frozen layers, which
is why one daemon serves all the VMs.

A control socket ``<state>/ctl.sock`` (one JSON object per line each way) creates, branches,
queries and removes files. It is served by the same trio loop as FUSE, so control requests and FUSE
operations on the overlays never run concurrently and need no locks. The one thing done elsewhere
is waiting for the pages of a partial store to come from its remote: a read hands that to a worker
thread (``ReadAhead.make_local``) and reads the overlay once they are stored here, so a fetch
never holds up reads of local pages, writes, control requests or other fetches.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import socket
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from vers.errors import BadInput, RemoteError, VersError
from vers.fuse.serve import daemon_main, serve
from vers.objects.imagetree import ImageFile
from vers.objects.model import PAGE_SIZE, hash_bytes, is_object_id
from vers.remote.lazy import (
    FAULT_BLOCK_PAGES,
    LazyObjects,
    ReadAhead,
    TouchRecord,
    open_lazy,
    record_local_restores,
)
from vers.repo import Repo
from vers.vmm.memory.fuse import DAEMON_PROTOCOL
from vers.vmm.memory.overlay import OverlayImage, PageSource, runs

log = logging.getLogger("vers.vmm.memory.daemon")

IDLE_EXIT_SECONDS = 120.0
# Guest RAM of a partial store: a page fault on memory QEMU marks MADV_HUGEPAGE makes the kernel
# read 2-4 MiB around the faulting page. A read-around that needs more than this many pages from
# the remote is refused (EIO): the kernel then reads just the faulting page, which is served with
# its FAULT_AROUND_PAGES-aligned neighbours. A refused read-around costs the guest nothing but a
# round trip; its pages are read when touched. docs/remote.md has the measurements.
READ_AROUND_ABSENT_PAGES = 16
FAULT_AROUND_PAGES = FAULT_BLOCK_PAGES  # 64
REFUSED_SECONDS = 10.0
# The mount's readahead: QEMU reads a disk base with pread through the page cache, and the kernel
# cuts a sequential reader's requests into FUSE reads of this size (128 KiB by default: a lazily
# served disk read at 1 MiB a request went through the daemon in 8x fewer round trips).
BACKING_READ_AHEAD_KB = 4096
_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class BackingFile:
    def __init__(self, inode: int, name: str, image: OverlayImage, tracked: bool) -> None:
        self.inode = inode
        self.name = name
        self.image = image
        #: True when the dirty set is relative to a commit (restored, or committed at least once);
        #: False for a VM booted from zeros, whose first commit must read every page.
        self.tracked = tracked
        self.capture: str | None = None  # name of the pending capture twin, if any
        #: capture twins are read once, page by page, by the commit: no page cache, no readahead
        #: (readahead turned each 4 KiB read of a dirty page into up to 128 KiB of reads)
        self.direct_io = False
        self.open_count = 0
        self.removed = False
        #: a placeholder holds no content yet: a branch child's QEMU may open (not read) it early,
        #: and ``branch`` fills it later. ``touched``: a READ or WRITE reached it, so the kernel
        #: may cache its pages and its content can no longer be swapped underneath.
        self.placeholder = False
        self.touched = False
        self.mtime_ns = time.time_ns()
        #: the first read that failed (a damaged object in the store): QEMU dies of the EIO, and
        #: this is what `vers ps`/`status` and the restore report
        self.read_error: str | None = None
        #: guest RAM, read through page faults only: read-around of absent pages is refused
        #: (see ``BackingOperations.read``); ``refused``: (offset, size) -> when
        self.mapped = False
        self.refused: dict[tuple[int, int], float] = {}


def base_runs(image: OverlayImage, first: int, last: int) -> list[tuple[int, int]]:
    """(first, count) runs of pages ``first..last`` that no layer of ``image`` holds: what a read
    of them takes from its base."""
    held = bytearray(last - first + 1)
    for layer in (image.top, *image.frozen):
        part = layer.present[first:last + 1]
        if part.count(0) != len(part):
            held = bytearray(a | b for a, b in zip(held, part, strict=True))
    return [(first + a, n) for a, n in runs(bytes(1 - h for h in held))]


def _fault_block(f: BackingFile, page: int) -> list[tuple[int, int]]:
    """The runs of the ``FAULT_AROUND_PAGES``-aligned block of ``page`` that ``f`` reads from its
    base: what a fault of guest RAM on ``page`` is served with."""
    a = page - page % FAULT_AROUND_PAGES
    return base_runs(f.image, a, min(a + FAULT_AROUND_PAGES, f.image.npages) - 1)


def remove_orphan_layers(layer_dir: Path) -> int:
    """Delete overlay files left by daemons that died (named layer-<pid>-<n>; pid not alive)."""
    removed = 0
    for path in layer_dir.glob("layer-*-*.pages"):
        try:
            pid = int(path.name.split("-")[1])
            os.kill(pid, 0)
            continue  # its daemon still runs
        except ProcessLookupError:
            pass
        except (ValueError, PermissionError):
            continue
        path.unlink(missing_ok=True)
        removed += 1
    return removed


class BackingOperations(pyfuse3.Operations):
    """FUSE side: a flat directory of fixed-size read-write files. Translates only."""

    supports_dot_lookup = False
    enable_writeback_cache = False  # see docs/fuse.md: fsync flush was measured without it

    def __init__(self, state_dir: Path) -> None:
        super().__init__()
        self.state_dir = state_dir
        self.layer_dir = state_dir / "layers"
        self.layer_dir.mkdir(parents=True, exist_ok=True)
        remove_orphan_layers(self.layer_dir)
        self.by_name: dict[str, BackingFile] = {}
        self.by_inode: dict[int, BackingFile] = {}
        self._next_inode = pyfuse3.ROOT_INODE + 1
        self._repos: dict[str, Repo] = {}
        self._lazy_settings: dict[str, dict[str, Any]] = {}
        self.started_ns = time.time_ns()
        self.last_request = time.monotonic()

    # --------------------------------------------------------------- file table
    def add(self, name: str, image: OverlayImage, tracked: bool = False) -> BackingFile:
        if not name or not set(name) <= _NAME_OK or name.startswith("."):
            image.close()
            raise ValueError(f"bad backing file name {name!r}")
        if name in self.by_name:
            image.close()
            raise ValueError(f"backing file {name} already exists")
        f = BackingFile(self._next_inode, name, image, tracked)
        self._next_inode += 1
        self.by_name[name] = f
        self.by_inode[f.inode] = f
        return f

    def remove(self, name: str) -> None:
        f = self.get(name)
        del self.by_name[name]
        f.removed = True
        try:
            pyfuse3.invalidate_entry_async(pyfuse3.ROOT_INODE, name.encode())
        except Exception as exc:  # noqa: BLE001 - not mounted (tests) or kernel already forgot it
            log.debug("invalidate %s: %s", name, exc)
        if f.open_count == 0:
            self._drop(f)

    def _drop(self, f: BackingFile) -> None:
        self.by_inode.pop(f.inode, None)
        if isinstance(f.image.base, ReadAhead):
            f.image.base.close()  # what it read so far is the record, if none was written yet
        f.image.close()

    def get(self, name: str) -> BackingFile:
        try:
            return self.by_name[name]
        except KeyError:
            raise KeyError(f"no backing file {name}") from None

    def repo(self, path: str) -> Repo:
        repo = self._repos.get(path)
        if repo is None:
            repo = self._repos[path] = Repo(path)
            self._attach_promisors(path, repo)
        return repo

    def _attach_promisors(self, path: str, repo: Repo) -> None:
        """A partial store's absent pages are fetched here, in the daemon, with the settings
        (AWS environment, retry budget) of the client that restored from it."""
        lazy = self._lazy_settings.get(path, {})
        attached = open_lazy(repo, env=lazy.get("env"), retry_seconds=lazy.get("retry_seconds"))
        if attached is not None and path in self._lazy_settings:
            attached.warm()  # a restore from the remote is on its way: its first fault needs them
            commit = lazy.get("commit")
            if commit:  # and of that commit, what its guest will read first
                attached.prefetch_restore(commit, repo.vers_dir,
                                          boot_here=bool(lazy.get("boot_here")))

    def set_promisor_settings(self, path: str, env: dict[str, str],
                              retry_seconds: float | None, commit: str | None = None,
                              boot_here: bool = False) -> None:
        """Sent by a client before it restores from a promisor remote: the repository may have
        become partial since it was opened here, and reads need the client's credentials.
        ``commit``: the commit about to be restored; its trees, nodes and the pages recorded as
        read first are fetched in the background from now on, while the client brings in the
        boot files and starts QEMU."""
        self._lazy_settings[path] = {"env": env, "retry_seconds": retry_seconds,
                                     "commit": commit, "boot_here": boot_here}
        repo = self._repos.get(path)
        if repo is None:
            self.repo(path)
            return
        # Files already served from this repository keep their store; only its promisors change.
        repo.config = json.loads((repo.vers_dir / "config.json").read_text())
        self._attach_promisors(path, repo)

    # --------------------------------------------------------------- FUSE operations
    def _file(self, inode: int) -> BackingFile:
        f = self.by_inode.get(inode)
        if f is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return f

    def _attrs(self, inode: int) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = inode
        e.st_uid = os.getuid()
        e.st_gid = os.getgid()
        e.st_blksize = PAGE_SIZE
        e.attr_timeout = 1.0
        e.entry_timeout = 1.0
        if inode == pyfuse3.ROOT_INODE:
            e.st_mode = stat.S_IFDIR | 0o755
            e.st_nlink = 2
            e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = self.started_ns
            return e
        f = self._file(inode)
        e.st_mode = stat.S_IFREG | 0o600
        e.st_nlink = 0 if f.removed else 1
        e.st_size = f.image.size
        e.st_blocks = f.image.size // 512
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = f.mtime_ns
        return e

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: Any = None
    ) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOENT)
        f = self.by_name.get(os.fsdecode(name))
        if f is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(f.inode)

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attrs(inode)

    async def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any) -> Any:
        f = self._file(inode)
        if fields.update_size and attr.st_size != f.image.size:
            raise pyfuse3.FUSEError(errno.EPERM)  # fixed-size images: guest RAM never resizes
        if fields.update_mtime:
            f.mtime_ns = attr.st_mtime_ns
        return self._attrs(inode)

    async def opendir(self, inode: int, ctx: Any = None) -> int:
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        names = sorted(self.by_name)
        for index in range(start_id, len(names)):
            f = self.by_name[names[index]]
            if not pyfuse3.readdir_reply(token, names[index].encode(), self._attrs(f.inode),
                                         index + 1):
                return

    async def releasedir(self, fh: int) -> None:
        return None

    async def open(self, inode: int, flags: int, ctx: Any = None) -> pyfuse3.FileInfo:
        f = self._file(inode)
        if flags & os.O_TRUNC:
            raise pyfuse3.FUSEError(errno.EPERM)
        f.open_count += 1
        fi = pyfuse3.FileInfo(fh=inode)
        fi.keep_cache = True  # only the kernel changes content (through us): its cache stays right
        fi.direct_io = f.direct_io
        return fi

    async def read(self, fh: int, off: int, size: int) -> bytes:
        f = self._file(fh)
        f.touched = True
        try:
            base = f.image.base
            if isinstance(base, ReadAhead) and size > 0 and off < f.image.size:
                # Pages of a partial store may have to come from the remote: wait for them on a
                # worker thread, so this loop serves other requests meanwhile. The read itself
                # runs here, like every other operation on the overlay (no locks needed).
                first = off // PAGE_SIZE
                last = (min(off + size, f.image.size) - 1) // PAGE_SIZE
                need = base_runs(f.image, first, last)
                # A complete store has nothing to fetch: its reads are only recorded, while the
                # restore's first moments are (the pages not handed out yet stand in for the
                # absent ones, so the record is made as a lazy restore would fetch).
                local = not base.lazy
                if local and not base.recording():
                    need = []
                if need and f.mapped and last > first and self._may_refuse(f, off, size):
                    absent = (base.unrecorded_pages(need) if local else
                              await trio.to_thread.run_sync(base.absent_pages, need))
                    if absent > READ_AROUND_ABSENT_PAGES:
                        f.refused[(off, size)] = time.monotonic()
                        raise pyfuse3.FUSEError(errno.EIO)  # not a read error of the file
                if need:
                    if f.mapped and last == first:  # a fault's own page: bring its neighbours too
                        need = _fault_block(f, first)
                    if local:
                        base.note(need)
                    else:
                        await trio.to_thread.run_sync(base.make_local, need)
            return f.image.read_view(off, size)  # type: ignore[return-value]  # any buffer will do
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:  # noqa: BLE001 - a store error must surface as EIO, never as wrong bytes
            log.error("read %s at %d: %s", f.name, off, exc)
            if f.read_error is None:
                f.read_error = f"reading page {off // PAGE_SIZE} failed: {exc}"
            raise pyfuse3.FUSEError(errno.EIO) from None

    @staticmethod
    def _may_refuse(f: BackingFile, off: int, size: int) -> bool:
        """Whether a read-around of ``f`` may be refused: not if the same request was refused
        moments ago (a kernel that reads whole large folios retries with the same request, and
        a second refusal would be a fault that fails)."""
        now = time.monotonic()
        when = f.refused.pop((off, size), None)
        if len(f.refused) > 4096:
            f.refused = {k: t for k, t in f.refused.items() if now - t < REFUSED_SECONDS}
        return when is None or now - when >= REFUSED_SECONDS

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        f = self._file(fh)
        f.touched = True
        if off + len(buf) > f.image.size:
            raise pyfuse3.FUSEError(errno.EFBIG)
        try:
            return f.image.write(off, buf)
        except OSError as exc:  # e.g. ENOSPC in the overlay directory: the writer must see it
            log.error("write %s at %d: %s", f.name, off, exc)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:  # anything else would end pyfuse3.main
            log.exception("write %s at %d", f.name, off)
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def fsync(self, fh: int, datasync: bool) -> None:
        # The kernel has already written back the inode's dirty pages (as WRITE requests) before it
        # sends FSYNC: that is what makes fsync on any fd the flush point of a commit.
        return None

    async def flush(self, fh: int) -> None:
        return None

    async def release(self, fh: int) -> None:
        f = self.by_inode.get(fh)
        if f is None:
            return
        f.open_count -= 1
        if f.removed and f.open_count == 0:
            self._drop(f)

    async def forget(self, inode_list: Any) -> None:
        return None

    async def statfs(self, ctx: Any = None) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = PAGE_SIZE
        s.f_namemax = 255
        return s

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EPERM)  # files are made through the control socket

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        raise pyfuse3.FUSEError(errno.EPERM)

    # --------------------------------------------------------------- control requests
    def open_base(self, base: dict[str, Any], mapped: bool = False) -> PageSource:
        """A commit's image as a page source: {"repo", "commit", "image"} or {"repo", "tree"}."""
        repo = self.repo(base["repo"])
        if base.get("tree"):
            tree = repo.store.get_tree(bytes.fromhex(base["tree"]))
            image = ImageFile(repo.store, tree, base.get("image", ""))
        else:
            image = repo.open_image(base["commit"], base.get("image", "memory"))
        # A partial store's pages come from its promisor: read ahead of sequential reads, and
        # prefetch (then record) what a restore of this image reads first. A complete store
        # with a remote records what a restore reads first too, once per image, for a push to
        # share (``record_local_restores``).
        tree_id = base.get("tree") or hash_bytes(image.reader.tree.serialize()).hex()
        if not repo.promisors():
            record = TouchRecord(repo.vers_dir, tree_id)
            if not record_local_restores(repo) or record.path.exists():
                return image
            return ReadAhead(image, record, read_ahead=False)
        lazy = repo.store.absent
        remote = lazy.promisors[0] if isinstance(lazy, LazyObjects) and lazy.promisors else None
        commit_id = None if base.get("tree") else repo.get_commit(base["commit"]).id
        return ReadAhead(image, TouchRecord(repo.vers_dir, tree_id, remote),
                         read_ahead=not mapped, commit_id=commit_id)

    def restore_from_remote(self, req: dict[str, Any]) -> LazyObjects:
        """``promisor_settings`` with the commit to restore; the repository's lazy store, for
        the caller to run ``prepare_restore`` on a worker thread."""
        _check_commit_id(req.get("commit"))
        self.set_promisor_settings(req["repo"], dict(req.get("env") or {}),
                                   req.get("retry_seconds"), req["commit"], boot_here=True)
        lazy = self.repo(req["repo"]).store.absent
        if not isinstance(lazy, LazyObjects):
            raise BadInput(f"{req['repo']} has no promisor remote")
        return lazy

    def control(self, req: dict[str, Any]) -> dict[str, Any]:
        """One control request -> one reply. Plain function: tested without sockets."""
        op = req.get("op")
        if op == "ping":
            return {"pid": os.getpid(), "protocol": DAEMON_PROTOCOL}
        if op == "list":
            return {"files": sorted(self.by_name)}
        if op == "promisor_settings":
            commit = req.get("commit")
            if commit is not None:
                _check_commit_id(commit)
            self.set_promisor_settings(req["repo"], dict(req.get("env") or {}),
                                       req.get("retry_seconds"), commit)
            return {}
        if op == "create":
            size = int(req["size"])
            base = (self.open_base(req["base"], bool(req.get("mapped"))) if req.get("base")
                    else None)
            if base is not None and base.size != size:
                raise ValueError(f"base image is {base.size} bytes, not {size}")
            f = self.add(req["name"], OverlayImage(self.layer_dir, size, base), base is not None)
            f.placeholder = bool(req.get("placeholder")) and base is None
            f.mapped = bool(req.get("mapped"))
            return {"inode": f.inode}
        f = self.get(req["name"])
        if op == "branch":
            if req.get("into_placeholder"):
                self._fill_placeholders(req.get("children") or [req["child"]], f)
            else:
                self.add(req["child"], f.image.branch(), f.tracked).mapped = f.mapped
            return {}
        if op == "dirty":
            return {"runs": f.image.dirty_runs() if f.tracked else None}
        if op == "mark_clean":
            f.image.mark_clean()
            f.tracked = True
            return {}
        if op == "capture":
            given_back = 0
            if f.capture is not None:
                if not req.get("give_back_pending"):
                    raise ValueError(f"{f.name} already has a pending capture {f.capture}")
                given_back = self._settle_capture(f, ok=False)
            twin = self.add(req["capture"], f.image.capture(), f.tracked)
            twin.direct_io = True
            f.capture = twin.name
            pages = twin.image.dirty_layer_path() if f.tracked else None
            return {"runs": twin.image.dirty_runs() if f.tracked else None,
                    "given_back": given_back, "pages_file": pages and str(pages)}
        if op == "capture_done":
            if f.capture is None:
                raise ValueError(f"{f.name} has no pending capture")
            self._settle_capture(f, bool(req.get("ok")))
            return {"squashed_pages": f.image.squash()}
        if op == "read_error":
            return {"error": f.read_error}
        if op == "stats":
            out = {**f.image.stats(), "tracked": int(f.tracked)}
            if isinstance(f.image.base, ReadAhead):
                out.update(f.image.base.remote_stats())
            return out
        if op == "remove":
            if f.capture is not None and f.capture in self.by_name:
                self.remove(f.capture)
            self.remove(f.name)
            return {}
        raise ValueError(f"unknown control request {op!r}")

    def _settle_capture(self, f: BackingFile, ok: bool) -> int:
        """End ``f``'s pending capture: its commit landed (``ok``), or it did not and the twin's
        dirty pages go back into ``f``'s dirty set, so the next commit stores them. Returns the
        number of pages given back."""
        assert f.capture is not None
        twin = self.get(f.capture)
        given_back = 0
        if ok:
            f.tracked = True
        else:
            given_back = sum(twin.image.dirty)
            f.image.restore_dirty(twin.image.dirty)
            log.info("%s: capture %s given back (%d dirty pages)", f.name, twin.name, given_back)
        self.remove(twin.name)
        f.capture = None
        return given_back

    def _fill_placeholders(self, names: list[str], parent: BackingFile) -> None:
        """Give untouched placeholders ``parent``'s content as of now (copy-on-write), all or
        none. Safe only because nothing was ever read from or written to them: the kernel
        caches no page of them."""
        files = [self.get(name) for name in names]
        for c in files:
            if not c.placeholder or c.touched or c.image.size != parent.image.size:
                raise ValueError(f"{c.name} is not an untouched placeholder of "
                                 f"{parent.image.size} bytes")
        for c in files:
            old, c.image = c.image, parent.image.branch()
            old.close()
            c.tracked, c.placeholder = parent.tracked, False

    def close_all(self) -> None:
        for f in list(self.by_inode.values()):
            f.image.close()
        self.by_inode.clear()
        self.by_name.clear()


def _check_commit_id(commit: object) -> None:
    if not is_object_id(commit):
        raise ValueError(f"bad commit ID {commit!r}")


def _listen(sock_path: Path) -> socket.socket:
    """Bound and listening before the daemon says ready, so a client never races the bind."""
    try:
        sock_path.unlink()
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(os.fspath(sock_path))
    os.chmod(sock_path, 0o600)
    sock.listen(16)
    return sock


def _unlink_own_socket(sock_path: Path, bound: tuple[int, int]) -> None:
    """Remove the control socket if it is still the one this daemon bound (``bound``: its
    device and inode then): a daemon that was told to stop may finish after its successor bound
    the same path, and must not take the successor's socket with it (its clients would then find
    no daemon)."""
    try:
        st = sock_path.stat()
        if (st.st_dev, st.st_ino) == bound:
            sock_path.unlink()
    except FileNotFoundError:
        pass


async def _serve_control(ops: BackingOperations, listener: socket.socket) -> None:
    sock = trio.socket.from_stdlib_socket(listener)
    async with trio.open_nursery() as nursery:
        while True:
            conn, _ = await sock.accept()
            nursery.start_soon(_handle_client, ops, trio.SocketStream(conn))


async def _exit_when_idle(ops: BackingOperations, idle_seconds: float) -> None:
    """Unmount and exit once no file has existed and no request come for ``idle_seconds``: VMs
    come and go, and a daemon nobody uses should not outlive them (the next user starts one)."""
    while True:
        await trio.sleep(min(5.0, idle_seconds))
        if not ops.by_inode and time.monotonic() - ops.last_request > idle_seconds:
            log.info("idle for %.0f s with no files: exiting", idle_seconds)
            pyfuse3.terminate()
            return


async def _handle_client(ops: BackingOperations, stream: trio.SocketStream) -> None:
    """One client connection. A client that goes away (timeout, kill) must never take the daemon
    down with it: every stream error ends this connection only."""
    try:
        async with stream:
            await _serve_requests(ops, stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        log.info("control client went away: %s", exc)


async def _serve_requests(ops: BackingOperations, stream: trio.SocketStream) -> None:
    buf = b""
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            ops.last_request = time.monotonic()
            try:
                req = json.loads(line)
                if req.get("op") == "shutdown":
                    await stream.send_all(b'{"ok": true}\n')
                    pyfuse3.terminate()
                    return
                if req.get("op") == "restore_from_remote":
                    lazy = ops.restore_from_remote(req)  # on the loop: the daemon's own state
                    # the fetch on a worker thread: only this client waits for it
                    await trio.to_thread.run_sync(lazy.prepare_restore, req["commit"])
                    reply = {"ok": True, "phases": lazy.phases}
                else:
                    reply = {"ok": True, **ops.control(req)}
            except Exception as exc:  # noqa: BLE001 - every failure goes back to the client
                reply = {"ok": False, "error": str(exc)}
                if isinstance(exc, VersError):  # what the client reports, as if its own
                    reply["exit_code"] = exc.exit_code
                    reply["remote_error"] = isinstance(exc, RemoteError)
            await stream.send_all(json.dumps(reply).encode() + b"\n")


def _start_tasks(nursery: trio.Nursery, ops: BackingOperations, listener: socket.socket) -> None:
    nursery.start_soon(_serve_control, ops, listener)
    idle = float(os.environ.get("VERS_FUSE_IDLE_EXIT", IDLE_EXIT_SECONDS))
    if idle > 0:
        nursery.start_soon(_exit_when_idle, ops, idle)


def run_backing_daemon(
    state_dir: str | os.PathLike[str], mountpoint: str, on_ready: Callable[[], None] | None = None
) -> None:
    state = Path(state_dir)
    ops = BackingOperations(state)
    sock_path = state / "ctl.sock"
    listener = _listen(sock_path)
    st = sock_path.stat()
    bound = (st.st_dev, st.st_ino)
    try:
        serve(
            ops,
            mountpoint,
            (),
            on_ready=on_ready,
            extra_task=lambda nursery: _start_tasks(nursery, ops, listener),
            read_ahead_kb=int(os.environ.get("VERS_BACKING_READ_AHEAD_KB",
                                             BACKING_READ_AHEAD_KB)),
        )
    finally:
        ops.close_all()
        _unlink_own_socket(sock_path, bound)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("state_dir")
    parser.add_argument("mountpoint")


def main(argv: list[str] | None = None) -> int:
    return daemon_main(
        "vers.vmm.memory.daemon", _arguments,
        lambda args, on_ready: run_backing_daemon(args.state_dir, args.mountpoint, on_ready),
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
