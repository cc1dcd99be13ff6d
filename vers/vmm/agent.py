"""Host side of the guest agent: commands in the guest over one virtio-serial port.

The guest agent (vers/images/agent/vers-agent.c; the protocol is in docs/guests.md) multiplexes
channels over the VM's ``vers.agent`` chardev socket. Each channel is one command with streamed
stdin, stdout and stderr (or a pty), signals, window sizes and an exit status. Frames are
``[type u8][channel u32][length u32][payload]``, little-endian.

QEMU serves one client on that socket at a time, so a process keeps one ``AgentConnection`` per VM
(a reader thread demultiplexes it for every channel of the process) and closes it when its last
channel ends; a per-VM lock file makes other vers processes wait their turn instead of queueing
blindly behind QEMU's listen backlog. Every connection starts with a HELLO exchange: the agent
drops whatever the previous connection left open (a restored or branched guest's agent remembers
channels of a host that is gone), and the host skips whatever stale bytes precede the agent's
HELLO.

A guest restored from a commit made before this agent existed runs the old shell agent, which
answers one-line requests; ``guest_exec`` recognises it and falls back to that protocol.

Protocol 1.1 adds file-system requests (``GuestFileSystems``): sync, freeze and thaw, which
``vers commit`` uses to make its disks file-consistent; 1.2 the clock; 1.3 ``put`` (``FilePut``):
the agent writes a regular file sent to it straight into a temporary file next to the target and
renames it into place, which is how ``vers cp`` copies a file in.
"""

from __future__ import annotations

import base64
import collections
import fcntl
import os
import re
import secrets
import shlex
import signal as signal_mod
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Self

from vers.errors import GuestTimeout, VMError

PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 4
#: the first minor version whose agent syncs, freezes and thaws file systems
FS_MINOR = 1
#: the first minor version whose agent sets the wall clock to the microsecond (FS "clock")
CLOCK_MINOR = 2
#: the first minor version whose agent writes a file itself (FS "put")
PUT_MINOR = 3
#: the first minor version whose agent makes a clone distinct by itself (FS "fresh": clock,
#: entropy and generation marker in one request, no guest process)
FRESH_MINOR = 4
MAGIC = b"VERS-AGENT-HELLO/"
HEADER = struct.Struct("<BII")
#: Credit each side of a channel starts with: output (or stdin) a peer may have in flight.
WINDOW = 1 << 20
#: STDIN frames carry at most this (the agent accepts up to 256 KiB).
STDIN_CHUNK = 64 << 10
#: A put's data frames carry this much: the most the agent accepts.
PUT_CHUNK = 256 << 10
#: Resync padding: longer than any frame the agent accepts, so a frame cut short by a process
#: that died mid-write completes and what follows parses as NOP frames.
PADDING = bytes((256 << 10) + HEADER.size)
HELLO_RETRY = 1.0

(NOP, HELLO, OPEN, STDIN, STDOUT, STDERR, EXIT, SIGNAL, RESIZE, CREDIT, CLOSE, ERROR, FS,
 FS_DONE) = range(14)

_LEGACY_REPLY = re.compile(rb"[^\n]* END -?\d+\n")


class LegacyAgent(VMError):
    """The guest runs the shell agent of an earlier vers (it answers lines, not frames)."""


class AgentTooOld(VMError):
    """The guest's agent predates a request (its HELLO names an older minor version)."""


class PutError(VMError):
    """The agent could not put a file: ``errname`` is the errno's name (``ENOENT``, ``ENOSPC``,
    ...; ``EOTHER`` for the rest), the message says what failed and where."""

    def __init__(self, errname: str, message: str) -> None:
        super().__init__(message)
        self.errname = errname


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


def _frame(kind: int, chan: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, chan, len(payload)) + payload


HELLO_FRAME = _frame(HELLO, 0, MAGIC + f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}\n".encode())


@dataclass(frozen=True)
class Event:
    """What a channel reports: ``stdout``/``stderr`` data, or ``exit`` with ``code``."""

    kind: str
    data: bytes = b""
    code: int = 0


class Channel:
    """One command running in the guest. Output arrives as events (``next_event``); stdin goes
    out as the agent grants room for it. Close it (or use ``with``) to release the connection;
    closing a channel whose command still runs kills the command."""

    def __init__(self, conn: AgentConnection, cid: int) -> None:
        self.conn, self.id = conn, cid
        self._cond = threading.Condition()
        self._events: collections.deque[Event] = collections.deque()
        self._stdin_credit = WINDOW
        self._consumed = 0
        self._lost: str | None = None
        self.exited = False
        self.returncode: int | None = None
        self._closed = False

    # -- called by the connection's reader thread
    def _push(self, ev: Event) -> None:
        with self._cond:
            self._events.append(ev)
            self._cond.notify_all()

    def _grant(self, n: int) -> None:
        with self._cond:
            self._stdin_credit += n
            self._cond.notify_all()

    def _lose(self, why: str) -> None:
        with self._cond:
            self._lost = why
            self._cond.notify_all()

    # -- the caller's side
    def next_event(self, timeout: float | None = None) -> Event | None:
        """The next output or the exit, or None after ``timeout`` seconds of nothing."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._events:
                if self._lost is not None:
                    raise VMError(self._lost)
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    return None
                self._cond.wait(wait)
            ev = self._events.popleft()
        if ev.kind == "exit":
            self.exited, self.returncode = True, ev.code
        elif ev.kind == "error":
            raise VMError("the guest agent refused the command: "
                          f"{ev.data.decode(errors='replace')}")
        elif ev.kind != "fs":
            self._consumed += len(ev.data)
            if self._consumed >= WINDOW // 4:
                self.conn.send(CREDIT, self.id, struct.pack("<I", self._consumed))
                self._consumed = 0
        return ev

    def write(self, data: bytes | memoryview, timeout: float | None = None) -> None:
        """Send ``data`` to the command's stdin, waiting while the agent has no room for it."""
        view = memoryview(data)
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(view):
            with self._cond:
                while self._stdin_credit <= 0:
                    if self._lost is not None:
                        raise VMError(self._lost)
                    if self.exited or any(e.kind == "exit" for e in self._events):
                        return  # the command is gone; the rest of its input goes nowhere
                    wait = None if deadline is None else deadline - time.monotonic()
                    if wait is not None and wait <= 0:
                        raise GuestTimeout("the guest command stopped reading its input")
                    self._cond.wait(wait)
                n = min(len(view), STDIN_CHUNK, self._stdin_credit)
                self._stdin_credit -= n
            self.conn.send(STDIN, self.id, bytes(view[:n]))
            view = view[n:]

    def close_stdin(self) -> None:
        self.conn.send(STDIN, self.id, b"")

    def signal(self, sig: int) -> None:
        """Deliver ``sig`` to the command's process group."""
        self.conn.send(SIGNAL, self.id, struct.pack("<I", sig))

    def resize(self, rows: int, cols: int) -> None:
        self.conn.send(RESIZE, self.id, struct.pack("<HH", rows, cols))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.exited and self._lost is None:
            try:
                self.conn.send(CLOSE, self.id)
            except VMError:
                pass
        self.conn.forget(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AgentConnection:
    """This process's connection to one VM's agent; use ``open_channel``, not this directly."""

    def __init__(self, sock_path: str) -> None:
        self.sock_path = sock_path
        self._sock: socket.socket | None = None
        self._lock_fd: int | None = None
        self._send_lock = threading.Lock()
        self._channels: dict[int, Channel] = {}
        self._next_id = 1
        self._dead: str | None = None
        self._rx = bytearray()
        #: the agent's protocol minor version, from its HELLO
        self.minor = 0

    @property
    def alive(self) -> bool:
        return self._dead is None and self._sock is not None

    def connect(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._lock_fd = _lock_agent(self.sock_path, deadline)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                sock.connect(self.sock_path)
            except OSError as exc:
                raise VMError(f"cannot reach the guest agent at {self.sock_path}: {exc}") from exc
            self.minor, self._rx = _handshake(sock, deadline)
        except BaseException:
            sock.close()
            self._unlock()
            raise
        sock.settimeout(None)
        self._sock = sock
        threading.Thread(target=self._read_loop, name="vers-agent-reader", daemon=True).start()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def open(self, spec: bytes) -> Channel:
        ch = self.new_channel()
        self.send(OPEN, ch.id, spec)
        return ch

    def new_channel(self) -> Channel:
        """A channel number of this connection, registered for what the agent sends on it."""
        with self._send_lock:
            cid = self._next_id
            self._next_id += 1
        ch = Channel(self, cid)
        self._channels[cid] = ch
        return ch

    def send(self, kind: int, chan: int, payload: bytes = b"") -> None:
        sock = self._sock
        if self._dead is not None or sock is None:
            raise VMError(self._dead or "the guest agent connection is closed")
        try:
            with self._send_lock:
                sock.sendall(_frame(kind, chan, payload))
        except OSError as exc:
            raise VMError(f"the guest agent connection broke: {exc}") from exc

    def send_data(self, kind: int, chan: int, data: memoryview) -> None:
        """``send`` without joining header and payload into a new bytes object first."""
        sock = self._sock
        if self._dead is not None or sock is None:
            raise VMError(self._dead or "the guest agent connection is closed")
        try:
            with self._send_lock:
                sock.sendall(HEADER.pack(kind, chan, len(data)))
                sock.sendall(data)
        except OSError as exc:
            raise VMError(f"the guest agent connection broke: {exc}") from exc

    def forget(self, ch: Channel) -> None:
        self._channels.pop(ch.id, None)
        release(self)

    def close(self) -> None:
        self._dead = self._dead or "the guest agent connection is closed"
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        self._unlock()

    def _read_loop(self) -> None:
        buf = self._rx
        sock = self._sock
        assert sock is not None
        why = "the guest agent connection closed (VM killed, or QEMU gone?)"
        try:
            while True:
                off = self._dispatch(buf)
                if off:
                    del buf[:off]
                data = sock.recv(1 << 20)
                if not data:
                    break
                buf += data
        except OSError as exc:
            why = f"the guest agent connection broke: {exc}"
        except VMError as exc:
            why = str(exc)
        if self._dead is None:
            self._dead = why
        for ch in list(self._channels.values()):
            ch._lose(self._dead)

    def _dispatch(self, buf: bytearray) -> int:
        """Hand every complete frame in ``buf`` to its channel; returns the bytes used."""
        off = 0
        view = memoryview(buf)
        try:
            while len(buf) - off >= HEADER.size:
                kind, cid, length = HEADER.unpack_from(buf, off)
                end = off + HEADER.size + length
                if end > len(buf):
                    break
                payload = bytes(view[off + HEADER.size:end])
                off = end
                ch = self._channels.get(cid)
                if ch is None:
                    continue  # a HELLO answering a retry, or a channel already closed
                if kind in (STDOUT, STDERR):
                    ch._push(Event("stdout" if kind == STDOUT else "stderr", payload))
                elif kind == EXIT:
                    signaled, value = struct.unpack("<II", payload[:8])
                    ch._push(Event("exit", code=128 + value if signaled else value))
                elif kind == CREDIT:
                    ch._grant(struct.unpack("<I", payload[:4])[0])
                elif kind == ERROR:
                    ch._push(Event("error", payload))
                elif kind == FS_DONE:
                    ch._push(Event("fs", payload))
                elif kind not in (NOP, HELLO):
                    raise VMError(f"the guest agent sent an unknown frame type {kind}")
        finally:
            view.release()
        return off


class FilePut:
    """One regular file written into the guest by the agent itself (protocol 1.3 FS ``put``).

    The request names the target, mode, mtime and size; ``write`` sends the bytes, ``finish``
    ends the stream and waits until the agent has set the mode and mtime (and fsynced, if asked)
    and renamed its temporary file into place. ``abort`` (or a connection that breaks, or a
    stream shorter or longer than ``size``) makes the agent remove the temporary file: the
    target is either the whole new file or what it was before. A ``path`` that is a directory
    receives the file as ``name`` inside it. Failures raise PutError."""

    def __init__(self, conn: AgentConnection, path: str, *, name: str, mode: int,
                 mtime_ns: int, size: int, fsync: bool = False) -> None:
        if conn.minor < PUT_MINOR:
            raise AgentTooOld(f"the guest agent speaks protocol 1.{conn.minor}; writing a file "
                              f"needs 1.{PUT_MINOR}")
        fields = [f"path={path}", f"name={name}", f"mode={mode & 0o7777:o}",
                  f"mtime={mtime_ns // 10**9}.{mtime_ns % 10**9:09d}", f"size={size}",
                  f"fsync={int(fsync)}"]
        if any("\0" in f for f in fields):
            raise VMError("a path contains a NUL byte")
        self.conn = conn
        self.ch = conn.new_channel()
        self.size, self.sent = size, 0
        self._answer: bytes | None = None
        self._done = False
        try:
            conn.send(FS, self.ch.id, b"put\0" + b"".join(
                f.encode("utf-8", "surrogateescape") + b"\0" for f in fields))
        except BaseException:
            self.ch.close()
            raise

    def _check(self, timeout: float | None) -> bytes | None:
        if self._answer is None:
            ev = self.ch.next_event(timeout=timeout)
            if ev is not None:
                self._answer = ev.data
        return self._answer

    def _raise_answer(self, answer: bytes) -> None:
        text = answer.decode("utf-8", "replace")
        if text.startswith("ok"):
            raise VMError("the guest agent took the file before it was complete")
        _, _, rest = text.partition(" ")
        errname, _, message = rest.partition(" ")
        raise PutError(errname, message or text)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send the next bytes; raises PutError as soon as the agent has given up (no space,
        no such directory, ...)."""
        answer = self._check(0)
        if answer is not None:
            self._raise_answer(answer)
        view = memoryview(data)
        for off in range(0, len(view), PUT_CHUNK):
            piece = view[off:off + PUT_CHUNK]
            self.conn.send_data(STDIN, self.ch.id, piece)
            self.sent += len(piece)

    def finish(self) -> int:
        """End the stream and wait for the file to be in place; returns its size."""
        try:
            if self._answer is None:
                self.conn.send(STDIN, self.ch.id, b"")
            answer = self._check(None)
            assert answer is not None
            text = answer.decode("utf-8", "replace")
            if not text.startswith("ok "):
                self._raise_answer(answer)
            return int(text.split()[1])
        finally:
            self._release()

    def abort(self) -> None:
        """Give up: the agent removes its temporary file (CLOSE)."""
        if self._done:
            return
        if self._answer is None:
            try:
                self.conn.send(CLOSE, self.ch.id)
            except VMError:
                pass
        self._release()

    def _release(self) -> None:
        if not self._done:
            self._done = True
            self.ch._closed = True  # the agent forgets a put once it answered, or on CLOSE
            self.conn.forget(self.ch)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


def _lock_agent(sock_path: str, deadline: float) -> int:
    """Take the VM's agent lock: QEMU serves one connection at a time, so vers processes take
    turns, each holding it while it has a command running."""
    fd = os.open(sock_path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise GuestTimeout("another vers process kept the VM's guest agent busy "
                                   "(a `vers connect` session?)") from None
            time.sleep(0.005)


def _handshake(sock: socket.socket, deadline: float) -> tuple[int, bytearray]:
    """Send HELLO until the agent answers; returns its minor version and what followed."""
    buf = bytearray()
    sent = 0
    next_send = 0.0
    while True:
        idx = buf.find(MAGIC)
        nl = buf.find(b"\n", idx) if idx >= 0 else -1
        if nl >= 0:
            version = bytes(buf[idx + len(MAGIC):nl]).decode(errors="replace")
            if version.split(".")[0] != str(PROTOCOL_MAJOR):
                raise VMError(f"the guest agent speaks protocol {version}, this vers speaks "
                              f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}: rebuild the image "
                              "(vers image build) or use the vers that made it")
            minor = version.split(".")[1] if "." in version else "0"
            return (int(minor) if minor.isdigit() else 0), buf[nl + 1:]
        if _LEGACY_REPLY.search(buf):
            raise LegacyAgent("the guest runs the agent of an earlier vers")
        if len(buf) > 1 << 16:
            del buf[:-(1 << 12)]
        now = time.monotonic()
        if now >= deadline:
            raise VMError("the guest agent did not answer (guest not booted, or hung?)")
        if now >= next_send:
            # the second try pads: it completes a frame an earlier connection cut short
            sock.settimeout(max(0.01, deadline - now))
            try:
                sock.sendall((PADDING if sent == 1 else b"") + HELLO_FRAME)
            except OSError as exc:
                raise VMError(f"cannot talk to the guest agent: {exc}") from exc
            sent += 1
            next_send = now + HELLO_RETRY
        sock.settimeout(max(0.001, min(next_send, deadline) - now))
        try:
            data = sock.recv(1 << 16)
        except TimeoutError:
            continue
        except OSError as exc:
            raise VMError(f"the guest agent connection broke: {exc}") from exc
        if not data:
            raise VMError("the guest agent connection closed (VM gone?)")
        buf += data


_shared: dict[str, tuple[AgentConnection, int]] = {}
_shared_lock = threading.Lock()


def acquire(sock_path: str, timeout: float) -> AgentConnection:
    """This process's connection to the agent at ``sock_path`` (made if needed); ``release`` it
    once done."""
    with _shared_lock:
        found = _shared.get(sock_path)
        if found is not None and found[0].alive:
            _shared[sock_path] = (found[0], found[1] + 1)
            return found[0]
        conn = AgentConnection(sock_path)
        conn.connect(timeout)
        _shared[sock_path] = (conn, 1)
        return conn


def release(conn: AgentConnection) -> None:
    """One channel less; the last one closes the connection, so other processes get their turn."""
    with _shared_lock:
        found = _shared.get(conn.sock_path)
        if found is None or found[0] is not conn:
            conn.close()
            return
        if found[1] > 1:
            _shared[conn.sock_path] = (conn, found[1] - 1)
            return
        del _shared[conn.sock_path]
    conn.close()


def open_channel(sock_path: str, argv: list[str], *, env: dict[str, str] | None = None,
                 cwd: str | None = None, stdin: bool = True, pty: bool = False,
                 rows: int = 24, cols: int = 80, timeout: float = 30.0) -> Channel:
    """Start ``argv`` in the guest (``timeout`` bounds reaching the agent, not the command)."""
    if not argv:
        raise VMError("nothing to run")
    fields = [f"argv={a}" for a in argv] + [f"env={k}={v}" for k, v in (env or {}).items()]
    fields += [f"stdin={int(stdin)}", f"pty={int(pty)}", f"rows={rows}", f"cols={cols}"]
    if cwd:
        fields.append(f"cwd={cwd}")
    if any("\0" in f for f in fields):
        raise VMError("a command, environment variable or directory contains a NUL byte")
    spec = b"".join(f.encode("utf-8", "surrogateescape") + b"\0" for f in fields)
    conn = acquire(sock_path, timeout)
    try:
        return conn.open(spec)
    except BaseException:
        release(conn)
        raise


def run(sock_path: str, argv: list[str], *, input: bytes | None = None,
        env: dict[str, str] | None = None, cwd: str | None = None,
        timeout: float = 60.0) -> ExecResult:
    """Run ``argv`` in the guest to completion and collect its output, like subprocess.run.

    After ``timeout`` seconds the command is killed and GuestTimeout raised."""
    deadline = time.monotonic() + timeout
    out: list[bytes] = []
    err: list[bytes] = []
    with open_channel(sock_path, argv, env=env, cwd=cwd, stdin=input is not None,
                      timeout=timeout) as ch:
        if input is not None:
            feeder = threading.Thread(target=_feed, args=(ch, input), daemon=True)
            feeder.start()
        while True:
            ev = ch.next_event(timeout=max(0.0, deadline - time.monotonic()))
            if ev is None:
                ch.signal(signal_mod.SIGKILL)
                raise GuestTimeout(f"guest command did not finish within {timeout:g}s: "
                                   f"{shlex.join(argv)}")
            if ev.kind == "exit":
                return ExecResult(ev.code, b"".join(out), b"".join(err))
            (out if ev.kind == "stdout" else err).append(ev.data)


def _feed(ch: Channel, data: bytes) -> None:
    try:
        ch.write(data)
        ch.close_stdin()
    except VMError:
        pass  # the channel reports the loss to its reader


def guest_exec(sock_path: str, script: str, timeout: float = 60.0) -> ExecResult:
    """Run ``script`` with /bin/sh in the guest and wait for its exit code."""
    try:
        return run(sock_path, ["/bin/sh", "-c", script], timeout=timeout)
    except LegacyAgent:
        return legacy_exec(sock_path, script, timeout)


def wait_agent(sock_path: str, timeout: float, alive: object = None) -> None:
    """Block until the agent answers a no-op, or raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if callable(alive) and not alive():
            raise VMError("QEMU exited while the guest was booting")
        try:
            res = guest_exec(sock_path, "true", timeout=min(5.0, deadline - time.monotonic()))
            if res.returncode == 0:
                return
        except VMError as exc:
            last = exc
            time.sleep(0.1)
    raise VMError(f"guest agent not ready after {timeout:.0f}s ({last})")


# -- the shell agent of earlier versions ----------------------------------------------------

def legacy_exec(sock_path: str, script: str, timeout: float = 60.0) -> ExecResult:
    """The one-line protocol of the shell agent that guests restored from commits of earlier
    versions still run: ``ID BASE64(script)`` in, base64 blocks of stdout and stderr and an
    ``ID END RC`` line out. No stdin, no streaming."""
    deadline = time.monotonic() + timeout
    rid = secrets.token_hex(6)
    fd = _lock_agent(sock_path, deadline)
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
            except OSError as exc:
                raise VMError(f"the guest agent connection broke: {exc}") from exc
            if not chunk:
                raise VMError("the guest agent connection closed (VM gone?)")
            buf += chunk
    finally:
        sock.close()
        os.close(fd)
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
