"""A restore whose memory cannot be read from the store must say so, naming the damaged object,
instead of printing "restored" for a VM that dies a second later; failed and finished restores
leave nothing behind."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.vmm.conftest import gexec, vers, vm_repo
from vers.errors import VersError
from vers.repo import Repo
from vers.testing.corrupt import flip_byte
from vers.vmm.boot import RunOptions, restore_commit, run_vm
from vers.vmm.commit import commit_vm
from vers.vmm.control import status
from vers.vmm.state import registry

pytestmark = pytest.mark.vm


def _damage_pages_only(repo: Repo, cid: str) -> list[str]:
    """Damage every memory page that commit ``cid`` has and its parent does not."""
    commit = repo.get_commit(cid)
    mine = repo.open_image(cid, "memory").reader
    parent = repo.open_image(commit.parents[0], "memory").reader
    n = mine.tree.size // 4096
    ids = set(mine.page_ids(0, n - 1)) - set(parent.page_ids(0, n - 1)) - {bytes(32)}
    for oid in ids:
        flip_byte(repo.store, oid)
    return sorted(oid.hex() for oid in ids)


def _restore_is_reported(repo: Repo, cid: str, damaged: list[str], ram_dir: Path | None) -> str:
    """The restore fails naming a damaged object, or its VM's status says why it died."""
    try:
        rec = restore_commit(repo, cid, memory_dir=str(ram_dir) if ram_dir else None)
    except VersError as exc:
        assert any(oid in str(exc) for oid in damaged), str(exc)
        return str(exc)
    deadline = time.monotonic() + 30
    while True:
        st = status(repo, rec.id)
        problem = str(st.get("problem") or "")
        if problem:
            assert any(oid in problem for oid in damaged), problem
            return problem
        assert time.monotonic() < deadline, f"restored VM gives no reason: {st}"
        time.sleep(0.2)


@pytest.mark.parametrize("backing", ["shm", pytest.param("fuse", marks=pytest.mark.skipif(
    not os.path.exists("/dev/fuse"), reason="no /dev/fuse"))])
def test_restore_of_damaged_memory_names_the_object(tmp_path: Path, backing: str) -> None:
    with vm_repo(tmp_path / "repo", backing) as repo:
        rec = run_vm(repo, RunOptions(name="victim", memory=128 << 20, standby=False))
        commit_vm(repo, rec.id, "good")
        gexec(rec, "dd if=/dev/urandom of=/tmp/fresh bs=4k count=64 2>/dev/null; sync")
        cid, _ = commit_vm(repo, rec.id, "to be damaged")
        vers(Path(repo.root), "kill", rec.id)
        damaged = _damage_pages_only(repo, cid)
        assert damaged
        ram_dir = tmp_path / "ram" if backing == "shm" else None
        if ram_dir is not None:
            ram_dir.mkdir()
        _restore_is_reported(repo, cid, damaged, ram_dir)
        reg = registry(repo)
        for r in reg.all():
            vers(Path(repo.root), "kill", r.id)
        assert ram_dir is None or not list(ram_dir.iterdir())  # no RAM file left behind
        # the commit's kernel and initrd stay exported for the next restore, private
        kept = [*reg.layers.glob("kernel-*"), *reg.layers.glob("initrd-*")]
        assert len(kept) <= 2 and all(p.stat().st_mode & 0o077 == 0 for p in kept)
