"""FuseMemoryBacking through the MemoryBacking interface, the way the driver calls it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench._procmem import cached_pages
from tests.fuse.conftest import History, needs_fuse
from tests.vmm.memory.test_fuse_daemon import PAGE, Writer
from vers.errors import VMError
from vers.vmm.memory import MemoryBacking, backing_class
from vers.vmm.memory.fuse import BackingDaemon, FuseMemoryBacking

pytestmark = [pytest.mark.fuse, needs_fuse]



@pytest.fixture
def where(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "fuse-state"
    try:
        yield state
    finally:
        BackingDaemon(state).shutdown()


def test_restore_commit_fork_cycle(history: History, where: Path) -> None:
    repo = history.repo
    size = history.memory2.stat().st_size
    mem = FuseMemoryBacking.create("vm1", size, repo.open_image(history.second, "memory"), where)
    assert isinstance(mem, MemoryBacking) and backing_class("fuse") is FuseMemoryBacking
    # The record survives a process boundary: rebuild the backing from its saved state.
    mem = FuseMemoryBacking({k: v for k, v in mem.state().items() if k != "kind"})
    w = Writer(mem.path, size)
    try:
        w.write(0, "guest-wrote-this")
        w.write(100, "and-this")
        image, dirty = mem.capture()
        assert dirty == [0, 100]
        w.write(5, "after-capture")  # the guest resumed; the capture must not change
        cid = repo.snapshot({"memory": image}, dirty={"memory": dirty}, message="vm commit")
        mem.commit_done(True)
        exported = history.dir / "c.img"
        repo.export_image(cid, "memory", exported)
        expect = bytearray(history.memory2.read_bytes())
        expect[0:16] = b"guest-wrote-this"
        expect[100 * PAGE : 100 * PAGE + 8] = b"and-this"
        assert exported.read_bytes() == bytes(expect)
        assert repo.diff(history.second, cid) is not None

        child = mem.fork_begin("vm2")
        assert mem.fork_end([child]) == 0  # no page copied
        wc = Writer(child.path, size)
        try:
            assert wc.read(5, 13) == "after-capture"
            wc.write(6, "child-only")
            assert w.read(6, 10) != "child-only"
            image, dirty = child.capture()
            assert dirty == [5, 6]  # inherited from the parent since the last commit, plus its own
            child.commit_done(False)
        finally:
            wc.close()
            child.destroy()
    finally:
        w.close()
        mem.destroy()
    assert not Path(mem.path).exists()


def test_fresh_boot_first_capture_reads_everything(where: Path) -> None:
    mem = FuseMemoryBacking.create("vm3", 32 * PAGE, None, where)
    image, dirty = mem.capture()
    assert dirty is None and image.exists()
    mem.commit_done(True)
    assert mem.capture()[1] == []
    mem.commit_done(True)
    mem.destroy()


def test_child_maps_its_file_before_fork_end(history: History, where: Path) -> None:
    """What an early-started child QEMU does: map the placeholder while the parent still runs,
    touch nothing, and see the parent's content at the branch point through that same mapping."""
    size = history.memory2.stat().st_size
    mem = FuseMemoryBacking.create("p1", size, history.repo.open_image(history.second, "memory"),
                                   where)
    w = Writer(mem.path, size)
    child = mem.fork_begin("c1")
    assert Path(child.path).stat().st_size == size  # exists at once, for the QEMU command line
    wc = Writer(child.path, size)  # mapped early, nothing read yet
    try:
        w.write(3, "before-branch")
        assert mem.fork_end([child]) == 0
        w.write(4, "parent-after")
        assert wc.read(3, 13) == "before-branch"
        assert wc.read(4, 12) != "parent-after"
        wc.write(3, "child-wrote")
        assert w.read(3, 13) == "before-branch"
    finally:
        wc.close()
        w.close()
        child.destroy()
        mem.destroy()


def test_fork_refuses_a_placeholder_that_was_read(where: Path) -> None:
    """A page the kernel cached from the empty placeholder would hide the parent's page: refuse
    (clear error) rather than give the child wrong memory; the parent is untouched."""
    mem = FuseMemoryBacking.create("p2", 16 * PAGE, None, where)
    w = Writer(mem.path, 16 * PAGE)
    child = mem.fork_begin("c2")
    wc = Writer(child.path, 16 * PAGE)
    try:
        w.write(1, "parent-data")
        assert wc.read(1, 4) == "\0" * 4  # touched before the branch point
        with pytest.raises(VMError, match="untouched placeholder"):
            mem.fork_end([child])
        assert w.read(1, 11) == "parent-data"
    finally:
        wc.close()
        w.close()
        child.destroy()
        mem.destroy()


def test_one_fork_end_fills_every_placeholder_or_none(where: Path) -> None:
    """A branch of several children fills all their placeholders in one step inside the pause;
    one placeholder that was read refuses the whole step, and the others stay untouched
    placeholders (a retry, or their removal, is still possible)."""
    mem = FuseMemoryBacking.create("p3", 16 * PAGE, None, where)
    w = Writer(mem.path, 16 * PAGE)
    kids = [mem.fork_begin(f"c3-{i}") for i in range(3)]
    writers = [Writer(k.path, 16 * PAGE) for k in kids]
    try:
        w.write(2, "at-the-branch")
        assert writers[2].read(9, 4) == "\0" * 4  # this one was touched
        with pytest.raises(VMError, match="untouched placeholder"):
            mem.fork_end(kids)
        assert mem.fork_end(kids[:2]) == 0  # the untouched two are still placeholders
        w.write(2, "parent-later!")
        for wk in writers[:2]:
            assert wk.read(2, 13) == "at-the-branch"
        writers[0].write(2, "first-child!!")
        assert writers[1].read(2, 13) == "at-the-branch"
        assert w.read(2, 13) == "parent-later!"
    finally:
        for wk in writers:
            wk.close()
        w.close()
        for k in kids:
            k.destroy()
        mem.destroy()


def test_drop_cache_gives_back_unmapped_pages_and_every_page_reads_back_right(
        history: History, where: Path) -> None:
    """A mapper's first touch makes the kernel read around it (this 4 MiB file whole); the
    pages it did not map go back to the host, the pages it mapped or dirtied stay, and every
    page reads back the right bytes afterwards: those given back from the daemon again."""
    repo = history.repo
    size = history.memory2.stat().st_size
    mem = FuseMemoryBacking.create("dc1", size, repo.open_image(history.second, "memory"), where)
    w = Writer(mem.path, size)
    try:
        assert w.read(3, 5) == "CHANG"  # one fault: the kernel reads far more than that page
        w.write(700, "dirty-and-mapped")
        npages = size // PAGE
        assert cached_pages(mem.path) > npages // 2
        mem.drop_cache()
        assert cached_pages(mem.path) <= 64  # what the writer mapped around its two touches
        expect = bytearray(history.memory2.read_bytes())
        expect[700 * PAGE:700 * PAGE + 16] = b"dirty-and-mapped"
        with open(mem.path, "rb") as f:  # through the page cache, from the daemon where dropped
            assert f.read() == bytes(expect)
        assert w.read(700, 16) == "dirty-and-mapped" and w.read(500, 5) == "CHANG"
    finally:
        w.close()
        mem.destroy()


def test_drop_cache_of_a_daemon_gone_is_a_no_op(where: Path) -> None:
    mem = FuseMemoryBacking.create("dc2", 16 * PAGE, None, where)
    BackingDaemon(where).shutdown()
    mem.drop_cache()  # neither hangs nor raises
