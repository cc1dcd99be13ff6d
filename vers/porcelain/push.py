"""`vers push REMOTE [REF...]`: send commits and move the remote's refs (fast-forward only)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vers.errors import BadInput
from vers.porcelain.remote import resolve_remote
from vers.progress import NO_PROGRESS, Progress, human_bytes
from vers.refs.container import HEAD
from vers.refs.revparse import expand_ref
from vers.remote.bundle import DEFAULT_BUNDLE_BYTES
from vers.remote.config import cache_dir
from vers.remote.push import PushResult
from vers.remote.push import push as push_objects_and_refs

if TYPE_CHECKING:
    from vers.repo import Repo

__all__ = ["DEFAULT_BUNDLE_BYTES", "PushResult", "push", "push_lines"]


def _resolve_spec(repo: Repo, spec: str) -> tuple[str, str]:
    """``src[:dst]`` -> (commit ID, remote ref name); src defaults dst to its own full name."""
    src, _, dst = spec.partition(":")
    force_dst = dst or None
    if src in (HEAD, "@"):
        branch = repo.current_branch()
        if branch is None and force_dst is None:
            raise BadInput("HEAD is detached: say where to push it, e.g. HEAD:refs/heads/NAME")
        full = f"refs/heads/{branch}" if branch else None
    else:
        full = expand_ref(repo.refs, src)
    new = repo.rev_parse(src)
    if force_dst is not None:
        if not force_dst.startswith("refs/"):
            force_dst = f"refs/tags/{force_dst}" if full and full.startswith("refs/tags/") \
                else f"refs/heads/{force_dst}"
        return new, force_dst
    if full is None or not full.startswith(("refs/heads/", "refs/tags/")):
        raise BadInput(f"cannot tell which remote ref {spec!r} should update; use SRC:DST")
    return new, full


def push(repo: Repo, remote: str, refspecs: list[str] | None = None, *, force: bool = False,
         progress: Progress = NO_PROGRESS, bundle_bytes: int = DEFAULT_BUNDLE_BYTES,
         ) -> PushResult:
    if not refspecs:
        branch = repo.current_branch()
        if branch is None:
            raise BadInput("HEAD is detached: name the refs to push")
        refspecs = [branch]
    updates = [_resolve_spec(repo, s) for s in refspecs]
    name, transport = resolve_remote(repo, remote)
    heads = [dst for _new, dst in updates if dst.startswith("refs/heads/")]
    current = repo.current_branch()
    head_branch = f"refs/heads/{current}" if f"refs/heads/{current}" in heads else \
        (heads[0] if heads else None)
    try:
        result = push_objects_and_refs(
            repo, transport, updates, force=force, progress=progress, bundle_bytes=bundle_bytes,
            cache_dir=cache_dir(repo, name) if name else None, head_branch=head_branch)
    finally:
        transport.close()
    if name:
        for dst, _old, new in result.updated:
            if dst.startswith("refs/heads/"):
                repo.refs.set_ref(f"refs/remotes/{name}/{dst[len('refs/heads/'):]}", new,
                                  message=f"push {name}")
    return result


def push_lines(result: PushResult) -> list[str]:
    """What a push did, for people: one line per ref, then what was sent."""
    lines = [f"{ref}: up to date" for ref in result.up_to_date]
    lines += [f"{ref}: {old[:12] if old else '(new)'} -> {new[:12]}"
              for ref, old, new in result.updated]
    lines.append(f"sent {result.objects} objects, {human_bytes(result.bytes)} in "
                 f"{result.bundles} bundles")
    return lines
