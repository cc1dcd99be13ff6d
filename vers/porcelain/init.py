"""vers init."""

from __future__ import annotations

from pathlib import Path

from vers.repo import Repo


def init(path: str = ".") -> Repo:
    """Create an empty repository in ``path`` (created if missing); HEAD points at ``main``."""
    return Repo.init(Path(path))
