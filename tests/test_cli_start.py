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
    assert out.stdout.strip() == "vers.sdk"


def test_command_table_names_every_command_once() -> None:
    """COMMAND_MODULES must list each command of every vers.cli module, in its own module."""
    import importlib
    import pkgutil

    import vers.cli
    from vers.cli._group import COMMAND_MODULES, cli

    for mod in pkgutil.iter_modules(vers.cli.__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"vers.cli.{mod.name}")
    defined = {name: cmd.callback.__module__.rsplit(".", 1)[1]
               for name, cmd in cli.commands.items() if not cmd.hidden and cmd.callback}
    assert defined == COMMAND_MODULES


def test_log_loads_neither_the_vm_driver_nor_remotes(tmp_path: Path) -> None:
    assert run_vers(tmp_path, "init").returncode == 0
    code = ("import sys\nfrom vers.cli import cli\n"
            "try:\n    cli(['log', '-n', '1'], prog_name='vers')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith(('vers.vmm', 'vers.remote', "
            "'vers.fuse', 'qemu', 'boto3'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, check=False)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
