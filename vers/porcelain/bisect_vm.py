"""``vers bisect run --vm``: restore each candidate into a VM and run the predicate inside it."""

from __future__ import annotations

from typing import Any

from vers.errors import BisectError
from vers.porcelain import bisect as bs


class VMExecutor:
    """Restores a commit, runs the command through the guest agent, tears the VM down."""

    def __init__(self, repo: Any, say: bs.Say) -> None:
        raise BisectError("bisect run --vm is not available yet: the VMM restore/exec API has "
                          "not landed; use the default mount mode")

    def run(self, argv: list[str], cid: str, directory: str | None) -> int:
        raise NotImplementedError
