"""Fixtures for the FUSE tests: a real repository with memory and ext4 disk images committed."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vers.objects.model import PAGE_SIZE as PAGE
from vers.repo import Repo


def fuse_usable() -> bool:
    return os.path.exists("/dev/fuse") and os.access("/dev/fuse", os.R_OK | os.W_OK) and bool(
        shutil.which("fusermount3")
    )


needs_fuse = pytest.mark.skipif(not fuse_usable(), reason="needs /dev/fuse and fusermount3")


def make_memory(path: Path, npages: int, seed: int) -> None:
    """Half random pages, the rest zero, in a fixed pseudo-random pattern."""
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.writelines(rnd.randbytes(PAGE) if i % 4 in (0, 1) else bytes(PAGE) for i in range(npages))


def make_ext4(path: Path, src: Path, size_mb: int = 16) -> None:
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", str(src), "-E",
         "root_owner=0:0,lazy_itable_init=0", str(path), f"{size_mb}M"],
        check=True,
        env={**os.environ, "E2FSPROGS_FAKE_TIME": "1700000000", "MKE2FS_DEVICE_SECTSIZE": "512"},
    )


@dataclass
class History:
    repo: Repo
    dir: Path
    first: str
    second: str
    memory1: Path
    memory2: Path
    disk: Path
    files: dict[str, bytes] = field(default_factory=dict)


@pytest.fixture
def history(tmp_path: Path) -> History:
    """Two commits: memory (random + zero pages) and an ext4 disk; tag v1, branch feature/x."""
    repo = Repo.init(tmp_path / "repo")
    mem1, mem2 = tmp_path / "mem1.img", tmp_path / "mem2.img"
    make_memory(mem1, 1024, seed=1)
    data = bytearray(mem1.read_bytes())
    for page in (3, 500, 1023):
        data[page * PAGE : page * PAGE + 5] = b"CHANG"
    mem2.write_bytes(bytes(data))
    src = tmp_path / "rootfs"
    (src / "etc").mkdir(parents=True)
    files = {
        "etc/hostname": b"vers-guest\n",
        "hello.txt": b"hello from inside the disk\n",
        "big.bin": random.Random(7).randbytes(300_000),
    }
    for name, content in files.items():
        (src / name).write_bytes(content)
    disk = tmp_path / "disk.img"
    make_ext4(disk, src)
    first = repo.snapshot({"memory": mem1, "disk": disk}, message="first", time=1_700_000_000)
    second = repo.snapshot({"memory": mem2, "disk": disk}, message="second", time=1_700_000_100)
    repo.refs.set_ref("refs/tags/v1", first)
    repo.refs.set_ref("refs/heads/feature/x", first)
    return History(repo, tmp_path, first, second, mem1, mem2, disk, files)
