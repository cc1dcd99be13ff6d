"""A host's kept kernels and initrds (vers.bootcache): a restore from a remote into a fresh
repository takes them from there instead of fetching them, and only after finding they hash
to the commit's tree; a file kept under a wrong name is dropped, not used."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from vers import bootcache
from vers.objects.imagetree import TreeReader
from vers.objects.model import ZERO_ID
from vers.porcelain.clone import clone
from vers.porcelain.push import push
from vers.porcelain.remote import add_remote
from vers.remote.lazy import open_lazy
from vers.repo import Repo
from vers.vmm.boot import _from_boot_cache

from .conftest import make_memory

NPAGES = 512


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _pages(repo: Repo, tree_hex: str) -> list[bytes]:
    tree = repo.store.get_tree(bytes.fromhex(tree_hex))
    return [o for o in TreeReader(repo.store, tree).page_ids(0, tree.num_pages - 1)
            if o != ZERO_ID]


def test_a_fresh_repository_takes_kept_boot_files_instead_of_fetching_them(
        tmp_path: Path, remote_url: str) -> None:
    src = Repo.init(tmp_path / "a")
    files = {name: tmp_path / name for name in ("kernel", "initrd", "devstate", "memory")}
    data = {name: make_memory(p, NPAGES, seed=i) for i, (name, p) in enumerate(files.items())}
    cid = src.snapshot(files, message="a VM's commit")
    add_remote(src, "origin", remote_url)
    push(src, "origin")
    trees = src.get_commit(cid).images
    bootcache.keep(files["kernel"], trees["kernel"])  # a restore on this host used it before
    kept = bootcache.boot_cache() / trees["kernel"]
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert stat.S_IMODE(kept.parent.stat().st_mode) == 0o700

    repo, _ = clone(remote_url, str(tmp_path / "b"), lazy=True)
    lazy = open_lazy(repo)
    assert lazy is not None
    lazy.prepare_restore(cid)  # what a restore brings in before QEMU starts
    kernel_pages, initrd_pages = _pages(repo, trees["kernel"]), _pages(repo, trees["initrd"])
    assert lazy.absent(kernel_pages) == kernel_pages  # not fetched: this host keeps it
    assert lazy.absent(initrd_pages) == []  # fetched whole, as before

    out = tmp_path / "kernel.out"
    assert _from_boot_cache(repo, trees["kernel"], out)
    assert out.read_bytes() == bytes(data["kernel"])
    assert lazy.absent(kernel_pages) == kernel_pages  # checked, not stored: the remote has it
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert not _from_boot_cache(repo, trees["initrd"], tmp_path / "initrd.out")  # none kept
    repo.close()
    src.close()


def test_a_kept_file_that_is_not_its_tree_is_dropped(tmp_path: Path) -> None:
    repo = Repo.init(tmp_path / "a")
    kernel = tmp_path / "kernel"
    make_memory(kernel, NPAGES, seed=1)
    cid = repo.snapshot({"kernel": kernel}, message="one")
    tree = repo.get_commit(cid).images["kernel"]
    other = tmp_path / "other"
    make_memory(other, NPAGES, seed=2)  # same size, other bytes
    bootcache.keep(other, tree)
    out = tmp_path / "out"
    assert not _from_boot_cache(repo, tree, out)
    assert not out.exists() and bootcache.cached(tree, NPAGES * 4096) is None
    repo.close()


def test_the_cache_keeps_the_files_used_last(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"k" * 100)
    names = [f"{i:064x}" for i in range(bootcache.KEEP + 2)]
    for name in names:
        bootcache.keep(src, name)
    left = {p.name for p in bootcache.boot_cache().iterdir()}
    assert len(left) == bootcache.KEEP and names[-1] in left
    assert bootcache.cached("../x", 100) is None and bootcache.cached(names[-1], 99) is None
