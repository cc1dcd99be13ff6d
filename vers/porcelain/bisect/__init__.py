"""``vers bisect``: find the first commit where a machine's state went wrong, the way git does.

State is git's, kept in the same places a git user would look:

* refs ``refs/bisect/<bad-term>`` and ``refs/bisect/<good-term>-<id>``, ``refs/bisect/skip-<id>``;
* ``BISECT_HEAD``, the ref naming the commit to test now. vers never checks anything out: the
  candidate is just a ref, so bisect needs no VM and never touches HEAD;
* files in ``.vers``: ``BISECT_START`` (HEAD when bisect began; marks "bisect in progress"),
  ``BISECT_TERMS`` (bad term, good term), ``BISECT_LOG`` (replayable with ``vers bisect replay``),
  ``BISECT_EXPECTED_REV`` and ``BISECT_ANCESTORS_OK`` (as in git).

The choice of the next commit is in ``algo`` (pure, git's algorithm); running a predicate over
many steps is in ``run``, inside a VM in ``vm``. Functions here return values and report progress
through a ``say`` callback, so the CLI decides what goes to stdout and what to stderr.
"""

from __future__ import annotations

import os
import shlex
import time as _time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vers.errors import BadRevision, BisectError, RefError
from vers.files import append_private, write_private
from vers.history import walk
from vers.objects.model import Commit
from vers.porcelain.bisect.algo import Decision, check_merge_bases, find_bisection
from vers.refs.container import check_ref_name
from vers.repo import Repo

BISECT_HEAD = "BISECT_HEAD"
REF_PREFIX = "refs/bisect/"
COMMANDS = frozenset(
    {"help", "start", "skip", "next", "reset", "visualize", "view", "replay", "log", "run",
     "terms", "good", "bad", "old", "new"}
)
Say = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


@dataclass(frozen=True)
class Terms:
    bad: str = "bad"
    good: str = "good"


@dataclass
class Marks:
    bad: str | None
    goods: list[str]
    skips: list[str]


class CommitCache:
    """Parsed commits, kept for one bisect command (or a whole ``run``): every step reads the same
    commits again, and commits never change."""

    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self._cache: dict[str, Commit] = {}

    def __call__(self, cid: str) -> Commit:
        c = self._cache.get(cid)
        if c is None:
            c = self._cache[cid] = self.repo.get_commit(cid)
        return c


# -- files and refs ---------------------------------------------------------------------------
def _path(repo: Repo, name: str) -> Path:
    return Path(repo.vers_dir) / name


def in_progress(repo: Repo) -> bool:
    return _path(repo, "BISECT_START").is_file()


def _require(repo: Repo) -> None:
    if not in_progress(repo):
        raise BisectError('not bisecting: start with "vers bisect start"')


def read_terms(repo: Repo) -> Terms:
    try:
        lines = _path(repo, "BISECT_TERMS").read_text().splitlines()
    except FileNotFoundError:
        return Terms()
    return Terms(lines[0], lines[1]) if len(lines) >= 2 else Terms()


def check_term(term: str, which: str) -> None:
    """git's rules: a valid ref component, not a bisect subcommand, not the other side's word."""
    if not term or term in COMMANDS - {"good", "bad", "old", "new"}:
        raise BisectError(f"can't use the builtin command {term!r} as a term")
    try:
        check_ref_name(REF_PREFIX + term)
    except RefError as exc:
        raise BisectError(f"{term!r} is not a valid term") from exc
    if which == "bad" and term in ("good", "old") or which == "good" and term in ("bad", "new"):
        raise BisectError(f"can't change the meaning of the term {term!r}")


def _append_log(repo: Repo, *lines: str) -> None:
    append_private(_path(repo, "BISECT_LOG"), "".join(line + "\n" for line in lines))


def _describe(get: Callable[[str], Commit], cid: str) -> str:
    return f"[{cid}] {get(cid).summary}"


def read_marks(repo: Repo, terms: Terms | None = None) -> Marks:
    terms = terms or read_terms(repo)
    refs = repo.refs.list_refs(REF_PREFIX)
    bad = refs.get(REF_PREFIX + terms.bad)
    good_prefix = REF_PREFIX + terms.good + "-"
    goods = sorted(v for k, v in refs.items() if k.startswith(good_prefix))
    skips = sorted(v for k, v in refs.items() if k.startswith(REF_PREFIX + "skip-"))
    return Marks(bad, goods, skips)


def current(repo: Repo) -> str | None:
    """The commit to test now (``BISECT_HEAD``), or None."""
    return repo.refs.resolve(BISECT_HEAD)


# -- verbs ------------------------------------------------------------------------------------
def start(
    repo: Repo,
    bad: str | None = None,
    goods: Iterable[str] = (),
    term_old: str = "good",
    term_new: str = "bad",
    say: Say = _quiet,
    auto_next: bool = True,
) -> Decision | None:
    """Begin a bisection (resetting any earlier one), optionally with the known bad and goods."""
    check_term(term_new, "bad")
    check_term(term_old, "good")
    if term_new == term_old:
        raise BisectError("please use two different terms")
    goods = list(goods)
    bad_id = repo.rev_parse(bad) if bad is not None else None  # validate before changing anything
    good_ids = [repo.rev_parse(g) for g in goods]
    if in_progress(repo):
        reset(repo)
    head = repo.refs.read_ref("HEAD") or ""
    write_private(_path(repo, "BISECT_START"), head.removeprefix("ref: refs/heads/") + "\n")
    write_private(_path(repo, "BISECT_TERMS"), f"{term_new}\n{term_old}\n")
    args = [a for a in (bad_id, *good_ids) if a is not None]  # full IDs: names may move later
    opts = []
    if (term_new, term_old) != ("bad", "good"):
        opts = [f"--term-new={term_new}", f"--term-old={term_old}"]
    _append_log(repo, "vers bisect start " + " ".join(shlex.quote(a) for a in [*opts, *args]))
    terms = Terms(term_new, term_old)
    get = CommitCache(repo)
    if bad_id is not None:
        _write_mark(repo, terms.bad, bad_id, get)
    for g in good_ids:
        _write_mark(repo, terms.good, g, get)
    return next_step(repo, say=say) if auto_next else None


def _write_mark(repo: Repo, word: str, cid: str, get: Callable[[str], Commit]) -> None:
    terms = read_terms(repo)
    if word == terms.bad:
        ref = REF_PREFIX + terms.bad
    elif word in (terms.good, "skip"):
        ref = f"{REF_PREFIX}{word}-{cid}"
    else:
        raise BisectError(f"unknown bisect term {word!r} (terms are {terms.bad}/{terms.good})")
    repo.refs.set_ref(ref, cid, message=f"bisect {word}")
    _append_log(repo, f"# {word}: {_describe(get, cid)}", f"vers bisect {word} {cid}")


def _expand(repo: Repo, revs: Iterable[str], allow_ranges: bool) -> list[str]:
    out: list[str] = []
    for rev in revs:
        if allow_ranges and ".." in rev:
            out.extend(c.id for c in repo.log(rev))
        else:
            out.append(repo.rev_parse(rev))
    return out


def mark(
    repo: Repo, word: str, revs: Iterable[str] = (), say: Say = _quiet, auto_next: bool = True,
    get: CommitCache | None = None,
) -> Decision | None:
    """``bad``/``good``/``skip`` (or the custom terms): record a verdict, then pick the next one.

    With no revision the verdict is about the current candidate (``BISECT_HEAD``), or HEAD before
    the first candidate exists.
    """
    _require(repo)
    terms = _adopt_terms(repo, word)
    revs = list(revs)
    if word == terms.bad and len(revs) > 1:
        raise BisectError(f"'vers bisect {terms.bad}' can take only one argument")
    if not revs:
        default = current(repo) or repo.head_commit()
        if default is None:
            raise BadRevision("no revision given and nothing to test (empty repository?)")
        ids = [default]
    else:
        ids = _expand(repo, revs, allow_ranges=word == "skip")  # all validated before any write
    get = get or CommitCache(repo)
    for cid in ids:
        _write_mark(repo, word, cid, get)
    return next_step(repo, say=say, get=get) if auto_next else None


def _adopt_terms(repo: Repo, word: str) -> Terms:
    """git lets a session that has not used bad/good yet switch to old/new by using them."""
    terms = read_terms(repo)
    if word in (terms.bad, terms.good, "skip"):
        return terms
    if terms == Terms() and word in ("old", "new"):
        marks = read_marks(repo, terms)
        if marks.bad is None and not marks.goods:
            write_private(_path(repo, "BISECT_TERMS"), "new\nold\n")
            _append_log(repo, "vers bisect terms --term-new=new --term-old=old")
            return Terms("new", "old")
    raise BisectError(
        f"invalid command {word!r}: you are currently in a {terms.bad}/{terms.good} bisect"
    )


def next_step(repo: Repo, say: Say = _quiet, get: CommitCache | None = None) -> Decision | None:
    """Choose the next candidate and point ``BISECT_HEAD`` at it; None while marks are missing."""
    _require(repo)
    terms = read_terms(repo)
    marks = read_marks(repo, terms)
    if marks.bad is None or not marks.goods:
        missing = []
        if marks.bad is None:
            missing.append(terms.bad)
        if not marks.goods:
            missing.append(terms.good)
        say(f"status: waiting for {' and '.join(missing)} commit(s)")
        return None
    get = get or CommitCache(repo)
    if not _path(repo, "BISECT_ANCESTORS_OK").exists():
        verdict, mb = check_merge_bases(get, marks.bad, marks.goods, marks.skips)
        if verdict == "bad":
            expected = _read_expected(repo)
            good_list = " ".join(marks.goods)
            if expected == marks.bad:
                raise BisectError(
                    f"the merge base {marks.bad} is {terms.bad}: the first {terms.good!r} state "
                    f"is between {marks.bad} and [{good_list}]"
                )
            raise BisectError(
                f"some {terms.good} revs are not ancestors of the {terms.bad} rev; bisect cannot "
                f"work properly in this case (maybe you mistook {terms.good} and {terms.bad} revs?)"
            )
        if verdict == "test" and mb is not None:
            say("Bisecting: a merge base must be tested")
            _checkout(repo, mb)
            return Decision("merge_base", mb)
        if verdict == "skipped":
            say(f"warning: the merge base {mb} must be skipped; the first {terms.bad} commit may "
                f"not be between it and {marks.bad}; continuing anyway")
        write_private(_path(repo, "BISECT_ANCESTORS_OK"), "")
    decision = find_bisection(get, marks.bad, marks.goods, marks.skips)
    if decision.kind == "test" and decision.commit is not None:
        n = decision.remaining
        steps = decision.steps
        say(f"Bisecting: {n} revision{'s' if n != 1 else ''} left to test after this "
            f"(roughly {steps} step{'s' if steps != 1 else ''})")
        say(_describe(get, decision.commit))
        _checkout(repo, decision.commit)
    elif decision.kind == "found" and decision.commit is not None:
        _checkout(repo, decision.commit)
        _append_log(repo, f"# first {terms.bad} commit: {_describe(get, decision.commit)}")
    else:
        say(f"There are only 'skip'ped commits left to test.\nThe first {terms.bad} commit "
            "could be any of:\n" + "\n".join(decision.candidates) + "\nWe cannot bisect more!")
        _append_log(repo, "# only skipped commits left to test")
    return decision


def _checkout(repo: Repo, cid: str) -> None:
    repo.refs.set_ref(BISECT_HEAD, cid, follow=False, message="bisect")
    write_private(_path(repo, "BISECT_EXPECTED_REV"), cid + "\n")


def _read_expected(repo: Repo) -> str | None:
    try:
        return _path(repo, "BISECT_EXPECTED_REV").read_text().strip() or None
    except FileNotFoundError:
        return None


def first_bad_message(repo: Repo, cid: str) -> str:
    """git's closing lines: ``<id> is the first bad commit`` and a summary of that commit."""
    terms = read_terms(repo)
    c = repo.get_commit(cid)
    lines = [f"{cid} is the first {terms.bad} commit", f"commit {cid}",
             f"Author: {c.author}",
             f"Date:   {_time.strftime('%a %b %d %H:%M:%S %Y +0000', _time.gmtime(c.time))}", ""]
    lines += ["    " + line for line in (c.message or "").splitlines()]
    return "\n".join(lines)


def reset(repo: Repo) -> bool:
    """Forget the bisection. HEAD never moved, so nothing else changes. False if none was going."""
    if not in_progress(repo):
        return False
    for name in repo.refs.list_refs(REF_PREFIX):
        repo.refs.delete_ref(name, message="bisect: remove")
    if repo.refs.read_ref(BISECT_HEAD) is not None:
        repo.refs.delete_ref(BISECT_HEAD, message="bisect: remove")
    for name in ("BISECT_ANCESTORS_OK", "BISECT_LOG", "BISECT_EXPECTED_REV", "BISECT_TERMS",
                 "BISECT_RUN", "BISECT_START"):
        _path(repo, name).unlink(missing_ok=True)
    return True


def log(repo: Repo) -> str:
    _require(repo)
    try:
        return _path(repo, "BISECT_LOG").read_text()
    except FileNotFoundError as exc:
        raise BisectError("bisect log is missing") from exc


def terms(repo: Repo) -> Terms:
    _require(repo)
    return read_terms(repo)


def visualize(repo: Repo) -> list[dict[str, Any]]:
    """The remaining candidates, newest first, each with its marks (for ``vers bisect view``)."""
    _require(repo)
    t = read_terms(repo)
    marks = read_marks(repo, t)
    if marks.bad is None:
        raise BisectError(f"no {t.bad} commit yet: nothing to show")
    get = CommitCache(repo)
    skips = set(marks.skips)
    here = current(repo)
    out = []
    for c in walk(get, [marks.bad], marks.goods):
        flags = []
        if c.id == marks.bad:
            flags.append(t.bad)
        if c.id in skips:
            flags.append("skip")
        if c.id == here:
            flags.append("current")
        out.append({"id": c.id, "time": c.time, "message": c.summary, "marks": flags})
    return out


def replay(repo: Repo, path: str | os.PathLike[str], say: Say = _quiet) -> Decision | None:
    """Run a saved ``BISECT_LOG`` again (lines ``vers bisect ...``; ``git bisect ...`` too)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise BisectError(f"cannot read {path}: {exc.strerror}") from exc
    commands: list[list[str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line)
        if len(words) >= 2 and words[0] in ("vers", "git") and words[1] == "bisect":
            words = words[2:]
        elif words and words[0] == "git-bisect":
            words = words[1:]
        else:
            raise BisectError(f"{path}:{n}: not a bisect log line: {line}")
        if not words:
            raise BisectError(f"{path}:{n}: empty bisect command")
        commands.append(words)
    if not commands or commands[0][0] != "start":
        raise BisectError(f"{path}: a bisect log starts with 'bisect start'")
    for words in commands:
        verb, args = words[0], words[1:]
        if verb == "start":
            opts = {"--term-old": "good", "--term-new": "bad"}
            rest = []
            for a in args:
                key, _, value = a.partition("=")
                key = {"--term-good": "--term-old", "--term-bad": "--term-new"}.get(key, key)
                if key in opts and value:
                    opts[key] = value
                elif a != "--no-checkout" and a != "--":
                    rest.append(a)
            start(repo, rest[0] if rest else None, rest[1:], opts["--term-old"],
                  opts["--term-new"], auto_next=False)
        elif verb == "terms":
            _replay_terms(repo, args)
        else:
            mark(repo, verb, args, auto_next=False)
    return next_step(repo, say=say)


def _replay_terms(repo: Repo, args: list[str]) -> None:
    new = old = None
    for a in args:
        key, _, value = a.partition("=")
        if key == "--term-new":
            new = value
        elif key == "--term-old":
            old = value
    if new and old:
        write_private(_path(repo, "BISECT_TERMS"), f"{new}\n{old}\n")
        _append_log(repo, f"vers bisect terms --term-new={new} --term-old={old}")
