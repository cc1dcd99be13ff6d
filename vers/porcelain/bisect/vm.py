"""``vers bisect run --vm``: restore each candidate into a VM and run the predicate inside it.

Each step restores the candidate commit like ``vers run-commit`` (QEMU's snapshot-load path, so
the guest continues from the committed instant, processes and all), runs the command through the
guest agent (the same path as ``vers exec``) with ``VERS_COMMIT`` set,
relays its output to stderr, and kills the VM whatever happens: one VM at a time, never left
behind. The command's exit code is the verdict, with git's meaning.
"""

from __future__ import annotations

import shlex
import sys

from vers.errors import BisectError, VersError
from vers.porcelain import bisect as bs
from vers.porcelain import vm
from vers.repo import Repo

VM_EXEC_TIMEOUT = 600.0


class VMExecutor:
    """Restores a commit, runs the command through the guest agent, tears the VM down."""

    def __init__(self, repo: Repo, cmd: list[str], say: bs.Say,
                 timeout: float = VM_EXEC_TIMEOUT) -> None:
        self.repo = repo
        self.cmd = list(cmd)
        self.say = say
        self.timeout = timeout

    def script(self, cid: str) -> str:
        body = self.cmd[0] if len(self.cmd) == 1 else " ".join(shlex.quote(a) for a in self.cmd)
        return f"VERS_COMMIT={cid}; export VERS_COMMIT\n{body}"

    def run(self, argv: list[str], cid: str, directory: str | None) -> int:
        try:
            rec = vm.run_commit(self.repo, cid)
        except VersError as exc:
            raise BisectError(f"bisect run --vm: cannot restore {cid[:12]}: {exc}") from exc
        try:
            self.say(f"restored {cid[:12]} into VM {rec.id}")
            res = vm.exec_in(self.repo, rec.id, [self.script(cid)], timeout=self.timeout)
            for data in (res.stdout, res.stderr):
                if data:
                    sys.stderr.buffer.write(data)
            sys.stderr.flush()
            return int(res.returncode)
        except VersError as exc:
            raise BisectError(f"bisect run --vm: running the command in {cid[:12]} failed: "
                              f"{exc}") from exc
        finally:
            try:
                vm.kill(self.repo, [rec.id])
            except VersError as exc:
                self.say(f"warning: could not remove VM {rec.id}: {exc}")
