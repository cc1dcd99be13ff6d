"""kill -9 of a real `vers push` / `vers fetch` mid-transfer: both sides stay consistent, and the
next push or fetch moves only what is still missing."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from vers.porcelain.fetch import fetch
from vers.porcelain.push import push
from vers.porcelain.remote import add_remote
from vers.remote.backends import open_transport
from vers.remote.bundle import BUNDLE_PREFIX, RemoteIndex
from vers.remote.negotiate import plan_send
from vers.repo import Repo

from .conftest import VERS, assert_consistent, export_bytes, make_memory

NPAGES = 8192  # 32 MiB of random pages: long enough to be killed in the middle
BUNDLE = 128 << 10

pytestmark = pytest.mark.slow


def _wait_then_kill(proc: subprocess.Popen[bytes], ready, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"process ended (rc {proc.returncode}) before it could be killed: "
                            f"{err}")
            if ready():
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
                return
            time.sleep(0.005)
        pytest.fail("the transfer never reached the point to kill it at")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _source(tmp: Path, remote_url: str) -> tuple[Repo, str]:
    repo = Repo.init(tmp / "a")
    make_memory(tmp / "m1", NPAGES, seed=3, random_fraction=1.0)
    head = repo.snapshot({"memory": tmp / "m1"}, message="big")
    add_remote(repo, "origin", remote_url)
    return repo, head


def test_kill_during_push(tmp_path: Path, remote_url: str) -> None:
    repo, head = _source(tmp_path, remote_url)
    transport = open_transport(remote_url)

    def some_bundles_landed() -> bool:
        return sum(k.endswith(".idx") for k in transport.list(BUNDLE_PREFIX)) >= 3

    proc = subprocess.Popen([*VERS, "push", "-q", "--bundle-size", str(BUNDLE), "origin"],
                            cwd=repo.root, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _wait_then_kill(proc, some_bundles_landed)

    # Remote: no ref moved. Local: untouched and clean.
    assert transport.list("refs/") == {}
    assert repo.refs.resolve("refs/remotes/origin/main") is None
    assert_consistent(repo)

    landed = RemoteIndex.load(transport)
    total = len(plan_send(repo.store, [head], lambda o: False))
    assert 0 < len(landed.locs) < total
    result = push(repo, "origin")
    assert result.objects == total - len(landed.locs), "only what had not landed is sent again"
    assert result.updated == [("refs/heads/main", None, head)]

    b = Repo.init(tmp_path / "b")
    add_remote(b, "origin", remote_url)
    fetch(b, "origin")
    assert export_bytes(b, "origin/main", tmp_path) == (tmp_path / "m1").read_bytes()
    b.close()
    repo.close()


def test_kill_during_fetch(tmp_path: Path, remote_url: str) -> None:
    repo, head = _source(tmp_path, remote_url)
    full = push(repo, "origin")
    b = Repo.init(tmp_path / "b")
    add_remote(b, "origin", remote_url)
    store = b.store

    def some_pages_stored() -> bool:
        return store.stats().objects > 1000

    proc = subprocess.Popen([*VERS, "fetch", "-q", "origin"], cwd=b.root,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _wait_then_kill(proc, some_pages_stored)

    assert b.refs.list_refs() == {}, "no ref moves before every object is in"
    assert_consistent(b)
    have = sum(1 for _ in b.store.iter_ids())
    assert 0 < have < full.objects

    again = fetch(b, "origin")
    metadata = full.objects - NPAGES  # nodes, tree, commit: re-read to rediscover the pages
    assert again.result.objects <= full.objects - have + metadata
    assert again.result.bytes < full.bytes
    assert b.refs.resolve("refs/remotes/origin/main") == head
    assert export_bytes(b, head, tmp_path) == (tmp_path / "m1").read_bytes()
    assert_consistent(b)
    b.close()
    repo.close()
