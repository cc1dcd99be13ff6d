"""vers show: one commit, its images and machine configuration."""

from __future__ import annotations

import json
from typing import Any

from vers.objects.imagetree import TreeReader
from vers.objects.model import ZERO_ID
from vers.porcelain.log import commit_json, decorations, format_full
from vers.repo import Repo


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def show_data(repo: Repo, rev: str) -> dict[str, Any]:
    c = repo.get_commit(rev)
    images = {}
    for name, tree_hex in sorted(c.images.items()):
        tree = repo.store.get_tree(bytes.fromhex(tree_hex))
        images[name] = {"tree": tree_hex, "size": tree.size, "pages": tree.num_pages,
                        "all_zero": tree.root == ZERO_ID}
    data = commit_json(c)
    data["images"] = images
    return data


def show_text(repo: Repo, rev: str) -> str:
    c = repo.get_commit(rev)
    out = [format_full(c, decorations(repo).get(c.id, []))]
    out.append("Images:")
    for name, tree_hex in sorted(c.images.items()):
        tree = repo.store.get_tree(bytes.fromhex(tree_hex))
        out.append(f"    {name:<10} {human_size(tree.size):>10}  tree {tree_hex[:12]}")
    if c.config:
        out.append("Config:")
        out += ["    " + line
                for line in json.dumps(c.config, indent=2, sort_keys=True).splitlines()]
    return "\n".join(out)


__all__ = ["TreeReader", "human_size", "show_data", "show_text"]
