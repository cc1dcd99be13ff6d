"""Swarm-shaped history without VMs: commits of VMs forked from one commit land on sibling
branches, a moved branch is joined only when asked, and HEAD leaving commits behind says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from vers.errors import RefConflict
from vers.porcelain.refs import detached_head, leaving_warning, left_behind, switch
from vers.repo import Repo


def test_children_commit_onto_sibling_branches_never_a_merge(tmp_path: Path) -> None:
    mem = tmp_path / "mem"
    mem.write_bytes(bytes(4096 * 4))
    with Repo.init(tmp_path / "repo") as repo:
        base = repo.commit_state({"memory": mem}, base=None, message="golden")
        kids = [repo.commit_state({"memory": mem}, base=base, message=f"agent {i}",
                                  branch=f"agent-{i}") for i in range(3)]
        for i, cid in enumerate(kids):
            assert repo.get_commit(cid).parents == [base]
            assert repo.refs.resolve(f"refs/heads/agent-{i}") == cid
        assert repo.head_commit() == base
        first = repo.commit_state({"memory": mem}, base=base, message="on main")
        with pytest.raises(RefConflict, match="--merge"):
            repo.commit_state({"memory": mem}, base=base, message="second on main")
        assert repo.head_commit() == first
        with pytest.raises(RefConflict):
            repo.commit_state({"memory": mem}, base=base, message="x", branch="agent-0")
        joined = repo.commit_state({"memory": mem}, base=base, message="join", merge=True)
        assert repo.get_commit(joined).parents == [base, first]


def test_switching_away_from_a_detached_commit_warns_and_names_it(tmp_path: Path) -> None:
    mem = tmp_path / "mem"
    mem.write_bytes(bytes(4096 * 4))
    with Repo.init(tmp_path / "repo") as repo:
        base = repo.commit_state({"memory": mem}, base=None, message="base")
        repo.set_head_detached(base)
        lost = repo.commit_state({"memory": mem}, base=base, message="made while detached")
        old = detached_head(repo)
        assert old == lost
        switch(repo, "main")
        gone = left_behind(repo, old)
        assert [c.id for c in gone] == [lost]
        text = leaving_warning(gone)
        assert text is not None and lost[:12] in text and "made while detached" in text
        assert "vers branch-create" in text
        assert left_behind(repo, detached_head(repo)) == []  # HEAD on a branch: nothing
        assert leaving_warning([]) is None
