"""Shell completion: ``vers completion bash|zsh|fish`` prints the script to load, and the
completers that arguments name with ``shell_complete=`` (VMs, revisions, branches, tags,
remotes, images).

Completion is click's protocol: the shell runs ``vers`` again with ``_VERS_COMPLETE`` set, click
parses the words typed so far and asks the completer of the argument under the cursor. A
completer opens the repository the command would use (``-C``, ``$VERS_DIR`` or the one found
upwards) and never fails: anything wrong (no repository, a damaged one) offers nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from vers.cli._group import cli
from vers.errors import VersError

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

    from vers.porcelain.names import Name
    from vers.repo import Repo

#: the shells ``vers completion`` knows; click supplies each one's script
SHELLS = ("bash", "zsh", "fish")


def _repo_names(list_names: Callable[[Repo, str], list[Name]], ctx: click.Context, typed: str,
                ) -> list[CompletionItem]:
    from click.shell_completion import CompletionItem

    from vers.repo import Repo

    root = ctx.find_root()
    path = root.params.get("repo_path") or os.environ.get("VERS_DIR")
    try:
        with (Repo.discover(os.getcwd()) if path is None else Repo(path)) as repo:
            names = list_names(repo, typed)
    except (VersError, OSError):
        return []
    return [CompletionItem(n.value, help=n.help or None) for n in names]


def vms(ctx: click.Context, _param: click.Parameter, typed: str) -> list[CompletionItem]:
    from vers.porcelain import names

    return _repo_names(names.vms, ctx, typed)


def revisions(ctx: click.Context, _param: click.Parameter, typed: str,
              ) -> list[CompletionItem]:
    from vers.porcelain import names

    return _repo_names(names.revisions, ctx, typed)


def branches(ctx: click.Context, _param: click.Parameter, typed: str) -> list[CompletionItem]:
    from vers.porcelain import names

    return _repo_names(names.branches, ctx, typed)


def tags(ctx: click.Context, _param: click.Parameter, typed: str) -> list[CompletionItem]:
    from vers.porcelain import names

    return _repo_names(names.tags, ctx, typed)


def remotes(ctx: click.Context, _param: click.Parameter, typed: str) -> list[CompletionItem]:
    from vers.porcelain import names

    return _repo_names(names.remotes, ctx, typed)


def vms_or_revisions(ctx: click.Context, param: click.Parameter, typed: str,
                     ) -> list[CompletionItem]:
    """``vers branch SOURCE``: a live VM, or a commit to restore."""
    return vms(ctx, param, typed) + revisions(ctx, param, typed)


def images(_ctx: click.Context, _param: click.Parameter, typed: str) -> list[CompletionItem]:
    from click.shell_completion import CompletionItem

    from vers.porcelain import names

    try:
        return [CompletionItem(n.value, help=n.help or None) for n in names.images(typed)]
    except (VersError, OSError):
        return []


@cli.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the completion script for SHELL (docs/cli.md says where to put it).

    \b
    bash:  eval "$(vers completion bash)"        (e.g. in ~/.bashrc)
    zsh:   eval "$(vers completion zsh)"         (e.g. in ~/.zshrc, after compinit)
    fish:  vers completion fish > ~/.config/fish/completions/vers.fish
    """
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None  # click ships all three
    click.echo(cls(cli, {}, "vers", "_VERS_COMPLETE").source())
