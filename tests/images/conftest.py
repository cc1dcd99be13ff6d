"""Fixtures for the guest image tests: each image is built once per run (and cached on disk
across runs, rebuilt only when its recipe changes), and a repository whose VMs all die at the end.

A build that needs the Debian mirror and cannot reach it skips with that reason; it never passes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vmm.conftest import vm_repo
from vers import images
from vers.errors import MirrorUnreachable
from vers.images import GuestImages
from vers.repo import Repo
from vers.testing import run_vers

#: The memory every image test gives its guests (the size the performance goals are set for).
MEMORY = "1G"


def build_or_skip(name: str) -> GuestImages:
    if name != images.DEFAULT:
        if shutil.which("mmdebstrap") is None:
            pytest.skip("mmdebstrap is not installed (scripts/install-deps.sh installs it)")
        if os.geteuid() != 0:
            pytest.skip(f"building the {name} image needs root (mmdebstrap --mode=root)")
    try:
        return images.build(name)
    except MirrorUnreachable as exc:
        pytest.skip(f"the Debian package mirror is unreachable, so the {name} image cannot be "
                    f"built: {str(exc).splitlines()[0]}")


@pytest.fixture(scope="session")
def default_image() -> GuestImages:
    return build_or_skip(images.DEFAULT)


@pytest.fixture(scope="session")
def debian_image() -> GuestImages:
    return build_or_skip("debian")


@pytest.fixture(scope="session")
def postgres_image() -> GuestImages:
    return build_or_skip("postgres")


@pytest.fixture(scope="module")
def imgrepo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repo]:
    """A repository whose VMs use the shm backing; every VM left in it is killed at the end."""
    with vm_repo(tmp_path_factory.mktemp("imgrepo"), "shm") as repo:
        yield repo


def vers(cwd: Path, *args: str, timeout: float = 300) -> str:
    p = run_vers(cwd, *args, timeout=timeout)
    assert p.returncode == 0, f"vers {args} failed ({p.returncode}): {p.stderr}"
    return p.stdout


def boot_args(image: str, disk: Path | None = None, name: str | None = None,
              memory: str = MEMORY, disk_size: int | None = None) -> list[str]:
    """`vers run --image IMAGE` arguments (``disk``: that disk instead of the image's)."""
    args = ["run", "--image", image, "--memory", memory]
    args += ["--disk", str(disk)] if disk else []
    args += ["--disk-size", str(disk_size)] if disk_size else []
    return args + (["--name", name] if name else [])


def boot(repo: Repo, image: str, disk: Path | None = None, name: str | None = None,
         memory: str = MEMORY, disk_size: int | None = None) -> str:
    """Boot ``image`` (or its kernel with ``disk``) through `vers run`; returns the VM ID."""
    return vers(repo.root, *boot_args(image, disk, name, memory, disk_size)).strip()


def gexec(repo: Repo, vm: str, script: str, timeout: float = 120) -> str:
    """Run ``script`` in the guest through `vers exec`; it must succeed."""
    return vers(repo.root, "exec", vm, "--timeout", str(timeout), "--", script,
                timeout=timeout + 30)


def run_fails(repo: Repo, *args: str) -> subprocess.CompletedProcess[str]:
    p = run_vers(repo.root, *args, timeout=300)
    assert p.returncode != 0, f"vers {args} succeeded: {p.stdout}"
    return p
