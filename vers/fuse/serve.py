"""What every vers FUSE daemon shares: mount and serve until told to stop, report readiness.

Two daemons use it: the inspection mount (``python -m vers.fuse.daemon``) and the VM memory
backing daemon (``python -m vers.vmm.memory.daemon``). Each is started by ``mount.spawn_daemon``
with ``--ready-fd N``, mounts, writes ``ready`` (or ``error: ...``) on that fd, and serves until
unmounted or sent SIGTERM/SIGINT, then unmounts itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import pyfuse3
import trio

log = logging.getLogger("vers.fuse.serve")

BASE_OPTIONS = ("fsname=vers", "default_permissions")


def serve(
    ops: pyfuse3.Operations,
    mountpoint: str,
    options: tuple[str, ...] = (),
    on_ready: Callable[[], None] | None = None,
    extra_task: Callable[[trio.Nursery], Any] | None = None,
    read_ahead_kb: int = 0,
) -> None:
    """Mount ``ops`` at ``mountpoint`` and serve until unmounted or signalled."""
    pyfuse3.init(ops, mountpoint, set(BASE_OPTIONS) | set(options))
    unmount = True
    try:
        if on_ready and not read_ahead_kb:
            on_ready()

        async def run() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal, nursery)
                if read_ahead_kb:
                    nursery.start_soon(_raise_read_ahead, mountpoint, read_ahead_kb, on_ready)
                if extra_task is not None:
                    extra_task(nursery)
                await pyfuse3.main()
                nursery.cancel_scope.cancel()

        trio.run(run)
    except BaseException:
        log.exception("daemon failed")
        raise
    finally:
        pyfuse3.close(unmount=unmount)


async def _raise_read_ahead(
    mountpoint: str, kb: int, on_ready: Callable[[], None] | None
) -> None:
    # The kernel sets the mount's readahead from our reply to FUSE INIT (capped at its own 128 KiB
    # default), which pyfuse3.main sends once it runs: so set it after that, and once more later.
    # A file takes the readahead size in force when it is opened, so "ready" waits for the first.
    for delay in (0.05, 0.5):
        await trio.sleep(delay)
        set_read_ahead(mountpoint, kb)
        if on_ready:
            on_ready()
            on_ready = None


def set_read_ahead(mountpoint: str, kb: int) -> None:
    """Raise the mount's readahead so sequential reads arrive as 1 MiB FUSE requests, not 128 KiB.

    The kernel sizes readahead requests by the backing device's ``read_ahead_kb`` (128 by default
    for FUSE); with 1024, ``dd bs=1M`` of a mounted image reached the daemon as 1 MiB reads (8x
    fewer round trips through Python); with 4096 several 1 MiB requests are in flight, so the
    daemon is not idle while the reader copies (docs/fuse.md has the numbers). Best effort: needs
    root, and changes nothing else.
    """
    # The device number comes from mountinfo: a stat() of our own mount point here would wait for
    # this very daemon, which does not serve requests yet.
    try:
        dev = mount_device(mountpoint)
        if dev is None:
            return
        with open(f"/sys/class/bdi/{dev}/read_ahead_kb", "w") as f:
            f.write(str(kb))
    except OSError as exc:
        log.debug("cannot set read_ahead_kb on %s: %s", mountpoint, exc)


def mount_device(mountpoint: str) -> str | None:
    """'major:minor' of the file system mounted at ``mountpoint`` (the last one mounted there)."""
    target = os.path.abspath(mountpoint)  # not realpath: its lstat() would reach this daemon too
    found = None
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split(" ")
            if fields[4].replace("\\040", " ") == target:
                found = fields[2]
    return found


async def _stop_on_signal(nursery: trio.Nursery) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for _ in signals:
            pyfuse3.terminate()
            return


class _Reporter:
    """Writes one status line to the waiting parent, exactly once (the fd number may be reused)."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def __call__(self, message: str) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            os.write(fd, (message + "\n").encode())
            os.close(fd)
        except OSError:
            pass


def daemon_main(
    prog: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace, Callable[[], None]], None],
    argv: list[str] | None = None,
) -> int:
    """A daemon's ``main``: parse ``--ready-fd``/``--debug`` and the daemon's own arguments, set
    up logging, call ``run(args, on_ready)``; a failure is reported on the ready fd (so the
    waiting ``vers`` command shows the reason) and exits non-zero."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--ready-fd", type=int, default=None)
    parser.add_argument("--debug", action="store_true")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    report = _Reporter(args.ready_fd)
    try:
        run(args, lambda: report("ready"))
    except Exception as exc:  # report the reason to the waiting vers command, then exit non-zero
        report(f"error: {exc}")
        log.exception("daemon failed")
        return 1
    return 0
