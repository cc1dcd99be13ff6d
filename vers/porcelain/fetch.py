"""`vers fetch REMOTE` and `vers pull [REMOTE]`: remote commits in, verified, then refs move."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vers.errors import BadInput, RemoteError
from vers.history import is_ancestor
from vers.history.reachability import collect_roots
from vers.porcelain.gc import vm_roots
from vers.porcelain.remote import resolve_remote
from vers.progress import NO_PROGRESS, Progress, human_bytes
from vers.remote.bundle import RemoteIndex
from vers.remote.config import cache_dir, set_promisor
from vers.remote.fetch import FetchResult, fetch_objects
from vers.remote.refs import check_format, read_remote_head, read_remote_refs

if TYPE_CHECKING:
    from vers.remote.transport import Transport
    from vers.repo import Repo


@dataclass
class FetchSummary:
    result: FetchResult
    updated: dict[str, tuple[str | None, str]] = field(default_factory=dict)  # ref: (old, new)
    remote_head: str | None = None  # the branch ref the remote's HEAD names
    remote_refs: dict[str, str] = field(default_factory=dict)


def fetch(repo: Repo, remote: str, progress: Progress = NO_PROGRESS, lazy: bool = False,
          all_objects: bool = False) -> FetchSummary:
    """Fetch every branch and tag of ``remote``: branches land in refs/remotes/REMOTE/*, tags in
    refs/tags/* when not already there. Refs move only after every object is here and verified.

    ``lazy``: refs and commits only; the remote becomes this repository's promisor, which the
    rest is read from when needed (docs/remote.md, "The lazy store"). ``all_objects``: also
    fetch whatever the store lacks of everything its refs and VMs reach (completes a lazy one)."""
    if lazy and all_objects:
        raise BadInput("--lazy and --all-objects contradict each other")
    name, transport = resolve_remote(repo, remote)
    if name is None:
        raise BadInput("fetch needs a configured remote (vers remote add NAME URL)")
    # A partial store stays partial: completing it is asked for (--all-objects).
    lazy = lazy or (not all_objects and name in repo.promisors())
    if lazy:
        set_promisor(repo, name)  # before any object lands that relies on it
    mode = "lazy" if lazy else "complete" if all_objects else "full"
    with repo.store.writing():  # gc must not sweep objects this fetch relies on
        return _fetch_locked(repo, name, transport, progress, mode)


def _local_tips(repo: Repo) -> list[str]:
    """Every commit the repository names (refs, VMs): what --all-objects completes."""
    return [r.commit for r in collect_roots(repo.refs, reflogs=False) + vm_roots(repo.vers_dir)]


def _fetch_locked(repo: Repo, name: str, transport: Transport, progress: Progress,
                  mode: str) -> FetchSummary:
    try:
        # Refs first: a remote ref moves only after its objects are indexed, so the index read
        # next covers every commit these refs name.
        check_format(transport)
        remote_refs = {k: r.value for k, r in read_remote_refs(transport).items()}
        head = read_remote_head(transport)
        index = RemoteIndex.load(transport, cache_dir(repo, name))
        tips = list(remote_refs.values())
        if mode == "complete":
            tips += _local_tips(repo)
        result = fetch_objects(repo.store, transport, index, tips, progress, mode)
    finally:
        transport.close()
    summary = FetchSummary(result, remote_head=head, remote_refs=remote_refs)
    for ref, new in remote_refs.items():
        if ref.startswith("refs/heads/"):
            local = f"refs/remotes/{name}/{ref[len('refs/heads/'):]}"
        elif ref.startswith("refs/tags/"):
            local = ref
            if repo.refs.read_ref(local) not in (None, new):
                continue  # never clobber a local tag
        else:
            continue
        old = repo.refs.read_ref(local)
        if old != new:
            repo.refs.set_ref(local, new, old=old, message=f"fetch {name}")
            summary.updated[local] = (old, new)
    return summary


def fetch_lines(summary: FetchSummary) -> list[str]:
    """What a fetch did, for people: one line per ref moved, then what was received."""
    lines = [f"{ref}: {old[:12] if old else '(new)'} -> {new[:12]}"
             for ref, (old, new) in summary.updated.items()]
    lines.append(f"received {summary.result.objects} objects, "
                 f"{human_bytes(summary.result.bytes)}")
    return lines


def pull(repo: Repo, remote: str = "origin", progress: Progress = NO_PROGRESS,
         ) -> tuple[str | None, str]:
    """Fetch, then fast-forward the current branch to its remote twin; returns (old, new)."""
    branch = repo.current_branch()
    if branch is None:
        raise BadInput("HEAD is detached: check out a branch to pull into")
    fetch(repo, remote, progress)
    theirs = repo.refs.resolve(f"refs/remotes/{remote}/{branch}")
    if theirs is None:
        raise RemoteError(f"remote {remote} has no branch {branch}")
    ref = f"refs/heads/{branch}"
    ours = repo.refs.resolve(ref)
    if ours == theirs:
        return ours, theirs
    if ours is not None and not is_ancestor(repo.get_commit, ours, theirs):
        raise RemoteError(
            f"not a fast-forward: {branch} ({ours[:12]}) and {remote}/{branch} ({theirs[:12]}) "
            "have diverged; nothing was changed")
    repo.refs.set_ref(ref, theirs, old=ours, message=f"pull {remote}: fast-forward")
    return ours, theirs
