"""`vers remote add|remove|-v`: named remotes kept in the repository config."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vers.errors import BadInput
from vers.remote.backends import open_transport
from vers.remote.config import add_remote as _add_remote
from vers.remote.config import list_remotes, remote_url, remove_remote
from vers.remote.s3 import S3Transport
from vers.remote.transport import Transport

if TYPE_CHECKING:
    from vers.repo import Repo

__all__ = ["add_remote", "list_remotes", "remove_remote", "resolve_remote"]


def add_remote(repo: Repo, name: str, url: str, create_bucket: bool = False) -> str:
    """Remember remote NAME at URL; with ``create_bucket`` make its S3 bucket first."""
    if create_bucket:
        transport = open_transport(url)
        if not isinstance(transport, S3Transport):
            raise BadInput("--create-bucket is for s3:// remotes")
        transport.create_bucket()
    return _add_remote(repo, name, url)


def resolve_remote(repo: Repo, remote: str) -> tuple[str | None, Transport]:
    """A configured remote's (name, transport); a path or URL not configured gives (None, ...)."""
    if remote in list_remotes(repo) or not ("/" in remote or "://" in remote):
        return remote, open_transport(remote_url(repo, remote))
    return None, open_transport(remote)
