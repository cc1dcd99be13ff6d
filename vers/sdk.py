"""The Python face of vers: ``vers.Repo`` with VMs as objects (docs/sdk.md).

    repo = vers.Repo.init("work")                    # or vers.Repo("work")
    with repo.run(image="default", memory="256M") as golden:
        golden.exec("echo ready > /root/state")
        with golden.branch(4) as agents:             # killed when the block ends
            results = pool.map(lambda vm: vm.exec("try-something"), agents)
            winner = agents[best(results)]
            winner.commit("the winner", branch="winner")

``Repo`` is the core repository class (``vers.repo.Repo``) with the VM verbs added; every method
calls the same functions of ``vers.porcelain.vm`` the command line calls, so a script and
``vers`` see the same VMs, refs and errors (``vers.errors``; each has an ``exit_code``).

A ``VM`` is a handle on one VM of the repository's registry (``.vers/vms``), not a process of
this Python program: it stays valid across processes and threads, and ``kill()`` is idempotent.
The context managers (``with repo.run() as vm``, ``with vm.branch(4) as children``) kill what
they made when the block ends, on exceptions and Ctrl-C too. Calls on different VMs may run in
parallel threads; calls on one VM are serialised by a lock (its guest agent serves one command at
a time).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from vers.errors import BadInput, GuestTimeout, UnknownVM, VMError
from vers.history.retention import Policy, parse_duration
from vers.objects.model import Commit
from vers.porcelain import record as recording
from vers.porcelain import transfer
from vers.porcelain import vm as verbs
from vers.repo import Repo as CoreRepo
from vers.vmm import agent
from vers.vmm.agent import ExecResult
from vers.vmm.machine import pid_alive

__all__ = ["VM", "Commit", "ExecResult", "ExecStream", "Repo", "VMGroup"]

#: how often ``exec_stream`` asks the guest for new output


class Repo(CoreRepo):
    """A repository (``vers.repo.Repo``) plus its VMs: run, restore, list, look up."""

    def run(self, image: str | None = None, *, memory: str | int = "256M", vcpus: int = 1,
            name: str | None = None, disk_size: str | int | None = None,
            kernel: str | os.PathLike[str] | None = None,
            initrd: str | os.PathLike[str] | None = None,
            disks: Sequence[str | os.PathLike[str]] = (), accel: str | None = None,
            memory_backing: str | None = None, boot_timeout: float = verbs.BOOT_TIMEOUT,
            standby: bool | None = None, make_current: bool = True, net: str = "user",
            ports: Sequence[str] = ()) -> VM:
        """Boot a VM from guest image ``image`` (``vers images``; ``default`` when neither an
        image nor your own kernel, initrd and disks are given) and wait until its agent
        answers. Sizes are bytes or strings like ``"1G"``; ``ports`` are published like
        ``vers run -p`` (``"8000"``, ``"127.0.0.1:8080:80"``), ``net="none"`` gives no network."""
        opts = verbs.RunOptions(
            memory=_size(memory), vcpus=vcpus, name=name, accel=accel,
            kernel=os.fspath(kernel) if kernel else None,
            initrd=os.fspath(initrd) if initrd else None,
            disks=tuple(os.fspath(d) for d in disks), image=image,
            disk_size=_size(disk_size) if disk_size is not None else None,
            memory_backing=memory_backing or verbs.default_backing(), boot_timeout=boot_timeout,
            make_current=make_current, net=net, ports=tuple(ports))
        if standby is not None:
            opts.standby = standby
        return VM(self, verbs.run(self, opts).id)

    def restore(self, rev: str, *, name: str | None = None, make_current: bool = False,
                ports: Sequence[str] = (), remote: str | None = None) -> VM:
        """Boot a new VM from commit ``rev``: it continues from the committed instant, its
        clock, entropy and generation marker made fresh (docs/vmm.md). ``remote`` (a remote's
        name or URL): ``rev`` is read lazily from there, only what the guest reads
        (docs/remote.md, "The lazy store")."""
        rec, settle = verbs.run_commit_unsettled(self, rev, name=name,
                                                 make_current=make_current,
                                                 ports=tuple(ports), remote=remote)
        _settle_in_background(self, rec.id, settle)
        return VM(self, rec.id)

    def checkout(self, rev: str, *, remote: str | None = None) -> VM:
        """``restore`` + make it the current VM + move HEAD to ``rev`` (like ``vers checkout``)."""
        return VM(self, verbs.checkout(self, rev, remote=remote).id)

    def vms(self) -> list[VM]:
        """This repository's VMs (orphaned QEMU processes are left to ``vers ps``/``kill``)."""
        return [VM(self, s.id) for s in verbs.ps(self) if s.state != "orphan"]

    def vm(self, key: str | None = None) -> VM:
        """The VM with this alias, ID or unique ID prefix (the current VM when None)."""
        return VM(self, verbs.record(self, key).id)

    def close(self) -> None:
        """Wait for what the VMs' last commits left running in the background, then close."""
        _settled(self)
        super().close()


@dataclass(frozen=True)
class ExecStream:
    """What ``VM.exec_stream`` yields: a piece of the command's output as the guest wrote it
    (stdout and stderr interleaved), or, last, its exit code with ``data`` empty."""

    data: bytes
    returncode: int | None = None


class VM:
    """One VM of a repository, by ID. Methods raise ``vers.errors.VMError`` (and subclasses:
    ``GuestTimeout``, ``UnknownVM``) when the VM cannot do what was asked."""

    def __init__(self, repo: Repo, vid: str) -> None:
        self.repo = repo
        self.id = vid
        self._lock = _lock_for(repo, vid)
        #: (QEMU's PID, agent socket) as last looked up
        self._agent: tuple[int | None, str] | None = None

    def __repr__(self) -> str:
        return f"<VM {self.id}{f' {self.name!r}' if self.name else ''}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VM) and other.id == self.id and other.repo is self.repo

    def __hash__(self) -> int:
        return hash(self.id)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.kill()

    # -- what it is ---------------------------------------------------------------------------
    @property
    def name(self) -> str | None:
        return verbs.record(self.repo, self.id).name

    @property
    def base_commit(self) -> str | None:
        """The commit the VM's state is based on (its last commit, or the one it came from)."""
        return verbs.record(self.repo, self.id).base_commit

    @property
    def branch_name(self) -> str | None:
        """The branch its commits go to by default (``branch(refs=...)``); None: HEAD."""
        return verbs.record(self.repo, self.id).branch

    @property
    def ports(self) -> list[dict[str, Any]]:
        """Host resources published for the VM (e.g. forwarded ports), as ``vers status``."""
        return [dict(p) for p in verbs.record(self.repo, self.id).runtime.ports]

    def status(self) -> dict[str, Any]:
        """State (running, paused, dead...) and where its files are: ``vers status --format
        json``."""
        return verbs.status(self.repo, self.id)

    def info(self) -> dict[str, Any]:
        """The VM as the JSON outputs of run, branch and restore show it (docs/cli.md)."""
        return verbs.vm_json(self.repo, verbs.record(self.repo, self.id))

    # -- running commands ---------------------------------------------------------------------
    def exec(self, cmd: str | Sequence[str], stdin: bytes | str | None = None,
             timeout: float | None = None, env: Mapping[str, str] | None = None,
             cwd: str | None = None, check: bool = False) -> ExecResult:
        """Run ``cmd`` in the guest (a string is a shell script; a list an argv) with ``stdin``
        on its standard input, and wait for it. After ``timeout`` seconds (default 300) the
        command is killed and ``GuestTimeout`` raised; with ``check``, a ``VMError`` for a
        non-zero exit code."""
        data = stdin.encode() if isinstance(stdin, str) else stdin
        res = agent.run(self._agent_sock(), _argv(cmd), input=data,
                        env=dict(env) if env else None, cwd=cwd,
                        timeout=300.0 if timeout is None else timeout)
        if check and res.returncode != 0:
            raise VMError(f"command failed in VM {self.id} (exit {res.returncode}): "
                          f"{res.stderr.decode(errors='replace').strip()[-500:]}")
        return res

    def exec_stream(self, cmd: str | Sequence[str], timeout: float | None = None,
                    env: Mapping[str, str] | None = None,
                    cwd: str | None = None) -> Iterator[ExecStream]:
        """Run ``cmd`` in the guest and yield its output as the guest writes it (stdout and
        stderr interleaved); the last item carries the exit code. After ``timeout`` seconds the
        command is killed and ``GuestTimeout`` raised."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with agent.open_channel(self._agent_sock(), _argv(cmd), stdin=False,
                                env=dict(env) if env else None, cwd=cwd) as ch:
            while True:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                ev = ch.next_event(timeout=left)
                if ev is None:
                    ch.signal(signal.SIGKILL)
                    raise GuestTimeout(f"guest command did not finish within {timeout}s")
                if ev.kind == "exit":
                    yield ExecStream(b"", ev.code)
                    return
                yield ExecStream(ev.data)

    def _agent_sock(self) -> str:
        """The guest agent's socket. The VM record is read once: while the same QEMU process
        runs (its PID, checked to be this VM's on every call), the socket is the same."""
        cached = self._agent
        if cached is not None and pid_alive(cached[0], self.id):
            return cached[1]
        rec = transfer.running_vm(self.repo, self.id)
        self._agent = (rec.runtime.pid, rec.runtime.agent_sock)
        return rec.runtime.agent_sock

    def copy_in(self, src: str | os.PathLike[str], dest: str) -> None:
        """Copy a host file or directory into the guest directory ``dest`` (made if missing),
        with modes and mtimes, as `vers cp` does: nothing partial is left behind."""
        self.exec(["mkdir", "-p", dest], timeout=60, check=True)
        transfer.copy(self.repo, os.fspath(src), f"{self.id}:{dest.rstrip('/') or '/'}/",
                      recursive=True)

    def copy_out(self, src: str, dest: str | os.PathLike[str]) -> None:
        """Copy a guest file or directory into the host directory ``dest`` (made if missing)."""
        Path(dest).mkdir(parents=True, exist_ok=True)
        transfer.copy(self.repo, f"{self.id}:{src}", os.fspath(dest), recursive=True)

    # -- history and forks --------------------------------------------------------------------
    def commit(self, message: str = "", branch: str | None = None, merge: bool = False,
               pause: bool = False, sync: bool = True) -> Commit:
        """Commit memory, disks and device state onto ``branch`` (made at the VM's base commit
        if new), else the VM's own branch, else HEAD. A branch that moved on since the VM's
        base is refused (``RefConflict``) unless ``merge``. ``pause`` leaves the VM paused.
        ``sync=False`` skips flushing and freezing the guest's file systems (crash-consistent
        disks instead of file-consistent ones)."""
        with self._lock:
            _settled(self.repo, self.id)
            cid, _tm, settle = verbs.commit_unsettled(self.repo, self.id, message, pause,
                                                      branch, merge, sync)
            _settle_in_background(self.repo, self.id, settle)
        return self.repo.get_commit(cid)

    def branch(self, count: int = 1, *, name: str | None = None,
               refs: str | None = None) -> VMGroup:
        """Fork the running VM into ``count`` children that continue from this instant. With
        ``refs`` (a prefix) child i commits onto branch PREFIX-i. The result is a list and a
        context manager that kills the children when the block ends."""
        with self._lock:
            _settled(self.repo, self.id)
            children, _tm, settle = verbs.branch_unsettled(self.repo, self.id, count, name,
                                                           refs=refs)
            _settle_in_background(self.repo, self.id, settle)
        return VMGroup(VM(self.repo, c.id) for c in children)

    def record(self, every: float | str, keep: Mapping[str, float | str] | None = None,
               branch: str | None = None, sync: bool = True) -> dict[str, Any]:
        """Commit the VM every ``every`` (seconds, or a duration like "1s", "5m") in a background
        process, as `vers record` does, until ``stop_recording`` or the VM is killed. ``keep`` is
        the retention policy applied to the recorded commits: ``last``, ``minutely``,
        ``hourly``, ``daily``, ``weekly``, ``monthly``, ``yearly`` (counts) and ``within`` (a
        duration). Returns the recording's status."""
        _settled(self.repo, self.id)
        rules = dict(keep or {})
        within = rules.pop("within", None)
        unknown = set(rules) - {"last", "minutely", "hourly", "daily", "weekly", "monthly",
                                "yearly"}
        if unknown:
            raise BadInput(f"unknown retention rule(s): {', '.join(sorted(unknown))}")
        policy = Policy(**{k: int(v) for k, v in rules.items()},
                        within=None if within is None else _seconds(within))
        rec = recording.start(self.repo, self.id, _seconds(every), policy, branch, sync)
        return recording.status_json(rec)

    def stop_recording(self) -> dict[str, Any]:
        """Stop the VM's recording (the commit under way finishes); its last figures."""
        return dict(recording.stop(self.repo, self.id).runtime.recording)

    def pause(self) -> None:
        _settled(self.repo, self.id)
        verbs.pause(self.repo, self.id)

    def resume(self) -> None:
        _settled(self.repo, self.id)
        verbs.resume(self.repo, self.id)

    def kill(self) -> None:
        """Stop the VM and delete its state; nothing happens if it is gone already."""
        _settled(self.repo, self.id)
        try:
            verbs.kill(self.repo, [self.id])
        except UnknownVM:
            pass

    @property
    def alive(self) -> bool:
        try:
            return self.status()["state"] in ("running", "paused")
        except UnknownVM:
            return False


class VMGroup(list[VM]):
    """VMs made together (``VM.branch``): a list, and a context manager that kills them all."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.kill()

    def kill(self) -> None:
        for vm in self:
            vm.kill()


def _size(value: str | int) -> int:
    return value if isinstance(value, int) else verbs.parse_size(value)


def _argv(cmd: str | Sequence[str]) -> list[str]:
    """A string is a shell script, a sequence an argv (as `vers exec` takes them)."""
    return ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)


_locks: dict[tuple[int, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock_for(repo: Repo, vid: str) -> threading.Lock:
    """One lock per VM per repository object, shared by every ``VM`` handle on it."""
    with _locks_guard:
        return _locks.setdefault((id(repo), vid), threading.Lock())


#: the step each VM's last commit left to run in the background, while the script goes on
_settling: dict[tuple[int, str], threading.Thread] = {}


def _settle_in_background(repo: Repo, vid: str, settle: Callable[[], None]) -> None:
    """Run what a commit or branch of VM ``vid`` leaves to do (``vers.vmm.commit.
    commit_vm_unsettled``, ``vers.vmm.branch.branch_vm_unsettled``: re-basing or streaming the
    disks, the next overlays, the standby child) on a thread: ``VM.commit`` returns once the
    commit is stored, ``VM.branch`` once the children run. Everything that changes the VM
    waits for it first (``_settled``), as do ``Repo.close`` and the end of the program (the
    thread is not a daemon)."""
    def run() -> None:
        try:
            settle()
        except VMError as exc:  # the commit is stored; the next one prepares what this missed
            print(f"vers: VM {vid}: after its commit or branch: {exc}", file=sys.stderr)

    t = threading.Thread(target=run, name=f"vers-settle-{vid}")
    with _locks_guard:
        _settling[(id(repo), vid)] = t
    t.start()


def _settled(repo: Repo, vid: str | None = None) -> None:
    """Wait for the settle step of the VM's last commit (every VM's of ``repo`` when None)."""
    with _locks_guard:
        threads = [t for (r, v), t in _settling.items()
                   if r == id(repo) and vid in (None, v)]
    for t in threads:
        t.join()
    with _locks_guard:
        for key in [k for k, t in _settling.items() if t in threads]:
            del _settling[key]


def _seconds(value: float | str) -> float:
    return parse_duration(value) if isinstance(value, str) else float(value)
