"""What another local user can see of a VM: nothing. Checked as user ``nobody`` after running,
committing and restoring VMs under umask 000, on both memory backings."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vmm.conftest import gexec, vers, vm_repo
from vers.repo import Repo
from vers.vmm.boot import RunOptions, restore_commit, run_vm
from vers.vmm.commit import commit_vm
from vers.vmm.memory import load_backing
from vers.vmm.state import registry

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(os.getuid() != 0 or shutil.which("setpriv") is None,
                       reason="needs root and setpriv to act as another user"),
]


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                           *argv], capture_output=True, text=True, check=False, timeout=60)


@pytest.fixture
def umask_000() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _files_of(repo: Repo, rec_ids: list[str]) -> list[Path]:
    reg = registry(repo)
    out: list[Path] = [reg.root, reg.layers, *reg.layers.iterdir()]
    for vid in rec_ids:
        rec = reg.resolve(vid)
        backing = load_backing(rec.memory)
        out += [rec.dir, *rec.dir.iterdir(), backing.path]
        if backing.kind == "shm":
            out.append(Path(rec.memory["ref"]))
        out += [Path(p) for p in (rec.runtime.qmp_sock, rec.runtime.agent_sock)]
    return out


@pytest.mark.parametrize("backing", ["shm", pytest.param("fuse", marks=pytest.mark.skipif(
    not os.path.exists("/dev/fuse"), reason="no /dev/fuse"))])
def test_other_users_cannot_read_ram_layers_or_sockets(tmp_path: Path, backing: str,
                                                       umask_000: None) -> None:
    tmp_path.chmod(0o755)  # nobody may walk to the repository: only vers's own modes protect it
    with vm_repo(tmp_path / "repo", backing) as repo:
        rec = run_vm(repo, RunOptions(name="secret", memory=128 * 1024 * 1024, standby=False))
        gexec(rec, "echo guest-secret-value > /root/secret; sync")
        cid, _ = commit_vm(repo, rec.id, "with a secret")
        restored = restore_commit(repo, cid)
        paths = _files_of(repo, [rec.id, restored.id])
        for p in paths:
            mode = p.lstat().st_mode
            if stat.S_ISDIR(mode):
                assert mode & 0o777 == 0o700, p
            elif p.suffix in (".mem", ".ref", ".qcow2", ".raw", ".log") or "memory" in p.name:
                assert mode & 0o077 == 0, (p, oct(mode))
        for p in paths:
            if stat.S_ISREG(p.lstat().st_mode):
                got = as_nobody("head", "-c", "1", str(p))
                assert got.returncode != 0, f"nobody read {p}"
        sock = rec.runtime.qmp_sock
        got = as_nobody("python3", "-c", f"import socket; s=socket.socket(socket.AF_UNIX); "
                                         f"s.connect({sock!r}); print(s.recv(100))")
        assert got.returncode != 0 and "QMP" not in got.stdout, "nobody reached QMP"


def test_socket_dir_made_by_another_user_is_refused(tmp_path: Path) -> None:
    """A repository path too long for a unix socket puts the sockets in $TMPDIR/vers-<uid>; if
    another user made that directory first (to read or replace our sockets), vers refuses it."""
    shared = Path(tempfile.mkdtemp(prefix="vers-shared-tmp-", dir="/tmp"))  # nobody reaches it
    try:
        shared.chmod(0o1777)
        trap = shared / f"vers-{os.getuid()}"
        assert as_nobody("mkdir", "-m", "0777", str(trap)).returncode == 0
        deep = tmp_path / ("d" * 60) / ("e" * 60)
        with vm_repo(deep, "shm") as repo:
            p = vers(Path(repo.root), "run", "--memory", "128M", "--no-standby", check=False,
                     env={"TMPDIR": str(shared)})
            assert p.returncode == 6, p.stderr
            assert "belongs to uid" in p.stderr and "Traceback" not in p.stderr
            assert not list(trap.iterdir())
            assert registry(repo).all() == []
    finally:
        shutil.rmtree(shared)
