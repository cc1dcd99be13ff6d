"""Commit and branch through QEMU's own live migration: short pauses without dirty tracking.

EXPERIMENTAL, off unless $VERS_LIVE_COPY=1: on this machine (QEMU 7.2, TCG, microvm, share=on
RAM) 10-20% of live-migrated guests crashed on arrival — the target logged "No irq handler for
vector" and booted afresh — under load, in branch children and in restores of live commits alike.
The stop-and-copy paths in snapshot.py never did. The pauses below are real, the reliability is not.

The shm backing cannot know which pages the guest wrote (no soft-dirty bits on this kernel), so
finding them means reading all of RAM — inside the pause, if done by us. QEMU's pre-copy migration
tracks dirty pages itself, under TCG as under KVM. So the parent is live-migrated into a new QEMU
(a branch child, or for a commit a short-lived *shadow*) whose RAM is its own share=on file:
RAM streams while the guest runs, and the guest stops only for the last dirty pages and device
state. ``pause-before-switchover`` holds the migration at that moment so the parent's disk top can
be frozen (``blockdev-snapshot`` onto a node added beforehand) at the same instant.

Commit: the shadow's RAM file is the captured image; the changed pages are found by comparing it
with the reference *after* the guest resumed, and on success the capture simply becomes the next
reference (a rename, no copy). The shadow's device state is saved with x-ignore-shared and the
shadow is killed. Branch: the first child is the migration target; further children copy its RAM
(it stays paused meanwhile) and load the same device state.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Any

from vers.errors import VMError
from vers.vmm import disk as disk_mod
from vers.vmm.backing import ShmMemoryBacking, _copy_file
from vers.vmm.lifecycle import _remove, _sock_path, connect_machine, finish_restore, spawn_process
from vers.vmm.machine import MachineSpec
from vers.vmm.qmp import QMPClient
from vers.vmm.state import VMRecord, VMRegistry

DOWNTIME_MS = 10  # QEMU's switchover target; raised if the guest dirties faster than we copy
CONVERGE_STEPS = ((5.0, 100), (15.0, 1000), (60.0, 30000))  # (after s, downtime-limit ms)


def _caps(q: QMPClient, **caps: bool) -> None:
    q.command("migrate-set-capabilities",
              capabilities=[{"capability": k.replace("_", "-"), "state": v}
                            for k, v in caps.items()])


def new_target(reg: VMRegistry, parent: VMRecord, spec: MachineSpec, name: str | None,
               ) -> tuple[VMRecord, ShmMemoryBacking]:
    """A VM record with an empty RAM file and overlays on the parent's live tops (-u)."""
    rec = reg.create(name=name, parent_vm=parent.id)
    rec.boot = dict(parent.boot)
    rec.base_commit = parent.base_commit
    for dname, d in parent.disks.items():
        top = disk_mod.take_overlay(reg.layers, d, rec.id, "child")
        rec.disks[dname] = {"chain": list(d["chain"]) + [str(top)],
                            "committed": d["committed"], "size": d["size"]}
    where = Path(parent.memory["path"]).parent
    mem = ShmMemoryBacking.create(rec.id, spec.memory, None, where)
    rec.memory = mem.state()
    reg.save(rec)
    spawn_process(reg, rec, spec, mem, incoming=True)
    return rec, mem


def migrate_live(q: QMPClient, parent: VMRecord, target: VMRecord, tq: QMPClient,
                 new_tops: dict[str, Path], tm: Any, resume: bool) -> dict[str, list[str]]:
    """Live-migrate the parent into ``target`` (spawned with -incoming defer, QMP ``tq``),
    freezing the parent's disks at the switchover. Returns the frozen chains."""
    sock = _sock_path(target.dir, "migrate")
    Path(sock).unlink(missing_ok=True)
    _caps(tq, x_ignore_shared=False)
    tq.command("migrate-incoming", uri=f"unix:{sock}")
    nodes = {b["device"]: b["inserted"]["node-name"] for b in q.command("query-block")
             if b.get("inserted")}
    new_nodes = {}
    for name in parent.disks:
        node = f"vers-{secrets.token_hex(4)}"
        q.command("blockdev-add", **{"driver": "qcow2", "node-name": node,
                                     "file": {"driver": "file",
                                              "filename": str(new_tops[name])},
                                     "backing": None})
        new_nodes[name] = node
    _caps(q, x_ignore_shared=False, pause_before_switchover=True)
    q.command("migrate-set-parameters", **{"max-bandwidth": 1 << 40,
                                           "downtime-limit": DOWNTIME_MS})
    t0 = time.perf_counter()
    q.command("migrate", uri=f"unix:{sock}")
    try:
        return _switchover(q, parent, new_tops, new_nodes, nodes, tm, resume, t0, sock)
    except BaseException:
        # never leave the parent stopped in pre-switchover or mid-migration
        for cmd in ("migrate_cancel", "cont") if resume else ("migrate_cancel",):
            try:
                q.command(cmd)
            except VMError:
                pass
        raise


def _switchover(q: QMPClient, parent: VMRecord, new_tops: dict[str, Path],
                new_nodes: dict[str, str], nodes: dict[str, str], tm: Any, resume: bool,
                t0: float, sock: str) -> dict[str, list[str]]:
    steps = list(CONVERGE_STEPS)
    while True:
        info = q.command("query-migrate")
        status = info.get("status")
        if status == "pre-switchover":
            break
        if status in ("failed", "cancelled", "completed"):
            raise VMError(f"live migration {status}: {info.get('error-desc', '')}")
        waited = time.perf_counter() - t0
        if steps and waited > steps[0][0]:
            q.command("migrate-set-parameters", **{"downtime-limit": steps.pop(0)[1]})
        elif not steps and waited > 120:
            q.command("migrate_cancel")
            raise VMError("live migration did not converge in 120 s")
        time.sleep(0.001)
    t_pre = tm.mark("live_precopy", t0)
    frozen = {}
    for name, d in parent.disks.items():
        q.command("blockdev-snapshot", node=nodes[name], overlay=new_nodes[name])
        frozen[name] = list(d["chain"])
        d["chain"] = frozen[name] + [str(new_tops[name])]
    q.command("migrate-continue", state="pre-switchover")
    info = q.wait_migration(timeout=60)
    t_done = time.perf_counter()
    if resume:
        q.cont()
    t_cont = time.perf_counter()
    tm.phases["switchover"] = round((t_done - t_pre) * 1000, 2)
    tm.phases["cont"] = round((t_cont - t_done) * 1000, 2)
    tm.extra["qemu_downtime_ms"] = info.get("downtime")
    # QEMU's downtime runs from the guest's stop to the end of migration; add our cont.
    tm.pause = round(float(info.get("downtime") or 0) + (t_cont - t_done) * 1000, 2)
    _caps(q, pause_before_switchover=False)
    Path(sock).unlink(missing_ok=True)
    return frozen


def wait_incoming(tq: QMPClient, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while tq.command("query-status")["status"] == "inmigrate":
        if time.monotonic() > deadline:
            raise VMError("the migration target did not finish loading")
        time.sleep(0.001)


def save_target_devstate(tq: QMPClient, out: Path) -> None:
    """Device state of a paused target whose RAM is in its own share=on file.

    QEMU refuses to migrate the source again after a completed migration, so the source's own
    device state at the switchover is not available; the target's is the same state."""
    from vers.vmm.snapshot import prepare_devstate, save_devstate

    prepare_devstate(tq, out)
    save_devstate(tq, out)


def commit_capture(reg: VMRegistry, rec: VMRecord, backing: ShmMemoryBacking,
                   new_tops: dict[str, Path], devstate: Path, q: QMPClient, resume: bool,
                   tm: Any) -> tuple[dict[str, list[str]], Path, list[int] | None]:
    """Migrate ``rec`` into a shadow; return frozen chains, the RAM capture and changed pages."""
    spec = MachineSpec.from_dict(rec.spec)
    t0 = time.perf_counter()
    shadow, smem = new_target(reg, rec, spec, None)
    try:
        with connect_machine(shadow, incoming=True) as sq:
            t0 = tm.mark("spawn_shadow", t0)
            frozen = migrate_live(q, rec, shadow, sq, new_tops, tm, resume)
            reg.save(rec)
            t0 = time.perf_counter()
            wait_incoming(sq)
            save_target_devstate(sq, devstate)
            t0 = tm.mark("shadow_devstate", t0)
        capture = Path(f"{smem.path}.capture")
        os.replace(smem.path, capture)  # keep the RAM image; the shadow goes away
    finally:
        smem_state = dict(shadow.memory)
        shadow.memory = {}
        _remove(reg, shadow)
        Path(smem_state["path"]).unlink(missing_ok=True)
        Path(smem_state["ref"]).unlink(missing_ok=True)
    dirty = backing.adopt_capture(capture)
    tm.mark("find_changed_pages", t0)
    return frozen, capture, dirty


def branch_children(reg: VMRegistry, parent: VMRecord, backing: ShmMemoryBacking,
                    names: list[str | None], q: QMPClient, new_tops: dict[str, Path],
                    resume: bool, tm: Any) -> list[VMRecord]:
    """Live-migrate the parent into the first child; the others copy it. Children run after."""
    spec = MachineSpec.from_dict(parent.spec)
    t0 = time.perf_counter()
    first, fmem = new_target(reg, parent, spec, names[0])
    children = [first]
    try:
        with connect_machine(first, incoming=True) as fq:
            tm.mark("spawn_child", t0)
            migrate_live(q, parent, first, fq, new_tops, tm, resume)
            reg.save(parent)
            t_resumed = time.perf_counter()
            wait_incoming(fq)
            if len(names) > 1:
                devstate = first.dir / "branch.devstate"
                save_target_devstate(fq, devstate)
                for n in names[1:]:
                    c, _ = new_target_copy(reg, parent, spec, n, fmem)
                    children.append(c)
                    with connect_machine(c, incoming=True) as cq:
                        finish_restore(cq, c, devstate)
                devstate.unlink(missing_ok=True)
            fq.cont()
            tm.extra["child_ready_after_resume_ms"] = round(
                (time.perf_counter() - t_resumed) * 1000, 2)
    except BaseException:
        for c in children:
            _remove(reg, c)
        raise
    return children


def new_target_copy(reg: VMRegistry, parent: VMRecord, spec: MachineSpec, name: str | None,
                    src: ShmMemoryBacking) -> tuple[VMRecord, ShmMemoryBacking]:
    """A further branch child: its RAM copied from the (paused) first child's."""
    rec, mem = _record_only(reg, parent, name, spec)
    _copy_file(src.path, mem.path, spec.memory)
    spawn_process(reg, rec, spec, mem, incoming=True)
    return rec, mem


def _record_only(reg: VMRegistry, parent: VMRecord, name: str | None, spec: MachineSpec,
                 ) -> tuple[VMRecord, ShmMemoryBacking]:
    rec = reg.create(name=name, parent_vm=parent.id)
    rec.boot = dict(parent.boot)
    rec.base_commit = parent.base_commit
    for dname, d in parent.disks.items():
        # the parent's frozen top is the second-to-last layer now
        frozen_top = Path(d["chain"][-2])
        top = disk_mod.new_layer_path(reg.layers, rec.id)
        disk_mod.create_overlay_unsafe(top, frozen_top, int(d["size"]))
        rec.disks[dname] = {"chain": list(d["chain"][:-1]) + [str(top)],
                            "committed": d["committed"], "size": d["size"]}
    mem = ShmMemoryBacking.create(rec.id, spec.memory, None, Path(parent.memory["path"]).parent)
    rec.memory = mem.state()
    reg.save(rec)
    return rec, mem
