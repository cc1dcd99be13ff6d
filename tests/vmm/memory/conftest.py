"""The memory backings reuse the FUSE tests' repository with committed images (``history``)."""

from tests.fuse.conftest import history  # noqa: F401 - a fixture, used by name
