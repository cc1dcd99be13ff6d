"""vers bisect against real git: same history, same predicate, same answer, no more runs.

Each history is built twice (vers commits and a git repository with the same shape and commit
times). The predicate script reads the state number (from ``$VERS_MOUNT/disk`` or from git's work
tree), appends it to a count file, and exits 1 for bad states, 125 for skipped ones, 0 otherwise.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

from vers.testing.graphs import (
    Graph,
    compare_with_git,
    linear,
    random_dag,
    skip_scenario,
)

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _compare(tmp_path: Path, graph: Graph, first_bad: int, skip: set[int], mode: str,
             good: int = 0, strict_runs: bool = True) -> tuple[int, int]:
    answers, counts = compare_with_git(tmp_path, graph, first_bad, skip, mode, good)
    assert answers["vers"] == answers["git"], (answers, counts)
    if not skip:
        assert answers["vers"] == ("found", {first_bad})
    if strict_runs:
        assert counts["vers"] <= counts["git"], counts
    return counts["vers"], counts["git"]


@pytest.mark.parametrize("first_bad", [1, 30, 59])
def test_linear_same_as_git(tmp_path: Path, first_bad: int) -> None:
    _compare(tmp_path, linear(60), first_bad, set(), mode="export")


@pytest.mark.parametrize("seed", range(4))
def test_merges_same_as_git(tmp_path: Path, seed: int) -> None:
    graph = random_dag(80, seed)
    first_bad = 10 + (seed * 13) % 60
    _compare(tmp_path, graph, first_bad, set(), mode="export")


@pytest.mark.parametrize("pattern", ["scattered", "clustered"])
def test_skips_same_as_git(tmp_path: Path, pattern: str) -> None:
    """With skips, which of two equally good candidates comes first depends on commit hashes (git
    sorts ties by SHA-1), so single histories can go either way by a run or two. Over several
    histories vers must give git's answer every time and need no more runs in total."""
    total_vers = total_git = 0
    for seed in range(6):
        rnd = random.Random(seed)
        graph = linear(60) if seed % 2 == 0 else random_dag(60, seed)
        first_bad, skip = skip_scenario(rnd, 60, pattern)
        v, g = _compare(tmp_path / str(seed), graph, first_bad, skip, mode="export",
                        strict_runs=False)
        total_vers += v
        total_git += g
    assert total_vers <= total_git, (total_vers, total_git)


def test_only_skipped_left_same_as_git(tmp_path: Path) -> None:
    # the parent of the first bad commit is skipped: both must give up naming the same set
    _compare(tmp_path, linear(30), 12, {11, 10}, mode="export", strict_runs=False)


@pytest.mark.fuse
def test_mount_mode_same_as_git(tmp_path: Path) -> None:
    if not (os.access("/dev/fuse", os.R_OK | os.W_OK) and shutil.which("fusermount3")):
        pytest.skip("needs /dev/fuse")
    _compare(tmp_path, random_dag(50, 42), 33, {20, 21, 40}, mode="mount", strict_runs=False)
