"""vers CLI commands of the VM driver: run, ps, status, pause, resume, kill, console, exec,
commit, branch, run-commit, checkout. Each parses arguments and calls vers.porcelain.vm."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from vers.cli._group import cli, emit_json, info, open_repo
from vers.porcelain import refs as refs_mod
from vers.porcelain import vm as verbs

if TYPE_CHECKING:
    from vers.repo import Repo


@cli.command()
@click.option("--memory", default="256M", show_default=True, help="Guest RAM, e.g. 256M or 2G.")
@click.option("--vcpus", default=1, show_default=True, type=int)
@click.option("--name", default=None, help="Alias for the new VM.")
@click.option("--image", default=None,
              help="Guest image: default, debian, postgres or one you imported (vers images); "
                   "built first if needed.")
@click.option("--disk-size", default=None, help="Grow the root disk to SIZE, e.g. 4G.")
@click.option("--accel", type=click.Choice(["kvm", "tcg"]), default=None,
              help="Default: kvm where kvm_intel/kvm_amd really work, else tcg.")
@click.option("--kernel", type=click.Path(dir_okay=False), help="Your own kernel (bzImage).")
@click.option("--initrd", type=click.Path(dir_okay=False), help="Your own initramfs.")
@click.option("--disk", "disks", multiple=True, type=click.Path(dir_okay=False),
              help="Your own raw disk image (repeat for more); used copy-on-write, never written.")
@click.option("--append", "cmdline", default=None, help="Kernel command line (replaces ours).")
@click.option("--memory-backing", default=None,
              help="Guest RAM backing: fuse (default where FUSE works) or shm; "
                   "or $VERS_MEMORY_BACKING.")
@click.option("--memory-dir", default=None, help="Directory for the RAM file (default /dev/shm).")
@click.option("--boot-timeout", default=verbs.BOOT_TIMEOUT, show_default=True, type=float)
@click.option("--standby/--no-standby", default=None,
              help="Keep a standby child QEMU started for the next `vers branch` (an idle "
                   "~50 MB process per VM, hidden from `ps`; children inherit it). Default: on "
                   "with the fuse memory backing, unless $VERS_STANDBY=0.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              help="json: one object on stdout (docs/cli.md).")
def run(memory: str, vcpus: int, name: str | None, image: str | None, disk_size: str | None,
        accel: str | None, kernel: str | None, initrd: str | None, disks: tuple[str, ...],
        cmdline: str | None, memory_backing: str | None, memory_dir: str | None,
        boot_timeout: float, standby: bool | None, fmt: str) -> None:
    """Boot a VM (the default guest unless you name an image or give your own); prints its ID."""
    repo = open_repo()
    opts = verbs.RunOptions(memory=verbs.parse_size(memory), vcpus=vcpus, name=name, accel=accel,
                            kernel=kernel, initrd=initrd, disks=disks, image=image,
                            disk_size=verbs.parse_size(disk_size) if disk_size else None,
                            cmdline=cmdline,
                            memory_backing=memory_backing or verbs.default_backing(),
                            memory_dir=memory_dir, boot_timeout=boot_timeout)
    if standby is not None:
        opts.standby = standby
    if standby and opts.memory_backing != "fuse":
        info(f"--standby needs the fuse memory backing; ignored for {opts.memory_backing}")
    info("booting VM..." if kernel and initrd and disks else
         f"booting VM (building the {image or 'default'} guest first if it is not cached)...")
    rec = verbs.run(repo, opts)
    info(f"VM {rec.id} running{f' as {name}' if name else ''} (accel {rec.spec.accel})")
    _print_vms(repo, [rec], fmt, many=False)


def _print_vms(repo: Repo, recs: list[verbs.VMRecord], fmt: str, many: bool) -> None:
    """IDs one a line, or the VMs as JSON (an object, or a list when ``many``)."""
    if fmt == "json":
        rows = [verbs.vm_json(repo, r) for r in recs]
        emit_json(rows if many else rows[0])
        return
    for r in recs:
        click.echo(r.id)


@cli.command()
@click.option("-q", "--quiet", is_flag=True, help="Only IDs.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def ps(quiet: bool, fmt: str) -> None:
    """List this repository's VMs, including orphaned QEMU processes."""
    rows = verbs.ps(open_repo())
    if fmt == "json":
        emit_json([r.__dict__ for r in rows])
        return
    if quiet:
        for r in rows:
            click.echo(r.id)
        return
    click.echo(f"  {'ID':<9} {'NAME':<16} {'STATE':<11} {'PID':>7} {'MEMORY':>7}  BASE COMMIT")
    for r in rows:
        mark = "*" if r.current else " "
        mem = f"{r.memory // (1024 * 1024)}M" if r.memory else "-"
        base = r.base_commit[:12] if r.base_commit else "-"
        click.echo(f"{mark} {r.id:<9} {r.name or '-':<16} {r.state:<11} {r.pid or '-':>7} "
                   f"{mem:>7}  {base}")


@cli.command()
@click.argument("vm", required=False)
@click.option("--format", "fmt", type=click.Choice(["json"]), default="json",
              help="Always JSON (the option is accepted for symmetry).")
def status(vm: str | None, fmt: str) -> None:
    """Show one VM's state and where its files are (JSON)."""
    emit_json(verbs.status(open_repo(), vm))


@cli.command()
@click.argument("vm", required=False)
def pause(vm: str | None) -> None:
    """Stop the guest's CPUs."""
    rec = verbs.pause(open_repo(), vm)
    info(f"VM {rec.id} paused")


@cli.command()
@click.argument("vm", required=False)
def resume(vm: str | None) -> None:
    """Let a paused guest run again."""
    rec = verbs.resume(open_repo(), vm)
    info(f"VM {rec.id} running")


@cli.command()
@click.argument("vms", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              help="json: one object on stdout (docs/cli.md).")
def kill(vms: tuple[str, ...], fmt: str) -> None:
    """Stop VMs (or orphaned QEMU processes) and delete their state."""
    killed = verbs.kill(open_repo(), list(vms))
    for vid in killed:
        info(f"killed {vid}")
    if fmt == "json":
        emit_json({"killed": killed})


@cli.command()
@click.argument("vm", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the VM exits.")
def console(vm: str | None, follow: bool) -> None:
    """Print the VM's serial console log."""
    out = sys.stdout.buffer
    try:
        for chunk in verbs.console(open_repo(), vm, follow):
            out.write(chunk)
            out.flush()
    except KeyboardInterrupt:
        pass


@cli.command(name="exec", context_settings={"ignore_unknown_options": True})
@click.argument("vm")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--timeout", default=300.0, show_default=True, type=float)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              help="json: {returncode, stdout, stderr, ...} on stdout; exits 0 whatever the "
                   "command's exit code.")
def exec_(vm: str, command: tuple[str, ...], timeout: float, fmt: str) -> None:
    """Run COMMAND in the guest (vers exec VM -- CMD...); exits with its exit code."""
    res = verbs.exec_in(open_repo(), vm, list(command), timeout)
    if fmt == "json":
        emit_json(verbs.exec_json(res))
        return
    sys.stdout.buffer.write(res.stdout)
    sys.stdout.buffer.flush()
    sys.stderr.buffer.write(res.stderr)
    sys.stderr.buffer.flush()
    sys.exit(res.returncode)


@cli.command()
@click.argument("vm", required=False)
@click.option("-m", "--message", default="", help="Commit message.")
@click.option("--pause", "stay_paused", is_flag=True, help="Leave the VM paused afterwards.")
@click.option("--branch", "onto", default=None,
              help="Commit onto this branch (made at the VM's base commit if new) instead of "
                   "the VM's own branch or HEAD.")
@click.option("--merge", is_flag=True,
              help="If the branch moved on since the VM's base, join both lines in a merge "
                   "commit (without it such a commit is refused).")
@click.option("-v", "--verbose", is_flag=True, help="Print phase timings.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              help="json: one object on stdout (docs/cli.md).")
def commit(vm: str | None, message: str, stay_paused: bool, onto: str | None, merge: bool,
           verbose: bool, fmt: str) -> None:
    """Commit a running VM's memory, disks and device state; prints the commit ID."""
    repo = open_repo()
    cid, tm = verbs.commit(repo, vm, message, stay_paused, onto, merge)
    info(f"committed {cid[:12]} (guest paused {tm.pause:.0f} ms, "
         f"{_pages(tm.extra.get('memory_dirty_pages'))} memory pages changed)")
    if verbose:
        info(f"phases (ms): {tm.phases}")
    if fmt == "json":
        emit_json(verbs.commit_json(cid, tm, repo))
    else:
        click.echo(cid)


def _pages(n: int | None) -> str:
    return "all" if n is None else str(n)


@cli.command()
@click.argument("source", required=False)
@click.option("--count", default=1, show_default=True, type=int, help="Number of children.")
@click.option("--name", default=None, help="Alias for the child (NAME-i with --count).")
@click.option("--refs", default=None, metavar="PREFIX",
              help="Give child i its own branch PREFIX-i (made at the commit the children start "
                   "from); its commits then go there.")
@click.option("-v", "--verbose", is_flag=True, help="Print phase timings.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              help="json: one object on stdout (docs/cli.md).")
def branch(source: str | None, count: int, name: str | None, refs: str | None, verbose: bool,
           fmt: str) -> None:
    """Fork a live VM (or restore a COMMIT) into children; prints their IDs."""
    repo = open_repo()
    children, tm = verbs.branch(repo, source, count, name, refs)
    if tm is not None:
        info(f"branched {len(children)} VM(s); parent paused {tm.pause:.0f} ms")
        if verbose:
            info(f"phases (ms): {tm.phases} {tm.extra}")
    _print_vms(repo, children, fmt, many=True)


@cli.command("run-commit")
@click.argument("commit_rev", metavar="COMMIT")
@click.option("--name", default=None, help="Alias for the new VM.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              help="json: one object on stdout (docs/cli.md).")
def run_commit(commit_rev: str, name: str | None, fmt: str) -> None:
    """Boot a new VM from COMMIT (memory, disks, device state); prints its ID."""
    repo = open_repo()
    rec = verbs.run_commit(repo, commit_rev, name=name)
    info(f"VM {rec.id} restored from {rec.base_commit[:12] if rec.base_commit else '?'}")
    _print_vms(repo, [rec], fmt, many=False)


@cli.command()
@click.argument("commit_rev", metavar="COMMIT")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              help="json: one object on stdout (docs/cli.md).")
def checkout(commit_rev: str, fmt: str) -> None:
    """Restore COMMIT into a new VM, make it the current VM and move HEAD there."""
    repo = open_repo()
    old = refs_mod.detached_head(repo)
    rec = verbs.checkout(repo, commit_rev)
    warning = refs_mod.leaving_warning(refs_mod.left_behind(repo, old))
    if warning:
        info(warning)
    info(f"VM {rec.id} restored from {rec.base_commit[:12] if rec.base_commit else '?'}, now current")
    _print_vms(repo, [rec], fmt, many=False)
