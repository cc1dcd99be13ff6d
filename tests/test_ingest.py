"""The ingest path: page IDs in chunks, on one core or with the helper process, and batched
compression; whatever the path, the same image gives the same IDs."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from vers.errors import BadInput
from vers.objects import MemoryObjectStore
from vers.objects.imagetree import ImageFile, build_tree
from vers.objects.lmdbstore import LmdbObjectStore
from vers.objects.model import KIND_PAGE, PAGE_SIZE, ZERO_ID, Tree, hash_bytes
from vers.objects.pagehash import CHUNK, GROUP, ChunkHasher, page_ids
from vers.objects.store import ENC_RAW, ENC_ZSTD, encode_pages, encode_record
from vers.porcelain.fsck import fsck
from vers.repo import Repo
from vers.testing import make_image, vers_env, vers_ok


def mixed_image(size: int, seed: int = 0) -> bytes:
    """Random, zero, text and half-zero pages in runs and alone, and a short last page."""
    rnd = random.Random(seed)
    out = bytearray()
    text = b"".join(b"line %06d of guest text\n" % i for i in range(400))
    while len(out) < size:
        kind = rnd.randrange(5)
        run = rnd.choice([1, 3, 16, 40]) * PAGE_SIZE
        if kind == 0:
            out += rnd.randbytes(run)
        elif kind == 1:
            out += bytes(run)
        elif kind == 2:
            out += (text * (run // len(text) + 1))[:run]
        elif kind == 3:
            out += (rnd.randbytes(PAGE_SIZE // 2) + bytes(PAGE_SIZE // 2)) * (run // PAGE_SIZE)
        else:
            out += bytes(PAGE_SIZE - 1) + b"\x01"  # zero but for its last byte
    return bytes(out[:size])


def expected_ids(data: bytes) -> list[bytes]:
    ids = []
    for off in range(0, len(data), PAGE_SIZE):
        page = data[off : off + PAGE_SIZE]
        ids.append(ZERO_ID if page == bytes(len(page)) else hash_bytes(page))
    return ids


def test_page_ids_match_one_hash_per_page() -> None:
    data = mixed_image(3 * GROUP + 5 * PAGE_SIZE + 123)
    assert page_ids(data) == expected_ids(data)
    assert page_ids(bytes(GROUP + 10)) == [ZERO_ID] * 17
    assert page_ids(b"") == []


@pytest.mark.parametrize("helper", [False, True])
def test_chunks_give_every_page_id_once(helper: bool) -> None:
    size = 2 * CHUNK + 7 * PAGE_SIZE + 100  # three chunks, the last one short
    data = mixed_image(size, seed=1)
    got: list[bytes] = []
    offsets = []
    with ChunkHasher(size, helper=helper) as h:
        assert h.parallel == helper
        assert h.wait_for_helper() == helper
        for offset, view, ids in h.chunks(io.BytesIO(data)):
            offsets.append(offset)
            assert bytes(view) == data[offset : offset + len(view)]
            got += ids
        if helper:
            assert h.helper_pages > 0  # the helper really hashed some of them
    assert offsets == [0, CHUNK, 2 * CHUNK]
    assert got == expected_ids(data)


def test_a_helper_that_dies_changes_nothing() -> None:
    size = 4 * CHUNK
    data = mixed_image(size, seed=2)
    got: list[bytes] = []
    with ChunkHasher(size, helper=True) as h:
        helper = h._helper
        assert helper is not None and h.wait_for_helper()
        for i, (_offset, _view, ids) in enumerate(h.chunks(io.BytesIO(data))):
            got += ids
            if i == 0:
                os.kill(helper.proc.pid, signal.SIGKILL)
                helper.proc.wait()
        assert not h.parallel  # it noticed and went on alone
    assert got == expected_ids(data)


def test_the_helper_ends_with_the_ingest() -> None:
    with ChunkHasher(CHUNK, helper=True) as h:
        assert h._helper is not None
        proc = h._helper.proc
        for _ in h.chunks(io.BytesIO(bytes(CHUNK))):
            pass
    assert proc.poll() is not None


@pytest.mark.parametrize("helper", [False, True])
def test_build_tree_ids_do_not_depend_on_the_helper(helper: bool, tmp_path: Path) -> None:
    size = CHUNK + 300 * PAGE_SIZE + 1234
    data = mixed_image(size, seed=3)
    ref = MemoryObjectStore()
    with ref.writer() as w:
        want = build_tree(w, io.BytesIO(data), size, helper=False)
    store = LmdbObjectStore.create(tmp_path / "store")
    try:
        with store.writer() as w:
            got = build_tree(w, io.BytesIO(data), size, helper=helper)
        assert got == want
        tree = store.get_tree(got)
        assert ImageFile(store, tree).read() == data
        # A re-hash against itself as base stores no page again.
        before = store.stats().objects
        changed = bytearray(data)
        changed[5 * PAGE_SIZE] ^= 0xFF
        with store.writer() as w:
            again = build_tree(w, io.BytesIO(bytes(changed)), size, base=tree, helper=helper)
        assert ImageFile(store, store.get_tree(again)).read() == bytes(changed)
        assert store.stats().objects - before <= 1 + Tree.depth_for(size) + 1
    finally:
        store.close()


def test_an_image_shorter_than_its_size_is_refused() -> None:
    with MemoryObjectStore().writer() as w, pytest.raises(BadInput, match="ended after 8192"):
        build_tree(w, io.BytesIO(bytes(2 * PAGE_SIZE)), 3 * PAGE_SIZE)


def test_encode_pages_decides_as_encode_record() -> None:
    data = mixed_image(200 * PAGE_SIZE, seed=4)
    pages = [(hash_bytes(data[o : o + PAGE_SIZE]), data[o : o + PAGE_SIZE])
             for o in range(0, len(data), PAGE_SIZE)]
    pages = list(dict(pages).items())
    store = MemoryObjectStore()
    encs = set()
    for (oid, page), (oid2, rec) in zip(pages, encode_pages(pages), strict=True):
        assert oid == oid2
        assert rec.encoding == encode_record(KIND_PAGE, page).encoding
        encs.add(rec.encoding)
        assert store.decode_record(oid, rec) == page
    assert encs == {ENC_RAW, ENC_ZSTD}


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
def test_a_killed_ingest_takes_its_helper_along_and_loses_nothing(tmp_path: Path) -> None:
    vers_ok(tmp_path, "init")
    data = make_image(tmp_path / "mem", 256 << 20, seed=1)
    p = subprocess.Popen(["vers", "snapshot", "--memory", "mem", "-m", "killed"], cwd=tmp_path,
                         env=vers_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL)
    helper = None
    deadline = time.monotonic() + 120
    while helper is None and p.poll() is None and time.monotonic() < deadline:
        for kid in _children(p.pid):
            try:
                if b"pagehash.py" in Path(f"/proc/{kid}/cmdline").read_bytes():
                    helper = kid
            except OSError:
                pass
        time.sleep(0.005)
    assert helper is not None, "the ingest finished or hung without starting its helper"
    data_file = tmp_path / ".vers" / "store" / "data.mdb"
    while (data_file.stat().st_size < 40 << 20 and p.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.005)  # until a first batch is written: the helper is at work by then
    assert p.poll() is None, "the ingest finished before it was killed"
    p.kill()
    p.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while _running(helper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(helper), "the helper outlived the killed ingest"
    with Repo(tmp_path) as repo:
        assert repo.head_commit() is None
        report = fsck(repo.store, repo.refs)
        assert report.ok, "\n".join(str(x) for x in report.problems)
    # The next ingest of the same image works and reads back exactly.
    cid = vers_ok(tmp_path, "snapshot", "--memory", "mem", "-m", "again").strip()
    with Repo(tmp_path) as repo:
        tree = repo.store.get_tree(bytes.fromhex(repo.get_commit(cid).images["memory"]))
        assert ImageFile(repo.store, tree).read() == bytes(data)
