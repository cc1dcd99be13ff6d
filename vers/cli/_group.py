"""The root click group and the helpers every command module shares.

Each area (core, vm, fuse, bisect, remote) registers its commands on ``cli`` in its own module, so
work on one area never touches another's file. Commands only parse arguments and call porcelain.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from functools import partial
from gettext import gettext as _
from typing import TYPE_CHECKING, Any

import click

from vers import __version__
from vers.errors import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, VersError

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

    from vers.progress import Progress
    from vers.repo import Repo


#: Every command: the module of vers.cli that defines it, and the short help `vers --help` lists
#: (the first sentence of the command's docstring). Only that module is imported to run a command,
#: and none to list them, so that `vers log` does not pay for importing the VM driver or the
#: remotes (tests/test_cli_start.py checks this table against the commands the modules define).
COMMANDS: dict[str, tuple[str, str]] = {
    "bisect": ("bisect", ("Find the first commit whose state is bad, by binary search over history "
                          "(like git).")),
    "init": ("core", "Create an empty repository in DIRECTORY (default: here)."),
    "snapshot": ("core", ("Commit image files as a new commit on the current branch; prints its "
                          "ID.")),
    "log": ("core", "Show history from REV (or an A..B range), newest first."),
    "show": ("core", "Show one commit: metadata, images and machine configuration."),
    "diff": ("core", ("Changed memory pages and disk blocks between commits A and B (default B: "
                      "HEAD).")),
    "export": ("core", "Write a commit's images back to files (sparse where zero)."),
    "rev-parse": ("core", "Print the full commit ID each REV names."),
    "tag": ("core", "List tags, or tag REV (default HEAD) as NAME."),
    "branch-list": ("core", "List branches; the current one is marked with '*'."),
    "branch-create": ("core", ("Create branch NAME at REV (a ref only; `vers branch` forks a live "
                               "VM).")),
    "branch-delete": ("core", "Delete branch NAME."),
    "switch": ("core", ("Make branch NAME current (moves HEAD only; `vers checkout` restores a "
                        "machine).")),
    "show-ref": ("core", "List every ref with the commit it names."),
    "reflog": ("core", "Where REF has pointed, newest first."),
    "mount": ("fuse", "Show every commit as read-only files under DIRECTORY."),
    "umount": ("fuse", "Unmount a vers mount (also cleans up after a daemon that died)."),
    "images": ("images", ("List guest images: what is built and what `vers image build` can "
                          "build.")),
    "image": ("images", "Build or import guest images (see `vers images`)."),
    "fsck": ("maint", ("Re-hash every object and check that every ref and reflog entry reaches "
                       "complete state.")),
    "gc": ("maint", ("Expire old reflog entries, apply a retention policy, and prune unreachable "
                     "objects.")),
    "remote": ("remote", "Manage remotes: paths, file:// or s3://bucket/prefix URLs."),
    "push": ("remote", "Send commits to REMOTE and move its refs (default: the current branch)."),
    "fetch": ("remote", ("Fetch branches and tags of REMOTE into refs/remotes/REMOTE/* (and "
                         "refs/tags/*).")),
    "pull": ("remote", ("Fetch REMOTE (default origin), then fast-forward the current branch; "
                        "refuses otherwise.")),
    "clone": ("remote", "Copy the repository at URL into DIRECTORY; prints the HEAD commit ID."),
    "run": ("vm", ("Boot a VM (the default guest unless you name an image or give your own); "
                   "prints its ID.")),
    "ps": ("vm", "List this repository's VMs, including orphaned QEMU processes."),
    "status": ("vm", "Show one VM's state and where its files are (JSON)."),
    "pause": ("vm", "Stop the guest's CPUs."),
    "resume": ("vm", "Let a paused guest run again."),
    "kill": ("vm", "Stop VMs (or orphaned QEMU processes) and delete their state."),
    "console": ("vm", "Print the VM's serial console log."),
    "commit": ("vm", ("Commit a running VM's memory, disks and device state; prints the commit "
                      "ID.")),
    "branch": ("vm", "Fork a live VM (or restore a COMMIT) into children; prints their IDs."),
    "run-commit": ("vm", ("Boot a new VM from COMMIT (memory, disks, device state); prints its "
                          "ID.")),
    "checkout": ("vm", ("Restore COMMIT into a new VM, make it the current VM and move HEAD "
                        "there.")),
    "port": ("vm", ("List a VM's published ports, or publish (add) / stop publishing (rm) one on "
                    "a running VM.")),
    "record": ("vm", ("Commit a VM on a schedule, pruning by a retention policy (gc's --keep-* "
                      "rules, applied to the recorded commits only), until `vers record --stop` "
                      "or the VM is killed.")),
    "exec": ("transfer", "Run a command in a VM: vers exec [VM] -- CMD..."),
    "cp": ("transfer", "Copy files between the host and a VM, or out of a commit."),
    "connect": ("transfer", ("An interactive shell in the VM (the current one by default), on a "
                             "real terminal.")),
    "shell": ("transfer", "Same as `vers connect`."),
    "mcp": ("mcp", "Serve this repository's VMs to agents over the Model Context Protocol."),
    "completion": ("completion", ("Print the completion script for SHELL (docs/cli.md says where "
                                  "to put it).")),
}

#: command -> the module of vers.cli that defines it
COMMAND_MODULES: dict[str, str] = {name: module for name, (module, _help) in COMMANDS.items()}


def _shorten(text: str, limit: int) -> str:
    """What click's ``get_short_help_str(limit)`` makes of a command whose help starts with
    ``text``."""
    return click.utils.make_default_short_help(text, limit).strip()


class VersGroup(click.Group):
    """Loads each command's module on first use (``COMMANDS``), lists the commands (help, shell
    completion of their names) from that table without loading any, and turns VersError into a
    one-line message and its exit code (the table in vers.errors): the only place that does."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            importlib.import_module(f"vers.cli.{COMMANDS[cmd_name][0]}")
        return super().get_command(ctx, cmd_name)

    def _listed(self, ctx: click.Context, prefix: str = "",
                ) -> list[tuple[str, Callable[[int], str]]]:
        """The visible commands whose names start with ``prefix``, each with its short help for a
        given width (click's own shortening, of the table's sentence for a command not loaded)."""
        out: list[tuple[str, Callable[[int], str]]] = []
        for name in self.list_commands(ctx):
            if not name.startswith(prefix):
                continue
            cmd = self.commands.get(name)
            if cmd is None and name in COMMANDS:
                out.append((name, partial(_shorten, COMMANDS[name][1])))
                continue
            cmd = cmd or super().get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                out.append((name, cmd.get_short_help_str))
        return out

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = self._listed(ctx)
        if rows:  # as click's: short helps fit in the width left by the longest name
            limit = formatter.width - 6 - max(len(name) for name, _short in rows)
            with formatter.section(_("Commands")):
                formatter.write_dl([(name, short(limit)) for name, short in rows])

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        from click.shell_completion import CompletionItem

        results = [CompletionItem(name, help=short(45)) for name, short in self._listed(
            ctx, incomplete)]
        results.extend(click.Command.shell_complete(self, ctx, incomplete))
        return results

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
    from vers.progress import Progress

    return Progress.for_terminal(quiet=quiet or quiet_given())


def saying(meters: Progress) -> Callable[[str], None]:
    """Where a command's step messages go: above its meters on a terminal, else ``info``."""
    return meters.note if meters.enabled else info


def info(msg: str) -> None:
    """Messages for people go to stderr; stdout carries only IDs and requested output."""
    click.echo(msg, err=True)


def emit_json(value: Any) -> None:
    import json

    click.echo(json.dumps(value, indent=2, sort_keys=True))
