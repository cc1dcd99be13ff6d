"""``vers bisect run``: let a predicate decide good/bad/skip for each candidate, like git.

Exit codes as in git: 0 good, 125 skip, 1-127 (but 125) bad, anything else (128 or more, killed by
a signal) aborts the bisection. A first run that exits 126/127 (cannot execute / not found) is
checked once against a good commit, as git does, so a typo does not mark everything bad.

Where the predicate runs:

* ``mount`` (default): on the host with ``VERS_COMMIT`` and ``VERS_MOUNT`` set. The repository is
  mounted once per run with the FUSE inspection view and ``VERS_MOUNT`` is
  ``MOUNT/commits/<id>``: the predicate reads only the pages it touches. If FUSE cannot be used,
  each candidate's images are exported into a temporary directory instead (said on stderr).
* ``export``: always the temporary-directory fallback.
* ``none``: only ``VERS_COMMIT``; for predicates that look at the store themselves.
* ``vm``: each candidate is restored into a VM and the command runs inside it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from vers.errors import BisectError, VersError
from vers.files import DIR_MODE, write_private
from vers.fuse import mount as mnt
from vers.porcelain import bisect as bs
from vers.porcelain.bisect.algo import Decision
from vers.porcelain.bisect.vm import VMExecutor
from vers.porcelain.mount import mount, umount
from vers.progress import NO_PROGRESS, Progress
from vers.repo import Repo

_SHELL_CHARS = re.compile(r"[\s|&;<>()$`\\\"'*?\[\]#~=%]")
MODES = ("mount", "export", "none", "vm")


@dataclass
class RunResult:
    """How a ``bisect run`` ended, with numbers for tests and benchmarks."""

    decision: Decision | None
    runs: int = 0
    verdicts: list[tuple[str, str, int]] = field(default_factory=list)  # (commit, word, code)
    overhead_s: float = 0.0  # time spent outside the predicate (setup included)
    setup_s: float = 0.0  # mounting (once per run)
    steps_s: float = 0.0  # bisect's own work between predicate runs (no setup, no teardown)
    predicate_s: float = 0.0
    mode: str = "mount"


class FilesView(AbstractContextManager["FilesView"]):
    """Gives each candidate a directory of its image files, by FUSE mount or by export."""

    def __init__(self, repo: Repo, mode: str, say: bs.Say) -> None:
        self.repo = repo
        self.mode = mode
        self.say = say
        self.mountpoint: Path | None = None
        self.tmp: Path | None = None
        self._exported: str | None = None

    def __enter__(self) -> Self:
        if self.mode == "mount":
            try:
                self._mount()
            except (VersError, OSError, ImportError) as exc:
                self.say(f"vers bisect: cannot mount the repository ({exc}); exporting each "
                         "candidate's images to a temporary directory instead")
                self.mode = "export"
        if self.mode == "export":
            self.tmp = Path(tempfile.mkdtemp(prefix="vers-bisect-"))
        return self

    def _mount(self) -> None:
        if not (os.path.exists("/dev/fuse") and shutil.which("fusermount3")):
            raise BisectError("FUSE is not available (/dev/fuse or fusermount3 missing)")
        point = Path(tempfile.mkdtemp(prefix="vers-bisect-mnt-"))
        try:
            mount(self.repo, point)
        except BaseException:
            point.rmdir()
            raise
        self.mountpoint = point

    def directory(self, cid: str) -> str | None:
        if self.mode == "none":
            return None
        if self.mountpoint is not None:
            mnt.check_alive(self.mountpoint, "bisect mount")
            return os.fspath(self.mountpoint / "commits" / cid)
        assert self.tmp is not None
        target = self.tmp / cid
        if self._exported != cid:
            if self._exported is not None:
                shutil.rmtree(self.tmp / self._exported, ignore_errors=True)
            target.mkdir(mode=DIR_MODE)
            commit = self.repo.get_commit(cid)
            for name in commit.images:
                self.repo.export_image(cid, name, target / name)
            write_private(target / "meta.json", json.dumps(
                {"id": cid, "parents": commit.parents, "author": commit.author,
                 "time": commit.time, "message": commit.message, "config": commit.config},
                indent=2, sort_keys=True) + "\n")
            self._exported = cid
        return os.fspath(target)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.mountpoint is not None:
            try:
                umount(self.repo, self.mountpoint)
            except VersError:
                try:
                    umount(self.repo, self.mountpoint, lazy=True)
                except VersError as e2:
                    self.say(f"vers bisect: could not unmount {self.mountpoint}: {e2}")
            try:
                self.mountpoint.rmdir()
            except OSError:
                pass
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


def command_argv(cmd: list[str]) -> list[str]:
    """One argument with shell syntax runs through ``sh -c`` (like git); several run directly."""
    if not cmd:
        raise BisectError("bisect run: no command given")
    if len(cmd) == 1 and _SHELL_CHARS.search(cmd[0]):
        return ["/bin/sh", "-c", cmd[0]]
    return list(cmd)


def _run_on_host(argv: list[str], cid: str, directory: str | None) -> int:
    env = dict(os.environ, VERS_COMMIT=cid)
    env.pop("VERS_MOUNT", None)
    if directory is not None:
        env["VERS_MOUNT"] = directory
    try:
        # the predicate's stdout goes to our stderr: our stdout carries only the answer
        proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno()
                              if _has_fileno(sys.stderr) else None, check=False)
    except FileNotFoundError:
        return 127
    except PermissionError:
        return 126
    return proc.returncode


def _has_fileno(f: Any) -> bool:
    try:
        f.fileno()
        return True
    except (OSError, AttributeError, ValueError):
        return False


def verdict_for(code: int, terms: bs.Terms) -> str | None:
    """git's mapping of an exit code to a verdict; None aborts."""
    if code == 0:
        return terms.good
    if code == 125:
        return "skip"
    if 1 <= code <= 127:
        return terms.bad
    return None


def run(
    repo: Repo,
    cmd: list[str],
    mode: str = "mount",
    say: bs.Say = bs._quiet,
    executor: Callable[[list[str], str, str | None], int] | None = None,
    progress: Progress = NO_PROGRESS,
) -> RunResult:
    """Test candidates with ``cmd`` until the first bad commit is known (or only skips remain);
    ``progress`` counts the predicate runs against the steps the search expects."""
    if mode not in MODES:
        raise BisectError(f"unknown predicate mode {mode!r} (want one of {', '.join(MODES)})")
    bs._require(repo)
    terms = bs.read_terms(repo)
    marks = bs.read_marks(repo, terms)
    if marks.bad is None or not marks.goods:
        raise BisectError(f"bisect run needs at least one {terms.good} and one {terms.bad} "
                          f"commit: mark them first ('vers bisect {terms.bad} REV', "
                          f"'vers bisect {terms.good} REV')")
    argv = command_argv(cmd)
    if mode == "vm":
        vm = VMExecutor(repo, list(cmd), say)
        executor = vm.run
        files_mode = "none"
    else:
        files_mode = mode
    result = RunResult(None, mode=files_mode if mode != "vm" else "vm")
    commits = bs.CommitCache(repo)
    t_total = time.perf_counter()
    with FilesView(repo, files_mode, say) as view, \
            progress.meter("bisect run", unit="steps") as meter:
        result.setup_s = time.perf_counter() - t_total
        result.mode = view.mode if mode != "vm" else "vm"
        decision: Decision | None = None
        cid = bs.current(repo)
        if cid is None:
            decision = bs.next_step(repo, say=say, get=commits)
            if decision is None or decision.kind in ("found", "only_skipped"):
                result.decision = decision
                return result
            cid = decision.commit
        if decision is not None:
            meter.set_total(decision.steps + 1)
        first = True
        while cid is not None:
            say(f"running {' '.join(cmd)}")
            directory = view.directory(cid)
            t0 = time.perf_counter()
            code = (executor or _run_on_host)(argv, cid, directory)
            result.predicate_s += time.perf_counter() - t0
            result.runs += 1
            if first and code in (126, 127):
                _verify_on_good(repo, argv, code, view, executor, marks.goods[0], result)
            first = False
            word = verdict_for(code, terms)
            if word is None:
                raise BisectError(f"bisect run failed: exit code {code} from '{' '.join(cmd)}' "
                                  "is < 0 or >= 128")
            result.verdicts.append((cid, word, code))
            decision = bs.mark(repo, word, [cid], say=say, get=commits)
            if decision is not None:
                meter.set_total(result.runs + decision.steps + (decision.kind == "test"))
            meter.advance()
            if decision is None or decision.kind in ("found", "only_skipped"):
                break
            cid = decision.commit
        result.steps_s = time.perf_counter() - t_total - result.setup_s - result.predicate_s
    result.decision = decision
    result.overhead_s = time.perf_counter() - t_total - result.predicate_s
    return result


def _verify_on_good(repo: Repo, argv: list[str], code: int, view: FilesView,
                    executor: Callable[[list[str], str, str | None], int] | None, good: str,
                    result: RunResult) -> None:
    """git: a first 126/127 may mean 'cannot run at all'; if a good commit says the same, stop."""
    t0 = time.perf_counter()
    rc = (executor or _run_on_host)(argv, good, view.directory(good))
    result.predicate_s += time.perf_counter() - t0
    result.runs += 1
    if rc < 0 or rc >= 128:
        raise BisectError(f"unable to verify '{' '.join(argv)}' on good revision {good}")
    if rc == code:
        raise BisectError(f"bogus exit code {rc} for good revision {good}: is the command "
                          "right?")
