"""The commit graph: walking it (graph), what refs keep alive (reachability), and rewriting it to
forget commits (retention)."""

from vers.history.graph import GetCommit, ancestors, is_ancestor, merge_bases, walk

__all__ = ["GetCommit", "ancestors", "is_ancestor", "merge_bases", "walk"]
