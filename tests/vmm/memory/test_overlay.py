"""Page-level copy-on-write images, without FUSE: reads, writes, dirty sets, branching."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.fuse.conftest import History
from vers.objects.model import PAGE_SIZE
from vers.vmm.memory.overlay import OverlayImage, runs


class Bytes:
    """A base image held in memory (the store-backed base is tested in test_overlay_on_commit)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def pread(self, offset: int, n: int) -> bytes:
        return self.data[offset : offset + n]


def test_runs() -> None:
    assert list(runs(bytearray(b"\x00\x01\x01\x00\x01"))) == [(1, 2), (4, 1)]
    assert list(runs(bytearray(b"\x01\x01\x01"), 1, 2)) == [(1, 1)]
    assert list(runs(bytearray(3))) == []


def test_random_writes_match_a_plain_bytearray(tmp_path: Path) -> None:
    rnd = random.Random(3)
    base = rnd.randbytes(64 * PAGE_SIZE)
    model = bytearray(base)
    img = OverlayImage(tmp_path, len(base), Bytes(base))
    for _ in range(300):
        off = rnd.randrange(len(base))
        data = rnd.randbytes(rnd.randrange(1, 3 * PAGE_SIZE))[: len(base) - off]
        img.write(off, data)
        model[off : off + len(data)] = data
        roff = rnd.randrange(len(base))
        n = rnd.randrange(1, 5 * PAGE_SIZE)
        assert img.read(roff, n) == bytes(model[roff : roff + n])
    assert img.read(0, len(base)) == bytes(model)
    img.close()


def test_dirty_set_and_mark_clean(tmp_path: Path) -> None:
    img = OverlayImage(tmp_path, 16 * PAGE_SIZE)
    img.write(PAGE_SIZE * 2, b"x" * PAGE_SIZE)
    img.write(PAGE_SIZE * 5 + 100, b"y" * 10)  # a partial page is dirty as a whole page
    img.write(PAGE_SIZE * 7 - 1, b"zz")  # straddles pages 6 and 7
    assert img.dirty_pages() == [2, 5, 6, 7]
    assert img.read(PAGE_SIZE * 5, PAGE_SIZE) == bytes(100) + b"y" * 10 + bytes(PAGE_SIZE - 110)
    img.mark_clean()
    assert img.dirty_pages() == []
    assert img.read(PAGE_SIZE * 2, 4) == b"xxxx"  # content survives a commit
    img.write(0, b"a")
    assert img.dirty_pages() == [0]
    img.close()


def test_lazy_base_reads(tmp_path: Path) -> None:
    base = os.urandom(256 * PAGE_SIZE)
    img = OverlayImage(tmp_path, len(base), Bytes(base))
    assert img.base_bytes_read == 0  # creating the image reads nothing
    img.write(0, b"q" * PAGE_SIZE)  # a whole-page write needs no read of the base
    assert img.base_bytes_read == 0
    assert img.read(10 * PAGE_SIZE, PAGE_SIZE) == base[10 * PAGE_SIZE : 11 * PAGE_SIZE]
    assert img.base_bytes_read == PAGE_SIZE
    assert img.read(0, 2 * PAGE_SIZE) == b"q" * PAGE_SIZE + base[PAGE_SIZE : 2 * PAGE_SIZE]
    assert img.base_bytes_read == 2 * PAGE_SIZE  # page 0 came from the overlay
    img.close()


def test_branch_is_copy_on_write(tmp_path: Path) -> None:
    base = os.urandom(32 * PAGE_SIZE)
    parent = OverlayImage(tmp_path, len(base), Bytes(base))
    parent.write(PAGE_SIZE, b"P" * PAGE_SIZE)
    parent.mark_clean()
    parent.write(2 * PAGE_SIZE, b"Q" * PAGE_SIZE)  # dirty since the commit: the child inherits it
    snapshot = parent.read(0, len(base))
    child = parent.branch()
    assert child.read(0, len(base)) == snapshot
    assert child.dirty_pages() == [2]
    child.write(PAGE_SIZE, b"C" * PAGE_SIZE)
    parent.write(3 * PAGE_SIZE, b"R" * PAGE_SIZE)
    assert parent.read(PAGE_SIZE, 4) == b"PPPP"
    assert child.read(3 * PAGE_SIZE, PAGE_SIZE) == snapshot[3 * PAGE_SIZE : 4 * PAGE_SIZE]
    assert child.dirty_pages() == [1, 2]
    assert parent.dirty_pages() == [2, 3]
    grandchild = child.branch()
    assert grandchild.read(0, len(base)) == child.read(0, len(base))
    # Layers are files; they go away when the last image over them is closed.
    parent.close()
    child.close()
    assert grandchild.read(PAGE_SIZE, 4) == b"CCCC"
    grandchild.close()
    assert list(tmp_path.glob("layer-*")) == []


def test_branch_without_writes_does_not_grow_the_chain(tmp_path: Path) -> None:
    img = OverlayImage(tmp_path, 8 * PAGE_SIZE)
    kids = [img.branch() for _ in range(5)]
    assert img.stats()["frozen_layers"] == 0
    for k in kids:
        k.close()
    img.close()


def test_writes_beyond_size_are_refused(tmp_path: Path) -> None:
    img = OverlayImage(tmp_path, 4 * PAGE_SIZE)
    with pytest.raises(ValueError):
        img.write(4 * PAGE_SIZE - 1, b"ab")
    assert img.read(4 * PAGE_SIZE, 10) == b""
    img.close()


def test_overlay_on_commit(history: History, tmp_path: Path) -> None:
    base = history.repo.open_image(history.second, "memory")
    img = OverlayImage(tmp_path / ".", base.size, base)
    expect = history.memory2.read_bytes()
    assert img.read(0, len(expect)) == expect
    img.write(5, b"hello")
    assert img.read(0, 10) == expect[:5] + b"hello"
    img.close()


def test_commit_cycles_keep_the_layer_chain_short(tmp_path: Path) -> None:
    base = os.urandom(16 * PAGE_SIZE)
    img = OverlayImage(tmp_path, len(base), Bytes(base))
    model = bytearray(base)
    for cycle in range(10):
        page = cycle % 16
        img.write(page * PAGE_SIZE, bytes([cycle]) * PAGE_SIZE)
        model[page * PAGE_SIZE : (page + 1) * PAGE_SIZE] = bytes([cycle]) * PAGE_SIZE
        twin = img.capture()
        assert twin.dirty_pages() == [page] and img.dirty_pages() == []
        assert twin.read(0, len(base)) == bytes(model)
        twin.close()
        img.squash()
        assert img.stats()["frozen_layers"] <= 1
        assert img.read(0, len(base)) == bytes(model)
    img.close()
    assert list(tmp_path.glob("layer-*")) == []


def test_failed_commit_gives_dirty_pages_back(tmp_path: Path) -> None:
    img = OverlayImage(tmp_path, 8 * PAGE_SIZE)
    img.write(0, b"a")
    twin = img.capture()
    img.write(3 * PAGE_SIZE, b"b")
    img.restore_dirty(twin.dirty)
    twin.close()
    assert img.dirty_pages() == [0, 3]
    img.close()
