"""ObjectStore.get_records (added to the core for push): same records as get_record, in order,
for both store backends; a missing ID is an error naming it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vers.errors import ObjectNotFound
from vers.objects.lmdbstore import LmdbObjectStore
from vers.objects.model import KIND_PAGE, hash_bytes
from vers.objects.store import MemoryObjectStore, ObjectStore


@pytest.fixture(params=["memory", "lmdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "memory":
        return MemoryObjectStore()
    return LmdbObjectStore.create(tmp_path / "store")


def test_get_records_matches_get_record(store: ObjectStore) -> None:
    pages = [os.urandom(4096) if i % 3 else bytes([i % 251 + 1]) * 4096 for i in range(5000)]
    ids = [hash_bytes(p) for p in pages]
    with store.writer(flush_bytes=1 << 20) as w:  # several packs
        for oid, p in zip(ids, pages):
            w.add(oid, KIND_PAGE, p)
    wanted = ids[::-1] + ids[:10]  # any order, repeats allowed
    got = list(store.get_records(wanted))
    assert [o for o, _ in got] == wanted
    content = dict(zip(ids, pages))
    for oid, rec in got:
        assert rec == store.get_record(oid)
        assert store.decode_record(oid, rec) == content[oid]
    with pytest.raises(ObjectNotFound, match=bytes(32).hex()[:-1] + "1"):
        list(store.get_records([ids[0], bytes(31) + b"\x01"]))
