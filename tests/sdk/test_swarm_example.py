"""examples/swarm.py runs (small N): the winner's commit sits on its own branch, a child of the
golden commit and no merge, and no VM is left running."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import vers

pytestmark = pytest.mark.vm

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "swarm.py"


def test_swarm_example_keeps_the_winner_and_kills_the_rest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VERS_MEMORY_BACKING", "shm")
    spec = importlib.util.spec_from_file_location("swarm", EXAMPLE)
    assert spec is not None and spec.loader is not None
    swarm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(swarm)
    out = swarm.main(str(tmp_path / "repo"), n=3, span=60)
    # 45 * 45 = 2025 is in the first agent's range, 105 * 105 = 11025 in the second's
    assert out["winner"] in (0, 1) and (out["answer"] ** 2) % 10000 == 2025
    with vers.Repo(tmp_path / "repo") as repo:
        assert repo.refs.resolve("refs/heads/winner") == out["commit"]
        assert repo.get_commit(out["commit"]).parents == [out["base"]]
        assert repo.vms() == []
        with repo.restore("winner") as vm:
            assert vm.exec("cat /root/answer").stdout.strip() == str(out["answer"]).encode()
