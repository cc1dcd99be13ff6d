"""The one LMDB environment a repository keeps its objects, refs and reflogs in, opened so that a
damaged file is an error that names it, never a crash or a silently empty repository.

LMDB maps ``data.mdb`` into memory. A file shorter than the pages the environment says it uses
(a truncated copy, a full disk) would kill the process with SIGBUS on the first read past its
end, and an ``lmdb.open`` that may create files would quietly make a new, empty store where the
old one was missing or empty. So an existing store is opened only after its meta pages have been
read and the file checked against the last page they name, and never with creation allowed;
only ``vers init`` creates one. Failures inside a transaction (a damaged B-tree page, a record
that does not unpack) become ``StoreError`` naming the file, through ``transaction``.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb

from vers.errors import StoreError
from vers.files import DIR_MODE, FILE_MODE, make_private_dirs

MAP_SIZE = 1 << 40  # address space only; the file grows as data is written
MAX_DBS = 8
DATA_FILE = "data.mdb"

# An LMDB meta page (two of them, pages 0 and 1, the newer one current): a 16-byte page header,
# then magic, version, address, map size, the free and main database records (the free one's
# first field is the page size), the last page used and the transaction ID.
_META = struct.Struct("<16xIIQQI92xQQ")
_META_MAGIC = 0xBEEFC0DE
_META_VERSION = 1
_MIN_PAGE = 512

# What a damaged file makes LMDB, or code unpacking what it returned, raise.
DAMAGE: tuple[type[BaseException], ...] = (lmdb.Error, struct.error, UnicodeDecodeError)


def data_file(path: str | os.PathLike[str]) -> Path:
    return Path(path) / DATA_FILE


def check_data_file(path: str | os.PathLike[str]) -> None:
    """Refuse a store whose ``data.mdb`` is missing, not a file, or shorter than its pages."""
    data = data_file(path)
    try:
        st = os.stat(data)
    except FileNotFoundError:
        raise StoreError(f"{data}: missing: the repository's objects and refs are gone "
                         "(see docs/recovery.md)") from None
    except OSError as exc:
        raise StoreError(f"{data}: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{data}: not a regular file")
    if st.st_size == 0:
        raise StoreError(f"{data}: empty: the repository's objects and refs are gone "
                         "(see docs/recovery.md)")
    try:
        with open(data, "rb") as f:
            first = f.read(_META.size)
            metas = [_parse_meta(first)]
            if metas[0] is not None:
                f.seek(metas[0][0])
                metas.append(_parse_meta(f.read(_META.size)))
    except OSError as exc:
        raise StoreError(f"{data}: cannot be read: {exc.strerror}") from exc
    valid = [m for m in metas if m is not None]
    if not valid:
        raise StoreError(f"{data}: not an LMDB store, or its header is damaged "
                         "(see docs/recovery.md)")
    psize, last_page, _txn = max(valid, key=lambda m: m[2])
    need = (last_page + 1) * psize
    if st.st_size < need:
        raise StoreError(f"{data}: truncated: {st.st_size} bytes, but the store uses {need} "
                         "(see docs/recovery.md)")


def _parse_meta(raw: bytes) -> tuple[int, int, int] | None:
    """(page size, last page, transaction ID) of one meta page, or None if it is not one."""
    if len(raw) < _META.size:
        return None
    magic, version, _addr, _mapsize, psize, last_page, txnid = _META.unpack(raw)
    if magic != _META_MAGIC or version != _META_VERSION or psize < _MIN_PAGE or psize & (psize - 1):
        return None
    return psize, last_page, txnid


def open_env(path: str | os.PathLike[str], create: bool = False) -> lmdb.Environment:
    """The environment at directory ``path``; with ``create``, a new one (0700, files 0600)."""
    if create:
        make_private_dirs(path)
    else:
        check_data_file(path)
    try:
        env = lmdb.open(os.fspath(path), map_size=MAP_SIZE, max_dbs=MAX_DBS, subdir=True,
                        readahead=False, max_readers=512, create=create, mode=FILE_MODE)
    except lmdb.Error as exc:
        raise StoreError(f"{data_file(path)}: cannot open the store: {exc}") from exc
    if create:
        os.chmod(path, DIR_MODE)
    return env


# LMDB errors that mean the file is broken (a transaction that hit one is also left unusable,
# hence BadTxnError); other LMDB errors (a full disk, too many readers) are failures.
_LMDB_DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError,
                lmdb.BadValsizeError, lmdb.BadTxnError, lmdb.PanicError)


def damaged(path: str | os.PathLike[str], exc: BaseException) -> StoreError:
    """The error for ``exc`` raised by the store at directory ``path``."""
    if isinstance(exc, _LMDB_DAMAGE) or not isinstance(exc, lmdb.Error):
        what = "the store is damaged"
    else:
        what = "LMDB failed"
    return StoreError(f"{data_file(path)}: {what} ({type(exc).__name__}: {exc}); "
                      "see docs/recovery.md")


@contextmanager
def transaction(
    env: lmdb.Environment,
    write: bool = False,
    buffers: bool = False,
    also: tuple[type[BaseException], ...] = (),
) -> Iterator[lmdb.Transaction[Any]]:
    """``env.begin`` whose failures, and those of code in the block (``also`` adds more kinds),
    become one ``StoreError`` naming the file."""
    try:
        txn: lmdb.Transaction[Any]
        with env.begin(write=write, buffers=True) if buffers else env.begin(write=write) as txn:
            yield txn
    except DAMAGE + also as exc:
        raise damaged(env.path(), exc) from exc
