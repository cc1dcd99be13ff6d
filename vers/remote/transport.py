"""Transports: the few operations a remote needs, over a directory or an S3 bucket.

Everything vers keeps on a remote is a small set of named blobs (bundles, their indexes, refs), so a
transport is five verbs -- get (whole or a byte range), put, list, delete -- plus one
compare-and-swap put for refs. Each backend does the CAS the best way it can: S3 conditional
writes (If-Match / If-None-Match) where the server honours them, otherwise a lock with an expiry.
Counters of requests and bytes live here so tests and benchmarks can check what really moved.
"""

from __future__ import annotations

import os
import re
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

from vers.errors import BadInput, RemoteError

# A lock older than this is presumed left behind by a killed writer and may be broken.
LOCK_EXPIRY_SECONDS = 60.0


class RemoteObjectMissing(RemoteError):
    """A key the protocol expected on the remote is not there."""

    def __init__(self, url: str, key: str) -> None:
        super().__init__(f"{url}: {key} not found")
        self.key = key


@dataclass
class TransferStats:
    """What crossed the wire, counted by the transport (payload bytes, not HTTP overhead)."""

    requests: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    puts: int = 0

    def copy(self) -> TransferStats:
        return TransferStats(self.requests, self.bytes_up, self.bytes_down, self.puts)


class Transport(ABC):
    """Keys are ``/``-separated relative names (``bundles/ab12.bundle``, ``refs/heads/main``)."""

    url: str

    def __init__(self) -> None:
        self.stats = TransferStats()
        self._stats_lock = threading.Lock()

    def _count(self, up: int = 0, down: int = 0, put: bool = False) -> None:
        with self._stats_lock:
            self.stats.requests += 1
            self.stats.bytes_up += up
            self.stats.bytes_down += down
            self.stats.puts += int(put)

    # -- the verbs, counted -------------------------------------------------------------------
    def get(self, key: str) -> bytes:
        data = self._get(key)
        self._count(down=len(data))
        return data

    def get_range(self, key: str, start: int, length: int) -> bytes:
        data = self._get_range(key, start, length)
        self._count(down=len(data))
        if len(data) != length:
            raise RemoteError(f"{self.url}: short read of {key} at {start}: "
                              f"{len(data)} of {length}")
        return data

    def put(self, key: str, data: bytes) -> None:
        self._put(key, data)
        self._count(up=len(data), put=True)

    def list(self, prefix: str) -> dict[str, int]:
        """Every key under ``prefix`` with its size."""
        out = self._list(prefix)
        self._count()
        return out

    def delete(self, key: str) -> None:
        self._delete(key)
        self._count()

    def check_reachable(self) -> None:
        """Raise ``RemoteError`` if the remote itself is not there (a listing of a vanished
        remote would otherwise read as an empty one). Backends whose requests fail when the
        remote is gone need nothing here."""

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The value and an opaque version tag for ``put_if``; None if the key does not exist."""
        got = self._read_versioned(key)
        self._count(down=len(got[0]) if got else 0)
        return got

    def put_if(self, key: str, data: bytes, expected: str | None) -> bool:
        """Write ``key`` only if its version is still ``expected`` (None: must not exist).
        Returns False, writing nothing, if another writer got there first."""
        ok = self._put_if(key, data, expected)
        self._count(up=len(data) if ok else 0, put=True)
        return ok

    # -- backends -----------------------------------------------------------------------------
    @abstractmethod
    def _get(self, key: str) -> bytes: ...

    @abstractmethod
    def _get_range(self, key: str, start: int, length: int) -> bytes: ...

    @abstractmethod
    def _put(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def _list(self, prefix: str) -> dict[str, int]: ...

    @abstractmethod
    def _delete(self, key: str) -> None: ...

    @abstractmethod
    def _read_versioned(self, key: str) -> tuple[bytes, str] | None: ...

    def _put_if(self, key: str, data: bytes, expected: str | None) -> bool:
        """Compare-and-swap under the backend's writer lock (a backend with native conditional
        writes overrides this)."""
        token = self._lock()
        try:
            cur = self._read_versioned(key)
            if (cur[1] if cur else None) != expected:
                return False
            self._put(key, data)
            return True
        finally:
            self._unlock(token)

    @abstractmethod
    def _lock(self) -> Any:
        """Wait (bounded) for the remote's refs lock; returns what ``_unlock`` needs."""

    @abstractmethod
    def _unlock(self, token: Any) -> None: ...

    def close(self) -> None:
        pass


_S3_URL = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(?:/(?P<prefix>.*))?$")


def parse_url(url: str) -> tuple[str, str, str]:
    """``("s3", bucket, prefix)`` or ``("path", absolute_path, "")``; refuses credentials in
    URLs."""
    if url.startswith("s3://"):
        if "@" in url.split("/", 3)[2]:
            raise BadInput("credentials do not belong in a remote URL; use the AWS environment "
                           "or config (AWS_ACCESS_KEY_ID, ~/.aws/credentials, ...)")
        m = _S3_URL.match(url)
        if not m:
            raise BadInput(f"bad S3 URL {url!r} (want s3://bucket/prefix)")
        prefix = (m.group("prefix") or "").strip("/")
        return "s3", m.group("bucket"), prefix
    if url.startswith("file://"):
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise BadInput(f"file URL with a host is not supported: {url!r}")
        return "path", os.path.abspath(unquote(parsed.path)), ""
    if "://" in url:
        raise BadInput(f"unsupported remote URL {url!r} (want a path, file://... or s3://...)")
    if not url:
        raise BadInput("empty remote URL")
    return "path", os.path.abspath(os.path.expanduser(url)), ""


def normalise_url(url: str) -> str:
    """The form kept in config: absolute paths for path remotes, S3 URLs as given."""
    scheme, where, prefix = parse_url(url)
    if scheme == "path":
        return where
    return f"s3://{where}/{prefix}" if prefix else f"s3://{where}"

