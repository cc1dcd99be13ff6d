"""The names a user can type where a command wants a VM, a revision, a branch, a tag, a remote
or an image: what shell completion offers. Each function lists candidates starting with what was
typed so far, with a short description, and reads only what it needs (refs, the VM registry, the
store's index for ID prefixes), because it runs on every press of TAB: the VM registry, the
remotes' configuration and the image cache are imported by the function that reads them, so
completing a branch never pays for loading them."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING

from vers.objects.model import KIND_COMMIT
from vers.refs.container import SYMREF_PREFIX
from vers.refs.revparse import MIN_PREFIX

if TYPE_CHECKING:
    from vers.repo import Repo

#: at most this many commit IDs are offered for one prefix
MAX_IDS = 50
#: offered IDs are this long (what `vers log --oneline` shows)
SHORT_ID = 12
HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Name:
    value: str
    help: str = ""


def vms(repo: Repo, typed: str) -> list[Name]:
    """VM names and IDs (the IDs of named VMs too: both work everywhere)."""
    from vers.vmm.state import VMRegistry

    out = []
    for rec in VMRegistry(repo.vers_dir).visible():
        what = f"VM {rec.id}" + (f" at {rec.base_commit[:SHORT_ID]}" if rec.base_commit else "")
        if rec.name and rec.name.startswith(typed):
            out.append(Name(rec.name, what))
        if rec.id.startswith(typed):
            out.append(Name(rec.id, f"VM {rec.name}" if rec.name else what))
    return out


def branches(repo: Repo, typed: str) -> list[Name]:
    return _refs(repo, "refs/heads/", typed, "branch")


def tags(repo: Repo, typed: str) -> list[Name]:
    return _refs(repo, "refs/tags/", typed, "tag")


def remotes(repo: Repo, typed: str) -> list[Name]:
    from vers.remote.config import list_remotes

    return [Name(n, url) for n, url in sorted(list_remotes(repo).items()) if n.startswith(typed)]


def revisions(repo: Repo, typed: str) -> list[Name]:
    """HEAD, branches, tags, remote-tracking branches and commit IDs; after ``A..`` the second
    end of a range. IDs are offered for what refs name (any prefix) and, from ``MIN_PREFIX`` hex
    digits on, for every commit in the store."""
    head, dots, tail = typed.rpartition("..")
    if dots:
        return [Name(head + dots + n.value, n.help) for n in revisions(repo, tail)]
    out = [Name("HEAD", "the current commit")] if "HEAD".startswith(typed) else []
    out += branches(repo, typed) + tags(repo, typed)
    out += _refs(repo, "refs/remotes/", typed, "remote-tracking branch")
    lowered = typed.lower()
    if not lowered or not set(lowered) <= HEX:
        return out  # IDs only once a digit is typed: refs are what people type first
    ids: dict[str, str] = {}
    for name, value in repo.refs.list_refs("refs/").items():
        if value.startswith(lowered) and not value.startswith(SYMREF_PREFIX):
            ids.setdefault(value, name.removeprefix("refs/heads/").removeprefix("refs/tags/"))
    if len(lowered) >= MIN_PREFIX:
        found = (oid.hex() for oid, kind in repo.store.iter_prefix(lowered) if kind == KIND_COMMIT)
        for cid in islice(found, MAX_IDS):
            ids.setdefault(cid, "")
    for cid, ref in sorted(ids.items())[:MAX_IDS]:
        summary = repo.get_commit(cid).summary
        out.append(Name(cid[:SHORT_ID], f"{ref}: {summary}" if ref else summary))
    return out


def images(typed: str) -> list[Name]:
    """Guest images: built, buildable and imported."""
    from vers.images import list_images

    return [Name(i.name, i.summary) for i in list_images() if i.name.startswith(typed)]


def _refs(repo: Repo, prefix: str, typed: str, what: str) -> list[Name]:
    out = []
    for name, value in repo.refs.list_refs(prefix).items():
        short = name[len(prefix):]
        if short.startswith(typed) and not value.startswith(SYMREF_PREFIX):
            out.append(Name(short, f"{what} at {value[:SHORT_ID]}"))
    return out
