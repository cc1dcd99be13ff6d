"""Launching QEMU microvm processes, after qemu's own python/qemu/machine.

Launch happens in three steps: build the argument list (pure, testable), spawn QEMU with stdin
closed and its output in a log file, then connect QMP with a timeout while checking that the
process is still alive. Any failure raises a VMError carrying the command line and the tail of the
logs, because "QEMU exited" alone never tells anyone why.

QEMU runs in its own session so that it outlives the vers command that started it; later commands
find it again through the VM record (pid, QMP socket).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vers.errors import VMError
from vers.images.guest import BASE_CMDLINE, TCG_CMDLINE
from vers.images.guestfs import initramfs_error
from vers.vmm.qmp import QMPClient

MiB = 1024 * 1024


@dataclass
class MachineSpec:
    """What QEMU needs to recreate the same virtual hardware; recorded in every commit."""

    memory: int
    vcpus: int = 1
    accel: str = "tcg"
    cmdline: str = BASE_CMDLINE
    disks: list[str] = field(default_factory=lambda: ["disk"])
    machine: str = "microvm"

    def to_dict(self) -> dict[str, Any]:
        return {"memory": self.memory, "vcpus": self.vcpus, "accel": self.accel,
                "cmdline": self.cmdline, "disks": list(self.disks), "machine": self.machine}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MachineSpec:
        return cls(memory=int(d["memory"]), vcpus=int(d.get("vcpus", 1)),
                   accel=d.get("accel", "tcg"), cmdline=d.get("cmdline", BASE_CMDLINE),
                   disks=list(d.get("disks", ["disk"])), machine=d.get("machine", "microvm"))


def kvm_usable() -> bool:
    """KVM only where it really runs normal guests: /dev/kvm plus kvm_intel or kvm_amd.

    /dev/kvm alone is not enough: a PVM host (kvm_pvm) accepts KVM_CREATE_VM but hangs a normal
    guest kernel (see docs/vmm.md).
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    return any(Path(f"/sys/module/{m}").exists() for m in ("kvm_intel", "kvm_amd"))


def detect_accel() -> str:
    return "kvm" if kvm_usable() else "tcg"


def default_cmdline(accel: str) -> str:
    return f"{BASE_CMDLINE} {TCG_CMDLINE}" if accel == "tcg" else BASE_CMDLINE


def qemu_binary() -> str:
    name = os.environ.get("VERS_QEMU", "qemu-system-x86_64")
    path = shutil.which(name)
    if path is None:
        raise VMError(f"QEMU not found ({name!r} is not on PATH): apt-get install qemu-system-x86")
    return path


def parse_size(text: str) -> int:
    """'256M', '2G', '512MiB', or bytes."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1024, "M": MiB, "G": 1024 * MiB, "T": 1024 * 1024 * MiB}
    try:
        if t and t[-1] in mult:
            return int(float(t[:-1]) * mult[t[-1]])
        return int(t)
    except ValueError as exc:
        raise VMError(f"bad size {text!r} (use e.g. 256M or 2G)") from exc


def build_args(vm_id: str, spec: MachineSpec, *, mem_path: str, kernel: str, initrd: str,
               disks: dict[str, str], qmp_sock: str, agent_sock: str, serial_log: str,
               incoming: bool = False, qemu: str | None = None) -> list[str]:
    """The whole QEMU command line. Device order is fixed: migration needs identical hardware."""
    mib = spec.memory // MiB
    args = [qemu or qemu_binary(), "-name", f"vers-{vm_id}",
            "-M", f"{spec.machine},memory-backend=mem", "-accel", spec.accel,
            "-m", f"{mib}M", "-smp", str(spec.vcpus),
            "-object", f"memory-backend-file,id=mem,size={mib}M,mem-path={mem_path},share=on",
            "-nodefaults", "-no-user-config", "-nographic",
            "-serial", f"file:{serial_log}",
            "-kernel", kernel, "-initrd", initrd, "-append", spec.cmdline]
    if spec.accel == "kvm":
        args += ["-cpu", "host"]
    for name in spec.disks:
        args += ["-drive", f"id={name},file={disks[name]},format=qcow2,if=none",
                 "-device", f"virtio-blk-device,drive={name}"]
    args += ["-device", "virtio-serial-device",
             "-chardev", f"socket,id=agent,path={agent_sock},server=on,wait=off",
             "-device", "virtserialport,chardev=agent,name=vers.agent",
             "-qmp", f"unix:{qmp_sock},server=on,wait=off"]
    if incoming:
        args += ["-S", "-incoming", "defer"]
    return args


def spawn(args: list[str], vm_dir: Path) -> int:
    """Start QEMU detached from our session; its stdout/stderr go to vm_dir/qemu.log."""
    with open(vm_dir / "qemu.log", "wb") as log:
        try:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True, cwd=vm_dir)
        except OSError as exc:
            raise VMError(f"cannot start QEMU: {exc}\n  command: {shlex.join(args)}") from exc
    (vm_dir / "cmdline").write_text(shlex.join(args) + "\n")
    return proc.pid


def pid_alive(pid: int | None, vm_id: str | None = None) -> bool:
    """True if pid runs (not a zombie) and, when vm_id is given, is that VM's QEMU."""
    if not pid:
        return False
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own exited child
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
        if vm_id is not None:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f"vers-{vm_id}".encode() in f.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return True


def log_tail(vm_dir: Path, lines: int = 20) -> str:
    parts = []
    for name in ("qemu.log", "serial.log"):
        p = vm_dir / name
        try:
            text = p.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            continue
        if text:
            parts.append(f"--- last lines of {p} ---\n" + "\n".join(text))
    return "\n".join(parts)


def launch_error(msg: str, vm_dir: Path) -> VMError:
    """A VMError with the command line and log tails; a root disk the initramfs refused is named
    on the first line, since that is the reason."""
    refused = initramfs_error(vm_dir / "serial.log")
    if refused:
        msg = f"{refused}\n{msg}"
    cmd = ""
    try:
        cmd = (vm_dir / "cmdline").read_text().strip()
    except FileNotFoundError:
        pass
    return VMError(f"{msg}\n  command: {cmd}\n{log_tail(vm_dir)}")


def connect_qmp(sock: str, pid: int, vm_id: str, vm_dir: Path, wait: float = 30.0) -> QMPClient:
    """Connect to a freshly spawned QEMU; fail fast (with logs) if the process dies first."""
    try:
        return QMPClient(sock).connect(wait=wait, alive=lambda: pid_alive(pid))
    except VMError as exc:
        alive = pid_alive(pid)
        what = "QEMU exited during start-up" if not alive else f"QEMU QMP not ready: {exc}"
        if alive:
            kill_pid(pid)
        raise launch_error(what, vm_dir) from exc


def kill_pid(pid: int | None, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; returns once the process is gone."""
    if not pid or not pid_alive(pid):
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.02)


def find_qemu_processes(vms_root: Path) -> dict[str, int]:
    """QEMU processes started for this repository (their serial log lies under vms_root): id -> pid.

    This is how orphans are found: a QEMU whose record was deleted still names its VM directory.
    """
    found: dict[str, int] = {}
    marker = f"file:{vms_root}/".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if not argv or b"qemu-system" not in argv[0]:
            continue
        if not any(a.startswith(marker) for a in argv):
            continue
        for i, a in enumerate(argv[:-1]):
            if a == b"-name" and argv[i + 1].startswith(b"vers-") and pid_alive(int(entry)):
                found[argv[i + 1][5:].decode()] = int(entry)
    return found
