"""Child records, and standby children: a branch's child QEMU started before the branch.

A standby child is a hidden VM record (``role: standby``) whose QEMU already runs with
``-incoming`` on a placeholder RAM file and an overlay of its parent's disk tops. The next
``vers branch`` of the parent adopts it as its first child, so the branch waits for no QEMU
start-up at all (~40 ms here). Only backings whose ``fork_begin`` copies nothing can keep one
(the FUSE backing: an empty placeholder).

A standby is an idle QEMU process (~51 MB), so a VM tree (a VM started by run or restore and
every VM branched from it, through all generations) keeps one, not one per VM: the VM that
branched last holds it (``holds_standby``), since in the common case, a golden VM branched
again and again, that is the one that branches next. A VM of the tree that branches without
holding it pays for one QEMU start-up, and then takes the standby over: the previous holder's is
removed and one is made for it.
"""

from __future__ import annotations

import dataclasses

from vers.errors import Busy
from vers.vmm.machine import Machine, pid_alive
from vers.vmm.memory import load_backing
from vers.vmm.state import VMRecord, VMRegistry
from vers.vmm.teardown import remove


def refresh_spares(reg: VMRegistry, rec: VMRecord, claim_standby: bool = False) -> None:
    """After a VM runs: prepare the overlays its next commit/branch will need, off their pause,
    and its tree's standby child if it holds it (``claim_standby``: it takes it over, as a VM
    that was just started or has just branched)."""
    prepare_standby(reg, rec, claim_standby)
    for d in rec.disks.values():
        d.make_spares(reg.layers, rec.id)
    reg.save(rec)


def create_child(reg: VMRegistry, parent: VMRecord, name: str | None = None,
                 role: str = "") -> VMRecord:
    """A new, not yet started child record of ``parent``: its machine, boot files, base commit
    and standby setting, and for each disk a new overlay on the parent's current top (the spare
    made for it when it still fits). Removed again if that fails."""
    c = reg.create(name=name, parent_vm=parent.id, spec=dataclasses.replace(parent.spec))
    c.role, c.standby, c.tree = role, parent.standby, parent.tree_id
    c.boot, c.base_commit = dict(parent.boot), parent.base_commit
    try:
        for dname, d in parent.disks.items():
            c.disks[dname] = d.child(d.take_overlay(reg.layers, c.id, "child"))
        reg.save(c)
    except BaseException:
        remove(reg, c)
        raise
    return c


def standby_fits(reg: VMRegistry, rec: VMRecord) -> VMRecord | None:
    """``rec``'s standby child if it can still become its child now: its QEMU is alive and its
    disks are overlays on exactly ``rec``'s current disk chains (a commit or branch since moved
    them, and then it must be made again)."""
    sb = reg.standby_of(rec)
    if sb is None or not pid_alive(sb.runtime.pid, sb.id):
        return None
    if set(sb.disks) != set(rec.disks) or any(
            sb.disks[n].chain[:-1] != d.chain for n, d in rec.disks.items()):
        return None
    return sb


def drop_stale_standby(reg: VMRegistry, rec: VMRecord) -> None:
    """Remove ``rec``'s standby child if it can no longer become its child (its disks sit on
    chains ``rec`` left), so that the layers only it still names can go now."""
    old = reg.standby_of(rec)
    if old is not None and standby_fits(reg, rec) is None:
        rec.standby_child = None
        reg.save(rec)
        remove(reg, old)


def prepare_standby(reg: VMRegistry, rec: VMRecord, claim: bool = False) -> None:
    """Keep a standby child ready for ``rec``'s next branch, if it holds its tree's standby
    (or ``claim``s it now), its tree asked for one (``--standby``) and its memory backing can
    hand out a child file before the branch point. The child QEMU starts now with ``-incoming``,
    so a branch only pauses the parent, fills the placeholder and loads the device state: QEMU's
    ~40 ms start-up leaves the branch's critical path."""
    if not rec.standby or rec.role == "standby" or not pid_alive(rec.runtime.pid, rec.id):
        return
    backing = load_backing(rec.memory)
    if not (type(backing).opens_before_fork_end and type(backing).cheap_fork_begin):
        return  # e.g. shm: its fork_begin pre-copies all of RAM, which would go stale
    if claim and not rec.holds_standby:
        _take_over_standby(reg, rec)
    if not rec.holds_standby:
        return
    if standby_fits(reg, rec) is not None:
        return
    old = reg.standby_of(rec)
    rec.standby_child = None
    if old is not None:
        remove(reg, old)
    sb = create_child(reg, rec, role="standby")
    rec.standby_child = sb.id  # before RAM and QEMU, so a vers killed now leaves them owned
    reg.save(rec)
    try:
        mem = backing.fork_begin(sb.id)
        sb.memory = mem.state()
        reg.save(sb)
        Machine(sb).start(str(mem.path), incoming=True)
        reg.save(sb)
    except BaseException:
        rec.standby_child = None
        remove(reg, sb)
        reg.save(rec)
        raise


def _take_over_standby(reg: VMRegistry, rec: VMRecord) -> None:
    """``rec`` (whose lock the caller holds) becomes the VM of its tree that holds the standby:
    any other VM of the tree gives its standby up. One that is busy (another command holds its
    lock) keeps it for now, and gives it up at the next take-over."""
    rec.holds_standby = True
    reg.save(rec)
    for other in reg.all():
        if other.id == rec.id or not other.holds_standby or other.tree_id != rec.tree_id:
            continue
        try:
            with reg.lock(other, timeout=0.2):
                fresh = reg.get(other.id)
                if fresh is None:
                    continue
                old = reg.standby_of(fresh)
                fresh.holds_standby, fresh.standby_child = False, None
                reg.save(fresh)
                if old is not None:
                    remove(reg, old)
        except Busy:
            continue


def adopt_standby(reg: VMRegistry, rec: VMRecord, name: str | None) -> VMRecord | None:
    """Turn ``rec``'s standby child into a visible child VM named ``name`` (the caller holds
    ``rec``'s lock and branches next); None if there is none that still fits."""
    sb = standby_fits(reg, rec)
    if sb is None:
        return None
    reg.check_new_name(name)
    rec.standby_child = None
    reg.save(rec)
    sb.role, sb.name, sb.base_commit, sb.boot = "", name, rec.base_commit, dict(rec.boot)
    reg.save(sb)
    return sb
