"""Every exception vers raises, in one hierarchy.

The CLI maps ``VersError`` subclasses to exit codes in one place (``vers.cli``); anything else is a
bug and gets a traceback.
"""

from __future__ import annotations


class VersError(Exception):
    """Base of every error vers reports to a user."""

    exit_code = 2


class NotARepository(VersError):
    pass


class RepositoryExists(VersError):
    pass


class BadInput(VersError):
    """A file, size, option or argument the user gave is unusable."""


class ObjectNotFound(VersError, KeyError):
    def __init__(self, oid: str, what: str = "object") -> None:
        super().__init__(f"{what} {oid} not found in the store")
        self.oid = oid

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class CorruptObject(VersError):
    """Stored bytes do not hash to their ID, or cannot be parsed."""

    def __init__(self, oid: str, reason: str) -> None:
        super().__init__(f"corrupt object {oid}: {reason}")
        self.oid = oid
        self.reason = reason


class StoreError(VersError):
    pass


class RefError(VersError):
    pass


class BadRefName(RefError):
    pass


class RefConflict(RefError):
    """A compare-and-swap ref update found a value other than the expected one."""


class BadRevision(RefError):
    pass


class AmbiguousRevision(BadRevision):
    def __init__(self, prefix: str, candidates: list[str]) -> None:
        listing = "\n  ".join(candidates)
        super().__init__(f"short ID {prefix} is ambiguous; candidates:\n  {listing}")
        self.candidates = candidates


class VMError(VersError):
    pass


class FuseError(VersError):
    pass


class RemoteError(VersError):
    pass


class BisectError(VersError):
    pass


class MirrorUnreachable(VMError):
    """Building a guest image needs the Debian package mirror, and it cannot be reached."""


class GuestTimeout(VMError):
    """A guest command outlived its timeout (and was given up on)."""

    exit_code = 124
