"""Objects (pages, nodes, trees, commits) and the stores that keep them."""

from vers.objects.imagetree import (
    ImageFile,
    PageRange,
    TreeReader,
    build_tree,
    diff_trees,
    patch_tree,
    write_image,
)
from vers.objects.lmdbstore import LmdbObjectStore
from vers.objects.model import (
    FANOUT,
    ID_LEN,
    KIND_COMMIT,
    KIND_NODE,
    KIND_PAGE,
    KIND_TREE,
    PAGE_SIZE,
    ZERO_ID,
    Commit,
    Tree,
    hash_bytes,
)
from vers.objects.store import MemoryObjectStore, ObjectStore, ObjectWriter, Record

__all__ = [
    "FANOUT",
    "ID_LEN",
    "KIND_COMMIT",
    "KIND_NODE",
    "KIND_PAGE",
    "KIND_TREE",
    "PAGE_SIZE",
    "ZERO_ID",
    "Commit",
    "ImageFile",
    "LmdbObjectStore",
    "MemoryObjectStore",
    "ObjectStore",
    "ObjectWriter",
    "PageRange",
    "Record",
    "Tree",
    "TreeReader",
    "build_tree",
    "diff_trees",
    "hash_bytes",
    "patch_tree",
    "write_image",
]
