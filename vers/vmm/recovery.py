"""What a commit or branch that dies midway (``kill -9``, a crash, a lost terminal) leaves behind,
and who takes it over. See docs/trust.md for each step.

- The guest paused: a ``PauseGuard``, forked before the pause, resumes it as soon as the command
  that paused it is gone without having resumed it (the guard notices the end of a pipe).
- Disk layers frozen but not recorded: the next commit or branch adopts them from QEMU's block
  graph (``recover``).
- A memory capture not settled: the next capture gives its pages back (the backings do this).
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import sys
import time

from vers.vmm.devstate import adopt_qemu_chains
from vers.vmm.machine import Machine
from vers.vmm.qmp import QMPClient
from vers.vmm.state import VMRecord, VMRegistry

#: how long a guard tries to reach QEMU once the command that paused the guest is gone
GUARD_CONNECT_SECONDS = 30.0


def recover(reg: VMRegistry, rec: VMRecord, qmp: QMPClient | None = None) -> VMRecord:
    """Under the VM's lock, before a commit or branch: take over the disk layers a command that
    died midway froze without recording them (``adopt_qemu_chains``). ``qmp``: the command's
    own connection to the VM's QEMU (else one is made for this)."""
    if qmp is None:
        with Machine.attach(rec) as m:
            adopted = adopt_qemu_chains(m.qmp(), rec)
    else:
        adopted = adopt_qemu_chains(qmp, rec)
    if adopted:
        reg.save(rec)
        print(f"vers: VM {rec.id}: took over {len(adopted)} disk layer(s) frozen by a command "
              "that did not finish", file=sys.stderr)
    return rec


class PauseGuard:
    """While a command has a guest paused, a forked process waits on a pipe; if the command
    ends without ``disarm`` (it was killed), the guard connects to QEMU's QMP socket (QEMU takes
    the next client once the dead command's connection closes) and resumes the guest.

    A fork (~1 ms) rather than a new interpreter (~30 ms of CPU next to the pause). The child
    closes every inherited descriptor but the pipe and stderr: holding the dead command's QMP
    connection would keep QEMU from accepting the guard's, holding its lock file would keep
    the VM locked."""

    def __init__(self, rec: VMRecord) -> None:
        self.vm_id = rec.id
        _reap()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child; covered by the crash tests
            try:
                os.setsid()  # a signal to the command's process group must not reach the guard
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                os.closerange(3, r)
                os.closerange(r + 1, os.sysconf("SC_OPEN_MAX"))
                if os.read(r, 1) != b"d":
                    _resume(rec.runtime.qmp_sock, rec.id)
            finally:
                os._exit(0)
        os.close(r)
        self._pid, self._w = pid, w

    def disarm(self) -> None:
        """The command resumed the guest, or leaves it paused on purpose: the guard just exits.
        It is not waited for (its exit is another few milliseconds on the command's path): the
        next guard, or the end of this process, reaps it."""
        if self._w < 0:
            return
        try:
            os.write(self._w, b"d")
        finally:
            os.close(self._w)
            self._w = -1
            _exited.append(self._pid)
            _reap()


#: guards told to exit and not reaped yet
_exited: list[int] = []


def _reap() -> None:
    for pid in list(_exited):
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _exited.remove(pid)


def _resume(qmp_sock: str, vm_id: str) -> None:
    """``cont`` over a bare QMP connection (the guard imports nothing after the fork)."""
    deadline = time.monotonic() + GUARD_CONNECT_SECONDS
    while time.monotonic() < deadline:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5.0)
                s.connect(qmp_sock)
                f = s.makefile("rwb")
                f.readline()  # greeting
                _execute(f, "qmp_capabilities")
                status = _execute(f, "query-status").get("return", {})
                if isinstance(status, dict) and status.get("status") == "running":
                    return  # died before the stop, or resumed it after all
                reply = _execute(f, "cont")
                if "error" not in reply or "not finalized" not in str(reply["error"]):
                    os.write(2, f"vers: the command that paused VM {vm_id} ended without "
                                f"resuming it; resumed it\n".encode())
                    return
        except OSError:
            pass  # QEMU still serves the dead command's connection, or is gone
        time.sleep(0.05)


def _execute(f: io.BufferedRWPair, cmd: str) -> dict[str, object]:
    """Send one QMP command; its reply (events in between are skipped)."""
    f.write(json.dumps({"execute": cmd}).encode() + b"\n")
    f.flush()
    while True:
        line = f.readline()
        if not line:
            raise OSError("QMP connection closed")
        msg = json.loads(line)
        if "return" in msg or "error" in msg:
            return dict(msg)
