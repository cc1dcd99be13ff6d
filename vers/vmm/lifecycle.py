"""Starting, restoring, listing and stopping VMs: the verbs that do not write commits.

Every function takes a Repo and returns plain values; vers/cli/vm.py only parses arguments.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vers.errors import BadInput, BadRevision, VMError
from vers.images.guest import build_guest
from vers.vmm import agent as agent_mod
from vers.vmm import disk as disk_mod
from vers.vmm.backing import MemoryBacking, backing_class, load_backing
from vers.vmm.machine import (
    MachineSpec,
    build_args,
    connect_qmp,
    default_cmdline,
    detect_accel,
    find_qemu_processes,
    kill_pid,
    launch_error,
    pid_alive,
    spawn,
)
from vers.vmm.qmp import QMPClient
from vers.vmm.state import UnknownVM, VMRecord, VMRegistry

DEFAULT_MEMORY = 256 * 1024 * 1024
BOOT_TIMEOUT = float(os.environ.get("VERS_BOOT_TIMEOUT", "120"))


def default_backing() -> str:
    """Guest RAM backing when none is named: $VERS_MEMORY_BACKING, else the lazily-read,
    write-tracking FUSE file where FUSE works (restore reads no RAM up front, commit and branch
    copy no RAM: see docs/vmm.md for the measurements), else the /dev/shm one."""
    return os.environ.get("VERS_MEMORY_BACKING") or ("fuse" if fuse_usable() else "shm")


def fuse_usable() -> bool:
    if not os.path.exists("/dev/fuse") or not shutil.which("fusermount3"):
        return False
    try:
        import pyfuse3  # noqa: F401
    except ImportError:
        return False
    return True


def _commit_disk_base(repo: Any, cid: str, dname: str, layers: Path, lazy: bool) -> Path:
    """The read-only base under a restored VM's disk overlay: served lazily by the FUSE backing
    daemon when the VM's RAM is on it anyway (a restore then copies no disk up front), else a
    sparse export cached per commit."""
    if lazy:
        try:
            from vers.fuse.vmm_backing import disk_base

            return disk_base(repo, cid, dname)
        except (ImportError, VMError) as exc:
            print(f"vers: disk {dname} exported instead of served lazily: {exc}", file=sys.stderr)
    return disk_mod.export_base(repo, cid, dname, layers)


def registry(repo: Any) -> VMRegistry:
    reg = VMRegistry(repo.vers_dir)
    reg.ensure()
    return reg


def _sock_path(vm_dir: Path, name: str) -> str:
    """Unix socket paths are limited to 107 bytes; deep repositories fall back to /tmp."""
    p = vm_dir / f"{name}.sock"
    if len(str(p)) < 100:
        return str(p)
    d = Path(tempfile.gettempdir()) / f"vers-{os.getuid()}"
    d.mkdir(mode=0o700, exist_ok=True)
    return str(d / f"{vm_dir.name}-{name}.sock")


def qmp_for(rec: VMRecord, timeout: float = 10.0) -> QMPClient:
    if not pid_alive(rec.pid, rec.id):
        raise VMError(f"VM {rec.id} is not running (QEMU process gone); `vers kill {rec.id}`")
    return QMPClient(rec.qmp_sock, timeout=timeout).connect(wait=2.0)


def spawn_machine(reg: VMRegistry, rec: VMRecord, spec: MachineSpec, backing: MemoryBacking,
                  incoming: bool) -> QMPClient:
    """Spawn QEMU for ``rec`` and return a connected QMP client (the caller closes it)."""
    spawn_process(reg, rec, spec, backing, incoming)
    return connect_machine(rec, incoming=False)  # a restore's load_devstate sets capabilities


def spawn_process(reg: VMRegistry, rec: VMRecord, spec: MachineSpec, backing: MemoryBacking,
                  incoming: bool) -> None:
    """Only start the QEMU process (a few ms); ``connect_machine`` waits for it to be ready."""
    d = rec.dir
    rec.qmp_sock, rec.agent_sock = _sock_path(d, "qmp"), _sock_path(d, "agent")
    rec.serial_log = str(d / "serial.log")
    for s in (rec.qmp_sock, rec.agent_sock):
        Path(s).unlink(missing_ok=True)
    rec.spec, rec.memory = spec.to_dict(), backing.state()
    args = build_args(rec.id, spec, mem_path=str(backing.path), kernel=rec.boot["kernel"],
                      initrd=rec.boot["initrd"],
                      disks={n: rec.disks[n]["chain"][-1] for n in spec.disks},
                      qmp_sock=rec.qmp_sock, agent_sock=rec.agent_sock,
                      serial_log=rec.serial_log, incoming=incoming)
    rec.pid = spawn(args, d)
    reg.save(rec)


def connect_machine(rec: VMRecord, incoming: bool) -> QMPClient:
    """Connect to a spawned QEMU; ``incoming``: also turn on x-ignore-shared now (``load_devstate``
    does that itself, in the same round trip as the load)."""
    qmp = connect_qmp(rec.qmp_sock, rec.pid or 0, rec.id, rec.dir)
    if incoming:
        try:
            qmp.command("migrate-set-capabilities",
                        capabilities=[{"capability": "x-ignore-shared", "state": True}])
        except VMError:
            qmp.close()
            kill_pid(rec.pid)
            raise
    return qmp


def finish_restore(qmp: QMPClient, rec: VMRecord, devstate: Path, paused: bool = False) -> None:
    """Load device state into a QEMU spawned with ``incoming``, then let it run."""
    try:
        load_devstate(qmp, devstate)
        if not paused:
            qmp.cont()
    except VMError as exc:
        kill_pid(rec.pid)
        raise launch_error(f"restoring device state failed: {exc}", rec.dir) from exc


def start_machine(reg: VMRegistry, rec: VMRecord, spec: MachineSpec, backing: MemoryBacking,
                  devstate: Path | None = None, boot_timeout: float = BOOT_TIMEOUT,
                  paused: bool = False) -> None:
    """Spawn QEMU for ``rec``; fresh boots wait for the agent, restores load ``devstate``."""
    qmp = spawn_machine(reg, rec, spec, backing, incoming=devstate is not None)
    try:
        if devstate is not None:
            finish_restore(qmp, rec, devstate, paused)
    finally:
        qmp.close()
    if devstate is None:
        try:
            agent_mod.wait_agent(rec.agent_sock, boot_timeout, alive=lambda: pid_alive(rec.pid))
        except VMError as exc:
            kill_pid(rec.pid)
            raise launch_error(f"guest did not boot: {exc}", rec.dir) from exc


def load_devstate(qmp: QMPClient, devstate: Path, timeout: float = 60.0) -> None:
    """QEMU's snapshot-load path: -incoming defer, x-ignore-shared, migrate-incoming from a file."""
    fd = os.open(devstate, os.O_RDONLY)
    try:
        qmp.pass_fd(fd)
    finally:
        os.close(fd)  # QEMU holds its own copy now
    qmp.batch(("migrate-set-capabilities",
               {"capabilities": [{"capability": "x-ignore-shared", "state": True}]}),
              ("getfd", {"fdname": "devstate"}),
              ("migrate-incoming", {"uri": "fd:devstate"}))
    deadline = time.monotonic() + timeout
    while True:
        status = qmp.command("query-status")["status"]
        if status != "inmigrate":
            break
        if time.monotonic() > deadline:
            raise VMError(f"loading device state did not finish within {timeout}s")
        time.sleep(0.0005)
    mig = qmp.command("query-migrate")
    if mig.get("status") == "failed":
        raise VMError(f"loading device state failed: {mig.get('error-desc', '')}")


@dataclass
class RunOptions:
    memory: int = DEFAULT_MEMORY
    vcpus: int = 1
    name: str | None = None
    accel: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    disks: tuple[str, ...] = ()
    cmdline: str | None = None
    memory_backing: str = field(default_factory=default_backing)
    memory_dir: str | None = None
    boot_timeout: float = BOOT_TIMEOUT
    make_current: bool = True
    #: keep a standby child QEMU ready for the next branch (see prepare_standby); on unless
    #: $VERS_STANDBY=0 (it only ever applies to the FUSE memory backing)
    standby: bool = field(default_factory=lambda: os.environ.get("VERS_STANDBY", "1") != "0")


def run_vm(repo: Any, opts: RunOptions) -> VMRecord:
    """Boot a root VM (default guest unless kernel/initrd/disks are given)."""
    if opts.memory < 16 * 1024 * 1024 or opts.memory % (1024 * 1024):
        raise BadInput("--memory must be a whole number of MiB, at least 16M")
    if opts.vcpus < 1:
        raise BadInput("--vcpus must be at least 1")
    accel = opts.accel or detect_accel()
    if accel not in ("kvm", "tcg"):
        raise BadInput(f"--accel must be kvm or tcg, not {accel!r}")
    guest = None
    if not (opts.kernel and opts.initrd and opts.disks):
        guest = build_guest()
    kernel = opts.kernel or str(guest.kernel)  # type: ignore[union-attr]
    initrd = opts.initrd or str(guest.initrd)  # type: ignore[union-attr]
    disk_files = list(opts.disks) or [str(guest.disk)]  # type: ignore[union-attr]
    for p in [kernel, initrd, *disk_files]:
        if not Path(p).is_file():
            raise BadInput(f"no such file: {p}")
    names = ["disk"] + [f"disk{i}" for i in range(1, len(disk_files))]
    spec = MachineSpec(memory=opts.memory, vcpus=opts.vcpus, accel=accel,
                       cmdline=opts.cmdline or default_cmdline(accel), disks=names)
    reg = registry(repo)
    rec = reg.create(name=opts.name)
    rec.standby = opts.standby
    try:
        rec.boot = {"kernel": str(Path(kernel).absolute()), "initrd": str(Path(initrd).absolute())}
        for name, path in zip(names, disk_files):
            base = Path(path).absolute()
            top = disk_mod.new_layer_path(reg.layers, rec.id)
            disk_mod.create_overlay(top, base)
            rec.disks[name] = {"chain": [str(base), str(top)], "committed": 0,
                               "size": disk_mod.image_size(base)}
        backing = _backing_class(opts.memory_backing).create(
            rec.id, opts.memory, None, Path(opts.memory_dir) if opts.memory_dir else None)
        rec.memory = backing.state()
        reg.save(rec)
        start_machine(reg, rec, spec, backing, boot_timeout=opts.boot_timeout)
        refresh_spares(reg, rec)
    except BaseException:
        _remove(reg, rec)
        raise
    if opts.make_current:
        reg.set_current(rec.id)
    return rec


def _backing_class(kind: str) -> type[MemoryBacking]:
    try:
        return backing_class(kind)
    except VMError as exc:
        raise BadInput(str(exc)) from exc


def restore_commit(repo: Any, rev: str, name: str | None = None, make_current: bool = False,
                   memory_backing: str | None = None, memory_dir: str | None = None,
                   paused: bool = False) -> VMRecord:
    """Boot a new VM from a commit through QEMU's snapshot-load path (-incoming).

    With ``paused`` the guest is left stopped right after its state is loaded."""
    cid = repo.rev_parse(rev)
    commit = repo.get_commit(cid)
    vmconf = commit.config.get("vm")
    if not vmconf or "devstate" not in commit.images or "memory" not in commit.images:
        raise BadRevision(f"commit {cid[:12]} is not a VM commit (no vm config / devstate)")
    spec = MachineSpec.from_dict(vmconf)
    reg = registry(repo)
    rec = reg.create(name=name)
    # mostly restored to be looked at and killed (bisect): a standby only when asked for
    rec.standby = os.environ.get("VERS_STANDBY") == "1"
    try:
        rec.boot = {k: _boot_file(repo, reg, commit, k) for k in ("kernel", "initrd")}
        backing_kind = memory_backing or default_backing()
        for dname in spec.disks:
            base = _commit_disk_base(repo, cid, dname, reg.layers, backing_kind == "fuse")
            top = disk_mod.new_layer_path(reg.layers, rec.id)
            disk_mod.create_overlay(top, base)
            rec.disks[dname] = {"chain": [str(base), str(top)], "committed": 1,
                                "size": base.stat().st_size}
        devstate = rec.dir / "restore.devstate"
        repo.export_image(cid, "devstate", devstate)
        backing = _backing_class(backing_kind).create(
            rec.id, spec.memory, repo.open_image(cid, "memory"),
            Path(memory_dir) if memory_dir else None)
        rec.memory = backing.state()
        rec.base_commit = cid
        reg.save(rec)
        start_machine(reg, rec, spec, backing, devstate=devstate, paused=paused)
        devstate.unlink(missing_ok=True)
        refresh_spares(reg, rec)
    except BaseException:
        _remove(reg, rec)
        raise
    if make_current:
        reg.set_current(rec.id)
    return rec


def _boot_file(repo: Any, reg: VMRegistry, commit: Any, kind: str) -> str:
    """The commit's own kernel/initrd image (cached by tree ID), else the recorded path."""
    tree = commit.images.get(kind)
    if tree:
        path = reg.layers / f"{kind}-{tree}"
        if not path.exists():
            tmp = reg.layers / f".{path.name}.tmp{os.getpid()}"
            repo.export_image(commit.id, kind, tmp)
            os.replace(tmp, path)
        return str(path)
    p = commit.config.get("vm", {}).get(kind)
    if p and Path(p).is_file():
        return str(p)
    raise BadRevision(f"commit {commit.id[:12]} has no {kind} image and {p} is missing")


def checkout(repo: Any, rev: str) -> VMRecord:
    """Restore ``rev``, make the new VM current and move HEAD there, like git checkout."""
    rec = restore_commit(repo, rev, make_current=True)
    if repo.refs.resolve("refs/heads/" + rev) is not None:
        repo.set_head_branch(rev, message=f"checkout: {rev}")
    else:
        repo.set_head_detached(rec.base_commit, message=f"checkout: {rev}")
    return rec


# -- inspecting -----------------------------------------------------------------------------

@dataclass
class VMStatus:
    id: str
    name: str | None
    state: str  # running | paused | dead | orphan | ...
    pid: int | None
    memory: int
    base_commit: str | None
    current: bool
    vm_dir: str | None


def vm_state(rec: VMRecord) -> str:
    if not pid_alive(rec.pid, rec.id):
        return "dead"
    try:
        with QMPClient(rec.qmp_sock, timeout=2.0).connect() as q:
            st = q.command("query-status")["status"]
    except VMError:
        return "unreachable"
    return {"postmigrate": "paused", "prelaunch": "paused"}.get(st, st)


def list_vms(repo: Any) -> list[VMStatus]:
    """Known VMs plus orphans: QEMU processes of this repository whose record is gone."""
    reg = registry(repo)
    cur = reg.current()
    out = []
    recs = reg.all()
    owners = {r.standby_child for r in recs}
    for r in recs:
        if r.role == "standby" and r.id in owners:  # part of its parent (status: standby_child)
            continue
        if r.role == "standby":  # its parent is gone or moved on (a vers killed mid-way)
            out.append(VMStatus(r.id, None, "orphan", r.pid, 0, None, False, r.vm_dir))
            continue
        out.append(VMStatus(r.id, r.name, vm_state(r), r.pid, int(r.spec.get("memory", 0)),
                            r.base_commit, r.id == cur, r.vm_dir))
    known = {r.id for r in recs}
    for vid, pid in sorted(find_qemu_processes(reg.root).items()):
        if vid not in known:
            out.append(VMStatus(vid, None, "orphan", pid, 0, None, False, None))
    return out


def status(repo: Any, key: str | None) -> dict[str, Any]:
    reg = registry(repo)
    rec = reg.resolve(key)
    info = {"id": rec.id, "name": rec.name, "state": vm_state(rec), "pid": rec.pid,
            "base_commit": rec.base_commit, "parent_vm": rec.parent_vm, "spec": rec.spec,
            "memory_backing": rec.memory, "disks": rec.disks, "serial_log": rec.serial_log,
            "qmp_sock": rec.qmp_sock, "agent_sock": rec.agent_sock, "vm_dir": rec.vm_dir,
            "current": reg.current() == rec.id, "standby": rec.standby,
            "standby_child": rec.standby_child if _standby_fits(reg, rec) else None}
    return info


# -- control --------------------------------------------------------------------------------

def pause_vm(repo: Any, key: str | None) -> VMRecord:
    rec = registry(repo).resolve(key)
    with qmp_for(rec) as q:
        q.command("stop")
    return rec


def resume_vm(repo: Any, key: str | None) -> VMRecord:
    rec = registry(repo).resolve(key)
    with qmp_for(rec) as q:
        q.cont()
    return rec


def exec_in_vm(repo: Any, key: str | None, argv: list[str],
               timeout: float = 300.0) -> agent_mod.ExecResult:
    rec = registry(repo).resolve(key)
    if not argv:
        raise BadInput("nothing to run: give a command after --")
    if not pid_alive(rec.pid, rec.id):
        raise VMError(f"VM {rec.id} is not running")
    return agent_mod.guest_exec(rec.agent_sock, agent_mod.command_script(argv), timeout)


def follow_console(repo: Any, key: str | None, follow: bool) -> Iterator[bytes]:
    rec = registry(repo).resolve(key)
    path = Path(rec.serial_log or rec.dir / "serial.log")
    if not path.exists():
        raise VMError(f"VM {rec.id} has no serial log yet")
    with open(path, "rb") as f:
        while True:
            chunk = f.read(65536)
            if chunk:
                yield chunk
                continue
            if not follow or not pid_alive(rec.pid, rec.id):
                return
            time.sleep(0.2)


def kill_vms(repo: Any, keys: list[str]) -> list[str]:
    """Stop each VM (QMP quit, then SIGTERM/SIGKILL) and remove its state; orphans too."""
    reg = registry(repo)
    orphans = find_qemu_processes(reg.root)
    targets: list[tuple[VMRecord | None, str]] = []
    for key in keys:
        rec = reg.find(key) or _stray_standby(reg, key)
        if rec is not None:
            targets.append((rec, rec.id))
            continue
        hits = [v for v in orphans if v == key or (len(key) >= 2 and v.startswith(key))]
        if len(hits) != 1:
            raise UnknownVM(f"no VM {key!r} in this repository (see `vers ps`)")
        targets.append((None, hits[0]))
    done = []
    for rec, vid in targets:
        if rec is None:
            kill_pid(orphans[vid])
            for suffix in (".mem", ".ref"):
                Path(f"/dev/shm/vers-{vid}{suffix}").unlink(missing_ok=True)
            _release_orphan_fuse_memory(vid)
            shutil.rmtree(reg.root / vid, ignore_errors=True)
        else:
            with reg.lock(rec, timeout=30):
                _stop(rec)
                _remove(reg, rec)
        done.append(vid)
    return done


def _stray_standby(reg: VMRegistry, vid: str) -> VMRecord | None:
    """A standby child no VM claims any more (what `vers ps` lists as an orphan with a record)."""
    rec = reg.get(vid)
    if rec is None or rec.role != "standby":
        return None
    owner = reg.get(rec.parent_vm) if rec.parent_vm else None
    return rec if owner is None or owner.standby_child != rec.id else None


def _stop(rec: VMRecord) -> None:
    if pid_alive(rec.pid, rec.id):
        try:
            with QMPClient(rec.qmp_sock, timeout=2.0).connect() as q:
                q.command("quit")
        except VMError:
            pass
        kill_pid(rec.pid, timeout=3.0)


def _remove(reg: VMRegistry, rec: VMRecord) -> None:
    """Stop QEMU if running, delete the record, RAM files, sockets and unreferenced layers."""
    standby = _standby_of(reg, rec)
    if standby is not None:
        rec.standby_child = None
        _remove(reg, standby)
    _stop(rec)
    if rec.memory:
        try:
            load_backing(rec.memory).destroy()
        except VMError:
            pass
    for s in (rec.qmp_sock, rec.agent_sock):
        if s:
            Path(s).unlink(missing_ok=True)
    if reg.current() == rec.id:
        reg.set_current(None)
    shutil.rmtree(rec.vm_dir, ignore_errors=True)
    in_use: set[str] = set()
    records = reg.all()
    for r in records:
        in_use |= disk_mod.layers_in_use(r.disks)
    disk_mod.gc_layers(reg.layers, in_use, {r.id for r in records})
    # a disk base served lazily by the FUSE backing daemon (vers.fuse.vmm_backing.disk_base)
    if any("/mnt/disk-" in p for p in disk_mod.layers_in_use(rec.disks)):
        try:
            from vers.fuse.vmm_backing import release_disk_bases

            release_disk_bases(reg.root.parent, in_use)
        except ImportError:
            pass


def _release_orphan_fuse_memory(vid: str) -> None:
    """An orphan's record is gone, so its backing is unknown: drop the FUSE backing daemon's file
    of that VM by its conventional name, if the daemon runs at all."""
    try:
        from vers.fuse.backing import BackingDaemon
    except ImportError:
        return
    daemon = BackingDaemon()
    if daemon.alive():
        try:
            daemon.request("remove", name=f"{vid}.memory")
        except Exception:  # noqa: BLE001, S110 - best effort: it may never have had one
            pass


def refresh_spares(reg: VMRegistry, rec: VMRecord) -> None:
    """After a VM runs: prepare the overlays its next commit/branch will need, off their pause,
    and its standby child if it keeps one."""
    prepare_standby(reg, rec)
    for d in rec.disks.values():
        disk_mod.make_spares(reg.layers, d, rec.id)
    reg.save(rec)


def create_child(reg: VMRegistry, parent: VMRecord, name: str | None = None,
                 role: str = "") -> VMRecord:
    """A new, not yet started child record of ``parent``: its boot files, base commit and standby
    setting, and for each disk a new overlay on the parent's current top (the spare made for it
    when it still fits). Removed again if that fails."""
    c = reg.create(name=name, parent_vm=parent.id)
    c.role, c.standby = role, parent.standby
    c.boot, c.base_commit = dict(parent.boot), parent.base_commit
    try:
        for dname, d in parent.disks.items():
            top = disk_mod.take_overlay(reg.layers, d, c.id, "child")
            c.disks[dname] = {"chain": list(d["chain"]) + [str(top)],
                              "committed": d["committed"], "size": d["size"]}
        reg.save(c)
    except BaseException:
        _remove(reg, c)
        raise
    return c


def _standby_of(reg: VMRegistry, rec: VMRecord) -> VMRecord | None:
    """The standby record ``rec`` names, if it exists."""
    sb = reg.get(rec.standby_child) if rec.standby_child else None
    return sb if sb is not None and sb.role == "standby" else None


def _standby_fits(reg: VMRegistry, rec: VMRecord) -> VMRecord | None:
    """``rec``'s standby child if it can still become its child now: its QEMU is alive and its
    disks are overlays on exactly ``rec``'s current disk chains (a commit or branch since moved
    them, and then it must be made again)."""
    sb = _standby_of(reg, rec)
    if sb is None or not pid_alive(sb.pid, sb.id):
        return None
    if set(sb.disks) != set(rec.disks) or any(
            sb.disks[n]["chain"][:-1] != d["chain"] for n, d in rec.disks.items()):
        return None
    return sb


def prepare_standby(reg: VMRegistry, rec: VMRecord) -> None:
    """Keep a standby child ready for ``rec``'s next branch, if it asked for one (``--standby``)
    and its memory backing can hand out a child file before the branch point (FUSE: an empty
    placeholder costs nothing). The child QEMU starts now with ``-incoming``, so a branch only
    pauses the parent, fills the placeholder and loads the device state: QEMU's ~40 ms start-up
    leaves the branch's critical path. Costs an idle QEMU process per VM."""
    if not rec.standby or rec.role == "standby" or not pid_alive(rec.pid, rec.id):
        return
    backing = load_backing(rec.memory)
    if not (type(backing).opens_before_fork_end and type(backing).cheap_fork_begin):
        return  # e.g. shm: its fork_begin pre-copies all of RAM, which would go stale
    if _standby_fits(reg, rec) is not None:
        return
    old = _standby_of(reg, rec)
    rec.standby_child = None
    if old is not None:
        _remove(reg, old)
    sb = create_child(reg, rec, role="standby")
    rec.standby_child = sb.id  # before RAM and QEMU, so a vers killed now leaves them owned
    reg.save(rec)
    try:
        mem = backing.fork_begin(sb.id)
        sb.memory = mem.state()
        reg.save(sb)
        spawn_process(reg, sb, MachineSpec.from_dict(rec.spec), mem, incoming=True)
    except BaseException:
        rec.standby_child = None
        _remove(reg, sb)
        reg.save(rec)
        raise


def adopt_standby(reg: VMRegistry, rec: VMRecord, name: str | None) -> VMRecord | None:
    """Turn ``rec``'s standby child into a visible child VM named ``name`` (the caller holds
    ``rec``'s lock and branches next); None if there is none that still fits."""
    sb = _standby_fits(reg, rec)
    if sb is None:
        return None
    reg.check_new_name(name)
    rec.standby_child = None
    reg.save(rec)
    sb.role, sb.name, sb.base_commit, sb.boot = "", name, rec.base_commit, dict(rec.boot)
    reg.save(sb)
    return sb
