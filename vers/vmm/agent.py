"""Host side of the guest agent: run a shell command in the guest over virtio-serial.

The guest agent (a shell script, see vers/images/guestfs.py) reads one request line
``ID BASE64(script)`` and answers with base64 blocks for stdout and stderr and a final ``ID END RC``
line. Base64 keeps arbitrary bytes (and the agent's own framing) intact through a line-oriented
shell loop; the random ID lets the host ignore anything stale left in the channel by a restored or
branched guest.
"""

from __future__ import annotations

import base64
import secrets
import shlex
import socket
import time
from dataclasses import dataclass

from vers.errors import GuestTimeout, VMError


@dataclass
class ExecResult:
    returncode: int
    stdout: bytes
    stderr: bytes


def command_script(argv: list[str]) -> str:
    """One argument is taken as a shell script; several as an argv to quote, like ssh does."""
    if len(argv) == 1:
        return argv[0]
    return " ".join(shlex.quote(a) for a in argv)


def guest_exec(sock_path: str, script: str, timeout: float = 60.0) -> ExecResult:
    """Run ``script`` with /bin/sh in the guest and wait for its exit code."""
    deadline = time.monotonic() + timeout
    rid = secrets.token_hex(6)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(sock_path)
        except OSError as exc:
            raise VMError(f"cannot reach the guest agent at {sock_path}: {exc}") from exc
        sock.sendall(f"{rid} ".encode() + base64.b64encode(script.encode()) + b"\n")
        buf = b""
        end_marker = f"{rid} END ".encode()
        while True:
            idx = buf.find(end_marker)
            if idx >= 0 and buf.find(b"\n", idx) >= 0:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GuestTimeout(f"guest command did not finish within {timeout}s: {script!r}")
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:  # QEMU went away mid-reply (a guest that powered off)
                raise VMError(f"the guest agent connection broke: {exc}") from exc
            if not chunk:
                raise VMError("the guest agent connection closed (VM gone?)")
            buf += chunk
    finally:
        sock.close()
    return _parse_reply(buf, rid)


def _parse_reply(buf: bytes, rid: str) -> ExecResult:
    out: list[bytes] = []
    err: list[bytes] = []
    target: list[bytes] | None = None
    rc = None
    prefix = f"{rid} ".encode()
    for line in buf.splitlines():
        if line.startswith(prefix):
            tag = line[len(prefix):]
            if tag == b"OUT":
                target = out
            elif tag == b"ERR":
                target = err
            elif tag.startswith(b"END "):
                rc = int(tag[4:])
                break
            continue
        if target is not None:
            target.append(line.strip())
    if rc is None:
        raise VMError("malformed reply from the guest agent")
    return ExecResult(rc, base64.b64decode(b"".join(out)), base64.b64decode(b"".join(err)))


def wait_agent(sock_path: str, timeout: float, alive: object = None) -> None:
    """Block until the agent answers a no-op, or raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if callable(alive) and not alive():
            raise VMError("QEMU exited while the guest was booting")
        try:
            res = guest_exec(sock_path, "true", timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            if res.returncode == 0:
                return
        except VMError as exc:
            last = exc
            time.sleep(0.1)
    raise VMError(f"guest agent not ready after {timeout:.0f}s ({last})")
