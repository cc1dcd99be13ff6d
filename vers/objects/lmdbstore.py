"""The on-disk object store: one LMDB environment holding packs, an index, refs and reflogs.

Objects are not one LMDB value each: a 4096-byte page would take two 4 KiB overflow pages (2x
space, see docs/storage-format.md). Records are appended to *packs* (LMDB values of up to
``PACK_BYTES``), and the ``index`` maps a 32-byte ID to (pack, offset, length, kind, encoding,
delta depth). A write batch is one LMDB transaction: the packs and the index entries become
visible together, so a crash leaves either all of a batch or none of it.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import lmdb

from vers.errors import ObjectNotFound
from vers.files import open_private
from vers.objects.lmdbenv import DAMAGE, damaged, open_env, transaction
from vers.objects.store import ObjectStore, Record

if TYPE_CHECKING:
    from vers.objects.reports import StoredObject, StoreStats, SweepReport

PACK_BYTES = 8 << 20
PACKS_PER_TXN = 32  # 256 MiB of packs per sweep transaction: bounded memory, few transactions
_INDEX = struct.Struct("<QIIBBB")  # pack, offset, length, kind, encoding, depth
_RECORD_HEADER = struct.Struct("<32sBBBI")  # id, kind, encoding, depth, length
_PACK_META = struct.Struct("<dQ")  # creation time, bytes
_PACK_KEY = struct.Struct(">Q")

DB_NAMES = (b"index", b"packs", b"packmeta", b"refs", b"reflog", b"meta")


class LmdbObjectStore(ObjectStore):
    """Objects in packs inside LMDB. Shares its environment with the LMDB refs container."""

    def __init__(self, env: lmdb.Environment) -> None:
        super().__init__()
        self.env = env
        try:
            self.db = {name.decode(): env.open_db(name) for name in DB_NAMES}
        except DAMAGE as exc:
            error = damaged(env.path(), exc)
            env.close()
            raise error from exc

    @classmethod
    def open(cls, path: Path) -> LmdbObjectStore:
        """The existing store at ``path``; a missing or damaged one is a ``StoreError``."""
        return cls(open_env(path))

    @classmethod
    def create(cls, path: Path) -> LmdbObjectStore:
        """A new store at ``path`` (its directory 0700, its files 0600)."""
        return cls(open_env(path, create=True))

    @property
    def path(self) -> str:
        """The store's directory (``data.mdb`` and ``lock.mdb`` are in it)."""
        return str(self.env.path())

    def close(self) -> None:
        self.env.close()

    @contextmanager
    def _gc_lock(self, mode: int) -> Iterator[None]:
        fd = open_private(Path(self.path) / "gc.lock", os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, mode)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def writing(self) -> AbstractContextManager[None]:
        return self._gc_lock(fcntl.LOCK_SH)

    def collecting(self) -> AbstractContextManager[None]:
        return self._gc_lock(fcntl.LOCK_EX)

    # -- primitives ---------------------------------------------------------------------------
    def _backend_get(self, oid: bytes) -> Record | None:
        with transaction(self.env, buffers=True) as txn:
            loc = txn.get(oid, db=self.db["index"])
            if loc is None:
                return None
            pack_no, off, length, kind, enc, depth = _INDEX.unpack(loc)
            pack = txn.get(_PACK_KEY.pack(pack_no), db=self.db["packs"])
            if pack is None or off + length > len(pack):
                return Record(kind, enc, depth, b"")  # fails the re-hash, named by the caller
            return Record(kind, enc, depth, bytes(pack[off : off + length]))

    def get_records(self, oids: Iterable[bytes]) -> Iterator[tuple[bytes, Record]]:
        """Batched: one read transaction per 4096 IDs and each pack value looked up once per
        batch (getting an 8 MiB pack value from LMDB costs ~20 us, more than copying a record)."""
        index_db, packs_db = self.db["index"], self.db["packs"]
        it = iter(oids)
        while batch := list(itertools.islice(it, 4096)):
            out: list[tuple[bytes, Record]] = []
            with transaction(self.env, buffers=True) as txn:
                packs: dict[int, bytes | memoryview | None] = {}
                for oid in batch:
                    loc = txn.get(oid, db=index_db)
                    if loc is None:
                        raise ObjectNotFound(oid.hex())
                    pack_no, off, length, kind, enc, depth = _INDEX.unpack(loc)
                    if pack_no not in packs:
                        packs[pack_no] = txn.get(_PACK_KEY.pack(pack_no), db=packs_db)
                    pack = packs[pack_no]
                    ok = pack is not None and off + length <= len(pack)
                    payload = bytes(pack[off:off + length]) if ok and pack is not None else b""
                    out.append((oid, Record(kind, enc, depth, payload)))
            yield from out

    def _backend_missing(self, oids: list[bytes]) -> list[bytes]:
        index = self.db["index"]
        with transaction(self.env, buffers=True) as txn:
            return [o for o in oids if txn.get(o, db=index) is None]

    def _backend_put(self, records: list[tuple[bytes, Record]]) -> None:
        with transaction(self.env, write=True) as txn:
            self._put_in_txn(txn, records)

    def _put_in_txn(self, txn: lmdb.Transaction, records: list[tuple[bytes, Record]]) -> None:
        index_db, packs_db, meta_db = self.db["index"], self.db["packs"], self.db["packmeta"]
        fresh = [(o, r) for o, r in records if txn.get(o, db=index_db) is None]
        if not fresh:
            return
        cur = txn.cursor(db=packs_db)
        pack_no = _PACK_KEY.unpack(cur.key())[0] + 1 if cur.last() else 1
        entries: list[tuple[bytes, bytes]] = []
        # A pack is joined from its parts once (growing one buffer record by record copies it
        # again and again: that took longer than LMDB's own writing).
        parts: list[bytes] = []
        size = 0
        now = time.time()
        header, index = _RECORD_HEADER, _INDEX

        def put_pack() -> None:
            nonlocal parts, size, pack_no
            txn.put(_PACK_KEY.pack(pack_no), b"".join(parts), db=packs_db, append=True)
            txn.put(_PACK_KEY.pack(pack_no), _PACK_META.pack(now, size), db=meta_db)
            parts, size = [], 0
            pack_no += 1

        for oid, rec in fresh:
            n = len(rec.payload)
            if parts and size + n > PACK_BYTES:
                put_pack()
            parts.append(header.pack(oid, rec.kind, rec.encoding, rec.depth, n))
            size += header.size
            entries.append((oid, index.pack(pack_no, size, n, rec.kind, rec.encoding, rec.depth)))
            parts.append(rec.payload)
            size += n
        put_pack()
        entries.sort()
        txn.cursor(db=index_db).putmulti(entries)

    def iter_ids(self) -> Iterator[tuple[bytes, int]]:
        with transaction(self.env) as txn:
            for key, loc in txn.cursor(db=self.db["index"]):
                yield bytes(key), _INDEX.unpack(loc)[3]

    def iter_prefix(self, hex_prefix: str) -> Iterator[tuple[bytes, int]]:
        start = bytes.fromhex(hex_prefix[: len(hex_prefix) // 2 * 2])
        with transaction(self.env) as txn:
            cur = txn.cursor(db=self.db["index"])
            if not cur.set_range(start):
                return
            for key, loc in cur:
                if not bytes(key).startswith(start):
                    return
                if key.hex().startswith(hex_prefix):
                    yield bytes(key), _INDEX.unpack(loc)[3]

    # -- checking (fsck) ----------------------------------------------------------------------
    def scan(self) -> Iterator[StoredObject]:
        """Pack by pack, in one read transaction, then the index entries that lead nowhere.

        Reading pack by pack touches each 8 MiB pack value once instead of once per object (an
        LMDB get of a large value costs ~25 us, more than hashing the page). An index entry must
        point at its own record header inside an existing pack; one that does not is yielded
        without a record, saying where it points."""
        from vers.objects.reports import StoredObject

        hdr = _RECORD_HEADER
        index_db, packs_db = self.db["index"], self.db["packs"]
        with transaction(self.env, buffers=True) as txn:
            seen: set[bytes] = set()
            for key, pack in txn.cursor(db=packs_db):
                pack_no = _PACK_KEY.unpack(key)[0]
                off = 0
                while off + hdr.size <= len(pack):
                    rid, kind, enc, depth, length = hdr.unpack_from(pack, off)
                    start, end = off + hdr.size, off + hdr.size + length
                    if end > len(pack):
                        break  # a truncated record; its index entry (if any) is yielded below
                    off = end
                    loc = txn.get(rid, db=index_db)
                    if loc is None or (
                        _INDEX.unpack(loc) != (pack_no, start, length, kind, enc, depth)
                    ):
                        continue  # a dead duplicate: never read
                    oid = bytes(rid)
                    seen.add(oid)
                    yield StoredObject(oid, kind, Record(kind, enc, depth, bytes(pack[start:end])))
            for key, loc in txn.cursor(db=index_db):
                oid = bytes(key)
                if oid in seen:
                    continue
                pack_no, off, length, kind, _enc, _depth = _INDEX.unpack(loc)
                where = txn.get(_PACK_KEY.pack(pack_no), db=packs_db)
                if where is None:
                    detail = f"index points into pack {pack_no}, which does not exist"
                elif off < hdr.size or off + length > len(where):
                    detail = (f"index points outside pack {pack_no} "
                              f"(bytes {off}..{off + length} of {len(where)})")
                else:
                    detail = f"index entry does not match the record at pack {pack_no} offset {off}"
                yield StoredObject(oid, kind, None, detail)

    def stats(self) -> StoreStats:
        from vers.objects.reports import StoreStats

        with transaction(self.env) as txn:
            objects = int(txn.stat(self.db["index"])["entries"])
        return StoreStats(objects, sum(size for _, _, size in self.iter_packs()))

    # -- maintenance (gc) ---------------------------------------------------------------------
    def release_stale_readers(self) -> int:
        """Reader slots of killed processes pin old pages, so LMDB could not reuse what gc frees."""
        try:
            return int(self.env.reader_check())
        except lmdb.Error as exc:
            raise damaged(self.env.path(), exc) from exc

    def sweep(
        self,
        live: Callable[[], set[bytes]],
        *,
        older_than: float,
        max_unused: float,
        dry_run: bool = False,
    ) -> SweepReport:
        """Unreachable objects in packs created before ``older_than`` go in one of two ways
        (restic's prune does the same):

        - the pack is rewritten without them when, afterwards, more than ``max_unused`` of it
          would be dead bytes (or nothing in it is live): the space is freed now;
        - otherwise only their index entries go: they are gone for every reader at once, and
          their bytes stay as dead records until the pack passes the threshold in a later sweep.
          This keeps a gc after a small retention change from copying every pack to free a few
          pages.

        Each batch of packs is rewritten in one transaction (survivors copied to new packs, the
        old packs dropped together), so a kill leaves either the old packs or the new ones."""
        from vers.objects.reports import SweepReport

        report = SweepReport()
        marked = live()
        repack: list[int] = []
        unindex: list[bytes] = []
        for pack_no, created, size in list(self.iter_packs()):
            stored = self._pack_objects(pack_no)
            garbage = [o for o in stored if o not in marked]
            if created > older_than:
                report.young_unreachable += len(garbage)
                continue
            keep_bytes = self._record_bytes([o for o in stored if o in marked])
            dead = size - keep_bytes
            if not garbage and dead <= max_unused * size:
                continue
            report.objects_removed += len(garbage)
            report.bytes_removed += self._record_bytes(garbage)
            if keep_bytes == 0 or dead > max_unused * size:
                repack.append(pack_no)
            else:
                unindex.extend(garbage)
                report.dead_bytes_left += self._record_bytes(garbage)
        report.packs_rewritten = len(repack)
        if dry_run:
            return report
        removed = 0
        for i in range(0, max(len(repack), 1), PACKS_PER_TXN):
            marked = live()
            batch = repack[i : i + PACKS_PER_TXN]
            if batch:
                removed += self._rewrite_packs(batch, marked)
            if i == 0 and unindex:
                removed += self.delete([o for o in unindex if o not in marked])
        report.objects_removed = removed
        return report

    def _record_bytes(self, oids: list[bytes]) -> int:
        """Bytes the records of ``oids`` take in their packs, from the index alone (reading each
        record would cost a pack lookup)."""
        total = 0
        with transaction(self.env, buffers=True) as txn:
            for oid in oids:
                loc = txn.get(oid, db=self.db["index"])
                if loc is not None:
                    total += _INDEX.unpack(loc)[2] + _RECORD_HEADER.size
        return total

    def iter_packs(self) -> Iterator[tuple[int, float, int]]:
        """(pack number, creation time, bytes) of every pack."""
        with transaction(self.env) as txn:
            for key, val in txn.cursor(db=self.db["packmeta"]):
                created, size = _PACK_META.unpack(val)
                yield _PACK_KEY.unpack(key)[0], created, size

    def _pack_objects(self, pack_no: int) -> list[bytes]:
        """IDs whose live record is in this pack (a pack may also hold dead duplicates)."""
        out: list[bytes] = []
        with transaction(self.env, buffers=True) as txn:
            pack = txn.get(_PACK_KEY.pack(pack_no), db=self.db["packs"])
            if pack is None:
                return out
            off = 0
            while off < len(pack):
                oid, _k, _e, _d, length = _RECORD_HEADER.unpack_from(pack, off)
                loc = txn.get(oid, db=self.db["index"])
                if loc is not None and _INDEX.unpack(loc)[0] == pack_no:
                    out.append(bytes(oid))
                off += _RECORD_HEADER.size + length
        return out

    def _rewrite_packs(self, pack_nos: list[int], keep: set[bytes]) -> int:
        """Copy the records of ``keep`` out of ``pack_nos`` into new packs, then drop those packs
        and every index entry still pointing into them; returns how many objects went. Atomic: one
        transaction."""
        index_db, packs_db, meta_db = self.db["index"], self.db["packs"], self.db["packmeta"]
        removed = 0
        survivors: list[tuple[bytes, Record]] = []
        with transaction(self.env, write=True) as txn:
            for pack_no in pack_nos:
                key = _PACK_KEY.pack(pack_no)
                pack = txn.get(key, db=packs_db)
                if pack is None:
                    continue
                off = 0
                while off < len(pack):
                    oid, kind, enc, depth, length = _RECORD_HEADER.unpack_from(pack, off)
                    start = off + _RECORD_HEADER.size
                    off = start + length
                    loc = txn.get(oid, db=index_db)
                    if loc is None or _INDEX.unpack(loc)[0] != pack_no:
                        continue
                    if oid in keep:
                        survivors.append((oid, Record(kind, enc, depth, bytes(pack[start:off]))))
                    else:
                        removed += 1
                    txn.delete(oid, db=index_db)
                txn.delete(key, db=packs_db)
                txn.delete(key, db=meta_db)
            self._put_in_txn(txn, survivors)
        return removed

    def delete(self, oids: Iterable[bytes]) -> int:
        n = 0
        with transaction(self.env, write=True) as txn:
            for oid in oids:
                if txn.delete(oid, db=self.db["index"]):
                    n += 1
        return n
