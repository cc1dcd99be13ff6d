"""The memory backings reuse the FUSE tests' repository with committed images (``history``), and
share one backing daemon fixture (``daemon``)."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuse.conftest import history  # noqa: F401 - a fixture, used by name
from tests.vmm.memory.daemons import backing_daemon
from vers.vmm.memory.fuse import BackingDaemon


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[BackingDaemon]:
    with backing_daemon(tmp_path / "fuse-state") as d:
        yield d
