"""vers CLI commands that move things in and out of VMs: exec (streaming), cp, connect/shell."""

from __future__ import annotations

import os
import select
import signal
import sys
import termios
import threading
import time
import tty
from typing import TYPE_CHECKING

import click

from vers.cli import completion as comp
from vers.cli._group import cli, emit_json, info, open_repo
from vers.errors import BadInput, GuestTimeout, VMError
from vers.porcelain import transfer
from vers.porcelain.transfer import Channel

if TYPE_CHECKING:
    from vers.repo import Repo


def _parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise BadInput(f"-e wants KEY=VALUE, not {p!r}")
        env[key] = value
    return env


def exec_command(repo: Repo, vm: str | None, command: list[str], *, workdir: str | None = None,
                 env: dict[str, str] | None = None, timeout: float = 300.0) -> int:
    """Run ``command`` in the guest with its output streamed as it is produced; stdin is
    forwarded unless it is a terminal. Returns the command's exit code (128+N for signal N).
    A first Ctrl-C is passed on to the command as SIGINT, a second one gives up on it."""
    if not command:
        raise BadInput("nothing to run: give a command after --")
    forward = not os.isatty(0)
    argv = ["/bin/sh", "-c", command[0]] if len(command) == 1 else command
    deadline = time.monotonic() + timeout
    interrupted = False
    try:
        ch = transfer.open_command(repo, vm, argv, env=env, cwd=workdir, stdin=forward)
    except transfer.LegacyAgent:
        return _legacy_exec(repo, vm, command, workdir, env, timeout)
    with ch:
        if forward:
            threading.Thread(target=_pump_stdin, args=(ch,), daemon=True).start()
        while True:
            try:
                ev = ch.next_event(timeout=max(0.0, deadline - time.monotonic()))
            except KeyboardInterrupt:
                if interrupted:
                    raise
                interrupted = True
                ch.signal(signal.SIGINT)
                continue
            if ev is None:
                ch.signal(signal.SIGKILL)
                raise GuestTimeout(f"the command did not finish within {timeout:g}s (killed)")
            if ev.kind == "exit":
                return ev.code
            os.write(1 if ev.kind == "stdout" else 2, ev.data)


def _legacy_exec(repo: Repo, vm: str | None, command: list[str], workdir: str | None,
                 env: dict[str, str] | None, timeout: float) -> int:
    """A guest restored from a commit of an earlier vers runs the old shell agent: the command
    runs, without stdin, and its output arrives when it ends."""
    if workdir or env:
        raise VMError(f"VM {vm or '(current)'} runs the agent of an earlier vers (restored from "
                      "an old commit): it takes no -w or -e")
    res = transfer.legacy_exec(repo, vm, command, timeout)
    os.write(1, res.stdout)
    os.write(2, res.stderr)
    return res.returncode


def _pump_stdin(ch: Channel) -> None:
    try:
        while True:
            data = os.read(0, transfer.STDIN_CHUNK)
            if not data:
                break
            ch.write(data)
        ch.close_stdin()
    except (OSError, VMError):
        pass  # the command ended, or the channel reports the loss to its reader


class _DashDash(click.Command):
    """Keeps what follows ``--`` out of click's hands: it is the guest command, verbatim."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            i = args.index("--")
            ctx.meta["vers.command"] = args[i + 1:]
            args = args[:i]
        return super().parse_args(ctx, args)


@cli.command(name="exec", cls=_DashDash, context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("-w", "--workdir", default=None, help="Directory to run in (default /root).")
@click.option("-e", "--env", "env", multiple=True, metavar="KEY=VAL",
              help="Set an environment variable (repeatable).")
@click.option("--timeout", default=300.0, show_default=True, type=float,
              help="Kill the command after this many seconds and exit 124.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              help="json: {returncode, stdout, stderr, ...} on stdout once the command ended; "
                   "exits 0 whatever the command's exit code.")
def exec_(args: tuple[str, ...], workdir: str | None, env: tuple[str, ...],
          timeout: float, fmt: str) -> None:
    """Run a command in a VM: vers exec [VM] -- CMD... (VM: the current one).

    Output is streamed, stdin is forwarded when it is not a terminal, and vers exits with the
    command's exit code. One argument is a shell script; several are an argv."""
    ctx = click.get_current_context()
    command = ctx.meta.get("vers.command")
    vm: str | None
    if command is None:  # no "--": the first word is the VM
        if not args:
            raise BadInput("usage: vers exec [VM] -- CMD...")
        vm, command = args[0], list(args[1:])
    elif len(args) > 1:
        raise BadInput(f"one VM before --, not {len(args)}: {' '.join(args)}")
    else:
        vm = args[0] if args else None
    if fmt == "json":
        if workdir or env:
            raise BadInput("--format json takes no -w or -e")
        emit_json(transfer.exec_json(transfer.exec_script(open_repo(), vm, command, timeout)))
        return
    sys.exit(exec_command(open_repo(), vm, command, workdir=workdir, env=_parse_env(env),
                          timeout=timeout))


@cli.command()
@click.argument("src")
@click.argument("dst")
@click.option("-r", "--recursive", is_flag=True, help="Copy directories too.")
@click.option("-v", "--verbose", is_flag=True, help="Print bytes, speed and store reads.")
def cp(src: str, dst: str, recursive: bool, verbose: bool) -> None:
    """Copy files between the host and a VM, or out of a commit.

    SRC and DST are local paths, VM:PATH, or - (a tar stream on stdin or stdout); SRC can also
    be COMMIT:PATH (any revision), read from the commit's disk without booting it. Modes and
    modification times are kept; nothing partial is ever left under the target name."""
    stats = transfer.copy(open_repo(), src, dst, recursive)
    if verbose:
        rate = stats.bytes / stats.seconds / 1e6 if stats.seconds else 0.0
        line = f"copied {stats.bytes} bytes in {stats.seconds:.2f} s ({rate:.1f} MB/s)"
        if stats.store_bytes_read:
            line += f"; read {stats.store_bytes_read} bytes from the store"
        info(line)


def connect_session(repo: Repo, vm: str | None) -> int:
    """An interactive login shell in the guest on a real pty: the local terminal goes raw, so
    line editing, Ctrl-C and job control happen in the guest; the window size follows. Returns
    the shell's exit code."""
    if not os.isatty(0) or not os.isatty(1):
        raise BadInput("vers connect needs a terminal; use `vers exec` for scripts")
    cols, rows = os.get_terminal_size(1)
    shell = "command -v bash >/dev/null 2>&1 && exec bash -il; exec sh -il"
    env = {"TERM": os.environ.get("TERM", "xterm")}
    saved = termios.tcgetattr(0)
    with transfer.open_command(repo, vm, ["/bin/sh", "-c", shell], env=env, pty=True,
                               rows=rows, cols=cols) as ch:
        old_winch = signal.signal(signal.SIGWINCH, lambda *_: _resize(ch))
        result: list[int] = []
        failure: list[BaseException] = []
        reader = threading.Thread(target=_pump_output, args=(ch, result, failure), daemon=True)
        try:
            tty.setraw(0)
            reader.start()
            while reader.is_alive():
                ready, _, _ = select.select([0], [], [], 0.1)
                if ready:
                    data = os.read(0, 4096)
                    if not data:
                        ch.close_stdin()
                        break
                    ch.write(data)
            reader.join()
        finally:
            termios.tcsetattr(0, termios.TCSAFLUSH, saved)
            signal.signal(signal.SIGWINCH, old_winch)
    if failure:
        raise failure[0]
    return result[0] if result else 0


def _resize(ch: Channel) -> None:
    cols, rows = os.get_terminal_size(1)
    try:
        ch.resize(rows, cols)
    except VMError:
        pass


def _pump_output(ch: Channel, result: list[int], failure: list[BaseException]) -> None:
    try:
        while True:
            ev = ch.next_event()
            assert ev is not None
            if ev.kind == "exit":
                result.append(ev.code)
                return
            os.write(1, ev.data)
    except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
        failure.append(exc)


def _connect(vm: str | None) -> None:
    sys.exit(connect_session(open_repo(), vm))


@cli.command()
@click.argument("vm", required=False, shell_complete=comp.vms)
def connect(vm: str | None) -> None:
    """An interactive shell in the VM (the current one by default), on a real terminal."""
    _connect(vm)


@cli.command()
@click.argument("vm", required=False, shell_complete=comp.vms)
def shell(vm: str | None) -> None:
    """Same as `vers connect`."""
    _connect(vm)
