from __future__ import annotations

from pathlib import Path

import pytest

from vers.repo import Repo


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    r = Repo.init(tmp_path / "repo")
    yield r
    r.close()
