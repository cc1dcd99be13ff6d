"""Object model and image trees, against both store backends."""

from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path

import blake3
import pytest

from vers.errors import BadInput, CorruptObject, ObjectNotFound
from vers.objects import (
    FANOUT,
    PAGE_SIZE,
    ZERO_ID,
    Commit,
    LmdbObjectStore,
    MemoryObjectStore,
    Tree,
    TreeReader,
    build_tree,
    diff_trees,
    patch_tree,
    write_image,
)
from vers.objects.imagetree import RUN_PAGES
from vers.objects.model import (
    KIND_COMMIT,
    KIND_NODE,
    KIND_PAGE,
    canonical_json,
    hash_bytes,
    node_bytes,
)
from vers.objects.store import ENC_DELTA, ENC_RAW, ENC_ZSTD, Record
from vers.testing.corrupt import flip_byte


@pytest.fixture(params=["memory", "lmdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "memory":
        s = MemoryObjectStore()
    else:
        s = LmdbObjectStore.create(tmp_path / "store")
    yield s
    s.close()


def build(store, data: bytes, base: Tree | None = None) -> Tree:
    with store.writer() as w:
        oid = build_tree(w, io.BytesIO(data), len(data), base)
    return store.get_tree(oid)


def read_all(store, tree: Tree) -> bytes:
    return TreeReader(store, tree).pread(0, tree.size)


def test_ids_are_blake3_of_canonical_bytes() -> None:
    page = b"x" * PAGE_SIZE
    assert blake3.blake3(page).digest() == blake3.blake3(page).digest()
    c = Commit(images={"memory": "00" * 32}, parents=[], author="a", time_us=5_000_001,
               message="m")
    assert c.serialize() == canonical_json(
        {"type": "commit", "version": 2, "images": {"memory": "00" * 32}, "parents": [],
         "author": "a", "time_us": 5_000_001, "message": "m", "config": {}})
    assert c.serialize().startswith(b'{"author":"a","config":{}')


def test_version_1_commits_read_and_keep_their_bytes(store) -> None:
    """A commit as vers wrote it before sub-second times: parsed, dated, and re-serialised to the
    same bytes, so its ID does not change."""
    v1 = canonical_json({"type": "commit", "version": 1, "images": {"memory": "00" * 32},
                         "parents": [], "author": "a", "time": 1_700_000_000, "message": "m",
                         "config": {}})
    oid = hash_bytes(v1)
    with store.writer() as w:
        w.add(oid, KIND_COMMIT, v1, compress=False)
    c = store.get_commit(oid)
    assert (c.version, c.time_us, c.time) == (1, 1_700_000_000_000_000, 1_700_000_000)
    assert c.serialize() == v1 and hash_bytes(c.serialize()) == oid
    with pytest.raises(BadInput, match="whole seconds"):
        Commit(images={}, time_us=1, version=1).serialize()


@pytest.mark.parametrize("body", [
    {"version": 3, "time_us": 1}, {"version": 2, "time": 1}, {"version": 2, "time_us": 1.5},
    {"version": 1, "time": "1"}, {"version": 2, "time_us": True},
])
def test_commit_versions_and_times_are_checked(body: dict[str, object]) -> None:
    raw = json.dumps({"type": "commit", "images": {}, "parents": [], "author": "a",
                      "message": "", "config": {}, **body}).encode()
    with pytest.raises(CorruptObject, match="bad commit"):
        Commit.parse(hash_bytes(raw), raw)


def test_floats_refused_in_config() -> None:
    with pytest.raises(BadInput):
        Commit(images={}, config={"x": 1.5}).serialize()


@pytest.mark.parametrize("size", [1, 4095, 4096, 4097, FANOUT * PAGE_SIZE, FANOUT * PAGE_SIZE + 1,
                                  3 * FANOUT * PAGE_SIZE - 100])
def test_build_and_read_roundtrip(store, size: int) -> None:
    rnd = random.Random(size)
    data = bytearray(size)
    for _ in range(20):
        off = rnd.randrange(size)
        data[off : off + 100] = rnd.randbytes(min(100, size - off))
    tree = build(store, bytes(data))
    assert tree.size == size
    assert read_all(store, tree) == bytes(data)
    out = io.BytesIO()
    write_image(store, tree, out)
    assert out.getvalue() == bytes(data)


def test_zero_image_costs_nothing(store) -> None:
    tree = build(store, bytes(8 << 20))
    assert tree.root == ZERO_ID
    assert [k for _, k in store.iter_ids()] == [3]  # only the tree object itself
    assert read_all(store, tree) == bytes(8 << 20)


def test_same_content_same_id_in_both_backends(tmp_path: Path) -> None:
    data = os.urandom(3 * PAGE_SIZE) + bytes(PAGE_SIZE) + b"abc" * 1000
    ids = []
    for s in (MemoryObjectStore(), LmdbObjectStore.create(tmp_path / "s")):
        with s.writer() as w:
            ids.append(build_tree(w, io.BytesIO(data), len(data)))
    assert ids[0] == ids[1]


def test_identical_pages_stored_once(store) -> None:
    page = os.urandom(PAGE_SIZE)
    build(store, page * 100)
    pages = [oid for oid, kind in store.iter_ids() if kind == KIND_PAGE]
    assert pages == [blake3.blake3(page).digest()]


def test_compressible_pages_are_compressed_random_are_not(store) -> None:
    text = (b"hello world " * 400)[:PAGE_SIZE]
    rnd = os.urandom(PAGE_SIZE)
    build(store, text + rnd)
    assert store.get_record(blake3.blake3(text).digest()).encoding == ENC_ZSTD
    assert store.get_record(blake3.blake3(rnd).digest()).encoding == ENC_RAW


def test_undecodable_records_are_corrupt_objects(store) -> None:
    """A stored zstd frame that does not decompress, or a delta cut short, names the object."""
    text = (b"hello world " * 400)[:PAGE_SIZE]
    page = blake3.blake3(text).digest()
    base_data = node_bytes(1, os.urandom(FANOUT * 32))
    base, delta = hash_bytes(base_data), bytes(range(32))
    with store.writer() as w:
        w.add_record(page, Record(KIND_PAGE, ENC_ZSTD, 0, b"not a zstd frame"))
        w.add(base, KIND_NODE, base_data)
        w.add_record(delta, Record(KIND_NODE, ENC_DELTA, 1, base + b"\0"))
    for oid, read in ((page, store.get_bytes), (delta, store.get_node)):
        with pytest.raises(CorruptObject, match="cannot decode stored record") as exc:
            read(oid)
        assert exc.value.oid == oid.hex()


def test_incremental_tree_uses_deltas_and_matches_full_build(store) -> None:
    rnd = random.Random(1)
    data = bytearray(rnd.randbytes(4 * FANOUT * PAGE_SIZE))
    base = build(store, bytes(data))
    changed = [5, 700, 701]
    for p in changed:
        data[p * PAGE_SIZE] ^= 0xFF
    incremental = build(store, bytes(data), base)
    fresh_store = MemoryObjectStore()
    full = build(fresh_store, bytes(data))
    assert incremental == full  # same ID whatever the base
    leaf = TreeReader(store, incremental).node_id_at(1, 700 // FANOUT)
    assert store.get_record(leaf).encoding == ENC_DELTA
    assert read_all(store, incremental) == bytes(data)


def test_patch_tree_equals_full_build(store) -> None:
    rnd = random.Random(2)
    data = bytearray(rnd.randbytes(3 * FANOUT * PAGE_SIZE + 5 * PAGE_SIZE))
    base = build(store, bytes(data))
    dirty = sorted(rnd.sample(range(len(data) // PAGE_SIZE), 40))
    for p in dirty[:30]:  # some dirty pages are not really changed
        data[p * PAGE_SIZE : (p + 1) * PAGE_SIZE] = rnd.randbytes(PAGE_SIZE)
    data[dirty[0] * PAGE_SIZE : (dirty[0] + 1) * PAGE_SIZE] = bytes(PAGE_SIZE)
    with store.writer() as w:
        patched = patch_tree(w, base, dirty,
                             lambda p: bytes(data[p * PAGE_SIZE : (p + 1) * PAGE_SIZE]))
    assert store.get_tree(patched) == build(MemoryObjectStore(), bytes(data))


def test_patch_tree_reading_runs_equals_full_build(store) -> None:
    """Runs of consecutive dirty pages (longer than one read, and one ending in the image's short
    last page) read with ``read_run`` give the same tree as a full build."""
    rnd = random.Random(5)
    data = bytearray(rnd.randbytes(3 * FANOUT * PAGE_SIZE + 3 * 512))
    base = build(store, bytes(data))
    last = len(data) // PAGE_SIZE
    dirty = [3, 4, 5, *range(100, 100 + RUN_PAGES + 7), 700, *range(last - 3, last + 1)]
    for p in dirty:
        data[p * PAGE_SIZE : (p + 1) * PAGE_SIZE] = rnd.randbytes(PAGE_SIZE)[
            : len(data[p * PAGE_SIZE : (p + 1) * PAGE_SIZE])]
    runs: list[tuple[int, int]] = []

    def read_run(first: int, count: int) -> bytes:
        runs.append((first, count))
        return bytes(data[first * PAGE_SIZE : (first + count) * PAGE_SIZE])

    with store.writer() as w:
        patched = patch_tree(w, base, dirty,
                             lambda p: bytes(data[p * PAGE_SIZE : (p + 1) * PAGE_SIZE]), read_run)
    assert store.get_tree(patched) == build(MemoryObjectStore(), bytes(data))
    assert (100, RUN_PAGES) in runs and (100 + RUN_PAGES, 7) in runs and (3, 3) in runs
    assert (last - 3, 4) in runs


def test_patch_rejects_pages_outside_image(store) -> None:
    base = build(store, os.urandom(2 * PAGE_SIZE))
    with pytest.raises(BadInput), store.writer() as w:
        patch_tree(w, base, [2], lambda p: bytes(PAGE_SIZE))


def test_diff_reports_exact_pages(store) -> None:
    rnd = random.Random(3)
    data = bytearray(rnd.randbytes(5 * FANOUT * PAGE_SIZE))
    a = build(store, bytes(data))
    changed = [0, 1, 2, 300, 1000, 5 * FANOUT - 1]
    for p in changed:
        data[p * PAGE_SIZE + 7] ^= 1
    b = build(store, bytes(data), a)
    ranges = diff_trees(store, a, b)
    got = [r.start + i for r in ranges for i in range(r.count)]
    assert got == changed
    assert (ranges[0].start, ranges[0].count) == (0, 3)
    assert diff_trees(store, a, a) == []


def test_corrupt_object_is_named_on_read() -> None:
    store = MemoryObjectStore()
    data = os.urandom(PAGE_SIZE)
    tree = build(store, data)
    oid = blake3.blake3(data).digest()
    flip_byte(store, oid)
    with pytest.raises(CorruptObject) as exc:
        read_all(store, tree)
    assert oid.hex() in str(exc.value)


def test_flipped_byte_in_lmdb_file_detected(tmp_path: Path) -> None:
    store = LmdbObjectStore.create(tmp_path / "s")
    marker = b"UNIQUE-MARKER-" + os.urandom(16).hex().encode()
    page = (marker + os.urandom(PAGE_SIZE))[:PAGE_SIZE]
    tree = build(store, page)
    store.close()
    path = tmp_path / "s" / "data.mdb"
    raw = bytearray(path.read_bytes())
    at = raw.index(marker)
    raw[at + 3] ^= 0x01
    path.write_bytes(raw)
    store = LmdbObjectStore.open(tmp_path / "s")
    with pytest.raises(CorruptObject) as exc:
        read_all(store, tree)
    assert blake3.blake3(page).digest().hex() in str(exc.value)
    store.close()


def test_missing_object_raises_not_found(store) -> None:
    with pytest.raises(ObjectNotFound):
        store.get_bytes(b"\x01" * 32)


def test_node_serialisation_is_fixed_size() -> None:
    assert len(node_bytes(1, bytes(FANOUT * 32))) == 11 + FANOUT * 32
