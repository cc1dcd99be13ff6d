"""vers CLI commands: bisect.

``vers bisect`` mirrors ``git bisect``. stdout carries only answers (the candidate's ID after each
step, ``<id> is the first bad commit`` at the end, ``log`` and ``view`` output); every progress
message goes to stderr. Custom terms (``--term-old/--term-new``) become verbs of their own.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from vers.cli import completion as comp
from vers.cli._group import cli, emit_json, info, open_repo, progress, saying
from vers.errors import EXIT_BISECT_SKIPPED
from vers.porcelain import bisect as bs
from vers.porcelain.bisect.algo import Decision

if TYPE_CHECKING:
    from vers.repo import Repo


def _finish(repo: Repo, decision: Decision | None) -> None:
    """Print what a step decided: the next ID, or the answer."""
    if decision is None:
        return
    if decision.kind in ("test", "merge_base") and decision.commit:
        click.echo(decision.commit)
    elif decision.kind == "found" and decision.commit:
        click.echo(bs.first_bad_message(repo, decision.commit))
    elif decision.kind == "only_skipped":
        sys.exit(EXIT_BISECT_SKIPPED)


class BisectGroup(click.Group):
    """Resolves the session's custom terms (``vers bisect fixed``) to the mark command."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None:
            return cmd
        return _term_command(cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else None
        if name and super().get_command(ctx, name) is None and not name.startswith("-"):
            return name, _term_command(name), args[1:]
        return super().resolve_command(ctx, args)


_HELP = {
    "good": "Mark REVs (default: the commit under test) as good, the state before the change.",
    "bad": "Mark REV (default: the commit under test) as bad, the state after the change.",
    "old": "Like good, for a session with the terms old/new.",
    "new": "Like bad, for a session with the terms old/new.",
    "skip": "Mark REVs or ranges A..B (default: the commit under test) as untestable.",
}


def _term_command(word: str) -> click.Command:
    @click.command(word, help=_HELP.get(word, f"Mark commits as '{word}' (a custom term)."))
    @click.argument("revs", nargs=-1, shell_complete=comp.revisions)
    def cmd(revs: tuple[str, ...]) -> None:
        repo = open_repo()
        _finish(repo, bs.mark(repo, word, revs, say=info))

    return cmd


@cli.group(cls=BisectGroup)
def bisect() -> None:
    """Find the first commit whose state is bad, by binary search over history (like git)."""


@bisect.command("start", context_settings={"ignore_unknown_options": False})
@click.argument("revs", nargs=-1, shell_complete=comp.revisions)
@click.option("--term-old", "--term-good", "term_old", default="good", show_default=True,
              help="Word for the state before the change.")
@click.option("--term-new", "--term-bad", "term_new", default="bad", show_default=True,
              help="Word for the state after the change.")
@click.option("--no-checkout", is_flag=True, hidden=True,
              help="Accepted for git compatibility: vers never checks out.")
def start_cmd(revs: tuple[str, ...], term_old: str, term_new: str, no_checkout: bool) -> None:
    """Start bisecting: vers bisect start [BAD [GOOD...]]."""
    repo = open_repo()
    bad = revs[0] if revs else None
    _finish(repo, bs.start(repo, bad, revs[1:], term_old=term_old, term_new=term_new, say=info))


for _word in ("good", "bad", "old", "new", "skip"):
    bisect.add_command(_term_command(_word), _word)


@bisect.command("next")
def next_cmd() -> None:
    """Choose the next candidate again (after marks were changed by hand)."""
    repo = open_repo()
    _finish(repo, bs.next_step(repo, say=info))


@bisect.command("run", context_settings={"ignore_unknown_options": True,
                                          "allow_interspersed_args": False})
@click.option("--vm", "vm", is_flag=True,
              help="Restore each candidate into a VM and run CMD inside it.")
@click.option("--files", "files_mode", type=click.Choice(["mount", "export", "none"]),
              default="mount", show_default=True,
              help="How VERS_MOUNT is provided on the host: a FUSE mount of the repository, "
                   "an export to a temporary directory, or not at all.")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def run_cmd(vm: bool, files_mode: str, cmd: tuple[str, ...]) -> None:
    """Run CMD on each candidate: exit 0 good, 125 skip, 1-127 bad, other codes abort.

    CMD gets VERS_COMMIT (the full ID) and VERS_MOUNT (a directory with the commit's memory,
    disk, ... files, read lazily) in its environment.
    """
    from vers.porcelain.bisect.run import run

    repo = open_repo()
    meters = progress()
    result = run(repo, list(cmd), mode="vm" if vm else files_mode, say=saying(meters),
                 progress=meters)
    info(f"bisect run: {result.runs} predicate run(s)")
    d = result.decision
    if d is not None and d.kind == "found" and d.commit:
        click.echo(bs.first_bad_message(repo, d.commit))
        info("bisect found first bad commit")
    elif d is not None and d.kind == "only_skipped":
        sys.exit(EXIT_BISECT_SKIPPED)


@bisect.command("log")
def log_cmd() -> None:
    """Show the bisect log (replayable with 'vers bisect replay')."""
    click.echo(bs.log(open_repo()), nl=False)


@bisect.command("replay")
@click.argument("file", type=click.Path(dir_okay=False))
def replay_cmd(file: str) -> None:
    """Replay a bisect log written by 'vers bisect log' (or git's)."""
    repo = open_repo()
    _finish(repo, bs.replay(repo, file, say=info))


@bisect.command("reset")
def reset_cmd() -> None:
    """End the bisection and remove its state (HEAD never moved)."""
    if not bs.reset(open_repo()):
        info("We are not bisecting.")


@bisect.command("terms")
@click.option("--term-good", "--term-old", "which", flag_value="good")
@click.option("--term-bad", "--term-new", "which", flag_value="bad")
def terms_cmd(which: str | None) -> None:
    """Show the terms of this bisect session."""
    t = bs.terms(open_repo())
    if which == "good":
        click.echo(t.good)
    elif which == "bad":
        click.echo(t.bad)
    else:
        click.echo(f"Your current terms are {t.good} for the old state\n"
                   f"and {t.bad} for the new state.")


def _view(fmt: str) -> None:
    rows = bs.visualize(open_repo())
    if fmt == "json":
        emit_json(rows)
        return
    for r in rows:
        marks = f" ({', '.join(r['marks'])})" if r["marks"] else ""
        click.echo(f"{r['id'][:12]} {r['message']}{marks}")
    info(f"{len(rows)} candidate(s) left")


@bisect.command("visualize")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def visualize_cmd(fmt: str) -> None:
    """List the remaining candidates, newest first."""
    _view(fmt)


@bisect.command("view")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def view_cmd(fmt: str) -> None:
    """Same as visualize."""
    _view(fmt)
