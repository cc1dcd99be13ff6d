"""Lazily-backed VM memory and disk files: the client side of the backing daemon.

A backing file's initial content is a commit's image, read page by page from the store when the
guest first touches a page; its writes are kept by the backing daemon
(``vers.fuse.backing_daemon``), which also records which pages were written. QEMU maps it with
``-object memory-backend-file,share=on,mem-path=<path>`` (or opens it as a raw disk).

One daemon serves every backing file of a user on this machine (state in ``$VERS_FUSE_DIR``, by
default ``/dev/shm/vers-fuse-<uid>``): parent and child of a branch must live in the same daemon to
share frozen layers, and a VM's record must be able to find its file again from any later
``vers`` command, so the handle (``BackingFile``) is rebuilt from (state dir, name) alone.

Flushing: QEMU writes guest RAM through a MAP_SHARED mapping, so new data sits in the kernel's page
cache until written back. ``fsync`` on *another* descriptor of the same FUSE file makes the kernel
write back every dirty page of the inode (FUSE WRITE requests, which the daemon records) before
FUSE FSYNC is sent, so after ``flush()`` the daemon's dirty set is complete. Without it, the daemon
saw none of 2,000 freshly written pages (the kernel's writeback waits up to 30 s); see
docs/fuse.md for the measurements.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from vers.errors import FuseError
from vers.fuse import mount as mnt

PAGE_SIZE = 4096
CONTROL_TIMEOUT = 60.0
HEALTH_TIMEOUT = 10.0  # a ping before touching the mount: a stuck daemon fails here, not in fsync
#: a flush right after another one in this process skips the ping (it costs ~0.5-1 ms, and the
#: second flush of a commit runs inside the guest's pause)
HEALTH_FRESH = 1.0
_last_ping: dict[Path, float] = {}


def default_state_dir() -> Path:
    env = os.environ.get("VERS_FUSE_DIR")
    if env:
        return Path(env)
    # Overlays hold guest RAM pages: keep them in RAM-backed storage when the machine has it.
    parent = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    return parent / f"vers-fuse-{os.getuid()}"


class BackingDaemon:
    """The backing daemon for one state directory, started on first use."""

    def __init__(self, state_dir: str | os.PathLike[str] | None = None) -> None:
        self.state_dir = Path(state_dir) if state_dir else default_state_dir()
        self.mountpoint = self.state_dir / "mnt"
        self.sock_path = self.state_dir / "ctl.sock"
        self.log_path = self.state_dir / "daemon.log"

    def ensure_running(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.state_dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two VMs starting at once start one daemon
            if self.alive():
                return
            mnt.clean_stale(self.mountpoint)
            if mnt.is_mounted(self.mountpoint):
                mnt.detach(self.mountpoint, lazy=True)
            self.mountpoint.mkdir(exist_ok=True)
            mnt.spawn_daemon(
                ["backing", os.fspath(self.state_dir), os.fspath(self.mountpoint)], self.log_path
            )

    def alive(self) -> bool:
        try:
            self.request("ping", timeout=5.0)
        except FuseError:
            return False
        return not mnt.is_stale(self.mountpoint)

    def request(self, op: str, timeout: float = CONTROL_TIMEOUT, **args: Any) -> dict[str, Any]:
        """One control request. A dead or stuck daemon is a FuseError, never a hang."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(os.fspath(self.sock_path))
                s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
                data = b""
                while not data.endswith(b"\n"):
                    chunk = s.recv(1 << 20)
                    if not chunk:
                        break
                    data += chunk
        except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, BrokenPipeError) as exc:
            raise FuseError(
                f"the FUSE backing daemon ({self.state_dir}) is not running ({exc.strerror}); "
                f"its log: {self.log_path}"
            ) from exc
        except TimeoutError as exc:
            raise FuseError(f"the FUSE backing daemon did not answer '{op}' in {timeout:.0f} s") from exc
        except OSError as exc:
            raise FuseError(f"the FUSE backing daemon failed on '{op}': {exc}") from exc
        if not data:
            raise FuseError(f"the FUSE backing daemon closed the connection during '{op}'")
        reply = json.loads(data)
        if not reply.pop("ok", False):
            raise FuseError(f"FUSE backing daemon: {reply.get('error', 'unknown error')}")
        return dict(reply)

    def shutdown(self) -> None:
        """Stop the daemon (its files must no longer be in use) and unmount."""
        try:
            pid = self.request("ping", timeout=5.0)["pid"]
            self.request("shutdown", timeout=5.0)
        except FuseError:
            mnt.clean_stale(self.mountpoint)
            return
        if not mnt.wait_unmounted(self.mountpoint, timeout=10.0):
            mnt.terminate_pid(pid)
        mnt.clean_stale(self.mountpoint)


def base_of_image(image: Any) -> dict[str, Any] | None:
    """The daemon-side description of a committed image (``repo.open_image(...)``'s result)."""
    reader = getattr(image, "reader", None)
    if reader is None or not hasattr(reader, "tree"):
        return None
    from vers.objects.model import hash_bytes

    env = getattr(reader.store, "env", None)
    if env is None:
        return None
    vers_dir = Path(env.path()).parent
    return {"repo": os.fspath(vers_dir), "tree": hash_bytes(reader.tree.serialize()).hex(),
            "image": getattr(image, "name", "")}


class BackingFile:
    """Handle on one backing file; cheap to rebuild from (daemon, name, size) in any process."""

    def __init__(self, daemon: BackingDaemon, name: str, size: int) -> None:
        self.daemon = daemon
        self.name = name
        self.size = size

    @classmethod
    def create(
        cls,
        daemon: BackingDaemon,
        name: str,
        size: int,
        base: dict[str, Any] | None = None,
    ) -> BackingFile:
        """A new file: ``base`` = {"repo": path, "commit": id, "image": name} (or "tree": id), or
        None for zeros. Nothing is read from the store until someone reads a page."""
        if size <= 0 or size % PAGE_SIZE:
            raise FuseError(f"image size {size} is not a positive multiple of {PAGE_SIZE}")
        for attempt in (1, 2):
            daemon.ensure_running()
            try:
                daemon.request("create", name=name, size=size, base=base)
                break
            except FuseError as exc:
                # An idle daemon may exit between our ping and our request: start one and retry.
                if attempt == 2 or "not running" not in str(exc):
                    raise
        return cls(daemon, name, size)

    def placeholder(self, name: str) -> BackingFile:
        """An empty file of our size in our (running) daemon, to be filled later by
        ``branch(name, into_placeholder=True)``; it may be opened and mapped meanwhile, but not
        read or written."""
        self.daemon.request("create", name=name, size=self.size, base=None, placeholder=True)
        return BackingFile(self.daemon, name, self.size)

    @property
    def path(self) -> Path:
        return self.daemon.mountpoint / self.name

    def flush(self) -> None:
        """Make the daemon see every page written so far (fsync on a second descriptor)."""
        # The socket first (it has a timeout): a stuck daemon would block the fsync for good.
        if time.monotonic() - _last_ping.get(self.daemon.state_dir, -HEALTH_FRESH) >= HEALTH_FRESH:
            self.daemon.request("ping", timeout=HEALTH_TIMEOUT)
            _last_ping[self.daemon.state_dir] = time.monotonic()
        mnt.check_alive(self.daemon.mountpoint, "FUSE backing daemon")
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise self._os_error("open", exc) from exc
        try:
            os.fsync(fd)
        except OSError as exc:
            raise self._os_error("flush", exc) from exc
        finally:
            os.close(fd)

    def _os_error(self, what: str, exc: OSError) -> FuseError:
        if exc.errno == errno.ENOTCONN:
            return FuseError(
                f"the FUSE backing daemon serving {self.path} is not running; "
                f"its log: {self.daemon.log_path}"
            )
        return FuseError(f"cannot {what} backing file {self.path}: {exc.strerror}")

    def dirty_runs(self) -> list[tuple[int, int]] | None:
        """(first page, count) runs written since the last commit, or None if the file never had
        a commit under it (then every page must be read). Flushes first."""
        self.flush()
        found = self._request("dirty")["runs"]
        return None if found is None else [(int(a), int(n)) for a, n in found]

    def dirty_pages(self) -> list[int] | None:
        runs = self.dirty_runs()
        return None if runs is None else expand(runs)

    def committed(self) -> None:
        """The current content has been committed: the next dirty set starts empty."""
        self._request("mark_clean")

    def capture(self, capture_name: str | None = None) -> tuple[BackingFile, list[int] | None]:
        """With the writer paused: freeze the content now into a read-only twin (no copy), which
        owns the dirty pages; the live file starts a new dirty set and may resume at once."""
        self.flush()
        twin = capture_name or f"{self.name}.capture"
        runs = self._request("capture", capture=twin)["runs"]
        return BackingFile(self.daemon, twin, self.size), None if runs is None else expand(runs)

    def capture_done(self, ok: bool) -> None:
        """The commit of the last capture landed (``ok``) or not (its dirty pages come back)."""
        self._request("capture_done", ok=ok)

    def branch(self, child_name: str, into_placeholder: bool = False) -> BackingFile:
        """A child with the same content right now; later writes on either side stay private.
        ``into_placeholder``: the child is an existing, untouched placeholder file."""
        self.flush()
        self._request("branch", child=child_name, into_placeholder=into_placeholder)
        return BackingFile(self.daemon, child_name, self.size)

    def stats(self) -> dict[str, int]:
        return {k: int(v) for k, v in self._request("stats").items()}

    def remove(self) -> None:
        """Drop the file (its overlay is freed once nothing has it open)."""
        try:
            self._request("remove")
        except FuseError:
            pass  # daemon gone or file already removed: nothing left to free

    def _request(self, op: str, **args: Any) -> dict[str, Any]:
        return self.daemon.request(op, name=self.name, **args)


def expand(runs: list[tuple[int, int]]) -> list[int]:
    out: list[int] = []
    for first, count in runs:
        out.extend(range(first, first + count))
    return out
