"""`vers remote add|remove|-v`: named remotes kept in the repository config."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vers.remote.backends import open_transport
from vers.remote.config import add_remote, list_remotes, remote_url, remove_remote
from vers.remote.transport import Transport

if TYPE_CHECKING:
    from vers.repo import Repo

__all__ = ["add_remote", "list_remotes", "remove_remote", "resolve_remote"]


def resolve_remote(repo: Repo, remote: str) -> tuple[str | None, Transport]:
    """A configured remote's (name, transport); a path or URL not configured gives (None, ...)."""
    if remote in list_remotes(repo) or not ("/" in remote or "://" in remote):
        return remote, open_transport(remote_url(repo, remote))
    return None, open_transport(remote)
