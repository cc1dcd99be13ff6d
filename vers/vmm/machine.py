"""One QEMU microvm process, after qemu's own python/qemu/machine ``QEMUMachine``.

A ``Machine`` owns the QEMU process of one VM record. Launch happens in steps: ``prepare`` (socket
paths, stale sockets removed), ``args`` (the whole command line, a pure function of the record),
``spawn`` (QEMU with stdin closed and its output in ``qemu.log``), ``connect`` (QMP, with a timeout,
while checking that the process is still alive). Any failure raises a VMError carrying the
command line and the tail of the logs, because "QEMU exited" alone never tells anyone why.

QEMU runs in its own session so that it outlives the vers command that started it; a later
command re-attaches with ``Machine.attach(record)``. Hence leaving a ``with Machine(...)`` block
only hangs up QMP; only when the block that launched QEMU raises is QEMU shut down as well, so a
failed start leaves no process behind. ``shutdown`` is soft (QMP ``quit``), then hard (SIGTERM,
SIGKILL), and idempotent.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from vers.errors import BadInput, VMError
from vers.images.guest import BASE_CMDLINE, tcg_cmdline
from vers.images.guestfs import initramfs_error
from vers.vmm.private import private_dir, private_file
from vers.vmm.qmp import QMPClient
from vers.vmm.state import Runtime, VMRecord

MiB = 1024 * 1024
CONNECT_TIMEOUT = 30.0
#: QEMU's default CPU plus ARAT (the local APIC timer keeps running in deep idle states; TCG
#: emulates it so). Without it the guest kernel needs a broadcast timer to stop its tick when idle,
#: which microvm does not have: an idle guest then took ~6% of a host core for 250 ticks a second,
#: with it ~0% (docs/vmm.md). The guest reads CPUID once at boot, so commits made without it
#: restore and branch unchanged.
TCG_CPU = "qemu64,+arat"
#: TCG's translation buffer in MiB (``-accel tcg,tb-size=N``). QEMU's default reserves 1 GiB and
#: fills it as code is translated, never giving any back: a VM that runs varied code for long
#: grows towards 1 GiB of RSS. 256 bounds that at a quarter, well above what the default
#: guest's boot fills (~54 MiB: a cap near it would flush and retranslate soon after) and what
#: a busy busybox workload keeps hot (~20 MiB); at 4-8 MiB that workload ran 2-3x slower from
#: retranslation (docs/vmm.md, Density). 0 leaves QEMU's default; $VERS_TCG_TB_MIB overrides it.
TCG_TB_MIB = 256
#: the id of the user-mode network backend; published ports are added to it over QMP
NETDEV = "net0"


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


def accel_arg(accel: str) -> str:
    """The ``-accel`` value: under TCG with the translation buffer's size (``TCG_TB_MIB``)."""
    if accel != "tcg":
        return accel
    env = os.environ.get("VERS_TCG_TB_MIB", "").strip()
    try:
        mib = int(env) if env else TCG_TB_MIB
    except ValueError:
        raise BadInput(f"$VERS_TCG_TB_MIB must be a number of MiB, not {env!r}") from None
    if mib < 0:
        raise BadInput(f"$VERS_TCG_TB_MIB must be a number of MiB, not {env!r}")
    return f"tcg,tb-size={mib}" if mib else "tcg"


def default_cmdline(accel: str) -> str:
    if accel != "tcg":
        return BASE_CMDLINE
    from vers.vmm.tsc import host_tsc_khz

    return f"{BASE_CMDLINE} {tcg_cmdline(host_tsc_khz())}"


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


def _sock_path(vm_dir: Path, name: str) -> str:
    """Unix socket paths are limited to 107 bytes; deep repositories fall back to
    $TMPDIR/vers-<uid>, which must be ours and closed to others (``private_dir``)."""
    p = vm_dir / f"{name}.sock"
    if len(str(p)) < 100:
        return str(p)
    d = private_dir(Path(tempfile.gettempdir()) / f"vers-{os.getuid()}")
    return str(d / f"{vm_dir.name}-{name}.sock")


class Machine:
    """The QEMU process of one VM record (``record.runtime`` says which process it is)."""

    def __init__(self, record: VMRecord, qmp_timeout: float = 10.0) -> None:
        self.record = record
        self.qmp_timeout = qmp_timeout
        self._qmp: QMPClient | None = None
        self._launched = False

    @classmethod
    def attach(cls, record: VMRecord, qmp_timeout: float = 10.0) -> Machine:
        """The machine of a VM started by an earlier command; a VMError if its QEMU is gone."""
        if not pid_alive(record.runtime.pid, record.id):
            raise VMError(f"VM {record.id} is not running (QEMU process gone); "
                          f"`vers kill {record.id}`")
        return cls(record, qmp_timeout)

    @property
    def dir(self) -> Path:
        return self.record.dir

    @property
    def pid(self) -> int | None:
        return self.record.runtime.pid

    def is_running(self) -> bool:
        return pid_alive(self.pid, self.record.id)

    @property
    def connected(self) -> bool:
        """A QMP connection is open (``connect`` or ``qmp`` made one)."""
        return self._qmp is not None

    # -- launching ----------------------------------------------------------------------------
    def prepare(self) -> None:
        """Choose the socket and log paths of a new process (removing stale sockets)."""
        d = self.dir
        rt = Runtime(qmp_sock=_sock_path(d, "qmp"), agent_sock=_sock_path(d, "agent"),
                     serial_log=str(d / "serial.log"), ports=self.record.runtime.ports)
        for s in (rt.qmp_sock, rt.agent_sock):
            Path(s).unlink(missing_ok=True)
        self.record.runtime = rt

    def args(self, mem_path: str, incoming: bool = False, qemu: str | None = None) -> list[str]:
        """The whole QEMU command line. Device order is fixed: migration needs identical
        hardware."""
        rec, rt, spec = self.record, self.record.runtime, self.record.spec
        mib = spec.memory // MiB
        args = [qemu or qemu_binary(), "-name", f"vers-{rec.id}",
                "-M", f"{spec.machine},memory-backend=mem", "-accel", accel_arg(spec.accel),
                "-m", f"{mib}M", "-smp", str(spec.vcpus),
                "-object", f"memory-backend-file,id=mem,size={mib}M,mem-path={mem_path},share=on",
                "-nodefaults", "-no-user-config", "-nographic",
                "-serial", f"file:{rt.serial_log}",
                "-kernel", rec.boot["kernel"], "-initrd", rec.boot["initrd"],
                "-append", spec.cmdline]
        if spec.accel == "kvm":
            args += ["-cpu", "host"]
        else:
            args += ["-cpu", TCG_CPU]
        for name in spec.disks:
            args += ["-drive", f"id={name},file={rec.disks[name].top},format=qcow2,if=none",
                     "-device", f"virtio-blk-device,drive={name}"]
        args += ["-device", "virtio-serial-device",
                 "-chardev", f"socket,id=agent,path={rt.agent_sock},server=on,wait=off",
                 "-device", "virtserialport,chardev=agent,name=vers.agent"]
        if spec.net == "user":  # last, so machines without it keep every other device's slot
            args += ["-netdev", f"user,id={NETDEV}",
                     "-device", f"virtio-net-device,netdev={NETDEV}"]
        args += ["-qmp", f"unix:{rt.qmp_sock},server=on,wait=off"]
        if incoming:
            args += ["-S", "-incoming", "defer"]
        return args

    def spawn(self, args: list[str]) -> None:
        """Start QEMU detached from our session; its stdout/stderr go to the VM's qemu.log."""
        private_file(self.dir / "qemu.log")
        with open(self.dir / "qemu.log", "wb") as log:
            try:
                proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        cwd=self.dir, umask=0o077)  # its logs and sockets
            except OSError as exc:
                raise VMError(f"cannot start QEMU: {exc}\n  command: {shlex.join(args)}") from exc
        (self.dir / "cmdline").write_text(shlex.join(args) + "\n")
        self.record.runtime.pid = proc.pid
        self._launched = True

    def start(self, mem_path: str, incoming: bool = False) -> None:
        """Prepare and spawn (a few ms); ``connect`` waits for QEMU to be ready."""
        self.prepare()
        self.spawn(self.args(mem_path, incoming))

    def connect(self, wait: float = CONNECT_TIMEOUT) -> QMPClient:
        """Connect QMP to a freshly spawned QEMU; fail fast (with logs) if the process dies
        first, and stop a QEMU that does not answer in time."""
        pid = self.pid or 0
        try:
            self._qmp = QMPClient(self.record.runtime.qmp_sock, timeout=self.qmp_timeout).connect(
                wait=wait, alive=lambda: pid_alive(pid))
        except VMError as exc:
            alive = pid_alive(pid)
            what = f"QEMU QMP not ready: {exc}" if alive else "QEMU exited during start-up"
            if alive:
                kill_pid(pid)
            raise self.launch_error(what) from exc
        return self._qmp

    def launch(self, mem_path: str, incoming: bool = False) -> QMPClient:
        """Start QEMU and connect to it."""
        self.start(mem_path, incoming)
        return self.connect()

    def launch_error(self, msg: str) -> VMError:
        """An error carrying the command line and the tails of qemu.log and serial.log; a root
        disk the initramfs refused is named on the first line, since that is the reason."""
        refused = initramfs_error(self.dir / "serial.log")
        if refused:
            msg = f"{refused}\n{msg}"
        try:
            cmd = (self.dir / "cmdline").read_text().strip()
        except FileNotFoundError:
            cmd = ""
        return VMError(f"{msg}\n  command: {cmd}\n{log_tail(self.dir)}")

    # -- talking to it ------------------------------------------------------------------------
    def qmp(self) -> QMPClient:
        """A QMP connection to the running QEMU (made on first use, kept until ``close``)."""
        if self._qmp is None:
            self._qmp = QMPClient(self.record.runtime.qmp_sock, timeout=self.qmp_timeout)
            try:
                self._qmp.connect(wait=2.0)
            except VMError:
                self._qmp = None
                raise
        return self._qmp

    def status(self) -> str:
        """running | paused | dead | unreachable (and QEMU's other run states)."""
        if not self.is_running():
            return "dead"
        try:
            st = self.qmp().command("query-status")["status"]
        except VMError:
            return "unreachable"
        return {"postmigrate": "paused", "prelaunch": "paused"}.get(st, st)

    def pause(self) -> None:
        self.qmp().command("stop")

    def resume(self) -> None:
        self.qmp().cont()

    def close(self) -> None:
        """Hang up QMP; QEMU keeps running."""
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None

    # -- stopping -----------------------------------------------------------------------------
    def shutdown(self, timeout: float = 3.0) -> None:
        """Soft (QMP ``quit``), then hard (SIGTERM, then SIGKILL); a stopped machine is left as
        is."""
        if not self.is_running():  # also: never signal a pid that another process took over
            self.close()
            return
        try:
            q = self._qmp or QMPClient(self.record.runtime.qmp_sock, timeout=2.0).connect()
            try:
                q.command("quit")
            finally:
                q.close()
        except VMError:
            pass  # not answering: the signals below
        finally:
            self._qmp = None
            kill_pid(self.pid, timeout=timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None and self._launched:
            self.shutdown()
        else:
            self.close()


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
