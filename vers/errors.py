"""Every exception vers reports to a user, in one hierarchy, each class with its exit code.

The CLI turns a ``VersError`` into one line on stderr and ``exit_code`` in one place
(``vers.cli._group``); anything else is a bug and gets a traceback. Scripts tell failures apart by
the code alone, so each class of failure has its own; ``EXIT_CODES`` is the table docs/cli.md
documents (a test holds the two together).
"""

from __future__ import annotations

#: Exit codes of the ``vers`` command, by meaning. Codes 1 and the bisect/timeout ones are results,
#: not errors: ``diff --exit-code`` found changes, ``fsck`` found problems, and so on.
EXIT_OK = 0
EXIT_FALSE = 1
EXIT_BAD_INPUT = 2
EXIT_NOT_FOUND = 3
EXIT_DAMAGED = 4
EXIT_BUSY = 5
EXIT_VM = 6
EXIT_REMOTE = 7
EXIT_BISECT_SKIPPED = 8
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_FALSE: "a check answered no: `diff --exit-code` found changes, `fsck` found problems",
    EXIT_BAD_INPUT: "bad input: an unusable argument, option, file, size or name "
                    "(and click's usage errors)",
    EXIT_NOT_FOUND: "not found: no repository, revision, object, ref or VM of that name",
    EXIT_DAMAGED: "the repository is damaged: a corrupt or missing store file or object",
    EXIT_BUSY: "busy or raced: a lock is held or a ref moved under a compare-and-swap; try again",
    EXIT_VM: "a VM, QEMU or FUSE failure",
    EXIT_REMOTE: "a remote failed: unreachable, refused, or sent bad data",
    EXIT_BISECT_SKIPPED: "bisect: only skipped commits are left, the first bad one cannot be named",
    EXIT_TIMEOUT: "a timeout: the guest command did not finish in time (like timeout(1))",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
    EXIT_BROKEN_PIPE: "stdout was closed early (e.g. piped into `head`)",
}


class VersError(Exception):
    """Base of every error vers reports to a user."""

    exit_code = EXIT_BAD_INPUT


class BadInput(VersError):
    """A file, size, option or argument the user gave is unusable."""


class RepositoryExists(BadInput):
    pass


class NotFound(VersError):
    """Something named does not exist."""

    exit_code = EXIT_NOT_FOUND


class NotARepository(NotFound):
    pass


class ObjectNotFound(NotFound, KeyError):
    def __init__(self, oid: str, what: str = "object") -> None:
        super().__init__(f"{what} {oid} not found in the store")
        self.oid = oid

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class StoreError(VersError):
    """The store cannot be read or written as it should: damaged, missing or unwritable."""

    exit_code = EXIT_DAMAGED


class CorruptObject(StoreError):
    """Stored bytes do not hash to their ID, or cannot be parsed."""

    def __init__(self, oid: str, reason: str) -> None:
        super().__init__(f"corrupt object {oid}: {reason}")
        self.oid = oid
        self.reason = reason


class RefError(VersError):
    pass


class BadRefName(RefError):
    pass


class RefConflict(RefError):
    """A compare-and-swap ref update found a value other than the expected one."""

    exit_code = EXIT_BUSY


class BadRevision(RefError):
    """A revision that names no commit (unknown name, prefix or syntax)."""

    exit_code = EXIT_NOT_FOUND


class AmbiguousRevision(BadRevision):
    exit_code = EXIT_BAD_INPUT

    def __init__(self, prefix: str, candidates: list[str]) -> None:
        listing = "\n  ".join(candidates)
        super().__init__(f"short ID {prefix} is ambiguous; candidates:\n  {listing}")
        self.candidates = candidates


class Busy(VersError):
    """Another vers command holds what this one needs (a VM or repository lock)."""

    exit_code = EXIT_BUSY


class VMError(VersError):
    exit_code = EXIT_VM


class UnknownVM(VMError, NotFound):
    exit_code = EXIT_NOT_FOUND


class GuestTimeout(VMError):
    """A guest command outlived its timeout (and was given up on)."""

    exit_code = EXIT_TIMEOUT


class FuseError(VersError):
    exit_code = EXIT_VM


class RemoteError(VersError):
    exit_code = EXIT_REMOTE


class BisectError(VersError):
    pass


class BisectOnlySkipped(BisectError):
    """Only skipped commits are left between good and bad: no single first bad commit."""

    exit_code = EXIT_BISECT_SKIPPED


class MirrorUnreachable(VMError):
    """Building a guest image needs the Debian package mirror, and it cannot be reached."""
