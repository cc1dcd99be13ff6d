"""vers export: write a commit's images back to files (sparse where zero)."""

from __future__ import annotations

from collections.abc import Mapping

from vers.errors import BadInput
from vers.progress import NO_PROGRESS, Progress
from vers.repo import Repo


def export(repo: Repo, rev: str, outputs: Mapping[str, str],
           progress: Progress = NO_PROGRESS) -> list[str]:
    """Export each ``{image name: path}``; returns the names written."""
    if not outputs:
        raise BadInput("nothing to export: give --memory OUT, --disk OUT, --devstate OUT "
                       "or --image NAME=OUT")
    commit = repo.get_commit(rev)
    for name in outputs:
        if name not in commit.images:
            have = ", ".join(sorted(commit.images))
            raise BadInput(f"commit {commit.id[:12]} has no image {name!r} (it has: {have})")
    total = sum(repo.store.get_tree(bytes.fromhex(commit.images[n])).size for n in outputs)
    with progress.meter("export", total=total) as meter:
        for name, path in outputs.items():
            repo.export_image(commit.id, name, path, meter.advance)
    return list(outputs)
