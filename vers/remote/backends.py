"""Every transport, chosen by URL: the one place that knows all the backends.

The ``Transport`` interface (transport.py) knows none of them, so a backend imports the interface
and never the other way round (restic keeps its factory in backend/all.go for the same reason).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from vers.remote.path import PathTransport
from vers.remote.s3 import S3Transport
from vers.remote.transport import Transport, parse_url


def open_transport(url: str, env: Mapping[str, str] | None = None,
                   timeout: float | None = None) -> Transport:
    """A transport for a path, ``file://`` or ``s3://bucket/prefix`` URL; ``env`` and ``timeout``
    are for S3 (see ``S3Transport``)."""
    scheme, where, prefix = parse_url(url)
    if scheme == "s3":
        return S3Transport(where, prefix, env=env, timeout=timeout)
    return PathTransport(Path(where))
