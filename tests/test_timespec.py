"""Times in revisions and log: the time parser, REF@{TIME} on linear, merged and clock-skewed
histories (through the commit-times index), rev-parse --at and log --since/--until."""

from __future__ import annotations

import io
import json
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from vers.errors import EXIT_BAD_INPUT, EXIT_NOT_FOUND, BadInput, BadRevision
from vers.history.timeindex import DB_NAME
from vers.refs.timespec import format_iso_utc, parse_time
from vers.repo import Repo
from vers.testing import run_vers

US = 1_000_000


def utc(text: str) -> int:
    return (datetime.fromisoformat(text).replace(tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) \
        // (datetime.resolution)


@pytest.fixture
def berlin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is Europe/Berlin (UTC+1 in December, +2 in July)."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


NOW = utc("2026-12-01T09:32:05.25")  # 10:32:05.25 in Berlin


@pytest.mark.parametrize(("text", "expected"), [
    ("now", NOW),
    ("10 minutes ago", NOW - 600 * US), ("10 min", NOW - 600 * US), ("10m", NOW - 600 * US),
    ("10.minutes.ago", NOW - 600 * US), ("  10   MINUTES   AGO ", NOW - 600 * US),
    ("2.5 seconds ago", NOW - 2_500_000), ("2.5s", NOW - 2_500_000), ("2500ms", NOW - 2_500_000),
    ("2.5.seconds.ago", NOW - 2_500_000), ("1 sec", NOW - US), ("3 secs ago", NOW - 3 * US),
    ("1h30m", NOW - 5400 * US), ("1 hour 30 minutes ago", NOW - 5400 * US),
    ("2 hrs", NOW - 7200 * US), ("2 days", NOW - 2 * 86400 * US), ("1 week ago", NOW - 604800 * US),
    ("1w 1d", NOW - 8 * 86400 * US), (".5h", NOW - 1800 * US),
    ("yesterday", NOW - 86400 * US),
    ("today", utc("2026-11-30T23:00")), ("midnight", utc("2026-11-30T23:00")),
    ("noon", utc("2026-11-30T11:00")),  # today's noon is still to come: yesterday's
    ("today noon", utc("2026-12-01T11:00")), ("yesterday noon", utc("2026-11-30T11:00")),
    ("yesterday midnight", utc("2026-11-29T23:00")),
    ("10:00", utc("2026-12-01T09:00")), ("10:32:05.25", NOW),
    ("11:00", utc("2026-11-30T10:00")),  # later today than now: yesterday's
    ("yesterday 10:32:05.5", utc("2026-11-30T09:32:05.5")),
    ("2026-12-01", utc("2026-11-30T23:00")), ("2026-12-01 10:32", utc("2026-12-01T09:32")),
    ("2026-12-01 10:32:05", utc("2026-12-01T09:32:05")),
    ("2026-12-01T10:32:05.123456", utc("2026-12-01T09:32:05.123456")),
    ("2026-12-01T10:32:05.1234569", utc("2026-12-01T09:32:05.123456")),  # rounded down
    ("2026-07-01 12:00", utc("2026-07-01T10:00")),  # summer time
    ("2026-12-01T10:32:05Z", utc("2026-12-01T10:32:05")),
    ("2026-12-01 10:32:05 UTC", utc("2026-12-01T10:32:05")),
    ("2026-12-01 10:32:05.5+01:00", utc("2026-12-01T09:32:05.5")),
    ("2026-12-01T10:32:05-0530", utc("2026-12-01T16:02:05")),
    ("2026-12-01 10:32:05 +02", utc("2026-12-01T08:32:05")),
    ("@1701424325", 1_701_424_325 * US), ("@1701424325.5", 1_701_424_325_500_000),
    ("@1701424325.123456789", 1_701_424_325_123_456),
])
def test_accepted_times(berlin: None, text: str, expected: int) -> None:
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize(("text", "why"), [
    ("", "empty"), ("   ", "empty"), ("soon", "cannot read"), ("upstream", "cannot read"),
    ("10 parsecs ago", "cannot read"), ("3.hot.dogs.on.2001-09-17", "cannot read"),
    ("1 month ago", "no fixed length"), ("2 years", "no fixed length"),
    ("2026-13-01", "not a valid date"), ("2026-02-30 10:00", "not a valid date"),
    ("25:00", "not a valid time of day"), ("10:61", "not a valid time of day"),
    ("2026-12-01 10:32 +25:00", "out of range"), ("1969-12-31Z", "before 1970"),
    ("@-5", "cannot read"), ("@1.2.3", "cannot read"), ("tomorrow", "cannot read"),
    ("10 minutes from now", "cannot read"), ("ago", "cannot read"),
])
def test_refused_times(text: str, why: str) -> None:
    with pytest.raises(BadInput, match=why) as info:
        parse_time(text, NOW)
    assert info.value.exit_code == EXIT_BAD_INPUT and "\n" not in str(info.value)


def test_iso_output_for_machines() -> None:
    assert format_iso_utc(utc("2026-12-01T09:32:05.25")) == "2026-12-01T09:32:05.250000Z"


# -- REF@{TIME} ------------------------------------------------------------------------------
T0 = 1_790_000_000  # seconds; far enough from the clock that relative times do not matter


def commit(repo: Repo, n: int, t: float, parents: list[str] | None = None,
           ref: str | None = "HEAD") -> str:
    return repo.snapshot({"disk": io.BytesIO(n.to_bytes(4, "big") * 128)}, message=f"c{n}",
                         time=t, parents=parents, ref=ref)


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repo]:
    r = Repo.init(tmp_path)
    yield r
    r.close()


def test_time_on_a_linear_history(repo: Repo) -> None:
    ids = [commit(repo, i, T0 + i * 0.25) for i in range(6)]  # four commits a second
    at = lambda t: repo.rev_parse(f"main@{{@{t}}}")
    assert at(T0 + 0.75) == ids[3]  # a commit made at exactly that time counts
    assert at(T0 + 0.8) == ids[3]
    assert at(T0 + 0.7499) == ids[2]
    assert at(T0 + 100) == ids[5]  # later than the tip: the tip
    assert repo.rev_parse(f"main@{{@{T0 + 1}}}~2") == ids[2]
    assert repo.rev_parse(f"main@{{@{T0 + 1}}}^") == ids[3]
    assert repo.rev_parse(f"@{{@{T0 + 1}}}") == repo.rev_parse(f"HEAD@{{@{T0 + 1}}}") == ids[4]
    assert repo.rev_parse(f"{ids[3][:8]}@{{@{T0 + 0.5}}}") == ids[2]  # any commit, not only refs
    assert repo.rev_parse("main@{1}") == ids[4]  # a number is still a reflog index
    now = (T0 + 2) * US  # 2 s after the first commit: "1.5 seconds ago" is T0 + 0.5
    assert repo.rev_parse("main@{1.5 seconds ago}", now=now) == ids[2]
    assert repo.rev_parse("main@{1500ms}", now=now) == ids[2]
    assert repo.commit_at("main", "1.5 seconds ago", now=now) == ids[2]
    when = datetime.fromtimestamp(T0 + 1.25, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert repo.rev_parse(f"main@{{{when}}}") == ids[5]
    assert [c.id for c in repo.log(f"main@{{@{T0 + 0.5}}}..main")] == ids[:2:-1]
    with pytest.raises(BadRevision, match=r"oldest commit, .* is from 2026-") as info:
        repo.rev_parse(f"main@{{@{T0 - 1}}}")
    assert info.value.exit_code == EXIT_NOT_FOUND
    with pytest.raises(BadInput, match="cannot read 'soon' as a time"):
        repo.rev_parse("main@{soon}")
    with pytest.raises(BadRevision, match="must follow a ref name"):
        repo.rev_parse("main~1@{now}")


def test_time_follows_the_first_parent(repo: Repo) -> None:
    """main: root(0) - a(10) - merge(40) with second parent side(30): at 35, main was at a,
    although the side commit is newer than a and older than 35."""
    root = commit(repo, 0, T0)
    a = commit(repo, 1, T0 + 10)
    side = commit(repo, 2, T0 + 30, parents=[root], ref=None)
    merge = commit(repo, 3, T0 + 40, parents=[a, side])
    assert repo.rev_parse(f"main@{{@{T0 + 35}}}") == a
    assert repo.rev_parse(f"main@{{@{T0 + 40}}}") == merge
    assert repo.rev_parse(f"{side}@{{@{T0 + 35}}}") == side
    assert repo.rev_parse(f"main@{{@{T0 + 5}}}") == root


def naive(repo: Repo, tip: str, when: int) -> str | None:
    cid: str | None = tip
    while cid is not None:
        c = repo.get_commit(cid)
        if c.time_us <= when:
            return cid
        cid = c.parents[0] if c.parents else None
    return None


def test_time_index_matches_a_walk_when_the_clock_went_back(tmp_path: Path) -> None:
    """Times that are not in order along the history (a clock set back, imported commits): the
    index answers exactly what a walk answers, for every time: as the commits were indexed when
    written, and when the index is gone and a first search fills only part of it."""
    rnd = random.Random(7)
    repo = Repo.init(tmp_path)
    ids, t = [], T0
    for i in range(300):
        t += rnd.choice([1, 1, 2, 5, -3, -20])
        ids.append(commit(repo, i, t))
    env = repo.store.env
    with env.begin(write=True) as txn:  # each commit was indexed when it was written
        db = env.open_db(DB_NAME, txn=txn)
        assert all(txn.get(bytes.fromhex(c), db=db) is not None for c in ids)
    times = sorted({repo.get_commit(c).time_us for c in ids})
    probes = [x + d for x in times[::7] for d in (-1, 0, 1)] + [times[0] - 1, times[-1] + 1]

    def check(r: Repo) -> None:
        for when in probes:
            want = naive(r, ids[-1], when)
            if want is None:
                with pytest.raises(BadRevision, match="that old"):
                    r.times.commit_at(ids[-1], when, "x")
            else:
                assert r.times.commit_at(ids[-1], when, "x") == want

    check(repo)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(DB_NAME, txn=txn), delete=False)
    assert repo.times.commit_at(ids[150], times[-1], "x") == naive(repo, ids[150], times[-1])
    check(repo)
    repo.close()
    again = Repo(tmp_path)
    e = again.times.entry(ids[-1])
    assert (e.generation, e.parent) == (299, bytes.fromhex(ids[-2]))
    check(again)
    again.close()


# -- the CLI ---------------------------------------------------------------------------------
@pytest.fixture
def history(tmp_path: Path) -> tuple[Path, list[str]]:
    """Five commits: 1 hour, 10 minutes, 1 minute, 5 and 2.5 seconds before the clock."""
    with Repo.init(tmp_path) as r:
        now = time.time()
        ids = [commit(r, i, now - age) for i, age in enumerate([3600, 600, 60, 5, 2.5])]
    return tmp_path, ids


def test_cli_rev_parse_at(history: tuple[Path, list[str]]) -> None:
    path, ids = history
    p = run_vers(path, "rev-parse", "main@{5 minutes ago}", "HEAD@{30 minutes ago}~0")
    assert p.returncode == 0 and p.stdout.split() == [ids[1], ids[0]], p.stderr
    p = run_vers(path, "rev-parse", "--at", "5 minutes ago")
    assert p.stdout.split() == [ids[1]]
    p = run_vers(path, "rev-parse", "--short", "--before", "30 s ago", "main", ids[1])
    assert p.stdout.split() == [ids[2][:12], ids[1][:12]]
    for args, code, text in [
        (("main@{2 hours ago}",), EXIT_NOT_FOUND, "oldest commit"),
        (("--at", "2 hours ago"), EXIT_NOT_FOUND, "oldest commit"),
        (("main@{sometime}",), EXIT_BAD_INPUT, "cannot read 'sometime' as a time"),
        (("--at", "1 month ago", "main"), EXIT_BAD_INPUT, "no fixed length"),
        (("nope@{now}",), EXIT_NOT_FOUND, "unknown revision"),
        ((), EXIT_BAD_INPUT, "wants a revision"),
    ]:
        p = run_vers(path, "rev-parse", *args)
        assert p.returncode == code and text in p.stderr, (args, p.returncode, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def test_cli_log_since_until(history: tuple[Path, list[str]]) -> None:
    path, ids = history
    oneline = lambda *a: [x.split()[0] for x in run_vers(path, "log", "--oneline", *a)
                          .stdout.splitlines()]
    assert oneline("--since", "30s") == [ids[4][:12], ids[3][:12]]
    assert oneline("--since", "30 minutes ago", "--until", "30 seconds ago") == \
        [ids[2][:12], ids[1][:12]]
    assert oneline("--after", "2 hours ago", "--before", "30 minutes ago") == [ids[0][:12]]
    assert oneline("--since", "30 minutes ago", "-n", "1") == [ids[4][:12]]
    assert oneline("--since", "now") == []
    p = run_vers(path, "log", "--since", "30s", "--format", "json")
    got = json.loads(p.stdout)
    c = Repo(path).get_commit(ids[4])
    assert [e["id"] for e in got] == [ids[4], ids[3]]
    assert got[0]["time_us"] == c.time_us and got[0]["time"] == c.time_us // US
    assert got[0]["date"] == format_iso_utc(c.time_us) and got[0]["version"] == 2
    assert c.time_us % US  # a clock reading, not whole seconds
    full = run_vers(path, "log", "-n", "1").stdout
    assert f".{c.time_us % US:06d} " in full  # the Date line shows the microseconds
    p = run_vers(path, "log", "--since", "whenever")
    assert p.returncode == EXIT_BAD_INPUT and "cannot read 'whenever'" in p.stderr
