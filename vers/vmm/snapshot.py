"""Commit and branch a live VM: the two verbs that must keep the guest's pause short.

Commit: stop; freeze each disk's top layer (new overlay); capture RAM (changed pages only, into a
file that stays stable after resume); save device state through QEMU migration with x-ignore-shared
(guest RAM is share=on, so only ~50 KB of device state goes into the stream); resume. Everything
slow — hashing and storing — happens after the guest runs again. The commit becomes visible only
when repo.snapshot moves the ref, after its objects are stored, so a VM killed mid-commit leaves no
partial commit.

Branch: the child's RAM is pre-copied while the parent still runs, then, with the parent stopped,
only pages that differ are fixed up; device state is saved once; the parent's disk tops are frozen
and shared read-only with the child, which gets its own overlay. The parent resumes before any child
QEMU starts; each child starts with ``-incoming`` from the same device state.
"""

from __future__ import annotations

import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vers.errors import BadInput, VMError
from vers.vmm import disk as disk_mod
from vers.vmm.backing import load_backing
from vers.vmm.lifecycle import (
    adopt_standby,
    connect_machine,
    create_child,
    finish_restore,
    qmp_for,
    refresh_spares,
    registry,
    spawn_process,
)
from vers.vmm.lifecycle import vm_state as lifecycle_state
from vers.vmm.machine import MachineSpec, pid_alive
from vers.vmm.qmp import QMPClient
from vers.vmm.state import VMRecord, VMRegistry


@dataclass
class Timings:
    """Milliseconds of each phase; ``pause`` is what the guest noticed."""

    phases: dict[str, float] = field(default_factory=dict)
    pause: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def mark(self, name: str, t0: float) -> float:
        now = time.perf_counter()
        self.phases[name] = round((now - t0) * 1000, 2)
        return now


def save_devstate(qmp: QMPClient, out: Path) -> None:
    """Device state only (RAM is shared and skipped): the caller has stopped the guest and set
    x-ignore-shared; ``fd:devstate`` must have been handed over with ``send_fd`` beforehand."""
    qmp.command("migrate", uri="fd:devstate")
    qmp.wait_migration(max_delay=0.0005)  # a few ms of device state: poll closely


def prepare_devstate(qmp: QMPClient, out: Path,
                     new_tops: dict[str, Path] | None = None) -> dict[str, tuple[str, str]]:
    """Everything for a device-state save that can happen before the guest is stopped, in one
    QMP round trip. Given ``new_tops``, also opens each prepared top layer as a QEMU
    block node now (``blockdev-add``), so that freezing a disk inside the pause is only a graph
    change (``blockdev-snapshot``: ~1 ms, against ~2 ms for ``blockdev-snapshot-sync``, which
    opens the file). Returns {disk: (node of its current top, node of the new top)}."""
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        qmp.pass_fd(fd)
    finally:
        os.close(fd)
    new_tops = new_tops or {}
    added = {name: f"vers-{secrets.token_hex(6)}" for name in new_tops}
    results = qmp.batch(
        ("migrate-set-capabilities",
         {"capabilities": [{"capability": "x-ignore-shared", "state": True}]}),
        ("getfd", {"fdname": "devstate"}),
        ("query-block", {}),
        *(("blockdev-add", {"driver": "qcow2", "node-name": node, "backing": None,
                            "file": {"driver": "file", "filename": str(new_tops[name])}})
          for name, node in added.items()),
        return_errors=True)
    errors = [r for r in results if isinstance(r, Exception)]
    if errors:
        _drop_nodes(qmp, [n for n, r in zip(added.values(), results[3:]) if r == {}])
        raise errors[0]
    tops = {b["device"]: b["inserted"]["node-name"] for b in results[2] if b.get("inserted")}
    return {name: (tops[name], node) for name, node in added.items()}


def drop_unused_nodes(qmp: QMPClient, rec: VMRecord, new_tops: dict[str, Path],
                      nodes: dict[str, tuple[str, str]]) -> None:
    """After a failed commit or branch: remove the block nodes ``prepare_devstate`` added for the
    disks whose freeze did not happen (best effort)."""
    _drop_nodes(qmp, [new for name, (_, new) in nodes.items()
                      if str(new_tops[name]) not in rec.disks[name]["chain"]])


def _drop_nodes(qmp: QMPClient, nodes: list[str]) -> None:
    for node in nodes:
        try:
            qmp.command("blockdev-del", **{"node-name": node})
        except VMError:
            pass


def prepare_freeze(reg: VMRegistry, rec: VMRecord) -> dict[str, Path]:
    """Create each disk's next top layer before the pause (without opening the current top)."""
    new_tops = {}
    for name, d in rec.disks.items():
        d["size"] = int(d.get("size") or disk_mod.image_size(Path(d["chain"][0])))
        new_tops[name] = disk_mod.take_overlay(reg.layers, d, rec.id, "top")
    return new_tops


def freeze_disks(qmp: QMPClient, rec: VMRecord, new_tops: dict[str, Path],
                 save_devstate: bool = False,
                 nodes: dict[str, tuple[str, str]] | None = None) -> dict[str, list[str]]:
    """Switch QEMU to the prepared tops (already open as block ``nodes`` when given, see
    ``prepare_devstate``); returns each disk's now-frozen chain. With ``save_devstate`` the
    device-state migration is sent in the same round trip and waited for. ``rec`` records every
    switch QEMU made, even when another command failed."""
    names = list(rec.disks)
    calls: list[tuple[str, dict[str, Any]]] = [
        ("blockdev-snapshot", {"node": nodes[name][0], "overlay": nodes[name][1]}) if nodes else
        ("blockdev-snapshot-sync", {"device": name, "snapshot-file": str(new_tops[name]),
                                    "format": "qcow2", "mode": "existing"}) for name in names]
    if save_devstate:
        calls.append(("migrate", {"uri": "fd:devstate"}))
    results = qmp.batch(*calls, return_errors=True)
    frozen = {}
    for name, res in zip(names, results):
        if not isinstance(res, Exception):
            d = rec.disks[name]
            frozen[name] = list(d["chain"])
            d["chain"] = frozen[name] + [str(new_tops[name])]
    errors = [r for r in results if isinstance(r, Exception)]
    if errors:
        raise errors[0]
    if save_devstate:
        qmp.wait_migration(max_delay=0.0005)  # a few ms of device state: poll closely
    return frozen


class _Beside:
    """Run one call in a worker thread while this thread talks QMP (both mostly wait on I/O:
    QEMU on one side, the memory backing's daemon or the kernel on the other)."""

    def __init__(self, fn: Any, tm: Timings, phase: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._future = self._pool.submit(self._timed, fn, tm, phase)

    @staticmethod
    def _timed(fn: Any, tm: Timings, phase: str) -> Any:
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            tm.mark(phase, t0)

    def result(self) -> Any:
        try:
            return self._future.result()
        finally:
            self._pool.shutdown()


def use_live_capture(backing: Any) -> bool:
    """Commit/branch by live migration: experimental, only with $VERS_LIVE_COPY=1.

    Measured here (QEMU 7.2, TCG, microvm): pauses of ~10 ms at any RAM size, but 10-20% of the
    live-migrated guests crashed on arrival (the target reset and booted afresh), so the default
    is the stop-and-compare / copy path, which never did. See docs/vmm.md.
    """
    return bool(getattr(type(backing), "live_capture", False)) and \
        os.environ.get("VERS_LIVE_COPY") == "1"


def _after_failure(reg: VMRegistry, rec: VMRecord, new_tops: dict[str, Path]) -> None:
    """A failed commit/branch: if QEMU already switched to the new tops, the record must say so;
    if not, the prepared files are garbage."""
    in_chain = {p for d in rec.disks.values() for p in d["chain"]}
    if any(str(t) in in_chain for t in new_tops.values()):
        reg.save(rec)
    else:
        _drop(new_tops.values())


def _drop(paths: Any) -> None:
    for p in paths:
        Path(p).unlink(missing_ok=True)


def commit_vm(repo: Any, key: str | None, message: str = "", stay_paused: bool = False,
              ) -> tuple[str, Timings]:
    """Commit the VM's memory, disks and device state; returns (commit ID, timings)."""
    reg = registry(repo)
    rec = reg.resolve(key)
    tm = Timings()
    with reg.lock(rec):
        rec = reg.resolve(rec.id)  # re-read under the lock
        backing = load_backing(rec.memory)
        backing.warm_up()
        backing.pre_stop()  # the backlog now; the last few pages again right before the stop
        devstate = rec.dir / "commit.devstate"
        new_tops = prepare_freeze(reg, rec)
        frozen: dict[str, list[str]] = {}
        try:
            with qmp_for(rec, timeout=60.0) as q:
                was_running = q.command("query-status")["status"] == "running"
                resume = was_running and not stay_paused
                if use_live_capture(backing) and was_running:
                    from vers.vmm.livecopy import commit_capture

                    frozen, mem_image, mem_dirty = commit_capture(
                        reg, rec, backing, new_tops, devstate, q, resume, tm)  # type: ignore[arg-type]
                else:
                    frozen, mem_image, mem_dirty = _capture_stopped(
                        reg, rec, backing, new_tops, devstate, q, resume, tm)
                rec.memory = backing.state()
                reg.save(rec)
        except BaseException:
            _after_failure(reg, rec, new_tops)
            raise
        cid = _store_commit(repo, reg, rec, backing, frozen, mem_image, mem_dirty, devstate,
                            message, tm)
        devstate.unlink(missing_ok=True)
        refresh_spares(reg, reg.resolve(rec.id))
    return cid, tm


def _capture_stopped(reg: VMRegistry, rec: VMRecord, backing: Any, new_tops: dict[str, Path],
                     devstate: Path, q: QMPClient, resume: bool, tm: Timings,
                     ) -> tuple[dict[str, list[str]], Path, list[int] | None]:
    """Stop; then, at the same time, the backing captures RAM while QEMU freezes the disks and
    saves device state; resume."""
    nodes = prepare_devstate(q, devstate, new_tops)
    t0 = time.perf_counter()
    backing.pre_stop()
    t0 = t_stop = tm.mark("pre_stop", t0)
    captured = False
    try:
        q.command("stop")
        t0 = tm.mark("stop", t0)
        memory = _Beside(backing.capture, tm, "capture_memory")
        try:
            frozen = freeze_disks(q, rec, new_tops, save_devstate=True, nodes=nodes)
            t0 = tm.mark("freeze_disks+devstate", t0)
        finally:
            reg.save(rec)  # whatever QEMU switched to is its disk now, whatever happens next
            mem_image, mem_dirty = memory.result()
            captured = True
            rec.memory = backing.state()
        t0 = time.perf_counter()
    except BaseException:
        if captured:  # RAM was captured but there will be no commit: give its pages back
            backing.commit_done(False)
            rec.memory = backing.state()
        drop_unused_nodes(q, rec, new_tops, nodes)
        raise
    finally:
        if resume:
            q.cont()
            t0 = tm.mark("cont", t0)
    tm.pause = round((time.perf_counter() - t_stop) * 1000, 2)
    return frozen, mem_image, mem_dirty


def _store_commit(repo: Any, reg: VMRegistry, rec: VMRecord, backing: Any,
                  frozen: dict[str, list[str]], mem_image: Path, mem_dirty: list[int] | None,
                  devstate: Path, message: str, tm: Timings) -> str:
    t0 = time.perf_counter()
    images: dict[str, Any] = {"memory": str(mem_image), "devstate": str(devstate),
                              "kernel": rec.boot["kernel"], "initrd": rec.boot["initrd"]}
    dirty: dict[str, Any] = {}
    if mem_dirty is not None:
        dirty["memory"] = mem_dirty
    captures = []
    for name, chain in frozen.items():
        committed = int(rec.disks[name]["committed"])
        full = rec.base_commit is None or committed == 0
        size = disk_mod.image_size(Path(chain[-1]))
        out = rec.dir / f"commit-{name}.raw"
        pages = disk_mod.capture_disk(chain, len(chain) - committed, size, out, full)
        captures.append(out)
        images[name] = str(out)
        if pages is not None:
            dirty[name] = pages
    t0 = tm.mark("capture_disks", t0)
    spec = dict(rec.spec)
    config = {"vm": {**spec, "kernel": rec.boot["kernel"], "initrd": rec.boot["initrd"]},
              "vmm": {"devstate": "qemu-migration x-ignore-shared", "vm_id": rec.id}}
    ok = False
    try:
        cid = repo.commit_state(images, base=rec.base_commit, message=message, config=config,
                                dirty=dirty or None, source=f"vm {rec.id}")
        ok = True
    finally:
        backing.commit_done(ok)
        for out in captures:
            out.unlink(missing_ok=True)
        rec = _reload(reg, rec)
        rec.memory = backing.state()
        if ok:
            rec.base_commit = cid
            for name, chain in frozen.items():
                rec.disks[name]["committed"] = len(chain)
        reg.save(rec)
    tm.mark("store", t0)
    n_dirty = len(mem_dirty) if mem_dirty is not None else None
    tm.extra = {"memory_dirty_pages": n_dirty,
                "disk_dirty_pages": {k: len(v) for k, v in dirty.items() if k != "memory"}}
    return cid


def _reload(reg: VMRegistry, rec: VMRecord) -> VMRecord:
    fresh = reg.find(rec.id)
    if fresh is None:
        raise VMError(f"VM {rec.id} disappeared during the commit")
    fresh.disks, fresh.memory = rec.disks, rec.memory
    return fresh


def branch_vm(repo: Any, key: str | None, count: int = 1, name: str | None = None,
              ) -> tuple[list[VMRecord], Timings]:
    """Fork a live VM into ``count`` children that continue from the same instant.

    Everything that does not need the parent stopped happens first: child records, disk overlays
    (made without opening the parent's live top), RAM pre-copy, and the child QEMU processes
    themselves, started with ``-incoming defer`` so they wait for the device state. The parent is
    then paused only to freeze its disk top, make the children's RAM exact, and save device state.
    """
    if count < 1:
        raise BadInput("--count must be at least 1")
    reg = registry(repo)
    parent = reg.resolve(key)
    names = [name] if count == 1 else [f"{name}-{i}" if name else None for i in range(count)]
    tm = Timings()
    children: list[VMRecord] = []
    child_qmp: list[QMPClient] = []
    with reg.lock(parent):
        parent = reg.resolve(parent.id)
        backing = load_backing(parent.memory)
        if use_live_capture(backing) and lifecycle_state(parent) == "running":
            return _branch_live(reg, parent, backing, names, tm), tm
        t0 = t_begin = time.perf_counter()
        spec = MachineSpec.from_dict(parent.spec)
        devstate = parent.dir / f"branch-{os.getpid()}.devstate"
        new_tops: dict[str, Path] = {}
        frozen: dict[str, list[str]] = {}
        try:
            new_tops = prepare_freeze(reg, parent)
            # A standby child (see lifecycle.prepare_standby) is already started: it becomes the
            # first child.
            standby = adopt_standby(reg, parent, names[0])
            tm.extra["standby_child"] = standby is not None
            for n in names[1:] if standby else names:
                children.append(create_child(reg, parent, n))
            t0 = tm.mark("prepare_disks", t0)
            child_mem = []
            for c in children:
                child_mem.append(backing.fork_begin(c.id))
                c.memory = child_mem[-1].state()  # so a failed branch removes it
                reg.save(c)
            t0 = tm.mark("precopy_memory", t0)
            early = type(backing).opens_before_fork_end
            if early:  # QEMU's start-up (~40 ms) overlaps the parent's pause; connect later
                for c, mem in zip(children, child_mem):
                    spawn_process(reg, c, spec, mem, incoming=True)
                t0 = tm.mark("spawn_children", t0)
            if standby is not None:  # started long ago, already waiting for the device state
                children.insert(0, standby)
                child_mem.insert(0, load_backing(standby.memory))
            backing.warm_up()
            t0 = tm.mark("warm_up", t0)
            with qmp_for(parent, timeout=60.0) as q:
                was_running = q.command("query-status")["status"] == "running"
                nodes = prepare_devstate(q, devstate, new_tops)
                try:
                    t0 = time.perf_counter()
                    backing.pre_stop()
                    t_stop = tm.mark("pre_stop", t0)
                    q.command("stop")
                    t0 = tm.mark("stop", t_stop)
                    try:
                        memory = _Beside(lambda: [backing.fork_end(m) for m in child_mem], tm,
                                         "fix_memory")
                        try:
                            frozen = freeze_disks(q, parent, new_tops, save_devstate=early,
                                                  nodes=nodes)
                            t0 = tm.mark("freeze_disks+devstate" if early else "freeze_disks", t0)
                        finally:
                            reg.save(parent)
                            tm.extra["fixed_pages"] = memory.result()
                        if not early:  # their RAM files exist now: let QEMU start up meanwhile
                            t0 = time.perf_counter()
                            for c, mem in zip(children, child_mem):
                                spawn_process(reg, c, spec, mem, incoming=True)
                            t0 = tm.mark("spawn_children", t0)
                            save_devstate(q, devstate)
                            t0 = tm.mark("devstate", t0)
                        t0 = time.perf_counter()
                    finally:
                        if was_running:
                            q.cont()
                except BaseException:
                    drop_unused_nodes(q, parent, new_tops, nodes)
                    raise
                t_cont = time.perf_counter()
                tm.phases["cont"] = round((t_cont - t0) * 1000, 2)
                tm.pause = round((t_cont - t_stop) * 1000, 2)
            for c in children:
                child_qmp.append(connect_machine(c, incoming=False))  # load sets capabilities
            for c, cq in zip(children, child_qmp):
                finish_restore(cq, c, devstate)
            t_ready = time.perf_counter()
            tm.extra["child_ready_after_resume_ms"] = round((t_ready - t_cont) * 1000, 2)
            tm.extra["child_ready_ms"] = round((t_ready - t_begin) * 1000, 2)
            for c, mem in zip(children, child_mem):  # off the critical path: children run
                backing.fork_reference(mem)
                c.memory = mem.state()
                refresh_spares(reg, c)
            refresh_spares(reg, parent)
        except BaseException:
            from vers.vmm.lifecycle import _remove

            for c in children:
                _remove(reg, c)
            if not frozen:
                _drop(new_tops.values())
            raise
        finally:
            for cq in child_qmp:
                cq.close()
            devstate.unlink(missing_ok=True)
    if not pid_alive(parent.pid, parent.id):
        raise VMError(f"parent VM {parent.id} died during the branch")
    return children, tm


def _branch_live(reg: VMRegistry, parent: VMRecord, backing: Any, names: list[str | None],
                 tm: Timings) -> list[VMRecord]:
    from vers.vmm.livecopy import branch_children

    t_begin = time.perf_counter()
    new_tops = prepare_freeze(reg, parent)
    try:
        with qmp_for(parent, timeout=60.0) as q:
            children = branch_children(reg, parent, backing, names, q, new_tops, True, tm)
    except BaseException:
        _after_failure(reg, parent, new_tops)
        raise
    reg.save(parent)
    tm.extra["child_ready_ms"] = round((time.perf_counter() - t_begin) * 1000, 2)
    for c in children:  # off the critical path: give each child our reference, and spares
        c = reg.resolve(c.id)
        mem = load_backing(c.memory)
        backing.fork_reference(mem)
        c.memory = mem.state()
        refresh_spares(reg, c)
    refresh_spares(reg, reg.resolve(parent.id))
    if not pid_alive(parent.pid, parent.id):
        raise VMError(f"parent VM {parent.id} died during the branch")
    return children


def branch_commit(repo: Any, rev: str, count: int = 1, name: str | None = None,
                  ) -> list[VMRecord]:
    """``vers branch COMMIT``: ``count`` independent VMs restored from one commit."""
    from vers.vmm.lifecycle import restore_commit

    names = [name] if count == 1 else [f"{name}-{i}" if name else None for i in range(count)]
    return [restore_commit(repo, rev, name=n) for n in names]
