"""The commit-as-files model, tested without mounting anything."""

from __future__ import annotations

import json

import pytest

from tests.fuse.conftest import History
from vers.fuse.vfs import ROOT_INODE, RepoView, inode_of
from vers.testing.corrupt import flip_byte


def test_root_layout(history: History) -> None:
    view = RepoView(history.repo)
    assert view.listdir("/") == ["HEAD", "commits", "refs", "tags"]
    assert view.readlink("/HEAD") == f"commits/{history.second}"
    assert view.listdir("/refs") == ["heads"]
    assert view.listdir("/refs/heads") == ["feature", "main"]
    assert view.listdir("/refs/heads/feature") == ["x"]
    assert view.readlink("/refs/heads/main") == f"../../commits/{history.second}"
    assert view.readlink("/refs/heads/feature/x") == f"../../../commits/{history.first}"
    assert view.readlink("/tags/v1") == f"../commits/{history.first}"
    assert view.getattr("/refs/heads/feature").kind == "dir"
    assert view.getattr("/tags/v1").kind == "link"


def test_commit_directory(history: History) -> None:
    view = RepoView(history.repo)
    assert view.listdir("/commits") == sorted([history.first, history.second])
    d = f"/commits/{history.first}"
    assert view.listdir(d) == ["disk", "memory", "meta.json"]
    attr = view.getattr(f"{d}/memory")
    assert attr.kind == "file" and attr.size == history.memory1.stat().st_size
    assert attr.mtime_ns == 1_700_000_000 * 10**9
    assert view.getattr(f"{d}/disk").size == history.disk.stat().st_size
    meta = json.loads(view.read(f"{d}/meta.json", 0, 1 << 20))
    assert meta["id"] == history.first and meta["message"] == "first"
    assert meta["images"]["memory"]["size"] == history.memory1.stat().st_size


def test_reads_match_images(history: History) -> None:
    view = RepoView(history.repo)
    expect = history.memory2.read_bytes()
    path = f"/commits/{history.second}/memory"
    for off, n in [(0, 4096), (4095, 2), (3 * 4096, 10), (1000, 300_000), (len(expect) - 10, 100)]:
        assert view.read(path, off, n) == expect[off : off + n]
    assert view.read(path, len(expect), 10) == b""


def test_any_full_id_resolves_even_if_not_listed(history: History) -> None:
    # A commit no ref reaches: not in readdir, but lookup by full ID works.
    orphan = history.repo.snapshot({"memory": history.memory1}, message="orphan", ref=None)
    view = RepoView(history.repo)
    assert orphan not in view.listdir("/commits")
    assert view.getattr(f"/commits/{orphan}").kind == "dir"
    assert view.listdir(f"/commits/{orphan}") == ["memory", "meta.json"]


@pytest.mark.parametrize(
    "path",
    ["/nope", "/commits/" + "0" * 64, "/commits/abc", "/refs/heads/nope", "/tags/nope",
     "/refs/tags", "/HEAD/x"],
)
def test_missing_paths_raise_keyerror(history: History, path: str) -> None:
    view = RepoView(history.repo)
    with pytest.raises(KeyError):
        view.getattr(path)


def test_missing_image_in_existing_commit(history: History) -> None:
    view = RepoView(history.repo)
    with pytest.raises(KeyError):
        view.getattr(f"/commits/{history.first}/devstate")
    with pytest.raises(KeyError):
        view.read(f"/commits/{history.first}/devstate", 0, 10)


def test_inodes_are_deterministic_and_distinct(history: History) -> None:
    a = {p: inode_of(p) for p in RepoView(history.repo).walk()}
    b = {p: RepoView(history.repo).getattr(p).inode for p in a}
    assert a == b
    assert len(set(a.values())) == len(a)
    assert a["/"] == ROOT_INODE


def test_refs_move_while_viewing(history: History) -> None:
    view = RepoView(history.repo)
    assert view.readlink("/refs/heads/main").endswith(history.second)
    history.repo.refs.set_ref("refs/heads/main", history.first)
    assert view.readlink("/refs/heads/main").endswith(history.first)


def test_empty_repository(tmp_path) -> None:
    from vers.repo import Repo

    view = RepoView(Repo.init(tmp_path / "empty"))
    assert view.listdir("/") == ["commits", "refs", "tags"]
    assert view.listdir("/commits") == []
    with pytest.raises(KeyError):
        view.getattr("/HEAD")


def test_batched_pread_matches_page_reads_and_detects_corruption(history: History) -> None:
    import random

    from vers.errors import CorruptObject

    image = history.repo.open_image(history.second, "memory")
    rnd = random.Random(11)
    expect = b"".join(image.reader.read_page(p) for p in range(-(-image.size // 4096)))
    for _ in range(100):
        off, n = rnd.randrange(image.size + 10), rnd.randrange(1, 1 << 20)
        assert image.pread(off, n) == expect[off : off + n]
    flip_byte(history.repo.store, image.reader.page_id(1), at=7)
    with pytest.raises(CorruptObject):
        image.pread(0, 3 * 4096)
    assert image.pread(2 * 4096, 4096) == bytes(4096)  # page 2 is a zero page: no lookup
