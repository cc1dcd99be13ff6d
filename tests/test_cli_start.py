"""The command line's own surface: version, and what starting it costs (what each command
imports; the time it takes is measured by bench/cli.py)."""

from __future__ import annotations

import os
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


#: Python code that imports every command module of vers.cli
LOAD_EVERY_COMMAND = """
import importlib, pkgutil, vers.cli
for _mod in pkgutil.iter_modules(vers.cli.__path__):
    if not _mod.name.startswith("_"):
        importlib.import_module("vers.cli." + _mod.name)
"""


def test_command_table_names_every_command_once() -> None:
    """COMMANDS must list each command of every vers.cli module, in its own module, with the
    short help click makes of its docstring at any width."""
    from vers.cli._group import COMMAND_MODULES, COMMANDS, _shorten, cli

    exec(LOAD_EVERY_COMMAND, {})  # noqa: S102 - fixed code above
    defined = {name: cmd.callback.__module__.rsplit(".", 1)[1]
               for name, cmd in cli.commands.items() if not cmd.hidden and cmd.callback}
    assert defined == COMMAND_MODULES
    for name, (_module, short_help) in COMMANDS.items():
        for limit in range(10, 200):
            assert _shorten(short_help, limit) == cli.commands[name].get_short_help_str(limit), (
                name, limit)


#: The code run by ``_after``: ``vers ARGS`` in a fresh interpreter, then a NUL and the names of
#: the modules it imported (beyond those the interpreter starts with).
_RUN = """
import sys
_before = set(sys.modules)
{preload}
from vers.cli import cli
try:
    cli({args!r}, prog_name="vers")
except SystemExit:
    pass
sys.stdout.flush()
print("\\0" + " ".join(sorted(set(sys.modules) - _before)))
"""


def _after(cwd: Path, args: list[str], preload: str = "") -> tuple[set[str], str]:
    """The modules ``vers ARGS`` imports, and what it prints on stdout."""
    code = _RUN.format(preload=preload, args=args)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd,
                         check=False)
    printed, sep, modules = out.stdout.rpartition("\0")
    assert sep, out.stdout + out.stderr
    return set(modules.split()), printed


#: What `vers log` needs of vers: its command module, the store's read path, refs and rev-parse.
LOG_MODULES = {
    "vers", "vers.cli", "vers.cli._group", "vers.cli.completion", "vers.cli.core", "vers.errors",
    "vers.files", "vers.history", "vers.history.graph", "vers.history.timeindex",
    "vers.lazynames", "vers.objects", "vers.objects.lmdbenv", "vers.objects.lmdbstore",
    "vers.objects.model", "vers.objects.store", "vers.porcelain", "vers.porcelain.log",
    "vers.refs", "vers.refs.container", "vers.refs.revparse", "vers.refs.timespec", "vers.repo",
}

#: What `vers log` never uses: compression, thread pools, processes, sockets, exact decimals,
#: progress meters, QEMU's monitor, FUSE, agents (MCP), S3.
NOT_FOR_LOG = {
    "zstandard", "concurrent", "subprocess", "asyncio", "socket", "logging", "decimal", "getpass",
    "tqdm", "qemu", "pyfuse3", "trio", "mcp", "boto3", "botocore",
}


def test_log_imports_only_what_it_uses(tmp_path: Path) -> None:
    """`vers log -n 1` of a repository with a commit loads the store's read path and nothing the
    command never uses: not the image trees, the VM driver, remotes, FUSE or the SDK."""
    assert run_vers(tmp_path, "init").returncode == 0
    (tmp_path / "mem").write_bytes(b"\1" * 8192)
    assert run_vers(tmp_path, "snapshot", "--memory", "mem", "-m", "one").returncode == 0
    loaded, printed = _after(tmp_path, ["log", "-n", "1"])
    assert "    one" in printed.splitlines()  # it did read and show the commit
    assert {m for m in loaded if m == "vers" or m.startswith("vers.")} == LOG_MODULES
    assert not {m for m in loaded if m.split(".")[0] in NOT_FOR_LOG}


def test_log_of_an_empty_repository_loads_neither_the_vm_driver_nor_remotes(
        tmp_path: Path) -> None:
    assert run_vers(tmp_path, "init").returncode == 0
    loaded, _printed = _after(tmp_path, ["log", "-n", "1"])
    assert not {m for m in loaded if m.startswith(("vers.vmm", "vers.remote", "vers.fuse",
                                                   "vers.sdk", "qemu", "boto3"))}


def test_help_lists_every_command_without_loading_them(tmp_path: Path) -> None:
    """`vers --help` lists every command with its short help from the table, loading no command
    module nor the store, and says exactly what it says with every command module loaded."""
    from vers.cli._group import COMMANDS

    loaded, lazy_help = _after(tmp_path, ["--help"])
    assert {m for m in loaded if m == "vers" or m.startswith("vers.")} == {
        "vers", "vers.cli", "vers.cli._group", "vers.errors"}
    _loaded, full_help = _after(tmp_path, ["--help"], LOAD_EVERY_COMMAND)
    assert lazy_help == full_help
    listed = lazy_help.split("Commands:\n", 1)[1]
    assert [line.split()[0] for line in listed.splitlines() if line[2] != " "] == sorted(COMMANDS)


def test_command_names_complete_without_loading_them(tmp_path: Path) -> None:
    """TAB after `vers br` offers the branch commands, each with its short help."""
    env = {**os.environ, "_VERS_COMPLETE": "zsh_complete", "COMP_WORDS": "vers br",
           "COMP_CWORD": "1"}
    code = "import sys\nfrom vers.cli import main\ntry:\n    main()\nfinally:\n" \
           "    print('\\0' + ' '.join(m for m in sys.modules if m.startswith('vers.cli.')))"
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, env=env, check=False)
    offered, _sep, loaded = p.stdout.rpartition("\0")
    assert p.returncode == 0, p.stderr
    assert offered.splitlines() == [
        "plain", "branch", "Fork a live VM (or restore a COMMIT) into...",
        "plain", "branch-create", "Create branch NAME at REV (a ref only;...",
        "plain", "branch-delete", "Delete branch NAME.",
        "plain", "branch-list", "List branches; the current one is marked...",
    ]
    assert loaded.split() == ["vers.cli._group"]
