"""The Python SDK against real VMs: exec, streams, copies, commits onto branches, forks driven
from a thread pool, and the context managers that kill what they made."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import vers
from vers.errors import GuestTimeout, RefConflict, UnknownVM
from vers.porcelain import vm as verbs

pytestmark = pytest.mark.vm


def test_exec_takes_stdin_env_cwd_and_raises_on_timeout(golden: vers.VM) -> None:
    res = golden.exec("cat; echo \"$GREETING\"; pwd", stdin=b"in\x00put\n",
                      env={"GREETING": "hello 'there'"}, cwd="/tmp")
    assert (res.returncode, res.stdout) == (0, b"in\x00put\nhello 'there'\n/tmp\n")
    assert golden.exec(["sh", "-c", "exit 3"]).returncode == 3
    with pytest.raises(GuestTimeout):
        golden.exec("sleep 5", timeout=0.5)
    golden.exec("true", timeout=30)  # the agent still answers after a timed-out command


def test_exec_stream_yields_output_before_the_command_ends(golden: vers.VM) -> None:
    pieces = list(golden.exec_stream("echo first; sleep 1; echo second >&2; exit 4", timeout=60))
    data = [p.data for p in pieces if p.data]
    assert b"".join(data) == b"first\nsecond\n"
    assert len(data) >= 2, "the output came in one piece, not as it was written"
    assert pieces[-1].returncode == 4


def test_copy_in_and_out_round_trip(golden: vers.VM, tmp_path: Path) -> None:
    src = tmp_path / "payload"
    src.mkdir()
    (src / "a.bin").write_bytes(bytes(range(256)) * 64)
    (src / "sub").mkdir()
    (src / "sub" / "b.txt").write_text("bee\n")
    golden.copy_in(src, "/root/in")
    assert golden.exec("cat /root/in/payload/sub/b.txt").stdout == b"bee\n"
    golden.copy_out("/root/in/payload", tmp_path / "back")
    assert (tmp_path / "back" / "payload" / "a.bin").read_bytes() == (src / "a.bin").read_bytes()
    assert (tmp_path / "back" / "payload" / "sub" / "b.txt").read_text() == "bee\n"


def test_children_driven_from_a_thread_pool_commit_onto_sibling_branches(
        repo: vers.Repo, golden: vers.VM) -> None:
    base = golden.commit("golden").id
    with golden.branch(3, refs="agent") as kids:
        assert [k.branch_name for k in kids] == ["agent-0", "agent-1", "agent-2"]
        assert all(repo.refs.resolve(f"refs/heads/agent-{i}") == base for i in range(3))

        def work(i: int) -> str:
            kid = kids[i]
            kid.exec(f"echo agent {i} > /root/state", check=True)
            assert kid.exec("cat /root/state").stdout == f"agent {i}\n".encode()
            return kid.commit(f"agent {i} done").id

        with ThreadPoolExecutor(3) as pool:
            cids = list(pool.map(work, range(3)))
        ids = [k.id for k in kids]
    for i, cid in enumerate(cids):
        assert repo.get_commit(cid).parents == [base], "a sibling's commit became a merge"
        assert repo.refs.resolve(f"refs/heads/agent-{i}") == cid
    assert repo.head_commit() == base
    assert not set(ids) & {vm.id for vm in repo.vms()}, "the children outlived their block"
    assert golden.exec("cat /root/state").stdout == b"golden\n"


def test_a_second_child_on_the_same_branch_needs_its_own_branch_or_merge(
        repo: vers.Repo, golden: vers.VM) -> None:
    base = golden.commit("before the race").id
    with golden.branch(2) as (a, b):
        first = a.commit("a wins").id
        with pytest.raises(RefConflict, match="moved on"):
            b.commit("b too")
        beside = b.commit("b beside", branch="b-side").id
        assert repo.get_commit(beside).parents == [base]
        assert repo.head_commit() == first
        merged = b.commit("b joins", merge=True)
        assert merged.parents == [beside, first]


def test_blocks_kill_their_vms_on_exceptions_and_ctrl_c(repo: vers.Repo,
                                                        golden: vers.VM) -> None:
    made: list[str] = []
    with pytest.raises(RuntimeError), golden.branch(2) as kids:
        made += [k.id for k in kids]
        raise RuntimeError("the script failed")
    with pytest.raises(KeyboardInterrupt), golden.branch(1) as kids:
        made += [k.id for k in kids]
        raise KeyboardInterrupt
    assert len(made) == 3 and not set(made) & {vm.id for vm in repo.vms()}
    with pytest.raises(UnknownVM):
        repo.vm(made[0])
    vers.VM(repo, made[0]).kill()  # killing twice is fine


def test_restore_continues_from_the_commit(repo: vers.Repo, golden: vers.VM) -> None:
    golden.exec("echo restored-state > /root/state", check=True)
    cid = golden.commit("to restore", branch="golden").id  # main moved on meanwhile
    golden.exec("echo later > /root/state", check=True)
    with repo.restore(cid, name="restored") as vm:
        assert vm.base_commit == cid and vm.name == "restored"
        assert repo.vm("restored") == vm
        assert vm.exec("cat /root/state").stdout == b"restored-state\n"
        vm.pause()
        assert vm.status()["state"] == "paused"
        vm.resume()
        assert vm.info()["base_commit"] == cid
    assert not vm.alive


def test_commits_in_a_row_settle_in_the_background_and_keep_the_chain_short(
        tmp_path: Path) -> None:
    """``VM.commit`` returns once the commit is stored and re-bases the disk onto it on a
    thread: commits, a branch and a kill straight after each other still see a settled VM, the
    disk chain stays at most four layers long, and every commit holds what the guest had."""
    with vers.Repo.init(tmp_path / "repo") as repo, \
            repo.run(memory="256M", memory_backing="fuse") as vm:
        ids = []
        for i in range(4):
            vm.exec(f"echo {i} > /root/n && dd if=/dev/urandom of=/tmp/d bs=4096 count=300 "
                    "2>/dev/null", check=True)
            ids.append(vm.commit(f"step {i}").id)
        with vm.branch(1) as kids:
            assert kids[0].exec("cat /root/n").stdout == b"3\n"
        vm.commit("after the branch")
        vm.pause()  # waits for the commit's settle step
        rec = verbs.record(repo, vm.id)
        vm.resume()
        assert all(len(d.chain) <= 4 for d in rec.disks.values()), rec.disks
        assert [c.message for c in repo.log()][:5] == [
            "after the branch", "step 3", "step 2", "step 1", "step 0"]
        with repo.restore(ids[1]) as r:
            assert r.exec("cat /root/n").stdout == b"1\n"
    assert not vm.alive
