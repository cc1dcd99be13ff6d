"""Refs on a remote: one small object per ref (``refs/heads/main`` holding ``<hex id>\\n``) and
``HEAD`` holding ``ref: refs/heads/<branch>\\n``. They move only by the transport's
compare-and-swap, and only after every object they need is stored."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from vers.errors import BadRefName, RemoteError
from vers.refs.container import SYMREF_PREFIX, check_ref_name
from vers.remote.transport import Transport

HEAD_KEY = "HEAD"
FORMAT_KEY = "vers-remote.json"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class RemoteRef(NamedTuple):
    value: str
    tag: str


def read_remote_refs(transport: Transport) -> dict[str, RemoteRef]:
    names = sorted(k for k in transport.list("refs/") if not k.split("/")[-1].startswith("."))
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(transport.read_versioned, names))
    out = {}
    for name, item in zip(names, got):
        if item is None:
            continue  # deleted between list and get
        value = item[0].decode(errors="replace").strip()
        try:
            check_ref_name(name)
        except BadRefName as exc:  # a hostile name on the remote
            raise RemoteError(f"{transport.url}: bad ref name {name!r} on the remote") from exc
        if not _HEX64.match(value):
            raise RemoteError(f"{transport.url}: ref {name} holds {value[:80]!r}, not a commit ID")
        out[name] = RemoteRef(value, item[1])
    return out


def read_remote_head(transport: Transport) -> str | None:
    """The branch ref the remote's HEAD names, if any."""
    got = transport.read_versioned(HEAD_KEY)
    if got is None:
        return None
    text = got[0].decode(errors="replace").strip()
    if text.startswith(SYMREF_PREFIX):
        target = text[len(SYMREF_PREFIX):]
        try:
            return check_ref_name(target)
        except BadRefName as exc:
            raise RemoteError(f"{transport.url}: HEAD names a bad ref {target!r}") from exc
    return None


def set_remote_head_if_absent(transport: Transport, branch_ref: str) -> None:
    transport.put_if(HEAD_KEY, f"{SYMREF_PREFIX}{branch_ref}\n".encode(), None)


def check_format(transport: Transport) -> None:
    """Refuse to read from something that is not a vers remote (or is a newer format)."""
    got = transport.read_versioned(FORMAT_KEY)
    if got is None:
        raise RemoteError(f"{transport.url}: not a vers remote (no {FORMAT_KEY}; push to it first)")
    if b'"format": 1' not in got[0]:
        raise RemoteError(f"{transport.url}: unsupported remote format {got[0][:80]!r}")


def ensure_format(transport: Transport) -> None:
    """Mark the layout version once; a remote written by a future vers is refused, not mangled."""
    got = transport.read_versioned(FORMAT_KEY)
    if got is None:
        transport.put_if(FORMAT_KEY, b'{"format": 1, "layout": "vers-bundles"}\n', None)
        return
    if b'"format": 1' not in got[0]:
        raise RemoteError(f"{transport.url}: unsupported remote format {got[0][:80]!r}")


def cas_remote_ref(transport: Transport, name: str, new: str, expected: RemoteRef | None) -> bool:
    check_ref_name(name)
    return transport.put_if(name, f"{new}\n".encode(), expected.tag if expected else None)
