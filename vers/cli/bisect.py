"""vers CLI commands: bisect."""

from __future__ import annotations

from vers.cli._group import cli  # noqa: F401
