"""Errors that say what the user probably meant (git's "did you mean")."""

from __future__ import annotations

from pathlib import Path

import pytest

from vers.errors import EXIT_NOT_FOUND, BadRevision, UnknownVM
from vers.repo import Repo
from vers.testing import make_image, run_vers
from vers.vmm.state import VMRegistry


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    r = Repo.init(tmp_path)
    make_image(tmp_path / "m.img", 16 * 4096, seed=1)
    r.snapshot({"memory": str(tmp_path / "m.img")}, message="one", ref="HEAD")
    r.refs.set_ref("refs/heads/feature-login", r.head_commit())
    return r


def test_short_hex_prefix_says_how_long_it_must_be(repo: Repo) -> None:
    with pytest.raises(BadRevision, match="at least 4 hex digits"):
        repo.rev_parse("e83")


def test_misspelt_branch_offers_the_close_one(repo: Repo) -> None:
    with pytest.raises(BadRevision, match="did you mean 'feature-login'"):
        repo.rev_parse("feature-lgoin")
    with pytest.raises(BadRevision) as info:
        repo.rev_parse("zzzzzz-unrelated")
    assert "did you mean" not in str(info.value)


def test_misspelt_vm_name_offers_the_close_one(repo: Repo) -> None:
    reg = VMRegistry(repo.vers_dir)
    reg.create(name="agent-2")
    with pytest.raises(UnknownVM, match="did you mean 'agent-2'"):
        reg.resolve("agnet-2")
    with pytest.raises(UnknownVM, match="see `vers ps`"):
        reg.resolve("qqqqqqqqq")


def test_cli_prints_the_hint_in_one_line(repo: Repo) -> None:
    p = run_vers(repo.root, "show", "feature-lgoin")
    assert p.returncode == EXIT_NOT_FOUND
    assert p.stderr.count("\n") == 1 and "did you mean 'feature-login'" in p.stderr


def test_run_refuses_bad_options_before_saying_it_boots(repo: Repo) -> None:
    for args, words in [(("--memory", "100"), "--memory must be a whole number of MiB"),
                        (("--memory", "1T"), "more than this host has"),
                        (("-p", "not-a-port"), "not-a-port")]:
        p = run_vers(repo.root, "run", *args)
        assert p.returncode == 2, (args, p.stderr)
        assert p.stderr.startswith("vers: error: ") and words in p.stderr, p.stderr
        assert "booting" not in p.stderr and "building" not in p.stderr
