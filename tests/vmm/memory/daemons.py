"""The FUSE backing daemon as tests use it: in the test's own state directory, started on first
request, and shut down and unmounted at the end."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vers.fuse.mount import is_mounted
from vers.vmm.memory.fuse import BackingDaemon


@contextmanager
def backing_daemon(state_dir: Path) -> Iterator[BackingDaemon]:
    d = BackingDaemon(state_dir)
    try:
        yield d
    finally:
        d.shutdown()
        assert not is_mounted(d.mountpoint)
