"""One standby child per VM tree (vers.vmm.standby): a golden VM branched again and again keeps
one idle QEMU ready, not one per child, and any VM of the tree can still branch."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vers.repo import Repo
from vers.testing import run_vers
from vers.vmm.boot import RunOptions, run_vm
from vers.vmm.branch import branch_vm
from vers.vmm.control import list_vms
from vers.vmm.machine import find_qemu_processes, pid_alive
from vers.vmm.state import VMRecord, registry
from vers.vmm.teardown import kill_vms

from .conftest import COUNTER, counter, gexec, wait_counter_above

pytestmark = pytest.mark.vm
MEMORY_BACKING = "fuse"


def qemus(repo: Repo) -> dict[str, int]:
    """Every QEMU process of the repository, standbys included (vm ID -> pid)."""
    return find_qemu_processes(registry(repo).root)


def standbys(repo: Repo) -> list[VMRecord]:
    return [r for r in registry(repo).all()
            if r.role == "standby" and pid_alive(r.runtime.pid, r.id)]


def holder(repo: Repo) -> str:
    """The VM whose standby the tree keeps (there must be exactly one)."""
    (sb,) = standbys(repo)
    assert sb.parent_vm is not None
    owner = registry(repo).get(sb.parent_vm)
    assert owner is not None and owner.standby_child == sb.id and owner.holds_standby
    return owner.name or owner.id


def test_golden_vm_and_four_children_keep_one_standby(vmrepo: Repo) -> None:
    golden = run_vm(vmrepo, RunOptions(name="golden", standby=True))
    gexec(golden, COUNTER)
    kids = []
    for i in range(4):  # the swarm: the same parent branched again and again
        [kid], tm = branch_vm(vmrepo, "golden", name=f"kid{i}")
        assert tm.extra["standby_child"], tm.extra  # every branch found the standby ready
        kids.append(kid)
    assert len(qemus(vmrepo)) <= 5 + 1, qemus(vmrepo)
    assert holder(vmrepo) == "golden"
    for kid in kids:  # every child runs on its own
        got = counter(kid)
        assert wait_counter_above(kid, got) > got

    # a child branches without a standby ready, then holds the tree's one standby
    [grandkid], tm = branch_vm(vmrepo, "kid1", name="grandkid")
    assert not tm.extra["standby_child"]
    assert gexec(grandkid, "echo ok").strip() == "ok"
    assert holder(vmrepo) == "kid1"
    assert len(qemus(vmrepo)) <= 6 + 1
    _, tm = branch_vm(vmrepo, "kid1", name="again")  # and uses it next time
    assert tm.extra["standby_child"]
    # the golden VM branches again (no standby ready) and takes it back
    [late], tm = branch_vm(vmrepo, "golden", name="late")
    assert not tm.extra["standby_child"] and holder(vmrepo) == "golden"
    assert gexec(late, "echo ok").strip() == "ok"
    assert len(qemus(vmrepo)) <= 8 + 1

    # killing the holder removes the standby nobody needs now; the others keep running
    kill_vms(vmrepo, ["golden"])
    assert standbys(vmrepo) == []
    assert len(qemus(vmrepo)) == 7
    [last], tm = branch_vm(vmrepo, "kid0", name="last")  # the tree still branches
    assert gexec(last, "echo ok").strip() == "ok" and holder(vmrepo) == "kid0"
    kill_vms(vmrepo, [r.id for r in registry(vmrepo).visible()])
    assert qemus(vmrepo) == {} and registry(vmrepo).all() == []


def test_kill_all_stops_a_whole_swarm_and_its_standby(tmp_path: Path) -> None:
    """`vers kill --all`: every VM of the repository (a parent, its children and the tree's
    standby QEMU) is gone."""
    repo = Repo.init(tmp_path / "swarm")
    try:
        golden = run_vm(repo, RunOptions(name="golden", standby=True, make_current=False))
        children, _ = branch_vm(repo, "golden", count=2)
        assert len(qemus(repo)) == 4  # golden, 2 children and the tree's standby
        p = run_vers(repo.root, "kill", "--all")
        assert p.returncode == 0, p.stderr
        killed = set(re.findall(r"^killed (\S+)$", p.stderr, re.MULTILINE))
        assert {golden.id, *(c.id for c in children)} <= killed, p.stderr
        assert qemus(repo) == {} and list_vms(repo) == []
        assert run_vers(repo.root, "kill", "--all").returncode == 0  # nothing left to kill
    finally:
        kill_vms(repo, [s.id for s in list_vms(repo)])
        repo.close()
