"""Fetch: bring the objects behind some remote commits into the local store, verified.

Discovery is top-down (commits, trees, then nodes level by level: each step is one batch of range
reads, so the number of round trips follows the tree depth, not the object count), but writing is
bottom-up -- pages first, then nodes by rising level, trees, commits parents first -- so a fetch
killed at any moment leaves the local store's invariant intact (a stored object has its whole
closure stored), and the next fetch skips every page already here. Metadata is held in memory until
the pages are in; it is small (one 8 KiB node per 256 pages).

Every object is re-hashed before it is written; nothing is written that failed, and no ref moves
here at all -- the caller moves refs after this returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from vers.errors import CorruptObject, ObjectNotFound, RemoteError
from vers.objects.model import ID_LEN, KIND_COMMIT, KIND_NAMES, KIND_PAGE, ZERO_ID
from vers.objects.store import (
    ENC_DELTA,
    ENC_RAW,
    ENC_ZSTD,
    MAX_DELTA_DEPTH,
    ObjectStore,
    ObjectWriter,
    Record,
    StoreStats,
    SweepReport,
    encode_record,
)
from vers.progress import NO_PROGRESS, Progress
from vers.remote.bundle import RECORD_HEADER, Loc, RemoteIndex, fetch_records
from vers.remote.negotiate import commits_to_send
from vers.remote.transport import Transport

# Pages are committed to the local store in batches of this size: a killed fetch keeps all but
# the last batch, and the next fetch skips what is already here.
FLUSH_BYTES = 8 << 20
FETCH_MODES = ("full", "lazy", "complete")


@dataclass
class FetchResult:
    objects: int = 0
    bytes: int = 0
    commits: int = 0


class _Overlay(ObjectStore):
    """Fetched-but-unwritten records over the local store, so any record decodes and verifies
    whether its delta base came over the wire or was already here."""

    def __init__(self, local: ObjectStore) -> None:
        super().__init__(node_cache_size=1 << 16)
        self.local = local
        self.records: dict[bytes, Record] = {}
        self._bytes: dict[bytes, bytes] = {}

    def _backend_get(self, oid: bytes) -> Record | None:
        rec = self.records.get(oid)
        return rec if rec is not None else self.local._backend_get(oid)

    def _backend_missing(self, oids: list[bytes]) -> list[bytes]:
        return [o for o in self.local.missing(oids) if o not in self.records]

    def _backend_put(self, records: list[tuple[bytes, Record]]) -> None:
        raise NotImplementedError("the overlay is read-only")

    def iter_ids(self) -> Iterator[tuple[bytes, int]]:
        yield from ((o, r.kind) for o, r in self.records.items())

    def delete(self, oids: Iterable[bytes]) -> int:
        return 0

    def stats(self) -> StoreStats:
        return StoreStats(len(self.records), sum(len(r.payload) for r in self.records.values()))

    def sweep(self, live: Callable[[], set[bytes]], *, older_than: float, max_unused: float,
              dry_run: bool = False) -> SweepReport:
        raise NotImplementedError("the overlay is read-only")

    def get_bytes(self, oid: bytes) -> bytes:
        # Delta chains share bases; decode each base once.
        data = self._bytes.get(oid)
        if data is None:
            data = super().get_bytes(oid)
            self._bytes[oid] = data
        return data


class Fetcher:
    def __init__(self, local: ObjectStore, transport: Transport, index: RemoteIndex,
                 progress: Progress = NO_PROGRESS, mode: str = "full") -> None:
        if mode not in FETCH_MODES:
            raise ValueError(f"unknown fetch mode {mode!r}")
        self.mode = mode
        self.local = local
        self.transport = transport
        self.index = index
        self.overlay = _Overlay(local)
        self.meter = progress.meter("fetch", unit="objects", count_bytes=True)
        self.result = FetchResult()

    def _locs(self, oids: Iterable[bytes]) -> list[tuple[bytes, Loc]]:
        out = []
        for oid in oids:
            loc = self.index.locs.get(oid)
            if loc is None:
                raise RemoteError(f"{self.transport.url}: object {oid.hex()} is needed but not on "
                                  "the remote (was it pruned?)")
            out.append((oid, loc))
        return out

    def _fetch(self, oids: Iterable[bytes], check: Callable[[bytes, Record], object] | None = None,
               ) -> Iterator[tuple[bytes, Record]]:
        for chunk in fetch_records(self.transport, self._locs(oids), check=check):
            n = sum(len(r.payload) + RECORD_HEADER.size for _, r in chunk)
            self.meter.advance(len(chunk), n)
            self.result.objects += len(chunk)
            self.result.bytes += n
            yield from chunk

    def _fetch_into_overlay(self, oids: list[bytes]) -> None:
        for oid, rec in self._fetch(oids):
            self.overlay.records[oid] = rec

    def _rejected(self, exc: CorruptObject) -> RemoteError:
        return RemoteError(f"{self.transport.url}: rejected object {exc.oid} from the remote: "
                           f"{exc.reason}; no local ref was changed")

    def run(self, tips: list[str]) -> FetchResult:
        with self.meter:
            try:
                self._run(tips)
            except CorruptObject as exc:
                raise self._rejected(exc) from exc
            except ObjectNotFound as exc:
                raise RemoteError(f"{self.transport.url}: incomplete remote: {exc}") from exc
        return self.result

    def _run(self, tips: list[str]) -> None:
        local, ov = self.local, self.overlay
        # A partial store keeps objects whose closure is not all here, so completing it walks
        # everything instead of pruning at what is stored.
        complete = self.mode == "complete"
        has = (lambda _oid: False) if complete else local.contains
        want = [t for t in dict.fromkeys(tips) if not has(bytes.fromhex(t))]
        if not want:
            return
        # Commits are tiny and the index says which IDs are commits: fetch every one we lack
        # in one batch instead of one round trip per generation.
        commit_ids = self.index.locs.ids_of_kind(KIND_COMMIT)
        self._fetch_into_overlay(local.missing(commit_ids))
        commits = commits_to_send(lambda c: ov.get_commit(bytes.fromhex(c)), want, has)
        new_commits = [c for c in commits if bytes.fromhex(c.id) in ov.records]
        self.result.commits = len(new_commits)
        if self.mode == "lazy":  # refs and commits only: the rest is read when needed
            with local.writer(FLUSH_BYTES) as w:
                for c in new_commits:
                    oid = bytes.fromhex(c.id)
                    w.add_record(oid, _plain(ov.records[oid]))
            return

        all_trees = list(dict.fromkeys(
            bytes.fromhex(t) for c in commits for t in c.images.values()))
        tree_ids = local.missing(all_trees)
        self._fetch_into_overlay(tree_ids)
        frontier: dict[int, list[bytes]] = {}
        for tid in all_trees if complete else tree_ids:
            tree = ov.get_tree(tid)
            if tree.root != ZERO_ID:
                frontier.setdefault(tree.depth, []).append(tree.root)

        nodes_by_level: dict[int, list[bytes]] = {}
        pages: list[bytes] = []
        seen: set[bytes] = set()
        for level in range(max(frontier, default=0), 0, -1):
            level_ids = [o for o in dict.fromkeys(frontier.get(level, [])) if o not in seen]
            ids = local.missing(level_ids)
            seen.update(level_ids if complete else ids)
            self._fetch_into_overlay(ids)
            self._fetch_delta_bases(ids)
            nodes_by_level[level] = ids
            children: list[bytes] = []
            for nid in level_ids if complete else ids:
                entries = ov.get_node(nid)  # verified, and must really be a node
                children += (entries[i:i + ID_LEN] for i in range(0, len(entries), ID_LEN))
            children = [c for c in dict.fromkeys(children) if c != ZERO_ID and c not in seen]
            if level == 1:
                pages = local.missing(children)
            else:
                frontier.setdefault(level - 1, []).extend(children)

        with local.writer(FLUSH_BYTES) as w:
            self._write_pages(w, pages)
            self._write_nodes(w, nodes_by_level)
            for tid in tree_ids:
                w.add_record(tid, _plain(ov.records[tid]))
            for c in new_commits:
                oid = bytes.fromhex(c.id)
                w.add_record(oid, _plain(ov.records[oid]))

    def _fetch_delta_bases(self, ids: list[bytes]) -> None:
        """Bring in delta bases that are neither here nor fetched (only to decode with)."""
        new = ids
        while new:
            bases = {r.payload[:ID_LEN] for r in (self.overlay.records[o] for o in new)
                     if r.encoding == ENC_DELTA}
            need = [b for b in bases if b not in self.overlay.records]
            need = self.local.missing(need) if need else []
            self._fetch_into_overlay(need)
            new = need

    def _check_page(self, oid: bytes, rec: Record) -> None:
        """Re-hash a page before it is stored (runs on the fetch worker threads)."""
        if rec.kind != KIND_PAGE or rec.encoding not in (ENC_RAW, ENC_ZSTD):
            raise CorruptObject(oid.hex(), f"expected a page, got a "
                                f"{KIND_NAMES.get(rec.kind, '?')} record")
        self.local.decode_record(oid, rec)

    def _write_pages(self, w: ObjectWriter, pages: list[bytes]) -> None:
        for oid, rec in self._fetch(pages, check=self._check_page):
            w.add_record(oid, _plain(rec))

    def _write_nodes(self, w: ObjectWriter, nodes_by_level: dict[int, list[bytes]]) -> None:
        depth_of: dict[bytes, int] = {}
        for level in sorted(nodes_by_level):
            ids = nodes_by_level[level]
            for oid in _bases_first(ids, self.overlay.records):
                rec = self.overlay.records[oid]
                if rec.encoding == ENC_DELTA:
                    base = rec.payload[:ID_LEN]
                    depth = depth_of.get(base)
                    if depth is None and self.local.contains(base):
                        depth = self.local.get_record(base).depth
                    if depth is not None and depth + 1 <= MAX_DELTA_DEPTH:
                        rec = Record(rec.kind, ENC_DELTA, depth + 1, rec.payload)
                    else:  # the base will not be stored here: keep the node whole
                        rec = encode_record(rec.kind, self.overlay.get_bytes(oid))
                else:
                    rec = _plain(rec)
                w.add_record(oid, rec)
                depth_of[oid] = rec.depth


def _plain(rec: Record) -> Record:
    return rec if rec.depth == 0 else Record(rec.kind, rec.encoding, 0, rec.payload)


def _bases_first(ids: list[bytes], records: dict[bytes, Record]) -> list[bytes]:
    """``ids`` reordered so a delta's base (when it is one of ``ids``) comes before it."""
    members = set(ids)
    out: list[bytes] = []
    done: set[bytes] = set()
    for oid in ids:
        chain = []
        cur: bytes | None = oid
        while cur is not None and cur in members and cur not in done:
            done.add(cur)
            chain.append(cur)
            rec = records[cur]
            cur = rec.payload[:ID_LEN] if rec.encoding == ENC_DELTA else None
        out.extend(reversed(chain))
    return out


def fetch_objects(local: ObjectStore, transport: Transport, index: RemoteIndex, tips: list[str],
                  progress: Progress = NO_PROGRESS, mode: str = "full") -> FetchResult:
    """Make every object reachable from ``tips`` present (and verified) in ``local``.

    ``mode``: "full" prunes at objects already stored (a complete store has their closure);
    "lazy" fetches the commits only (a partial store reads the rest from its promisor);
    "complete" walks everything and fetches whatever is absent (it completes a partial store)."""
    return Fetcher(local, transport, index, progress, mode).run(tips)
