"""Command-line entry point: ``vers``."""

from __future__ import annotations

# Importing each area module registers its commands on ``cli``.
from vers.cli import (
    bisect,  # noqa: F401
    core,  # noqa: F401
    fuse,  # noqa: F401
    images,  # noqa: F401
    maint,  # noqa: F401
    remote,  # noqa: F401
    transfer,  # noqa: F401
    vm,  # noqa: F401
)
from vers.cli._group import cli


def main() -> None:
    cli(prog_name="vers")


__all__ = ["cli", "main"]
