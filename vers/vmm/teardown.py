"""Stopping VMs and removing what they leave: records, RAM files, sockets, disk layers, orphans.

An orphan is a QEMU process of this repository whose record is gone (found through /proc, see
``machine.find_qemu_processes``), or a standby child no VM claims any more.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from vers.errors import FuseError, UnknownVM, VMError
from vers.vmm import disk as disk_mod
from vers.vmm.machine import Machine, find_qemu_processes, kill_pid
from vers.vmm.memory import load_backing
from vers.vmm.memory.fuse import BackingDaemon, release_disk_bases
from vers.vmm.state import VMRecord, VMRegistry, registry

if TYPE_CHECKING:
    from vers.repo import Repo


def kill_vms(repo: Repo, keys: list[str]) -> list[str]:
    """Stop each VM (QMP quit, then SIGTERM/SIGKILL) and remove its state; orphans too."""
    reg = registry(repo)
    orphans = find_qemu_processes(reg.root)
    targets: list[tuple[VMRecord | None, str]] = []
    for key in keys:
        rec = reg.find(key) or stray_standby(reg, key)
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
            _remove_orphan(reg, vid, orphans[vid])
        else:
            with reg.lock(rec, timeout=30):
                remove(reg, rec)
        done.append(vid)
    return done


def stray_standby(reg: VMRegistry, vid: str) -> VMRecord | None:
    """A standby child no VM claims any more (what `vers ps` lists as an orphan with a record)."""
    rec = reg.get(vid)
    if rec is None or rec.role != "standby":
        return None
    owner = reg.get(rec.parent_vm) if rec.parent_vm else None
    return rec if owner is None or owner.standby_child != rec.id else None


def remove(reg: VMRegistry, rec: VMRecord) -> None:
    """Stop QEMU if running, delete the record, RAM files, sockets and unreferenced layers (and
    the VM's standby child with it)."""
    standby = reg.standby_of(rec)
    if standby is not None:
        rec.standby_child = None
        remove(reg, standby)
    Machine(rec).shutdown()
    if rec.memory:
        try:
            load_backing(rec.memory).destroy()
        except VMError:
            pass
    for s in (rec.runtime.qmp_sock, rec.runtime.agent_sock):
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
    _remove_unused_boot_files(reg, records)
    # a disk base served lazily by the FUSE backing daemon (vers.vmm.memory.fuse.disk_base)
    if any("/mnt/disk-" in p for p in disk_mod.layers_in_use(rec.disks)):
        release_disk_bases(reg.root.parent, in_use)


#: unused kernels (and as many initrds) kept for the next restore, the most recently used ones
KEEP_BOOT_FILES = 4


def _remove_unused_boot_files(reg: VMRegistry, records: list[VMRecord]) -> None:
    """The kernels and initrds restores exported (``_layers/kernel-<tree>``, ~16 MiB a pair)
    that no VM boots any more, but the ``KEEP_BOOT_FILES`` of each kind used last: every
    commit of a guest image has the same ones, and exporting them again from the store is most
    of a restore's work before QEMU starts (the store still has the others)."""
    in_use = {p for r in records for p in r.boot.values()}
    for kind in ("kernel", "initrd"):
        unused = []
        for p in reg.layers.glob(f"{kind}-*"):
            if str(p) not in in_use:
                try:
                    unused.append((p.stat().st_mtime, p))
                except FileNotFoundError:
                    pass
        for _, p in sorted(unused, reverse=True)[KEEP_BOOT_FILES:]:
            p.unlink(missing_ok=True)


def _remove_orphan(reg: VMRegistry, vid: str, pid: int) -> None:
    """An orphan's record is gone, so its backing is unknown: remove its RAM by the conventional
    names (shm files, the FUSE backing daemon's file of that VM)."""
    kill_pid(pid)
    for suffix in (".mem", ".ref"):
        Path(f"/dev/shm/vers-{vid}{suffix}").unlink(missing_ok=True)
    daemon = BackingDaemon()
    if daemon.alive():
        try:
            daemon.request("remove", name=f"{vid}.memory")
        except FuseError:
            pass  # it may never have had one
    shutil.rmtree(reg.root / vid, ignore_errors=True)
