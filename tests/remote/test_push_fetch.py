"""push / fetch / pull / clone against a directory and a real S3 server."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vers.errors import RemoteError
from vers.objects.model import PAGE_SIZE
from vers.porcelain.clone import clone
from vers.porcelain.fetch import fetch, pull
from vers.porcelain.push import push
from vers.porcelain.remote import add_remote
from vers.remote.backends import open_transport
from vers.remote.bundle import BUNDLE_PREFIX, INDEX_ENTRY, INDEX_MAGIC, RECORD_HEADER
from vers.remote.push import PushRejected
from vers.repo import Repo

from .conftest import assert_consistent, change_pages, export_bytes, make_memory, vers


def _repo_with_history(tmp: Path, remote_url: str, npages: int = 1024) -> tuple[Repo, list[str],
                                                                             list[bytearray]]:
    repo = Repo.init(tmp / "a")
    m1 = make_memory(tmp / "m1", npages, seed=1)
    c1 = repo.snapshot({"memory": tmp / "m1", "disk": tmp / "m1"}, message="one")
    m2 = change_pages(m1, tmp / "m2", list(range(0, npages, 37)), seed=2)
    c2 = repo.snapshot({"memory": tmp / "m2", "disk": tmp / "m1"}, message="two")
    add_remote(repo, "origin", remote_url)
    return repo, [c1, c2], [m1, m2]


def _bucket_bytes(remote_url: str) -> int:
    return sum(open_transport(remote_url).list("").values())


def test_push_clone_fetch_round_trip(tmp_path: Path, remote_url: str) -> None:
    repo, commits, images = _repo_with_history(tmp_path, remote_url)
    result = push(repo, "origin")
    assert result.updated == [("refs/heads/main", None, commits[1])]
    assert repo.refs.resolve("refs/remotes/origin/main") == commits[1]

    cloned, head = clone(remote_url, str(tmp_path / "b"))
    assert head == commits[1] == cloned.rev_parse("HEAD")
    assert cloned.current_branch() == "main"
    for cid, image in zip(commits, images):
        assert export_bytes(cloned, cid, tmp_path) == bytes(image)
        assert cloned.get_commit(cid) == repo.get_commit(cid)
    assert_consistent(cloned)

    # A second push of the same thing sends nothing; a fetch into the clone receives nothing.
    again = push(repo, "origin")
    assert again.objects == 0 and again.up_to_date == ["refs/heads/main"]
    assert fetch(cloned, "origin").result.objects == 0
    cloned.close()
    repo.close()


def test_cli_clone_prints_head_and_matches(tmp_path: Path, remote_url: str) -> None:
    repo, commits, _ = _repo_with_history(tmp_path, remote_url)
    vers("push", "origin", cwd=repo.root)
    out = vers("clone", remote_url, str(tmp_path / "c"))
    assert out.stdout.strip() == commits[1]
    assert "cloned into" in out.stderr and "%|" not in out.stderr, "no meter on a pipe"
    assert vers("rev-parse", "HEAD", cwd=tmp_path / "c").stdout.strip() == commits[1]
    quiet = vers("clone", "-q", remote_url, str(tmp_path / "d"))
    assert quiet.stderr == ""
    repo.close()


def test_second_push_sends_only_changed_pages(tmp_path: Path, remote_url: str) -> None:
    npages = 4096
    repo = Repo.init(tmp_path / "a")
    m1 = make_memory(tmp_path / "m1", npages, seed=1, random_fraction=1.0)
    repo.snapshot({"memory": tmp_path / "m1"}, message="base")
    add_remote(repo, "origin", remote_url)
    push(repo, "origin")
    before = _bucket_bytes(remote_url)

    changed = list(range(5, npages, 100))  # ~1% of pages
    change_pages(m1, tmp_path / "m2", changed, seed=9)
    repo.snapshot({"memory": tmp_path / "m2"}, message="1% changed")
    result = push(repo, "origin")
    changed_bytes = len(changed) * PAGE_SIZE
    growth = _bucket_bytes(remote_url) - before
    # pages + 16 leaf nodes (deltas) + root + tree + commit; nothing of the unchanged 99%
    assert result.objects == len(changed) + 16 + 1 + 1 + 1
    assert result.bytes <= 1.1 * changed_bytes, (result.bytes, changed_bytes)
    assert growth <= 1.1 * changed_bytes, (growth, changed_bytes)
    repo.close()


def test_non_fast_forward_rejected_and_nothing_changes(tmp_path: Path, remote_url: str) -> None:
    repo, commits, _ = _repo_with_history(tmp_path, remote_url)
    push(repo, "origin")
    other, _ = clone(remote_url, str(tmp_path / "b"))
    # Our side moves on and pushes; the clone commits on the old tip: histories diverge.
    (tmp_path / "m3").write_bytes(os.urandom(64 * PAGE_SIZE))
    ours = repo.snapshot({"memory": tmp_path / "m3"}, message="ours")
    push(repo, "origin")
    (tmp_path / "m4").write_bytes(os.urandom(64 * PAGE_SIZE))
    theirs = other.snapshot({"memory": tmp_path / "m4"}, message="theirs")
    listing = open_transport(remote_url).list("")
    with pytest.raises(PushRejected, match="non-fast-forward"):
        push(other, "origin")
    assert open_transport(remote_url).list("") == listing, "a rejected push uploads nothing"
    proc = vers("push", "origin", cwd=other.root, check=False)
    assert proc.returncode != 0 and "non-fast-forward" in proc.stderr and "--force" in proc.stderr

    # pull refuses to merge diverged histories, and changes nothing
    with pytest.raises(RemoteError, match="not a fast-forward"):
        pull(other, "origin")
    assert other.rev_parse("main") == theirs

    forced = push(other, "origin", force=True)
    assert forced.updated == [("refs/heads/main", ours, theirs)]
    # Now our side is behind: pull fast-forwards? No -- ours diverged too; fetch shows theirs.
    fetch(repo, "origin")
    assert repo.refs.resolve("refs/remotes/origin/main") == theirs
    assert commits[1] in [c.id for c in repo.log(theirs)]
    other.close()
    repo.close()


def test_pull_fast_forwards(tmp_path: Path, remote_url: str) -> None:
    repo, commits, _ = _repo_with_history(tmp_path, remote_url)
    push(repo, "origin")
    other, _ = clone(remote_url, str(tmp_path / "b"))
    (tmp_path / "m3").write_bytes(os.urandom(64 * PAGE_SIZE))
    new = repo.snapshot({"memory": tmp_path / "m3"}, message="three")
    push(repo, "origin")
    old, got = pull(other, "origin")
    assert (old, got) == (commits[1], new)
    assert other.rev_parse("HEAD") == new
    assert export_bytes(other, "HEAD", tmp_path) == (tmp_path / "m3").read_bytes()
    assert pull(other, "origin") == (new, new)
    other.close()
    repo.close()


def _tamper_one_page(remote_url: str) -> str:
    """Flip a byte inside one page record's payload on the remote; returns that page's ID."""
    t = open_transport(remote_url)
    idx_key = next(k for k in t.list(BUNDLE_PREFIX) if k.endswith(".idx"))
    idx = t.get(idx_key)
    head = len(INDEX_MAGIC) + 36
    for oid, off, length, kind, _enc, _depth in INDEX_ENTRY.iter_unpack(idx[head:]):
        if kind == 1 and length > 100:
            key = idx_key[:-4] + ".bundle"
            data = bytearray(t.get(key))
            data[off + RECORD_HEADER.size + 50] ^= 0xFF
            t.put(key, bytes(data))
            return oid.hex()
    raise AssertionError("no page record found")


def test_tampered_object_is_rejected_by_name(tmp_path: Path, remote_url: str) -> None:
    repo, _commits, _ = _repo_with_history(tmp_path, remote_url)
    push(repo, "origin")
    bad = _tamper_one_page(remote_url)

    # fetch into an existing repository: error names the object, no ref moves
    b = Repo.init(tmp_path / "b")
    add_remote(b, "origin", remote_url)
    with pytest.raises(RemoteError, match=bad):
        fetch(b, "origin")
    assert b.refs.list_refs() == {}
    assert_consistent(b)
    b.close()

    # clone through the CLI: non-zero exit, message names it, nothing left behind
    proc = vers("clone", remote_url, str(tmp_path / "c"), check=False)
    assert proc.returncode != 0 and bad in proc.stderr, proc.stderr
    assert not (tmp_path / "c").exists()
    repo.close()


def test_no_credentials_in_config_or_output(tmp_path: Path, remote_url: str) -> None:
    repo, _, _ = _repo_with_history(tmp_path, remote_url)
    outputs = [vers("push", "origin", cwd=repo.root), vers("remote", "-v", cwd=repo.root),
               vers("fetch", "origin", cwd=repo.root)]
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    key_id = os.environ.get("AWS_ACCESS_KEY_ID")
    text = (repo.vers_dir / "config.json").read_text()
    assert json.loads(text)["remotes"]["origin"]["url"] == remote_url
    for s in filter(None, [secret, key_id]):
        assert s not in text
        assert all(s not in p.stdout + p.stderr for p in outputs)
    repo.close()


def test_push_tags_and_branches(tmp_path: Path, remote_url: str) -> None:
    repo, commits, _ = _repo_with_history(tmp_path, remote_url)
    repo.refs.set_ref("refs/tags/v1", commits[0])
    repo.refs.set_ref("refs/heads/old", commits[0])
    push(repo, "origin", ["main", "v1", "old:refs/heads/legacy"])
    b, _ = clone(remote_url, str(tmp_path / "b"))
    assert b.refs.resolve("refs/tags/v1") == commits[0]
    assert b.refs.resolve("refs/remotes/origin/legacy") == commits[0]
    assert b.rev_parse("HEAD") == commits[1]
    # Moving a tag that exists on the remote is refused without --force.
    repo.refs.set_ref("refs/tags/v1", commits[1])
    with pytest.raises(PushRejected, match="tag already exists"):
        push(repo, "origin", ["v1"])
    b.close()
    repo.close()


def test_clone_of_nothing_fails_cleanly(tmp_path: Path, remote_url: str) -> None:
    proc = vers("clone", remote_url, str(tmp_path / "c"), check=False)
    assert proc.returncode != 0 and "not a vers remote" in proc.stderr, proc.stderr
    assert not (tmp_path / "c").exists()
    if remote_url.startswith("s3://"):
        proc = vers("clone", "s3://no-such-bucket-here/x", str(tmp_path / "d"), check=False)
        assert proc.returncode != 0 and "no-such-bucket-here" in proc.stderr, proc.stderr
        assert not (tmp_path / "d").exists()


def test_racing_pushes_one_wins_no_update_lost(tmp_path: Path, remote_url: str) -> None:
    import threading

    repo, _commits, _ = _repo_with_history(tmp_path, remote_url)
    push(repo, "origin")
    clones = [clone(remote_url, str(tmp_path / f"c{i}"))[0] for i in range(2)]
    tips = []
    for i, c in enumerate(clones):
        (tmp_path / f"x{i}").write_bytes(os.urandom(256 * PAGE_SIZE))
        tips.append(c.snapshot({"memory": tmp_path / f"x{i}"}, message=f"racer {i}"))
    outcome: dict[int, object] = {}
    barrier = threading.Barrier(2)

    def race(i: int) -> None:
        barrier.wait()
        try:
            outcome[i] = push(clones[i], "origin")
        except PushRejected as exc:
            outcome[i] = exc

    threads = [threading.Thread(target=race, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, o in outcome.items() if not isinstance(o, PushRejected)]
    assert len(winners) == 1, outcome
    t = open_transport(remote_url)
    assert t.get("refs/heads/main").decode().strip() == tips[winners[0]]
    for c in clones:
        c.close()
    repo.close()


@pytest.mark.s3
def test_s3_without_conditional_writes_uses_locks(tmp_path: Path, s3_env: object,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock-object fallback end to end: push, non-fast-forward refused, clone equal."""
    monkeypatch.setenv("VERS_S3_CONDITIONAL", "0")
    url = f"s3://vers-tests/lock-{os.getpid()}-{tmp_path.name}"
    repo, commits, images = _repo_with_history(tmp_path, url)
    push(repo, "origin", ["main"])
    cloned, head = clone(url, str(tmp_path / "b"))
    assert head == commits[1]
    assert export_bytes(cloned, head, tmp_path) == bytes(images[1])
    cloned.refs.set_ref("refs/heads/main", commits[0])
    with pytest.raises(PushRejected, match="non-fast-forward"):
        push(cloned, "origin", ["main"])
    assert open_transport(url).list("locks/") == {}, "locks are released"
    cloned.close()
    repo.close()
