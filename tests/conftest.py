from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vers.repo import Repo


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test marked ``vm`` (anywhere in the suite) is skipped, saying why, without QEMU."""
    if shutil.which("qemu-system-x86_64") is None:
        skip = pytest.mark.skip(reason="qemu-system-x86_64 is not installed")
        for item in items:
            if "vm" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    r = Repo.init(tmp_path / "repo")
    yield r
    r.close()
