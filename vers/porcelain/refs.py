"""Branches, tags, show-ref and reflog: naming commits without touching any VM."""

from __future__ import annotations

from dataclasses import dataclass

from vers.errors import BadRevision, RefError
from vers.history import walk
from vers.objects.model import Commit
from vers.refs.container import ANY, HEAD, SYMREF_PREFIX, check_short_name
from vers.refs.revparse import expand_ref
from vers.repo import Repo

#: how many of the commits a HEAD move leaves behind the warning names
SHOW_LEFT_BEHIND = 5


@dataclass(frozen=True)
class RefInfo:
    name: str
    short: str
    commit: str
    current: bool


def list_branches(repo: Repo) -> list[RefInfo]:
    current = repo.current_branch()
    out = []
    for name, value in repo.refs.list_refs("refs/heads/").items():
        if value.startswith(SYMREF_PREFIX):
            continue
        s = name[len("refs/heads/") :]
        out.append(RefInfo(name, s, value, s == current))
    return out


def create_branch(repo: Repo, name: str, rev: str = HEAD, force: bool = False) -> str:
    check_short_name(name)
    cid = repo.rev_parse(rev)
    ref = "refs/heads/" + name
    repo.refs.set_ref(ref, cid, old=ANY if force else None, message=f"branch: created from {rev}")
    return cid


def delete_branch(repo: Repo, name: str) -> str:
    check_short_name(name)
    if repo.current_branch() == name:
        raise RefError(f"cannot delete branch {name!r}: it is the current branch")
    return _delete(repo, "refs/heads/" + name, "branch", name)


def switch(repo: Repo, name: str) -> str:
    """Point HEAD at branch ``name`` (no VM is touched; `vers checkout` restores a machine)."""
    check_short_name(name)
    value = _existing(repo, "refs/heads/" + name, "branch", name)
    repo.set_head_branch(name, message=f"switch: moving to {name}")
    return value


def detached_head(repo: Repo) -> str | None:
    """The commit HEAD points at directly (no branch), or None when HEAD is on a branch."""
    return repo.head_commit() if repo.current_branch() is None else None


def left_behind(repo: Repo, old_head: str | None) -> list[Commit]:
    """Commits reachable from ``old_head`` (a detached HEAD before it moved) that neither HEAD
    now nor any ref reaches: what ``gc`` may drop, newest first."""
    if old_head is None:
        return []
    keep = [v for v in repo.refs.list_refs("refs/").values() if not v.startswith(SYMREF_PREFIX)]
    head = repo.head_commit()
    if head is not None:
        keep.append(head)
    return list(walk(repo.get_commit, [old_head], keep))


def leaving_warning(commits: list[Commit]) -> str | None:
    """git's "you are leaving N commits behind" for the commits ``left_behind`` found."""
    if not commits:
        return None
    n = len(commits)
    head = (f"Warning: you are leaving {n} commit{'s' if n > 1 else ''} behind, "
            "not connected to any of your branches:")
    lines = [head, ""]
    lines += [f"  {c.id[:12]} {c.summary}" for c in commits[:SHOW_LEFT_BEHIND]]
    if n > SHOW_LEFT_BEHIND:
        lines.append(f"  ... and {n - SHOW_LEFT_BEHIND} more.")
    lines += ["", "If you want to keep them, this may be a good time to create a branch:", "",
              f"  vers branch-create <new-branch-name> {commits[0].id[:12]}"]
    return "\n".join(lines)


def list_tags(repo: Repo) -> list[RefInfo]:
    return [RefInfo(n, n[len("refs/tags/") :], v, False)
            for n, v in repo.refs.list_refs("refs/tags/").items()]


def create_tag(repo: Repo, name: str, rev: str = HEAD, force: bool = False) -> str:
    check_short_name(name, "tag")
    cid = repo.rev_parse(rev)
    ref = "refs/tags/" + name
    if not force and repo.refs.read_ref(ref) is not None:
        raise RefError(f"tag {name!r} already exists (use -f to move it)")
    repo.refs.set_ref(ref, cid, message=f"tag: {rev}")
    return cid


def delete_tag(repo: Repo, name: str) -> str:
    check_short_name(name, "tag")
    return _delete(repo, "refs/tags/" + name, "tag", name)


def _existing(repo: Repo, ref: str, what: str, name: str) -> str:
    value = repo.refs.read_ref(ref)
    if value is None:
        raise RefError(f"{what} {name!r} not found")
    return value


def _delete(repo: Repo, ref: str, what: str, name: str) -> str:
    """Delete an existing ref (compare-and-swap against the value read); returns that value."""
    value = _existing(repo, ref, what, name)
    repo.refs.delete_ref(ref, old=value, message=f"{what}: deleted")
    return value


def show_refs(repo: Repo) -> list[tuple[str, str]]:
    out = []
    head = repo.head_commit()
    if head:
        out.append((head, HEAD))
    for name, value in repo.refs.list_refs("refs/").items():
        if not value.startswith(SYMREF_PREFIX):
            out.append((value, name))
    return out


def reflog(repo: Repo, ref: str = HEAD) -> list[str]:
    full = expand_ref(repo.refs, ref) or ref
    if full != HEAD and not full.startswith("refs/"):
        raise BadRevision(f"no ref named {ref!r}")
    lines = []
    for i, e in enumerate(repo.refs.reflog(full)):
        short = (e.new or "0" * 12)[:12]
        lines.append(f"{short} {ref}@{{{i}}}: {e.message}")
    return lines
