"""The Debian guest under real QEMU: what it contains, a disk larger than its image, and a Python
process whose in-memory state lives on in every branch child and in a restore of an older commit."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from vers.images import GuestImages
from vers.images.rootfs import sized_overlay
from vers.repo import Repo

from .conftest import boot, gexec, vers

pytestmark = pytest.mark.vm

#: Counts in a dict (its state is only in the process's memory) and writes "PID COUNT" each tick.
COUNTER_PY = r'''
import os, time
state = {"n": 0}
while True:
    state["n"] += 1
    with open("/tmp/counter.new", "w") as f:
        f.write(f"{os.getpid()} {state['n']}\n")
    os.replace("/tmp/counter.new", "/tmp/counter")
    time.sleep(0.1)
'''
START_COUNTER = ("cat >/tmp/counter.py <<'EOF'\n" + COUNTER_PY + "EOF\n"
                 "setsid python3 /tmp/counter.py </dev/null >/dev/null 2>&1 &")
GROWN = 2 << 30


def read_counter(repo: Repo, vm: str) -> tuple[int, int]:
    pid, n = gexec(repo, vm, "cat /tmp/counter 2>/dev/null || echo 0 0").split()
    return int(pid), int(n)


def counter_after(repo: Repo, vm: str, value: int, timeout: float = 60) -> tuple[int, int]:
    """The counter once it has passed ``value`` (it must, within ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, n = read_counter(repo, vm)
        if n > value:
            return pid, n
        assert time.monotonic() < deadline, f"counter of {vm} stuck at {n}"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def debian_vm(imgrepo: Repo, debian_image: GuestImages,
              ) -> str:
    """The Debian guest booted with a 2 GiB root disk (`--disk-size`: its image is smaller),
    running the counter."""
    vm = boot(imgrepo, "debian", name="debian", disk_size=GROWN)
    gexec(imgrepo, vm, START_COUNTER)
    counter_after(imgrepo, vm, 0)
    return vm


def test_debian_guest_has_its_tools_and_fills_a_larger_disk(
        imgrepo: Repo, debian_vm: str, debian_image: GuestImages) -> None:
    out = gexec(imgrepo, debian_vm, "python3 -c 'import ssl, venv; print(\"py-ok\")'; "
                "python3 -m pip --version; curl --version | head -n1; ip -V; ps -p 1 -o comm=; "
                "test -s /etc/ssl/certs/ca-certificates.crt && echo certs-ok; "
                "cat /etc/vers-guest; df -B1 --output=size / | tail -n1")
    assert "py-ok" in out and "pip " in out and "curl " in out and "iproute2" in out
    assert "certs-ok" in out and "debian image" in out
    lines = out.split()
    assert "vers-init" in out  # PID 1 is vers' init, not systemd
    fs_size = int(lines[-1])
    assert fs_size > debian_image.disk.stat().st_size, "the root file system did not grow"
    assert fs_size > GROWN * 0.9


def test_python_state_lives_on_in_branch_children_and_an_older_commit(
        imgrepo: Repo, debian_vm: str) -> None:
    cwd = imgrepo.root
    pid, at_commit = read_counter(imgrepo, debian_vm)
    cid = vers(cwd, "commit", debian_vm, "-m", "counter running").strip()
    counter_after(imgrepo, debian_vm, at_commit + 20)
    _, before_branch = read_counter(imgrepo, debian_vm)
    children = vers(cwd, "branch", debian_vm, "--count", "3").split()
    assert len(children) == 3
    for child in children:
        cpid, _ = counter_after(imgrepo, child, before_branch)
        assert cpid == pid, "the child runs a new process, not the parent's"
    _, parent_now = counter_after(imgrepo, debian_vm, before_branch)
    restored = vers(cwd, "run-commit", cid).strip()
    rpid, first = read_counter(imgrepo, restored)
    assert rpid == pid
    assert at_commit <= first < parent_now, "the restore did not start from the commit's state"
    _, later = counter_after(imgrepo, restored, first)
    assert later > first
    vers(cwd, "kill", *children, restored)


def test_sized_overlay_gives_a_larger_disk_and_refuses_a_smaller_one(
        debian_image: GuestImages, tmp_path: Path) -> None:
    """The host side of --disk-size: a qcow2 overlay on the image, of the size asked for."""
    from vers.errors import BadInput

    sized_overlay(debian_image.disk, tmp_path / "big.qcow2", GROWN)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json",
                                      str(tmp_path / "big.qcow2")], capture_output=True,
                                     check=True).stdout)
    assert info["virtual-size"] == GROWN
    assert info["backing-filename"] == str(debian_image.disk)
    with pytest.raises(BadInput, match="smaller than the image"):
        sized_overlay(debian_image.disk, tmp_path / "small.qcow2", 1 << 20)
