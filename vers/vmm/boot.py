"""Starting VMs: boot a fresh one (``vers run``) or restore a commit (``run-commit``, ``checkout``,
``branch COMMIT``, bisect).

A restore goes through QEMU's snapshot-load path: start with ``-incoming defer`` on RAM made from
the commit's memory image (shm: copied, zero pages left as holes; FUSE: nothing copied, pages read
from the store on first touch), load the device state, ``cont``. The guest continues from the
committed instant, processes and all.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vers import bootcache, images
from vers.errors import BadInput, BadRevision, VMError
from vers.images.rootfs import check_disk, sized_overlay
from vers.objects.imagetree import tree_id
from vers.progress import NO_PROGRESS, Progress
from vers.vmm import agent as agent_mod
from vers.vmm import disk as disk_mod
from vers.vmm.devstate import load_devstate
from vers.vmm.disk import DiskChain
from vers.vmm.fresh import freshen
from vers.vmm.machine import (
    Machine,
    MiB,
    accel_arg,
    default_cmdline,
    detect_accel,
    pid_alive,
)
from vers.vmm.memory import MemoryBacking, backing_class, default_backing
from vers.vmm.memory.fuse import disk_base, disk_base_error
from vers.vmm.net import NET_MODES, Port, check_ports, parse_ports, publish_all
from vers.vmm.private import make_private, private_dir
from vers.vmm.standby import refresh_spares
from vers.vmm.state import MachineSpec, VMRecord, VMRegistry, registry
from vers.vmm.teardown import remove

if TYPE_CHECKING:
    from vers.objects.model import Commit
    from vers.repo import Repo

DEFAULT_MEMORY = 256 * MiB
BOOT_TIMEOUT = float(os.environ.get("VERS_BOOT_TIMEOUT", "120"))


@dataclass
class RunOptions:
    memory: int = DEFAULT_MEMORY
    vcpus: int = 1
    name: str | None = None
    accel: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    disks: tuple[str, ...] = ()
    #: a named guest image (``vers images``): its kernel, initrd and root disk, built if needed;
    #: files given in ``kernel``/``initrd``/``disks`` replace the image's
    image: str | None = None
    #: the root disk as the guest sees it, in bytes (the guest init grows its file system)
    disk_size: int | None = None
    cmdline: str | None = None
    memory_backing: str = field(default_factory=default_backing)
    memory_dir: str | None = None
    boot_timeout: float = BOOT_TIMEOUT
    #: allow more guest RAM than the host's RAM and swap together (it can never all be backed)
    overcommit: bool = False
    make_current: bool = True
    #: "user" (QEMU's user-mode network, the default) or "none" (no network device)
    net: str = "user"
    #: published ports: ``[HOSTIP:]HOSTPORT:GUESTPORT`` or ``GUESTPORT`` (see vers.vmm.net)
    ports: tuple[str, ...] = ()
    #: keep a standby child QEMU ready for the next branch (see vers.vmm.standby); on unless
    #: $VERS_STANDBY=0 (it only ever applies to the FUSE memory backing)
    standby: bool = field(default_factory=lambda: os.environ.get("VERS_STANDBY", "1") != "0")


def run_vm(repo: Repo, opts: RunOptions, progress: Progress = NO_PROGRESS) -> VMRecord:
    """Boot a root VM (default guest unless kernel/initrd/disks are given); ``progress`` shows
    an image build and the wait for the guest."""
    spec, kernel, initrd, disk_files = _machine_for(opts, progress)
    ports = parse_ports(opts.ports)
    check_ports(spec.net, ports)
    reg = registry(repo)
    rec = reg.create(name=opts.name, spec=spec)
    rec.standby = opts.standby
    try:
        rec.boot = {"kernel": str(Path(kernel).absolute()), "initrd": str(Path(initrd).absolute())}
        for i, (name, path) in enumerate(zip(spec.disks, disk_files)):
            base = Path(path).absolute()
            top = disk_mod.new_layer_path(reg.layers, rec.id)
            if i == 0 and opts.disk_size is not None:
                sized_overlay(base, top, opts.disk_size)
            else:
                disk_mod.create_overlay(top, base)
            rec.disks[name] = DiskChain([str(base), str(top)], 0, disk_mod.image_size(top))
        backing = _backing_class(opts.memory_backing).create(
            rec.id, opts.memory, None, Path(opts.memory_dir) if opts.memory_dir else None)
        rec.memory = backing.state()
        reg.save(rec)
        _boot(reg, rec, backing, opts.boot_timeout, ports, progress)
        refresh_spares(reg, rec, claim_standby=True)
    except BaseException:
        remove(reg, rec)
        raise
    if opts.make_current:
        reg.set_current(rec.id)
    return rec


def check_options(opts: RunOptions) -> str:
    """Refuse options that cannot work before anything is built or started; returns the
    accelerator to use."""
    if opts.memory < 16 * 1024 * 1024 or opts.memory % (1024 * 1024):
        raise BadInput("--memory must be a whole number of MiB, at least 16M")
    if opts.vcpus < 1:
        raise BadInput("--vcpus must be at least 1")
    host = host_memory()
    if host and opts.memory > host and not opts.overcommit:
        raise BadInput(f"--memory {opts.memory // MiB}M is more than this host has "
                       f"({host // MiB}M of RAM and swap); use --overcommit if you mean it")
    if opts.memory_dir is not None:
        _check_memory_dir(Path(opts.memory_dir), opts.memory_backing)
    accel = opts.accel or detect_accel()
    if accel not in ("kvm", "tcg"):
        raise BadInput(f"--accel must be kvm or tcg, not {accel!r}")
    accel_arg(accel)  # a bad $VERS_TCG_TB_MIB, before anything starts
    if opts.net not in NET_MODES:
        raise BadInput(f"--net must be one of {', '.join(NET_MODES)}, not {opts.net!r}")
    parse_ports(opts.ports)
    for p in opts.disks:  # the user's own: a guest image's disk is known to work
        if not Path(p).is_file():
            raise BadInput(f"no such file: {p}")
        problem = disk_mod.unusable_disk(Path(p))
        if problem is not None:
            raise BadInput(f"--disk {p} cannot be used: {problem}")
    if opts.disks and not (opts.kernel and opts.initrd):
        check_disk(Path(opts.disks[0]))  # vers' initramfs boots it: an ext4 root, or qcow2
    return accel


def needs_image_build(opts: RunOptions) -> str | None:
    """The image a run of ``opts`` would build first (it is not cached yet), if any."""
    if opts.kernel and opts.initrd and opts.disks and opts.image is None:
        return None
    name = opts.image or images.DEFAULT
    if name not in images.RESERVED:
        return None  # an imported image or none at all: nothing to build (get says which)
    try:
        images.get(name, build=False)
    except BadInput:
        return name
    return None


def _machine_for(opts: RunOptions, progress: Progress = NO_PROGRESS,
                 ) -> tuple[MachineSpec, str, str, list[str]]:
    """The checked options as a machine: spec, kernel, initrd, disk files (the default guest's
    unless all three are given)."""
    accel = check_options(opts)
    if opts.kernel and opts.initrd and opts.disks and opts.image is None:
        kernel, initrd, disk_files = opts.kernel, opts.initrd, list(opts.disks)
    else:
        guest = images.get(opts.image or images.DEFAULT, build=True, progress=progress)
        kernel, initrd = opts.kernel or str(guest.kernel), opts.initrd or str(guest.initrd)
        disk_files = list(opts.disks) or [str(guest.disk)]
    for p in [kernel, initrd, *disk_files]:
        if not Path(p).is_file():
            raise BadInput(f"no such file: {p}")
    names = ["disk"] + [f"disk{i}" for i in range(1, len(disk_files))]
    spec = MachineSpec(memory=opts.memory, vcpus=opts.vcpus, accel=accel,
                       cmdline=opts.cmdline or default_cmdline(accel), disks=names,
                       net=opts.net)
    return spec, kernel, initrd, disk_files


def _check_memory_dir(d: Path, backing: str) -> None:
    """shm: the directory for the RAM file, which must exist; fuse: the backing daemon's state
    directory, made if missing and then only ours (``private_dir``)."""
    if backing == "fuse":
        try:
            private_dir(d)
        except VMError as exc:
            raise BadInput(f"--memory-dir {d}: {exc}") from exc
    elif not d.is_dir() or not os.access(d, os.W_OK | os.X_OK):
        raise BadInput(f"--memory-dir {d}: not a directory you can write to")


def host_memory() -> int:
    """Bytes of RAM plus swap on this host (0 if unknown): guest RAM beyond that can never be
    backed, and QEMU would only fail once the guest touches it."""
    total = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("MemTotal", "SwapTotal"):
                    total += int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return 0
    return total


def _boot(reg: VMRegistry, rec: VMRecord, backing: MemoryBacking, boot_timeout: float,
          ports: list[Port], progress: Progress = NO_PROGRESS) -> None:
    """Start QEMU for a fresh boot, publish its ports, wait for the guest agent and write the
    generation marker (docs/vmm.md)."""
    m = Machine(rec)
    m.start(str(backing.path))
    reg.save(rec)
    m.connect()
    try:
        rec.runtime.ports = [p.to_dict() for p in publish_all(m.qmp(), ports)]
        reg.save(rec)
    finally:
        m.close()
    try:
        with progress.waiting("booting: waiting for the guest agent"):
            agent_mod.wait_agent(rec.runtime.agent_sock, boot_timeout,
                                 alive=lambda: pid_alive(rec.runtime.pid))
        freshen(rec.id, rec.runtime.agent_sock, first=True)
    except VMError as exc:
        m.shutdown()
        raise m.launch_error(f"guest did not boot: {exc}") from exc


def _backing_class(kind: str) -> type[MemoryBacking]:
    try:
        return backing_class(kind)
    except VMError as exc:
        raise BadInput(str(exc)) from exc


def restore_commit(repo: Repo, rev: str, name: str | None = None, make_current: bool = False,
                   memory_backing: str | None = None, memory_dir: str | None = None,
                   paused: bool = False, ports: tuple[str, ...] = ()) -> VMRecord:
    """Boot a new VM from a commit through QEMU's snapshot-load path (-incoming), publishing
    ``ports``; it runs once its clock, entropy and generation marker are fresh (vers.vmm.fresh).

    With ``paused`` the guest is left stopped right after its state is loaded, exactly as
    committed (not made fresh)."""
    rec, settle = restore_commit_unsettled(repo, rev, name, make_current, memory_backing,
                                           memory_dir, paused, ports)
    settle()
    return rec


def restore_commit_unsettled(repo: Repo, rev: str, name: str | None = None,
                             make_current: bool = False, memory_backing: str | None = None,
                             memory_dir: str | None = None, paused: bool = False,
                             ports: tuple[str, ...] = ()
                             ) -> tuple[VMRecord, Callable[[], None]]:
    """``restore_commit``, returning as soon as the VM runs, with what is left to do as a
    callable: prepare the overlays of its first commit and branch (``refresh_spares``). The
    VM's lock stays held until that returns, so a command on the new VM waits for it; skipped,
    the first commit or branch makes them itself."""
    cid = repo.rev_parse(rev)
    commit = repo.get_commit(cid)
    vmconf = commit.config.get("vm")
    if not vmconf or "devstate" not in commit.images or "memory" not in commit.images:
        raise BadRevision(f"commit {cid[:12]} is not a VM commit (no vm config / devstate)")
    spec = MachineSpec.from_dict(vmconf)
    asked = parse_ports(ports)
    check_ports(spec.net, asked)
    reg = registry(repo)
    rec = reg.create(name=name, spec=spec)
    # mostly restored to be looked at and killed (bisect): a standby only when asked for
    rec.standby = os.environ.get("VERS_STANDBY") == "1"
    try:
        rec.boot = {k: _boot_file(repo, reg, commit, k) for k in ("kernel", "initrd")}
        reg.save(rec)  # names the cached boot files, so that no teardown removes them now
        backing_kind = memory_backing or default_backing()
        for dname in rec.spec.disks:
            base = _commit_disk_base(repo, cid, dname, reg.layers, backing_kind == "fuse")
            top = disk_mod.new_layer_path(reg.layers, rec.id)
            size = base.stat().st_size
            try:  # the base is raw: a sparse export, or the FUSE daemon's file of the commit
                disk_mod.create_overlay_unsafe(top, base, size, fmt="raw")
            except VMError as exc:
                error = disk_base_error(base)
                if error is None:
                    raise
                raise VMError(f"restoring {cid[:12]} failed: disk {dname} could not be read "
                              f"from the store ({error}); `vers fsck` names what is damaged"
                              ) from exc
            rec.disks[dname] = DiskChain([str(base), str(top)], 1, size)
        devstate = rec.dir / "restore.devstate"
        repo.export_image(cid, "devstate", devstate)
        backing = _backing_class(backing_kind).create(
            rec.id, rec.spec.memory, repo.open_image(cid, "memory"),
            Path(memory_dir) if memory_dir else None)
        rec.memory = backing.state()
        rec.base_commit = cid
        reg.save(rec)
        m = Machine(rec)
        m.start(str(backing.path), incoming=True)
        reg.save(rec)
        m.connect()
        try:
            finish_restore(m, devstate, paused, asked)
        except VMError as exc:
            _raise_if_lost(backing, cid, exc)
            raise
        reg.save(rec)
        devstate.unlink(missing_ok=True)
        _raise_if_lost(backing, cid, None)  # e.g. a damaged page the device-state load read
        if not paused:
            freshen(rec.id, rec.runtime.agent_sock)
        lock = ExitStack()  # the VM runs: its lock goes to the settle step
        lock.enter_context(reg.lock(rec))
    except BaseException:
        remove(reg, rec)
        raise
    if make_current:
        reg.set_current(rec.id)

    def settle() -> None:
        with lock:
            refresh_spares(reg, reg.resolve(rec.id), claim_standby=True)

    return rec, settle


def _raise_if_lost(backing: MemoryBacking, cid: str, cause: VMError | None) -> None:
    """A restore whose guest RAM cannot be read fails with the reason (QEMU itself only dies of
    the EIO, with nothing in its logs)."""
    problem = backing.lost()
    if problem is not None:
        raise VMError(f"restoring {cid[:12]} failed: {problem}") from cause


def finish_restore(m: Machine, devstate: Path, paused: bool = False,
                   ports: list[Port] | None = None, offered: bool = False) -> None:
    """Load the device state into a QEMU started with ``incoming`` and connected (``offered``:
    the file was handed over already, ``offer_devstate``), publish ``ports`` (into
    ``m.record.runtime.ports``, for the caller to save) and let it run (``paused``: leave it
    stopped); hangs up QMP either way. QEMU is shut down if any step fails. The caller then
    makes the guest fresh (vers.vmm.fresh) before reporting it running."""
    rec = m.record
    try:
        q = m.qmp()
        load_devstate(q, devstate, offered=offered)
        rec.runtime.ports = [p.to_dict() for p in publish_all(q, ports or [])]
        if not paused:
            q.cont()
    except VMError as exc:
        m.shutdown()
        raise m.launch_error(f"restoring device state failed: {exc}") from exc
    except BaseException:
        m.shutdown()
        raise
    finally:
        m.close()


def _commit_disk_base(repo: Repo, cid: str, dname: str, layers: Path, lazy: bool) -> Path:
    """The read-only base under a restored VM's disk overlay: served lazily by the FUSE backing
    daemon when the VM's RAM is on it anyway (a restore then copies no disk up front), else a
    sparse export cached per commit."""
    if lazy:
        try:
            return disk_base(repo, cid, dname)
        except VMError as exc:
            print(f"vers: disk {dname} exported instead of served lazily: {exc}", file=sys.stderr)
    return disk_mod.export_base(repo, cid, dname, layers)


def _from_boot_cache(repo: Repo, tree: str, out: Path) -> bool:
    """Write the boot file of image tree ``tree`` to ``out`` from this host's boot cache
    (``vers.bootcache``; a restore from a remote then fetches none of it), checked against
    ``tree`` first (hashed, not stored: a partial store may stay without its pages, which its
    remote has). False if the cache has no such file."""
    size = repo.store.get_tree(bytes.fromhex(tree)).size
    kept = bootcache.cached(tree, size)
    if kept is None:
        return False
    try:
        bootcache.copy_private(kept, out)
        with open(out, "rb") as f:
            same = tree_id(repo.store, f, size).hex() == tree
    except OSError:
        return False
    if not same:
        bootcache.forget(tree)
        out.unlink(missing_ok=True)
    return same


def _boot_file(repo: Repo, reg: VMRegistry, commit: Commit, kind: str) -> str:
    """The commit's own kernel/initrd image (cached by tree ID), else the recorded path."""
    tree = commit.images.get(kind)
    if tree:
        path = reg.layers / f"{kind}-{tree}"
        try:
            os.utime(path)  # used now: kept longest once no VM boots it (vers.vmm.teardown)
        except FileNotFoundError:
            tmp = reg.layers / f".{path.name}.tmp{os.getpid()}"
            try:
                if not _from_boot_cache(repo, tree, tmp):
                    repo.export_image(commit.id, kind, tmp)
                    bootcache.keep(tmp, tree)
                make_private(tmp)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        return str(path)
    p = commit.config.get("vm", {}).get(kind)
    if p and Path(p).is_file():
        return str(p)
    raise BadRevision(f"commit {commit.id[:12]} has no {kind} image and {p} is missing")
