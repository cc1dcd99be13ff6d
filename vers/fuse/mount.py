"""Mount points and daemons: start one, know when it is ready, find a dead one, clean up after it.

A FUSE daemon that dies leaves its mount point in place, answering every access with ENOTCONN
("Transport endpoint is not connected"). vers must never hang or crash on that, so every entry
point here first checks the mount point's state, turns a dead mount into a clear ``FuseError``, and
``mount`` lazily detaches a stale one (``fusermount3 -u -z``) before mounting again.

Starting: a daemon is ``python -m MODULE ...`` in its own session (``vers.fuse.daemon`` for the
inspection mount, ``vers.vmm.memory.daemon`` for VM memory; ``vers.fuse.serve`` is what both
run). It reports ``ready`` (or ``error: ...``) on a pipe once ``pyfuse3.init`` has mounted, so
``vers mount`` returns only when the files are visible, and a failure to mount is reported with
the daemon's reason.
"""

from __future__ import annotations

import errno
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from vers.errors import Busy, FuseError

READY_TIMEOUT = 30.0
PROBE_TIMEOUT = 10.0


def _fusermount() -> str:
    exe = shutil.which("fusermount3") or shutil.which("fusermount")
    if exe is None:
        raise FuseError("fusermount3 not found: install the 'fuse3' package")
    return exe


def mounted_fuse_points() -> dict[str, str]:
    """{mount point: fs type} for FUSE mounts in this mount namespace."""
    out: dict[str, str] = {}
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype = right.split(" ", 1)[0]
            if fstype.startswith("fuse"):
                mnt = left.split(" ")[4].replace("\\040", " ").replace("\\011", "\t")
                mnt = mnt.replace("\\012", "\n").replace("\\134", "\\")
                out[mnt] = fstype
    return out


def canonical(mountpoint: str | os.PathLike[str]) -> str:
    """The path mountinfo shows, resolving symlinks in the parent only: resolving the mount point
    itself would stat it, and its daemon may be dead or stuck."""
    path = os.path.abspath(mountpoint)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def is_mounted(mountpoint: str | os.PathLike[str]) -> bool:
    """From mountinfo only (never touches the mount)."""
    return canonical(mountpoint) in mounted_fuse_points()


def is_stale(mountpoint: str | os.PathLike[str]) -> bool:
    """True if a FUSE mount is here but its daemon is gone (ENOTCONN).

    statvfs, not stat: FUSE_STATFS always goes to the daemon, while the kernel answers stat from
    its attribute cache for a while after the daemon died.
    """
    result: list[BaseException | None] = []

    def probe() -> None:
        try:
            os.statvfs(mountpoint)
            result.append(None)
        except OSError as exc:
            result.append(exc)

    # In a thread with a timeout: a daemon that is alive but stuck (stopped, deadlocked) would
    # otherwise block this call, and vers with it, forever.
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(PROBE_TIMEOUT)
    if not result:
        raise FuseError(f"the FUSE daemon serving {mountpoint} does not respond "
                        f"(no answer in {PROBE_TIMEOUT:.0f} s); 'vers umount --lazy {mountpoint}' "
                        "detaches it")
    exc = result[0]
    return isinstance(exc, OSError) and exc.errno == errno.ENOTCONN


def check_alive(mountpoint: str | os.PathLike[str], what: str = "FUSE daemon") -> None:
    """Raise a clear FuseError if the daemon behind ``mountpoint`` has died."""
    if is_stale(mountpoint):
        raise FuseError(
            f"the {what} serving {mountpoint} is not running (transport endpoint not connected); "
            f"run 'vers umount {mountpoint}' or mount again to clean up"
        )


def detach(mountpoint: str | os.PathLike[str], lazy: bool = False) -> None:
    """Unmount; ``lazy`` also works when the daemon is dead or files are still open. Without it
    a mount with open files is ``Busy`` (fusermount3's message is kept: ``-q`` would hide it)."""
    args = [_fusermount(), "-u"] + (["-z"] if lazy else []) + [os.fspath(mountpoint)]
    res = subprocess.run(args, check=False, stdin=subprocess.DEVNULL, capture_output=True,
                         text=True)
    if res.returncode != 0:
        msg = (res.stderr or res.stdout).strip() or f"exit {res.returncode}"
        if "busy" in msg.lower():
            raise Busy(f"cannot unmount {mountpoint}: files are open (close them, or detach "
                       "it lazily with 'vers umount --lazy')")
        raise FuseError(f"cannot unmount {mountpoint}: {msg}")


def clean_stale(mountpoint: str | os.PathLike[str]) -> bool:
    """Detach a dead daemon's mount at ``mountpoint``; True if there was one."""
    if is_stale(mountpoint):
        detach(mountpoint, lazy=True)
        return True
    return False


def prepare_mountpoint(mountpoint: str | os.PathLike[str]) -> Path:
    """Check (and clean) a directory before mounting on it."""
    mnt = Path(mountpoint)
    clean_stale(mnt)
    if is_mounted(mnt):
        raise FuseError(f"{mnt} is already a mount point (run 'vers umount {mnt}' first)")
    if not mnt.exists() and not mnt.is_symlink():
        try:
            mnt.mkdir(parents=True)  # like `git clone DIR`: a missing directory is made
        except OSError as exc:
            raise FuseError(f"cannot create mount point {mnt}: {exc.strerror}") from exc
    if not mnt.is_dir():
        raise FuseError(f"mount point {mnt} is not a directory")
    return mnt.resolve()


def spawn_daemon(module: str, args: Iterable[str], log_path: Path,
                 timeout: float = READY_TIMEOUT) -> int:
    """Start ``python -m MODULE ARGS`` detached; return its pid once it says ready."""
    read_fd, write_fd = os.pipe()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "--ready-fd", str(write_fd), *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            pass_fds=(write_fd,),
            start_new_session=True,  # a Ctrl-C in the shell that ran `vers mount` must not kill it
            close_fds=True,
        )
    os.close(write_fd)
    try:
        message = _read_ready(read_fd, proc, timeout)
    finally:
        os.close(read_fd)
    if message != "ready":
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        tail = _tail(log_path)
        detail = message or f"daemon exited with status {proc.returncode}"
        raise FuseError(f"mount failed: {detail}" + (f"\n{tail}" if tail else ""))
    return proc.pid


def _read_ready(fd: int, proc: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            return f"daemon not ready after {timeout:.0f} s"
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:  # daemon closed the pipe (exited) without saying ready
                proc.wait()
                break
            data += chunk
    return data.decode(errors="replace").strip()


def _tail(path: Path, n: int = 10) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def wait_unmounted(mountpoint: str | os.PathLike[str], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while is_mounted(mountpoint):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def terminate_pid(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM, bounded wait, then SIGKILL of exactly this pid."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
