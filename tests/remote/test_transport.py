"""Transports and remote config: the compare-and-swap every ref update relies on, URL rules."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import pytest

from vers.errors import BadInput
from vers.remote.config import add_remote, list_remotes, remove_remote
from vers.remote.path import PathTransport
from vers.remote.s3 import S3Transport
from vers.remote.transport import Transport, normalise_url, parse_url
from vers.repo import Repo

from .conftest import BUCKET


@pytest.fixture(params=["path", pytest.param("s3-conditional", marks=pytest.mark.s3),
                        pytest.param("s3-lock", marks=pytest.mark.s3)])
def transport(request: pytest.FixtureRequest, tmp_path: Path) -> Transport:
    if request.param == "path":
        return PathTransport(tmp_path / "remote")
    request.getfixturevalue("s3_env")
    t = S3Transport(BUCKET, uuid.uuid4().hex[:12],
                    conditional=None if request.param == "s3-conditional" else False)
    if request.param == "s3-conditional":
        assert t.conditional_writes, "seaweedfs honours If-None-Match; the probe should see it"
    return t


def test_put_get_range_list_delete(transport: Transport) -> None:
    transport.put("bundles/a.bundle", b"0123456789")
    assert transport.get("bundles/a.bundle") == b"0123456789"
    assert transport.get_range("bundles/a.bundle", 3, 4) == b"3456"
    assert transport.list("bundles/") == {"bundles/a.bundle": 10}
    transport.delete("bundles/a.bundle")
    assert transport.list("bundles/") == {}
    assert transport.read_versioned("refs/heads/x") is None


def test_put_if_is_compare_and_swap(transport: Transport) -> None:
    assert transport.put_if("refs/heads/main", b"a\n", None)
    assert not transport.put_if("refs/heads/main", b"b\n", None), "create must fail if it exists"
    value, tag = transport.read_versioned("refs/heads/main") or (b"", "")
    assert value == b"a\n"
    assert transport.put_if("refs/heads/main", b"c\n", tag)
    assert not transport.put_if("refs/heads/main", b"d\n", tag), "stale tag must lose"
    assert transport.get("refs/heads/main") == b"c\n"


def test_concurrent_put_if_exactly_one_wins(transport: Transport) -> None:
    transport.put_if("refs/heads/main", b"base\n", None)
    _, tag = transport.read_versioned("refs/heads/main") or (b"", "")
    wins: list[int] = []
    barrier = threading.Barrier(6)

    def contender(i: int) -> None:
        barrier.wait()
        if transport.put_if("refs/heads/main", f"w{i}\n".encode(), tag):
            wins.append(i)

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1, wins
    assert transport.get("refs/heads/main") == f"w{wins[0]}\n".encode()


def test_url_rules() -> None:
    assert parse_url("s3://bucket-1/some/prefix/") == ("s3", "bucket-1", "some/prefix")
    assert parse_url("file:///tmp/x") == ("path", "/tmp/x", "")
    assert normalise_url("/tmp/a/../b") == "/tmp/b"
    for bad in ["s3://AKIA:secret@bucket/x", "http://example.com/x", "s3://", ""]:
        with pytest.raises(BadInput):
            parse_url(bad)


def test_remote_config_add_list_remove(tmp_path: Path) -> None:
    repo = Repo.init(tmp_path / "r")
    add_remote(repo, "origin", str(tmp_path / "remote"))
    add_remote(repo, "cloud", "s3://bucket/team/vm")
    assert list_remotes(repo) == {
        "cloud": "s3://bucket/team/vm",
        "origin": str(tmp_path / "remote"),
    }
    with pytest.raises(BadInput, match="already exists"):
        add_remote(repo, "origin", "/elsewhere")
    for bad in ["", "-x", "a/b", "../x"]:
        with pytest.raises(BadInput):
            add_remote(repo, bad, "/x")
    cfg = json.loads((repo.vers_dir / "config.json").read_text())
    assert cfg["default_branch"] == "main", "other config keys survive"
    remove_remote(repo, "cloud")
    assert list(list_remotes(repo)) == ["origin"]
    with pytest.raises(BadInput, match="no such remote"):
        remove_remote(repo, "cloud")
    repo.close()
