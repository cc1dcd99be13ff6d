"""vers diff --files on real ext4 images (mkfs.ext4 -d, debugfs -w), checked with debugfs."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest

from vers.errors import BadInput
from vers.porcelain.difffiles import files_diff, memory_diff
from vers.repo import Repo

pytestmark = pytest.mark.skipif(
    shutil.which("mkfs.ext4") is None or shutil.which("debugfs") is None,
    reason="needs e2fsprogs")
FAKE_TIME = "1700000000"
ENV = {**os.environ, "E2FSPROGS_FAKE_TIME": FAKE_TIME, "MKE2FS_DEVICE_SECTSIZE": "512"}


def mkfs(image: Path, src: Path, size: str = "32M", block: int = 4096) -> None:
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", str(block), "-d", str(src), "-E",
                    "root_owner=0:0,lazy_itable_init=0", str(image), size],
                   check=True, env=ENV, capture_output=True)


def debugfs(image: Path, *commands: str, write: bool = False) -> str:
    script = image.parent / "debugfs.cmds"
    script.write_text("\n".join(commands) + "\n")
    args = ["debugfs", *(["-w"] if write else []), "-f", str(script), str(image)]
    return subprocess.run(args, check=True, env=ENV, capture_output=True, text=True).stdout


def tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    for p in sorted(root.rglob("*"), reverse=True):  # same times on both sides of a diff
        t = 1_600_000_000 + zlib.crc32(str(p.relative_to(root)).encode()) % 1000
        os.utime(p, (t, t))
    os.utime(root, (1_600_000_000, 1_600_000_000))
    return root


BASE = {
    "etc/hostname": b"guest\n",
    "etc/passwd": b"root:x:0:0::/root:/bin/sh\n",
    "hello.txt": b"hello\n",
    "big.bin": random.Random(2).randbytes(700_000),
    "var/log/app.log": b"line\n" * 2000,
    "sub/deep/x": b"x\n",
    "sub/y": b"y\n",
}


def _paths(d) -> dict[str, str]:
    return {c.path: c.status for c in d.files}


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    r = Repo.init(tmp_path / "repo")
    yield r
    r.close()


def test_debugfs_changes(repo: Repo, tmp_path: Path) -> None:
    a_img = tmp_path / "a.img"
    mkfs(a_img, tree(tmp_path / "src", BASE))
    b_img = tmp_path / "b.img"
    shutil.copy(a_img, b_img)
    new = tmp_path / "new.txt"
    new.write_bytes(b"brand new\n")
    debugfs(b_img, "rm hello.txt", f"write {new} added.txt", "mkdir newdir",
            f"write {new} newdir/inner.txt", "rm sub/deep/x", "rmdir sub/deep",
            "sif etc/hostname mode 0100600", "sif etc/passwd uid 1000", write=True)
    # overwrite part of big.bin in place: the inode does not change, only a data block
    blk = int(debugfs(a_img, "bmap big.bin 20").split()[-1])
    with open(b_img, "r+b") as f:
        f.seek(blk * 4096 + 100)
        f.write(b"CORRUPTED")
    a = repo.snapshot({"disk": a_img}, time=1)
    b = repo.snapshot({"disk": b_img}, time=2)
    d = files_diff(repo, a, b)
    assert _paths(d) == {
        "/added.txt": "added", "/newdir": "added", "/newdir/inner.txt": "added",
        "/hello.txt": "deleted", "/sub/deep": "deleted", "/sub/deep/x": "deleted",
        "/big.bin": "modified", "/etc/hostname": "modified", "/etc/passwd": "modified",
    }
    by_path = {c.path: c for c in d.files}
    assert by_path["/big.bin"].changes == ["content"]
    assert by_path["/etc/hostname"].changes == ["mode"]
    assert by_path["/etc/passwd"].changes == ["owner"]
    assert by_path["/newdir"].kind == "dir"
    assert d.scanned_inode_tables  # the in-place overwrite needed the owner search
    # debugfs agrees on which inode owns the overwritten block, and on every path/inode pair
    icheck = debugfs(b_img, f"icheck {blk}").split()
    assert int(icheck[-1]) == by_path["/big.bin"].inode_b
    for c in d.files:
        img, ino = (a_img, c.inode_a) if c.status == "deleted" else (b_img, c.inode_b)
        assert c.path in debugfs(img, f"ncheck {ino}")


def test_second_mkfs_of_modified_tree(repo: Repo, tmp_path: Path) -> None:
    a_img, b_img = tmp_path / "a.img", tmp_path / "b.img"
    mkfs(a_img, tree(tmp_path / "src_a", BASE))
    changed = dict(BASE)
    changed["var/log/app.log"] = b"line\n" * 2000 + b"one more\n"  # grows: later files move
    changed["etc/hostname"] = b"other\n"  # same size, different content
    del changed["sub/y"]
    changed["opt/tool/bin"] = b"\x7fELF" + bytes(5000)
    mkfs(b_img, tree(tmp_path / "src_b", changed))
    a = repo.snapshot({"disk": a_img}, time=1)
    b = repo.snapshot({"disk": b_img}, time=2)
    got = _paths(files_diff(repo, a, b))
    # mkfs -d gave the same times, so unchanged files must not show up even if they moved
    assert got == {"/var/log/app.log": "modified", "/etc/hostname": "modified",
                   "/sub/y": "deleted", "/opt": "added", "/opt/tool": "added",
                   "/opt/tool/bin": "added"}


def test_unchanged_and_atime_only(repo: Repo, tmp_path: Path) -> None:
    img = tmp_path / "a.img"
    mkfs(img, tree(tmp_path / "src", BASE))
    a = repo.snapshot({"disk": img}, time=1)
    debugfs(img, "sif hello.txt atime 20240101", write=True)
    b = repo.snapshot({"disk": img}, time=2)
    assert repo.diff(a, b).changed  # a block did change...
    assert files_diff(repo, a, b).files == []  # ...but only an access time


def test_small_blocks(repo: Repo, tmp_path: Path) -> None:
    img = tmp_path / "a.img"
    mkfs(img, tree(tmp_path / "src", BASE), size="16M", block=1024)
    a = repo.snapshot({"disk": img}, time=1)
    new = tmp_path / "n"
    new.write_bytes(b"n" * 3000)
    debugfs(img, f"write {new} sub/n", "rm etc/passwd", write=True)
    b = repo.snapshot({"disk": img}, time=2)
    d = files_diff(repo, a, b)
    assert d.block_size == 1024
    assert _paths(d) == {"/sub/n": "added", "/etc/passwd": "deleted"}


def test_not_ext4_and_missing_image(repo: Repo, tmp_path: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(random.Random(3).randbytes(1 << 20))
    a = repo.snapshot({"disk": junk}, time=1)
    b = repo.snapshot({"disk": junk, "memory": junk}, time=2)
    with pytest.raises(BadInput, match="not an ext2/3/4"):
        files_diff(repo, a, b)
    with pytest.raises(BadInput, match="image 'disk7'"):
        files_diff(repo, a, b, image="disk7")


def test_memory_ranges(repo: Repo, tmp_path: Path) -> None:
    mem = bytearray(random.Random(4).randbytes(256 * 4096))
    m1 = tmp_path / "m1"
    m1.write_bytes(mem)
    for page in (3, 4, 5, 100, 255):
        mem[page * 4096] ^= 0xFF
    m2 = tmp_path / "m2"
    m2.write_bytes(mem)
    a = repo.snapshot({"memory": m1}, time=1)
    b = repo.snapshot({"memory": m2}, time=2)
    d = memory_diff(repo, a, b)
    assert [(r.start, r.size) for r in d.ranges] == [(3 * 4096, 3 * 4096), (100 * 4096, 4096),
                                                     (255 * 4096, 4096)]
    assert d.changed_pages == 5 and d.memory_size == 256 * 4096
    assert "0x000000003000-0x000000005fff" in d.format_text()
    coarse = memory_diff(repo, a, b, gap=100 * 4096)
    assert len(coarse.ranges) == 2 and coarse.changed_pages == 5
    assert d.to_json()["ranges"][0]["start_hex"] == "0x3000"


def test_cli_diff_files_and_memory(repo: Repo, tmp_path: Path) -> None:
    import json
    import sys

    img = tmp_path / "a.img"
    mkfs(img, tree(tmp_path / "src", BASE))
    mem = tmp_path / "mem"
    mem.write_bytes(bytes(64 * 4096))
    a = repo.snapshot({"disk": img, "memory": mem}, time=1)
    debugfs(img, "rm hello.txt", write=True)
    with open(mem, "r+b") as f:
        f.seek(10 * 4096)
        f.write(b"x")
    b = repo.snapshot({"disk": img, "memory": mem}, time=2)
    env = {**os.environ, "VERS_DIR": str(repo.root)}

    def vers(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", "from vers.cli import main; main()", *args],
                              env=env, capture_output=True, text=True, check=False)

    r = vers("diff", a, b, "--files")
    assert r.returncode == 0 and r.stdout.strip() == "D\t/hello.txt", r.stderr
    r = vers("diff", a, b, "--files", "--memory", "--format", "json", "--exit-code")
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout)
    assert [f["path"] for f in out["files"]["files"]] == ["/hello.txt"]
    assert out["memory"]["ranges"][0]["start"] == 10 * 4096
    assert vers("diff", a, a, "--files", "--exit-code").returncode == 0
    assert vers("diff", a, b, "--files", "--image", "memory").returncode == 2  # not ext4
