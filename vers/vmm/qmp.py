"""A small synchronous QMP client with a timeout on every step.

vers talks to QEMU from short-lived CLI processes: connect, issue a few commands, disconnect. A
blocking socket with a deadline is all that needs; it keeps the latency we measure (commit and
branch pause times) free of an event loop's scheduling, and every hang becomes a VMError that names
the command instead of a stuck process.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any, Self

from vers.errors import VMError


class QMPError(VMError):
    """QEMU answered a command with an error."""


class QMPClient:
    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""
        self.events: list[dict[str, Any]] = []

    def connect(self, wait: float = 0.0, alive: Any = None) -> QMPClient:
        """Connect and negotiate; retry for up to ``wait`` seconds while ``alive()`` holds."""
        deadline = time.monotonic() + wait
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
                break
            except OSError as exc:
                sock.close()
                if time.monotonic() >= deadline or (alive is not None and not alive()):
                    raise VMError(f"cannot connect to QMP socket {self.path}: {exc}") from exc
                time.sleep(0.002)
        self._sock = sock
        greeting = self._read_msg()
        if "QMP" not in greeting:
            raise VMError(f"unexpected QMP greeting: {greeting}")
        self.command("qmp_capabilities")
        return self

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_msg(self) -> dict[str, Any]:
        assert self._sock is not None
        while b"\n" not in self._buf:
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError as exc:
                raise VMError(f"QMP on {self.path} did not answer within {self.timeout}s") from exc
            except OSError as exc:
                raise VMError(f"QMP connection {self.path} failed: {exc}") from exc
            if not chunk:
                raise VMError(f"QEMU closed the QMP connection {self.path}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)  # type: ignore[no-any-return]

    def command(self, name: str, **args: Any) -> Any:
        """Run one command; return its result or raise QMPError with QEMU's description."""
        if self._sock is None:
            raise VMError("QMP client is not connected")
        msg: dict[str, Any] = {"execute": name}
        if args:
            msg["arguments"] = args
        try:
            self._sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as exc:
            raise VMError(f"QMP send of {name} failed: {exc}") from exc
        while True:
            resp = self._read_msg()
            if "event" in resp:
                self.events.append(resp)
                continue
            if "error" in resp:
                desc = resp["error"].get("desc", resp["error"])
                raise QMPError(f"QEMU refused {name}: {desc}")
            return resp.get("return")

    def send_fd(self, name: str, fd: int) -> None:
        """Hand QEMU an open file descriptor (getfd + SCM_RIGHTS) for a ``fd:NAME`` URI.

        Migrating through a passed fd instead of ``exec:cat > file`` saves QEMU a fork+exec of a
        shell and cat inside the guest's pause (measured 2-3 ms instead of 7-20 ms here).
        """
        if self._sock is None:
            raise VMError("QMP client is not connected")
        msg = json.dumps({"execute": "getfd", "arguments": {"fdname": name}}).encode() + b"\n"
        try:
            socket.send_fds(self._sock, [msg], [fd])
        except OSError as exc:
            raise VMError(f"QMP getfd failed: {exc}") from exc
        while True:
            resp = self._read_msg()
            if "event" in resp:
                self.events.append(resp)
                continue
            if "error" in resp:
                raise QMPError(f"QEMU refused getfd: {resp['error'].get('desc')}")
            return

    def cont(self, timeout: float = 5.0) -> None:
        """``cont`` that waits out the moment after a migration reports "completed" but before
        QEMU has finished cleaning it up ("Migration is not finalized yet")."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.command("cont")
                return
            except QMPError as exc:
                if "not finalized" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.0005)

    def wait_migration(self, timeout: float = 60.0) -> dict[str, Any]:
        """Poll query-migrate until it completes; a failed migration raises."""
        deadline = time.monotonic() + timeout
        delay = 0.0002
        while True:
            info = self.command("query-migrate")
            status = info.get("status")
            if status == "completed":
                return info  # type: ignore[no-any-return]
            if status in ("failed", "cancelled"):
                raise VMError(f"migration {status}: {info.get('error-desc', '')}")
            if time.monotonic() > deadline:
                raise VMError(f"migration did not finish within {timeout}s (status {status})")
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
