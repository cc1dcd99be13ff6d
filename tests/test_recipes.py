"""The task pages' recipes run as written: each ```sh block of docs/tasks.md (and docs/recipes/,
if any) runs in bash in an empty directory; a command that fails fails the test, and so does an
expected line (the ```output block after it) that the recipe does not print, in that order.

Blocks tagged ``vm`` boot guests (marked vm), ``slow`` ones take minutes (marked slow)."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from vers.testing import run_vers, vers_env

DOCS = Path(__file__).resolve().parent.parent / "docs"
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^## (.+)$", re.MULTILINE)


@dataclass
class Recipe:
    page: str
    section: str
    script: str
    tags: frozenset[str]
    expected: list[str]

    @property
    def id(self) -> str:
        return f"{self.page}:{self.section}"


def recipes() -> list[Recipe]:
    pages = [DOCS / "tasks.md", *sorted((DOCS / "recipes").glob("*.md"))]
    found: list[Recipe] = []
    for page in pages:
        if not page.exists():
            continue
        text = page.read_text()
        headings = [(m.start(), m.group(1)) for m in HEADING.finditer(text)]
        blocks = list(FENCE.finditer(text))
        for i, m in enumerate(blocks):
            info = m.group(1).split()
            if not info or info[0] != "sh":
                continue
            section = next((h for pos, h in reversed(headings) if pos < m.start()), page.stem)
            expected: list[str] = []
            nxt = blocks[i + 1] if i + 1 < len(blocks) else None
            if nxt is not None and nxt.group(1).strip() == "output":
                expected = [line for line in nxt.group(2).splitlines() if line.strip()]
            same = [r for r in found if r.page == page.name and r.section == section]
            name = section + (f" ({len(same) + 1})" if same else "")
            found.append(Recipe(page.name, name, m.group(2), frozenset(info[1:]), expected))
    return found


def run_recipe(recipe: Recipe, where: Path, timeout: float) -> str | None:
    """Run ``recipe`` in ``where``; None if it did all it says, else what went wrong. Whatever
    happens, every VM it left behind is killed."""
    try:
        p = subprocess.run(["bash", "-c", "set -euo pipefail\n" + recipe.script], cwd=where,
                           env=vers_env(None), stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=timeout, check=False)
    finally:
        _kill_leftover_vms(where)
    out = p.stdout + p.stderr
    if p.returncode != 0:
        return f"exit status {p.returncode}:\n{out[-3000:]}"
    lines = out.splitlines()
    at = 0
    for want in recipe.expected:
        while at < len(lines) and want not in lines[at]:
            at += 1
        if at == len(lines):
            return f"the output has no line {want!r} (after the previous ones):\n{out[-3000:]}"
        at += 1
    return None


def _kill_leftover_vms(where: Path) -> None:
    for config in where.rglob(".vers/config.json"):
        repo = config.parent.parent
        ids = run_vers(repo, "ps", "-q").stdout.split()
        if ids:
            run_vers(repo, "kill", *ids)


ALL = recipes()


def _params() -> list[object]:
    out = []
    for r in ALL:
        marks = [pytest.mark.vm] if "vm" in r.tags else []
        marks += [pytest.mark.slow] if "slow" in r.tags else []
        out.append(pytest.param(r, id=r.id, marks=marks))
    return out


@pytest.mark.parametrize("recipe", _params())
def test_recipe(recipe: Recipe, tmp_path: Path) -> None:
    timeout = 1800 if "slow" in recipe.tags else 600 if "vm" in recipe.tags else 120
    problem = run_recipe(recipe, tmp_path, timeout)
    assert problem is None, f"{recipe.id}: {problem}"


def test_every_task_has_a_recipe() -> None:
    sections = {r.section.split(" (")[0] for r in ALL}
    text = (DOCS / "tasks.md").read_text()
    assert sections == set(HEADING.findall(text))
    assert any("vm" not in r.tags for r in ALL), "one recipe runs without QEMU"
    assert all(r.expected for r in ALL), [r.id for r in ALL if not r.expected]


def test_the_runner_fails_on_a_failing_command_or_a_missing_line(tmp_path: Path) -> None:
    for d in "abc":
        (tmp_path / d).mkdir()
    ok = Recipe("t.md", "ok", "vers init\necho hello\n", frozenset(), ["hello"])
    assert run_recipe(ok, tmp_path / "a", 60) is None
    failing = Recipe("t.md", "fails", "vers log --oneline\necho never\n", frozenset(), [])
    assert "exit status" in (run_recipe(failing, tmp_path / "b", 60) or "")
    missing = Recipe("t.md", "missing", "echo one\necho two\n", frozenset(), ["two", "one"])
    assert "no line 'one'" in (run_recipe(missing, tmp_path / "c", 60) or "")
