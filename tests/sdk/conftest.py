"""Fixtures for the SDK tests: one repository (``vers.Repo``) and one booted golden VM per
module; every VM left in the repository is killed at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import vers
from vers.porcelain import vm as verbs

MEMORY = "256M"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[vers.Repo]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VERS_MEMORY_BACKING", "shm")
        r = vers.Repo.init(tmp_path_factory.mktemp("sdkrepo"))
        try:
            yield r
        finally:
            try:
                ids = [s.id for s in verbs.ps(r)]
                if ids:
                    verbs.kill(r, ids)
            finally:
                r.close()


@pytest.fixture(scope="module")
def golden(repo: vers.Repo) -> Iterator[vers.VM]:
    with repo.run(memory=MEMORY, name="golden") as vm:
        vm.exec("echo golden > /root/state", check=True)
        yield vm
