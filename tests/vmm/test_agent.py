"""The guest agent under real QEMU: streaming exec with stdin, exit codes, timeouts, a full guest
file system, two vers processes at once, an exec across a branch, a shell on a real pty, and the
connection lost when the VM is killed."""

from __future__ import annotations

import fcntl
import hashlib
import os
import select
import struct
import subprocess
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from tests.vmm.conftest import gexec, vers
from vers.errors import GuestTimeout, VMError
from vers.porcelain import vm as verbs
from vers.repo import Repo
from vers.testing import vers_env
from vers.vmm import agent
from vers.vmm.boot import RunOptions
from vers.vmm.state import registry

pytestmark = [pytest.mark.vm, pytest.mark.slow]


@pytest.fixture(scope="module")
def vm(vmrepo: Repo) -> Any:
    rec = verbs.run(vmrepo, RunOptions(name="agentvm"))
    return rec


def popen(repo: Repo, *args: str, **kw: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["vers", *args], cwd=repo.root, env=vers_env(), **kw)


def test_exec_streams_output_as_it_is_produced(vmrepo: Repo, vm: Any) -> None:
    p = popen(vmrepo, "exec", "agentvm", "--", "for i in 1 2 3; do echo line$i; sleep 1; done",
              stdout=subprocess.PIPE)
    assert p.stdout is not None
    arrived = []
    for line in p.stdout:
        arrived.append((time.monotonic(), line))
    assert p.wait(60) == 0
    assert [b for _, b in arrived] == [b"line1\n", b"line2\n", b"line3\n"]
    assert arrived[2][0] - arrived[0][0] > 1.2  # not all at the end


def test_exec_forwards_stdin_and_returns_the_exit_code(vmrepo: Repo, vm: Any) -> None:
    data = os.urandom(300_000)
    p = popen(vmrepo, "exec", "agentvm", "--", "cat > /root/in; md5sum < /root/in; exit 7",
              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out, _ = p.communicate(data, timeout=120)
    assert p.returncode == 7
    assert out.decode().split()[0] == hashlib.md5(data).hexdigest()


def test_exec_current_vm_workdir_env_and_stderr(vmrepo: Repo, vm: Any) -> None:
    registry(vmrepo).set_current(vm.id)
    p = vers(vmrepo.root, "exec", "-w", "/tmp", "-e", "GREETING=hi there", "--",
             "pwd; echo \"$GREETING\"; echo oops >&2")
    assert p.stdout == "/tmp\nhi there\n"
    assert p.stderr == "oops\n"
    p = vers(vmrepo.root, "exec", "-w", "/no/such/dir", "--", "true", check=False)
    assert p.returncode == 126 and "/no/such/dir" in p.stderr


def test_exec_timeout_exits_124_and_kills_the_command(vmrepo: Repo, vm: Any) -> None:
    p = vers(vmrepo.root, "exec", "--timeout", "2", "agentvm", "--",
             "echo $$ > /root/pid; exec sleep 60", check=False)
    assert p.returncode == 124, p.stderr
    time.sleep(0.5)
    assert gexec(vm, "kill -0 $(cat /root/pid) 2>/dev/null && echo alive || echo gone") == "gone\n"
    with pytest.raises(GuestTimeout):
        agent.run(vm.runtime.agent_sock, ["sleep", "30"], timeout=1)


def test_output_survives_a_full_guest_file_system(vm: Any) -> None:
    """The agent needs neither /tmp nor the disk: with both full, output and exit codes are
    intact (the shell agent it replaces spooled output in /tmp and printed nothing)."""
    gexec(vm, "dd if=/dev/zero of=/tmp/fill bs=1M 2>/dev/null; "
              "dd if=/dev/zero of=/root/fill bs=1M 2>/dev/null; true", timeout=120)
    try:
        assert gexec(vm, "df /tmp | tail -1").split()[3] == "0"
        res = agent.guest_exec(vm.runtime.agent_sock,
                               "echo ok; head -c 3000000 /dev/zero | tr '\\0' x; exit 5")
        assert res.returncode == 5
        assert res.stdout == b"ok\n" + b"x" * 3_000_000
    finally:
        gexec(vm, "rm -f /tmp/fill /root/fill")


def test_two_vers_processes_at_once(vmrepo: Repo, vm: Any) -> None:
    procs = [popen(vmrepo, "exec", "agentvm", "--", f"sleep 1; echo from-{i}",
                   stdout=subprocess.PIPE) for i in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs == [b"from-0\n", b"from-1\n"]


def test_several_channels_in_one_process(vm: Any) -> None:
    """One connection carries many commands; a slow reader on one does not stall another."""
    with agent.open_channel(vm.runtime.agent_sock,
                            ["sh", "-c", "head -c 8000000 /dev/zero"]) as big:
        # `big` is not read yet
        res = agent.run(vm.runtime.agent_sock, ["echo", "quick"], timeout=60)
        assert res.stdout == b"quick\n"
        got = 0
        while True:
            ev = big.next_event(timeout=60)
            assert ev is not None
            if ev.kind == "exit":
                break
            got += len(ev.data)
        assert (got, ev.code) == (8_000_000, 0)


def test_exec_across_a_branch_of_the_same_vm(vmrepo: Repo, vm: Any) -> None:
    p = popen(vmrepo, "exec", "agentvm", "--", "sleep 3; echo finished", stdout=subprocess.PIPE)
    time.sleep(1.0)
    child = vers(vmrepo.root, "branch", "agentvm").stdout.split()[0]
    out, _ = p.communicate(timeout=120)
    assert (p.returncode, out) == (0, b"finished\n")
    # the child's agent dropped the parent's channel and answers its own host
    assert vers(vmrepo.root, "exec", child, "--", "echo child").stdout == "child\n"
    vers(vmrepo.root, "kill", child)


def _read_until(fd: int, want: bytes, timeout: float = 60) -> bytes:
    """Read the terminal until ``want`` shows; answer cursor-position queries (busybox's line
    editor asks) as a real terminal would."""
    buf = b""
    deadline = time.monotonic() + timeout
    while want not in buf:
        left = deadline - time.monotonic()
        assert left > 0, f"no {want!r} in {buf[-500:]!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            if b"\x1b[6n" in chunk:
                os.write(fd, b"\x1b[1;1R")
            buf += chunk
    return buf


def test_connect_is_an_interactive_shell_on_a_pty(vmrepo: Repo, vm: Any) -> None:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    p = popen(vmrepo, "connect", "agentvm", stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    try:
        _read_until(master, b"# ")
        os.write(master, b"echo hello-$((6*7))\r")
        _read_until(master, b"hello-42")
        os.write(master, b"stty size\r")
        _read_until(master, b"33 101")
        os.write(master, b"tty\r")
        _read_until(master, b"/dev/pts/")
        # Ctrl-C interrupts the guest's foreground command, not the session
        os.write(master, b"sleep 30; echo after-sleep-$((1+1))\r")
        time.sleep(1.5)
        t0 = time.monotonic()
        os.write(master, b"\x03")
        os.write(master, b"echo still-$((2+3))\r")
        out = _read_until(master, b"still-5")
        assert time.monotonic() - t0 < 20
        assert b"after-sleep-2" not in out
        os.write(master, b"exit 3\r")
        assert p.wait(30) == 3
    finally:
        if p.poll() is None:
            p.kill()
        os.close(master)


def test_connect_needs_a_terminal(vmrepo: Repo, vm: Any) -> None:
    p = vers(vmrepo.root, "connect", "agentvm", check=False)
    assert p.returncode == 2 and "terminal" in p.stderr


def test_killing_the_vm_ends_a_running_exec_with_an_error(vmrepo: Repo, tmp_path: Path) -> None:
    rec = verbs.run(vmrepo, RunOptions(name="doomed", make_current=False))
    with agent.open_channel(rec.runtime.agent_sock, ["sleep", "60"]) as ch:
        verbs.kill(vmrepo, [rec.id])
        with pytest.raises(VMError, match="connection"):
            ch.next_event(timeout=30)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_an_idle_guest_costs_no_cpu_once_the_host_has_gone(vm: Any) -> None:
    """With no host connected the port polls readable (reads return 0): the agent must sleep
    then, not spin, or every idle VM keeps a host core busy."""
    assert gexec(vm, "echo hi").strip() == "hi"  # a host came and went
    time.sleep(1)
    pid = vm.runtime.pid
    before = _cpu_seconds(pid)
    time.sleep(4)
    used = _cpu_seconds(pid) - before
    assert used < 1.0, f"an idle VM's QEMU used {used:.2f} s of CPU in 4 s"
