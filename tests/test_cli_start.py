"""The command line's own surface: version, and what starting it costs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import vers
from vers.testing import run_vers


def test_version(tmp_path: Path) -> None:
    for flag in ("--version", "-V"):
        p = run_vers(tmp_path, flag)
        assert (p.returncode, p.stdout) == (0, f"vers {vers.__version__}\n")


def test_import_vers_does_not_load_the_store() -> None:
    code = "import sys, vers; print('vers.repo' in sys.modules, 'lmdb' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    code = "import vers; print(vers.Repo.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "vers.repo"
