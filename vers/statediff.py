"""What changed between two commits, image by image, as page ranges (structured, for scripts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vers.objects.imagetree import PageRange, diff_trees
from vers.objects.model import PAGE_SIZE, ZERO_ID, Commit, Tree
from vers.objects.store import ObjectStore


@dataclass
class ImageDiff:
    name: str
    status: str  # "modified", "added", "removed", "unchanged", "resized"
    size_a: int | None
    size_b: int | None
    ranges: list[PageRange] = field(default_factory=list)

    @property
    def changed_pages(self) -> int:
        return sum(r.count for r in self.ranges)

    @property
    def changed_bytes(self) -> int:
        return self.changed_pages * PAGE_SIZE

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "size_a": self.size_a,
            "size_b": self.size_b,
            "changed_pages": self.changed_pages,
            "changed_bytes": self.changed_bytes,
            "ranges": [
                {"first_page": r.start, "pages": r.count, "offset": r.start * PAGE_SIZE,
                 "length": r.count * PAGE_SIZE}
                for r in self.ranges
            ],
        }


@dataclass
class CommitDiff:
    a: str
    b: str
    images: list[ImageDiff]

    @property
    def changed(self) -> bool:
        return any(d.status != "unchanged" for d in self.images)

    def to_json(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "changed": self.changed,
                "images": [d.to_json() for d in self.images]}


def _nonzero_ranges(store: ObjectStore, tree: Tree) -> list[PageRange]:
    empty = Tree(size=tree.size, root=ZERO_ID, depth=tree.depth)
    return diff_trees(store, empty, tree)


def diff_commits(store: ObjectStore, a: Commit, b: Commit) -> CommitDiff:
    out: list[ImageDiff] = []
    for name in sorted(set(a.images) | set(b.images)):
        ta = store.get_tree(bytes.fromhex(a.images[name])) if name in a.images else None
        tb = store.get_tree(bytes.fromhex(b.images[name])) if name in b.images else None
        if ta is None and tb is not None:
            out.append(ImageDiff(name, "added", None, tb.size, _nonzero_ranges(store, tb)))
        elif tb is None and ta is not None:
            out.append(ImageDiff(name, "removed", ta.size, None, _nonzero_ranges(store, ta)))
        elif ta is not None and tb is not None:
            if a.images[name] == b.images[name]:
                out.append(ImageDiff(name, "unchanged", ta.size, tb.size))
                continue
            status = "modified" if ta.size == tb.size else "resized"
            ranges = diff_trees(store, ta, tb)
            out.append(ImageDiff(name, status if ranges or status == "resized" else "unchanged",
                                 ta.size, tb.size, ranges))
    return CommitDiff(a.id, b.id, out)
