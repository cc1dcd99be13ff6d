"""Lazily-backed VM memory and disk: the client side, for the VMM.

``FuseBacking`` gives QEMU a file whose initial content is a commit's image, read page by page from
the store when the guest first touches a page, and whose writes are kept by the repository's backing
daemon (``vers.fuse.backing_daemon``). Use it as ``-object memory-backend-file,share=on,
mem-path=<path>`` for RAM, or as a raw disk file.

Lifecycle, as the VMM drives it (the VM must be paused around ``dirty_pages`` and ``branch``)::

    b = FuseBacking(repo)                       # or FuseBacking(repo, image="disk")
    path = b.prepare(vm_dir, size, commit)      # commit=None: an all-zero image (fresh boot)
    ... run QEMU on path ...
    dirty = b.dirty_pages()                     # flushes the kernel's dirty pages, then asks
    cid = repo.snapshot(images={"memory": path, ...}, dirty={"memory": dirty}, ...)
    b.committed()                               # next dirty set starts empty
    child = b.branch(child_vm_dir)              # page-level copy-on-write, no memory copied
    b.close()                                   # removes the file (after QEMU has exited)

Flushing: QEMU writes guest RAM through a MAP_SHARED mapping, so new data sits in the kernel's page
cache until written back. ``fsync`` on *another* descriptor of the same FUSE file makes the kernel
write back every dirty page of the inode (FUSE WRITE requests, which the daemon records) before
FUSE FSYNC is sent, so after ``flush()`` the daemon's dirty set is complete. docs/fuse.md has the
measurements.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Any, Self

from vers.errors import FuseError
from vers.fuse import mount as mnt

PAGE_SIZE = 4096
CONTROL_TIMEOUT = 60.0


class BackingDaemon:
    """The repository's backing daemon, started on first use (one per repository)."""

    def __init__(self, repo: Any) -> None:
        self.repo = repo
        self.state_dir = Path(repo.vers_dir) / "fuse" / "backing"
        self.mountpoint = self.state_dir / "mnt"
        self.sock_path = self.state_dir / "ctl.sock"
        self.log_path = self.state_dir / "daemon.log"

    def ensure_running(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two VMs starting at once start one daemon
            if self._ping():
                return
            mnt.clean_stale(self.mountpoint)
            if mnt.is_mounted(self.mountpoint):
                mnt.detach(self.mountpoint, lazy=True)
            self.mountpoint.mkdir(exist_ok=True)
            mnt.spawn_daemon(
                ["backing", os.fspath(self.state_dir), os.fspath(self.mountpoint)], self.log_path
            )

    def _ping(self) -> bool:
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
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise FuseError(
                f"the FUSE backing daemon of {self.repo.root} is not running ({exc.strerror}); "
                f"see {self.log_path}"
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


class FuseBacking:
    """One VM image (memory, disk, ...) as a lazily-read, dirty-tracked file. See module docstring."""

    def __init__(self, repo: Any, image: str = "memory", daemon: BackingDaemon | None = None) -> None:
        self.repo = repo
        self.image = image
        self.daemon = daemon or BackingDaemon(repo)
        self.name: str | None = None
        self.size = 0

    @property
    def path(self) -> Path:
        if self.name is None:
            raise FuseError("backing file not prepared")
        return self.daemon.mountpoint / self.name

    def prepare(self, vm_dir: str | os.PathLike[str], size: int, commit: str | None = None) -> Path:
        """Create the file for ``vm_dir``: ``commit``'s image, or zeros; return its path."""
        if size <= 0 or size % PAGE_SIZE:
            raise FuseError(f"image size {size} is not a positive multiple of {PAGE_SIZE}")
        self.daemon.ensure_running()
        name = f"{Path(vm_dir).name}.{self.image}"
        self.daemon.request(
            "create", name=name, size=size, repo=os.fspath(self.repo.root),
            commit=commit, image=self.image,
        )
        self.name, self.size = name, size
        return self.path

    def flush(self) -> None:
        """Make the daemon see every page written so far (fsync on a second descriptor)."""
        mnt.check_alive(self.daemon.mountpoint, "FUSE backing daemon")
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise FuseError(f"cannot open backing file {self.path}: {exc.strerror}") from exc
        try:
            os.fsync(fd)
        except OSError as exc:
            raise FuseError(f"flushing {self.path} failed: {exc.strerror}") from exc
        finally:
            os.close(fd)

    def dirty_runs(self) -> list[tuple[int, int]]:
        """(first page, count) runs written since prepare/committed; flushes first."""
        self.flush()
        return [(int(a), int(n)) for a, n in self._request("dirty")["runs"]]

    def dirty_pages(self) -> list[int]:
        """Page indices written since the image's last commit (the ``dirty=`` of repo.snapshot)."""
        out: list[int] = []
        for first, count in self.dirty_runs():
            out.extend(range(first, first + count))
        return out

    def committed(self) -> None:
        """The current content has been committed: the next dirty set starts empty."""
        self._request("mark_clean")

    def branch(self, child_vm_dir: str | os.PathLike[str]) -> FuseBacking:
        """A child with the same content right now; later writes on either side stay private."""
        self.flush()
        child = FuseBacking(self.repo, self.image, self.daemon)
        name = f"{Path(child_vm_dir).name}.{self.image}"
        self._request("branch", child=name)
        child.name, child.size = name, self.size
        return child

    def stats(self) -> dict[str, int]:
        return {k: int(v) for k, v in self._request("stats").items()}

    def close(self) -> None:
        """Drop the file (its overlay is freed once nothing has it open)."""
        if self.name is None:
            return
        try:
            self._request("remove")
        except FuseError:
            pass  # daemon already gone: nothing left to free
        self.name = None

    def _request(self, op: str, **args: Any) -> dict[str, Any]:
        if self.name is None:
            raise FuseError("backing file not prepared")
        return self.daemon.request(op, name=self.name, **args)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
