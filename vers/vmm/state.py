"""Where vers keeps track of its VMs: ``.vers/vms/<id>/vm.json`` plus a CURRENT file.

A VM outlives the command that started it, so everything a later command needs is written here:
the machine (``MachineSpec``, boot files, disk chains, memory backing, the commit the VM's state
is based on) and its ``Runtime`` (pid, sockets, serial log). The record is replaced atomically
(write + rename); commands that change a VM hold a per-VM lock.

``CURRENT`` names the VM that commands act on when none is given, the way HEAD names a commit.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vers.errors import BadInput, Busy, UnknownVM
from vers.images.guest import BASE_CMDLINE
from vers.vmm.disk import DiskChain
from vers.vmm.private import own_dir

if TYPE_CHECKING:
    from vers.repo import Repo

ALIAS_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
#: what a VM record keeps about the QEMU process (older vm.json files had these at the top)
_RUNTIME_KEYS = ("pid", "qmp_sock", "agent_sock", "serial_log")


@dataclass
class MachineSpec:
    """What QEMU needs to recreate the same virtual hardware; recorded in every commit (``vm`` in
    its config, through ``to_dict``) and rebuilt by every restore."""

    memory: int
    vcpus: int = 1
    accel: str = "tcg"
    cmdline: str = BASE_CMDLINE
    disks: list[str] = field(default_factory=lambda: ["disk"])
    machine: str = "microvm"
    #: guest network: "user" (a virtio-net device on QEMU's user-mode network) or "none"
    net: str = "user"

    def to_dict(self) -> dict[str, Any]:
        """The form commits record: its keys and values must not change, or commit IDs would.
        ``net`` is recorded only when there is a network device, so a machine without one is
        recorded exactly as before networking existed (and such commits restore without one)."""
        d: dict[str, Any] = {"memory": self.memory, "vcpus": self.vcpus, "accel": self.accel,
                             "cmdline": self.cmdline, "disks": list(self.disks),
                             "machine": self.machine}
        if self.net != "none":
            d["net"] = self.net
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MachineSpec:
        return cls(memory=int(d["memory"]), vcpus=int(d.get("vcpus", 1)),
                   accel=d.get("accel", "tcg"), cmdline=d.get("cmdline", BASE_CMDLINE),
                   disks=list(d.get("disks", ["disk"])), machine=d.get("machine", "microvm"),
                   net=d.get("net", "none"))


@dataclass
class Runtime:
    """The QEMU process a VM runs in now: gone when it stops, never part of a commit."""

    pid: int | None = None
    qmp_sock: str = ""
    agent_sock: str = ""
    serial_log: str = ""
    #: host-side resources held for the VM (e.g. published host ports), released at teardown
    ports: list[dict[str, Any]] = field(default_factory=list)
    #: the `vers record` process committing this VM on a schedule, if any: its pid, schedule,
    #: retention policy and progress (vers.porcelain.record)
    recording: dict[str, Any] = field(default_factory=dict)


@dataclass
class VMRecord:
    """One VM: what its machine is (spec, boot files, disks, memory backing, base commit: what a
    commit records and a restore rebuilds) and, in ``runtime``, the process running it now."""

    id: str
    vm_dir: str
    spec: MachineSpec
    name: str | None = None
    created: float = field(default_factory=time.time)
    #: memory backing state (kind + paths), see vers.vmm.memory
    memory: dict[str, Any] = field(default_factory=dict)
    disks: dict[str, DiskChain] = field(default_factory=dict)
    #: paths of the kernel and initrd the VM booted (needed to record them in commits)
    boot: dict[str, str] = field(default_factory=dict)
    #: the commit whose images equal this VM's "committed" memory/disk layers
    base_commit: str | None = None
    parent_vm: str | None = None
    #: keep a standby child ready: a QEMU already started (``-incoming``) on a placeholder RAM
    #: file and an overlay of this VM's disks, which the next ``vers branch`` adopts
    standby: bool = False
    #: ID of that prepared child (a hidden record), if any
    standby_child: str | None = None
    #: the VM tree this VM belongs to (the ID of the VM it was branched from first, through
    #: every generation; "" for a VM started by run or restore: its own ID)
    tree: str = ""
    #: this VM keeps its tree's one standby child: the VM of the tree that branched last (or was
    #: started last), the one most likely to branch again
    holds_standby: bool = False
    #: "standby" for such a prepared, not yet adopted child: hidden from ps and from lookups
    role: str = ""
    #: the branch this VM's commits go to by default (``vers branch --refs``); None: HEAD
    branch: str | None = None
    runtime: Runtime = field(default_factory=Runtime)

    def to_json(self) -> str:
        data = {
            "id": self.id, "vm_dir": self.vm_dir, "name": self.name, "created": self.created,
            "spec": self.spec.to_dict(), "memory": self.memory,
            "disks": {n: d.to_dict() for n, d in self.disks.items()}, "boot": self.boot,
            "base_commit": self.base_commit, "parent_vm": self.parent_vm,
            "standby": self.standby, "standby_child": self.standby_child, "role": self.role,
            "tree": self.tree, "holds_standby": self.holds_standby, "branch": self.branch,
            "runtime": {"pid": self.runtime.pid, "qmp_sock": self.runtime.qmp_sock,
                        "agent_sock": self.runtime.agent_sock,
                        "serial_log": self.runtime.serial_log, "ports": self.runtime.ports,
                        "recording": self.runtime.recording},
        }
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> VMRecord:
        """Also reads the records of earlier versions (runtime fields at the top level)."""
        data = json.loads(text)
        runtime = data.get("runtime") or {k: data[k] for k in _RUNTIME_KEYS if k in data}
        return cls(
            id=data["id"], vm_dir=data["vm_dir"], spec=MachineSpec.from_dict(data["spec"]),
            name=data.get("name"), created=float(data.get("created", 0.0)),
            memory=dict(data.get("memory") or {}),
            disks={n: DiskChain.from_dict(d) for n, d in (data.get("disks") or {}).items()},
            boot=dict(data.get("boot") or {}), base_commit=data.get("base_commit"),
            parent_vm=data.get("parent_vm"), standby=bool(data.get("standby", False)),
            standby_child=data.get("standby_child"), role=data.get("role", ""),
            tree=data.get("tree", ""),
            # a record from before trees kept the standby it had
            holds_standby=bool(data.get("holds_standby", data.get("standby_child") is not None)),
            branch=data.get("branch"),
            runtime=Runtime(**{k: v for k, v in runtime.items()
                               if k in Runtime.__dataclass_fields__}))

    @property
    def dir(self) -> Path:
        return Path(self.vm_dir)

    @property
    def tree_id(self) -> str:
        return self.tree or self.id


def registry(repo: Repo) -> VMRegistry:
    """The VMs of ``repo`` (its ``.vers/vms`` directory made if missing)."""
    reg = VMRegistry(repo.vers_dir)
    reg.ensure()
    return reg


class VMRegistry:
    """The VMs of one repository."""

    def __init__(self, vers_dir: Path) -> None:
        self.root = Path(vers_dir) / "vms"
        self.layers = self.root / "_layers"

    def ensure(self) -> None:
        own_dir(self.root)  # RAM files, layers and sockets of the VMs: ours only
        own_dir(self.layers)

    def new_id(self) -> str:
        while True:
            vid = secrets.token_hex(4)
            if not (self.root / vid).exists():
                return vid

    def check_new_name(self, name: str | None) -> None:
        """``name`` is a valid alias that no VM has yet (None: no alias, always fine)."""
        if name is not None:
            check_alias(name)
            if self.find(name) is not None:
                raise BadInput(f"a VM named {name!r} already exists")

    def create(self, name: str | None = None, parent_vm: str | None = None,
               spec: MachineSpec | None = None) -> VMRecord:
        """A new record (saved); without ``spec`` its machine is not known yet (memory 0)."""
        self.ensure()
        self.check_new_name(name)
        vid = self.new_id()
        d = self.root / vid
        d.mkdir(mode=0o700)
        rec = VMRecord(id=vid, vm_dir=str(d), spec=spec or MachineSpec(memory=0), name=name,
                       parent_vm=parent_vm)
        self.save(rec)
        return rec

    def save(self, rec: VMRecord) -> None:
        path = Path(rec.vm_dir) / "vm.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(rec.to_json())
        os.replace(tmp, path)

    def all(self) -> list[VMRecord]:
        out: list[VMRecord] = []
        if not self.root.is_dir():
            return out
        for d in sorted(self.root.iterdir()):
            f = d / "vm.json"
            if d.name.startswith("_") or not f.is_file():
                continue
            try:
                out.append(VMRecord.from_json(f.read_text()))
            except (ValueError, TypeError, KeyError):
                continue
        return out

    def get(self, vid: str) -> VMRecord | None:
        """By full ID, hidden standby records included."""
        f = self.root / vid / "vm.json"
        try:
            return VMRecord.from_json(f.read_text())
        except (FileNotFoundError, ValueError, TypeError, KeyError):
            return None

    def standby_of(self, rec: VMRecord) -> VMRecord | None:
        """The standby child record ``rec`` names, if it exists."""
        sb = self.get(rec.standby_child) if rec.standby_child else None
        return sb if sb is not None and sb.role == "standby" else None

    def visible(self) -> list[VMRecord]:
        """The VMs users see and name: every record but prepared standby children."""
        return [r for r in self.all() if r.role != "standby"]

    def find(self, key: str) -> VMRecord | None:
        """By alias, full ID or unique ID prefix."""
        recs = self.visible()
        for r in recs:
            if r.name == key or r.id == key:
                return r
        hits = [r for r in recs if r.id.startswith(key)] if len(key) >= 2 else []
        if len(hits) > 1:
            raise BadInput(f"VM ID prefix {key!r} is ambiguous: {', '.join(r.id for r in hits)}")
        return hits[0] if hits else None

    def resolve(self, key: str | None) -> VMRecord:
        """The named VM, or the current VM when ``key`` is None."""
        if key is None:
            cur = self.current()
            if cur is None:
                raise UnknownVM("no current VM (start one with `vers run`, or name one)")
            key = cur
        rec = self.find(key)
        if rec is None:
            names = sorted({n for r in self.visible() for n in (r.name, r.id) if n})
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else " (see `vers ps`)"
            raise UnknownVM(f"no VM {key!r} in this repository{hint}")
        return rec

    def current(self) -> str | None:
        f = self.root / "CURRENT"
        try:
            vid = f.read_text().strip()
        except FileNotFoundError:
            return None
        return vid if vid and (self.root / vid / "vm.json").exists() else None

    def set_current(self, vid: str | None) -> None:
        self.ensure()
        f = self.root / "CURRENT"
        if vid is None:
            f.unlink(missing_ok=True)
            return
        tmp = f.with_suffix(".tmp")
        tmp.write_text(vid + "\n")
        os.replace(tmp, f)

    @contextlib.contextmanager
    def lock(self, rec: VMRecord, timeout: float = 120.0) -> Iterator[None]:
        """Serialise commands that change one VM (commit, branch, kill)."""
        path = Path(rec.vm_dir) / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise Busy(f"VM {rec.id} is busy (another vers command holds it)")
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)


def check_alias(name: str) -> None:
    if not name or not set(name) <= ALIAS_CHARS or name.startswith(("-", ".", "_")):
        raise BadInput(f"bad VM name {name!r}: use letters, digits, '.', '_' and '-'")
    if all(c in "0123456789abcdef" for c in name) and len(name) <= 8:
        raise BadInput(f"VM name {name!r} looks like a VM ID; pick a name with other letters")
