"""Bring-your-own root file systems: a tarball imported and booted, a raw ext4 disk without vers'
init booted as is (the initramfs adds the init in the copy-on-write layer, the user's file stays
as it was), and the clear errors for roots vers cannot boot, on the host and at boot."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from vers.errors import BadInput
from vers.images import GuestImages
from vers.images.guest import populate_busybox, static_busybox
from vers.images.guestfs import INITRAMFS_ERROR
from vers.images.rootfs import check_disk, check_tree
from vers.images.tree import resolve_in_root
from vers.repo import Repo
from vers.testing import run_vers

from .conftest import boot, boot_args, gexec, run_fails, vers

MARK = "a root file system of my own"


def busybox_tree(root: Path) -> Path:
    """A root without vers' init: busybox and its applets (like the default guest's) and a mark."""
    populate_busybox(root, static_busybox())
    (root / "etc" / "mine").write_text(MARK + "\n")
    return root


def ext4_of(tree: Path, out: Path, size: int = 64 << 20) -> Path:
    with open(out, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(out)], check=True)
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fake_elf(machine: int) -> bytes:
    """The start of a 64-bit little-endian ELF executable for ``machine``."""
    return b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HH", 2, machine) + bytes(44)


def test_resolve_in_root_follows_links_inside_the_root(tmp_path: Path) -> None:
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "usr" / "bin" / "dash").write_text("x")
    (tmp_path / "bin").symlink_to("usr/bin")
    (tmp_path / "usr" / "bin" / "sh").symlink_to("/bin/dash")  # absolute: inside the root
    assert resolve_in_root(tmp_path, "/bin/sh") == tmp_path / "usr" / "bin" / "dash"
    (tmp_path / "loop").symlink_to("loop")
    assert resolve_in_root(tmp_path, "/loop") is None
    assert resolve_in_root(tmp_path, "/bin/nothing") is None


def test_host_checks_refuse_what_cannot_boot(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "etc").mkdir(parents=True)
    with pytest.raises(BadInput, match="has no /bin/sh"):
        check_tree(empty, "empty")
    arm = tmp_path / "arm"
    (arm / "bin").mkdir(parents=True)
    (arm / "bin" / "sh").write_bytes(fake_elf(183))
    with pytest.raises(BadInput, match="aarch64 program; vers guests are x86_64"):
        check_tree(arm, "arm")
    check_tree(busybox_tree(tmp_path / "ok"), "ok")
    zeros = tmp_path / "zeros.img"
    zeros.write_bytes(bytes(1 << 20))
    with pytest.raises(BadInput, match="not an ext4 file system"):
        check_disk(zeros)
    check_disk(ext4_of(tmp_path / "ok", tmp_path / "ok.img"))


def test_import_of_what_is_no_tar_archive_is_one_line(tmp_path: Path) -> None:
    repo = Repo.init(tmp_path / "repo")
    bad = tmp_path / "bad.tar"
    bad.write_text("not a tar archive\n")
    p = run_vers(repo.root, "image", "import", str(bad), "mine", timeout=60)
    assert p.returncode == BadInput.exit_code
    assert p.stderr.count("\n") == 1 and "neither a directory nor a tar archive" in p.stderr, \
        p.stderr
    assert "Traceback" not in p.stderr
    repo.close()


@pytest.mark.vm
def test_imported_tarball_boots_and_the_source_is_untouched(
        imgrepo: Repo, default_image: GuestImages, tmp_path: Path) -> None:
    tree = busybox_tree(tmp_path / "tree")
    tarball = tmp_path / "rootfs.tar"
    with tarfile.open(tarball, "w") as tar:  # like `docker export`: a plain tar of the root
        tar.add(tree, arcname=".")
    before = sha256(tarball)
    disk = Path(vers(imgrepo.root, "image", "import", str(tarball), "mybox").strip())
    assert sha256(tarball) == before and not (tree / "sbin" / "vers-init").exists()
    rows = json.loads(vers(imgrepo.root, "images", "--format", "json"))
    mine = [r for r in rows if r["name"] == "mybox"]
    assert mine and mine[0]["kind"] == "imported" and mine[0]["path"] == str(disk.parent)
    try:
        vm = boot(imgrepo, "mybox", memory="256M")
        assert gexec(imgrepo, vm, "cat /etc/mine; ls /sbin/busybox-vers").split("\n")[0] == MARK
        vers(imgrepo.root, "kill", vm)
    finally:
        shutil.rmtree(disk.parent)  # the image lives in the user's cache like any other


@pytest.mark.vm
def test_raw_disk_without_vers_init_boots_and_stays_unchanged(
        imgrepo: Repo, default_image: GuestImages, tmp_path: Path) -> None:
    disk = ext4_of(busybox_tree(tmp_path / "tree"), tmp_path / "mine.img")
    before = sha256(disk)
    vm = boot(imgrepo, "default", disk=disk, memory="256M")
    assert gexec(imgrepo, vm, "cat /etc/mine").strip() == MARK
    console = vers(imgrepo.root, "console", vm)
    assert "added vers' init and agent" in console
    vers(imgrepo.root, "kill", vm)
    assert sha256(disk) == before, "vers wrote into the user's disk"


@pytest.mark.vm
def test_unbootable_roots_fail_with_the_initramfs_reason(
        imgrepo: Repo, default_image: GuestImages, tmp_path: Path) -> None:
    zeros = tmp_path / "zeros.img"
    zeros.write_bytes(bytes(16 << 20))
    p = run_fails(imgrepo, *boot_args("default", disk=zeros, memory="256M"))
    assert p.returncode == BadInput.exit_code, p.stderr  # refused before anything starts
    refused = (f"vers: error: {zeros} is not an ext4 file system: vers boots ext4 root disks "
               "(for a directory or a tarball use `vers image import`)")
    assert [line for line in p.stderr.splitlines() if "error" in line] == [refused], p.stderr
    # what the host cannot look into (a qcow2 disk) the initramfs refuses at boot, saying why
    empty = tmp_path / "empty.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(empty), "16M"], check=True)
    p = run_fails(imgrepo, *boot_args("default", disk=empty, memory="256M"))
    first = p.stderr.splitlines()[1]  # after "booting VM..."
    assert first.startswith(f"vers: error: {INITRAMFS_ERROR} cannot mount /dev/vda as ext4"), \
        p.stderr
    (tmp_path / "nosh" / "etc").mkdir(parents=True)
    nosh = ext4_of(tmp_path / "nosh", tmp_path / "nosh.img")
    p = run_fails(imgrepo, *boot_args("default", disk=nosh, memory="256M"))
    assert f"{INITRAMFS_ERROR} the root file system has no /bin/sh" in p.stderr.splitlines()[1]
    assert run_vers(imgrepo.root, "ps", "-q").stdout.strip() == "", "a failed boot left a VM"
    p = run_fails(imgrepo, "image", "import", str(tmp_path / "nosh"), "broken")
    assert "has no /bin/sh" in p.stderr
