"""vers: git for whole-machine state.

``vers.Repo`` is the Python API (``vers.sdk``: the repository with its VMs as objects, see
docs/sdk.md); it is imported on first use, so that ``import vers`` (and the command line's
start-up) does not load the store or the VM driver for commands that never open one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vers.sdk import VM, Repo

__all__ = ["VM", "Repo", "__version__"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("Repo", "VM"):
        from vers import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'vers' has no attribute {name!r}")
