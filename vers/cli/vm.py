"""vers CLI commands of the VM driver: run, ps, status, pause, resume, kill, console, commit,
branch, run-commit, checkout, port (exec, cp and connect are in vers/cli/transfer.py). Each
parses arguments and calls vers.porcelain.vm."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from vers.cli import completion as comp
from vers.cli._group import cli, emit_json, info, open_repo, progress
from vers.errors import BadInput
from vers.porcelain import refs as refs_mod
from vers.porcelain import vm as verbs

if TYPE_CHECKING:
    from vers.repo import Repo

PUBLISH_HELP = ("Publish a guest port on the host: [HOSTIP:]HOSTPORT:GUESTPORT[/udp], or GUESTPORT "
                "for a free host port; HOSTIP defaults to 127.0.0.1. Repeatable.")


FROM_HELP = ("Read COMMIT from REMOTE (a remote's name, a path or an s3:// URL), lazily: its "
             "commit, trees and boot files now, the guest's pages when it reads them. REMOTE "
             "becomes this repository's promisor (docs/remote.md).")


def _from_option() -> Any:
    return click.option("--from", "remote", default=None, metavar="REMOTE", help=FROM_HELP)


def _publish_option(help_text: str = PUBLISH_HELP) -> Any:
    return click.option("-p", "--publish", "ports", multiple=True, metavar="SPEC", help=help_text)


def _say_ports(rec: verbs.VMRecord) -> None:
    for p in rec.runtime.ports:
        info(f"  {verbs.Port.from_dict(p)}")


@cli.command()
@click.option("--memory", default="256M", show_default=True, help="Guest RAM, e.g. 256M or 2G.")
@click.option("--vcpus", default=1, show_default=True, type=int)
@click.option("--name", default=None, help="Alias for the new VM.")
@click.option("--image", default=None, shell_complete=comp.images,
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
@click.option("--memory-dir", default=None,
              help="shm backing: directory for the RAM file (default /dev/shm); fuse backing: "
                   "the backing daemon's state directory (default $VERS_FUSE_DIR, else "
                   "/dev/shm/vers-fuse-<uid>).")
@click.option("--boot-timeout", default=verbs.BOOT_TIMEOUT, show_default=True, type=float)
@click.option("--overcommit", is_flag=True,
              help="Allow more guest RAM than this host's RAM and swap together.")
@click.option("--standby/--no-standby", default=None,
              help="Keep a standby child QEMU started for the next `vers branch` (an idle "
                   "~50 MB process per VM, hidden from `ps`; children inherit it). Default: on "
                   "with the fuse memory backing, unless $VERS_STANDBY=0.")
@click.option("--net", type=click.Choice(["user", "none"]), default="user", show_default=True,
              help="user: a virtio-net device on QEMU's user-mode network (guest 10.0.2.15, "
                   "host 10.0.2.2); none: no network device.")
@_publish_option()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              help="json: one object on stdout (docs/cli.md).")
def run(memory: str, vcpus: int, name: str | None, image: str | None, disk_size: str | None,
        accel: str | None, kernel: str | None, initrd: str | None, disks: tuple[str, ...],
        cmdline: str | None, memory_backing: str | None, memory_dir: str | None,
        boot_timeout: float, overcommit: bool, standby: bool | None, net: str,
        ports: tuple[str, ...], fmt: str) -> None:
    """Boot a VM (the default guest unless you name an image or give your own); prints its ID."""
    repo = open_repo()
    opts = verbs.RunOptions(memory=verbs.parse_size(memory), vcpus=vcpus, name=name, accel=accel,
                            kernel=kernel, initrd=initrd, disks=disks, image=image,
                            disk_size=verbs.parse_size(disk_size) if disk_size else None,
                            cmdline=cmdline,
                            memory_backing=memory_backing or verbs.default_backing(),
                            memory_dir=memory_dir, boot_timeout=boot_timeout,
                            overcommit=overcommit, net=net, ports=ports)
    if standby is not None:
        opts.standby = standby
    if standby and opts.memory_backing != "fuse":
        info(f"--standby needs the fuse memory backing; ignored for {opts.memory_backing}")
    building = verbs.check_run(opts)
    info(f"building the {building} guest first (from Debian packages; cached afterwards)..."
         if building else "booting VM...")
    rec = verbs.run(repo, opts, progress())
    info(f"VM {rec.id} running{f' as {name}' if name else ''} (accel {rec.spec.accel})")
    if fmt != "json":
        _say_ports(rec)
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
    repo = open_repo()
    rows = verbs.ps(repo)
    recording = verbs.recording_summaries(repo)
    if fmt == "json":
        emit_json([{**r.__dict__, "recording": recording.get(r.id)} for r in rows])
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
    for r in rows:
        if r.problem:
            info(f"VM {r.id}: {r.problem}")
        if r.id in recording:
            info(f"VM {r.id}: {recording[r.id]}")


@cli.command()
@click.argument("vm", required=False, shell_complete=comp.vms)
@click.option("--format", "fmt", type=click.Choice(["json"]), default="json",
              help="Always JSON (the option is accepted for symmetry).")
def status(vm: str | None, fmt: str) -> None:
    """Show one VM's state and where its files are (JSON)."""
    emit_json(verbs.status(open_repo(), vm))


@cli.command()
@click.argument("vm", required=False, shell_complete=comp.vms)
def pause(vm: str | None) -> None:
    """Stop the guest's CPUs."""
    rec = verbs.pause(open_repo(), vm)
    info(f"VM {rec.id} paused")


@cli.command()
@click.argument("vm", required=False, shell_complete=comp.vms)
def resume(vm: str | None) -> None:
    """Let a paused guest run again."""
    rec = verbs.resume(open_repo(), vm)
    info(f"VM {rec.id} running")


@cli.command()
@click.argument("vms", nargs=-1, shell_complete=comp.vms)
@click.option("--all", "every", is_flag=True, help="Every VM of the repository (as ps lists them).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              help="json: one object on stdout (docs/cli.md).")
def kill(vms: tuple[str, ...], every: bool, fmt: str) -> None:
    """Stop VMs (or orphaned QEMU processes) and delete their state."""
    killed = verbs.kill(open_repo(), list(vms), every)
    for vid in killed:
        info(f"killed {vid}")
    if fmt == "json":
        emit_json({"killed": killed})


@cli.command()
@click.argument("vm", required=False, shell_complete=comp.vms)
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


@cli.command()
@click.argument("vm", required=False, shell_complete=comp.vms)
@click.option("-m", "--message", default="", help="Commit message.")
@click.option("--pause", "stay_paused", is_flag=True, help="Leave the VM paused afterwards.")
@click.option("--branch", "onto", default=None, shell_complete=comp.branches,
              help="Commit onto this branch (made at the VM's base commit if new) instead of "
                   "the VM's own branch or HEAD.")
@click.option("--merge", is_flag=True,
              help="If the branch moved on since the VM's base, join both lines in a merge "
                   "commit (without it such a commit is refused).")
@click.option("--sync/--no-sync", default=True, show_default=True,
              help="Flush and freeze the guest's file systems around the capture, so the "
                   "committed disks hold what its files held (file-consistent); --no-sync: as "
                   "a power cut would leave them (crash-consistent).")
@click.option("-v", "--verbose", is_flag=True, help="Print phase timings.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              help="json: one object on stdout (docs/cli.md).")
def commit(vm: str | None, message: str, stay_paused: bool, onto: str | None, merge: bool,
           sync: bool, verbose: bool, fmt: str) -> None:
    """Commit a running VM's memory, disks and device state; prints the commit ID."""
    repo = open_repo()
    cid, tm = verbs.commit(repo, vm, message, stay_paused, onto, merge, sync, progress())
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
@click.argument("source", required=False, shell_complete=comp.vms_or_revisions)
@click.option("--count", default=1, show_default=True, type=int, help="Number of children.")
@click.option("--name", default=None, help="Alias for the child (NAME-i with --count).")
@click.option("--refs", default=None, metavar="PREFIX",
              help="Give child i its own branch PREFIX-i (made at the commit the children start "
                   "from); its commits then go there.")
@click.option("-v", "--verbose", is_flag=True, help="Print phase timings.")
@_publish_option(PUBLISH_HELP + " Children of a live VM also publish its guest ports, each on a "
                 "host port of its own.")
@_from_option()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              help="json: one object on stdout (docs/cli.md).")
def branch(source: str | None, count: int, name: str | None, refs: str | None, verbose: bool,
           ports: tuple[str, ...], remote: str | None, fmt: str) -> None:
    """Fork a live VM (or restore a COMMIT) into children; prints their IDs."""
    repo = open_repo()
    children, tm = verbs.branch(repo, source, count, name, ports, refs, remote=remote)
    if tm is not None:
        info(f"branched {len(children)} VM(s); parent paused {tm.pause:.0f} ms")
        if verbose:
            info(f"phases (ms): {tm.phases} {tm.extra}")
    if fmt != "json":
        for c in children:
            _say_ports(c)
    _print_vms(repo, children, fmt, many=True)


@cli.command("run-commit")
@click.argument("commit_rev", metavar="COMMIT", shell_complete=comp.revisions)
@click.option("--name", default=None, help="Alias for the new VM.")
@_publish_option()
@_from_option()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              help="json: one object on stdout (docs/cli.md).")
def run_commit(commit_rev: str, name: str | None, ports: tuple[str, ...], remote: str | None,
               fmt: str) -> None:
    """Boot a new VM from COMMIT (memory, disks, device state); prints its ID."""
    repo = open_repo()
    rec = verbs.run_commit(repo, commit_rev, name=name, ports=ports, remote=remote)
    info(f"VM {rec.id} restored from {rec.base_commit[:12] if rec.base_commit else '?'}")
    if fmt != "json":
        _say_ports(rec)
    _print_vms(repo, [rec], fmt, many=False)


@cli.command()
@click.argument("commit_rev", metavar="COMMIT", shell_complete=comp.revisions)
@_publish_option()
@_from_option()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              help="json: one object on stdout (docs/cli.md).")
def checkout(commit_rev: str, ports: tuple[str, ...], remote: str | None, fmt: str) -> None:
    """Restore COMMIT into a new VM, make it the current VM and move HEAD there."""
    repo = open_repo()
    old = refs_mod.detached_head(repo)
    rec = verbs.checkout(repo, commit_rev, ports=ports, remote=remote)
    warning = refs_mod.leaving_warning(refs_mod.left_behind(repo, old))
    if warning:
        info(warning)
    info(f"VM {rec.id} restored from {rec.base_commit[:12] if rec.base_commit else '?'}, "
         "now current")
    if fmt != "json":
        _say_ports(rec)
    _print_vms(repo, [rec], fmt, many=False)


@cli.command()
@click.argument("args", nargs=-1, metavar="[VM] | add VM SPEC | rm VM SPEC")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def port(args: tuple[str, ...], fmt: str) -> None:
    """List a VM's published ports, or publish (add) / stop publishing (rm) one on a running VM.

    SPEC is [HOSTIP:]HOSTPORT:GUESTPORT[/udp] or GUESTPORT (add: a free host port; rm: every
    rule to that guest port)."""
    repo = open_repo()
    if args and args[0] in ("add", "rm"):
        if len(args) != 3:
            raise BadInput(f"usage: vers port {args[0]} VM SPEC")
        if args[0] == "add":
            p = verbs.port_add(repo, args[1], args[2])
            info(f"published {p}")
            click.echo(p.host_port)
        else:
            for p in verbs.port_rm(repo, args[1], args[2]):
                info(f"removed {p}")
        return
    if len(args) > 1:
        raise BadInput("usage: vers port [VM] | vers port add VM SPEC | vers port rm VM SPEC")
    _, ports = verbs.ports(repo, args[0] if args else None)
    if fmt == "json":
        emit_json([p.to_dict() for p in ports])
        return
    for p in ports:
        click.echo(f"{p.guest_port}/{p.proto} -> {p.host_ip}:{p.host_port}")


@cli.command("record")
@click.argument("vm", required=False)
@click.option("--every", default=None, metavar="DURATION",
              help="Commit the VM this often (1s, 30s, 5m, ...), in a background process that "
                   "outlives this command.")
@click.option("--stop", is_flag=True, help="Stop the VM's recording.")
@click.option("--status", "show", is_flag=True,
              help="Show the recordings (the VM's, or every one), with the last error.")
@click.option("--branch", "onto", default=None,
              help="Record onto this branch (default: the VM's own branch, else HEAD's).")
@click.option("--sync/--no-sync", default=True, show_default=True,
              help="File-consistent commits, as `vers commit` makes them.")
@click.option("--keep-last", type=int, default=0, metavar="N",
              help="Keep the N newest recorded commits.")
@click.option("--keep-within", default=None, metavar="DURATION",
              help="Keep every recorded commit newer than now - DURATION.")
@click.option("--keep-minutely", type=int, default=0, metavar="N",
              help="Keep the newest commit of each of the last N minutes.")
@click.option("--keep-hourly", type=int, default=0, metavar="N", help="Same, per hour.")
@click.option("--keep-daily", type=int, default=0, metavar="N", help="Same, per day (UTC).")
@click.option("--keep-weekly", type=int, default=0, metavar="N", help="Same, per ISO week.")
@click.option("--keep-monthly", type=int, default=0, metavar="N", help="Same, per month.")
@click.option("--keep-yearly", type=int, default=0, metavar="N", help="Same, per year.")
@click.option("--prune-every", default="1m", show_default=True, metavar="DURATION",
              help="How often the recorder applies the retention policy.")
@click.option("--sweep-every", default="10m", show_default=True, metavar="DURATION",
              help="How often the recorder reclaims the space of pruned commits.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              help="json: one object on stdout (docs/cli.md).")
def record_cmd(vm: str | None, every: str | None, stop: bool, show: bool, onto: str | None,
               sync: bool, keep_last: int, keep_within: str | None, keep_minutely: int,
               keep_hourly: int, keep_daily: int, keep_weekly: int, keep_monthly: int,
               keep_yearly: int, prune_every: str, sweep_every: str, fmt: str) -> None:
    """Commit a VM on a schedule, pruning by a retention policy (gc's --keep-* rules, applied
    to the recorded commits only), until `vers record --stop` or the VM is killed."""
    from vers.history.retention import Policy, parse_duration
    from vers.porcelain import record as recording

    if sum((every is not None, stop, show)) != 1:
        raise BadInput("give one of --every DURATION, --stop or --status")
    repo = open_repo()
    if show:
        recs = recording.recordings(repo, vm)
        if fmt == "json":
            emit_json([recording.status_json(r) for r in recs])
            return
        for r in recs:
            click.echo(f"{r.id} {r.name or '-'}: {recording.summary(r) or 'not recording'}")
        return
    if stop:
        done = recording.stop(repo, vm).runtime.recording
        info(f"VM {done['vm']}: recording stopped after {done['commits']} commits "
             f"({done['failures']} failed, {done['missed']} ticks missed, "
             f"{done['pruned']} pruned)")
        return
    assert every is not None
    policy = Policy(last=keep_last, minutely=keep_minutely, hourly=keep_hourly, daily=keep_daily,
                    weekly=keep_weekly, monthly=keep_monthly, yearly=keep_yearly,
                    within=parse_duration(keep_within) if keep_within is not None else None)
    started = recording.start(repo, vm, parse_duration(every), policy, onto, sync,
                                  parse_duration(sweep_every), parse_duration(prune_every))
    cfg = started.runtime.recording
    info(f"recording VM {started.id} every {recording.fmt_duration(cfg['every'])} onto "
         f"{cfg['branch']} ({policy.describe()}); log: {cfg['log']}")
    if fmt == "json":
        emit_json(recording.status_json(started))
