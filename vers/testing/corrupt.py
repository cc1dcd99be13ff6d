"""Damage a store from outside, the way a bad disk or a stray write would, to test that vers
notices: every object is re-hashed when read, and fsck names what is damaged."""

from __future__ import annotations

import mmap
import os
from dataclasses import replace

from vers.objects.lmdbstore import LmdbObjectStore
from vers.objects.store import MemoryObjectStore, ObjectStore


def flip_byte(store: ObjectStore, oid: bytes, at: int = 0) -> None:
    """Invert byte ``at`` of the stored payload of ``oid``.

    In an LMDB store the byte is changed in ``data.mdb`` itself, wherever the payload's bytes
    are found (a freed page may still hold an old copy: that is changed too, harmlessly), so the
    store's own code is not involved in the damage."""
    rec = store.get_record(oid)
    if not 0 <= at < len(rec.payload):
        raise ValueError(f"offset {at} is outside the {len(rec.payload)}-byte payload")
    if isinstance(store, MemoryObjectStore):
        payload = bytearray(rec.payload)
        payload[at] ^= 0xFF
        store.records[oid] = replace(rec, payload=bytes(payload))
    elif isinstance(store, LmdbObjectStore):
        _flip_in_file(os.path.join(store.path, "data.mdb"), rec.payload, at)
    else:
        raise TypeError(f"cannot damage a {type(store).__name__}")


def _flip_in_file(path: str, payload: bytes, at: int) -> None:
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        found = []
        pos = m.find(payload)
        while pos >= 0:
            found.append(pos)
            pos = m.find(payload, pos + 1)
        if not found:
            raise ValueError(f"the payload is not in {path} as one run of bytes")
        for pos in found:
            m[pos + at] ^= 0xFF
        m.flush()
