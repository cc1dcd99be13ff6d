"""The on-disk object store: one LMDB environment holding packs, an index, refs and reflogs.

Objects are not one LMDB value each: a 4096-byte page would take two 4 KiB overflow pages (2x
space, see FINDINGS.md). Records are appended to *packs* (LMDB values of up to ``PACK_BYTES``), and
the ``index`` maps a 32-byte ID to (pack, offset, length, kind, encoding, delta depth). A write
batch is one LMDB transaction: the packs and the index entries become visible together, so a crash
leaves either all of a batch or none of it.
"""

from __future__ import annotations

import fcntl
import itertools
import struct
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import lmdb

from vers.errors import ObjectNotFound, StoreError
from vers.objects.store import ObjectStore, Record

PACK_BYTES = 8 << 20
MAP_SIZE = 1 << 40  # address space only; the file grows as data is written
_INDEX = struct.Struct("<QIIBBB")  # pack, offset, length, kind, encoding, depth
_RECORD_HEADER = struct.Struct("<32sBBBI")  # id, kind, encoding, depth, length
_PACK_META = struct.Struct("<dQ")  # creation time, bytes
_PACK_KEY = struct.Struct(">Q")

DB_NAMES = (b"index", b"packs", b"packmeta", b"refs", b"reflog", b"meta")


def open_env(path: Path, readonly: bool = False) -> lmdb.Environment:
    try:
        return lmdb.open(
            str(path),
            map_size=MAP_SIZE,
            max_dbs=len(DB_NAMES) + 2,
            subdir=True,
            readahead=False,
            max_readers=512,
            readonly=readonly,
            create=not readonly,
        )
    except lmdb.Error as exc:
        raise StoreError(f"cannot open store at {path}: {exc}") from exc


class LmdbObjectStore(ObjectStore):
    """Objects in packs inside LMDB. Shares its environment with the LMDB refs container."""

    def __init__(self, env: lmdb.Environment) -> None:
        super().__init__()
        self.env = env
        self.db = {name.decode(): env.open_db(name) for name in DB_NAMES}

    @classmethod
    def open(cls, path: Path) -> LmdbObjectStore:
        path.mkdir(parents=True, exist_ok=True)
        return cls(open_env(path))

    @property
    def path(self) -> str:
        """The store's directory (``data.mdb`` and ``lock.mdb`` are in it)."""
        return str(self.env.path())

    def close(self) -> None:
        self.env.close()

    @contextmanager
    def _gc_lock(self, mode: int) -> Iterator[None]:
        with open(Path(self.env.path()) / "gc.lock", "a+b") as f:
            fcntl.flock(f.fileno(), mode)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def writing(self) -> AbstractContextManager[None]:
        return self._gc_lock(fcntl.LOCK_SH)

    def collecting(self) -> AbstractContextManager[None]:
        return self._gc_lock(fcntl.LOCK_EX)

    # -- primitives ---------------------------------------------------------------------------
    def _backend_get(self, oid: bytes) -> Record | None:
        with self.env.begin(buffers=True) as txn:
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
            with self.env.begin(buffers=True) as txn:
                packs: dict[int, memoryview | None] = {}
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
        with self.env.begin(buffers=True) as txn:
            return [o for o in oids if txn.get(o, db=index) is None]

    def _backend_put(self, records: list[tuple[bytes, Record]]) -> None:
        try:
            with self.env.begin(write=True) as txn:
                self._put_in_txn(txn, records)
        except lmdb.Error as exc:
            raise StoreError(f"writing objects failed: {exc}") from exc

    def _put_in_txn(self, txn: lmdb.Transaction, records: list[tuple[bytes, Record]]) -> None:
        index_db, packs_db, meta_db = self.db["index"], self.db["packs"], self.db["packmeta"]
        fresh = [(o, r) for o, r in records if txn.get(o, db=index_db) is None]
        if not fresh:
            return
        cur = txn.cursor(db=packs_db)
        pack_no = _PACK_KEY.unpack(cur.key())[0] + 1 if cur.last() else 1
        entries: list[tuple[bytes, bytes]] = []
        buf = bytearray()
        now = time.time()

        def put_pack() -> None:
            nonlocal buf, pack_no
            txn.put(_PACK_KEY.pack(pack_no), buf, db=packs_db)  # no copy: put takes any buffer
            txn.put(_PACK_KEY.pack(pack_no), _PACK_META.pack(now, len(buf)), db=meta_db)
            buf = bytearray()
            pack_no += 1

        for oid, rec in fresh:
            if buf and len(buf) + len(rec.payload) > PACK_BYTES:
                put_pack()
            buf += _RECORD_HEADER.pack(oid, rec.kind, rec.encoding, rec.depth, len(rec.payload))
            entries.append(
                (oid, _INDEX.pack(pack_no, len(buf), len(rec.payload), rec.kind, rec.encoding, rec.depth))
            )
            buf += rec.payload
        put_pack()
        entries.sort()
        txn.cursor(db=index_db).putmulti(entries)

    def iter_ids(self) -> Iterator[tuple[bytes, int]]:
        with self.env.begin() as txn:
            for key, loc in txn.cursor(db=self.db["index"]):
                yield bytes(key), _INDEX.unpack(loc)[3]

    def iter_prefix(self, hex_prefix: str) -> Iterator[tuple[bytes, int]]:
        start = bytes.fromhex(hex_prefix[: len(hex_prefix) // 2 * 2])
        with self.env.begin() as txn:
            cur = txn.cursor(db=self.db["index"])
            if not cur.set_range(start):
                return
            for key, loc in cur:
                if not key.startswith(start):
                    return
                if key.hex().startswith(hex_prefix):
                    yield bytes(key), _INDEX.unpack(loc)[3]

    # -- maintenance (gc) ---------------------------------------------------------------------
    def iter_packs(self) -> Iterator[tuple[int, float, int]]:
        """(pack number, creation time, bytes) of every pack."""
        with self.env.begin() as txn:
            for key, val in txn.cursor(db=self.db["packmeta"]):
                created, size = _PACK_META.unpack(val)
                yield _PACK_KEY.unpack(key)[0], created, size

    def pack_objects(self, pack_no: int) -> list[bytes]:
        """IDs whose live record is in this pack (a pack may also hold dead duplicates)."""
        out: list[bytes] = []
        with self.env.begin(buffers=True) as txn:
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

    def rewrite_packs(self, pack_nos: list[int], keep: set[bytes]) -> tuple[int, int]:
        """Copy the records of ``keep`` out of ``pack_nos`` into new packs, then drop those packs
        and every index entry still pointing into them. Atomic: one transaction."""
        index_db, packs_db, meta_db = self.db["index"], self.db["packs"], self.db["packmeta"]
        removed = freed = 0
        survivors: list[tuple[bytes, Record]] = []
        with self.env.begin(write=True) as txn:
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
                freed += len(pack)
                txn.delete(key, db=packs_db)
                txn.delete(key, db=meta_db)
            self._put_in_txn(txn, survivors)
        return removed, freed

    def delete(self, oids: Iterable[bytes]) -> int:
        n = 0
        with self.env.begin(write=True) as txn:
            for oid in oids:
                if txn.delete(oid, db=self.db["index"]):
                    n += 1
        return n
