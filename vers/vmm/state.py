"""Where vers keeps track of its VMs: ``.vers/vms/<id>/vm.json`` plus a CURRENT file.

A VM outlives the command that started it, so everything a later command needs (pid, sockets,
serial log, memory and disk backing, the commit the VM's state is based on) is written here. The
record is replaced atomically (write + rename); commands that change a VM hold a per-VM lock.

``CURRENT`` names the VM that commands act on when none is given, the way HEAD names a commit.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vers.errors import BadInput, Busy, UnknownVM

ALIAS_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


@dataclass
class VMRecord:
    id: str
    vm_dir: str
    name: str | None = None
    pid: int | None = None
    created: float = field(default_factory=time.time)
    qmp_sock: str = ""
    agent_sock: str = ""
    serial_log: str = ""
    #: machine configuration: memory, vcpus, accel, cmdline, machine args (goes into commits)
    spec: dict[str, Any] = field(default_factory=dict)
    #: memory backing state (kind + paths), see backing.py
    memory: dict[str, Any] = field(default_factory=dict)
    #: per disk image name: {"chain": [paths base..top], "committed": n_layers_in_base_commit}
    disks: dict[str, dict[str, Any]] = field(default_factory=dict)
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
    #: "standby" for such a prepared, not yet adopted child: hidden from ps and from lookups
    role: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> VMRecord:
        data = json.loads(text)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @property
    def dir(self) -> Path:
        return Path(self.vm_dir)


class VMRegistry:
    """The VMs of one repository."""

    def __init__(self, vers_dir: Path) -> None:
        self.root = Path(vers_dir) / "vms"
        self.layers = self.root / "_layers"

    def ensure(self) -> None:
        self.layers.mkdir(parents=True, exist_ok=True)

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

    def create(self, name: str | None = None, parent_vm: str | None = None) -> VMRecord:
        self.ensure()
        self.check_new_name(name)
        vid = self.new_id()
        d = self.root / vid
        d.mkdir()
        rec = VMRecord(id=vid, vm_dir=str(d), name=name, parent_vm=parent_vm)
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
            except (ValueError, TypeError):
                continue
        return out

    def get(self, vid: str) -> VMRecord | None:
        """By full ID, hidden standby records included."""
        f = self.root / vid / "vm.json"
        try:
            return VMRecord.from_json(f.read_text())
        except (FileNotFoundError, ValueError, TypeError):
            return None

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
            raise UnknownVM(f"no VM {key!r} in this repository (see `vers ps`)")
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
