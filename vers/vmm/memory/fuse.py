"""``FuseMemoryBacking``: guest RAM (and restored disks) as lazily-read, write-tracking FUSE files.

This is the client side of the backing daemon (``vers.vmm.memory.daemon``). A backing file's
initial content is a commit's image, read page by page from the store when the guest first touches
a page; its writes are kept by the daemon, which also records which pages were written. QEMU maps
it with ``-object memory-backend-file,share=on,mem-path=<path>`` (or opens it as a raw disk).

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
import importlib.util
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vers.errors import FuseError, RemoteError, VersError, VMError
from vers.fuse import mount as mnt
from vers.objects.imagetree import ImageFile
from vers.objects.model import PAGE_SIZE, hash_bytes
from vers.vmm.memory.base import MemoryBacking
from vers.vmm.private import private_dir

if TYPE_CHECKING:
    from vers.repo import Repo

DAEMON_MODULE = "vers.vmm.memory.daemon"
#: what the daemon answers to "ping" as "protocol"; raised whenever the daemon's requests or the
#: way it serves files change, so a daemon left running by an older vers is not used for new files
#: (a daemon too old to say is protocol 1; 3 added ``restore_from_remote`` and a capture's
#: ``pages_file``)
DAEMON_PROTOCOL = 3
CONTROL_TIMEOUT = 60.0
HEALTH_TIMEOUT = 10.0  # a ping before touching the mount: a stuck daemon fails here, not in fsync
#: a flush right after another one in this process skips the ping (it costs ~0.5-1 ms, and the
#: second flush of a commit runs inside the guest's pause)
HEALTH_FRESH = 1.0
_last_ping: dict[Path, float] = {}
log = logging.getLogger("vers.vmm.memory.fuse")


def default_state_dir() -> Path:
    env = os.environ.get("VERS_FUSE_DIR")
    if env:
        return Path(env)
    # Overlays hold guest RAM pages: keep them in RAM-backed storage when the machine has it.
    parent = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    return parent / f"vers-fuse-{os.getuid()}"


class ReportedError(VersError):
    """An error the daemon met doing something for us (reading a commit from a remote for a
    restore), reported as if this process had met it: its message and exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class BackingDaemon:
    """The backing daemon for one state directory, started on first use."""

    def __init__(self, state_dir: str | os.PathLike[str] | None = None) -> None:
        self.state_dir = Path(state_dir) if state_dir else default_state_dir()
        self.mountpoint = self.state_dir / "mnt"
        self.sock_path = self.state_dir / "ctl.sock"
        self.log_path = self.state_dir / "daemon.log"

    def ensure_running(self) -> None:
        """A daemon with its mount in place, started if none runs. A mount is only ever
        detached when its daemon is dead: a daemon that is merely slow to answer still serves
        the RAM of running VMs (of any repository of this user), and detaching its mount would
        leave them all uncommittable."""
        private_dir(self.state_dir)  # guest RAM pages and a control socket: ours only
        with open(self.state_dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two VMs starting at once start one daemon
            try:
                pong = self.request("ping", timeout=HEALTH_TIMEOUT)
            except FuseError as exc:
                if "not running" not in str(exc):
                    raise  # alive but not answering: leave it and its mount alone
            else:
                try:
                    if int(pong.get("protocol", 1)) != DAEMON_PROTOCOL:
                        self._replace_old(pong)
                    elif self.lost() is None:
                        return
                    else:
                        self._restart_if_idle()
                except FuseError as exc:
                    if "not running" not in str(exc):
                        raise
                    # It went away since the ping (a daemon whose mount was detached ends when
                    # the last mapping of its files does): make sure it is gone, start another.
                    mnt.terminate_pid(int(pong["pid"]))
            mnt.clean_stale(self.mountpoint)  # a dead daemon's mount (ENOTCONN) only
            if mnt.is_mounted(self.mountpoint):
                raise FuseError(f"a FUSE file system is mounted at {self.mountpoint} but no "
                                f"backing daemon answers on {self.sock_path}: not using it")
            self.mountpoint.mkdir(exist_ok=True)
            mnt.spawn_daemon(
                DAEMON_MODULE, [os.fspath(self.state_dir), os.fspath(self.mountpoint)],
                self.log_path,
            )

    def _restart_if_idle(self) -> None:
        """The daemon answers but its mount is gone: with no files it is stopped (a fresh one is
        started); with files it keeps serving the VMs that have them mapped, and that is an
        error for whoever wanted a new file."""
        files = self.request("list")["files"]
        if files:
            raise FuseError(self.lost() or "the FUSE backing daemon lost its mount")
        pid = self.request("ping")["pid"]
        self.request("shutdown", timeout=5.0)
        mnt.terminate_pid(pid)

    def _replace_old(self, pong: dict[str, Any]) -> None:
        """The daemon was started by another version of vers: stop it if it serves no file (a
        new one is started), else say what to do. Its files stay usable by the VMs that have
        them: only new files need a daemon of this version."""
        files = self.request("list")["files"]
        theirs = int(pong.get("protocol", 1))
        if files:
            vms = sorted({name.split(".")[0] for name in files})
            raise FuseError(
                f"the FUSE backing daemon (pid {pong['pid']}, {self.state_dir}) was started by "
                f"another version of vers (protocol {theirs}, this one speaks "
                f"{DAEMON_PROTOCOL}) and still serves {len(files)} files of "
                f"{len(vms)} VMs ({', '.join(vms)}): commit and `vers kill` them with the vers "
                f"that started them, then retry (the old daemon exits once it is idle)")
        log.info("replacing the idle FUSE backing daemon %s of protocol %d", pong["pid"], theirs)
        self.request("shutdown", timeout=5.0)
        mnt.wait_unmounted(self.mountpoint, timeout=10.0)
        mnt.terminate_pid(int(pong["pid"]))  # gone before a new one binds the socket it unlinks

    def lost(self) -> str | None:
        """Why the daemon's files cannot be used, if so: it answers, but its mount is not there
        (someone detached it). QEMU keeps its mapping, but nothing can open the files again (a
        commit's flush does), and a new file under the bare directory would be a plain file."""
        if mnt.is_mounted(self.mountpoint):
            return None
        return (f"the FUSE backing mount {self.mountpoint} was detached while its daemon still "
                "serves VM memory: those VMs run on but cannot be committed or branched; "
                "`vers kill` them (restore their last commit with `vers run-commit`)")

    def alive(self) -> bool:
        """The daemon answers and its mount is in place and connected."""
        try:
            self.request("ping", timeout=HEALTH_TIMEOUT)
        except FuseError:
            return False
        return self.lost() is None and not mnt.is_stale(self.mountpoint)

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
        except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError,
                BrokenPipeError) as exc:
            raise FuseError(
                f"the FUSE backing daemon ({self.state_dir}) is not running ({exc.strerror}); "
                f"its log: {self.log_path}"
            ) from exc
        except TimeoutError as exc:
            raise FuseError(f"the FUSE backing daemon did not answer '{op}' in "
                            f"{timeout:.0f} s") from exc
        except OSError as exc:
            raise FuseError(f"the FUSE backing daemon failed on '{op}': {exc}") from exc
        if not data:
            raise FuseError(f"the FUSE backing daemon closed the connection during '{op}'")
        reply = json.loads(data)
        if not reply.pop("ok", False):
            error = str(reply.get("error", "unknown error"))
            if reply.get("remote_error"):  # reading a remote for us failed: that is the error
                raise RemoteError(error)
            if isinstance(reply.get("exit_code"), int):
                raise ReportedError(error, reply["exit_code"])
            raise FuseError(f"FUSE backing daemon: {error}")
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


def base_of_image(image: ImageFile) -> dict[str, Any] | None:
    """The daemon-side description of a committed image (``repo.open_image(...)``'s result), or
    None if its store is not a repository on disk the daemon could open."""
    reader = image.reader
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
        #: of a capture twin: a plain file holding its dirty pages at their own offsets (the
        #: daemon's frozen layer), when one file holds them all; read them there, not via FUSE
        self.pages_file: Path | None = None

    @classmethod
    def create(
        cls,
        daemon: BackingDaemon,
        name: str,
        size: int,
        base: dict[str, Any] | None = None,
        mapped: bool = False,
    ) -> BackingFile:
        """A new file: ``base`` = {"repo": path, "commit": id, "image": name} (or "tree": id), or
        None for zeros. Nothing is read from the store until someone reads a page. ``mapped``:
        the file is guest RAM, read only through page faults of a mapping (the daemon then
        trims the kernel's read-around of pages it would have to fetch)."""
        if size <= 0 or size % PAGE_SIZE:
            raise FuseError(f"image size {size} is not a positive multiple of {PAGE_SIZE}")
        for attempt in (1, 2, 3):
            daemon.ensure_running()
            try:
                daemon.request("create", name=name, size=size, base=base, mapped=mapped)
                break
            except FuseError as exc:
                # An idle daemon may exit between our ping and our request, and one that was
                # just told to stop may still hold the socket for a moment: start one and retry.
                if attempt == 3 or "not running" not in str(exc):
                    raise
                time.sleep(0.2 * attempt)
        return cls(daemon, name, size)

    def placeholder(self, name: str) -> BackingFile:
        """An empty file of our size in our (running) daemon, to be filled later by
        ``branch_into``; it may be opened and mapped meanwhile, but not
        read or written."""
        self.daemon.request("create", name=name, size=self.size, base=None, placeholder=True,
                            mapped=True)
        return BackingFile(self.daemon, name, self.size)

    @property
    def path(self) -> Path:
        return self.daemon.mountpoint / self.name

    def flush(self) -> None:
        """Make the daemon see every page written so far (fsync on a second descriptor)."""
        # The socket first (it has a timeout): a stuck daemon would block the fsync for good.
        # A flush within HEALTH_FRESH of a checked one (the second flush of a commit or branch,
        # inside the guest's pause) trusts that check; a daemon that died since fails the open.
        if time.monotonic() - _last_ping.get(self.daemon.state_dir, -HEALTH_FRESH) >= HEALTH_FRESH:
            self.daemon.request("ping", timeout=HEALTH_TIMEOUT)
            lost = self.daemon.lost()
            if lost is not None:
                raise FuseError(lost)
            mnt.check_alive(self.daemon.mountpoint, "FUSE backing daemon")
            _last_ping[self.daemon.state_dir] = time.monotonic()
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
        owns the dirty pages; the live file starts a new dirty set and may resume at once.

        A capture still pending here was left by a commit that died before settling it (the
        caller holds the VM's lock, so no other commit is running): its pages are given back
        first, so this capture holds every page changed since the last commit that landed."""
        self.flush()
        twin = capture_name or f"{self.name}.capture"
        ans = self._request("capture", capture=twin, give_back_pending=True)
        captured = BackingFile(self.daemon, twin, self.size)
        if ans.get("pages_file"):
            captured.pages_file = Path(ans["pages_file"])
        runs = ans["runs"]
        return captured, None if runs is None else expand(runs)

    def capture_done(self, ok: bool) -> None:
        """The commit of the last capture landed (``ok``) or not (its dirty pages come back)."""
        self._request("capture_done", ok=ok)

    def branch(self, child_name: str) -> BackingFile:
        """A child with the same content right now; later writes on either side stay private."""
        self.flush()
        self._request("branch", child=child_name)
        return BackingFile(self.daemon, child_name, self.size)

    def branch_into(self, placeholders: list[str]) -> None:
        """Give existing, untouched placeholder files our content as of now: one flush and one
        request for all of them (a branch of N children does not flush N times in its pause).
        All are checked before any is filled: a refusal leaves every one as it was."""
        self.flush()
        self._request("branch", children=placeholders, into_placeholder=True)

    def stats(self) -> dict[str, int]:
        return {k: int(v) for k, v in self._request("stats").items()}

    def read_error(self) -> str | None:
        """Why a read of this file failed (the first time), if one did."""
        error = self._request("read_error")["error"]
        return None if error is None else str(error)

    def remove(self) -> None:
        """Drop the file (its overlay is freed once nothing has it open)."""
        try:
            self._request("remove")
        except FuseError:
            pass  # daemon gone or file already removed: nothing left to free

    def _request(self, op: str, **args: Any) -> dict[str, Any]:
        return self.daemon.request(op, name=self.name, **args)


class FuseMemoryBacking(MemoryBacking):
    """Guest RAM as a lazily-read, write-tracking FUSE file. State: path, size, name, state_dir.

    Compared with ``ShmMemoryBacking`` (a full copy of RAM in /dev/shm plus a reference copy,
    diffed at commit time): a restore copies nothing (the guest's first touch of a page reads it
    from the store); a commit gets the dirty set from the daemon (it saw every write-back) and
    captures a frozen copy-on-write twin; a branch child is a copy-on-write twin too, so the
    parent's pause does not grow with RAM size.
    """

    kind = "fuse"
    #: fork_begin makes the child's file as an empty placeholder that fork_end fills, so a child
    #: QEMU (started with -incoming, which maps guest RAM but touches no page until the device
    #: state loads) can start up while the parent still runs
    opens_before_fork_end = True
    cheap_fork_begin = True

    @property
    def file(self) -> BackingFile:
        return BackingFile(BackingDaemon(self._state["state_dir"]), self._state["name"], self.size)

    @classmethod
    def unavailable(cls) -> str | None:
        if not os.path.exists("/dev/fuse"):
            return "no /dev/fuse on this machine"
        if not shutil.which("fusermount3"):
            return "fusermount3 not found: install the 'fuse3' package"
        if importlib.util.find_spec("pyfuse3") is None:
            return "pyfuse3 is not installed (pip install pyfuse3; needs libfuse3-dev)"
        return None

    @classmethod
    def create(
        cls, vm_id: str, size: int, source: ImageFile | None = None, where: Path | None = None
    ) -> FuseMemoryBacking:
        """``source``: ``repo.open_image(commit, "memory")`` (read lazily), or None for zeros.
        ``where``: the daemon's state directory (default per user)."""
        why = cls.unavailable()
        if why is not None:
            raise VMError(f"the fuse memory backing is not available: {why}")
        daemon = BackingDaemon(where)
        base = None
        if source is not None:
            base = base_of_image(source)
            if base is None:
                raise VMError("FUSE memory backing needs a committed image as its source")
        try:
            f = BackingFile.create(daemon, f"{vm_id}.memory", size, base, mapped=True)
        except FuseError as exc:
            raise VMError(f"cannot create FUSE memory backing: {exc}") from exc
        return cls({"path": str(f.path), "size": size, "name": f.name,
                    "state_dir": str(daemon.state_dir)})

    def pre_stop(self) -> None:
        """Write back what the guest dirtied so far while it still runs, so that the flush inside
        the pause only has the pages written since (measured at 1% of RAM dirty: 33 ms of pause
        without, 2-3 ms with). An idle guest re-dirties ~250 pages within ~0.1 s, so one flush
        takes ~10 ms whatever came before."""
        self.file.flush()

    def capture(self) -> tuple[Path, list[int] | None]:
        twin, dirty = self.file.capture()
        self._state["capture"] = twin.name
        if dirty is not None and twin.pages_file is not None:
            return twin.pages_file, dirty  # only the dirty pages are read: they are all there
        return twin.path, dirty

    def commit_done(self, ok: bool) -> None:
        if self._state.pop("capture", None) is not None:
            self.file.capture_done(ok)

    def fork_begin(self, vm_id: str) -> FuseMemoryBacking:
        """Guest still running: nothing to pre-copy; the child's file exists from now on as an
        empty placeholder, so its QEMU can start (and map it) before the parent pauses."""
        try:
            f = self.file.placeholder(f"{vm_id}.memory")
        except FuseError as exc:
            raise VMError(f"cannot create the child's FUSE memory backing: {exc}") from exc
        return FuseMemoryBacking({"path": str(f.path), "size": self.size, "name": f.name,
                                  "state_dir": self._state["state_dir"]})

    def fork_end(self, children: list[MemoryBacking]) -> int:
        """Guest stopped: freeze our content under every child's file (copy-on-write). Copies 0
        pages."""
        names = []
        for child in children:
            if not isinstance(child, FuseMemoryBacking):
                raise VMError("a FUSE memory backing can only fork into another FUSE memory "
                              "backing")
            names.append(child._state["name"])
        try:
            self.file.branch_into(names)
        except FuseError as exc:
            raise VMError(f"cannot fork guest RAM into "
                          f"{', '.join(str(c.path) for c in children)}: {exc}") from exc
        return 0

    def stats(self) -> dict[str, int]:
        return self.file.stats()

    def drop_cache(self) -> None:
        """QEMU marks guest RAM ``MADV_HUGEPAGE``, so the kernel reads 4 MiB of the file around
        each first touch of a page, whatever the mount's readahead; the guest maps a fraction
        of it (a branch child that settled held ~80 MiB of its RAM file in the page cache, 20
        MiB of it mapped). ``POSIX_FADV_DONTNEED`` gives back the clean pages nobody maps;
        mapped and dirty pages stay, and a page given back is read from the daemon again (it
        holds every page) when the guest touches it. Best effort: a daemon that does not answer
        is left alone (opening the file would wait for it)."""
        f = self.file
        try:
            f.daemon.request("ping", timeout=HEALTH_TIMEOUT)
            fd = os.open(f.path, os.O_RDONLY | os.O_CLOEXEC)
        except (FuseError, OSError) as exc:
            log.debug("drop_cache %s: %s", f.path, exc)
            return
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError as exc:
            log.debug("drop_cache %s: %s", f.path, exc)
        finally:
            os.close(fd)

    def lost(self) -> str | None:
        daemon = self.file.daemon
        try:
            files = daemon.request("list", timeout=HEALTH_TIMEOUT)["files"]
        except FuseError as exc:
            return f"guest RAM is lost: {exc}"
        if self._state["name"] not in files:
            return (f"guest RAM is lost: the FUSE backing daemon has no file "
                    f"{self._state['name']} (it was restarted?); `vers kill` this VM")
        try:
            error = self.file.read_error()
        except FuseError as exc:
            return f"guest RAM is lost: {exc}"
        if error is not None:
            return (f"guest RAM could not be read from the store ({error}); "
                    "`vers fsck` names what is damaged")
        return daemon.lost()

    def destroy(self) -> None:
        self.file.remove()


DISK_BASE_PREFIX = "disk-"


def _disk_base_name(base: dict[str, Any]) -> str:
    repo_tag = hash_bytes(os.fsencode(base["repo"])).hex()[:8]
    return f"{DISK_BASE_PREFIX}{repo_tag}-{base['tree'][:40]}"


def disk_base(repo: Repo, commit: str, image: str, where: Path | None = None) -> Path:
    """A commit's disk as a lazily-read file on the backing daemon, for QEMU to use read-only
    under a qcow2 overlay: a restore copies nothing up front, and a block is read from the store
    only when the guest touches it. Shared by every VM of this repository restored from the same
    disk tree."""
    img = repo.open_image(commit, image)
    base = base_of_image(img)
    if base is None or img.size % PAGE_SIZE:
        raise VMError(f"disk {image!r} of {commit[:12]} cannot be served lazily "
                      f"(size {img.size} is not a multiple of {PAGE_SIZE})")
    name = _disk_base_name(base)
    daemon = BackingDaemon(where)
    try:
        daemon.ensure_running()
        if name not in daemon.request("list")["files"]:
            try:
                BackingFile.create(daemon, name, img.size, base)
            except FuseError as exc:
                if "already exists" not in str(exc):  # another restore made it meanwhile
                    raise
    except FuseError as exc:
        raise VMError(f"cannot serve disk {image!r} lazily: {exc}") from exc
    return daemon.mountpoint / name


def disk_base_error(path: Path, where: Path | None = None) -> str | None:
    """Why the daemon could not read a lazily-served disk base (its first failed read), if so."""
    daemon = BackingDaemon(where)
    if path.parent != daemon.mountpoint or not daemon.alive():
        return None
    try:
        return BackingFile(daemon, path.name, 0).read_error()
    except FuseError:
        return None


def release_disk_bases(repo_dir: str | os.PathLike[str], in_use: set[str],
                       where: Path | None = None) -> list[str]:
    """Remove this repository's lazily-served disk bases that no VM's disk chain names (so an idle
    daemon can exit). Returns the names removed."""
    daemon = BackingDaemon(where)
    if not daemon.alive():
        return []
    prefix = _disk_base_name({"repo": os.fspath(repo_dir), "tree": ""})
    removed = []
    try:
        names = daemon.request("list")["files"]
    except FuseError:
        return []  # best effort: a dead daemon holds nothing
    for name in names:
        if name.startswith(prefix) and str(daemon.mountpoint / name) not in in_use:
            try:
                daemon.request("remove", name=name)
            except FuseError:
                continue  # one that cannot go now does not keep the others
            removed.append(name)
    return removed


def expand(runs: list[tuple[int, int]]) -> list[int]:
    out: list[int] = []
    for first, count in runs:
        out.extend(range(first, first + count))
    return out
