"""The store and history commands through the real `vers` entry point: output contracts and bad
input."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from vers.objects.model import PAGE_SIZE
from vers.testing import make_image, mutate_pages, run_vers


def vers(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = run_vers(cwd, *args, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"vers {args} failed ({p.returncode}): {p.stderr}")
    return p


@pytest.fixture
def work(tmp_path: Path) -> Path:
    vers(tmp_path, "init")
    return tmp_path


def store_state(work: Path) -> bytes:
    """Every ref and object, to prove a failed command changed nothing."""
    from vers.repo import Repo

    with Repo(work) as r:
        refs = json.dumps(r.refs.list_refs(""), sort_keys=True).encode()
        ids = b"".join(sorted(o for o, _ in r.store.iter_ids()))
    return refs + ids


def test_snapshot_log_show_diff_export(work: Path) -> None:
    data = make_image(work / "mem", 2 << 20, seed=1)
    (work / "disk").write_bytes(os.urandom(1 << 20))
    p = vers(work, "snapshot", "--memory", "mem", "--disk", "disk", "-m", "first state")
    c1 = p.stdout.strip()
    assert len(c1) == 64 and p.stdout == c1 + "\n"  # the ID alone on stdout
    changed = mutate_pages(data, 0.01, seed=2)
    (work / "mem").write_bytes(data)
    c2 = vers(work, "snapshot", "--memory", "mem", "--disk", "disk", "-m", "second").stdout.strip()

    assert vers(work, "rev-parse", "HEAD").stdout.strip() == c2
    assert vers(work, "rev-parse", "HEAD~1").stdout.strip() == c1
    assert vers(work, "log", "--oneline").stdout == (
        f"{c2[:12]} (HEAD -> main) second\n{c1[:12]} first state\n"
    )
    full = vers(work, "log").stdout
    assert (f"commit {c2}" in full and "Author: Test <t@example>" in full
            and "    first state" in full)
    j = json.loads(vers(work, "log", "--format", "json", "-n", "1").stdout)
    assert [c["id"] for c in j] == [c2] and j[0]["parents"] == [c1]
    assert vers(work, "log", "--oneline", f"{c1}..{c2}").stdout.startswith(c2[:12])
    assert len(vers(work, "log", "--oneline", f"{c1}..{c2}").stdout.splitlines()) == 1

    shown = json.loads(vers(work, "show", "--format", "json", c1).stdout)
    assert shown["images"]["memory"]["size"] == 2 << 20 and shown["message"] == "first state"

    d = json.loads(vers(work, "diff", c1, c2, "--format", "json").stdout)
    mem = next(i for i in d["images"] if i["name"] == "memory")
    pages = [r["first_page"] + k for r in mem["ranges"] for k in range(r["pages"])]
    assert pages == changed
    assert next(i for i in d["images"] if i["name"] == "disk")["status"] == "unchanged"
    assert vers(work, "diff", c1, c2, "--exit-code", check=False).returncode == 1
    assert vers(work, "diff", c1, c1, "--exit-code").returncode == 0
    assert "memory" in vers(work, "diff", c1, c2, "--stat").stdout

    vers(work, "export", c1, "--memory", "out-mem", "--disk", "out-disk")
    assert (work / "out-disk").read_bytes() == (work / "disk").read_bytes()
    out = (work / "out-mem").read_bytes()
    assert out != bytes(data) and len(out) == len(data)
    vers(work, "export", "HEAD", "--memory", "out2")
    assert (work / "out2").read_bytes() == bytes(data)


def test_export_is_sparse(work: Path) -> None:
    (work / "mem").write_bytes(b"x" * PAGE_SIZE + bytes(64 << 20))
    vers(work, "snapshot", "--memory", "mem")
    vers(work, "export", "HEAD", "--memory", "out")
    st = os.stat(work / "out")
    assert st.st_size == PAGE_SIZE + (64 << 20)
    assert st.st_blocks * 512 < 1 << 20


def test_tags_branches_reflog(work: Path) -> None:
    (work / "m").write_bytes(b"a" * PAGE_SIZE)
    c1 = vers(work, "snapshot", "--memory", "m", "-m", "one").stdout.strip()
    vers(work, "tag", "v1")
    (work / "m").write_bytes(b"b" * PAGE_SIZE)
    c2 = vers(work, "snapshot", "--memory", "m", "-m", "two").stdout.strip()
    assert vers(work, "tag").stdout == "v1\n"
    assert vers(work, "rev-parse", "v1").stdout.strip() == c1
    assert vers(work, "tag", "v1", check=False).returncode != 0
    vers(work, "branch-create", "side", "v1")
    assert vers(work, "branch-list").stdout == "* main\n  side\n"
    vers(work, "switch", "side")
    assert vers(work, "rev-parse", "HEAD").stdout.strip() == c1
    assert "commit: two" in vers(work, "reflog", "main").stdout
    assert vers(work, "rev-parse", "main@{1}").stdout.strip() == c1
    assert vers(work, "rev-parse", "main").stdout.strip() == c2
    assert "(HEAD -> side, tag: v1)" in vers(work, "log", "--oneline", "--graph", "main").stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["snapshot", "--memory", "missing.img"], "no such file"),
        (["snapshot", "--memory", "odd.img"], "multiple of 4096"),
        (["snapshot", "--memory", "good.img", "--disk", "odd.img"], "multiple of 512"),
        (["snapshot", "--memory", "dir"], "directory"),
        (["snapshot", "--memory", "unreadable.img"], "permission denied"),
        (["snapshot", "--disk", "good.img"], "needs a memory image"),
        (["snapshot", "--memory", "good.img", "--config", "[1]"], "JSON object"),
        (["rev-parse", "nope"], "unknown revision"),
        (["rev-parse", "HEAD~9"], "has no parent"),
        (["log", "nope..HEAD"], "unknown revision"),
        (["show", "zzzz"], "unknown revision"),
        (["diff", "HEAD", "nope"], "unknown revision"),
        (["export", "HEAD", "--memory", "nodir/x/y"], "cannot write"),
        (["export", "HEAD", "--disk", "d.out"], "has no image 'disk'"),
        (["export", "HEAD"], "nothing to export"),
        (["tag", "../x"], "bad tag name"),
        (["branch-create", "../x"], "bad branch name"),
        (["branch-create", "a..b"], "bad branch name"),
        (["switch", "nosuch"], "not found"),
        (["reflog", "nosuch"], "no ref"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    work: Path, args: list[str], message: str
) -> None:
    (work / "good.img").write_bytes(b"g" * PAGE_SIZE)
    (work / "odd.img").write_bytes(b"o" * 1000)
    (work / "dir").mkdir()
    (work / "unreadable.img").write_bytes(b"u" * PAGE_SIZE)
    (work / "unreadable.img").chmod(0)
    vers(work, "snapshot", "--memory", "good.img", "-m", "base")
    before = store_state(work)
    if "unreadable.img" in args and os.geteuid() == 0:
        pytest.skip("root can read any file")
    p = vers(work, *args, check=False)
    assert p.returncode != 0
    assert message in p.stderr
    assert p.stdout == ""
    assert "Traceback" not in p.stderr
    assert store_state(work) == before


def test_not_a_repository(tmp_path: Path) -> None:
    p = vers(tmp_path, "log", check=False)
    assert p.returncode != 0 and "not a vers repository" in p.stderr
    p = vers(tmp_path, "-C", str(tmp_path / "nope"), "log", check=False)
    assert p.returncode != 0 and "not a vers repository" in p.stderr


def test_init_twice_refused(work: Path) -> None:
    p = vers(work, "init", check=False)
    assert p.returncode != 0 and "already exists" in p.stderr


def test_log_on_empty_repository(work: Path) -> None:
    p = vers(work, "log", check=False)
    assert p.returncode != 0 and "does not have any commits yet" in p.stderr


def test_python_api_reads_images_without_export(tmp_path: Path) -> None:
    import vers

    repo = vers.Repo.init(tmp_path)
    data = make_image(tmp_path / "m", 1 << 20, seed=5)
    cid = repo.snapshot({"memory": tmp_path / "m"}, message="api")
    with repo.open_image(cid, "memory") as f:
        f.seek(123456)
        assert f.read(1000) == bytes(data[123456:124456])
        assert f.pread(0, 10) == bytes(data[:10])
    assert [c.id for c in repo.log()] == [cid]
    assert not repo.diff(cid, cid).changed
