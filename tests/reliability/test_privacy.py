"""What vers writes is its owner's alone, whatever the umask: machine images hold whatever the
guest held (keys, passwords, database rows)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from vers.objects.model import PAGE_SIZE
from vers.testing import make_image, vers_env


def vers_umask0(cwd: Path, *args: str) -> str:
    """``vers`` run under umask 000, the most permissive a user can have."""
    p = subprocess.run(["vers", *args], cwd=cwd, env=vers_env(), capture_output=True, text=True,
                       timeout=120, preexec_fn=lambda: os.umask(0), check=False)
    assert p.returncode == 0, (args, p.stderr)
    return p.stdout


def modes(root: Path) -> dict[str, int]:
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath) / name
            out[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return out


def test_everything_written_is_private_under_umask_0(tmp_path: Path) -> None:
    vers_umask0(tmp_path, "init", "repo")
    work = tmp_path / "repo"
    assert stat.S_IMODE(work.stat().st_mode) == 0o700, "the directory init created"
    make_image(work / "mem", 64 * PAGE_SIZE, seed=9)
    first = vers_umask0(work, "snapshot", "--memory", "mem", "-m", "one").strip()
    vers_umask0(work, "tag", "v1")
    make_image(work / "mem", 64 * PAGE_SIZE, seed=10)
    vers_umask0(work, "snapshot", "--memory", "mem", "-m", "two")
    vers_umask0(work, "export", "HEAD", "--memory", "out.img")
    vers_umask0(work, "gc", "--grace", "0")
    vers_umask0(work, "bisect", "start", "HEAD", first)
    vers_umask0(work, "remote", "add", "origin", str(tmp_path / "remote"))
    vers_umask0(work, "push", "-q", "origin")
    vers_umask0(work, "fetch", "-q", "origin")

    assert stat.S_IMODE((work / "out.img").stat().st_mode) == 0o600, "the export"
    found = modes(work / ".vers")
    for name in ("store/data.mdb", "store/lock.mdb", "store/gc.lock", "config.json",
                 "BISECT_LOG", "BISECT_START", "remotes/origin/index"):
        assert name in found, f"the test covers {name}"
    loose = {name: oct(mode) for name, mode in found.items()
             if mode != (0o700 if (work / ".vers" / name).is_dir() else 0o600)}
    assert not loose, f"not private: {loose}"
