"""vers cp under real QEMU: into and out of a running VM, tar streams on stdin/stdout, clear
errors, nothing partial under the target name, and files read out of a commit's disk."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.vmm.conftest import gexec, vers
from vers.errors import BadInput, VMError
from vers.porcelain import transfer
from vers.porcelain import vm as verbs
from vers.repo import Repo
from vers.testing import vers_env
from vers.vmm.boot import RunOptions

pytestmark = [pytest.mark.vm, pytest.mark.slow]


@pytest.fixture(scope="module")
def vm(vmrepo: Repo) -> Any:
    return verbs.run(vmrepo, RunOptions(name="cpvm"))


def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(os.urandom(200_000))
    (src / "sub" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(src / "a.bin", 0o640)
    os.chmod(src / "sub" / "run.sh", 0o750)
    os.utime(src / "a.bin", (1_600_000_000, 1_600_000_000))
    (src / "link").symlink_to("a.bin")
    return src


def test_copy_in_and_out_keeps_content_modes_and_mtimes(vmrepo: Repo, vm: Any,
                                                        tmp_path: Path) -> None:
    src = tree(tmp_path)
    vers(vmrepo.root, "cp", "-r", str(src), "cpvm:/root/tree")
    assert gexec(vm, "stat -c '%a %Y %s' /root/tree/a.bin") == "640 1600000000 200000\n"
    assert gexec(vm, "stat -c %a /root/tree/sub/run.sh; readlink /root/tree/link") == "750\na.bin\n"
    assert gexec(vm, "ls -a /root | grep -c vers-tmp || true") == "0\n"
    out = tmp_path / "out"
    out.mkdir()
    vers(vmrepo.root, "cp", "-r", "cpvm:/root/tree", str(out))
    back = out / "tree"
    assert (back / "a.bin").read_bytes() == (src / "a.bin").read_bytes()
    assert oct((back / "a.bin").stat().st_mode & 0o777) == "0o640"
    assert int((back / "a.bin").stat().st_mtime) == 1_600_000_000
    assert os.readlink(back / "link") == "a.bin"
    assert not [p for p in out.iterdir() if p.name.startswith(".vers-tmp")]
    # a single file to a new name, and onto an existing file
    vers(vmrepo.root, "cp", "cpvm:/root/tree/sub/run.sh", str(out / "renamed.sh"))
    vers(vmrepo.root, "cp", str(src / "a.bin"), "cpvm:/root/tree/sub/run.sh")
    assert gexec(vm, "md5sum < /root/tree/sub/run.sh").split()[0] == \
        subprocess.run(["md5sum"], check=False, input=(src / "a.bin").read_bytes(),
                       capture_output=True).stdout.decode().split()[0]
    assert (out / "renamed.sh").read_text() == "#!/bin/sh\necho hi\n"
    # a single file goes in as its bytes alone, keeping its mode and mtime too
    vers(vmrepo.root, "cp", str(src / "a.bin"), "cpvm:/root/")
    assert gexec(vm, "stat -c '%a %Y %s' /root/a.bin") == "640 1600000000 200000\n"
    assert gexec(vm, "ls -a /root | grep -c vers-tmp || true") == "0\n"


def test_clear_errors(vmrepo: Repo, vm: Any, tmp_path: Path) -> None:
    src = tree(tmp_path)
    for args, msg in [(("cpvm:/no/such", str(tmp_path)), "no such file or directory"),
                      ((str(tmp_path / "nope"), "cpvm:/root/"), "no such file or directory"),
                      ((str(src), "cpvm:/root/"), "is a directory (use -r)"),
                      (("cpvm:/root", str(tmp_path)), "is a directory (use -r)"),
                      ((str(src / "a.bin"), "cpvm:/no/such/dir/x"), "no such file or directory"),
                      ((str(src / "a.bin"), str(tmp_path / "x")), "one side")]:
        p = vers(vmrepo.root, "cp", *args, check=False)
        assert p.returncode == 2 and msg in p.stderr, (args, p.stderr)


def test_tar_streams_on_stdin_and_stdout(vmrepo: Repo, vm: Any, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("streamed.txt")
        info.size, info.mtime, info.mode = 5, 1_500_000_000, 0o600
        tar.addfile(info, io.BytesIO(b"hello"))
    gexec(vm, "mkdir -p /root/in")
    p = subprocess.run(["vers", "cp", "-", "cpvm:/root/in"], input=buf.getvalue(), check=False,
                       cwd=vmrepo.root, env=vers_env(), capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert gexec(vm, "cat /root/in/streamed.txt; stat -c ' %a %Y' /root/in/streamed.txt") == \
        "hello 600 1500000000\n"
    p = subprocess.run(["vers", "cp", "cpvm:/root/in/streamed.txt", "-"], cwd=vmrepo.root,
                       env=vers_env(), capture_output=True, timeout=120, check=True)
    with tarfile.open(fileobj=io.BytesIO(p.stdout)) as tar:
        (member,) = tar.getmembers()
        assert member.name.endswith("streamed.txt") and member.mtime == 1_500_000_000
        f = tar.extractfile(member)
        assert f is not None and f.read() == b"hello"


def test_no_space_left_leaves_nothing_behind(vmrepo: Repo, vm: Any, tmp_path: Path) -> None:
    gexec(vm, "mkdir -p /mnt/small && mount -t tmpfs -o size=1m small /mnt/small")
    big = tmp_path / "big"
    big.write_bytes(os.urandom(3 << 20))
    p = vers(vmrepo.root, "cp", str(big), "cpvm:/mnt/small/big", check=False)
    assert p.returncode != 0 and "No space left" in p.stderr, p.stderr
    assert gexec(vm, "ls -A /mnt/small") == ""


def test_interrupted_copies_leave_no_partial_target(vmrepo: Repo, vm: Any,
                                                    tmp_path: Path) -> None:
    """The guest kills the extracting cat (a file) or tar (a tree) half-way: no target; the VM
    is killed while a file streams out: a clear error and no target on the host."""
    big = tmp_path / "big"
    big.write_bytes(os.urandom(64 << 20))
    gexec(vm, "(sleep 2; killall cat tar) </dev/null >/dev/null 2>&1 &")
    with pytest.raises(VMError):
        transfer.copy(vmrepo, str(big), "cpvm:/root/big")
    assert gexec(vm, "ls -A /root | grep -e big -e vers-tmp || true") == ""

    doomed = verbs.run(vmrepo, RunOptions(name="cpdoomed", make_current=False))
    gexec(doomed, "head -c 200000000 /dev/urandom > /root/big", timeout=300)
    out = tmp_path / "out"
    out.mkdir()
    threading.Timer(3.0, lambda: verbs.kill(vmrepo, [doomed.id])).start()
    with pytest.raises(VMError):
        transfer.copy(vmrepo, "cpdoomed:/root/big", str(out))
    assert list(out.iterdir()) == []


def test_copy_out_of_a_commit_reads_only_the_file(vmrepo: Repo, vm: Any, tmp_path: Path) -> None:
    gexec(vm, "mkdir -p /root/c && head -c 4194304 /dev/urandom > /root/c/data && "
              "echo small > /root/c/note && chmod 604 /root/c/note && sync")
    want = gexec(vm, "md5sum /root/c/data").split()[0]
    cid = vers(vmrepo.root, "commit", "cpvm", "-m", "files").stdout.strip()
    gexec(vm, "rm -rf /root/c")  # the commit, not the running VM, is read
    stats = transfer.copy(vmrepo, f"{cid}:/root/c/data", str(tmp_path / "data"))
    got = subprocess.run(["md5sum", str(tmp_path / "data")], capture_output=True, check=True,
                         text=True).stdout.split()[0]
    assert got == want
    assert stats.store_bytes_read <= 1.2 * (4 << 20) + (256 << 10), stats
    vers(vmrepo.root, "cp", "-r", f"{cid[:10]}:/root/c", str(tmp_path))
    assert (tmp_path / "c" / "note").read_text() == "small\n"
    assert oct((tmp_path / "c" / "note").stat().st_mode & 0o777) == "0o604"
    with pytest.raises(BadInput, match="no such file"):
        transfer.copy(vmrepo, f"{cid}:/root/c/missing", str(tmp_path))
    with pytest.raises(BadInput, match="read-only"):
        transfer.copy(vmrepo, str(tmp_path / "data"), f"{cid}:/root/x")

