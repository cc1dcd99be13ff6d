"""An MCP server over one repository: run, exec, cp, commit, branch, restore, record,
stop_recording, kill, ps, log and diff as tools (docs/sdk.md). Every tool answers JSON (the shapes
of ``--format json``, docs/cli.md); a vers error becomes a tool error whose text starts with its
exit code's name, so an agent can tell bad input from a failed VM from a timeout.

Tools call the SDK (``vers.sdk``), the same functions the command line calls. VMs outlive the
server: they are the repository's, and ``ps``/``kill`` see them whoever started them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from vers import __version__
from vers.errors import VersError
from vers.porcelain import vm as verbs
from vers.porcelain.log import commit_json, log_commits
from vers.sdk import Repo

INSTRUCTIONS = """vers is git for whole machines. `run` boots a VM and returns its id; `exec`
runs a shell command in it; `commit` stores the whole machine (memory, disks, device state) as
a commit; `branch` forks a running VM into children that continue from the same instant;
`restore` boots a commit again. Give each child its own branch (`branch` with refs, or `commit`
with branch) so their commits stay siblings. `kill` the VMs you no longer need."""


def build_server(repo: Repo) -> MCPServer:
    """The server with its tools, bound to ``repo``."""
    server = MCPServer("vers", version=__version__, instructions=INSTRUCTIONS)

    @server.tool()
    def run(image: str = "default", memory: str = "256M", name: str | None = None,
            disk_size: str | None = None) -> dict[str, Any]:
        """Boot a VM from a guest image (default, debian, postgres or an imported one)."""
        return _call(lambda: repo.run(image, memory=memory, name=name,
                                      disk_size=disk_size).info())

    @server.tool(name="exec")
    def exec_(vm: str, command: str, timeout: float = 300.0,
             stdin: str | None = None) -> dict[str, Any]:
        """Run a shell command in the VM; returns returncode, stdout and stderr."""
        return _call(lambda: verbs.exec_json(repo.vm(vm).exec(command, stdin=stdin,
                                                              timeout=timeout)))

    @server.tool()
    def cp(vm: str, source: str, dest: str,
           direction: Literal["in", "out"] = "in") -> dict[str, Any]:
        """Copy a file or directory into the VM (``in``: host SOURCE into guest directory DEST)
        or out of it (``out``: guest SOURCE into host directory DEST)."""
        def go() -> dict[str, Any]:
            handle = repo.vm(vm)
            if direction == "in":
                handle.copy_in(source, dest)
            else:
                handle.copy_out(source, dest)
            return {"vm": handle.id, "source": source, "dest": dest, "direction": direction}
        return _call(go)

    @server.tool()
    def commit(vm: str, message: str = "", branch: str | None = None,
               merge: bool = False, sync: bool = True) -> dict[str, Any]:
        """Commit the VM's whole state onto BRANCH (made at the VM's base commit if new), else
        the VM's own branch, else HEAD; returns the commit (id, parents, ...). sync=false:
        crash-consistent disks (the guest's file systems are not flushed and frozen)."""
        return _call(lambda: commit_json(repo.vm(vm).commit(message, branch, merge,
                                                            sync=sync)))

    @server.tool()
    def branch(vm: str, count: int = 1, refs: str | None = None) -> list[dict[str, Any]]:
        """Fork a running VM into COUNT children; with REFS each child i commits onto branch
        REFS-i."""
        return _call(lambda: [c.info() for c in repo.vm(vm).branch(count, refs=refs)])

    @server.tool()
    def restore(rev: str, name: str | None = None) -> dict[str, Any]:
        """Boot a new VM from a commit (an id, a branch, HEAD~1 ...)."""
        return _call(lambda: repo.restore(rev, name=name).info())

    @server.tool()
    def record(vm: str, every: str = "10s", keep_last: int = 0,
               keep_within: str | None = None, branch: str | None = None) -> dict[str, Any]:
        """Commit the VM every EVERY ("1s", "30s", "5m") in the background until stop_recording
        or kill, keeping the KEEP_LAST newest recorded commits and/or every one newer than
        KEEP_WITHIN ("1h"); find them later with log's since/until or restore "main@{10 minutes
        ago}". Returns the recording's status."""
        keep: dict[str, float | str] = {"last": keep_last} if keep_last else {}
        if keep_within:
            keep["within"] = keep_within
        return _call(lambda: repo.vm(vm).record(every, keep, branch=branch))

    @server.tool()
    def stop_recording(vm: str) -> dict[str, Any]:
        """Stop the VM's recording; returns its figures (commits, failures, missed ticks)."""
        return _call(lambda: repo.vm(vm).stop_recording())

    @server.tool()
    def kill(vms: list[str]) -> dict[str, Any]:
        """Stop VMs and delete their state."""
        return _call(lambda: {"killed": verbs.kill(repo, vms)})

    @server.tool()
    def ps() -> list[dict[str, Any]]:
        """This repository's VMs."""
        return _call(lambda: [dict(s.__dict__) for s in verbs.ps(repo)])

    @server.tool()
    def log(rev: str = "HEAD", max_count: int = 20, since: str | None = None,
            until: str | None = None) -> list[dict[str, Any]]:
        """History from REV, newest first; SINCE/UNTIL keep the commits made at or after / at
        or before a time ('10 minutes ago', '2026-12-01 10:32:05', as `vers log --since`)."""
        return _call(lambda: [commit_json(c) for c in log_commits(repo, rev, max_count,
                                                                   since=since, until=until)])

    @server.tool()
    def diff(a: str, b: str = "HEAD") -> dict[str, Any]:
        """Changed memory pages and disk blocks between commits A and B."""
        return _call(lambda: repo.diff(a, b).to_json())

    return server


def _call(fn: Callable[[], Any]) -> Any:
    """Run a tool's body; a vers error becomes a tool error the agent reads."""
    try:
        return fn()
    except VersError as exc:
        raise ToolError(f"{type(exc).__name__} (exit {exc.exit_code}): {exc}") from exc


def serve(repo: Repo, transport: Literal["stdio", "http"] = "stdio", host: str = "127.0.0.1",
          port: int = 8765) -> None:
    """Serve until the client goes away (stdio) or the process is stopped (HTTP)."""
    server = build_server(repo)
    if transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host=host, port=port)
