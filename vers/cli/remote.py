"""vers CLI commands: remote, push, fetch, pull, clone. Parsing only; the work is in porcelain."""

from __future__ import annotations

import click

from vers.cli import completion as comp
from vers.cli._group import cli, info, open_repo, progress, quiet_given
from vers.porcelain import push as push_mod

_quiet = click.option("-q", "--quiet", is_flag=True,
                      help="No progress meters and no summary on stderr (like `vers -q`).")


@cli.group(invoke_without_command=True)
@click.option("-v", "--verbose", is_flag=True, help="Show URLs too.")
@click.pass_context
def remote(ctx: click.Context, verbose: bool) -> None:
    """Manage remotes: paths, file:// or s3://bucket/prefix URLs.

    S3 settings and credentials come from the AWS environment and config files (including
    AWS_ENDPOINT_URL for non-AWS servers); they are never stored in the repository."""
    if ctx.invoked_subcommand is not None:
        return
    from vers.porcelain.remote import list_remotes

    with open_repo() as repo:
        for name, url in list_remotes(repo).items():
            if verbose:
                click.echo(f"{name}\t{url} (fetch)")
                click.echo(f"{name}\t{url} (push)")
            else:
                click.echo(name)


@remote.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--create-bucket", is_flag=True, help="Create the s3:// URL's bucket first.")
def remote_add(name: str, url: str, create_bucket: bool) -> None:
    """Add remote NAME at URL."""
    from vers.porcelain.remote import add_remote

    with open_repo() as repo:
        add_remote(repo, name, url, create_bucket)


@remote.command("remove")
@click.argument("name", shell_complete=comp.remotes)
def remote_remove(name: str) -> None:
    """Forget remote NAME and its remote-tracking refs (the remote itself is untouched)."""
    from vers.porcelain.remote import remove_remote

    with open_repo() as repo:
        remove_remote(repo, name)


remote.add_command(remote_remove, "rm")


@cli.command()
@click.argument("remote_name", metavar="REMOTE", shell_complete=comp.remotes)
@click.argument("refspecs", nargs=-1, metavar="[REF[:DST]]...", shell_complete=comp.revisions)
@click.option("-f", "--force", is_flag=True, help="Allow non-fast-forward updates.")
@click.option("--bundle-size", type=int, default=push_mod.DEFAULT_BUNDLE_BYTES, show_default=True,
              help="Target bytes per uploaded bundle.")
@_quiet
def push(remote_name: str, refspecs: tuple[str, ...], force: bool, bundle_size: int,
         quiet: bool) -> None:
    """Send commits to REMOTE and move its refs (default: the current branch)."""
    if bundle_size < 4096:
        raise click.BadParameter("must be at least 4096", param_hint="--bundle-size")
    quiet = quiet or quiet_given()
    with open_repo() as repo:
        result = push_mod.push(repo, remote_name, list(refspecs), force=force,
                               progress=progress(quiet), bundle_bytes=bundle_size)
    if not quiet:
        for line in push_mod.push_lines(result):
            info(line)


@cli.command()
@click.argument("remote_name", metavar="REMOTE", shell_complete=comp.remotes)
@click.option("--lazy", is_flag=True,
              help="Refs and commits only: REMOTE becomes the promisor the rest is read from "
                   "when needed (a lazy repository stays lazy on later fetches).")
@click.option("--all-objects", is_flag=True,
              help="Also fetch whatever the store lacks of everything its refs and VMs reach "
                   "(completes a lazy repository).")
@_quiet
def fetch(remote_name: str, lazy: bool, all_objects: bool, quiet: bool) -> None:
    """Fetch branches and tags of REMOTE into refs/remotes/REMOTE/* (and refs/tags/*)."""
    from vers.porcelain.fetch import fetch as run_fetch
    from vers.porcelain.fetch import fetch_lines

    quiet = quiet or quiet_given()
    with open_repo() as repo:
        summary = run_fetch(repo, remote_name, progress(quiet), lazy=lazy,
                            all_objects=all_objects)
    if not quiet:
        for line in fetch_lines(summary):
            info(line)


@cli.command()
@click.argument("remote_name", metavar="[REMOTE]", default="origin", shell_complete=comp.remotes)
@_quiet
def pull(remote_name: str, quiet: bool) -> None:
    """Fetch REMOTE (default origin), then fast-forward the current branch; refuses otherwise."""
    from vers.porcelain.fetch import pull as run_pull

    quiet = quiet or quiet_given()
    with open_repo() as repo:
        old, new = run_pull(repo, remote_name, progress(quiet))
    if not quiet:
        info("already up to date" if old == new else
             f"fast-forward {old[:12] if old else '(new)'} -> {new[:12]}")


@cli.command()
@click.argument("url")
@click.argument("directory", required=False)
@click.option("--lazy", is_flag=True,
              help="Refs and commits only; the rest is read from origin when needed.")
@_quiet
def clone(url: str, directory: str | None, lazy: bool, quiet: bool) -> None:
    """Copy the repository at URL into DIRECTORY; prints the HEAD commit ID."""
    from vers.porcelain.clone import clone as run_clone

    quiet = quiet or quiet_given()
    repo, head = run_clone(url, directory, progress(quiet), lazy=lazy)
    with repo:
        if head is None:
            info(f"cloned an empty repository into {repo.root}")
            return
        if not quiet:
            info(f"cloned into {repo.root}")
    click.echo(head)
