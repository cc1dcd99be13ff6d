"""A partial store: objects that are not stored here are fetched from a promisor remote when they
are first read, verified, and kept (git's partial clone, with a "promisor remote").

``LazyObjects`` is what ``ObjectStore.absent`` calls. A read of absent objects is located in the
remote's bundle indexes (loaded once per process, cached under ``.vers/remotes/NAME/index``) and
read in batches: the store asks for a whole request's absent pages at once, and ``fetch_records``
merges records that lie close together in a bundle into one range GET. Every record is re-hashed
before it is stored, exactly as ``vers fetch`` does; a record that does not match its ID is
rejected and never stored, so a tampered remote costs a failed read, never wrong bytes.

For the backing daemon (``fetch(..., durable=False)`` and ``pages``), verified pages are served
from memory as soon as they are re-hashed while one writer thread stores them; a page leaves
memory only once its transaction has committed, and a durable fetch (and ``close``) waits for the
writes, so nothing is taken as stored before it is.

Remote failures are retried with backoff for ``retry_seconds``; then the read fails with a
``RemoteError`` naming the remote. Nothing is written for a failed batch, so the local store stays
as it was. Concurrent reads of the same object (a prefetch and the guest) wait for one fetch.

``ReadAhead`` wraps a committed image for the FUSE backing daemon: once reads run sequentially it
fetches further ahead in the background, doubling its window up to ``READAHEAD_MAX_PAGES``.
``prefetch_commit`` fetches what any restore needs before the guest runs: trees, every node, and
the device state and boot files.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from vers import bootcache
from vers.errors import (
    AmbiguousRevision,
    BadRevision,
    CorruptObject,
    ObjectNotFound,
    RemoteError,
    VersError,
)
from vers.files import make_private_dirs, write_private
from vers.objects.imagetree import ImageFile, TreeReader
from vers.objects.model import (
    ID_LEN,
    KIND_COMMIT,
    KIND_PAGE,
    PAGE_SIZE,
    ZERO_ID,
    ZERO_PAGE,
    Commit,
    Tree,
)
from vers.objects.store import ENC_DELTA, MAX_DELTA_DEPTH, ObjectStore, Record, encode_record
from vers.remote.backends import open_transport
from vers.remote.bundle import RECORD_HEADER, Loc, RemoteIndex, fetch_records
from vers.remote.config import (
    add_remote,
    cache_dir,
    list_remotes,
    remote_name_for_url,
    remote_url,
    set_promisor,
)
from vers.remote.refs import read_remote_refs
from vers.remote.transport import Transport, parse_url

if TYPE_CHECKING:
    from vers.repo import Repo

log = logging.getLogger("vers.remote.lazy")
T = TypeVar("T")

# A remote that cannot be read is retried this long before a read fails (the guest sees EIO).
RETRY_SECONDS = 30.0
# S3 connect and read timeout for lazy reads: a hung server must not hang a guest for minutes.
S3_TIMEOUT = 10.0
# A restore reads the first pages of each disk before the guest runs (qemu-img probes it).
HEAD_PAGES = 16
# The most a restore's recorded pages wait for its boot files to be fetched first.
BOOT_FIRST_SECONDS = 5.0
READAHEAD_MIN_PAGES = 256  # 1 MiB
READAHEAD_MAX_PAGES = 8192  # 32 MiB
READAHEAD_CHUNK_PAGES = 2048  # one background fetch: about one 8 MiB range GET
# QEMU's block layer and the kernel's readahead (4 MiB on the backing daemon's mount, in 1 MiB
# requests) keep several reads in flight: they arrive out of order by up to this much.
SEQUENTIAL_SLACK_PAGES = 1024  # 4 MiB
PREFETCH_WORKERS = 4
# Guest RAM is served in aligned blocks of this many pages (the backing daemon reads a fault's
# block). With ``VERS_LAZY_CLUSTER_BLOCKS=N``, a fault that misses within CLUSTER_RADIUS blocks
# of an earlier miss is taken as part of a cluster the guest works through, and the N blocks on
# each side of it are fetched in the background meanwhile. Off by default: it saved misses but
# not time in the measurements (docs/remote.md).
FAULT_BLOCK_PAGES = 64
CLUSTER_RADIUS = 2
CLUSTER_PREFETCH_BLOCKS = 0
# Verified pages kept in memory: a read is served as soon as its pages are fetched and re-hashed,
# while they are written to the local store in the background.
MEMORY_BYTES = 64 << 20
# The pages a lazily served image hands out in its first seconds are recorded (``TouchRecord``)
# and prefetched, in batches of this many pages, when the same image is restored again.
RECORD_SECONDS = 20.0
RECORD_BATCH_PAGES = 2048
RECORD_VERSION = 1
RECORD_PREFIX = "touched/"  # on a remote: touched/<tree ID>
RECORD_MAX_FRACTION = 4
RECORD_MIN_PAGES = 64
RECORD_MAX_BYTES = 4 << 20
# An image with no record of its own borrows the record of the same image in the nearest of this
# many first-parent ancestors of its commit (a VM restored from, or committed after, that commit
# reads nearly the same pages first).
RECORD_ANCESTOR_STEPS = 4
# ``ReadAhead.remote_stats``'s "record_source": which record a restore's prefetch used (0: none
# or not known yet).
RECORD_SOURCES = {"none": 0, "own": 1, "ancestor's": 2}
# The images a restore reads whole before the guest runs.
BOOT_IMAGES = ("devstate", "kernel", "initrd")
#: the boot images a host keeps (``vers.bootcache``)
KEPT_BOOT_IMAGES = ("kernel", "initrd")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEXPREFIX = re.compile(r"^[0-9a-f]{4,63}$")


@dataclass
class LazyStats:
    objects: int = 0
    bytes: int = 0  # record bytes received (headers included), as fetch counts them
    batches: int = 0
    ranges: int = 0  # range GETs
    retries: int = 0
    wait_seconds: float = 0.0  # how long readers waited for the remote


class NotOnPromisor(ObjectNotFound):
    """An object a partial store needs that its promisor remotes do not have either."""

    def __init__(self, oid: str, names: list[str], count: int = 1) -> None:
        super().__init__(oid)
        more = f" (and {count - 1} more)" if count > 1 else ""
        text = (f"object {oid}{more} is neither stored here nor on the promisor remote "
                f"{', '.join(names)}")
        self.args = (text,)


class Promisor:
    """One promisor remote: its transport and its index, loaded on first use."""

    def __init__(self, name: str, transport: Transport, index_cache: Path | None) -> None:
        self.name = name
        self.transport = transport
        self.index_cache = index_cache
        self._index: RemoteIndex | None = None
        self._lock = threading.Lock()
        self.index_seconds = 0.0  # spent reading the indexes (for benchmarks)

    def index(self, reload: bool = False) -> RemoteIndex:
        with self._lock:
            if self._index is None or reload:
                t0 = time.monotonic()
                self._index = RemoteIndex.load(self.transport, self.index_cache, shared=True)
                self.index_seconds += time.monotonic() - t0
                log.debug("indexes of %s: %d objects in %d bundles, read in %.2f s", self.name,
                          len(self._index.locs), len(self._index.bundles), time.monotonic() - t0)
            return self._index


class LazyObjects:
    """Fetches absent objects into ``store`` from its promisors (``ObjectStore.absent``)."""

    def __init__(self, store: ObjectStore, promisors: list[Promisor],
                 retry_seconds: float = RETRY_SECONDS) -> None:
        self.store = store
        self.promisors = promisors
        self.retry_seconds = retry_seconds
        self.stats = LazyStats()
        self.last_error: str | None = None
        self._inflight: dict[bytes, threading.Event] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(PREFETCH_WORKERS, thread_name_prefix="vers-lazy")
        # Pages verified by a fetch under way (moved to ``_recent`` when it ends), verified pages
        # in memory (oldest first), and those of them not yet in the store, with the write that
        # stores them. An unstored page is never dropped from memory.
        self._verified: dict[bytes, bytes] = {}
        self._recent: OrderedDict[bytes, bytes] = OrderedDict()
        self._unstored: dict[bytes, Future[None]] = {}
        self._to_store: list[tuple[bytes, Record]] = []
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="vers-lazy-store")
        self._closed = False
        #: the touched-page record of each tree whose recorded pages were asked for
        self._records: dict[str, TouchRecord] = {}
        #: set once a restore's boot files are in (or when no restore fetches them here)
        self._boot_done = threading.Event()
        #: seconds each step of ``prefetch_commit`` took (for benchmarks)
        self.phases: dict[str, float] = {}

    def close(self) -> None:
        self._boot_done.set()  # a restore's prefetch waiting for its boot files stops waiting
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:  # a fetch still under way (in another thread) stores its own pages
            self._closed = True
        self._writer.shutdown(wait=True)  # what was served from memory is stored before we go
        for p in self.promisors:
            p.transport.close()

    def warm(self) -> None:
        """Read the promisors' indexes in the background now, so the first read that needs the
        remote does not wait for them (a failure is only logged: that read tries again)."""
        for p in self.promisors:
            self._pool.submit(self._quietly, p.index)

    # -- pages in memory ----------------------------------------------------------------------
    def absent(self, oids: list[bytes]) -> list[bytes]:
        """Those of ``oids`` neither stored here nor held in memory, verified."""
        with self._lock:  # memory first: pages just fetched need no store lookup
            rest = [o for o in oids if o not in self._recent]
        return self.store.missing(rest) if rest else rest

    def pages(self, oids: list[bytes]) -> list[bytes]:
        """The pages ``oids``, verified: from memory when just fetched, else from the store
        (``get_pages``, which re-hashes them and fetches what is absent, waiting until stored)."""
        out = [ZERO_PAGE] * len(oids)
        rest: list[tuple[int, bytes]] = []
        with self._lock:
            for i, o in enumerate(oids):
                if o != ZERO_ID:
                    data = self._recent.get(o)
                    if data is None:
                        rest.append((i, o))
                    else:
                        out[i] = data
        if rest:
            for (i, _), data in zip(rest, self.store.get_pages([o for _, o in rest]),
                                    strict=True):
                out[i] = data
        return out

    def _store_later(self, pages: list[tuple[bytes, Record]]) -> list[tuple[bytes, Record]]:
        """Queue verified page records for the store (the background writer takes everything
        queued in one transaction) and keep their bytes in memory until they are stored.
        Returns those it could not keep in memory, for the caller to store."""
        later, now = [], []
        with self._lock:
            if self._closed:
                return pages
            for oid, rec in pages:
                data = self._verified.pop(oid, None)
                if data is None:
                    now.append((oid, rec))
                else:
                    self._recent[oid] = data
                    later.append((oid, rec))
            if not later:
                return now
            self._to_store += later
            fut = self._writer.submit(self._store_queued)
            for oid, _rec in later:
                self._unstored[oid] = fut
        return now

    def _store_queued(self) -> None:
        with self._lock:
            batch, self._to_store = self._to_store, []
        try:
            self._keep(batch)
        except BaseException as exc:
            log.error("cannot store %d fetched pages: %s", len(batch), exc)
            with self._lock:  # not stored: a later read fetches them again
                for oid, _rec in batch:
                    self._unstored.pop(oid, None)
                    self._recent.pop(oid, None)
            raise
        with self._lock:
            for oid, _rec in batch:
                self._unstored.pop(oid, None)
            self._trim()

    def _trim(self) -> None:
        """Forget the oldest stored pages past ``MEMORY_BYTES`` (caller holds the lock)."""
        excess = len(self._recent) * PAGE_SIZE - MEMORY_BYTES
        if excess <= 0:
            return
        drop = []
        for oid in self._recent:  # oldest first, only as far as needed (not a copy of all)
            if excess <= 0:
                break
            if oid not in self._unstored:
                drop.append(oid)
                excess -= PAGE_SIZE
        for oid in drop:
            del self._recent[oid]

    def _wait_stored(self, oids: list[bytes]) -> None:
        with self._lock:
            futs = {f for f in (self._unstored.get(o) for o in oids) if f is not None}
        for fut in futs:
            try:
                fut.result()
            except BaseException as exc:
                raise RemoteError(f"fetched objects could not be stored here: {exc}") from exc

    # -- reading ------------------------------------------------------------------------------
    def fetch(self, oids: list[bytes], durable: bool = True) -> None:
        """Store every one of ``oids`` here, verified (see ``AbsentObjects``). ``durable=False``
        returns as soon as each is stored or its verified bytes are in memory (``pages``), the
        store write still under way."""
        t0 = time.monotonic()
        mine: list[bytes] = []
        theirs: set[threading.Event] = set()
        done = threading.Event()  # one for all of this call's objects (one per page cost 10%)
        with self._lock:
            for oid in dict.fromkeys(oids):
                if oid == ZERO_ID or oid in self._recent:
                    continue
                ev = self._inflight.get(oid)
                if ev is None:
                    self._inflight[oid] = done
                    mine.append(oid)
                else:
                    theirs.add(ev)
        try:
            if mine:
                self._fetch_now(mine)
        finally:
            with self._lock:
                for oid in mine:
                    del self._inflight[oid]
            done.set()
        for ev in theirs:
            ev.wait()
        if theirs:  # fetched by someone else meanwhile; if that failed, try ourselves
            claimed = set(mine)
            left = self.absent([o for o in oids if o not in claimed])
            if left:
                self._fetch_now(left)
        if durable:
            self._wait_stored(oids)
        with self._lock:
            self.stats.wait_seconds += time.monotonic() - t0

    def prefetch(self, oids: list[bytes]) -> Future[None]:
        """``fetch`` in the background; a failure is only logged (the read that needs the
        objects fetches them again and reports it)."""
        return self._pool.submit(self._quietly, lambda: self.fetch(oids))

    def prefetch_pages(self, reader: TreeReader, first: int, last: int) -> Future[None]:
        return self._pool.submit(self._quietly,
                                 lambda: self.fetch(self.absent(reader.page_ids(first, last)),
                                                    durable=False))

    def prefetch_runs(self, reader: TreeReader, runs: list[tuple[int, int]]) -> None:
        """The pages of ``runs`` ((first, count)) in the background, in batches of up to
        ``RECORD_BATCH_PAGES`` pages, each batch one ``fetch`` (so one range GET per stretch of
        records close together in a bundle, not one per page)."""
        batch: list[tuple[int, int]] = []
        size = 0
        for first, count in runs:
            while count:
                take = min(count, RECORD_BATCH_PAGES - size)
                batch.append((first, take))
                size += take
                first, count = first + take, count - take
                if size == RECORD_BATCH_PAGES:
                    self._pool.submit(self._quietly, self._fetch_runs_job(reader, batch))
                    batch, size = [], 0
        if batch:
            self._pool.submit(self._quietly, self._fetch_runs_job(reader, batch))

    def _fetch_runs_job(self, reader: TreeReader,
                        runs: list[tuple[int, int]]) -> Callable[[], None]:
        def job() -> None:
            ids = [o for a, n in runs for o in reader.page_ids(a, a + n - 1)]
            self.fetch(self.absent(list(dict.fromkeys(ids))), durable=False)
        return job

    def prefetch_recorded(self, reader: TreeReader, record: TouchRecord,
                          commit_id: str | None = None, image: str | None = None,
                          ) -> TouchRecord:
        """In the background: read ``record`` (here, else on the remote; else an ancestor's,
        ``recorded_runs``), then fetch the image's nodes (one batch per level) and the recorded
        pages (``prefetch_runs``). Nothing if this image's record was prefetched already
        (``prefetch_restore``). Returns the record to write to later: the one read first (it
        knows what the remote has, so no second request asks)."""
        with self._lock:
            known = self._records.get(record.tree_id)
            if known is not None:
                return known
            self._records[record.tree_id] = record

        def job() -> None:
            runs = self.recorded_runs(record, reader.tree.num_pages, commit_id, image)
            if runs:
                self._fetch_nodes([reader.tree])
                self.prefetch_runs(reader, runs)
        self._pool.submit(self._quietly, job)
        return record

    def recorded_runs(self, record: TouchRecord, npages: int, commit_id: str | None = None,
                      image: str | None = None) -> list[tuple[int, int]]:
        """The pages to prefetch for ``record``'s image: its own record (here, else on the
        remote), else, with the commit it is restored from and the image's name in it, the
        record of the same image in the nearest of ``RECORD_ANCESTOR_STEPS`` first-parent
        ancestors (its page numbers applied to this image; a hint like any record, validated
        against this image). Notes which was used on ``record`` (``used``, ``used_pages``)."""
        runs = record.load(npages)
        if runs:
            record.used = "own"
        elif commit_id is not None and image is not None:
            for tree_hex in self._ancestor_trees(commit_id, image, record.tree_id):
                borrowed = TouchRecord(record.vers_dir, tree_hex, record.remote)
                runs = borrowed.load(npages)
                if runs:
                    record.used = "ancestor's"
                    log.debug("no touched-page record of %s: using its ancestor's (%s)",
                              record.tree_id[:12], tree_hex[:12])
                    break
        if not runs:
            record.used = "none"
        record.used_pages = sum(n for _a, n in runs)
        return runs

    def _ancestor_trees(self, commit_id: str, image: str, own: str) -> Iterator[str]:
        """The trees of ``image`` in the first-parent ancestors of ``commit_id``, nearest first,
        up to ``RECORD_ANCESTOR_STEPS`` steps (fetching the commits if need be; a commit that
        cannot be read ends the walk: this only picks a prefetch)."""
        seen = {own}
        cid = commit_id
        for _ in range(RECORD_ANCESTOR_STEPS):
            try:
                parents = self.store.get_commit(bytes.fromhex(cid)).parents
                if not parents:
                    return
                cid = parents[0]
                self.fetch(self.store.missing([bytes.fromhex(cid)]))
                tree_hex = self.store.get_commit(bytes.fromhex(cid)).images.get(image)
            except (VersError, ValueError) as exc:
                log.info("ancestors of %s not read for a touched-page record: %s",
                         commit_id[:12], exc)
                return
            if tree_hex and tree_hex not in seen:
                seen.add(tree_hex)
                yield tree_hex

    def prefetch_restore(self, commit_id: str, vers_dir: Path,
                         boot: Iterable[str] = BOOT_IMAGES,
                         boot_here: bool = False) -> Future[None]:
        """What a restore of ``commit_id`` will read once the guest runs, in the background
        (the backing daemon calls this when a restore from the remote announces itself, before
        QEMU starts): the trees and nodes of every image but ``boot`` (which the restore reads
        whole itself), and the pages recorded as read first by an earlier restore of each image,
        here or on the remote (``TouchRecord``). ``boot_here``: ``prepare_restore`` runs too;
        the recorded pages are asked for once it is done (it is what the restore waits for)."""
        if not boot_here:
            self._boot_done.set()

        def job() -> None:
            t0 = time.monotonic()
            commit = self.store.get_commit(bytes.fromhex(commit_id))
            names = [name for name in sorted(commit.images) if name not in boot]
            tree_ids = [bytes.fromhex(commit.images[name]) for name in names]
            self.fetch(self.store.missing(tree_ids))
            trees = [self.store.get_tree(t) for t in tree_ids]
            remote = self.promisors[0] if self.promisors else None
            recorded = []
            for name, tid, tree in zip(names, tree_ids, trees, strict=True):
                record = TouchRecord(vers_dir, tid.hex(), remote)
                with self._lock:
                    if tid.hex() in self._records:
                        continue
                    self._records[tid.hex()] = record
                recorded.append((name, tree, record))
            self._fetch_nodes(trees)
            t1 = time.monotonic()
            # The pages come after what the restore reads before QEMU starts, if it is being
            # fetched too (``prepare_restore``): that is what it waits for first.
            self._boot_done.wait(BOOT_FIRST_SECONDS)
            pages = 0
            for name, tree, record in recorded:
                runs = self.recorded_runs(record, tree.num_pages, commit_id, name)
                pages += sum(n for _a, n in runs)
                if runs:
                    self.prefetch_runs(TreeReader(self.store, tree), runs)
            log.debug("restore of %s announced: trees and nodes in %.2f s, %d recorded pages "
                      "asked for", commit_id[:12], t1 - t0, pages)
        return self._pool.submit(self._quietly, job)

    def _quietly(self, job: Callable[[], object]) -> None:
        try:
            job()
        except VersError as exc:
            log.info("prefetch failed: %s", exc)

    def _locate(self, oids: list[bytes]) -> list[tuple[Promisor, list[tuple[bytes, Loc]]]]:
        left = list(oids)
        out = []
        for reload in (False, True):  # a miss reads the indexes again: a push may have landed
            for p in self.promisors:
                if not left:
                    break
                index = self._retrying(p, functools.partial(p.index, reload))
                found = [(o, index.locs[o]) for o in left if o in index.locs]
                if found:
                    out.append((p, found))
                    have = {o for o, _ in found}
                    left = [o for o in left if o not in have]
            if not left:
                return out
        raise NotOnPromisor(left[0].hex(), [p.name for p in self.promisors], len(left))

    def _fetch_now(self, oids: list[bytes]) -> None:
        # Callers pass what they found absent a moment ago: only memory is looked at again
        # (looking each page up in the store a second time cost as much as storing it; one
        # stored meanwhile by another process is fetched again, and the store keeps one copy).
        with self._lock:
            oids = [o for o in oids if o not in self._recent]
        if not oids:
            return
        try:
            for promisor, locs in self._locate(oids):
                records = self._read(promisor, locs)
                pages = [(o, r) for o, r in records
                         if r.kind == KIND_PAGE and r.encoding != ENC_DELTA]
                with self._lock:
                    backlog = len(self._unstored) * PAGE_SIZE > MEMORY_BYTES // 2
                # the writer is behind: store these ourselves
                self._keep(pages if backlog else self._store_later(pages))
                self._keep([(o, r) for o, r in records
                            if r.encoding != ENC_DELTA and r.kind != KIND_PAGE])
                self._keep_deltas({o: r for o, r in records if r.encoding == ENC_DELTA})
        except VersError as exc:
            self.last_error = str(exc)
            raise
        finally:
            with self._lock:
                for oid in oids:
                    self._verified.pop(oid, None)

    def _read(self, p: Promisor, locs: list[tuple[bytes, Loc]]) -> list[tuple[bytes, Record]]:
        """All of ``locs`` from ``p``, the plain records re-hashed on the fetch workers."""

        def once() -> list[tuple[bytes, Record]]:
            out: list[tuple[bytes, Record]] = []
            ranges = 0
            for chunk in fetch_records(p.transport, locs, check=self._check):
                out += chunk
                ranges += 1
            n = sum(len(r.payload) + RECORD_HEADER.size for _, r in out)
            with self._lock:
                self.stats.objects += len(out)
                self.stats.bytes += n
                self.stats.batches += 1
                self.stats.ranges += ranges
            return out

        try:
            return self._retrying(p, once)
        except CorruptObject as exc:
            raise RemoteError(f"{p.transport.url}: rejected object {exc.oid} from the "
                              f"promisor remote {p.name}: {exc.reason}") from exc

    def _retrying(self, p: Promisor, job: Callable[[], T]) -> T:
        """``job()``, retried with backoff for ``retry_seconds`` while ``p`` cannot be read;
        then the one "cannot be read" error a user sees."""
        deadline = time.monotonic() + self.retry_seconds
        delay, tries = 0.2, 0
        while True:
            tries += 1
            try:
                return job()
            except RemoteError as exc:
                if time.monotonic() + delay > deadline:
                    raise RemoteError(
                        f"promisor remote {p.name} ({p.transport.url}) cannot be read (tried "
                        f"{tries} times in {self.retry_seconds:.0f}s): {exc}") from exc
                with self._lock:
                    self.stats.retries += 1
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _check(self, oid: bytes, rec: Record) -> None:
        if rec.encoding != ENC_DELTA:  # a delta is checked once its base is here
            data = self.store.decode_record(oid, rec)
            if rec.kind == KIND_PAGE:
                self._verified[oid] = data  # one dict store: atomic, no lock per page

    def _keep(self, records: list[tuple[bytes, Record]]) -> None:
        if not records:
            return
        with self.store.writer(flush_bytes=1 << 40) as w:
            for oid, rec in records:
                w.add_record(oid, rec if rec.depth == 0 else
                             Record(rec.kind, rec.encoding, 0, rec.payload))

    def _keep_deltas(self, pending: dict[bytes, Record]) -> None:
        """Node deltas, each verified once its base is here (fetched too if need be), kept as a
        delta when the local chain stays short enough, else whole."""
        bases = self.absent(list({r.payload[:ID_LEN] for r in pending.values()} - pending.keys()))
        if bases:
            self._fetch_now(bases)
        while pending:
            ready = [(o, r) for o, r in pending.items() if r.payload[:ID_LEN] not in pending]
            if not ready:
                raise RemoteError(f"node deltas from the promisor remote form a cycle at "
                                  f"{next(iter(pending)).hex()}")
            out = []
            for oid, rec in ready:
                del pending[oid]
                data = self.store.decode_record(oid, rec)
                depth = self.store.get_record(rec.payload[:ID_LEN]).depth + 1
                out.append((oid, Record(rec.kind, ENC_DELTA, depth, rec.payload)
                            if depth <= MAX_DELTA_DEPTH else encode_record(rec.kind, data)))
            self._keep(out)

    # -- what a restore needs -----------------------------------------------------------------
    def prefetch_commit(self, commit: Commit, boot: Iterable[str] = BOOT_IMAGES,
                        nodes: bool = True) -> None:
        """Trees of ``commit``'s images, and the nodes and pages of the images a restore reads
        whole (``boot``); with ``nodes`` also every node of the other images (one batch per tree
        level), fetched beside the boot images so the two chains of round trips overlap.
        Without (the backing daemon fetches those itself, ``prefetch_restore``), the restore
        waits only for what it reads before QEMU starts."""
        store = self.store
        t0 = time.monotonic()
        tree_ids = {name: bytes.fromhex(t) for name, t in commit.images.items()}
        self.fetch(store.missing(list(tree_ids.values())))
        trees = {name: store.get_tree(oid) for name, oid in tree_ids.items()}
        t1 = time.monotonic()
        # a kernel or initrd this host has kept is checked and used from there (vers.vmm.boot)
        whole = [t for name, t in trees.items() if name in boot
                 and not (name in KEPT_BOOT_IMAGES and bootcache.cached(commit.images[name],
                                                                        t.size))]
        t2 = t1
        if nodes:
            job = self._pool.submit(self._fetch_whole, whole)
            try:
                self._fetch_nodes([t for name, t in trees.items() if name not in boot])
                t2 = time.monotonic()
            finally:
                job.result()
        else:
            self._fetch_whole(whole)
        t3 = time.monotonic()
        self.phases.update(trees=t1 - t0, nodes=t2 - t1, boot=t3 - t1)
        log.debug("restore prefetch: trees %.2f s, nodes %.2f s, boot images %.2f s (%d objects, "
                  "%d range GETs in all)", t1 - t0, t2 - t1, t3 - t1,
                  self.stats.objects, self.stats.ranges)

    def prepare_restore(self, commit_id: str) -> None:
        """Everything a restore of ``commit_id`` reads before QEMU starts, stored here (the
        commit, its trees, the device state and boot files: ``prefetch_commit`` without the
        other images' nodes; ``prefetch_restore``, started first, brings in what the guest
        will read meanwhile). The backing daemon does this for a client
        (``restore_from_remote``), so the client itself never talks to the remote."""
        t0 = time.monotonic()
        oid = bytes.fromhex(commit_id)
        try:
            self.fetch(self.store.missing([oid]))
            try:
                commit = self.store.get_commit(oid)
            except CorruptObject as exc:  # an object of another kind
                raise BadRevision(f"{commit_id} is not a commit") from exc
            self.fetch(self.store.missing([bytes.fromhex(t) for t in commit.images.values()]))
            # The first pages of every other image, beside the boot files: creating a disk's
            # overlay reads its head right after this (qemu-img probes the base).
            heads = [self._pool.submit(self._fetch_head, bytes.fromhex(t))
                     for name, t in commit.images.items() if name not in BOOT_IMAGES]
            self.prefetch_commit(commit, nodes=False)
            for fut in heads:
                fut.result()
        finally:
            self._boot_done.set()
        self.phases["prepare"] = time.monotonic() - t0
        self.phases["remote indexes"] = sum(p.index_seconds for p in self.promisors)

    def _fetch_head(self, tree_id: bytes) -> None:
        tree = self.store.get_tree(tree_id)
        if tree.num_pages:
            ids = TreeReader(self.store, tree).page_ids(0, min(HEAD_PAGES, tree.num_pages) - 1)
            self.fetch(self.absent(list(dict.fromkeys(o for o in ids if o != ZERO_ID))),
                       durable=False)

    def _fetch_whole(self, trees: list[Tree]) -> None:
        self._fetch_nodes(trees)
        pages: list[bytes] = []
        for tree in trees:
            if tree.num_pages:
                pages += TreeReader(self.store, tree).page_ids(0, tree.num_pages - 1)
        self.fetch(self.store.missing(list(dict.fromkeys(p for p in pages if p != ZERO_ID))))

    def _fetch_nodes(self, trees: list[Tree]) -> None:
        store = self.store
        frontier: dict[int, list[bytes]] = {}
        for tree in trees:
            if tree.root != ZERO_ID:
                frontier.setdefault(tree.depth, []).append(tree.root)
        for level in range(max(frontier, default=0), 0, -1):
            ids = list(dict.fromkeys(frontier.get(level, [])))
            self.fetch(store.missing(ids))
            if level == 1:
                break
            below = frontier.setdefault(level - 1, [])
            for nid in ids:
                entries = store.get_node(nid)
                below += (c for c in (entries[i:i + ID_LEN] for i in range(0, len(entries),
                                                                            ID_LEN))
                          if c != ZERO_ID)


class TouchRecord:
    """Which pages of one committed image a restore read in its first ``RECORD_SECONDS``: a small
    file per image tree under ``.vers/cache/touched/`` (JSON runs of pages, 0600), written by
    the backing daemon and read by the next lazy restore of that image, which prefetches them.

    With ``remote`` (the promisor the image comes from) the record is shared: ``load`` reads
    ``touched/<tree ID>`` from the remote when there is no local one (so a fresh repository
    restoring the commit prefetches what an earlier restore anywhere read), and ``save`` puts
    it there when the remote has none (or only a damaged one), by compare-and-swap, so the first
    record stays. ``vers push`` sends the records of the commits it pushes.

    It is a hint: a missing, unreadable, damaged or foreign record only means no prefetch, and
    one naming more than 1/``RECORD_MAX_FRACTION`` of the image is ignored (it would cost
    bytes, never correctness: every page fetched is verified by its hash like any other)."""

    def __init__(self, vers_dir: Path, tree_id: str, remote: Promisor | None = None) -> None:
        self.vers_dir = Path(vers_dir)
        self.path = self.vers_dir / "cache" / "touched" / tree_id
        self.tree_id = tree_id
        self.remote = remote
        self.key = f"{RECORD_PREFIX}{tree_id}"
        #: what the remote holds: None (not asked), "good", "absent", or the version tag of a
        #: record found unusable (replaced by the next save)
        self.remote_state: str | None = None
        #: which record the prefetch used (a key of ``RECORD_SOURCES``; None: not asked yet)
        #: and how many pages it named (``LazyObjects.recorded_runs``)
        self.used: str | None = None
        self.used_pages = 0

    def parse(self, text: bytes | str, npages: int) -> list[tuple[int, int]]:
        """The runs of a record, validated; ValueError if it is not a usable record of this
        image."""
        if len(text) > RECORD_MAX_BYTES:
            raise ValueError(f"{len(text)} bytes is too large for a record")
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("version") != RECORD_VERSION \
                or doc.get("tree") != self.tree_id or not isinstance(doc.get("runs"), list):
            raise ValueError("not a touched-page record of this image")
        out: list[tuple[int, int]] = []
        total, end = 0, 0
        for run in doc["runs"]:
            if not (isinstance(run, list) and len(run) == 2
                    and all(type(x) is int for x in run)):
                raise ValueError(f"bad run {run!r}")
            a, n = run
            if not (end <= a < npages and 0 < n <= npages - a):
                raise ValueError(f"run {a}+{n} is out of order or outside the image")
            out.append((a, n))
            total, end = total + n, a + n
        if total > record_cap(npages):
            raise ValueError(f"{total} pages of {npages} is more than a restore reads")
        return out

    def load(self, npages: int) -> list[tuple[int, int]]:
        try:
            return self.parse(self.path.read_bytes(), npages)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.info("ignoring the touched-page record %s: %s", self.path, exc)
            return []
        if self.remote is None:
            return []
        try:
            got = self.remote.transport.read_versioned(self.key)
        except VersError as exc:
            log.info("cannot read the touched-page record %s of %s: %s", self.key,
                     self.remote.name, exc)
            return []
        if got is None:
            self.remote_state = "absent"
            return []
        data, version = got
        try:
            runs = self.parse(data, npages)
        except ValueError as exc:
            log.info("ignoring the touched-page record %s of %s: %s", self.key,
                     self.remote.name, exc)
            self.remote_state = version
            return []
        self.remote_state = "good"
        try:  # the next restore here needs no request
            self.save_local(runs)
        except OSError as exc:
            log.info("cannot keep the touched-page record %s: %s", self.path, exc)
        return runs

    def encode(self, touched: list[tuple[int, int]]) -> bytes:
        return json.dumps({"version": RECORD_VERSION, "tree": self.tree_id,
                           "runs": touched}).encode()

    def save_local(self, touched: list[tuple[int, int]]) -> None:
        make_private_dirs(self.path.parent)
        write_private(self.path, self.encode(touched))

    def save(self, touched: list[tuple[int, int]]) -> None:
        """Write the record here and, if the remote has no usable one, there (a failure to
        share it is only logged)."""
        self.save_local(touched)
        if self.remote is None or self.remote_state == "good" or not share_records():
            return
        expected = None if self.remote_state in (None, "absent") else self.remote_state
        try:
            self.remote.transport.check_reachable()  # never make a vanished path remote again
            if self.remote.transport.put_if(self.key, self.encode(touched), expected):
                self.remote_state = "good"
                log.info("shared the touched-page record %s with %s", self.key,
                         self.remote.name)
        except VersError as exc:
            log.info("cannot share the touched-page record %s with %s: %s", self.key,
                     self.remote.name, exc)


def record_cap(npages: int) -> int:
    """The most pages a touched-page record of an image of ``npages`` may name."""
    return max(RECORD_MIN_PAGES, npages // RECORD_MAX_FRACTION)


def _capped(runs: list[tuple[int, int]], cap: int) -> list[tuple[int, int]]:
    out = []
    for a, n in runs:
        if cap <= 0:
            break
        out.append((a, min(n, cap)))
        cap -= n
    return out


def share_records() -> bool:
    """Whether touched-page records go to the remote (``VERS_LAZY_SHARE_RECORDS=0``: never)."""
    return os.environ.get("VERS_LAZY_SHARE_RECORDS", "1") not in ("0", "no", "false")


def record_local_restores(repo: Repo) -> bool:
    """Whether restores from this complete repository record the pages they read first (for
    ``vers push`` to share): when it has a remote to push to, unless
    ``VERS_LAZY_RECORD_LOCAL=0``. Recording makes guest RAM's first faults be served at the
    size a lazy restore serves them (so the record is as fine as a lazy restore's), which costs
    the first restore of each image a little; later restores find the record and record
    nothing."""
    if os.environ.get("VERS_LAZY_RECORD_LOCAL", "1") in ("0", "no", "false"):
        return False
    return bool(list_remotes(repo))


@dataclass
class ReadStats:
    """What the reads of one lazily served image asked for and how long they waited."""

    reads: int = 0  # reads that needed pages from the base
    pages: int = 0
    max_pages: int = 0  # the largest read
    sequential: int = 0
    waited: int = 0  # reads that found pages absent and waited for the remote
    absent_pages: int = 0  # pages such reads fetched (or waited for) themselves
    wait_seconds: float = 0.0
    max_wait_seconds: float = 0.0

    def add(self, pages: int, absent: int, seconds: float, sequential: bool) -> None:
        self.reads += 1
        self.pages += pages
        self.max_pages = max(self.max_pages, pages)
        self.sequential += sequential
        if absent:
            self.waited += 1
            self.absent_pages += absent
            self.wait_seconds += seconds
            self.max_wait_seconds = max(self.max_wait_seconds, seconds)

    def as_dict(self) -> dict[str, int]:
        return {"base_reads": self.reads, "base_read_pages": self.pages,
                "base_read_max_pages": self.max_pages, "base_reads_sequential": self.sequential,
                "base_reads_waited": self.waited, "base_reads_absent_pages": self.absent_pages,
                "base_reads_wait_ms": int(self.wait_seconds * 1000),
                "base_reads_max_wait_ms": int(self.max_wait_seconds * 1000)}


class ReadAhead:
    """A committed image read through a partial store (a ``PageSource`` for the overlay), fetching
    ahead in the background once reads are sequential.

    ``make_local`` is what the backing daemon calls, on a worker thread, before it reads a range:
    a fetch blocks that request only, while the daemon's loop goes on serving the others (reads of
    local pages, writes, other fetches). ``pread`` then finds the pages stored here."""

    def __init__(self, image: ImageFile, record: TouchRecord | None = None,
                 read_ahead: bool = True, commit_id: str | None = None) -> None:
        """``commit_id``: the commit ``image`` is restored from (its ancestors' records stand in
        for a missing record of the image's own)."""
        self.image = image
        #: guest RAM is read in fault-sized blocks, and its faults near each other are not a
        #: sequential reader: fetching megabytes ahead of them costs bytes that are never read
        self.read_ahead = read_ahead
        self.size = image.size
        self._pages = -(-image.size // PAGE_SIZE)
        self._next = -1
        self._window = READAHEAD_MIN_PAGES
        self._ahead = 0  # pages before this are already asked for
        self._lock = threading.Lock()  # make_local runs on several threads at once
        self._record = record
        self.reads = ReadStats()
        self._trace = bool(os.environ.get("VERS_LAZY_TRACE"))
        self._touched = bytearray(self._pages) if record is not None else None
        #: guest RAM: the blocks whose faults missed, and those asked for around them
        self._faulted: set[int] = set()
        self._cluster_asked: set[int] = set()
        self._cluster_blocks = int(os.environ.get("VERS_LAZY_CLUSTER_BLOCKS",
                                                  CLUSTER_PREFETCH_BLOCKS))
        seconds = float(os.environ.get("VERS_LAZY_RECORD_SECONDS", RECORD_SECONDS))
        self._record_until = time.monotonic() + seconds
        if record is not None:
            lazy = image.reader.store.absent
            if isinstance(lazy, LazyObjects):
                self._record = lazy.prefetch_recorded(image.reader, record, commit_id,
                                                      image.name or None)
            timer = threading.Timer(seconds, self.save_record)
            timer.daemon = True
            timer.start()

    def close(self) -> None:
        """The image is no longer served: write down what was read, if that is not done yet
        (on a thread of its own: sharing the record is a request to the remote)."""
        if self._touched is not None:
            threading.Thread(target=self.save_record, name="vers-lazy-record",
                             daemon=True).start()

    def save_record(self) -> None:
        """Write down the pages read so far (once: later reads are no longer "the start")."""
        with self._lock:
            touched, self._touched = self._touched, None
        if self._record is None or touched is None or not touched.count(1):
            return
        try:
            self._record.save(_capped(_runs_of(touched), record_cap(self._pages)))
        except OSError as exc:
            log.info("cannot write the touched-page record %s: %s", self._record.path, exc)

    def pread(self, offset: int, n: int) -> bytes:
        lazy = self.image.reader.store.absent
        if not isinstance(lazy, LazyObjects):
            return self.image.pread(offset, n)
        if offset >= self.size or n <= 0:
            return b""
        n = min(n, self.size - offset)
        first, last = offset // PAGE_SIZE, (offset + n - 1) // PAGE_SIZE
        data = b"".join(lazy.pages(self.image.reader.page_ids(first, last)))
        skip = offset - first * PAGE_SIZE
        return data[skip:skip + n]

    def remote_stats(self) -> dict[str, int]:
        """What the store's promisors have delivered so far (to every image of the store)."""
        lazy = self.image.reader.store.absent
        if not isinstance(lazy, LazyObjects):
            return {}
        st = lazy.stats
        used = self._record.used if self._record is not None else None
        return {"record_source": RECORD_SOURCES.get(used or "none", 0),
                "record_pages": self._record.used_pages if self._record is not None else 0,
                "remote_objects": st.objects, "remote_bytes": st.bytes,
                "remote_batches": st.batches, "remote_ranges": st.ranges,
                "remote_wait_ms": int(st.wait_seconds * 1000), **self.reads.as_dict()}

    def absent_pages(self, runs: list[tuple[int, int]]) -> int:
        """How many distinct pages of ``runs`` are not stored here."""
        reader = self.image.reader
        ids = [o for a, n in runs for o in reader.page_ids(a, min(a + n, self._pages) - 1)]
        ids = list(dict.fromkeys(ids))
        lazy = reader.store.absent
        return len(lazy.absent(ids) if isinstance(lazy, LazyObjects) else
                   reader.store.missing(ids))

    @property
    def lazy(self) -> bool:
        """Whether the image's store is partial (pages may have to come from a remote)."""
        return isinstance(self.image.reader.store.absent, LazyObjects)

    def recording(self) -> bool:
        """Whether reads are still being recorded (the image's first ``RECORD_SECONDS``)."""
        return self._touched is not None and time.monotonic() < self._record_until

    def unrecorded_pages(self, runs: list[tuple[int, int]]) -> int:
        """How many pages of ``runs`` no read has handed out yet while recording: on a complete
        store, what stands in for ``absent_pages`` (a local restore records the pages a guest
        faults on as a lazy one does)."""
        touched = self._touched
        if touched is None:
            return 0
        return sum(n - touched[a:a + n].count(1) for a, n in runs)

    def note(self, runs: list[tuple[int, int]]) -> None:
        """Record ``runs`` as read (``make_local`` does this too; on a complete store nothing
        else is to be done, and this is cheap enough for the daemon's loop)."""
        with self._lock:
            self._mark_touched(self._within(runs))

    def _within(self, runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """``runs`` cut to the image's pages."""
        return [(a, min(n, self._pages - a)) for a, n in runs if 0 <= a < self._pages and n > 0]

    def _mark_touched(self, runs: list[tuple[int, int]]) -> None:
        """While recording, ``runs`` (within the image) as read; the caller holds the lock."""
        if self.recording():
            assert self._touched is not None
            for a, n in runs:
                self._touched[a:a + n] = b"\x01" * n

    def make_local(self, runs: list[tuple[int, int]]) -> None:
        """Store here the absent pages of ``runs`` ((first page, count), the pages a read needs
        from this image), fetched in one batch, and plan the read-ahead. Blocks for the fetch."""
        runs = self._within(runs)
        if not runs:
            return
        t0 = time.monotonic()
        npages = sum(n for _, n in runs)
        with self._lock:
            sequential = self._plan(runs[0][0], runs[-1][0] + runs[-1][1] - 1)
            self._mark_touched(runs)
        lazy = self.image.reader.store.absent  # the store's promisors may be re-attached
        if not isinstance(lazy, LazyObjects):
            return
        reader = self.image.reader
        ids = [o for a, n in runs for o in reader.page_ids(a, a + n - 1) if o != ZERO_ID]
        absent = lazy.absent(list(dict.fromkeys(ids)))
        if absent:  # served from memory once verified; stored meanwhile
            if not self.read_ahead and self._cluster_blocks > 0:
                self._cluster_prefetch(lazy, runs)
            lazy.fetch(absent, durable=False)
        waited = time.monotonic() - t0
        with self._lock:
            self.reads.add(npages, len(absent), waited, sequential)
        if self._trace:
            log.info("read %s pages %d+%d: %d absent, %.1f ms%s", self.image.name or "image",
                     runs[0][0], npages, len(absent), waited * 1000,
                     " (sequential)" if sequential else "")

    def _cluster_prefetch(self, lazy: LazyObjects, runs: list[tuple[int, int]]) -> None:
        """A fault of guest RAM missed: if an earlier miss was near, fetch the blocks around
        this one in the background (beside this fault's own fetch)."""
        first, last = runs[0][0], runs[-1][0] + runs[-1][1] - 1
        block = first // FAULT_BLOCK_PAGES
        if last // FAULT_BLOCK_PAGES != block:
            return  # not one fault's block
        nblocks = -(-self._pages // FAULT_BLOCK_PAGES)
        with self._lock:
            near = any(b in self._faulted for b in range(block - CLUSTER_RADIUS,
                                                         block + CLUSTER_RADIUS + 1))
            self._faulted.add(block)
            if not near:
                return
            w = self._cluster_blocks
            todo = [b for b in range(max(block - w, 0), min(block + w + 1, nblocks))
                    if b != block and b not in self._faulted and b not in self._cluster_asked]
            self._cluster_asked.update(todo)
        for b in todo:
            lazy.prefetch_pages(self.image.reader, b * FAULT_BLOCK_PAGES,
                                min((b + 1) * FAULT_BLOCK_PAGES, self._pages) - 1)

    def _plan(self, first: int, last: int) -> bool:
        if not self.read_ahead:
            return False
        # Several reads are in flight, so a sequential reader's requests arrive out of order:
        # "sequential" is near where the last one ended, or inside what is already asked for,
        # or a jump forward by less than the window (a file in several extents: the reader
        # skips what lies between, and so does the read-ahead).
        gap = first - self._next
        sequential = self._next > 0 and (
            -SEQUENTIAL_SLACK_PAGES <= gap <= max(SEQUENTIAL_SLACK_PAGES, self._window)
            or self._next - SEQUENTIAL_SLACK_PAGES <= first < self._ahead)
        if sequential and gap > SEQUENTIAL_SLACK_PAGES:
            self._ahead = max(self._ahead, first)
        self._next = max(self._next, last + 1) if sequential else last + 1
        if not sequential:
            self._window, self._ahead = READAHEAD_MIN_PAGES, last + 1
            return False
        lazy = self.image.reader.store.absent
        if not isinstance(lazy, LazyObjects):
            return True
        # Double the window, and keep it at least a few reads long (large reads: 4 MiB of
        # readahead in 1 MiB requests).
        self._window = min(max(self._window * 2, 4 * (last - first + 1)), READAHEAD_MAX_PAGES)
        if self._ahead - (last + 1) >= self._window // 2:
            return True  # still half a window asked for ahead of the reader: ask again in big steps
        start = max(last + 1, self._ahead)
        target = min(start + self._window, self._pages)
        while start < target:
            stop = min(start + READAHEAD_CHUNK_PAGES, target)
            lazy.prefetch_pages(self.image.reader, start, stop - 1)
            start = stop
        self._ahead = max(self._ahead, target)
        return True


def _runs_of(bitmap: bytearray) -> list[tuple[int, int]]:
    """(first, count) of each run of set bytes in a one-byte-per-page bitmap."""
    out, i = [], bitmap.find(1)
    while i >= 0:
        j = bitmap.find(0, i)
        j = len(bitmap) if j < 0 else j
        out.append((i, j - i))
        i = bitmap.find(1, j)
    return out


def open_lazy(repo: Repo, names: list[str] | None = None, env: Mapping[str, str] | None = None,
              retry_seconds: float | None = None) -> LazyObjects | None:
    """Attach the repository's promisors (or ``names``) as its store's source of absent objects;
    None (nothing attached) for a complete repository. Nothing is read from the remote yet.

    ``env``: the AWS settings to read S3 with, for a process reading on someone else's behalf."""
    names = repo.promisors() if names is None else names
    if not names:
        return None
    old = repo.store.absent
    if isinstance(old, LazyObjects):
        old.close()
    if retry_seconds is None:
        retry_seconds = float(os.environ.get("VERS_LAZY_RETRY_SECONDS", RETRY_SECONDS))
    promisors = [Promisor(n, open_transport(remote_url(repo, n), env=env, timeout=S3_TIMEOUT),
                          cache_dir(repo, n)) for n in names]
    lazy = LazyObjects(repo.store, promisors, retry_seconds)
    repo.store.absent = lazy
    return lazy


def absent_from(repo: Repo, oids: list[bytes], names: list[str] | None = None,
                ) -> tuple[list[bytes], list[bytes]]:
    """(on a promisor, on none) of ``oids``: fsck --remote asks the remotes' indexes."""
    names = repo.promisors() if names is None else names
    indexes = [RemoteIndex.load(open_transport(remote_url(repo, n)), cache_dir(repo, n))
               for n in names]
    there = [o for o in oids if any(o in ix for ix in indexes)]
    have = set(there)
    return there, [o for o in oids if o not in have]


def promisor_for(repo: Repo, remote: str) -> str:
    """The name of remote ``remote`` (a name, or a URL: added as a remote named after it if no
    remote has that URL yet), now marked as a promisor of ``repo``."""
    if remote in list_remotes(repo) or not ("/" in remote or "://" in remote):
        name = remote
    else:
        name = remote_name_for_url(repo, remote) or _add_named_after(repo, remote)
    set_promisor(repo, name)
    return name


def _add_named_after(repo: Repo, url: str) -> str:
    scheme, where, prefix = parse_url(url)
    stem = (prefix.rstrip("/").split("/")[-1] if scheme == "s3" and prefix else
            where if scheme == "s3" else Path(where).name)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip(".-_")[:48] or "remote"
    taken = list_remotes(repo)
    name = stem
    for n in range(2, 1000):
        if name not in taken:
            break
        name = f"{stem}-{n}"
    add_remote(repo, name, url)
    return name


def resolve_on_remote(repo: Repo, lazy: LazyObjects, name: str, rev: str) -> str:
    """A commit ID for ``rev`` as remote ``name`` knows it: a full ID, a unique prefix of a
    commit in its indexes, or one of its branches or tags (``main``, ``NAME/main``,
    ``refs/tags/v1``); else whatever ``rev`` names locally."""
    if _HEX64.match(rev):
        return rev
    promisor = next(p for p in lazy.promisors if p.name == name)
    refs = {k: r.value for k, r in read_remote_refs(promisor.transport).items()}
    short = rev[len(name) + 1:] if rev.startswith(f"{name}/") else rev
    for ref in (short, f"refs/heads/{short}", f"refs/tags/{short}"):
        if ref in refs:
            return refs[ref]
    if _HEXPREFIX.match(rev):
        index = promisor.index()
        found = sorted(h for h in (o.hex() for o in index.locs.ids_of_kind(KIND_COMMIT))
                       if h.startswith(rev))
        if len(found) > 1:
            raise AmbiguousRevision(rev, found)
        if found:
            return found[0]
    try:
        return repo.rev_parse(rev)
    except BadRevision as exc:
        raise BadRevision(f"unknown revision {rev} (not a commit, branch or tag of remote "
                          f"{name} either)") from exc
