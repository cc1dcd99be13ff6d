"""A real QEMU guest on the FUSE memory backing: boot, commit twice, branch, restore lazily.

One guest, booted under TCG, walks the whole life cycle so the test costs one boot (~5-10 s).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuse.conftest import needs_fuse
from tests.vmm.conftest import COUNTER, counter, gexec, kill_all, wait_counter_above
from vers.repo import Repo
from vers.vmm.boot import RunOptions, restore_commit, run_vm
from vers.vmm.branch import branch_vm
from vers.vmm.commit import commit_vm
from vers.vmm.memory import load_backing
from vers.vmm.memory.fuse import BackingDaemon

pytestmark = [
    pytest.mark.vm,
    pytest.mark.fuse,
    pytest.mark.slow,
    needs_fuse,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU"),
]
MiB = 1 << 20


@pytest.fixture
def vm_repo(tmp_path: Path) -> Iterator[tuple[Repo, Path]]:
    repo = Repo.init(tmp_path / "repo")
    state = tmp_path / "fuse-state"
    try:
        yield repo, state
    finally:
        kill_all(repo)
        BackingDaemon(state).shutdown()
        repo.close()


def test_guest_on_fuse_memory_commit_branch_restore(vm_repo: tuple[Repo, Path]) -> None:
    repo, state = vm_repo
    rec = run_vm(repo, RunOptions(
        memory=256 * MiB, name="fusevm", memory_backing="fuse", memory_dir=str(state)))
    assert rec.memory["kind"] == "fuse"
    assert Path(rec.memory["path"]).parent == state / "mnt"
    gexec(rec, COUNTER)
    wait_counter_above(rec, 3)

    first, _ = commit_vm(repo, rec.id, "first")
    second, _ = commit_vm(repo, rec.id, "second")
    # The second commit stored only the pages the daemon saw written: a small part of 256 MiB.
    changed = sum(r.changed_pages for r in repo.diff(first, second).images if r.name == "memory")
    assert 0 < changed < (256 * MiB // 4096) // 4, changed

    before = counter(rec)
    children, _ = branch_vm(repo, rec.id)
    child = children[0]
    assert child.memory["kind"] == "fuse"
    assert wait_counter_above(child, before) > before
    assert wait_counter_above(rec, before) > before
    gexec(child, "echo child > /tmp/who")
    assert gexec(rec, "cat /tmp/who 2>/dev/null || echo none").strip() == "none"

    restored = restore_commit(repo, second, name="restored", memory_backing="fuse",
                                        memory_dir=str(state))
    stats = load_backing(restored.memory).stats()  # type: ignore[attr-defined]
    assert stats["base_bytes_read"] < 256 * MiB // 2, stats  # restore read only what it touched
    now = counter(restored)
    assert wait_counter_above(restored, now) > now
