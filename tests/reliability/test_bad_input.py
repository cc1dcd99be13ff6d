"""Unusable paths and files given on the command line: one clear line, a non-zero exit, and
nothing stored changed. Never a traceback, never a hang."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vers.objects.model import PAGE_SIZE
from vers.repo import Repo
from vers.testing import make_image, run_vers, vers_ok

EIO_FS = Path(__file__).with_name("eio_fs.py")


@pytest.fixture
def work(tmp_path: Path) -> Path:
    vers_ok(tmp_path, "init")
    make_image(tmp_path / "mem", 64 * PAGE_SIZE, seed=5)
    vers_ok(tmp_path, "snapshot", "--memory", "mem", "-m", "one")
    return tmp_path


def state(work: Path) -> tuple[dict[str, str], int]:
    with Repo(work) as repo:
        return repo.refs.list_refs(""), repo.store.stats().objects


def assert_refused(work: Path, *args: str, says: str = "") -> None:
    before = state(work)
    p = run_vers(work, *args, timeout=30)
    assert p.returncode not in (0, 1) and p.returncode > 0, (args, p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vers: error: "), (args, p.stderr)
    assert says in lines[0], lines[0]
    assert state(work) == before, "nothing stored changed"


@pytest.mark.parametrize("args, says", [
    (["push", "/etc/passwd"], "not a directory"),
    (["push", "file:///proc/1/x"], "/proc/1/x"),
    (["snapshot", "--memory", "/proc/self/status"], "/proc/self/status"),
    (["snapshot", "--memory", "/proc"], "is a directory"),
    (["snapshot", "--memory", "/dev/zero"], "not a regular file"),
    (["snapshot", "--memory", "mem", "--disk", "/dev/null"], "not a regular file"),
], ids=["push-to-a-file", "push-into-proc", "proc-file", "directory", "char-device", "dev-null"])
def test_unusable_path_is_refused(work: Path, args: list[str], says: str) -> None:
    assert_refused(work, *args, says=says)


def test_fifo_is_refused_up_front(work: Path) -> None:
    """Opening a FIFO blocks until a writer comes; the time limit catches a hang."""
    fifo = work / "fifo"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    assert_refused(work, "snapshot", "--memory", "fifo", says="not a regular file")
    assert time.monotonic() - t0 < 20


def test_init_where_nothing_can_be_created(tmp_path: Path) -> None:
    p = run_vers(tmp_path, "init", "/proc/x", timeout=30)
    assert p.returncode > 1, p.stderr
    assert p.stderr.strip().splitlines() == [
        "vers: error: cannot create a repository at /proc/x: No such file or directory"]


def _fuse_usable() -> bool:
    return (os.access("/dev/fuse", os.R_OK | os.W_OK) and shutil.which("fusermount3") is not None
            and subprocess.run([sys.executable, "-c", "import pyfuse3"],
                               capture_output=True, check=False).returncode == 0)


@pytest.mark.fuse
@pytest.mark.skipif(not _fuse_usable(), reason="needs /dev/fuse, fusermount3 and pyfuse3")
def test_image_that_fails_to_read_is_refused(work: Path) -> None:
    """A file whose every read fails with EIO (served by a tiny FUSE file system)."""
    mnt = work / "eio"
    mnt.mkdir()
    fs = subprocess.Popen([sys.executable, str(EIO_FS), str(mnt), str(64 * PAGE_SIZE)],
                          stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not (mnt / "bad.img").exists():
            assert fs.poll() is None and time.monotonic() < deadline, "the EIO file system failed"
            time.sleep(0.05)
        assert_refused(work, "snapshot", "--memory", str(mnt / "bad.img"),
                       says="Input/output error")
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, check=False)
        try:
            fs.wait(timeout=10)
        except subprocess.TimeoutExpired:
            fs.kill()
            fs.wait()
