"""vers snapshot: commit image files (no VM needed) on the current branch."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from vers.errors import BadInput
from vers.progress import NO_PROGRESS, Progress
from vers.repo import ImageSource, Repo


def image_map(
    memory: str | None = None,
    disks: tuple[str, ...] | list[str] = (),
    devstate: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, ImageSource]:
    """Name the images as every other part of vers does: memory, disk, disk1, ..., devstate."""
    images: dict[str, ImageSource] = {}
    if memory:
        images["memory"] = memory
    for i, d in enumerate(disks):
        images["disk" if i == 0 else f"disk{i}"] = d
    if devstate:
        images["devstate"] = devstate
    for name, path in (extra or {}).items():
        if name in images:
            raise BadInput(f"image {name!r} given twice")
        images[name] = path
    return images


def snapshot(
    repo: Repo,
    images: Mapping[str, ImageSource],
    message: str = "",
    config: Mapping[str, Any] | None = None,
    progress: Progress = NO_PROGRESS,
) -> str:
    if "memory" not in images:
        raise BadInput("a snapshot needs a memory image (--memory FILE)")
    with progress.meter("snapshot", total=_total_size(images)) as meter:
        return repo.snapshot(images, message=message, config=config, progress=meter.advance)


def _total_size(images: Mapping[str, ImageSource]) -> int | None:
    """The bytes a snapshot reads, when every image is a named file (else unknown)."""
    total = 0
    for src in images.values():
        if not isinstance(src, (str, os.PathLike)):
            return None
        try:
            total += os.stat(src).st_size
        except OSError:
            return None  # the snapshot itself says what is wrong with it
    return total
