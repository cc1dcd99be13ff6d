"""Shell completion through click's protocol, as the shells drive it: `vers` run again with
_VERS_COMPLETE and the words typed so far in the environment, in a real repository."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vers.testing import make_image, run_vers, vers_env, vers_ok


def complete(cwd: Path, line: str, shell: str = "bash") -> list[str]:
    """What completing the last word of ``line`` offers (a trailing space: a new word)."""
    words = line.split()
    cword = len(words) if line.endswith(" ") else len(words) - 1
    # bash and zsh pass the index of the word under the cursor, fish the word itself
    typed = "" if line.endswith(" ") else words[-1]
    env = vers_env({"_VERS_COMPLETE": f"{shell}_complete", "COMP_WORDS": line,
                    "COMP_CWORD": typed if shell == "fish" else str(cword)})
    p = subprocess.run(["vers"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                       check=False)
    assert p.returncode == 0, p.stderr
    lines = [item for item in p.stdout.splitlines() if item]
    if shell == "bash":  # "TYPE,VALUE" per line
        return [item.split(",", 1)[1] for item in lines]
    return lines  # TYPE, VALUE and HELP on lines of their own


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("completion")
    vers_ok(root, "init")
    commits = []
    for i in range(3):
        make_image(root / "mem", 1 << 20, seed=i)
        commits.append(vers_ok(root, "snapshot", "--memory", "mem", "-m", f"step {i}").strip())
    vers_ok(root, "tag", "v1", commits[0])
    vers_ok(root, "branch-create", "feature", commits[1])
    vers_ok(root, "branch-create", "fix-boot", commits[1])
    vers_ok(root, "remote", "add", "origin", str(root.parent / "remote"))
    vers_ok(root, "remote", "add", "backup", str(root.parent / "backup"))
    return root, commits


def test_revisions_branches_tags_and_ranges(history: tuple[Path, list[str]]) -> None:
    root, _ = history
    assert complete(root, "vers log ") == ["HEAD", "feature", "fix-boot", "main", "v1"]
    # "f" is also a hex digit: commit IDs that refs name and that start with it come too
    names = [c for c in complete(root, "vers log f") if not re.fullmatch(r"[0-9a-f]{12}", c)]
    assert names == ["feature", "fix-boot"]
    assert complete(root, "vers diff v1..ma") == ["v1..main"]
    assert complete(root, "vers show v") == ["v1"]
    assert complete(root, "vers switch ") == ["feature", "fix-boot", "main"]
    assert complete(root, "vers branch-delete fi") == ["fix-boot"]
    assert complete(root, "vers tag x ") == ["HEAD", "feature", "fix-boot", "main", "v1"]


def test_commit_prefixes(history: tuple[Path, list[str]]) -> None:
    root, commits = history
    middle = commits[1]  # named by no ref but two branches; commits[2] is main's
    for cid in commits:
        got = complete(root, f"vers show {cid[:4]}")
        assert cid[:12] in got, (cid, got)
    # Below 4 digits, only the IDs that refs name are offered (the store is not searched).
    unnamed = vers_ok(root, "rev-parse", "main~1").strip()
    assert unnamed == middle
    vers_ok(root, "branch-delete", "feature")
    vers_ok(root, "branch-delete", "fix-boot")
    try:
        assert middle[:12] not in complete(root, f"vers show {middle[:3]}")
        assert complete(root, f"vers show {middle[:5]}") == [middle[:12]]
    finally:
        vers_ok(root, "branch-create", "feature", middle)
        vers_ok(root, "branch-create", "fix-boot", middle)


def test_remotes_images_and_no_repository(history: tuple[Path, list[str]],
                                          tmp_path: Path) -> None:
    root, _ = history
    assert complete(root, "vers push ") == ["backup", "origin"]
    assert complete(root, "vers fetch o") == ["origin"]
    assert complete(root, "vers remote remove b") == ["backup"]
    assert complete(root, "vers push origin ma") == ["main"]
    assert {"default", "debian", "postgres"} <= set(complete(root, "vers run --image "))
    assert complete(root, "vers completion ") == ["bash", "zsh", "fish"]
    # -C names the repository, from anywhere; outside any repository nothing is offered.
    assert complete(tmp_path, f"vers -C {root} switch m") == ["main"]
    assert complete(tmp_path, "vers switch ") == []


def test_zsh_and_fish_show_descriptions(history: tuple[Path, list[str]]) -> None:
    root, commits = history
    zsh = complete(root, "vers switch f", shell="zsh")
    assert zsh[:3] == ["plain", "feature", f"branch at {commits[1][:12]}"], zsh
    fish = complete(root, f"vers show {commits[0][:6]}", shell="fish")
    assert fish == ["plain", commits[0][:12], "v1: step 0"], fish


def test_the_printed_bash_script_completes_in_bash(history: tuple[Path, list[str]]) -> None:
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    root, _ = history
    for shell in ("bash", "zsh", "fish"):
        p = run_vers(root, "completion", shell)
        assert p.returncode == 0 and "_VERS_COMPLETE" in p.stdout, p.stderr
    script = ('eval "$(vers completion bash)"; COMP_WORDS=(vers switch fi); COMP_CWORD=2; '
              '_vers_completion vers; printf "%s\\n" "${COMPREPLY[@]}"')
    p = subprocess.run(["bash", "-c", script], cwd=root, env=vers_env(None), capture_output=True,
                       text=True, timeout=120, check=False)
    assert p.stdout.split() == ["fix-boot"], p.stdout + p.stderr
    bad = run_vers(root, "completion", "tcsh")
    assert bad.returncode == 2 and "tcsh" in bad.stderr


@pytest.mark.vm
def test_vm_names_and_ids(tmp_path: Path) -> None:
    vers_ok(tmp_path, "init")
    vid = vers_ok(tmp_path, "run", "--name", "agent-1").strip()
    try:
        assert complete(tmp_path, "vers status ag") == ["agent-1"]
        assert complete(tmp_path, f"vers kill {vid[:3]}") == [vid]
        got = complete(tmp_path, "vers branch ")
        assert "agent-1" in got and vid in got and "HEAD" in got, got
    finally:
        run_vers(tmp_path, "kill", vid)
    assert complete(tmp_path, "vers status ag") == []


def test_completion_needs_no_terminal(history: tuple[Path, list[str]]) -> None:
    """Completion prints nothing but candidates, also with stderr on a pipe (no meters)."""
    root, _ = history
    env = vers_env({"_VERS_COMPLETE": "bash_complete", "COMP_WORDS": "vers log ",
                    "COMP_CWORD": "2"})
    p = subprocess.run(["vers"], cwd=root, env=env, capture_output=True, text=True, timeout=120,
                       check=False, stdin=subprocess.DEVNULL)
    assert p.stderr == "" and p.returncode == 0
    assert p.stdout.splitlines()[0] == "plain,HEAD"
