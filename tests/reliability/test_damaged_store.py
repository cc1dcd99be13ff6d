"""A damaged store file is an error that names it: never a crash, a traceback, or a silently
empty repository. Damage is made to ``.vers/store/data.mdb`` on disk, the way it happens (a
truncated copy, an emptied or deleted file, flipped bytes in an LMDB page header)."""

from __future__ import annotations

import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from vers.testing import make_image, run_vers, vers_ok

P_BRANCH, P_LEAF = 0x01, 0x02
COMMANDS = (["fsck"], ["log"], ["export", "HEAD", "--memory", "out.img"])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("pristine")
    vers_ok(work, "init")
    make_image(work / "mem", 4 << 20, seed=3)
    vers_ok(work, "snapshot", "--memory", "mem", "-m", "one")
    vers_ok(work, "tag", "v1")
    return work


def damaged_copy(pristine: Path, tmp_path: Path, damage: Callable[[Path], None]) -> Path:
    work = tmp_path / "w"
    shutil.copytree(pristine, work)
    damage(work / ".vers" / "store" / "data.mdb")
    return work


def assert_refused(work: Path, args: list[str]) -> str:
    """The command fails with exactly one line on stderr, naming the store file."""
    p = run_vers(work, *args, timeout=60)
    assert p.returncode not in (0, 1) and p.returncode > 0, (args, p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vers: error: "), (args, p.stderr)
    assert "data.mdb" in lines[0], lines[0]
    return lines[0]


def lmdb_page_size(path: Path) -> int:
    """From the first meta page (the free database record's first field)."""
    with open(path, "rb") as f:
        return int(struct.unpack_from("<I", f.read(64), 40)[0])


def truncate_to(size: Callable[[Path], int]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        new = size(path)
        with open(path, "r+b") as f:
            f.truncate(new)
    return damage


@pytest.mark.parametrize("damage, says", [
    (truncate_to(lambda p: p.stat().st_size // 2), "truncated"),
    (truncate_to(lambda p: 2 * lmdb_page_size(p)), "truncated"),  # only the meta pages left
    (truncate_to(lambda p: 0), "empty"),
    (lambda path: path.unlink(), "missing"),
    (lambda path: path.write_bytes(b"not lmdb" * 1000), "not an LMDB store"),
], ids=["half", "meta-pages-only", "empty", "removed", "garbage"])
def test_damaged_file_is_an_error_naming_it(pristine: Path, tmp_path: Path,
                                            damage: Callable[[Path], None], says: str) -> None:
    work = damaged_copy(pristine, tmp_path, damage)
    data = work / ".vers" / "store" / "data.mdb"
    before = data.read_bytes() if data.exists() else None
    for args in COMMANDS:
        assert says in assert_refused(work, args)
    # Nothing recreated or rewritten the store: only `vers init` creates one.
    assert (data.read_bytes() if data.exists() else None) == before


def btree_pages(path: Path) -> list[int]:
    """Branch and leaf pages of the LMDB file (by their page header flags), meta pages excluded,
    and none of the last 16: a damaged page header near the end of the file can make LMDB read
    past the end, which is a SIGBUS no Python code can turn into an error (docs/recovery.md)."""
    raw, psize = path.read_bytes(), lmdb_page_size(path)
    last = len(raw) // psize
    return [n for n in range(2, last - 16)
            if struct.unpack_from("<QHH", raw, n * psize)[2] in (P_BRANCH, P_LEAF)]


def test_flipped_bytes_in_page_headers_never_give_a_traceback(pristine: Path,
                                                              tmp_path: Path) -> None:
    """The flags, lower or upper bound of every B-tree page (one byte per page, in turn): each
    command works (the byte did not matter, or fsck reports what it cannot read) or fails with
    one line. LMDB keeps no checksums, so some damage only hides entries (a ref that is gone is
    "no commits yet"); what LMDB notices names the file."""
    data = pristine / ".vers" / "store" / "data.mdb"
    pages, psize = btree_pages(data), lmdb_page_size(data)
    assert pages, "the store has B-tree pages to damage"
    refused = 0
    for n, page in enumerate(pages):
        at = page * psize + (10, 12, 14)[n % 3]

        def flip(path: Path, off: int = at) -> None:
            with open(path, "r+b") as f:
                f.seek(off)
                b = f.read(1)
                f.seek(off)
                f.write(bytes([b[0] ^ 0xFF]))

        work = damaged_copy(pristine, tmp_path / str(n), flip)
        for args in COMMANDS:
            p = run_vers(work, *args, timeout=60)
            assert "Traceback" not in p.stderr, (page, at, args, p.stderr)
            assert p.returncode >= 0, (page, at, args, "killed by a signal")
            if p.returncode not in (0, 1):
                lines = p.stderr.strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith("vers: error: "), p.stderr
                refused += "data.mdb" in lines[0]
    assert refused, "some damage must have been named"


def test_fsck_of_an_emptied_store_fails(pristine: Path, tmp_path: Path) -> None:
    """An empty data.mdb once became a new, empty store: 'no problems; checked 0 objects'."""
    work = damaged_copy(pristine, tmp_path, truncate_to(lambda n: 0))
    p = run_vers(work, "fsck")
    assert p.returncode != 0 and "checked 0 objects" not in p.stderr
