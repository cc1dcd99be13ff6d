"""A synchronous face on the QEMU project's own QMP client (``qemu.qmp``), with a timeout on every
step.

vers talks to QEMU from short-lived CLI processes: connect, issue a few commands, disconnect. The
protocol (greeting, capabilities negotiation, framing, events, SCM_RIGHTS fd passing) is
``qemu.qmp``'s; this module only runs its coroutines on a private event loop with a deadline each,
so that every hang becomes a VMError naming the command instead of a stuck process, and keeps the
few helpers the driver needs (``cont`` that waits out migration clean-up, ``wait_migration``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Self, TypeVar

from qemu.qmp import ExecuteError
from qemu.qmp import QMPClient as _AsyncQMPClient
from qemu.qmp import QMPError as _LibQMPError

from vers.errors import VMError

T = TypeVar("T")
# qemu.qmp logs every disconnect of a killed QEMU at ERROR level; vers reports those itself.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)


class QMPError(VMError):
    """QEMU answered a command with an error."""


class QMPClient:
    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._qmp: _AsyncQMPClient | None = None

    def _run(self, coro: Coroutine[Any, Any, T], what: str) -> T:
        try:
            return self._loop.run_until_complete(asyncio.wait_for(coro, self.timeout))
        except TimeoutError as exc:
            raise VMError(f"QMP on {self.path} did not answer {what} within "
                          f"{self.timeout}s") from exc
        except ExecuteError as exc:
            raise QMPError(f"QEMU refused {what}: {exc}") from exc
        except (_LibQMPError, OSError, EOFError) as exc:
            raise VMError(f"QMP {what} on {self.path} failed: {exc}") from exc

    def connect(self, wait: float = 0.0,
                alive: Callable[[], bool] | None = None) -> QMPClient:
        """Connect and negotiate; retry for up to ``wait`` seconds while ``alive()`` holds."""
        deadline = time.monotonic() + wait
        while True:
            qmp = _AsyncQMPClient()
            try:
                self._run(qmp.connect(self.path), "connect")
                break
            except VMError as exc:
                self._run(qmp.disconnect(), "disconnect")
                if time.monotonic() >= deadline or (alive is not None and not alive()):
                    raise VMError(f"cannot connect to QMP socket {self.path}: {exc}") from exc
                time.sleep(0.002)
        self._qmp = qmp
        return self

    def close(self) -> None:
        try:
            if self._qmp is not None:
                try:
                    self._run(self._qmp.disconnect(), "disconnect")
                except VMError:
                    pass  # QEMU already gone: nothing to hang up
                self._qmp = None
        finally:
            if not self._loop.is_closed():
                self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def command(self, name: str, **args: Any) -> Any:
        """Run one command; return its result or raise QMPError with QEMU's description."""
        if self._qmp is None:
            raise VMError("QMP client is not connected")
        return self._run(self._qmp.execute(name, args or None), name)

    def batch(self, *calls: tuple[str, dict[str, Any]], return_errors: bool = False) -> list[Any]:
        """Several commands in one round trip: all are sent at once, QEMU runs them in order, and
        the results come back as a list. Saves ~0.7 ms per command. A refused command raises
        QMPError, or with ``return_errors`` takes its place in the list (the others still ran).

        Nothing is sent after a ``getfd`` until it has answered (the calls after one go in a
        round trip of their own): QEMU 7.2 reads QMP in its monitor thread while ``getfd`` takes
        the passed fd in the main thread, and a read racing with that take dereferences the
        freed fd list (a QEMU segfault seen in the test suite with ``getfd`` mid-batch)."""
        if self._qmp is None:
            raise VMError("QMP client is not connected")
        cut = next((i for i, (name, _) in enumerate(calls[:-1]) if name == "getfd"), None)
        if cut is not None:
            return (self.batch(*calls[:cut + 1], return_errors=return_errors)
                    + self.batch(*calls[cut + 1:], return_errors=return_errors))
        qmp = self._qmp

        async def run_all() -> list[Any]:
            return list(await asyncio.gather(*(qmp.execute(n, a or None) for n, a in calls),
                                             return_exceptions=return_errors))

        results = self._run(run_all(), "+".join(n for n, _ in calls))
        for i, res in enumerate(results):
            if isinstance(res, ExecuteError):
                results[i] = QMPError(f"QEMU refused {calls[i][0]}: {res}")
            elif isinstance(res, BaseException):
                raise VMError(f"QMP {calls[i][0]} on {self.path} failed: {res}") from res
        return results

    def pass_fd(self, fd: int) -> None:
        """Send ``fd`` over the socket (SCM_RIGHTS); the next ``getfd`` names it."""
        if self._qmp is None:
            raise VMError("QMP client is not connected")
        try:
            self._qmp.send_fd_scm(fd)
        except (_LibQMPError, OSError) as exc:
            raise VMError(f"QMP fd passing failed: {exc}") from exc

    def send_fd(self, name: str, fd: int) -> None:
        """Hand QEMU an open file descriptor (SCM_RIGHTS + getfd) for a ``fd:NAME`` URI.

        Migrating through a passed fd instead of ``exec:cat > file`` saves QEMU a fork+exec of a
        shell and cat inside the guest's pause (measured 2-3 ms instead of 7-20 ms here).
        """
        self.pass_fd(fd)
        self.command("getfd", fdname=name)

    def cont(self, timeout: float = 5.0) -> None:
        """``cont`` that waits out the moment after a migration reports "completed" but before
        QEMU has finished cleaning it up ("Migration is not finalized yet")."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.command("cont")
                return
            except QMPError as exc:
                if "not finalized" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.0005)

    def wait_migration(self, timeout: float = 60.0, max_delay: float = 0.02) -> dict[str, Any]:
        """Poll query-migrate until it completes (backing off to ``max_delay`` between polls);
        a failed migration raises."""
        deadline = time.monotonic() + timeout
        delay = 0.0002
        while True:
            info = self.command("query-migrate")
            status = info.get("status")
            if status == "completed":
                return info  # type: ignore[no-any-return]
            if status in ("failed", "cancelled"):
                raise VMError(f"migration {status}: {info.get('error-desc', '')}")
            if time.monotonic() > deadline:
                raise VMError(f"migration did not finish within {timeout}s (status {status})")
            time.sleep(delay)
            delay = min(delay * 2, max_delay)
