"""``vers fsck`` on real repositories through the real ``vers`` entry point.

Corruption is made the way it happens: a byte flipped in the store file on disk
(.vers/store/data.mdb), found by a marker pattern, not through any vers API.
"""

from __future__ import annotations

import os
from pathlib import Path

import blake3
import pytest

from vers.errors import CorruptObject
from vers.objects.model import PAGE_SIZE
from vers.repo import Repo
from vers.testing import make_image
from vers.testing import run_vers as vers
from vers.testing import vers_ok as ok


@pytest.fixture
def work(tmp_path: Path) -> Path:
    ok(tmp_path, "init")
    return tmp_path


def marked_page(marker: bytes) -> bytes:
    """A random (incompressible, so stored raw) page that contains ``marker`` once."""
    return (os.urandom(1000) + marker + os.urandom(PAGE_SIZE))[:PAGE_SIZE]


def test_fsck_clean_repository(work: Path) -> None:
    data = make_image(work / "mem", 1 << 20, seed=1)
    ok(work, "snapshot", "--memory", "mem", "-m", "one")
    data[:PAGE_SIZE] = os.urandom(PAGE_SIZE)
    (work / "mem").write_bytes(data)
    ok(work, "snapshot", "--memory", "mem", "-m", "two")
    ok(work, "tag", "v1", "HEAD~1")
    for args in (("fsck",), ("fsck", "--full")):
        p = vers(work, *args)
        assert p.returncode == 0, p.stdout + p.stderr
        assert p.stdout == ""
        assert p.stderr.strip().splitlines()[-1].startswith("fsck: no problems; checked ")


def test_flipped_byte_in_store_file_is_found_by_read_and_by_fsck(work: Path) -> None:
    base = make_image(work / "mem", 256 * PAGE_SIZE, seed=2)
    first = ok(work, "snapshot", "--memory", "mem", "-m", "before").strip()
    marker = b"VERS-FSCK-MARKER-" + os.urandom(8).hex().encode()
    page = marked_page(marker)
    data = bytearray(base)
    data[7 * PAGE_SIZE : 8 * PAGE_SIZE] = page
    (work / "mem").write_bytes(data)
    second = ok(work, "snapshot", "--memory", "mem", "-m", "with marker").strip()
    oid = blake3.blake3(page).hexdigest()

    path = work / ".vers" / "store" / "data.mdb"
    raw = bytearray(path.read_bytes())
    at = raw.find(marker)
    assert at >= 0 and raw.find(marker, at + 1) == -1, "the marker must be stored once, raw"
    raw[at + 5] ^= 0x20
    path.write_bytes(raw)

    with Repo(work) as repo:
        with pytest.raises(CorruptObject) as exc:
            repo.export_image(second, "memory", work / "out")
        assert oid in str(exc.value)
        with pytest.raises(CorruptObject) as exc:
            repo.open_image(second, "memory").pread(7 * PAGE_SIZE + 10, 10)
        assert oid in str(exc.value)
        # The commit before the damage does not contain the page and still reads back exactly.
        repo.export_image(first, "memory", work / "first.out")
        assert (work / "first.out").read_bytes() == bytes(base)
    assert not (work / "out").exists()

    p = vers(work, "export", second, "--memory", "out2")
    assert p.returncode != 0 and oid in p.stderr

    p = vers(work, "fsck")
    assert p.returncode == 1
    lines = p.stdout.splitlines()
    hits = [ln for ln in lines if oid in ln]
    assert len(hits) == 1, p.stdout
    assert hits[0].startswith(f"corrupt {oid}: page")
    assert "refs/heads/main" in hits[0] and second[:12] in hits[0] and "page 7" in hits[0]
    assert "1 problem(s)" in p.stderr.splitlines()[-1]


def test_missing_object_is_reported_with_the_ref_that_reaches_it(work: Path) -> None:
    data = make_image(work / "mem", 64 * PAGE_SIZE, seed=3, random_fraction=1.0, zero_fraction=0)
    cid = ok(work, "snapshot", "--memory", "mem", "-m", "only").strip()
    ok(work, "tag", "keep", cid)
    victim = blake3.blake3(bytes(data[3 * PAGE_SIZE : 4 * PAGE_SIZE])).digest()
    with Repo(work) as repo:
        assert repo.store.delete([victim]) == 1
    p = vers(work, "fsck")
    assert p.returncode == 1
    hits = [ln for ln in p.stdout.splitlines() if victim.hex() in ln]
    assert hits and all(
        ln.startswith(f"missing {victim.hex()}: page not in the store") for ln in hits
    )
    # Reached from several names; the walk reports it once, naming the first that reached it.
    assert len(hits) == 1 and ("refs/heads/main" in hits[0] or "refs/tags/keep" in hits[0])
    assert cid[:12] in hits[0]


def test_missing_commit_named_by_a_ref_and_missing_tree(work: Path) -> None:
    make_image(work / "mem", 16 * PAGE_SIZE, seed=4)
    cid = ok(work, "snapshot", "--memory", "mem", "-m", "x").strip()
    with Repo(work) as repo:
        tree = bytes.fromhex(repo.get_commit(cid).images["memory"])
        repo.store.delete([tree])
    p = vers(work, "fsck")
    assert p.returncode == 1
    assert any(ln.startswith(f"missing {tree.hex()}: tree") and "image memory" in ln
               for ln in p.stdout.splitlines())
    with Repo(work) as repo:
        repo.store.delete([bytes.fromhex(cid)])
    p = vers(work, "fsck")
    assert any(ln.startswith(f"missing {cid}: commit") and "refs/heads/main" in ln
               for ln in p.stdout.splitlines()), p.stdout


def test_fsck_outside_a_repository(tmp_path: Path) -> None:
    p = vers(tmp_path, "fsck")
    assert p.returncode == 3 and p.stderr.startswith("vers: error: not a vers repository")
