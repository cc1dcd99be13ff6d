"""Each class of failure exits with its own code, and docs/cli.md documents exactly that table."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from vers import errors
from vers.cli import cli
from vers.cli._group import open_repo
from vers.repo import Repo
from vers.testing import make_image, run_vers

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_docs_table_is_the_code_table() -> None:
    text = DOCS.read_text()
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| (\d+) \| (.+) \|$", section, re.MULTILINE))
    assert {int(k): v for k, v in rows.items()} == errors.EXIT_CODES


def test_codes_are_distinct() -> None:
    codes = [v for k, v in vars(errors).items() if k.startswith("EXIT_") and isinstance(v, int)]
    assert len(codes) == len(set(codes)) == len(errors.EXIT_CODES)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    assert run_vers(tmp_path, "init").returncode == 0
    return tmp_path


def _snapshot(work: Path, seed: int) -> str:
    make_image(work / "mem.img", 64 * 4096, seed=seed)
    p = run_vers(work, "snapshot", "--memory", str(work / "mem.img"), "-m", f"s{seed}")
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


@pytest.mark.parametrize("args, code, words", [
    (("gc", "--grace", "soon"), errors.EXIT_BAD_INPUT, "bad duration"),
    (("show", "nosuchref"), errors.EXIT_NOT_FOUND, "nosuchref"),
    (("log", "deadbeefdeadbeef"), errors.EXIT_NOT_FOUND, "deadbeef"),
    (("kill",), errors.EXIT_BAD_INPUT, "or --all"),
    (("kill", "--all", "somevm"), errors.EXIT_BAD_INPUT, "no VM names"),
])
def test_error_classes_exit_with_their_code(work: Path, args: tuple[str, ...], code: int,
                                            words: str) -> None:
    _snapshot(work, 1)
    p = run_vers(work, *args)
    assert p.returncode == code, (p.returncode, p.stderr)
    assert p.stderr.startswith("vers: error: ") and words in p.stderr
    assert "Traceback" not in p.stderr


def test_not_a_repository_is_not_found(tmp_path: Path) -> None:
    p = run_vers(tmp_path, "log")
    assert p.returncode == errors.EXIT_NOT_FOUND and "not a vers repository" in p.stderr


def test_click_usage_error_is_bad_input(work: Path) -> None:
    assert run_vers(work, "log", "--no-such-option").returncode == errors.EXIT_BAD_INPUT


def test_bisect_with_only_skipped_commits_left(work: Path) -> None:
    ids = [_snapshot(work, s) for s in range(3)]
    assert run_vers(work, "bisect", "start", ids[2], ids[0]).returncode == 0
    p = run_vers(work, "bisect", "skip")
    assert p.returncode == errors.EXIT_BISECT_SKIPPED, (p.returncode, p.stdout, p.stderr)


def test_the_group_opens_and_closes_the_repository_once(work: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Every open_repo() of one command line is the same Repo, closed once when it ends."""
    _snapshot(work, 1)
    opened: list[Repo] = []
    closed: list[Repo] = []
    real_close = Repo.close

    def counting_close(self: Repo) -> None:
        closed.append(self)
        real_close(self)

    monkeypatch.setattr(Repo, "close", counting_close)

    @cli.command("test-open-twice", hidden=True)
    def _twice() -> None:
        opened.extend([open_repo(), open_repo()])

    try:
        cli.main(["-C", str(work), "test-open-twice"], standalone_mode=False)
    finally:
        cli.commands.pop("test-open-twice", None)
    assert len(opened) == 2 and opened[0] is opened[1]
    assert closed == [opened[0]]
    with pytest.raises(click.exceptions.NoSuchOption):
        cli.main(["-C", str(work), "log", "--nope"], standalone_mode=False)
