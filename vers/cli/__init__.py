"""Command-line entry point: ``vers``.

Each area module (core, vm, fuse, bisect, remote, maint, ...) registers its commands on ``cli``
when it is imported; the group imports only the module of the command being run.
"""

from __future__ import annotations

import gc

from vers.cli._group import cli


def main() -> None:
    """The ``vers`` program: one command, then the process ends."""
    # Everything loaded so far (click, the root group) lives as long as the process: frozen, the
    # garbage collector does not walk it again, neither during the command nor at exit (where
    # that walk cost about as much as vers' own imports). Not done for ``cli`` called in-process.
    gc.freeze()
    cli(prog_name="vers")


__all__ = ["cli", "main"]
