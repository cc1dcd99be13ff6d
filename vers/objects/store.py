"""Object storage: the ``ObjectStore`` interface, a batched writer, and an in-memory store.

A store maps an object ID to a stored record ``(kind, encoding, depth, payload)``. The encoding
is how the canonical bytes are kept, not part of the object:

- ``ENC_RAW``:   payload is the canonical bytes
- ``ENC_ZSTD``:  payload is one zstd frame of the canonical bytes
- ``ENC_DELTA``: (nodes only) payload is a base node ID + (u16 index, 32-byte child ID) pairs that
  replace entries of the base node; ``depth`` is the length of the delta chain

Whatever the encoding, every object is re-hashed when read and a mismatch raises ``CorruptObject``
naming it. Backends implement only the ``_backend_*`` primitives.
"""

from __future__ import annotations

import struct
import sys
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Self

if TYPE_CHECKING:  # concurrent.futures (and logging with it) only once a writer needs threads
    from concurrent.futures import Future, ThreadPoolExecutor

    import zstandard

    from vers.objects.reports import StoredObject, StoreStats, SweepReport

from vers.errors import CorruptObject, ObjectNotFound
from vers.objects.model import (
    ID_LEN,
    KIND_COMMIT,
    KIND_NAMES,
    KIND_NODE,
    KIND_PAGE,
    KIND_TREE,
    NODE_ENTRIES_LEN,
    NODE_HEADER_LEN,
    ZERO_ENTRIES,
    ZERO_ID,
    ZERO_PAGE,
    Commit,
    Tree,
    hash_bytes,
    node_bytes,
    parse_node,
)

ENC_RAW = 0
ENC_ZSTD = 1
ENC_DELTA = 2
MAX_DELTA_DEPTH = 32
# A delta is kept only if it is smaller than this fraction of the full node.
DELTA_MAX_FRACTION = 0.5
# Compressed form is kept only when it saves at least this many bytes.
MIN_COMPRESSION_SAVING = 64

_DELTA_ENTRY = struct.Struct("<H32s")


@dataclass(frozen=True)
class Record:
    kind: int
    encoding: int
    depth: int
    payload: bytes


#: The store's reports (vers.objects.reports), importable from here too; loaded on first use.
_REPORTS = ("StoredObject", "StoreStats", "SweepReport")


def __getattr__(name: str) -> Any:
    if name in _REPORTS:
        from vers.objects import reports

        return getattr(reports, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class AbsentObjects(Protocol):
    """Where a partial store finds the objects it does not hold (a promisor remote, attached from
    above: the store knows nothing of remotes). ``fetch`` stores every one of ``oids`` in the store,
    verified, before it returns, or raises: ``ObjectNotFound`` when the source lacks one, another
    ``VersError`` when it cannot be reached or sent something that does not match its ID."""

    def fetch(self, oids: list[bytes]) -> None: ...


class _Codec(threading.local):
    """zstd contexts are not thread-safe; one pair per thread, made (and zstandard imported) when
    the thread first compresses or decompresses: reading only uncompressed objects (commits,
    trees) never loads it."""

    _cctx: zstandard.ZstdCompressor | None = None
    _dctx: zstandard.ZstdDecompressor | None = None

    @property
    def cctx(self) -> zstandard.ZstdCompressor:
        if self._cctx is None:
            import zstandard

            self._cctx = zstandard.ZstdCompressor(level=1)
        return self._cctx

    @property
    def dctx(self) -> zstandard.ZstdDecompressor:
        if self._dctx is None:
            import zstandard

            self._dctx = zstandard.ZstdDecompressor()
        return self._dctx


_codec = _Codec()


def _zstd_error(exc: BaseException) -> bool:
    """Whether ``exc`` is zstandard's (which is then already imported)."""
    zstandard = sys.modules.get("zstandard")
    return zstandard is not None and isinstance(exc, zstandard.ZstdError)


def encode_delta(base_oid: bytes, base_entries: bytes, entries: bytes) -> bytes:
    out = bytearray(base_oid)
    for i in range(0, NODE_ENTRIES_LEN, ID_LEN):
        new = entries[i : i + ID_LEN]
        if base_entries[i : i + ID_LEN] != new:
            out += _DELTA_ENTRY.pack(i // ID_LEN, new)
    return bytes(out)


class ObjectStore(ABC):
    """Content-addressed objects. Subclasses provide the ``_backend_*`` primitives."""

    def __init__(self, node_cache_size: int = 4096) -> None:
        self._node_cache: OrderedDict[bytes, tuple[int, bytes]] = OrderedDict()
        self._node_cache_size = node_cache_size
        self._cache_lock = threading.Lock()
        #: a partial store's source of absent objects; None reads only what is stored here
        self.absent: AbsentObjects | None = None

    # -- backend primitives -------------------------------------------------------------------
    @abstractmethod
    def _backend_get(self, oid: bytes) -> Record | None: ...

    @abstractmethod
    def _backend_missing(self, oids: list[bytes]) -> list[bytes]:
        """The subset of ``oids`` not stored."""

    @abstractmethod
    def _backend_put(self, records: list[tuple[bytes, Record]]) -> None:
        """Store records atomically and durably; an ID already present is skipped."""

    @abstractmethod
    def iter_ids(self) -> Iterator[tuple[bytes, int]]:
        """Every stored (ID, kind)."""

    @abstractmethod
    def delete(self, oids: Iterable[bytes]) -> int:
        """Remove objects (used by gc only); returns how many were removed."""

    @abstractmethod
    def stats(self) -> StoreStats: ...

    @abstractmethod
    def sweep(
        self,
        live: Callable[[], set[bytes]],
        *,
        older_than: float,
        max_unused: float,
        dry_run: bool = False,
    ) -> SweepReport:
        """Remove every object not in ``live()`` that was stored before the time ``older_than``
        (a newer one may belong to a writer whose ref has not landed yet; a backend that keeps no
        storage times ignores this).

        ``live`` is asked again before each destructive step, so objects that became reachable
        meanwhile are kept. ``max_unused`` is the share of dead bytes a backend that stores
        objects together tolerates before it rewrites them (below it, objects only leave the
        index)."""

    def scan(self) -> Iterator[StoredObject]:
        """Every stored object once, in the order cheapest for the backend, with its record
        unverified (see ``decode_record``); fsck checks the store with this."""
        from vers.objects.reports import StoredObject

        for oid, kind in list(self.iter_ids()):
            rec = self._backend_get(oid)
            if rec is not None:  # else deleted while we looked
                yield StoredObject(oid, kind, rec)

    def release_stale_readers(self) -> int:
        """Readers that died without closing can keep a backend from reusing freed space; this
        releases them and says how many there were (0 for a backend without such readers)."""
        return 0

    def close(self) -> None:
        pass

    def writing(self) -> AbstractContextManager[None]:
        """Held (shared) by anything that writes objects and then points a ref at them.

        A writer may find an object already stored but unreachable and not write it again
        (dedup); gc must not delete it before the writer's ref lands. ``collecting`` excludes
        writers for the whole mark-and-sweep, so the two never interleave."""
        return nullcontext()

    def collecting(self) -> AbstractContextManager[None]:
        """Held (exclusive) by gc from marking until its sweep is done."""
        return nullcontext()

    def iter_prefix(self, hex_prefix: str) -> Iterator[tuple[bytes, int]]:
        """(ID, kind) of stored objects whose hex ID starts with ``hex_prefix``."""
        for oid, kind in self.iter_ids():
            if oid.hex().startswith(hex_prefix):
                yield oid, kind

    # -- reading ------------------------------------------------------------------------------
    def contains(self, oid: bytes) -> bool:
        return oid == ZERO_ID or not self._backend_missing([oid])

    def missing(self, oids: list[bytes]) -> list[bytes]:
        return self._backend_missing([o for o in oids if o != ZERO_ID])

    def get_record(self, oid: bytes) -> Record:
        rec = self._backend_get(oid)
        if rec is None and self.absent is not None:
            self.absent.fetch([oid])
            rec = self._backend_get(oid)
        if rec is None:
            raise ObjectNotFound(oid.hex())
        return rec

    def get_records(self, oids: Iterable[bytes]) -> Iterator[tuple[bytes, Record]]:
        """(ID, stored record) for each of ``oids``, in order: bulk readers (push) use this so
        a backend can batch its lookups. Not verified; use ``decode_record``."""
        for oid in oids:
            yield oid, self.get_record(oid)

    def get_pages(self, oids: list[bytes]) -> list[bytes]:
        """Many pages at once, each re-hashed; zero IDs cost no lookup. Readers of ranges (export,
        FUSE, mounts) use this so a backend can serve a whole request in one transaction."""
        out = [ZERO_PAGE] * len(oids)
        wanted = [(i, o) for i, o in enumerate(oids) if o != ZERO_ID]
        if self.absent is not None and wanted:
            absent = self._backend_missing(list(dict.fromkeys(o for _, o in wanted)))
            if absent:  # one batch for the whole request, not one fetch per page
                self.absent.fetch(absent)
        records = self.get_records(o for _, o in wanted)
        for (i, _), (oid, rec) in zip(wanted, records):
            out[i] = self.decode_record(oid, rec)
        return out

    def get_bytes(self, oid: bytes) -> bytes:
        """Canonical bytes of an object, re-hashed against its ID."""
        data, _kind = self._load(oid)
        return data

    def _load(self, oid: bytes) -> tuple[bytes, int]:
        rec = self.get_record(oid)
        data = self._decode(oid, rec)
        if hash_bytes(data) != oid:
            raise CorruptObject(oid.hex(),
                                f"{KIND_NAMES.get(rec.kind, '?')} content does not match its ID")
        return data, rec.kind

    def decode_record(self, oid: bytes, rec: Record) -> bytes:
        """Canonical bytes of a record from elsewhere (a bundle), verified against ``oid``.

        A delta record's base must already be in this store."""
        data = self._decode(oid, rec)
        if hash_bytes(data) != oid:
            raise CorruptObject(oid.hex(),
                                f"{KIND_NAMES.get(rec.kind, '?')} content does not match its ID")
        return data

    def _decode(self, oid: bytes, rec: Record) -> bytes:
        try:
            if rec.encoding == ENC_RAW:
                return bytes(rec.payload)
            if rec.encoding == ENC_ZSTD:
                return _codec.dctx.decompress(rec.payload)
            if rec.encoding == ENC_DELTA and rec.kind == KIND_NODE:
                base = rec.payload[:ID_LEN]
                base_data = self.get_bytes(base)
                _level, base_entries = parse_node(base, base_data)
                entries = bytearray(base_entries)
                for off in range(ID_LEN, len(rec.payload), _DELTA_ENTRY.size):
                    idx, child = _DELTA_ENTRY.unpack_from(rec.payload, off)
                    entries[idx * ID_LEN : (idx + 1) * ID_LEN] = child
                return base_data[:NODE_HEADER_LEN] + bytes(entries)
        except Exception as exc:
            if not (isinstance(exc, (struct.error, IndexError)) or _zstd_error(exc)):
                raise
            raise CorruptObject(oid.hex(), f"cannot decode stored record: {exc}") from exc
        raise CorruptObject(oid.hex(), f"unknown encoding {rec.encoding} for kind {rec.kind}")

    def get_page(self, oid: bytes) -> bytes:
        if oid == ZERO_ID:
            return ZERO_PAGE
        return self.get_bytes(oid)

    def get_node(self, oid: bytes) -> bytes:
        """The child-ID entries of a node (FANOUT * 32 bytes); cached, since trees are re-walked."""
        if oid == ZERO_ID:
            return ZERO_ENTRIES
        return self._get_node(oid)[1]

    def get_node_bytes(self, oid: bytes) -> bytes:
        """A stored node's canonical bytes, from the same cache as ``get_node`` (a delta-encoded
        node costs its whole chain to decode, so a writer deltas against a cached base)."""
        level, entries = self._get_node(oid)
        return node_bytes(level, entries)

    def _get_node(self, oid: bytes) -> tuple[int, bytes]:
        with self._cache_lock:
            hit = self._node_cache.get(oid)
            if hit is not None:
                self._node_cache.move_to_end(oid)
                return hit
        data, kind = self._load(oid)
        if kind != KIND_NODE:
            raise CorruptObject(oid.hex(), f"expected a node, found a {KIND_NAMES.get(kind, '?')}")
        node = parse_node(oid, data)
        self._cache_nodes([(oid, node)])
        return node

    def _remember_nodes(self, nodes: Iterable[tuple[bytes, bytes]]) -> None:
        """Put nodes just stored (ID, canonical bytes) into the node cache."""
        self._cache_nodes([(oid, parse_node(oid, data)) for oid, data in nodes])

    def _cache_nodes(self, nodes: list[tuple[bytes, tuple[int, bytes]]]) -> None:
        """Parsed nodes into the cache as its newest entries; the oldest go beyond its size."""
        with self._cache_lock:
            for oid, node in nodes:
                self._node_cache[oid] = node
                self._node_cache.move_to_end(oid)
            while len(self._node_cache) > self._node_cache_size:
                self._node_cache.popitem(last=False)

    def get_tree(self, oid: bytes) -> Tree:
        data, kind = self._load(oid)
        if kind != KIND_TREE:
            raise CorruptObject(oid.hex(), f"expected a tree, found a {KIND_NAMES.get(kind, '?')}")
        return Tree.parse(oid, data)

    def get_commit(self, oid: bytes) -> Commit:
        data, kind = self._load(oid)
        if kind != KIND_COMMIT:
            raise CorruptObject(oid.hex(),
                                f"expected a commit, found a {KIND_NAMES.get(kind, '?')}")
        return Commit.parse(oid, data)

    # -- writing ------------------------------------------------------------------------------
    def writer(self, flush_bytes: int = 64 << 20) -> ObjectWriter:
        return ObjectWriter(self, flush_bytes)


class ObjectWriter:
    """Batches new objects and writes them in large transactions.

    Use as a context manager: leaving normally flushes (objects durable), leaving by an exception
    drops what was not flushed. Nothing refers to unflushed objects, so a crash loses only them.
    """

    def __init__(self, store: ObjectStore, flush_bytes: int) -> None:
        self.store = store
        self.flush_bytes = flush_bytes
        self._pending: dict[bytes, Record] = {}
        self._pending_bytes = 0
        # Pages being compressed, and records being written, by the two worker threads; the main
        # thread keeps hashing meanwhile (zstd and LMDB's commit release the GIL, blake3 on 4 KiB
        # does not, so this is where a second core helps).
        self._compressing: dict[bytes, bytes] = {}
        self._compress_job: Future[list[tuple[bytes, Record]]] | None = None
        self._inflight: dict[bytes, Record] = {}
        self._flush_job: Future[None] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.bytes_written = 0
        self.objects_written = 0
        #: the newest nodes added, for the store's node cache once they are durable: the next
        #: commit of the same image patches exactly these (a delta-encoded node costs its whole
        #: chain to decode from the store)
        self._new_nodes: deque[tuple[bytes, bytes]] = deque(maxlen=store._node_cache_size)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.flush()
        else:
            self._pending.clear()
            self._compressing.clear()
            for job in (self._compress_job, self._flush_job):
                if job is not None:
                    job.exception()  # wait; a failed batch must not outlive the writer
            self._shutdown()

    def _known(self, oid: bytes) -> bool:
        return (oid == ZERO_ID or oid in self._pending or oid in self._compressing
                or oid in self._inflight)

    def missing(self, oids: list[bytes]) -> list[bytes]:
        """IDs neither pending here nor stored."""
        cand = [o for o in oids if not self._known(o)]
        return self.store.missing(cand) if cand else []

    def has(self, oid: bytes) -> bool:
        return self._known(oid) or self.store.contains(oid)

    def add(self, oid: bytes, kind: int, data: bytes, compress: bool = True) -> None:
        """Add an object by its canonical bytes (caller computed ``oid``); skips known IDs."""
        if self._known(oid):
            return
        self._queue(oid, encode_record(kind, data) if compress else Record(kind, ENC_RAW, 0, data))

    def add_pages(self, pages: list[tuple[bytes, bytes]]) -> None:
        """Add many pages; they are compressed on a worker thread while the caller goes on."""
        batch = {}
        for oid, data in pages:
            if not self._known(oid):
                batch[oid] = data
        self._drain_compress()
        if batch:
            self._compressing = batch
            self._compress_job = self._executor().submit(encode_pages, list(batch.items()))

    def _drain_compress(self) -> None:
        if self._compress_job is not None:
            job, self._compress_job = self._compress_job, None
            results = job.result()
            self._compressing = {}
            for oid, rec in results:
                self._queue(oid, rec)

    def add_record(self, oid: bytes, rec: Record) -> None:
        """Add an already-encoded record (from a bundle); the caller has verified it."""
        if not self._known(oid):
            self._queue(oid, rec)

    def add_node(self, oid: bytes, data: bytes, base_oid: bytes | None) -> None:
        """Add a node, as a delta against ``base_oid`` (a node of the same level) when that pays."""
        if self._known(oid):
            return
        self._new_nodes.append((oid, data))
        if base_oid is not None and base_oid != ZERO_ID:
            base_rec = (self._pending.get(base_oid) or self._inflight.get(base_oid)
                        or self.store._backend_get(base_oid))
            if base_rec is not None and base_rec.depth < MAX_DELTA_DEPTH:
                base_full = self._node_full(base_oid, base_rec)
                if data[:NODE_HEADER_LEN] == base_full[:NODE_HEADER_LEN]:
                    delta = encode_delta(base_oid, base_full[NODE_HEADER_LEN:],
                                         data[NODE_HEADER_LEN:])
                    if len(delta) <= DELTA_MAX_FRACTION * len(data):
                        self._queue(oid, Record(KIND_NODE, ENC_DELTA, base_rec.depth + 1, delta))
                        return
        self.add(oid, KIND_NODE, data, compress=True)

    def _node_full(self, oid: bytes, rec: Record) -> bytes:
        if oid in self._pending or oid in self._inflight:
            return self.store._decode(oid, rec)
        return self.store.get_node_bytes(oid)

    def _queue(self, oid: bytes, rec: Record) -> None:
        self._pending[oid] = rec
        self._pending_bytes += len(rec.payload) + 64
        if self._pending_bytes >= self.flush_bytes:
            self._start_flush()

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vers-writer")
        return self._pool

    def _wait_flush(self) -> None:
        if self._flush_job is not None:
            job, self._flush_job = self._flush_job, None
            try:
                job.result()
            finally:
                self._inflight = {}

    def _start_flush(self) -> None:
        """Hand the pending records to the writer thread (one batch in flight at a time)."""
        self._wait_flush()
        if not self._pending:
            return
        self._inflight, self._pending = self._pending, {}
        self._pending_bytes = 0
        records = list(self._inflight.items())
        self.objects_written += len(records)
        self.bytes_written += sum(len(r.payload) for _, r in records)
        self._flush_job = self._executor().submit(self.store._backend_put, records)

    def flush(self) -> None:
        """Write everything added so far; durable when this returns."""
        self._drain_compress()
        self._start_flush()
        self._wait_flush()
        self._shutdown()
        self.store._remember_nodes(self._new_nodes)
        self._new_nodes.clear()

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def encode_record(kind: int, data: bytes) -> Record:
    """The stored form of an object's canonical bytes: zstd when that saves enough, else raw."""
    packed = _codec.cctx.compress(data)
    if len(packed) + MIN_COMPRESSION_SAVING <= len(data):
        return Record(kind, ENC_ZSTD, 0, packed)
    return Record(kind, ENC_RAW, 0, data)


def encode_pages(pages: list[tuple[bytes, bytes]]) -> list[tuple[bytes, Record]]:
    """``encode_record`` of many pages in one zstd call, which runs without the interpreter
    lock: one call per 4 KiB page takes and drops the lock for each page, and the thread
    hashing pages meanwhile waits for it each time."""
    if len(pages) < 16:
        return [(oid, encode_record(KIND_PAGE, data)) for oid, data in pages]
    frames = _codec.cctx.multi_compress_to_buffer([data for _, data in pages], threads=1)
    out: list[tuple[bytes, Record]] = []
    for (oid, data), frame in zip(pages, frames, strict=True):  # type: ignore[call-overload]
        if len(frame) + MIN_COMPRESSION_SAVING <= len(data):
            out.append((oid, Record(KIND_PAGE, ENC_ZSTD, 0, frame.tobytes())))
        else:
            out.append((oid, Record(KIND_PAGE, ENC_RAW, 0, data)))
    return out


class MemoryObjectStore(ObjectStore):
    """A dict-backed store for tests and scratch work; same behaviour as the LMDB store.

    ``records`` is the dict itself: stored records by ID, open to code that needs to reach past
    the interface (tests that damage a record on purpose)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: dict[bytes, Record] = {}

    def _backend_get(self, oid: bytes) -> Record | None:
        return self.records.get(oid)

    def _backend_missing(self, oids: list[bytes]) -> list[bytes]:
        return [o for o in oids if o not in self.records]

    def _backend_put(self, records: list[tuple[bytes, Record]]) -> None:
        for oid, rec in records:
            self.records.setdefault(oid, rec)

    def iter_ids(self) -> Iterator[tuple[bytes, int]]:
        yield from ((oid, rec.kind) for oid, rec in list(self.records.items()))

    def delete(self, oids: Iterable[bytes]) -> int:
        n = 0
        for oid in oids:
            if self.records.pop(oid, None) is not None:
                n += 1
        return n

    def stats(self) -> StoreStats:
        from vers.objects.reports import StoreStats

        return StoreStats(len(self.records), sum(len(r.payload) for r in self.records.values()))

    def sweep(
        self,
        live: Callable[[], set[bytes]],
        *,
        older_than: float,
        max_unused: float,
        dry_run: bool = False,
    ) -> SweepReport:
        """No storage times here, and nothing shared between records: every unreachable object
        goes at once (this store lives in one process, so no writer is in flight)."""
        keep = live()
        garbage = [oid for oid in list(self.records) if oid not in keep]
        from vers.objects.reports import SweepReport

        report = SweepReport(bytes_removed=sum(len(self.records[o].payload) for o in garbage))
        report.objects_removed = len(garbage) if dry_run else self.delete(garbage)
        return report


__all__ = [
    "ENC_DELTA",
    "ENC_RAW",
    "ENC_ZSTD",
    "KIND_TREE",
    "AbsentObjects",
    "MemoryObjectStore",
    "ObjectStore",
    "ObjectWriter",
    "Record",
    "StoreStats",
    "StoredObject",
    "SweepReport",
    "encode_record",
]
