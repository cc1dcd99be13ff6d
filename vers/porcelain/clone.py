"""`vers clone URL [DIR]`: init + remote add origin + fetch + branch and HEAD like the source."""

from __future__ import annotations

import shutil
from pathlib import Path

from vers.errors import BadInput
from vers.porcelain.fetch import fetch
from vers.progress import NO_PROGRESS, Progress
from vers.remote.config import add_remote
from vers.remote.transport import parse_url
from vers.repo import DEFAULT_BRANCH, Repo


def default_directory(url: str) -> str:
    scheme, where, prefix = parse_url(url)
    if scheme == "s3":
        return (prefix.rstrip("/").split("/")[-1] if prefix else where) or where
    return Path(where).name or "vers-clone"


def clone(url: str, directory: str | None = None, progress: Progress = NO_PROGRESS,
          lazy: bool = False) -> tuple[Repo, str | None]:
    """Returns the new repository and its HEAD commit (None for an empty remote). On failure
    the directory is removed if this call created it. ``lazy``: refs and commits only, the rest
    read from origin when needed (see ``fetch``)."""
    target = Path(directory or default_directory(url)).absolute()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BadInput(f"destination {target} already exists and is not an empty directory")
    created = not target.exists()
    repo = Repo.init(target)
    try:
        add_remote(repo, "origin", url)
        summary = fetch(repo, "origin", progress, lazy=lazy)
        heads = {r[len("refs/heads/"):]: v for r, v in summary.remote_refs.items()
                 if r.startswith("refs/heads/")}
        head = summary.remote_head
        branch = head[len("refs/heads/"):] if head and head.startswith("refs/heads/") else None
        if branch not in heads:
            branch = DEFAULT_BRANCH if DEFAULT_BRANCH in heads else next(iter(sorted(heads)), None)
        if branch is None:
            return repo, None
        repo.refs.set_ref(f"refs/heads/{branch}", heads[branch], old=None,
                          message=f"clone: from {url}")
        repo.set_head_branch(branch, message=f"clone: from {url}")
        return repo, heads[branch]
    except BaseException:
        repo.close()
        if created:
            shutil.rmtree(target, ignore_errors=True)
        else:
            shutil.rmtree(target / ".vers", ignore_errors=True)
        raise
