"""vers CLI: ``vers mcp serve``, the Model Context Protocol server (vers.mcp.server)."""

from __future__ import annotations

import os

import click

from vers.cli._group import cli, info
from vers.errors import BadInput
from vers.sdk import Repo


@cli.group()
def mcp() -> None:
    """Serve this repository's VMs to agents over the Model Context Protocol."""


@mcp.command()
@click.option("--http", "http", is_flag=True,
              help="Streamable HTTP on --host/--port instead of stdio.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
def serve(http: bool, host: str, port: int) -> None:
    """Serve the tools run, exec, cp, commit, branch, restore, kill, ps, log and diff."""
    try:
        from vers.mcp.server import serve as serve_mcp
    except ModuleNotFoundError as exc:
        raise BadInput(f"the MCP server needs the mcp package: pip install 'vers[mcp]' ({exc})")
    obj = click.get_current_context().find_root().obj or {}
    path = obj.get("repo_path")
    repo = Repo.discover(os.getcwd()) if path is None else Repo(path)
    if http:
        info(f"vers MCP server on http://{host}:{port}/mcp")
    try:
        serve_mcp(repo, "http" if http else "stdio", host, port)
    finally:
        repo.close()
