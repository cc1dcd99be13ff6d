"""Finding a commit by time on a first-parent history in a few lookups, not a walk.

``REF@{15 minutes ago}`` means the newest commit at or before that time on REF's first-parent
history: walking back from REF, the first commit made no later than it. Reading and parsing every
commit on the way costs ~0.1 ms each, so on a recording at one commit a second the walk grows with
the age asked for (900 commits for 15 minutes). This index answers it in O(log n) lookups.

For each commit it keeps one entry in the LMDB database ``commit-times``, beside the objects and
never part of any object's bytes: the commit's time, its first-parent generation (0 for a root),
its first parent, a *jump* pointer to a first-parent ancestor, and the smallest commit time on the
path from the parent down to the jump target. Jumps follow the skew-binary scheme of Myers'
random-access lists (a commit jumps to its parent, or over two equal-length jumps of its parent's
line), so lengths grow as 1, 1, 3, 1, 1, 3, 7, ... and a search skips any run of commits that are
all later than the time asked for, whatever order the times are in (a clock that went back).

An entry depends only on its commit and that commit's ancestors, which never change: it cannot go
stale, and there is nothing to rebuild: a missing entry is made again. ``Repo`` adds the entry of
each commit it writes whose parent has one; others (fetched or older history) get theirs when a
search first walks them, written back in one transaction. An entry whose commit gc removed is
left in place: it is still right if the commit comes back, and costs 88 bytes plus its key.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple

import lmdb

from vers.errors import BadRevision, StoreError
from vers.objects.lmdbenv import DAMAGE, damaged, transaction
from vers.objects.model import ZERO_ID, Commit
from vers.refs.timespec import format_local

DB_NAME = b"commit-times"
_ENTRY = struct.Struct("<qI32s32sq")  # time, generation, first parent, jump, min time to jump


class Entry(NamedTuple):
    time_us: int
    generation: int
    parent: bytes | None
    jump: bytes | None
    #: the smallest commit time from ``parent`` down to ``jump``, both included
    span_min: int

    def pack(self) -> bytes:
        return _ENTRY.pack(self.time_us, self.generation, self.parent or ZERO_ID,
                           self.jump or ZERO_ID, self.span_min)

    @classmethod
    def unpack(cls, raw: bytes) -> Entry:
        t, gen, parent, jump, span = _ENTRY.unpack(raw)
        return cls(t, gen, parent if parent != ZERO_ID else None,
                   jump if jump != ZERO_ID else None, span)


class TimeIndex:
    """The ``commit-times`` entries of one store; ``get_commit`` reads a commit by binary ID."""

    def __init__(self, env: lmdb.Environment, get_commit: Callable[[bytes], Commit]) -> None:
        self.env = env
        self.get_commit = get_commit
        self._db: lmdb._Database | None = None

    def commit_at(self, start: str, when: int, what: str) -> str:
        """The newest commit at or before ``when`` (microseconds since the epoch) on ``start``'s
        first-parent history; ``what`` names the request in the error when there is none."""
        cid = bytes.fromhex(start)
        known = self._fill(cid)
        e = known[cid]
        while e.time_us > when:
            if e.parent is None:
                raise BadRevision(f"{what}: nothing on its first-parent history is that old; the "
                                  f"oldest commit, {cid.hex()[:12]}, is from "
                                  f"{format_local(e.time_us)}")
            # everything from the parent down to the jump target is later than ``when``: skip it
            cid = e.jump if e.jump is not None and e.span_min > when else e.parent
            e = self._entry(known, cid)
        return cid.hex()

    def add(self, cid: str, commit: Commit) -> None:
        """Index a commit just written, if its first parent is indexed (a root always is), so
        that searches over a history made here never read commits; otherwise the first search
        that passes it does it."""
        known: dict[bytes, Entry] = {}
        if commit.parents and self._lookup(known, bytes.fromhex(commit.parents[0])) is None:
            return
        self._store({bytes.fromhex(cid): self._make(known, commit)})

    def entry(self, cid: str) -> Entry:
        """The entry of commit ``cid`` (made, with its missing ancestors', if need be)."""
        oid = bytes.fromhex(cid)
        return self._fill(oid)[oid]

    # -- internals ----------------------------------------------------------------------------
    def _fill(self, oid: bytes) -> dict[bytes, Entry]:
        """Entries for ``oid`` and the ancestors its entry needs, making the missing ones from
        the commits (oldest first, since each needs its parent's) and storing them."""
        known: dict[bytes, Entry] = {}
        chain: list[tuple[bytes, Commit]] = []
        cursor: bytes | None = oid
        while cursor is not None and self._lookup(known, cursor) is None:
            c = self.get_commit(cursor)
            chain.append((cursor, c))
            cursor = bytes.fromhex(c.parents[0]) if c.parents else None
        new: dict[bytes, Entry] = {}
        for cid, c in reversed(chain):
            new[cid] = known[cid] = self._make(known, c)
        if new:
            self._store(new)
        return known

    def _make(self, known: dict[bytes, Entry], c: Commit) -> Entry:
        if not c.parents:
            return Entry(c.time_us, 0, None, None, c.time_us)
        parent = bytes.fromhex(c.parents[0])
        pe = self._entry(known, parent)
        if pe.jump is not None:
            je = self._entry(known, pe.jump)
            if je.jump is not None:
                jje = self._entry(known, je.jump)
                if pe.generation - je.generation == je.generation - jje.generation:
                    span = min(pe.time_us, pe.span_min, je.span_min)
                    return Entry(c.time_us, pe.generation + 1, parent, je.jump, span)
        return Entry(c.time_us, pe.generation + 1, parent, parent, pe.time_us)

    def _lookup(self, known: dict[bytes, Entry], oid: bytes) -> Entry | None:
        e = known.get(oid)
        if e is None:
            db = self._database()
            with transaction(self.env, also=(struct.error,)) as txn:
                raw = txn.get(oid, db=db)
            if raw is not None:
                e = known[oid] = Entry.unpack(raw)
        return e

    def _entry(self, known: dict[bytes, Entry], oid: bytes) -> Entry:
        e = self._lookup(known, oid)
        if e is None:  # entries are stored only after those of the ancestors they name
            raise StoreError(f"the commit-times entry of {oid.hex()} is missing")
        return e

    def _database(self) -> lmdb._Database:
        """The database, created on first use (a repository made before it has none)."""
        if self._db is None:
            try:
                self._db = self.env.open_db(DB_NAME)
            except DAMAGE as exc:
                raise damaged(self.env.path(), exc) from exc
        return self._db

    def _store(self, entries: dict[bytes, Entry]) -> None:
        db = self._database()
        with transaction(self.env, write=True) as txn:
            for oid, e in entries.items():
                txn.put(oid, e.pack(), db=db)
