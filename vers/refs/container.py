"""Refs: HEAD, refs/heads/*, refs/tags/*, ... with compare-and-swap updates and a reflog per ref.

As in dulwich's ``RefsContainer``, every update names the value it expects (``old``) and fails with
``RefConflict`` if another writer got there first. Backends only provide an atomic transaction over
a key/value view; the LMDB backend shares the object store's environment, so an update is one LMDB
write transaction (serialised across processes by LMDB's writer lock).
"""

from __future__ import annotations

import json
import os
import re
import struct
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

import lmdb

from vers.errors import BadRefName, RefConflict, RefError
from vers.objects.lmdbenv import DAMAGE, damaged, transaction

SYMREF_PREFIX = "ref: "
HEAD = "HEAD"
ANY = object()  # "any current value" for compare-and-swap updates
T = TypeVar("T")
_BAD_REF_CHARS = r"[\x00-\x20\x7f~^:?*\[\\]"  # compiled on first use
_REFLOG_KEY = struct.Struct(">Q")


def check_ref_name(name: str) -> str:
    """git check-ref-format rules, plus: only HEAD-like names or refs/...; returns ``name``."""
    if name in (HEAD, "BISECT_HEAD", "ORIG_HEAD", "FETCH_HEAD"):
        return name
    if not name.startswith("refs/"):
        raise BadRefName(f"bad ref name {name!r}: must start with refs/")
    parts = name.split("/")
    if (
        any(not p or p.startswith(".") or p.endswith(".lock") for p in parts)
        or ".." in name
        or "@{" in name
        or name.endswith(".")
        or re.search(_BAD_REF_CHARS, name)
        or len(name) > 400
    ):
        raise BadRefName(f"bad ref name {name!r}")
    return name


def check_short_name(name: str, what: str = "branch") -> str:
    """A branch or tag name as a user types it (``main``, ``feature/x``)."""
    if name in ("HEAD", "@") or name.startswith(("-", "refs/")):
        raise BadRefName(f"bad {what} name {name!r}")
    try:
        check_ref_name("refs/heads/" + name)
    except BadRefName as exc:
        raise BadRefName(f"bad {what} name {name!r}") from exc
    return name


def default_identity() -> str:
    import getpass

    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        user = "unknown"
    return f"{user}@{os.uname().nodename}"  # what socket.gethostname() returns


@dataclass(frozen=True)
class ReflogEntry:
    old: str | None
    new: str | None
    time: int
    who: str
    message: str

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ReflogEntry:
        d = json.loads(raw)
        return cls(d.get("old"), d.get("new"), int(d["time"]), d.get("who", ""),
                   d.get("message", ""))


class RefTxn(Protocol):
    def get(self, name: str) -> str | None: ...
    def put(self, name: str, value: str) -> None: ...
    def delete(self, name: str) -> None: ...
    def log(self, name: str, entry: ReflogEntry) -> None: ...


class RefsContainer(ABC):
    @abstractmethod
    def _transaction(self, fn: Callable[[RefTxn], T]) -> T:
        """Run ``fn`` atomically: all of its puts, deletes and log appends, or none."""

    @abstractmethod
    def _items(self, prefix: str) -> dict[str, str]: ...

    @abstractmethod
    def _reflog_entries(self, name: str) -> list[ReflogEntry]:
        """Oldest first."""

    @abstractmethod
    def rewrite_reflog(
        self, name: str, edit: Callable[[list[ReflogEntry]], list[ReflogEntry]]
    ) -> int:
        """Replace ``name``'s reflog (oldest first) by ``edit(entries)`` atomically, so an entry
        appended meanwhile is never lost; returns how many entries were removed."""

    @abstractmethod
    def reflog_names(self) -> list[str]: ...

    # -- reading ------------------------------------------------------------------------------
    def read_ref(self, name: str) -> str | None:
        """Raw value: ``"ref: refs/heads/x"`` for a symbolic ref, else a hex ID; None if absent."""
        return self._items(name).get(name)

    def follow(self, name: str) -> tuple[list[str], str | None]:
        """The chain of names from ``name`` to a non-symbolic ref, and its value."""
        chain = [name]
        value = self.read_ref(name)
        while value is not None and value.startswith(SYMREF_PREFIX):
            target = value[len(SYMREF_PREFIX) :]
            if target in chain or len(chain) > 5:
                raise RefError(f"symbolic ref loop at {name}")
            chain.append(target)
            value = self.read_ref(target)
        return chain, value

    def resolve(self, name: str) -> str | None:
        return self.follow(name)[1]

    def list_refs(self, prefix: str = "refs/") -> dict[str, str]:
        return dict(sorted(self._items(prefix).items()))

    def reflog(self, name: str) -> list[ReflogEntry]:
        """Newest first, like ``git reflog``."""
        return list(reversed(self._reflog_entries(name)))

    # -- updating -----------------------------------------------------------------------------
    def set_ref(
        self,
        name: str,
        new: str,
        old: object = ANY,
        message: str = "",
        follow: bool = True,
        who: str | None = None,
    ) -> None:
        """Point ``name`` (or, if symbolic and ``follow``, its target) at ``new`` if it still
        holds ``old`` (None: must not exist; default: anything). Logged in every touched reflog."""
        check_ref_name(name)
        who = who or default_identity()

        def apply(txn: RefTxn) -> None:
            chain = [name]
            value = txn.get(name)
            while follow and value is not None and value.startswith(SYMREF_PREFIX):
                chain.append(value[len(SYMREF_PREFIX) :])
                if len(chain) > 5:
                    raise RefError(f"symbolic ref loop at {name}")
                value = txn.get(chain[-1])
            if old is not ANY and value != old:
                raise RefConflict(
                    f"ref {chain[-1]} is at {value or '(nothing)'}, expected {old or '(nothing)'}: "
                    "another writer moved it"
                )
            target = check_ref_name(chain[-1])
            txn.put(target, new)
            # Reflogs hold commit IDs only: a symbolic ref replaced without following it (HEAD
            # detached from a branch) is logged as the commit it pointed at.
            entry = ReflogEntry(self._resolve_in(txn, value), new, int(time.time()), who, message)
            for ref in chain:
                txn.log(ref, entry)

        self._transaction(apply)

    def set_symbolic_ref(self, name: str, target: str, message: str = "") -> None:
        check_ref_name(name)
        check_ref_name(target)
        who = default_identity()

        def apply(txn: RefTxn) -> None:
            old = txn.get(name)
            txn.put(name, SYMREF_PREFIX + target)
            old_id = self._resolve_in(txn, old)
            new_id = self._resolve_in(txn, SYMREF_PREFIX + target)
            if message:
                txn.log(name, ReflogEntry(old_id, new_id, int(time.time()), who, message))

        self._transaction(apply)

    @staticmethod
    def _resolve_in(txn: RefTxn, value: str | None) -> str | None:
        for _ in range(6):
            if value is None or not value.startswith(SYMREF_PREFIX):
                return value
            value = txn.get(value[len(SYMREF_PREFIX) :])
        return None

    def delete_ref(self, name: str, old: object = ANY, message: str = "") -> None:
        check_ref_name(name)

        def apply(txn: RefTxn) -> None:
            value = txn.get(name)
            if value is None:
                raise RefError(f"ref {name} does not exist")
            if old is not ANY and value != old:
                raise RefConflict(f"ref {name} is at {value}, expected {old}")
            txn.delete(name)
            txn.log(name, ReflogEntry(value, None, int(time.time()), default_identity(), message))

        self._transaction(apply)

    def expire_reflog(self, name: str, keep: Callable[[int, ReflogEntry], bool]) -> int:
        """Drop the entries for which ``keep(age_rank, entry)`` is false (0 = newest)."""

        def edit(entries: list[ReflogEntry]) -> list[ReflogEntry]:
            n = len(entries)
            return [e for i, e in enumerate(entries) if keep(n - 1 - i, e)]

        return self.rewrite_reflog(name, edit)


class DictRefsContainer(RefsContainer):
    """In-memory refs (tests, scratch repositories)."""

    def __init__(self) -> None:
        self._refs: dict[str, str] = {}
        self._logs: dict[str, list[ReflogEntry]] = {}
        self._lock = threading.Lock()

    def _transaction(self, fn: Callable[[RefTxn], T]) -> T:
        with self._lock:
            refs = dict(self._refs)
            logs: dict[str, list[ReflogEntry]] = {}
            outer = self

            class Txn:
                def get(self, name: str) -> str | None:
                    return refs.get(name)

                def put(self, name: str, value: str) -> None:
                    refs[name] = value

                def delete(self, name: str) -> None:
                    refs.pop(name, None)

                def log(self, name: str, entry: ReflogEntry) -> None:
                    logs.setdefault(name, list(outer._logs.get(name, []))).append(entry)

            result = fn(Txn())
            self._refs = refs
            self._logs.update(logs)
            return result

    def _items(self, prefix: str) -> dict[str, str]:
        return {k: v for k, v in self._refs.items() if k.startswith(prefix)}

    def _reflog_entries(self, name: str) -> list[ReflogEntry]:
        return list(self._logs.get(name, []))

    def rewrite_reflog(
        self, name: str, edit: Callable[[list[ReflogEntry]], list[ReflogEntry]]
    ) -> int:
        with self._lock:
            entries = list(self._logs.get(name, []))
            new = list(edit(list(entries)))
            self._logs[name] = new
            return len(entries) - len(new)

    def reflog_names(self) -> list[str]:
        return sorted(self._logs)


# A reflog entry that no longer parses (LMDB hands back whatever bytes a damaged page holds).
_ENTRY_DAMAGE = (ValueError, KeyError, TypeError)


class LmdbRefsContainer(RefsContainer):
    """Refs in the ``refs`` database and reflogs in ``reflog`` (key: name NUL big-endian seq)."""

    def __init__(self, env: lmdb.Environment) -> None:
        self.env = env
        try:
            self.refs_db = env.open_db(b"refs")
            self.log_db = env.open_db(b"reflog")
        except DAMAGE as exc:
            raise damaged(env.path(), exc) from exc

    def _transaction(self, fn: Callable[[RefTxn], T]) -> T:
        refs_db, log_db = self.refs_db, self.log_db
        with transaction(self.env, write=True) as txn:

            class Txn:
                def get(self, name: str) -> str | None:
                    v = txn.get(name.encode(), db=refs_db)
                    return None if v is None else bytes(v).decode()

                def put(self, name: str, value: str) -> None:
                    txn.put(name.encode(), value.encode(), db=refs_db)

                def delete(self, name: str) -> None:
                    txn.delete(name.encode(), db=refs_db)

                def log(self, name: str, entry: ReflogEntry) -> None:
                    prefix = name.encode() + b"\0"
                    cur = txn.cursor(db=log_db)
                    moved = cur.prev() if cur.set_range(prefix + b"\xff" * 8) else cur.last()
                    seq = 0
                    if moved and cur.key().startswith(prefix):
                        seq = _REFLOG_KEY.unpack(cur.key()[len(prefix) :])[0] + 1
                    txn.put(prefix + _REFLOG_KEY.pack(seq), entry.to_json(), db=log_db)

            return fn(Txn())

    def _items(self, prefix: str) -> dict[str, str]:
        out: dict[str, str] = {}
        p = prefix.encode()
        with transaction(self.env, also=_ENTRY_DAMAGE) as txn:
            cur = txn.cursor(db=self.refs_db)
            if cur.set_range(p):
                for k, v in cur:
                    if not k.startswith(p):
                        break
                    out[k.decode()] = v.decode()
        return out

    def _iter_log(self, txn: lmdb.Transaction, name: str) -> Iterator[tuple[bytes, bytes]]:
        prefix = name.encode() + b"\0"
        cur = txn.cursor(db=self.log_db)
        if cur.set_range(prefix):
            for k, v in cur:
                key = bytes(k)
                if not key.startswith(prefix):
                    break
                yield key, bytes(v)

    def _reflog_entries(self, name: str) -> list[ReflogEntry]:
        with transaction(self.env, also=_ENTRY_DAMAGE) as txn:
            return [ReflogEntry.from_json(v) for _, v in self._iter_log(txn, name)]

    def rewrite_reflog(
        self, name: str, edit: Callable[[list[ReflogEntry]], list[ReflogEntry]]
    ) -> int:
        prefix = name.encode() + b"\0"
        with transaction(self.env, write=True, also=_ENTRY_DAMAGE) as txn:
            old = list(self._iter_log(txn, name))
            entries = [ReflogEntry.from_json(v) for _, v in old]
            new = list(edit(list(entries)))
            if new != entries:
                for k, _ in old:
                    txn.delete(k, db=self.log_db)
                for seq, e in enumerate(new):
                    txn.put(prefix + _REFLOG_KEY.pack(seq), e.to_json(), db=self.log_db)
            return len(entries) - len(new)

    def reflog_names(self) -> list[str]:
        names = set()
        with transaction(self.env, also=_ENTRY_DAMAGE) as txn:
            for k, _ in txn.cursor(db=self.log_db):
                names.add(k.split(b"\0", 1)[0].decode())
        return sorted(names)
