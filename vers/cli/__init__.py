"""Command-line entry point: ``vers``."""

from __future__ import annotations

from vers.cli._group import cli

# Importing each area module registers its commands on ``cli``.
from vers.cli import core  # noqa: F401,E402
from vers.cli import vm  # noqa: F401,E402
from vers.cli import fuse  # noqa: F401,E402
from vers.cli import bisect  # noqa: F401,E402
from vers.cli import remote  # noqa: F401,E402
from vers.cli import maint  # noqa: F401,E402


def main() -> None:
    cli(prog_name="vers")


__all__ = ["cli", "main"]
