"""vers CLI commands: fuse (``mount``, ``umount``)."""

from __future__ import annotations

import click

from vers.cli._group import cli, info, open_repo


@cli.command("mount")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("-f", "--foreground", is_flag=True, help="Stay attached; Ctrl-C unmounts.")
def mount_cmd(directory: str, foreground: bool) -> None:
    """Show every commit as read-only files under DIRECTORY.

    Layout: commits/<id>/{memory,disk,...,meta.json}, refs/heads/<branch>, tags/<tag>, HEAD.
    Returns once mounted (the daemon stays in the background) unless --foreground.
    """
    from vers.porcelain.mount import mount

    repo = open_repo()
    pid = mount(repo, directory, foreground=foreground)
    if pid is not None:
        info(f"mounted {repo.root} at {directory} (daemon pid {pid}); 'vers umount {directory}'")


@cli.command("umount")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("-z", "--lazy", is_flag=True, help="Detach now even if files are open.")
def umount_cmd(directory: str, lazy: bool) -> None:
    """Unmount a vers mount (also cleans up after a daemon that died)."""
    from vers.porcelain.mount import umount

    umount(open_repo(), directory, lazy=lazy)
