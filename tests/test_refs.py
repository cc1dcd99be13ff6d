"""Refs (both backends), reflogs, compare-and-swap and rev-parse."""

from __future__ import annotations

from pathlib import Path

import pytest

from vers.errors import AmbiguousRevision, BadRefName, BadRevision, RefConflict
from vers.objects.lmdbstore import LmdbObjectStore
from vers.refs import DictRefsContainer, LmdbRefsContainer, check_ref_name, check_short_name
from vers.repo import Repo

A, B, C = "a" * 64, "b" * 64, "c" * 64


@pytest.fixture(params=["dict", "lmdb"])
def refs(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "dict":
        yield DictRefsContainer()
    else:
        store = LmdbObjectStore.create(tmp_path / "s")
        yield LmdbRefsContainer(store.env)
        store.close()


def test_set_and_follow_symbolic(refs) -> None:
    refs.set_symbolic_ref("HEAD", "refs/heads/main")
    assert refs.resolve("HEAD") is None
    refs.set_ref("HEAD", A, old=None, message="first")
    assert refs.read_ref("refs/heads/main") == A
    assert refs.read_ref("HEAD") == "ref: refs/heads/main"
    assert refs.follow("HEAD") == (["HEAD", "refs/heads/main"], A)


def test_compare_and_swap(refs) -> None:
    refs.set_ref("refs/heads/main", A, old=None)
    with pytest.raises(RefConflict):
        refs.set_ref("refs/heads/main", B, old=C)
    assert refs.read_ref("refs/heads/main") == A
    with pytest.raises(RefConflict):
        refs.set_ref("refs/heads/main", B, old=None)
    refs.set_ref("refs/heads/main", B, old=A)
    assert refs.read_ref("refs/heads/main") == B


def test_reflog_newest_first_and_logged_through_head(refs) -> None:
    refs.set_symbolic_ref("HEAD", "refs/heads/main")
    refs.set_ref("HEAD", A, message="one")
    refs.set_ref("HEAD", B, message="two")
    for name in ("HEAD", "refs/heads/main"):
        log = refs.reflog(name)
        assert [e.message for e in log] == ["two", "one"]
        assert (log[0].old, log[0].new) == (A, B)
    assert refs.expire_reflog("refs/heads/main", lambda i, e: i == 0) == 1
    assert [e.message for e in refs.reflog("refs/heads/main")] == ["two"]


def test_delete_ref(refs) -> None:
    refs.set_ref("refs/tags/t", A)
    refs.delete_ref("refs/tags/t", old=A)
    assert refs.read_ref("refs/tags/t") is None
    assert refs.list_refs("refs/tags/") == {}


def test_list_refs_by_prefix(refs) -> None:
    refs.set_ref("refs/heads/a", A)
    refs.set_ref("refs/heads/b/c", B)
    refs.set_ref("refs/tags/x", C)
    assert refs.list_refs("refs/heads/") == {"refs/heads/a": A, "refs/heads/b/c": B}


@pytest.mark.parametrize("bad", ["refs/heads/../x", "../x", "refs/heads/a..b", "refs/heads/.x",
                                 "refs/heads/x.lock", "refs/heads/a b", "refs/heads/a~1",
                                 "refs/heads/a^", "refs/heads/a:b", "refs/heads/@{1}",
                                 "refs/heads/", "refs//x", "HEADX", "refs/heads/a\\b"])
def test_hostile_ref_names_rejected(bad: str, refs) -> None:
    with pytest.raises(BadRefName):
        check_ref_name(bad)
    with pytest.raises(BadRefName):
        refs.set_ref(bad, A)


@pytest.mark.parametrize("bad", ["../x", "-x", "HEAD", "a..b", "x/../../y", ""])
def test_hostile_short_names_rejected(bad: str) -> None:
    with pytest.raises(BadRefName):
        check_short_name(bad)


def make_history(repo: Repo, tmp_path: Path, n: int) -> list[str]:
    ids = []
    for i in range(n):
        f = tmp_path / "m"
        f.write_bytes(bytes([i + 1]) * 4096)
        ids.append(repo.snapshot({"memory": f}, message=f"c{i}", time=1000 + i))
    return ids


def test_rev_parse_grammar(repo: Repo, tmp_path: Path) -> None:
    ids = make_history(repo, tmp_path, 5)
    rp = repo.rev_parse
    assert rp("HEAD") == rp("main") == rp("@") == rp("refs/heads/main") == ids[4]
    assert rp("HEAD~") == rp("HEAD^") == rp("HEAD~1") == rp("HEAD^1") == ids[3]
    assert rp("HEAD~3") == rp("main^^^") == rp("HEAD~1~2") == ids[1]
    assert rp("HEAD^0") == ids[4]
    assert rp(ids[2]) == rp(ids[2][:10]) == ids[2]
    assert rp("main@{0}") == ids[4]
    assert rp("main@{2}") == ids[2]
    assert rp("HEAD@{1}~1") == ids[2]
    repo.refs.set_ref("refs/tags/v1", ids[1])
    assert rp("v1") == rp("tags/v1") == rp("refs/tags/v1") == ids[1]
    assert rp("v1~1") == ids[0]


def test_rev_parse_merge_parents(repo: Repo, tmp_path: Path) -> None:
    ids = make_history(repo, tmp_path, 2)
    f = tmp_path / "x"
    f.write_bytes(b"\x09" * 4096)
    side = repo.snapshot({"memory": f}, parents=[ids[0]], ref=None, time=5)
    merge = repo.snapshot({"memory": f}, parents=[ids[1], side], ref=None, time=6)
    assert repo.rev_parse(merge + "^2") == side
    assert repo.rev_parse(merge + "^1") == ids[1]
    with pytest.raises(BadRevision):
        repo.rev_parse(merge + "^3")


@pytest.mark.parametrize("bad", ["nope", "HEAD~10", "HEAD@{9}", "abc", "HEAD^^^^^^^^", "", " HEAD",
                                 "main@{-1}", "0000"])
def test_bad_revisions(repo: Repo, tmp_path: Path, bad: str) -> None:
    make_history(repo, tmp_path, 2)
    with pytest.raises(BadRevision):
        repo.rev_parse(bad)


def test_ambiguous_prefix_detected_by_construction(repo: Repo, tmp_path: Path) -> None:
    """Make commits until two share a 4-hex prefix (birthday bound: ~hundreds)."""
    seen: dict[str, str] = {}
    f = tmp_path / "m"
    for i in range(2000):
        f.write_bytes(i.to_bytes(4, "little") * 1024)
        cid = repo.snapshot({"memory": f}, time=i, ref=None, parents=[])
        if cid[:4] in seen:
            with pytest.raises(AmbiguousRevision) as exc:
                repo.rev_parse(cid[:4])
            assert cid in str(exc.value) and seen[cid[:4]] in str(exc.value)
            return
        seen[cid[:4]] = cid
    pytest.fail("no colliding prefix found")


def test_detaching_head_logs_the_commit_not_the_symref(refs) -> None:
    refs.set_symbolic_ref("HEAD", "refs/heads/main")
    refs.set_ref("HEAD", A, message="one")
    refs.set_ref("HEAD", B, follow=False, message="detach")
    assert refs.read_ref("HEAD") == B and refs.read_ref("refs/heads/main") == A
    e = refs.reflog("HEAD")[0]
    assert (e.old, e.new) == (A, B)
