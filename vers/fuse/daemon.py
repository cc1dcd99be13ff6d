"""The inspection mount's daemon: ``python -m vers.fuse.daemon [--ready-fd N] inspect REPO DIR``.

Serves every commit of REPO as read-only files under DIR (``vers.fuse.vfs`` through
``vers.fuse.ops``) until unmounted or signalled; ``vers mount`` starts it and waits for ``ready``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from vers.fuse.ops import InspectOperations
from vers.fuse.serve import daemon_main, serve
from vers.fuse.vfs import RepoView
from vers.repo import Repo

#: readahead of the inspection mount: sequential reads of an image arrive as 1 MiB requests,
#: several in flight (docs/fuse.md)
INSPECT_READ_AHEAD_KB = 4096


def _arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kind", required=True)
    p_inspect = sub.add_parser("inspect")
    p_inspect.add_argument("repo")
    p_inspect.add_argument("mountpoint")


def _run(args: argparse.Namespace, on_ready: Callable[[], None]) -> None:
    serve(InspectOperations(RepoView(Repo(args.repo))), args.mountpoint, ("ro",),
          on_ready=on_ready, read_ahead_kb=INSPECT_READ_AHEAD_KB)


def main(argv: list[str] | None = None) -> int:
    return daemon_main("vers.fuse.daemon", _arguments, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
