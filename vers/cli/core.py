"""vers CLI commands of the object store and history: init, snapshot, log, show, diff, export,
rev-parse, tags, branches, reflog. Each command parses arguments and calls vers.porcelain."""

from __future__ import annotations

import sys

import click

from vers.cli import completion as comp
from vers.cli._group import cli, emit_json, info, open_repo, progress
from vers.errors import BadInput


def _named_images(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise BadInput(f"--image wants NAME=FILE, got {pair!r}")
        out[name] = path
    return out


@cli.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False))
def init(directory: str) -> None:
    """Create an empty repository in DIRECTORY (default: here)."""
    from vers.porcelain import init as init_mod

    repo = init_mod.init(directory)
    info(f"Initialized empty vers repository in {repo.vers_dir}")


@cli.command()
@click.option("--memory", "memory", type=click.Path(), help="Memory image file.")
@click.option("--disk", "disks", multiple=True, type=click.Path(),
              help="Disk image (repeat for more).")
@click.option("--devstate", type=click.Path(), help="Device state file.")
@click.option("--image", "extra", multiple=True, metavar="NAME=FILE", help="Any other named image.")
@click.option("-m", "--message", default="", help="Commit message.")
@click.option("--config", "config_json", default=None,
              help="Machine configuration as a JSON object.")
def snapshot(memory: str | None, disks: tuple[str, ...], devstate: str | None,
             extra: tuple[str, ...], message: str, config_json: str | None) -> None:
    """Commit image files as a new commit on the current branch; prints its ID."""
    import json

    from vers.porcelain import snapshot as snapshot_mod

    config = None
    if config_json:
        try:
            config = json.loads(config_json)
        except json.JSONDecodeError as exc:
            raise BadInput(f"--config is not valid JSON: {exc}") from exc
        if not isinstance(config, dict):
            raise BadInput("--config must be a JSON object")
    repo = open_repo()
    images = snapshot_mod.image_map(memory, disks, devstate, _named_images(extra))
    cid = snapshot_mod.snapshot(repo, images, message, config, progress())
    branch = repo.current_branch()
    subject = message.splitlines()[0] if message else ""
    info(f"[{branch or 'detached HEAD'} {cid[:12]}] {subject}".rstrip())
    click.echo(cid)


@cli.command("rev-parse")
@click.argument("revs", nargs=-1, shell_complete=comp.revisions)
@click.option("--short", is_flag=True, help="Print 12-character IDs.")
@click.option("--at", "--before", "at", metavar="TIME", default=None,
              help="The newest commit at or before TIME on each REV's first-parent history "
                   "(default REV: HEAD), as REV@{TIME}.")
def rev_parse(revs: tuple[str, ...], short: bool, at: str | None) -> None:
    """Print the full commit ID each REV names."""
    if not revs and at is None:
        raise BadInput("rev-parse wants a revision (or --at TIME)")
    repo = open_repo()
    for rev in revs or ("HEAD",):
        cid = repo.rev_parse(rev) if at is None else repo.commit_at(rev, at)
        click.echo(cid[:12] if short else cid)


@cli.command()
@click.argument("rev", default="HEAD", shell_complete=comp.revisions)
@click.option("--oneline", is_flag=True, help="Short ID and message, one line per commit.")
@click.option("--graph", is_flag=True, help="Draw the commit graph.")
@click.option("-n", "--max-count", type=click.IntRange(min=0), default=None)
@click.option("--first-parent", is_flag=True)
@click.option("--since", "--after", "since", metavar="TIME", default=None,
              help="Only commits made at or after TIME (e.g. '30s', '10 minutes ago').")
@click.option("--until", "--before", "until", metavar="TIME", default=None,
              help="Only commits made at or before TIME.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def log(
    rev: str, oneline: bool, graph: bool, max_count: int | None, first_parent: bool,
    since: str | None, until: str | None, fmt: str
) -> None:
    """Show history from REV (or an A..B range), newest first."""
    from vers.porcelain import log as log_mod

    repo = open_repo()
    if rev == "HEAD" and repo.head_commit() is None:
        raise BadInput(f"your current branch '{repo.current_branch()}' does not have any "
                       "commits yet")
    commits = log_mod.log_commits(repo, rev, max_count, first_parent, since, until)
    if fmt == "json":
        emit_json([log_mod.commit_json(c) for c in commits])
        return
    for line in log_mod.log_lines(repo, commits, oneline, graph):
        click.echo(line)


@cli.command()
@click.argument("rev", default="HEAD", shell_complete=comp.revisions)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def show(rev: str, fmt: str) -> None:
    """Show one commit: metadata, images and machine configuration."""
    from vers.porcelain import show as show_mod

    repo = open_repo()
    if fmt == "json":
        emit_json(show_mod.show_data(repo, rev))
    else:
        click.echo(show_mod.show_text(repo, rev))


@cli.command()
@click.argument("a", shell_complete=comp.revisions)
@click.argument("b", required=False, shell_complete=comp.revisions)
@click.option("--stat", is_flag=True, help="One summary line per image.")
@click.option("--ranges", "all_ranges", is_flag=True,
              help="Every changed range (default: a summary with the largest ones).")
@click.option("--exit-code", is_flag=True, help="Exit 1 if the commits differ, 0 if not.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.option("--files", is_flag=True, help="Guest files added/deleted/modified (ext4 disk).")
@click.option("--memory", is_flag=True, help="Changed memory as guest-physical ranges.")
@click.option("--image", default=None, help="Disk image for --files (default: disk).")
def diff(a: str, b: str | None, stat: bool, all_ranges: bool, exit_code: bool, fmt: str,
         files: bool = False, memory: bool = False, image: str | None = None) -> None:
    """Changed memory pages and disk blocks between commits A and B (default B: HEAD)."""
    from vers.porcelain import diff as diff_mod

    repo = open_repo()
    if files or memory:
        from vers.porcelain.difffiles import render

        text, changed = render(repo, a, b or "HEAD", files, memory, image, fmt)
        if text:
            click.echo(text)
        sys.exit(1 if exit_code and changed else 0)
    d = repo.diff(a, b or "HEAD")
    if fmt == "json":
        emit_json(d.to_json())
    else:
        text = (diff_mod.format_stat(d) if stat else diff_mod.format_ranges(d) if all_ranges
                else diff_mod.format_summary(d))
        if text:
            click.echo(text)
    if exit_code and d.changed:
        sys.exit(1)


@cli.command()
@click.argument("rev", shell_complete=comp.revisions)
@click.option("--memory", type=click.Path(dir_okay=False), help="Write the memory image here.")
@click.option("--disk", "disks", multiple=True, type=click.Path(dir_okay=False),
              help="Write disk, disk1, ... here (repeat).")
@click.option("--devstate", type=click.Path(dir_okay=False))
@click.option("--image", "extra", multiple=True, metavar="NAME=OUT")
def export(rev: str, memory: str | None, disks: tuple[str, ...], devstate: str | None,
           extra: tuple[str, ...]) -> None:
    """Write a commit's images back to files (sparse where zero)."""
    from vers.porcelain import export as export_mod
    from vers.porcelain import snapshot as snapshot_mod

    repo = open_repo()
    images = snapshot_mod.image_map(memory, disks, devstate, _named_images(extra))
    outputs = {k: str(v) for k, v in images.items()}
    for name in export_mod.export(repo, rev, outputs, progress()):
        info(f"exported {name} to {outputs[name]}")


@cli.command()
@click.argument("name", required=False, shell_complete=comp.tags)
@click.argument("rev", default="HEAD", shell_complete=comp.revisions)
@click.option("-d", "--delete", is_flag=True, help="Delete the tag.")
@click.option("-f", "--force", is_flag=True, help="Move an existing tag.")
def tag(name: str | None, rev: str, delete: bool, force: bool) -> None:
    """List tags, or tag REV (default HEAD) as NAME."""
    from vers.porcelain import refs as refs_mod

    repo = open_repo()
    if name is None:
        for t in refs_mod.list_tags(repo):
            click.echo(t.short)
    elif delete:
        cid = refs_mod.delete_tag(repo, name)
        info(f"Deleted tag {name} (was {cid[:12]})")
    else:
        refs_mod.create_tag(repo, name, rev, force)


@cli.command("branch-list")
@click.option("-v", "--verbose", is_flag=True, help="Show each branch's commit and message.")
def branch_list(verbose: bool) -> None:
    """List branches; the current one is marked with '*'."""
    from vers.porcelain import refs as refs_mod

    repo = open_repo()
    for b in refs_mod.list_branches(repo):
        mark = "*" if b.current else " "
        if verbose:
            click.echo(f"{mark} {b.short} {b.commit[:12]} {repo.get_commit(b.commit).summary}")
        else:
            click.echo(f"{mark} {b.short}")


@cli.command("branch-create")
@click.argument("name")
@click.argument("rev", default="HEAD", shell_complete=comp.revisions)
@click.option("-f", "--force", is_flag=True, help="Move the branch if it exists.")
def branch_create(name: str, rev: str, force: bool) -> None:
    """Create branch NAME at REV (a ref only; `vers branch` forks a live VM)."""
    from vers.porcelain import refs as refs_mod

    click.echo(refs_mod.create_branch(open_repo(), name, rev, force))


@cli.command("branch-delete")
@click.argument("name", shell_complete=comp.branches)
def branch_delete(name: str) -> None:
    """Delete branch NAME."""
    from vers.porcelain import refs as refs_mod

    cid = refs_mod.delete_branch(open_repo(), name)
    info(f"Deleted branch {name} (was {cid[:12]})")


@cli.command()
@click.argument("name", shell_complete=comp.branches)
def switch(name: str) -> None:
    """Make branch NAME current (moves HEAD only; `vers checkout` restores a machine)."""
    from vers.porcelain import refs as refs_mod

    repo = open_repo()
    old = refs_mod.detached_head(repo)
    cid = refs_mod.switch(repo, name)
    warning = refs_mod.leaving_warning(refs_mod.left_behind(repo, old))
    if warning:
        info(warning)
    info(f"Switched to branch '{name}' at {cid[:12]}")


@cli.command("show-ref")
def show_ref() -> None:
    """List every ref with the commit it names."""
    from vers.porcelain import refs as refs_mod

    for cid, name in refs_mod.show_refs(open_repo()):
        click.echo(f"{cid} {name}")


@cli.command()
@click.argument("ref", default="HEAD", shell_complete=comp.revisions)
def reflog(ref: str) -> None:
    """Where REF has pointed, newest first."""
    from vers.porcelain import refs as refs_mod

    for line in refs_mod.reflog(open_repo(), ref):
        click.echo(line)
