"""Options that cannot work are refused up front with one clear line and the bad-input exit
code, before anything is created: no traceback, no sparse file the size of the option, no wait
for a boot timeout."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vmm.conftest import vers
from vers.repo import Repo
from vers.vmm.boot import host_memory
from vers.vmm.state import registry

pytestmark = pytest.mark.vm


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo.init(tmp_path / "repo")


def _refused(repo: Repo, *args: str) -> str:
    p = vers(Path(repo.root), "run", "--no-standby", *args, check=False, timeout=60)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("vers: error:")]
    assert len(errors) == 1, p.stderr
    assert registry(repo).all() == []
    return errors[0]


@pytest.mark.parametrize("backing", ["shm", "fuse"])
def test_memory_dir_that_cannot_hold_ram(repo: Repo, backing: str) -> None:
    line = _refused(repo, "--memory-dir", "/proc/nope", "--memory-backing", backing)
    assert "/proc/nope" in line


def test_more_memory_than_the_host_has(repo: Repo, tmp_path: Path) -> None:
    assert host_memory() < 1 << 40
    ram = tmp_path / "ram"
    ram.mkdir()
    line = _refused(repo, "--memory", "1T", "--memory-backing", "shm", "--memory-dir", str(ram))
    assert "--overcommit" in line
    assert not list(ram.iterdir())  # no 1 TiB sparse file
