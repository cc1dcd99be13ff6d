"""Refs, HEAD, reflogs and rev-parse."""

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
