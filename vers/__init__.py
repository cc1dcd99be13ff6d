"""vers: git for whole-machine state."""

from vers.repo import Repo

__all__ = ["Repo"]
__version__ = "0.1.0"
