"""Refs, HEAD, reflogs and rev-parse.

The names below are loaded from their modules on first use, so that importing one module of the
package does not import the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vers.lazynames import lazy_names

if TYPE_CHECKING:
    from vers.refs.container import (
        HEAD,
        SYMREF_PREFIX,
        DictRefsContainer,
        LmdbRefsContainer,
        ReflogEntry,
        RefsContainer,
        check_ref_name,
        check_short_name,
    )
    from vers.refs.revparse import expand_ref, rev_parse

#: name -> the module of vers.refs that defines it
_MODULES = {
    **dict.fromkeys(("HEAD", "SYMREF_PREFIX", "DictRefsContainer", "LmdbRefsContainer",
                     "ReflogEntry", "RefsContainer", "check_ref_name", "check_short_name"),
                    "container"),
    **dict.fromkeys(("expand_ref", "rev_parse"), "revparse"),
}

__all__ = [
    "HEAD",
    "SYMREF_PREFIX",
    "DictRefsContainer",
    "LmdbRefsContainer",
    "ReflogEntry",
    "RefsContainer",
    "check_ref_name",
    "check_short_name",
    "expand_ref",
    "rev_parse",
]


__getattr__, __dir__ = lazy_names(__name__, _MODULES, __all__, globals())
