"""The VM verbs: run, ps, status, pause, resume, kill, console, exec, commit, branch, run-commit,
checkout, port. Plain functions taking a ``Repo``; ``vers/cli/vm.py`` only parses arguments and
calls them. The work is the VM driver's (``vers.vmm``); what a verb means for history (HEAD,
which source ``vers branch`` forks) is decided here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from vers.errors import BadInput, BadRevision, FuseError, RefError, UnknownVM
from vers.objects.model import is_object_id
from vers.porcelain import record as recording
from vers.porcelain.transfer import exec_json
from vers.progress import NO_PROGRESS, Progress
from vers.refs.container import check_short_name
from vers.remote.config import list_remotes, remove_remote
from vers.remote.lazy import LazyObjects, open_lazy, promisor_for, resolve_on_remote
from vers.remote.s3 import AWS_ENV_KEYS
from vers.vmm import control
from vers.vmm.agent import ExecResult
from vers.vmm.boot import (
    BOOT_TIMEOUT,
    RunOptions,
    check_options,
    needs_image_build,
    restore_commit,
    restore_commit_unsettled,
    run_vm,
)
from vers.vmm.branch import branch_vm_unsettled, child_names
from vers.vmm.commit import commit_vm, commit_vm_unsettled
from vers.vmm.control import VMStatus
from vers.vmm.devstate import Timings
from vers.vmm.machine import parse_size
from vers.vmm.memory import default_backing
from vers.vmm.memory.fuse import BackingDaemon
from vers.vmm.net import Port, child_ports, parse_ports
from vers.vmm.state import VMRecord, registry
from vers.vmm.teardown import kill_vms

if TYPE_CHECKING:
    from vers.repo import Repo

__all__ = ["BOOT_TIMEOUT", "ExecResult", "Port", "RunOptions", "Timings", "VMRecord", "VMStatus",
           "branch", "check_run", "checkout", "commit", "commit_json", "console", "default_backing",
           "exec_in", "exec_json", "from_remote", "kill", "parse_size", "pause", "port_add",
           "port_rm", "ports", "ps", "record", "recording_summaries", "resume", "run",
           "run_commit", "status", "vm_json"]


def run(repo: Repo, opts: RunOptions, progress: Progress = NO_PROGRESS) -> VMRecord:
    """Boot a VM (the default guest unless ``opts`` names kernel, initrd and disks)."""
    return run_vm(repo, opts, progress)


def check_run(opts: RunOptions) -> str | None:
    """Refuse unusable run options up front; returns the image the run will build first (not
    cached yet), if any."""
    check_options(opts)
    return needs_image_build(opts)


def record(repo: Repo, vm: str | None) -> VMRecord:
    """The VM named by alias, ID or unique prefix (the current VM when None)."""
    return registry(repo).resolve(vm)


def vm_json(repo: Repo, rec: VMRecord) -> dict[str, Any]:
    """A VM as the JSON outputs of run, branch, run-commit and checkout show it (docs/cli.md)."""
    return {"id": rec.id, "name": rec.name, "base_commit": rec.base_commit,
            "branch": rec.branch, "parent_vm": rec.parent_vm, "pid": rec.runtime.pid,
            "memory": rec.spec.memory, "accel": rec.spec.accel,
            "ports": [dict(p) for p in rec.runtime.ports],
            "current": registry(repo).current() == rec.id}


def commit_json(cid: str, tm: Timings, repo: Repo) -> dict[str, Any]:
    """A VM commit as JSON: its ID, parents, the guest's pause and what changed."""
    c = repo.get_commit(cid)
    return {"id": cid, "parents": c.parents, "message": c.message,
            "vm_id": c.config.get("vmm", {}).get("vm_id"), "pause_ms": tm.pause,
            "memory_dirty_pages": tm.extra.get("memory_dirty_pages"),
            "phases_ms": dict(tm.phases)}


def ps(repo: Repo) -> list[VMStatus]:
    """This repository's VMs, orphaned QEMU processes included."""
    return control.list_vms(repo)


def status(repo: Repo, vm: str | None) -> dict[str, Any]:
    """One VM's state and where its files are, and its recording (``vers record``) if any."""
    out = control.status(repo, vm)
    rec = registry(repo).resolve(out["id"])
    out["recording"] = recording.status_json(rec) if rec.runtime.recording else None
    return out


def recording_summaries(repo: Repo) -> dict[str, str]:
    """VM ID -> one line about its recording, for the VMs ``vers record`` commits."""
    return {r.id: line for r in recording.recordings(repo)
            if (line := recording.summary(r)) is not None}


def pause(repo: Repo, vm: str | None) -> VMRecord:
    return control.pause_vm(repo, vm)


def resume(repo: Repo, vm: str | None) -> VMRecord:
    return control.resume_vm(repo, vm)


def kill(repo: Repo, vms: list[str], every: bool = False) -> list[str]:
    """Stop VMs (or orphans) and delete their state; returns the IDs killed. ``every``: all the
    repository's VMs (as ``ps`` lists them), and no names may be given with it."""
    if every:
        if vms:
            raise BadInput("kill --all takes no VM names")
        return kill_vms(repo, [s.id for s in control.list_vms(repo)])
    if not vms:
        raise BadInput("name the VMs to kill, or --all")
    return kill_vms(repo, vms)


def console(repo: Repo, vm: str | None, follow: bool = False) -> Iterator[bytes]:
    return control.follow_console(repo, vm, follow)


def exec_in(repo: Repo, vm: str | None, argv: list[str], timeout: float = 300.0) -> ExecResult:
    return control.exec_in_vm(repo, vm, argv, timeout)


def commit(repo: Repo, vm: str | None, message: str = "", stay_paused: bool = False,
           branch: str | None = None, merge: bool = False, sync: bool = True,
           progress: Progress = NO_PROGRESS) -> tuple[str, Timings]:
    """Commit a running VM onto ``branch`` (else the VM's own branch, else HEAD); see
    ``Repo.commit_state`` for when ``merge`` is needed. ``sync``: file-consistent disks (the
    guest agent flushes and freezes the guest's file systems); without, crash-consistent."""
    return commit_vm(repo, vm, message, stay_paused, branch, merge, sync, progress)


def commit_unsettled(repo: Repo, vm: str | None, message: str = "", stay_paused: bool = False,
                     branch: str | None = None, merge: bool = False, sync: bool = True,
                     ) -> tuple[str, Timings, Callable[[], None]]:
    """``commit``, returning once the commit is stored, with the step it leaves to run
    (``vers.vmm.commit.commit_vm_unsettled``)."""
    return commit_vm_unsettled(repo, vm, message, stay_paused, branch, merge, sync)


def branch(repo: Repo, source: str | None, count: int = 1, name: str | None = None,
           ports: tuple[str, ...] = (), refs: str | None = None, remote: str | None = None,
           ) -> tuple[list[VMRecord], Timings | None]:
    """Fork SOURCE into ``count`` children: a live VM (the current one when None) is branched,
    a commit is restored ``count`` times. Each child publishes ``ports`` (a live VM's children
    also its guest ports, on host ports of their own). Timings only for a live VM.

    With ``refs`` (a prefix), child i gets branch PREFIX-i, made at the commit the children
    start from (or at their first commit, for a VM never committed); each child's commits then
    go to its own branch. With ``remote``, SOURCE is a commit read lazily from that remote
    (see ``from_remote``)."""
    children, tm, settle = branch_unsettled(repo, source, count, name, ports, refs, remote)
    settle()
    return children, tm


def branch_unsettled(repo: Repo, source: str | None, count: int = 1, name: str | None = None,
                     ports: tuple[str, ...] = (), refs: str | None = None,
                     remote: str | None = None,
                     ) -> tuple[list[VMRecord], Timings | None, Callable[[], None]]:
    """``branch``, returning once the children run, with the step a live VM's branch leaves
    to run (``vers.vmm.branch.branch_vm_unsettled``; nothing for a restored commit)."""
    ref_names = _child_refs(repo, refs, count)
    if remote is not None:
        if source is None:
            raise BadInput("branch --from needs a COMMIT to restore")
        source = from_remote(repo, remote, source)
    settle: Callable[[], None] = _nothing
    if source is None or registry(repo).find(source) is not None:
        children, tm, settle = branch_vm_unsettled(repo, source, count, name, ports)
    else:
        try:
            repo.rev_parse(source)
        except BadRevision as exc:
            raise UnknownVM(f"{source!r} is neither a VM nor a commit") from exc
        child_ports([], parse_ports(ports), count)  # refuses a fixed host port for several
        children = [restore_commit(repo, source, name=n, ports=ports)
                    for n in child_names(name, count)]
        tm = None
    if ref_names:
        try:
            _give_refs(repo, children, ref_names)
        except BaseException:
            settle()
            raise
    return children, tm, settle


def _nothing() -> None:
    pass


def _child_refs(repo: Repo, prefix: str | None, count: int) -> list[str]:
    """PREFIX-0 .. PREFIX-(count-1), checked up front: valid names no branch has yet."""
    if prefix is None:
        return []
    names = [f"{prefix}-{i}" for i in range(count)]
    for n in names:
        check_short_name(n)
        if repo.refs.read_ref("refs/heads/" + n) is not None:
            raise RefError(f"branch {n!r} already exists (pick another --refs prefix)")
    return names


def _give_refs(repo: Repo, children: list[VMRecord], names: list[str]) -> None:
    reg = registry(repo)
    for child, ref in zip(children, names):
        if child.base_commit is not None:
            repo.refs.set_ref("refs/heads/" + ref, child.base_commit, old=None,
                              message=f"branch: child VM {child.id}")
        with reg.lock(child):
            fresh = reg.get(child.id) or child
            fresh.branch = child.branch = ref
            reg.save(fresh)


def run_commit(repo: Repo, rev: str, name: str | None = None, make_current: bool = False,
               ports: tuple[str, ...] = (), remote: str | None = None) -> VMRecord:
    """Boot a new VM from a commit (memory, disks, device state), publishing ``ports`` (a
    commit records none). With ``remote`` (a remote's name or URL) the commit may be one only
    that remote has: it is read lazily from there (``from_remote``)."""
    rec, settle = run_commit_unsettled(repo, rev, name, make_current, ports, remote)
    settle()
    return rec


def run_commit_unsettled(repo: Repo, rev: str, name: str | None = None,
                         make_current: bool = False, ports: tuple[str, ...] = (),
                         remote: str | None = None
                         ) -> tuple[VMRecord, Callable[[], None]]:
    """``run_commit``, returning once the VM runs, with the step it leaves to run
    (``vers.vmm.boot.restore_commit_unsettled``)."""
    if remote is not None:
        rev = from_remote(repo, remote, rev)
    return restore_commit_unsettled(repo, rev, name=name, make_current=make_current,
                                    ports=ports)


def checkout(repo: Repo, rev: str, ports: tuple[str, ...] = (),
             remote: str | None = None) -> VMRecord:
    """Restore ``rev``, make the new VM current and move HEAD there, like git checkout: onto the
    branch when ``rev`` names one, else detached at the commit. ``remote`` as for run_commit."""
    cid = from_remote(repo, remote, rev) if remote is not None else repo.rev_parse(rev)
    rec = restore_commit(repo, cid, make_current=True, ports=ports)
    if remote is None and repo.refs.resolve("refs/heads/" + rev) is not None:
        repo.set_head_branch(rev, message=f"checkout: {rev}")
    else:
        repo.set_head_detached(cid, message=f"checkout: {rev}")
    return rec


def from_remote(repo: Repo, remote: str, rev: str) -> str:
    """Make ``remote`` a promisor of this repository (a URL no remote has yet is added under a
    name of its own), attach it here and in the FUSE backing daemon, and bring in what any
    restore of ``rev`` needs: its commit, trees and nodes, device state and boot files. The
    guest's pages follow when it reads them. Returns the commit's ID. A remote this call added
    is removed again if it fails (e.g. the URL cannot be reached, or has no such commit)."""
    known = set(list_remotes(repo))
    name = promisor_for(repo, remote)
    try:
        return _from_remote(repo, name, rev)
    except BaseException:
        if name not in known:
            remove_remote(repo, name)
        raise


def _from_remote(repo: Repo, name: str, rev: str) -> str:
    lazy = open_lazy(repo)
    assert lazy is not None  # ``name`` is a promisor now
    if default_backing() == "fuse" and restore_through_daemon(repo, lazy, rev):
        return rev
    cid = resolve_on_remote(repo, lazy, name, rev)
    lazy.fetch(repo.store.missing([bytes.fromhex(cid)]))
    try:
        commit = repo.get_commit(cid)
    except BadRevision as exc:
        raise BadRevision(f"{rev} is not a commit on {name}") from exc
    fuse = default_backing() == "fuse"
    if fuse:  # the daemon fetches what the guest reads (nodes, recorded pages) meanwhile
        daemon = BackingDaemon()
        daemon.ensure_running()
        daemon.request("promisor_settings", repo=str(repo.vers_dir),
                       env=_remote_env(),
                       retry_seconds=lazy.retry_seconds, commit=cid)
    lazy.prefetch_commit(commit, nodes=not fuse)
    return cid


def _remote_env() -> dict[str, str]:
    """The S3 settings of this process, for the backing daemon to read the remote with."""
    return {k: os.environ[k] for k in AWS_ENV_KEYS if k in os.environ}


def restore_through_daemon(repo: Repo, lazy: LazyObjects, rev: str) -> bool:
    """For a full commit ID: have the FUSE backing daemon (which will serve the guest's RAM and
    disks from the remote anyway, and has its remote client warm) bring in what the restore
    reads before QEMU starts, while it starts fetching what the guest reads first. False if
    the daemon does not know how (a daemon of an older vers): the caller does it itself."""
    if not is_object_id(rev):
        return False  # a name or a prefix: resolved with the remote's refs and indexes here
    daemon = BackingDaemon()
    daemon.ensure_running()
    try:
        reply = daemon.request(
            "restore_from_remote", repo=str(repo.vers_dir), commit=rev,
            env=_remote_env(),
            retry_seconds=lazy.retry_seconds, timeout=lazy.retry_seconds * 2 + 120)
    except FuseError as exc:
        if "unknown control request" in str(exc):
            return False
        raise
    lazy.phases.update(reply.get("phases") or {})
    return True


def ports(repo: Repo, vm: str | None) -> tuple[VMRecord, list[Port]]:
    """A VM's published ports."""
    return control.list_ports(repo, vm)


def port_add(repo: Repo, vm: str | None, spec: str) -> Port:
    """Publish a port of a running VM; returns it with the host port it got."""
    return control.add_port(repo, vm, spec)


def port_rm(repo: Repo, vm: str | None, spec: str) -> list[Port]:
    """Stop publishing the ports ``spec`` names."""
    return control.remove_port(repo, vm, spec)
