"""``vers mcp serve`` over stdio, driven by the MCP SDK's own client: list the tools, run a VM,
exec in it, branch it, commit, restore, kill; vers errors come back as tool errors."""

from __future__ import annotations

import json
import os
from typing import Any

import anyio
import pytest

import vers

mcp_client = pytest.importorskip("mcp.client.stdio")
from mcp.client.session import ClientSession

pytestmark = pytest.mark.vm

TOOLS = {"run", "exec", "cp", "commit", "branch", "restore", "record", "stop_recording", "kill",
         "ps", "log", "diff"}


def _result(res: Any) -> Any:
    assert not res.is_error, res.content
    if res.structured_content is not None:
        value = res.structured_content
        return value["result"] if isinstance(value, dict) and set(value) == {"result"} else value
    return json.loads(res.content[0].text)


async def _session_flow(repo: vers.Repo) -> None:
    params = mcp_client.StdioServerParameters(
        command="vers", args=["-C", str(repo.root), "mcp", "serve"],
        env={**os.environ}, cwd=str(repo.root))
    async with mcp_client.stdio_client(params) as (read, write), \
            ClientSession(read, write) as session:
        await session.initialize()
        names = {t.name for t in (await session.list_tools()).tools}
        assert TOOLS <= names
        vm = _result(await session.call_tool("run", {"memory": "256M", "name": "mcp-vm"}))
        vid = vm["id"]
        out = _result(await session.call_tool(
            "exec", {"vm": vid, "command": "echo hi > /root/x; cat /root/x"}))
        assert (out["returncode"], out["stdout"]) == (0, "hi\n")
        kids = _result(await session.call_tool("branch", {"vm": vid, "count": 2, "refs": "try"}))
        assert [k["branch"] for k in kids] == ["try-0", "try-1"]
        c = _result(await session.call_tool("commit", {"vm": kids[1]["id"], "message": "kid 1"}))
        assert len(c["id"]) == 64 and repo.refs.resolve("refs/heads/try-1") == c["id"]
        restored = _result(await session.call_tool("restore", {"rev": "try-1"}))
        out = _result(await session.call_tool(
            "exec", {"vm": restored["id"], "command": "cat /root/x"}))
        assert out["stdout"] == "hi\n"
        log = _result(await session.call_tool("log", {"rev": "try-1"}))
        assert log[0]["id"] == c["id"]
        rec = _result(await session.call_tool(
            "record", {"vm": restored["id"], "every": "1s", "keep_last": 2,
                       "branch": "rec"}))
        assert rec["recording"] and rec["branch"] == "rec"
        for _ in range(120):  # two recorded commits (the branch is made by the first)
            log = await session.call_tool("log", {"rev": "rec"})
            if not log.is_error and len(_result(log)) >= 3:
                break
            await anyio.sleep(1)
        done = _result(await session.call_tool("stop_recording", {"vm": restored["id"]}))
        assert done["commits"] >= 2, done
        again = await session.call_tool("stop_recording", {"vm": restored["id"]})
        assert again.is_error and "BadInput" in again.content[0].text
        bad = await session.call_tool("exec", {"vm": "no-such-vm", "command": "true"})
        assert bad.is_error and "UnknownVM" in bad.content[0].text
        ids = [vid, restored["id"], *(k["id"] for k in kids)]
        killed = _result(await session.call_tool("kill", {"vms": ids}))
        assert sorted(killed["killed"]) == sorted(ids)
        assert _result(await session.call_tool("ps", {})) == []


def test_mcp_server_over_stdio(repo: vers.Repo) -> None:
    anyio.run(_session_flow, repo)
