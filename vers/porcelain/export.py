"""vers export: write a commit's images back to files (sparse where zero)."""

from __future__ import annotations

from collections.abc import Mapping

from vers.errors import BadInput
from vers.repo import Repo


def export(repo: Repo, rev: str, outputs: Mapping[str, str]) -> list[str]:
    """Export each ``{image name: path}``; returns the names written."""
    if not outputs:
        raise BadInput("nothing to export: give --memory OUT, --disk OUT, --devstate OUT "
                       "or --image NAME=OUT")
    commit = repo.get_commit(rev)
    for name in outputs:
        if name not in commit.images:
            have = ", ".join(sorted(commit.images))
            raise BadInput(f"commit {commit.id[:12]} has no image {name!r} (it has: {have})")
    for name, path in outputs.items():
        repo.export_image(commit.id, name, path)
    return list(outputs)
