"""The same guest tests with guest RAM on the FUSE backing (issue #4's lazily-read, write-tracking
memory file) instead of /dev/shm: the driver must not care which backing it talks to."""

from __future__ import annotations

import os

import pytest

from .test_vm import *  # the same tests, collected again for this backing

MEMORY_BACKING = "fuse"
pytestmark = [pytest.mark.vm, pytest.mark.fuse,
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")]
