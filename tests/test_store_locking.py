"""gc and object writers exclude each other (a dedup'd unreachable object must survive until the
writer's ref lands), and reflog rewrites are atomic."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from vers.refs.container import ReflogEntry
from vers.repo import Repo


def test_gc_waits_for_a_writer_holding_the_store(repo: Repo, tmp_path: Path) -> None:
    (tmp_path / "m").write_bytes(b"m" * 8192)
    repo.snapshot({"memory": tmp_path / "m"}, message="x")
    with repo.store.writing():
        gc = subprocess.Popen(["vers", "-C", str(repo.root), "gc", "--grace", "0s"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(2.0)
        assert gc.poll() is None, "gc swept while a writer held the store"
    assert gc.wait(timeout=60) == 0, gc.stderr.read() if gc.stderr else ""


def test_writer_waits_for_gc(repo: Repo, tmp_path: Path) -> None:
    (tmp_path / "m").write_bytes(b"n" * 8192)
    with repo.store.collecting():
        snap = subprocess.Popen(["vers", "-C", str(repo.root), "snapshot", "--memory",
                                 str(tmp_path / "m")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(2.0)
        assert snap.poll() is None, "a snapshot wrote while gc was collecting"
    assert snap.wait(timeout=60) == 0
    assert repo.rev_parse("HEAD") == snap.stdout.read().decode().strip() if snap.stdout else False


def test_reflog_rewrite_is_atomic_and_keeps_concurrent_appends(repo: Repo) -> None:
    refs = repo.refs
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    refs.set_ref("refs/heads/x", a, message="1")
    refs.set_ref("refs/heads/x", b, message="2")

    def edit(entries: list[ReflogEntry]) -> list[ReflogEntry]:
        # An append from another process cannot land inside this transaction, but one that
        # landed before it must be seen here.
        return [e for e in entries if e.message != "1"]

    refs.set_ref("refs/heads/x", c, message="3")
    assert refs.rewrite_reflog("refs/heads/x", edit) == 1
    assert [e.message for e in refs.reflog("refs/heads/x")] == ["3", "2"]
