"""File-consistent commits: the guest agent flushes and freezes the guest's file systems.

A guest's files live partly in its page cache; the disk QEMU captures holds only what the guest
kernel has written back. So before the pause the agent flushes (``sync``), and right before the
stop it freezes every writable block file system (FIFREEZE, in reverse mount order, as
qemu-guest-agent's guest-fsfreeze-freeze does): what the guest wrote since the flush is written
back, the journal is clean, and writers wait. After the guest runs again the agent thaws.

The freeze is held by a process the agent forks (docs/guests.md); it thaws by itself when the host
asks, when this connection ends (the commit finished, failed, or was killed), or after
``FREEZE_TIMEOUT_MS`` of guest time: a guest never stays frozen.
"""

from __future__ import annotations

import sys

from vers.errors import VMError
from vers.vmm import agent as agent_mod
from vers.vmm.agent import FS, FS_MINOR, AgentTooOld, Channel, LegacyAgent

#: how long the agent keeps the file systems frozen if the host does not thaw them (guest time;
#: the guest's clock stands still while it is paused)
FREEZE_TIMEOUT_MS = 5000
#: reaching the agent: it answers within milliseconds when it runs at all
CONNECT_TIMEOUT = 3.0
#: a flush of much dirty data under TCG can take seconds; past this the commit goes on without it
SYNC_TIMEOUT = 30.0


class GuestFileSystems:
    """One commit's conversation with the agent: ``sync``, ``freeze``, ``thaw``, ``close``.
    The connection stays open from the freeze to the thaw: its end thaws the guest."""

    def __init__(self, agent_sock: str) -> None:
        try:
            conn = agent_mod.acquire(agent_sock, CONNECT_TIMEOUT)
        except LegacyAgent as exc:
            raise AgentTooOld("the guest runs the shell agent of an earlier vers") from exc
        if conn.minor < FS_MINOR:
            agent_mod.release(conn)
            raise AgentTooOld(f"the guest agent speaks protocol 1.{conn.minor}, file-consistent "
                              f"commits need 1.{FS_MINOR}")
        self._ch: Channel | None = conn.new_channel()
        self.frozen = 0

    def _request(self, text: str, timeout: float) -> str:
        ch = self._ch
        if ch is None:
            raise VMError("the guest file-system session is closed")
        ch.conn.send(FS, ch.id, text.encode())
        ev = ch.next_event(timeout)
        if ev is None:
            raise VMError(f"the guest agent did not answer {text.split()[0]!r} "
                          f"within {timeout:g}s")
        answer = ev.data.decode(errors="replace")
        if not answer.startswith("ok "):
            raise VMError(f"guest {text.split()[0]} failed: {answer.removeprefix('error ')}")
        return answer[3:]

    def sync(self) -> None:
        """Write the guest's dirty pages back (outside the pause; the guest keeps running)."""
        self._request("sync", SYNC_TIMEOUT)

    def freeze(self) -> int:
        """Freeze the guest's writable block file systems; returns how many."""
        answer = self._request(f"freeze {FREEZE_TIMEOUT_MS}", FREEZE_TIMEOUT_MS / 1000 + 5)
        self.frozen = int(answer.split()[0])
        return self.frozen

    def thaw(self) -> bool:
        """Thaw; False if the agent had already thawed because the freeze outlasted its timeout
        (the commit is then only crash-consistent)."""
        answer = self._request("thaw", 10.0)
        self.frozen = 0
        return answer.split()[1:2] == ["thawed"]

    def close(self) -> None:
        """End the session; frozen file systems thaw as the agent sees the host go."""
        ch, self._ch = self._ch, None
        if ch is not None:
            ch.exited = True  # nothing runs on it: no CLOSE to send
            ch.close()


def open_guest_fs(agent_sock: str, vm_id: str) -> GuestFileSystems | None:
    """The session, or None with one warning line when the guest cannot take part (no agent,
    an agent too old, or one that does not answer): the commit is then crash-consistent."""
    try:
        return GuestFileSystems(agent_sock)
    except VMError as exc:
        warn(vm_id, str(exc))
        return None


def warn(vm_id: str, why: str) -> None:
    print(f"vers: VM {vm_id}: commit is crash-consistent only, not file-consistent ({why})",
          file=sys.stderr)

