"""vers bisect run --vm: each candidate restored into a real VM (TCG), the predicate run inside."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from vers.porcelain import bisect as bs
from vers.porcelain.bisect.run import run
from vers.repo import Repo
from vers.vmm.agent import guest_exec
from vers.vmm.boot import RunOptions, run_vm
from vers.vmm.commit import commit_vm
from vers.vmm.control import list_vms
from vers.vmm.teardown import kill_vms

from .vmm.conftest import vm_repo

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64")]


@pytest.fixture(scope="module")
def vm_history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Repo, list[str]]]:
    with vm_repo(tmp_path_factory.mktemp("bisect-vm"), "shm") as repo:
        rec = run_vm(repo, RunOptions(name="bisect"))
        ids = []
        for k in range(4):  # state k lives only in guest RAM (/tmp is the initramfs)
            res = guest_exec(rec.runtime.agent_sock, f"echo {k} > /tmp/state", 60)
            assert res.returncode == 0, res
            cid, _ = commit_vm(repo, rec.id, f"state {k}")
            ids.append(cid)
        kill_vms(repo, [rec.id])
        yield repo, ids


def test_bisect_run_in_vm(vm_history: tuple[Repo, list[str]], tmp_path: Path) -> None:
    repo, ids = vm_history
    bs.start(repo, ids[-1], [ids[0]])
    result = run(repo, ['test "$(cat /tmp/state)" -lt 2 && test -n "$VERS_COMMIT"'], mode="vm")
    assert result.decision is not None and result.decision.kind == "found"
    assert result.decision.commit == ids[2]
    assert result.runs <= 2
    assert list_vms(repo) == []  # every VM torn down after its step
    bs.reset(repo)


def test_not_a_vm_commit_aborts_cleanly(vm_history: tuple[Repo, list[str]]) -> None:
    import io

    repo, ids = vm_history
    tip = ids[-1]
    for k in range(3):  # commits of plain images, not VMs: nothing to restore
        tip = repo.snapshot({"disk": io.BytesIO(bytes(4096))}, parents=[tip], ref=None,
                            time=2_000_000_000 + k, message=f"plain {k}")
    bs.start(repo, tip, [ids[-1]])
    with pytest.raises(Exception, match="cannot restore"):
        run(repo, ["true"], mode="vm")
    bs.reset(repo)
