"""Fixtures for the VM driver tests: one repository and one booted guest per module.

Booting under TCG costs seconds, so tests share a VM where they can; every fixture kills the QEMU
processes it started in its teardown, whatever the tests did.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vers.repo import Repo
from vers.testing import run_vers
from vers.vmm.agent import guest_exec
from vers.vmm.boot import RunOptions, run_vm
from vers.vmm.control import list_vms
from vers.vmm.teardown import kill_vms

#: a guest process counting in /tmp/counter; each value is renamed into place, so a reader never
#: sees the file truncated and not yet written
COUNTER = ("setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/counter.new;"
           " mv /tmp/counter.new /tmp/counter; sleep 0.05; done' </dev/null >/dev/null 2>&1 &")


def vers(cwd: Path, *args: str, check: bool = True, env: dict[str, str] | None = None,
         timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The real `vers` entry point (vers.testing.run_vers), with extra environment if given."""
    p = run_vers(cwd, *args, timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"vers {args} failed ({p.returncode}): {p.stderr}")
    return p


def gexec(rec: Any, script: str, timeout: float = 60) -> str:
    res = guest_exec(rec.runtime.agent_sock, script, timeout)
    assert res.returncode == 0, (script, res)
    return res.stdout.decode()


def counter(rec: Any) -> int:
    """The counter's value; 0 until its first write (the agent answers faster than a
    backgrounded shell starts). A read between the loop's truncate and its write sees an empty
    file: read again."""
    for _ in range(50):
        value = gexec(rec, "cat /tmp/counter 2>/dev/null || echo 0").strip()
        if value:
            return int(value)
        time.sleep(0.01)
    raise AssertionError("the counter file stayed empty")


def wait_counter_above(rec: Any, value: int, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while True:
        now = counter(rec)
        if now > value or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


def kill_all(repo: Repo) -> None:
    ids = [s.id for s in list_vms(repo)]
    if ids:
        kill_vms(repo, ids)


@pytest.fixture(scope="module")
def vmrepo(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest,
           ) -> Iterator[Repo]:
    """A repository; the module's MEMORY_BACKING (default shm) backs every VM it starts, also
    those started by `vers` subprocesses (through $VERS_MEMORY_BACKING)."""
    backing = getattr(request.module, "MEMORY_BACKING", "shm")
    with vm_repo(tmp_path_factory.mktemp(f"vmrepo-{backing}"), backing) as repo:
        yield repo


@contextlib.contextmanager
def vm_repo(path: Path, backing: str) -> Iterator[Repo]:
    """A new repository whose VMs use ``backing`` (also those started by `vers` subprocesses,
    through $VERS_MEMORY_BACKING); every VM left in it is killed at the end."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VERS_MEMORY_BACKING", backing)
        repo = Repo.init(path)
        try:
            yield repo
        finally:
            try:
                kill_all(repo)
            finally:
                repo.close()


@pytest.fixture(scope="module")
def booted(vmrepo: Repo) -> Any:
    """A 256 MiB default guest running a counter process (a shell loop writing /tmp/counter)."""
    rec = run_vm(vmrepo, RunOptions(name="base"))
    gexec(rec, COUNTER)
    wait_counter_above(rec, 0)
    return rec
