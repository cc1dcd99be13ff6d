"""vers: git for whole-machine state.

``vers.Repo`` is the Python API; it is imported on first use, so that ``import vers`` (and the
command line's start-up) does not load the store for commands that never open one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vers.repo import Repo

__all__ = ["Repo", "__version__"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "Repo":
        from vers.repo import Repo

        return Repo
    raise AttributeError(f"module 'vers' has no attribute {name!r}")
