"""``vers branch`` of a live VM: children that continue from the same instant as the parent.

    prepare   spare overlays as the parent's next top and the children's tops, child records,
              child RAM (fork_begin: shm pre-copy, FUSE empty placeholder), child QEMUs started
              with -incoming defer (not waited for) when the backing allows it; a standby child
              (vers.vmm.standby) is adopted as the first child, its QEMU started long ago
    pause     [x-ignore-shared + blockdev-add + getfd] in one round trip, flush RAM
              || the standby child connects and is handed the device-state file; stop
    fork      [freeze the parent's disk top + save device state] in one round trip
              || fork_end: every child's RAM made exact at once (a worker thread)
    resume    cont                                                  (end of the parent's pause)
    children  connect, load the device state and run, several side by side; then they are
              made fresh together (vers.vmm.fresh)
    settle    spare overlays, the parent's frozen layers streamed, the tree's standby child;
              children of a branch of several give back the page cache of their RAM that
              they never mapped

The parent's frozen disk layers are shared read-only with the children, each of which gets its
own overlay; no disk data is copied. One cleanup (``_finish``) removes every child and unused
layer of a branch that failed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vers.errors import BadInput, VMError
from vers.vmm.boot import finish_restore
from vers.vmm.devstate import (
    Beside,
    Timings,
    collector_off,
    drop_unused_nodes,
    drop_unused_tops,
    freeze_disks,
    offer_devstate,
    prepare_devstate,
    prepare_freeze,
    save_devstate,
)
from vers.vmm.fresh import freshen_all
from vers.vmm.machine import Machine, pid_alive
from vers.vmm.memory import MemoryBacking, load_backing
from vers.vmm.merge import stream_frozen_layers
from vers.vmm.net import Port, check_ports, child_ports, parse_ports
from vers.vmm.qmp import QMPClient
from vers.vmm.recovery import PauseGuard, recover
from vers.vmm.standby import adopt_standby, create_child, refresh_spares
from vers.vmm.state import VMRecord, VMRegistry, registry
from vers.vmm.teardown import remove

if TYPE_CHECKING:
    from vers.repo import Repo

#: children of one branch that connect and load their device state at the same time
CHILDREN_AT_ONCE = 8


def child_names(name: str | None, count: int) -> list[str | None]:
    """``name`` for one child, ``name-0`` ... for several (no names without ``name``)."""
    if count < 1:
        raise BadInput("--count must be at least 1")
    return [name] if count == 1 else [f"{name}-{i}" if name else None for i in range(count)]


@dataclass
class _Branch:
    """One branch in progress: what each phase hands to the next, and to the cleanup."""

    parent: VMRecord
    backing: MemoryBacking
    devstate: Path
    #: child QEMUs may start before the parent's pause (the backing allows it)
    early: bool
    new_tops: dict[str, Path] = field(default_factory=dict)
    standby: VMRecord | None = None
    children: list[VMRecord] = field(default_factory=list)
    child_mem: list[MemoryBacking] = field(default_factory=list)
    machines: list[Machine] = field(default_factory=list)
    #: what each child publishes (the same for all; each picks its own free host ports)
    ports: list[Port] = field(default_factory=list)
    guard: PauseGuard | None = None
    #: the first child (a standby) holds the device-state file already (``offer_devstate``)
    offered: bool = False
    ok: bool = False


def branch_vm(repo: Repo, key: str | None, count: int = 1, name: str | None = None,
              ports: tuple[str, ...] = ()) -> tuple[list[VMRecord], Timings]:
    """Fork a live VM into ``count`` children that continue from the same instant. Each child
    publishes ``ports`` and, on host ports of its own, the guest ports its parent publishes; it
    runs once it is fresh (clock, entropy, generation: vers.vmm.fresh), all after the parent
    resumed."""
    children, tm, settle = branch_vm_unsettled(repo, key, count, name, ports)
    settle()
    return children, tm


def branch_vm_unsettled(repo: Repo, key: str | None, count: int = 1, name: str | None = None,
                        ports: tuple[str, ...] = ()
                        ) -> tuple[list[VMRecord], Timings, Callable[[], None]]:
    """``branch_vm``, returning as soon as the children run, with what is left to do as a
    callable (``settle``): the children's spare overlays, streaming the parent's frozen layers
    and the tree's standby child. The caller must call it, on any thread; the parent's lock
    stays held until it returns (each child's is taken for its part), so another command on the
    parent waits for it. A process killed before it leaves children and parent that work, only
    without what it would have prepared."""
    names = child_names(name, count)
    asked = parse_ports(ports)
    reg = registry(repo)
    parent = reg.resolve(key)
    check_ports(parent.spec.net, asked)
    tm = Timings()
    with ExitStack() as held:
        held.enter_context(reg.lock(parent))
        parent = reg.resolve(parent.id)  # re-read under the lock
        t_begin = time.perf_counter()
        with Machine.attach(parent, qmp_timeout=60.0) as m:
            q = m.qmp()  # one connection for the recovery check and the branch
            tm.mark("connect_parent", t_begin)
            parent = recover(reg, parent, q)
            backing = load_backing(parent.memory)
            job = _Branch(parent, backing, parent.dir / f"branch-{os.getpid()}.devstate",
                          early=type(backing).opens_before_fork_end,
                          ports=child_ports([Port.from_dict(p) for p in parent.runtime.ports],
                                            asked, count))
            try:
                _prepare(reg, job, names, tm)
                t_cont = _pause_and_fork(reg, job, q, tm)
                m.close()  # the parent is done with; the children are not yet
                _start_children(reg, job, tm, t_begin, t_cont)
                _references(reg, job)
                job.ok = True
            finally:
                _finish(reg, job)
        if not pid_alive(parent.runtime.pid, parent.id):
            raise VMError(f"parent VM {parent.id} died during the branch")
        lock = held.pop_all()  # the children run: the lock goes to the settle step

    def settle() -> None:
        with lock:
            _after(reg, job)

    return job.children, tm, settle


def _prepare(reg: VMRegistry, job: _Branch, names: list[str | None], tm: Timings) -> None:
    """Everything that does not need the parent stopped."""
    t0 = time.perf_counter()
    job.new_tops = prepare_freeze(reg, job.parent)
    job.standby = adopt_standby(reg, job.parent, names[0])
    tm.extra["standby_child"] = job.standby is not None
    if job.standby is not None:  # started long ago, already waiting for the device state
        job.children.append(job.standby)
        job.child_mem.append(load_backing(job.standby.memory))
        names = names[1:]
    job.children += [create_child(reg, job.parent, n) for n in names]
    job.machines = [Machine(c) for c in job.children]
    t0 = tm.mark("prepare_disks", t0)
    for c in job.children[len(job.child_mem):]:
        mem = job.backing.fork_begin(c.id)
        job.child_mem.append(mem)
        c.memory = mem.state()  # so a failed branch removes it
        reg.save(c)
    t0 = tm.mark("precopy_memory", t0)
    if job.early:  # QEMU's start-up (~40 ms) overlaps the parent's pause; connect later
        _spawn_children(reg, job)
        t0 = tm.mark("spawn_children", t0)
    job.backing.warm_up()
    tm.mark("warm_up", t0)


def _spawn_children(reg: VMRegistry, job: _Branch) -> None:
    for c, mem, m in zip(job.children, job.child_mem, job.machines):
        if c is not job.standby:
            m.start(str(mem.path), incoming=True)
            reg.save(c)


def _pause_and_fork(reg: VMRegistry, job: _Branch, q: QMPClient, tm: Timings) -> float:
    """Pause the parent only to freeze its disk top, make the children's RAM exact and save the
    device state; returns when it resumed. The guard that resumes the parent should we die
    with it paused is disarmed by the cleanup: waiting for it to exit here would delay the
    children."""
    t0 = time.perf_counter()
    was_running = q.command("query-status")["status"] == "running"
    nodes = prepare_devstate(q, job.devstate, job.new_tops)
    t0 = tm.mark("prepare_devstate", t0)
    job.guard = PauseGuard(job.parent) if was_running else None
    t0 = tm.mark("pause_guard", t0)
    # The standby child, long started, gets the device-state file now, while the parent
    # flushes RAM: after the pause it only has to load it.
    offer = Beside(lambda: _offer_devstate(job), tm, "offer_standby") if job.standby else None
    job.backing.pre_stop()
    if offer is not None:
        offer.result()
    t_stop = tm.mark("pre_stop", t0)
    with collector_off():
        try:
            t0 = _fork(reg, job, q, nodes, tm, t_stop)
        except BaseException:
            drop_unused_nodes(q, job.parent, job.new_tops, nodes)
            raise
        finally:
            if was_running:
                q.cont()
            t_cont = time.perf_counter()
    tm.phases["cont"] = round((t_cont - t0) * 1000, 2)
    tm.pause = round((t_cont - t_stop) * 1000, 2)
    return t_cont


def _offer_devstate(job: _Branch) -> None:
    m = job.machines[0]  # the standby is the first child
    m.connect()
    offer_devstate(m.qmp(), job.devstate)
    job.offered = True


def _fork(reg: VMRegistry, job: _Branch, q: QMPClient, nodes: dict[str, tuple[str, str]],
          tm: Timings, t0: float) -> float:
    q.command("stop")
    t0 = tm.mark("stop", t0)
    memory = Beside(lambda: job.backing.fork_end(job.child_mem), tm, "fix_memory")
    try:
        freeze_disks(q, job.parent, job.new_tops, nodes, save_devstate=job.early)
        t0 = tm.mark("freeze_disks+devstate" if job.early else "freeze_disks", t0)
    finally:
        reg.save(job.parent)  # whatever QEMU switched to is its disk now
        tm.extra["fixed_pages"] = memory.result()
    if not job.early:  # their RAM files exist now: let QEMU start up meanwhile
        t0 = time.perf_counter()
        _spawn_children(reg, job)
        t0 = tm.mark("spawn_children", t0)
        save_devstate(q)
        tm.mark("devstate", t0)
    return time.perf_counter()


def _start_children(reg: VMRegistry, job: _Branch, tm: Timings, t_begin: float,
                    t_cont: float) -> None:
    def connect(m: Machine) -> None:
        if not m.connected:  # the standby connected during the parent's flush
            m.connect()

    def load(m: Machine) -> None:
        finish_restore(m, job.devstate, ports=job.ports,
                       offered=job.offered and m is job.machines[0])
        reg.save(m.record)

    # Several children connect and load side by side: each mostly waits, on its QEMU starting
    # up or on the device-state load's page faults.
    with ThreadPoolExecutor(min(len(job.machines), CHILDREN_AT_ONCE)) as pool:
        t0 = time.perf_counter()
        list(pool.map(connect, job.machines))
        t0 = tm.mark("connect_children", t0)
        list(pool.map(load, job.machines))
    t_run = tm.mark("load_children", t0)
    freshen_all([(c.id, c.runtime.agent_sock) for c in job.children])
    t_ready = time.perf_counter()
    tm.extra["fresh_ms"] = round((t_ready - t_run) * 1000, 2)
    tm.extra["child_ready_after_resume_ms"] = round((t_ready - t_cont) * 1000, 2)
    tm.extra["child_ready_ms"] = round((t_ready - t_begin) * 1000, 2)


def _references(reg: VMRegistry, job: _Branch) -> None:
    """Children running: each gets the parent's reference of its base commit (so its first
    commit is incremental too), before anything else may commit it."""
    for c, mem in zip(job.children, job.child_mem):
        job.backing.fork_reference(mem)
        c.memory = mem.state()
        reg.save(c)


def _after(reg: VMRegistry, job: _Branch) -> None:
    """Off the critical path, children running: spare overlays, and the tree's standby, which
    the parent (the VM of the tree that branched last) takes over. Each child's part runs under
    its own lock on its record as it is now: the child may have been committed or killed since
    it started."""
    for c in job.children:
        try:
            with reg.lock(c):
                now = reg.get(c.id)
                if now is not None:
                    refresh_spares(reg, now)
        except FileNotFoundError:  # killed meanwhile: its directory is gone
            continue
    stream_frozen_layers(reg, job.parent)
    refresh_spares(reg, job.parent, claim_standby=True)
    if len(job.children) > 1:
        _drop_cache(reg, job)


def _drop_cache(reg: VMRegistry, job: _Branch) -> None:
    """Last, the children having run their first commands: what the kernel read around their
    first touches of guest RAM and they never mapped goes back to the host
    (``MemoryBacking.drop_cache``), most of an idle child's page cache. Only for a branch of
    several children, where memory per child is the point: a child's next commands read again
    what their faults would have found there (a single child's first exec took ~50 ms longer),
    and a single branch is the one whose latency counts."""
    def drop(c: VMRecord) -> None:
        try:
            with reg.lock(c):
                now = reg.get(c.id)
                if now is not None and pid_alive(now.runtime.pid, now.id):
                    load_backing(now.memory).drop_cache()  # 30-90 ms of kernel work each
        except FileNotFoundError:  # killed meanwhile
            pass

    with ThreadPoolExecutor(min(len(job.children), CHILDREN_AT_ONCE)) as pool:
        list(pool.map(drop, job.children))


def _finish(reg: VMRegistry, job: _Branch) -> None:
    """The one cleanup: tell the pause guard the parent runs, hang up the children's QMP and
    drop the device-state file; after a failure also remove every child and the prepared tops
    QEMU never switched to."""
    if job.guard is not None:
        job.guard.disarm()
    for m in job.machines:
        m.close()
    job.devstate.unlink(missing_ok=True)
    if not job.ok:
        for c in job.children:
            remove(reg, c)
        drop_unused_tops(job.parent, job.new_tops)
