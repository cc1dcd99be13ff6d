"""``vers fsck --salvage DIR``: every intact commit survives a store with damaged objects."""

from __future__ import annotations

import os
from pathlib import Path

from vers.objects.model import PAGE_SIZE
from vers.repo import Repo
from vers.testing import make_image, run_vers, vers_ok
from vers.testing.corrupt import flip_byte


def test_salvage_copies_every_intact_commit(tmp_path: Path) -> None:
    work = tmp_path / "w"
    vers_ok(tmp_path, "init", "w")
    data = make_image(work / "mem", 64 * PAGE_SIZE, seed=1, random_fraction=1.0,
                      zero_fraction=0)
    images: dict[str, bytes] = {}
    with Repo(work) as repo:
        c1 = repo.snapshot({"memory": work / "mem"}, message="one")
        repo.refs.set_ref("refs/tags/v1", c1)
        images[c1] = bytes(data)
        data[3 * PAGE_SIZE : 4 * PAGE_SIZE] = os.urandom(PAGE_SIZE)
        (work / "mem").write_bytes(data)
        c2 = repo.snapshot({"memory": work / "mem"}, message="two")
        images[c2] = bytes(data)
        data[7 * PAGE_SIZE : 8 * PAGE_SIZE] = os.urandom(PAGE_SIZE)
        (work / "mem").write_bytes(data)
        repo.refs.set_ref("refs/heads/feature", c1)
        c3 = repo.snapshot({"memory": work / "mem"}, message="three", parents=[c1],
                           ref="refs/heads/feature")
        # Page 7 of the feature commit is stored only for it: damage exactly that commit.
        flip_byte(repo.store, repo.open_image(c3, "memory").reader.page_id(7), at=100)

    assert run_vers(work, "fsck").returncode == 1
    p = run_vers(work, "fsck", "--salvage", str(tmp_path / "saved"))
    assert p.returncode == 1, p.stderr
    assert "copied 2 intact commits and 2 refs" in p.stderr, p.stderr
    assert f"lost refs/heads/feature: commit {c3[:12]}" in p.stderr, p.stderr

    saved = tmp_path / "saved"
    assert vers_ok(saved, "fsck") == ""
    assert vers_ok(saved, "rev-parse", "HEAD", "main", "v1").split() == [c2, c2, c1]
    assert run_vers(saved, "rev-parse", "feature").returncode != 0
    for cid, want in images.items():
        vers_ok(saved, "export", cid, "--memory", str(tmp_path / "out.img"))
        assert (tmp_path / "out.img").read_bytes() == want


def test_salvage_refuses_a_directory_in_use(tmp_path: Path) -> None:
    vers_ok(tmp_path, "init")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    p = run_vers(tmp_path, "fsck", "--salvage", "busy")
    assert p.returncode > 1 and "not an empty directory" in p.stderr
