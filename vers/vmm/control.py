"""Looking at and steering running VMs: list, status, pause, resume, exec, console, ports."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vers.errors import BadInput, VMError
from vers.vmm import agent as agent_mod
from vers.vmm.machine import Machine, find_qemu_processes, pid_alive
from vers.vmm.memory import load_backing
from vers.vmm.net import Port, check_ports, find_published, parse_port, publish_all, unpublish
from vers.vmm.standby import standby_fits
from vers.vmm.state import VMRecord, registry

if TYPE_CHECKING:
    from vers.repo import Repo


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
    #: published ports (``Runtime.ports``: proto, host_ip, host_port, guest_port)
    ports: list[dict[str, Any]]
    #: why the VM cannot be committed or branched any more, and what to do (e.g. its RAM's
    #: backing mount was detached); its state is then "lost-ram"
    problem: str | None = None


def vm_state(rec: VMRecord) -> str:
    with Machine(rec, qmp_timeout=2.0) as m:
        return m.status()


def vm_problem(rec: VMRecord, state: str) -> str | None:
    """What is wrong with a VM (its guest RAM's backing is gone, a page of it could not be read
    from the store, ...): also why a VM is dead, when its backing knows."""
    if state not in ("running", "paused", "dead") or not rec.memory:
        return None
    try:
        return load_backing(rec.memory).lost()
    except VMError as exc:
        return str(exc)


def _shown(state: str, problem: str | None) -> str:
    return "lost-ram" if problem and state != "dead" else state


def list_vms(repo: Repo) -> list[VMStatus]:
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
            out.append(VMStatus(r.id, None, "orphan", r.runtime.pid, 0, None, False, r.vm_dir,
                                []))
            continue
        state = vm_state(r)
        problem = vm_problem(r, state)
        out.append(VMStatus(r.id, r.name, _shown(state, problem), r.runtime.pid,
                            r.spec.memory, r.base_commit, r.id == cur, r.vm_dir,
                            [dict(p) for p in r.runtime.ports], problem))
    known = {r.id for r in recs}
    for vid, pid in sorted(find_qemu_processes(reg.root).items()):
        if vid not in known:
            out.append(VMStatus(vid, None, "orphan", pid, 0, None, False, None, []))
    return out


def status(repo: Repo, key: str | None) -> dict[str, Any]:
    reg = registry(repo)
    rec = reg.resolve(key)
    sb = standby_fits(reg, rec)
    rt = rec.runtime
    state = vm_state(rec)
    problem = vm_problem(rec, state)
    return {"id": rec.id, "name": rec.name, "state": _shown(state, problem),
            "problem": problem, "pid": rt.pid,
            "base_commit": rec.base_commit, "parent_vm": rec.parent_vm,
            "spec": rec.spec.to_dict(), "memory_backing": rec.memory,
            "disks": {n: d.to_dict() for n, d in rec.disks.items()},
            "serial_log": rt.serial_log, "qmp_sock": rt.qmp_sock, "agent_sock": rt.agent_sock,
            "ports": [dict(p) for p in rt.ports], "vm_dir": rec.vm_dir,
            "current": reg.current() == rec.id, "standby": rec.standby,
            "standby_child": sb.id if sb is not None else None}


def pause_vm(repo: Repo, key: str | None) -> VMRecord:
    rec = registry(repo).resolve(key)
    with Machine.attach(rec) as m:
        m.pause()
    return rec


def resume_vm(repo: Repo, key: str | None) -> VMRecord:
    rec = registry(repo).resolve(key)
    with Machine.attach(rec) as m:
        m.resume()
    return rec


def exec_in_vm(repo: Repo, key: str | None, argv: list[str],
               timeout: float = 300.0) -> agent_mod.ExecResult:
    rec = registry(repo).resolve(key)
    if not argv:
        raise BadInput("nothing to run: give a command after --")
    if not pid_alive(rec.runtime.pid, rec.id):
        raise VMError(f"VM {rec.id} is not running")
    return agent_mod.guest_exec(rec.runtime.agent_sock, agent_mod.command_script(argv), timeout)


def follow_console(repo: Repo, key: str | None, follow: bool) -> Iterator[bytes]:
    rec = registry(repo).resolve(key)
    path = Path(rec.runtime.serial_log or rec.dir / "serial.log")
    if not path.exists():
        raise VMError(f"VM {rec.id} has no serial log yet")
    with open(path, "rb") as f:
        while True:
            chunk = f.read(65536)
            if chunk:
                yield chunk
                continue
            if not follow or not pid_alive(rec.runtime.pid, rec.id):
                return
            time.sleep(0.2)



def list_ports(repo: Repo, key: str | None) -> tuple[VMRecord, list[Port]]:
    rec = registry(repo).resolve(key)
    return rec, [Port.from_dict(p) for p in rec.runtime.ports]


def add_port(repo: Repo, key: str | None, spec: str) -> Port:
    """Publish one more port of a running VM (``hostfwd_add``); returns it with its host port."""
    want = parse_port(spec)
    reg = registry(repo)
    rec = reg.resolve(key)
    check_ports(rec.spec.net, [want])
    with reg.lock(rec), Machine.attach(reg.resolve(rec.id)) as m:
        port, = publish_all(m.qmp(), [want])
        m.record.runtime.ports.append(port.to_dict())
        reg.save(m.record)
    return port


def remove_port(repo: Repo, key: str | None, spec: str) -> list[Port]:
    """Stop publishing the ports ``spec`` names (``hostfwd_remove``); returns them."""
    reg = registry(repo)
    rec = reg.resolve(key)
    with reg.lock(rec), Machine.attach(reg.resolve(rec.id)) as m:
        rt = m.record.runtime
        gone = find_published([Port.from_dict(p) for p in rt.ports], spec)
        for p in gone:
            unpublish(m.qmp(), p)
            rt.ports.remove(p.to_dict())
            reg.save(m.record)
    return gone
