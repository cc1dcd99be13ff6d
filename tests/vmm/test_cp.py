"""vers cp under real QEMU: into and out of a running VM, tar streams on stdin/stdout, clear
errors, nothing partial under the target name, and files read out of a commit's disk. A file
copied in is written by the agent itself (protocol 1.3 put); an agent of 1.2 still takes it
through cat."""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import subprocess
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.vmm.conftest import gexec, vers
from vers.errors import EXIT_VM, BadInput, VMError
from vers.images.guestfs import AGENT_SOURCE_PATH
from vers.porcelain import transfer
from vers.porcelain import vm as verbs
from vers.repo import Repo
from vers.testing import vers_env
from vers.vmm import agent
from vers.vmm.boot import RunOptions
from vers.vmm.quiesce import GuestFileSystems

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
    gexec(vm, "mkdir -p /root/hasdir/a.bin")
    for args, msg in [(("cpvm:/no/such", str(tmp_path)), "no such file or directory"),
                      ((str(tmp_path / "nope"), "cpvm:/root/"), "no such file or directory"),
                      ((str(src), "cpvm:/root/"), "is a directory (use -r)"),
                      (("cpvm:/root", str(tmp_path)), "is a directory (use -r)"),
                      ((str(src / "a.bin"), "cpvm:/no/such/dir/x"), "no such file or directory"),
                      ((str(src / "a.bin"), "cpvm:/root/hasdir/"), "Is a directory"),
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
    # a file already under the target name is left as it was
    gexec(vm, "echo old > /mnt/small/big")
    p = vers(vmrepo.root, "cp", str(big), "cpvm:/mnt/small/big", check=False)
    assert p.returncode == EXIT_VM and "No space left" in p.stderr, p.stderr
    assert gexec(vm, "ls -A /mnt/small; cat /mnt/small/big") == "big\nold\n"


def test_interrupted_copies_leave_no_partial_target(vmrepo: Repo, vm: Any,
                                                    tmp_path: Path) -> None:
    """The guest kills the extracting cat (a file, as older agents take it) or tar (a tree)
    half-way: no target; the VM is killed while a file streams out: a clear error and no target
    on the host."""
    big = tmp_path / "big"
    big.write_bytes(os.urandom(64 << 20))
    gexec(vm, "(sleep 2; killall cat tar) </dev/null >/dev/null 2>&1 &")
    loc = transfer.parse_location(vmrepo, "cpvm:/root/big")
    with pytest.raises(VMError), open(big, "rb") as f:
        sink = transfer.VMSink(loc, "big", big, direct=False)
        transfer._receive(sink, f)
        sink.commit()
    big_tree = tmp_path / "bigtree"
    big_tree.mkdir()
    os.link(big, big_tree / "big")
    gexec(vm, "(sleep 2; killall cat tar) </dev/null >/dev/null 2>&1 &")
    with pytest.raises(VMError):
        transfer.copy(vmrepo, str(big_tree), "cpvm:/root/", recursive=True)
    assert gexec(vm, "ls -A /root | grep -e big -e vers-tmp || true") == ""

    doomed = verbs.run(vmrepo, RunOptions(name="cpdoomed", make_current=False))
    gexec(doomed, "head -c 200000000 /dev/urandom > /root/big", timeout=300)
    out = tmp_path / "out"
    out.mkdir()
    threading.Timer(3.0, lambda: verbs.kill(vmrepo, [doomed.id])).start()
    with pytest.raises(VMError):
        transfer.copy(vmrepo, "cpdoomed:/root/big", str(out))
    assert list(out.iterdir()) == []


def test_put_is_exact_into_a_file_or_a_directory(vmrepo: Repo, vm: Any, tmp_path: Path) -> None:
    """The agent's put keeps content, mode and the mtime to the nanosecond (the cat path of
    older agents keeps whole seconds only), into a new name, a directory, over a file."""
    src = tmp_path / "exact.bin"
    src.write_bytes(os.urandom(5_000_001))
    os.chmod(src, 0o751)
    os.utime(src, ns=(1_600_000_000_123456789, 1_600_000_000_123456789))
    want = md5(src.read_bytes())
    gexec(vm, "mkdir -p /root/put; echo old > /root/put/over")
    vers(vmrepo.root, "cp", str(src), "cpvm:/root/put/new.bin")
    vers(vmrepo.root, "cp", str(src), "cpvm:/root/put/")
    vers(vmrepo.root, "cp", str(src), "cpvm:/root/put")
    vers(vmrepo.root, "cp", str(src), "cpvm:/root/put/over")
    for name in ("new.bin", "exact.bin", "over"):
        out = gexec(vm, f"stat -c '%a %y %s' /root/put/{name}; md5sum < /root/put/{name}")
        assert out.split("\n")[0] == "751 2020-09-13 12:26:40.123456789 +0000 5000001", out
        assert out.split("\n")[1].split()[0] == want
    assert gexec(vm, "ls -A /root/put") == "exact.bin\nnew.bin\nover\n"
    # an empty file, and a name with a space
    empty = tmp_path / "e mpty"
    empty.write_bytes(b"")
    vers(vmrepo.root, "cp", str(empty), "cpvm:/root/put/")
    assert gexec(vm, "stat -c %s '/root/put/e mpty'") == "0\n"


class _Stalling(io.RawIOBase):
    """``size`` bytes, of which the first ``stall_at`` come at once; then it waits for ``go``
    and fails (or goes on, with ``fail=False``)."""

    def __init__(self, size: int, stall_at: int, fail: bool = True) -> None:
        super().__init__()
        self.left, self.stall_at, self.fail = size, stall_at, fail
        self.sent = 0
        self.stalled, self.go = threading.Event(), threading.Event()
        self.md5 = hashlib.md5()

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.sent >= self.stall_at and not self.go.is_set():
            self.stalled.set()
            self.go.wait(120)
            if self.fail:
                raise OSError("the source broke")
        n = min(len(b), self.left, 1 << 20)
        data = os.urandom(n)
        b[:n] = data
        self.md5.update(data)
        self.left -= n
        self.sent += n
        return n


def _put_in_background(repo: Repo, path: str, reader: _Stalling,
                       errors: list[BaseException],
                       target: str = "cpvm:/root/halfway/big") -> threading.Thread:
    src = Path(path)

    def go() -> None:
        try:
            loc = transfer.parse_location(repo, target)
            sink = transfer.VMSink(loc, "big", src)
            assert sink.put is not None, "the agent did not take the file itself"
            transfer._receive(sink, io.BufferedReader(reader))
            sink.commit()
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            errors.append(exc)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def test_an_interrupted_put_leaves_nothing(vmrepo: Repo, vm: Any, tmp_path: Path) -> None:
    """While the bytes stream in, the agent's temporary file exists and the target does not;
    a source that fails (the host sends CLOSE), a connection that breaks, and a `vers cp`
    killed half-way each leave neither."""
    gexec(vm, "rm -rf /root/halfway; mkdir /root/halfway")
    meta = tmp_path / "meta"  # the size announced: the stalling reader's
    with open(meta, "wb") as f:
        f.truncate(64 << 20)
    for how in ("source fails", "connection breaks"):
        reader, errors = _Stalling(64 << 20, 8 << 20, fail=how == "source fails"), []
        t = _put_in_background(vmrepo, str(meta), reader, errors)
        assert reader.stalled.wait(120), errors
        time.sleep(0.5)  # what was sent reaches the guest
        listing = gexec(vm, "ls -A /root/halfway")
        assert re.fullmatch(r"\.vers-tmp-\w{6}\n", listing), (how, listing)
        if how == "connection breaks":
            conn = agent.acquire(vm.runtime.agent_sock, 10)
            agent.release(conn)
            conn.close()
        reader.go.set()
        t.join(60)
        assert errors and isinstance(errors[0], (OSError, VMError)), (how, errors)
        deadline = time.monotonic() + 10
        while (left := gexec(vm, "ls -A /root/halfway")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert left == "", (how, left)

    big = tmp_path / "big"
    big.write_bytes(os.urandom(256 << 20))
    proc = subprocess.Popen(["vers", "cp", str(big), "cpvm:/root/halfway/big"], cwd=vmrepo.root,
                            env=vers_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(2.0)
    assert proc.poll() is None, "the copy ended before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert gexec(vm, "ls -A /root/halfway") == ""


def test_a_put_during_a_freeze_waits_for_the_thaw(vmrepo: Repo, vm: Any, tmp_path: Path) -> None:
    """A commit's freeze in the middle of a put (the same process, as an SDK user may do): the
    agent holds the bytes in memory instead of blocking on the frozen disk, so it still answers
    the thaw, and the file lands whole after it."""
    gexec(vm, "rm -rf /root/frz; mkdir /root/frz")
    meta = tmp_path / "meta"
    with open(meta, "wb") as f:
        f.truncate(32 << 20)
    reader, errors = _Stalling(32 << 20, 4 << 20, fail=False), []
    t = _put_in_background(vmrepo, str(meta), reader, errors, "cpvm:/root/frz/big")
    assert reader.stalled.wait(120), errors
    fs = GuestFileSystems(vm.runtime.agent_sock)
    try:
        fs.sync()
        assert fs.freeze() >= 1
        reader.go.set()
        deadline = time.monotonic() + 60
        while reader.left and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # the rest of the file reaches the agent while the disk is frozen
        assert fs.thaw(), "the thaw was not answered before the freeze expired"
    finally:
        fs.close()
    t.join(120)
    assert not errors, errors
    out = gexec(vm, "md5sum < /root/frz/big; ls -A /root/frz")
    assert out == f"{reader.md5.hexdigest()}  -\nbig\n", out


def test_an_agent_of_protocol_1_2_takes_files_through_cat(vmrepo: Repo,
                                                          tmp_path: Path) -> None:
    """The agent one minor version back (no put): a file still goes in, through cat, keeping
    its mode and its mtime to the second."""
    old = verbs.run(vmrepo, RunOptions(name="cpold", make_current=False))
    src = re.sub(r"#define PROTO_MINOR \d+", "#define PROTO_MINOR 2",
                 AGENT_SOURCE_PATH.read_text())
    (tmp_path / "old.c").write_text(src)
    subprocess.run(["gcc", "-static", "-O2", "-std=c99", "-o", str(tmp_path / "old-agent"),
                    str(tmp_path / "old.c")], check=True)
    vers(vmrepo.root, "cp", str(tmp_path / "old-agent"), "cpold:/root/old-agent")
    gexec(old, "chmod +x /root/old-agent; old=$(pidof vers-agent); "
               "setsid sh -c \"sleep 1; kill $old; exec /root/old-agent\" "
               "</dev/null >/dev/null 2>&1 &")
    time.sleep(3)
    conn = agent.acquire(old.runtime.agent_sock, 30)
    agent.release(conn)
    assert conn.minor == 2
    f = tmp_path / "f.bin"
    f.write_bytes(os.urandom(3_000_000))
    os.chmod(f, 0o604)
    os.utime(f, ns=(1_500_000_000_987654321, 1_500_000_000_987654321))
    vers(vmrepo.root, "cp", str(f), "cpold:/root/")
    out = gexec(old, "stat -c '%a %Y %y' /root/f.bin; md5sum < /root/f.bin; ls -A /root")
    lines = out.split("\n")
    assert lines[0].startswith("604 1500000000 ") and ".987654321" not in lines[0], out
    assert lines[1].split()[0] == md5(f.read_bytes())
    assert "vers-tmp" not in out


def md5(data: bytes) -> str:
    return subprocess.run(["md5sum"], input=data, capture_output=True,
                          check=True).stdout.split()[0].decode()


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

