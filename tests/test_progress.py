"""Progress meters: drawn on stderr when it is a terminal (a real pseudo-terminal here), never
on a pipe, never with -q, and never on stdout, whose bytes are the same either way."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import struct
import subprocess
import termios
import threading
from pathlib import Path

import pytest

from vers.progress import NO_PROGRESS, Progress
from vers.testing import make_image, run_vers, vers_env, vers_ok

MIB = 1 << 20
#: a meter's redraw, e.g. "\rsnapshot:  42%|####    | 54.0M/128M [00:01<00:02, 40.0MB/s]",
#: "\rfsck: walking history: 19358objects [...]" or "\rgc: sweeping: 00:01"
METER = re.compile(r"\r([a-z][a-z ]*(?:: [a-z ]+)?): +\d")
#: a carriage return that redraws a line (the terminal itself writes \r\n for each newline)
REDRAW = re.compile(r"\r(?!\n)")


def on_terminal(cwd: Path, *args: str, env: dict[str, str] | None = None,
                ) -> tuple[int, bytes, str]:
    """Run vers with stderr on a pseudo-terminal (80x24) and stdout on a pipe; returns the exit
    code, stdout's bytes and what the terminal showed."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    shown = bytearray()

    def read_terminal() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the last writer closed the terminal
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=read_terminal)
    reader.start()
    try:
        p = subprocess.run(["vers", *args], cwd=cwd,
                           env={**vers_env(None), **(env or {})},
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave,
                           timeout=300, check=False)
    finally:
        os.close(slave)
        reader.join(timeout=30)
        os.close(master)
    return p.returncode, p.stdout, shown.decode(errors="replace")


def meters(terminal: str) -> set[str]:
    return {m.group(1).strip() for m in METER.finditer(terminal)}


@pytest.fixture(scope="module")
def repo_with_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository and a 128 MiB image: long enough to snapshot that a meter is shown."""
    root = tmp_path_factory.mktemp("progress")
    vers_ok(root, "init")
    make_image(root / "mem", 128 * MIB, seed=3)
    return root


def test_snapshot_shows_a_meter_on_a_terminal_only(repo_with_image: Path, tmp_path: Path) -> None:
    a, b, c = (tmp_path / n for n in "abc")
    for d in (a, b, c):
        shutil.copytree(repo_with_image, d)
    # the meter must be drawn however fast this machine is: no delay before it
    code, out, shown = on_terminal(a, "snapshot", "--memory", "mem", "-m", "big",
                                   env={"VERS_PROGRESS_AFTER": "0"})
    assert code == 0, shown
    assert "snapshot" in meters(shown), shown
    assert "128M/128M" in shown, "the meter reaches the image's size"
    assert re.fullmatch(rb"[0-9a-f]{64}\n", out), out
    piped = run_vers(b, "snapshot", "--memory", "mem", "-m", "big")
    assert piped.returncode == 0
    assert not METER.search(piped.stderr) and "\r" not in piped.stderr, piped.stderr
    assert re.fullmatch(r"[0-9a-f]{64}\n", piped.stdout)
    code, out, shown = on_terminal(c, "-q", "snapshot", "--memory", "mem", "-m", "big")
    assert code == 0 and not METER.search(shown) and not REDRAW.search(shown), shown
    assert re.fullmatch(rb"[0-9a-f]{64}\n", out)


def test_export_fsck_gc_and_clone_meters(repo_with_image: Path, tmp_path: Path) -> None:
    repo = tmp_path / "r"
    shutil.copytree(repo_with_image, repo)
    vers_ok(repo, "snapshot", "--memory", "mem")
    vers_ok(repo, "branch-create", "scratch")  # garbage for gc: a branch's own pages
    vers_ok(repo, "switch", "scratch")
    make_image(repo / "other", 128 * MIB, seed=4)
    vers_ok(repo, "snapshot", "--memory", "other")
    vers_ok(repo, "switch", "main")
    vers_ok(repo, "branch-delete", "scratch")
    cases = [("export", "HEAD", "--memory", str(tmp_path / "out")),
             ("fsck",),
             ("gc", "--grace", "0", "--expire-reflog", "now", "--max-unused", "0")]
    for args in cases:
        # gc's steps here may take less than the delay a meter waits for: draw them at once
        code, out, shown = on_terminal(repo, *args, env={"VERS_PROGRESS_AFTER": "0"})
        assert code == 0, shown
        assert any(m.startswith(args[0]) for m in meters(shown)), (args, shown)
        piped = run_vers(repo, *args)
        assert piped.returncode == 0 and not METER.search(piped.stderr), piped.stderr
        if args[0] == "gc":  # the step lines stay, for logs; on a terminal above the meters
            assert "gc: marking reachable objects" in piped.stderr
            assert "gc: marking reachable objects" in shown
        else:
            assert out == piped.stdout.encode(), args
    assert (tmp_path / "out").read_bytes() == (repo / "mem").read_bytes()

    vers_ok(repo, "remote", "add", "origin", str(tmp_path / "remote"))
    now = {"VERS_PROGRESS_AFTER": "0"}  # a fast machine pushes 66 MiB in less than the delay
    code, _out, shown = on_terminal(repo, "push", "origin", env=now)
    assert code == 0 and "push" in meters(shown), shown
    assert "sent " in shown, "the summary follows the meter"
    code, out, shown = on_terminal(tmp_path, "clone", str(tmp_path / "remote"), "c1", env=now)
    assert code == 0 and "fetch" in meters(shown), shown
    piped = run_vers(tmp_path, "clone", str(tmp_path / "remote"), "c2")
    assert piped.returncode == 0 and not METER.search(piped.stderr)
    assert out == piped.stdout.encode()
    code, out, shown = on_terminal(tmp_path, "-q", "clone", str(tmp_path / "remote"), "c3")
    assert code == 0 and shown == "" and out == piped.stdout.encode()


def test_quick_jobs_and_disabled_progress_draw_nothing(tmp_path: Path) -> None:
    master, slave = os.openpty()
    try:
        with os.fdopen(os.dup(slave), "w") as stream:
            p = Progress.for_terminal(stream=stream)
            assert p.enabled
            with p.meter("quick", total=10) as m:
                m.advance(10)
            stream.flush()
            os.set_blocking(master, False)
            with pytest.raises(BlockingIOError):
                os.read(master, 1024)
            assert not Progress.for_terminal(quiet=True, stream=stream).enabled
    finally:
        os.close(slave)
        os.close(master)
    with open(tmp_path / "log", "w") as f:
        assert Progress.for_terminal(stream=f) is NO_PROGRESS
    with NO_PROGRESS.meter("x", total=1) as m:  # a no-op, whatever it is told
        m.advance(5, 10)
        m.set_total(None)
        m.phase("y")


@pytest.mark.vm
def test_boot_wait_and_first_commit_show_meters(tmp_path: Path) -> None:
    vers_ok(tmp_path, "init")
    try:
        code, out, shown = on_terminal(tmp_path, "run", "--memory", "512M", "--name", "p")
        assert code == 0, shown
        assert "booting: waiting for the guest agent" in meters(shown), shown
        assert re.fullmatch(rb"[0-9a-f]+\n", out), out
        code, out, shown = on_terminal(tmp_path, "commit", "-m", "first",
                                       env={"VERS_PROGRESS_AFTER": "0"})
        assert code == 0, shown
        assert "commit" in meters(shown), shown  # the first commit reads all 512 MiB
        assert re.fullmatch(rb"[0-9a-f]{64}\n", out), out
        piped = run_vers(tmp_path, "commit", "-m", "second")
        assert piped.returncode == 0 and not METER.search(piped.stderr), piped.stderr
    finally:
        run_vers(tmp_path, "kill", "p")
