"""Remotes in the repository config (``.vers/config.json`` key ``"remotes"``: name -> {url}).

Only names and URLs are kept: S3 credentials and endpoints come from the AWS environment and
config at run time, never from here. The file is rewritten by rename so readers never see half of
it; each update re-reads it first, so other keys written by other parts of vers survive.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vers.errors import BadInput
from vers.files import write_private
from vers.remote.transport import normalise_url

if TYPE_CHECKING:
    from vers.repo import Repo

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_remote_name(name: str) -> str:
    if not _NAME.match(name) or name.endswith(".lock") or ".." in name:
        raise BadInput(f"bad remote name {name!r} (letters, digits, '.', '_', '-')")
    return name


def _read(repo: Repo) -> dict[str, Any]:
    cfg: dict[str, Any] = json.loads((repo.vers_dir / "config.json").read_text())
    return cfg


def _write(repo: Repo, cfg: dict[str, Any]) -> None:
    write_private(repo.vers_dir / "config.json", json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    repo.config = cfg


def list_remotes(repo: Repo) -> dict[str, str]:
    return {name: r["url"] for name, r in sorted(_read(repo).get("remotes", {}).items())}


def remote_url(repo: Repo, name: str) -> str:
    remotes = list_remotes(repo)
    if name not in remotes:
        known = ", ".join(remotes) or "none configured"
        raise BadInput(f"no such remote {name!r} (remotes: {known}; add one with "
                       "`vers remote add NAME URL`)")
    return remotes[name]


def add_remote(repo: Repo, name: str, url: str) -> str:
    check_remote_name(name)
    url = normalise_url(url)
    cfg = _read(repo)
    remotes = cfg.setdefault("remotes", {})
    if name in remotes:
        raise BadInput(f"remote {name} already exists ({remotes[name]['url']})")
    remotes[name] = {"url": url}
    _write(repo, cfg)
    return url


def remove_remote(repo: Repo, name: str) -> None:
    """Forget the remote, its remote-tracking refs and its cached indexes."""
    remote_url(repo, name)
    cfg = _read(repo)
    del cfg["remotes"][name]
    _write(repo, cfg)
    for ref in repo.refs.list_refs(f"refs/remotes/{name}/"):
        repo.refs.delete_ref(ref, message=f"remote remove {name}")
    shutil.rmtree(cache_dir(repo, name), ignore_errors=True)


def cache_dir(repo: Repo, name: str) -> Path:
    """Where the remote's bundle indexes are cached (immutable, so never stale)."""
    return Path(repo.vers_dir) / "remotes" / name / "index"


def set_promisor(repo: Repo, name: str, promisor: bool = True) -> None:
    """Mark remote ``name`` as the source of this repository's absent objects (git's
    ``remote.NAME.promisor``): set once a fetch leaves the store partial, never cleared by vers,
    since objects fetched later may still rely on it."""
    remote_url(repo, name)
    cfg = _read(repo)
    entry = cfg["remotes"][name]
    if bool(entry.get("promisor")) == promisor:
        repo.config = cfg
        return
    if promisor:
        entry["promisor"] = True
    else:
        entry.pop("promisor", None)
    _write(repo, cfg)


def remote_name_for_url(repo: Repo, url: str) -> str | None:
    """The configured remote whose URL is ``url`` (normalised), if any."""
    url = normalise_url(url)
    return next((n for n, u in list_remotes(repo).items() if u == url), None)
