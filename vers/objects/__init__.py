"""Objects (pages, nodes, trees, commits) and the stores that keep them.

The names below are loaded from their modules on first use, so that importing one module of the
package (``vers.objects.model``, say) does not import all the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vers.lazynames import lazy_names

if TYPE_CHECKING:
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

#: name -> the module of vers.objects that defines it
_MODULES = {
    **dict.fromkeys(("ImageFile", "PageRange", "TreeReader", "build_tree", "diff_trees",
                     "patch_tree", "write_image"), "imagetree"),
    "LmdbObjectStore": "lmdbstore",
    **dict.fromkeys(("FANOUT", "ID_LEN", "KIND_COMMIT", "KIND_NODE", "KIND_PAGE", "KIND_TREE",
                     "PAGE_SIZE", "ZERO_ID", "Commit", "Tree", "hash_bytes"), "model"),
    **dict.fromkeys(("MemoryObjectStore", "ObjectStore", "ObjectWriter", "Record"), "store"),
}

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


__getattr__, __dir__ = lazy_names(__name__, _MODULES, __all__, globals())
