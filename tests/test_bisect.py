"""vers bisect on its own: 1024 commits in <= 11 runs, replay, reset, terms, view, bad input."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vers.errors import BadRevision, BisectError
from vers.porcelain import bisect as bs
from vers.porcelain.bisect.algo import estimate_steps, find_bisection
from vers.porcelain.bisect.run import run, verdict_for
from vers.repo import Repo
from vers.testing.graphs import build_vers, linear, random_dag, state_image


@pytest.fixture
def hist(tmp_path: Path) -> tuple[Repo, list[str]]:
    repo = Repo.init(tmp_path / "r")
    ids = build_vers(repo, linear(40))
    repo.refs.set_symbolic_ref("HEAD", "refs/heads/main")
    yield repo, ids
    repo.close()


def _state(repo: Repo, cid: str) -> int:
    return int(repo.open_image(cid, "disk").pread(0, 16).split(b"\0")[0].split()[1])


def _predicate(first_bad: int):
    """An in-process predicate (the executor hook): no process spawn, counts runs."""
    calls: list[int] = []

    def executor(argv: list[str], cid: str, directory: str | None) -> int:
        n = _state(repo_ref[0], cid)
        calls.append(n)
        return 1 if n >= first_bad else 0

    repo_ref: list[Repo] = []
    return executor, calls, repo_ref


def test_linear_1024_needs_at_most_11_runs(tmp_path: Path) -> None:
    repo = Repo.init(tmp_path / "r")
    ids = build_vers(repo, linear(1024))
    for first_bad in (1, 500, 777, 1023):
        executor, calls, ref = _predicate(first_bad)
        ref.append(repo)
        bs.start(repo, ids[-1], [ids[0]])
        result = run(repo, ["true"], mode="none", executor=executor)
        assert result.decision is not None and result.decision.kind == "found"
        assert result.decision.commit == ids[first_bad]
        assert len(calls) <= 11, (first_bad, calls)
        assert repo.refs.resolve("refs/bisect/bad") == ids[first_bad]
        bs.reset(repo)
    repo.close()


def test_manual_steps_and_first_bad(hist: tuple[Repo, list[str]]) -> None:
    repo, ids = hist
    msgs: list[str] = []
    d = bs.start(repo, "main", ["main~39"], say=msgs.append)
    assert d is not None and d.kind == "test"
    assert any("left to test after this" in m and "roughly" in m for m in msgs)
    assert bs.current(repo) == d.commit
    for _ in range(10):
        word = "bad" if _state(repo, d.commit) >= 25 else "good"
        d = bs.mark(repo, word)  # no revision: the current candidate
        assert d is not None
        if d.kind == "found":
            break
    assert d.kind == "found" and d.commit == ids[25]
    assert repo.refs.resolve("refs/bisect/bad") == ids[25]
    assert f"{ids[25]} is the first bad commit" in bs.first_bad_message(repo, ids[25])
    assert "# first bad commit" in bs.log(repo)
    # HEAD never moved: bisect does not check out
    assert repo.refs.read_ref("HEAD") == "ref: refs/heads/main"


def test_replay_reaches_same_state(hist: tuple[Repo, list[str]], tmp_path: Path) -> None:
    repo, ids = hist
    bs.start(repo, ids[-1], [ids[0]])
    bs.mark(repo, "skip")
    bs.mark(repo, "good", [ids[10]])
    d = bs.mark(repo, "bad", [ids[30]])
    saved = tmp_path / "bisect.log"
    saved.write_text(bs.log(repo))
    refs_before = repo.refs.list_refs("refs/bisect/")
    bs.reset(repo)
    assert not bs.in_progress(repo) and repo.refs.list_refs("refs/bisect/") == {}
    d2 = bs.replay(repo, saved)
    assert repo.refs.list_refs("refs/bisect/") == refs_before
    assert d is not None and d2 is not None and d2.commit == d.commit
    assert bs.current(repo) == d.commit


def test_reset_clears_everything(hist: tuple[Repo, list[str]]) -> None:
    repo, ids = hist
    bs.start(repo, ids[-1], [ids[0]])
    assert bs.reset(repo)
    assert repo.refs.list_refs("refs/bisect/") == {}
    assert repo.refs.read_ref("BISECT_HEAD") is None
    assert not list(Path(repo.vers_dir).glob("BISECT_*"))
    assert bs.reset(repo) is False  # "We are not bisecting."


def test_custom_terms(hist: tuple[Repo, list[str]]) -> None:
    repo, ids = hist
    d = bs.start(repo, ids[-1], [ids[0]], term_old="broken", term_new="fixed")
    assert bs.terms(repo) == bs.Terms("fixed", "broken")
    assert repo.refs.resolve("refs/bisect/fixed") == ids[-1]
    while d is not None and d.kind == "test":
        d = bs.mark(repo, "fixed" if _state(repo, d.commit) >= 7 else "broken")
    assert d is not None and d.kind == "found" and d.commit == ids[7]
    with pytest.raises(BisectError, match="currently in a fixed/broken bisect"):
        bs.mark(repo, "bad")
    assert "is the first fixed commit" in bs.first_bad_message(repo, ids[7])


def test_old_new_adopted_when_unmarked(hist: tuple[Repo, list[str]]) -> None:
    repo, ids = hist
    bs.start(repo)
    bs.mark(repo, "new", [ids[-1]])
    assert bs.terms(repo) == bs.Terms("new", "old")
    d = bs.mark(repo, "old", [ids[0]])
    assert d is not None and d.kind == "test"


def test_bad_terms_rejected(hist: tuple[Repo, list[str]]) -> None:
    repo, _ = hist
    for old, new in (("good", "good"), ("run", "bad"), ("good", "old"), ("a b", "bad")):
        with pytest.raises(BisectError):
            bs.start(repo, term_old=old, term_new=new)
    assert not bs.in_progress(repo)


def test_no_bisect_in_progress(hist: tuple[Repo, list[str]]) -> None:
    repo, _ = hist
    for fn in (lambda: bs.mark(repo, "good"), lambda: bs.log(repo), lambda: bs.visualize(repo),
               lambda: run(repo, ["true"], mode="none")):
        with pytest.raises(BisectError, match="not bisecting"):
            fn()


def test_bad_revision_changes_nothing(hist: tuple[Repo, list[str]]) -> None:
    repo, ids = hist
    with pytest.raises(BadRevision):
        bs.start(repo, "nonexistent", [ids[0]])
    assert not bs.in_progress(repo)
    bs.start(repo, ids[-1])
    with pytest.raises(BadRevision):
        bs.mark(repo, "good", [ids[0], "deadbeef0000"])
    assert bs.read_marks(repo).goods == []  # validated before anything was written


def test_run_needs_good_and_bad(hist: tuple[Repo, list[str]]) -> None:
    repo, ids = hist
    bs.start(repo, ids[-1])
    with pytest.raises(BisectError, match="at least one good and one bad"):
        run(repo, ["true"], mode="none")


def test_exit_code_mapping() -> None:
    t = bs.Terms()
    assert verdict_for(0, t) == "good"
    assert verdict_for(125, t) == "skip"
    assert all(verdict_for(c, t) == "bad" for c in (1, 2, 124, 126, 127))
    assert (verdict_for(128, t) is None and verdict_for(-9, t) is None
            and verdict_for(255, t) is None)


def test_run_aborts_on_128(hist: tuple[Repo, list[str]]) -> None:
    repo, ids = hist
    bs.start(repo, ids[-1], [ids[0]])
    with pytest.raises(BisectError, match="exit code 130"):
        run(repo, ["sh", "-c", "exit 130"], mode="none")
    assert bs.in_progress(repo)  # the bisection stays where it was


def test_missing_command_is_not_taken_for_bad(hist: tuple[Repo, list[str]]) -> None:
    repo, ids = hist
    bs.start(repo, ids[-1], [ids[0]])
    with pytest.raises(BisectError, match="bogus exit code 127"):
        run(repo, ["/nonexistent/predicate"], mode="none")


def test_run_with_real_process_and_export(hist: tuple[Repo, list[str]], tmp_path: Path) -> None:
    repo, ids = hist
    script = tmp_path / "p.sh"
    script.write_text('#!/bin/sh\necho "$VERS_COMMIT" >> "$LOGF"\n'
                      'n=$(head -c 12 "$VERS_MOUNT/disk" | tr -d "\\000" | cut -d" " -f2)\n'
                      'test -f "$VERS_MOUNT/meta.json" || exit 200\n'
                      '[ "$n" -ge 31 ] && exit 3; [ "$n" = 20 ] && exit 125; exit 0\n')
    script.chmod(0o755)
    os.environ["LOGF"] = str(tmp_path / "log")
    try:
        bs.start(repo, ids[-1], [ids[0]])
        result = run(repo, [str(script)], mode="export")
    finally:
        del os.environ["LOGF"]
    assert result.decision is not None and result.decision.commit == ids[31]
    seen = (tmp_path / "log").read_text().split()
    assert len(seen) == result.runs and set(seen) <= set(ids)


def test_merge_base_must_be_tested(tmp_path: Path) -> None:
    # good on a side branch that is not an ancestor of bad: git tests the merge base first
    repo = Repo.init(tmp_path / "r")
    g = random_dag(2, 0)
    g.parents = [[], [0], [1], [2], [1], [4]]  # 0-1-2-3 (bad=3) and 1-4-5 (good=5)
    ids = build_vers(repo, g, ref=None)
    d = bs.start(repo, ids[3], [ids[5]])
    assert d is not None and d.kind == "merge_base" and d.commit == ids[1]
    d = bs.mark(repo, "good")
    assert d is not None and d.kind == "test" and d.commit in (ids[2], ids[3])
    bs.reset(repo)
    bs.start(repo, ids[3], [ids[5]])
    with pytest.raises(BisectError, match="merge base"):
        bs.mark(repo, "bad")  # the merge base itself is bad
    repo.close()


def test_estimate_steps_matches_git() -> None:
    # values from git's estimate_bisect_steps
    assert [estimate_steps(n) for n in (1, 2, 3, 4, 5, 6, 7, 8, 1024, 1500)] == \
        [0, 0, 1, 1, 1, 2, 2, 2, 9, 10]


def test_only_bad_left_is_found(tmp_path: Path) -> None:
    repo = Repo.init(tmp_path / "r")
    a = repo.snapshot({"disk": io.BytesIO(state_image(0))}, time=1)
    b = repo.snapshot({"disk": io.BytesIO(state_image(1))}, time=2)
    d = find_bisection(repo.get_commit, b, [a])
    assert d.kind == "found" and d.commit == b
    repo.close()


def test_cli_round_trip(hist: tuple[Repo, list[str]]) -> None:
    repo, ids = hist
    env = {**os.environ, "VERS_DIR": str(repo.root)}

    def vers(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", "from vers.cli import main; main()", *args],
                              env=env, capture_output=True, text=True, check=False)

    assert vers("bisect", "good").returncode == 2  # not bisecting
    r = vers("bisect", "start", "--term-new", "fixed", "--term-old", "broken", ids[-1], ids[0])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() in ids and "left to test" in r.stderr
    r = vers("bisect", "fixed")  # a custom term is a verb
    assert r.returncode == 0, r.stderr
    assert vers("bisect", "terms", "--term-bad").stdout.strip() == "fixed"
    r = vers("bisect", "run", "--files", "none", "sh", "-c", "exit 1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{ids[1]} is the first fixed commit")
    assert "vers bisect fixed" in vers("bisect", "log").stdout
    assert vers("bisect", "view").stdout.startswith(ids[1][:12])
    assert vers("bisect", "reset").returncode == 0
    assert vers("bisect", "start", "nope").returncode != 0


def test_without_fuse_falls_back_to_export(hist: tuple[Repo, list[str]], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """No fusermount3 on PATH (as on a machine without FUSE): said on stderr, export instead."""
    repo, ids = hist
    script = tmp_path / "p.sh"
    script.write_text('#!/bin/sh\nPATH=/usr/bin:/bin\n'
                      'n=$(head -c 12 "$VERS_MOUNT/disk" | tr -d "\\000" | cut -d" " -f2)\n'
                      '[ "$n" -ge 12 ] && exit 1; exit 0\n')
    script.chmod(0o755)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    said: list[str] = []
    bs.start(repo, ids[-1], [ids[0]])
    result = run(repo, [str(script)], mode="mount", say=said.append)
    assert result.mode == "export"
    assert any("exporting each candidate" in m for m in said)
    assert result.decision is not None and result.decision.commit == ids[12]
