"""The root click group and the helpers every command module shares.

Each area (core, vm, fuse, bisect, remote) registers its commands on ``cli`` in its own module, so
work on one area never touches another's file. Commands only parse arguments and call porcelain.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from vers import __version__
from vers.errors import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, VersError
from vers.progress import Progress

if TYPE_CHECKING:
    from vers.repo import Repo


#: The module of vers.cli that defines each command. Only that module is imported to run a
#: command, so that `vers log` does not pay for importing the VM driver or the remotes
#: (tests/test_cli_start.py checks this table against the commands the modules define).
COMMAND_MODULES: dict[str, str] = {
    "bisect": "bisect",
    "init": "core", "snapshot": "core", "log": "core", "show": "core", "diff": "core",
    "export": "core", "rev-parse": "core", "tag": "core", "branch-list": "core",
    "branch-create": "core", "branch-delete": "core", "switch": "core", "show-ref": "core",
    "reflog": "core",
    "mount": "fuse", "umount": "fuse",
    "images": "images", "image": "images",
    "fsck": "maint", "gc": "maint",
    "remote": "remote", "push": "remote", "fetch": "remote", "pull": "remote", "clone": "remote",
    "run": "vm", "ps": "vm", "status": "vm", "pause": "vm", "resume": "vm", "kill": "vm",
    "console": "vm", "commit": "vm", "branch": "vm", "run-commit": "vm", "checkout": "vm",
    "port": "vm", "record": "vm",
    "exec": "transfer", "cp": "transfer", "connect": "transfer", "shell": "transfer",
    "mcp": "mcp",
    "completion": "completion",
}


class VersGroup(click.Group):
    """Loads each command's module on first use (``COMMAND_MODULES``), and turns VersError into a
    one-line message and its exit code (the table in vers.errors): the only place that does."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMAND_MODULES))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            importlib.import_module(f"vers.cli.{COMMAND_MODULES[cmd_name]}")
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VersError as exc:
            click.echo(f"vers: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("vers: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            sys.exit(EXIT_BROKEN_PIPE)


@click.group(cls=VersGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="vers",
                      message="%(prog)s %(version)s")
@click.option(
    "-C",
    "--repo",
    "repo_path",
    type=click.Path(file_okay=False),
    default=None,
    help="Repository directory (default: $VERS_DIR or search upwards from the cwd).",
)
@click.option("-q", "--quiet", is_flag=True,
              help="No progress meters (shown on stderr only when it is a terminal).")
@click.pass_context
def cli(ctx: click.Context, repo_path: str | None, quiet: bool) -> None:
    """vers: git for whole-machine state."""
    ctx.obj = {"repo_path": repo_path or os.environ.get("VERS_DIR"), "quiet": quiet}


def open_repo(ctx: click.Context | None = None) -> Repo:
    """The repository named by -C/$VERS_DIR, or found upwards from the cwd: opened once per
    command line, and closed by the root group when the command ends (also on errors)."""
    from vers.repo import Repo

    root = (ctx or click.get_current_context()).find_root()
    obj = root.obj if root.obj is not None else {}
    repo: Repo | None = obj.get("repo")
    if repo is None:
        path = obj.get("repo_path")
        repo = Repo.discover(os.getcwd()) if path is None else Repo(path)
        obj["repo"] = repo
        root.obj = obj
        root.call_on_close(repo.close)
    return repo


def quiet_given(ctx: click.Context | None = None) -> bool:
    """Whether the global ``-q`` was given."""
    root = (ctx or click.get_current_context()).find_root()
    return bool((root.obj or {}).get("quiet"))


def progress(quiet: bool = False) -> Progress:
    """This command's progress meters: on stderr if it is a terminal, unless ``-q`` (global, or
    the command's own ``quiet``) was given."""
    return Progress.for_terminal(quiet=quiet or quiet_given())


def saying(meters: Progress) -> Callable[[str], None]:
    """Where a command's step messages go: above its meters on a terminal, else ``info``."""
    return meters.note if meters.enabled else info


def info(msg: str) -> None:
    """Messages for people go to stderr; stdout carries only IDs and requested output."""
    click.echo(msg, err=True)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))
