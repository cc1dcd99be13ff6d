"""Command-line entry point: ``vers``.

Each area module (core, vm, fuse, bisect, remote, maint, ...) registers its commands on ``cli``
when it is imported; the group imports only the module of the command being run.
"""

from __future__ import annotations

from vers.cli._group import cli


def main() -> None:
    cli(prog_name="vers")


__all__ = ["cli", "main"]
