"""Bring-your-own root file systems: checks vers can make on the host, and ``vers image import``.

A root is usable when it is ext4 (for a disk) and has a ``/bin/sh`` that runs on x86_64: the guest
init and agent are shell scripts. What can be checked cheaply is checked here, before anything
boots; the initramfs checks the same at boot for a disk given as is (docs/guests.md).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from vers.errors import BadInput, VMError
from vers.images import builder
from vers.images.guest import run_tool
from vers.images.tree import EM_X86_64, elf_machine, machine_name, resolve_in_root

MiB = 1024 * 1024
#: Free space an imported image gets beyond its content (more with --disk-size).
IMPORT_FREE_SPACE = 256 * MiB
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
QCOW2_MAGIC = b"QFI\xfb"
EXT_MAGIC_OFFSET = 1024 + 0x38  # s_magic in the ext2/3/4 superblock
EXT_MAGIC = b"\x53\xef"


def check_tree(root: Path, what: str) -> None:
    """Refuse a tree without a /bin/sh for x86_64 (``what`` names it in the message)."""
    sh = resolve_in_root(root, "/bin/sh")
    if sh is None or not sh.is_file():
        raise BadInput(f"{what} has no /bin/sh: vers' init and agent need a shell in the root "
                       "file system")
    elf = elf_machine(sh)
    if elf is None:
        return  # a script (#!) or something exec will judge at boot
    cls, machine = elf
    if machine != EM_X86_64 or cls != 2:
        bits = "32-bit " if cls == 1 else ""
        raise BadInput(f"{what}: /bin/sh is a {bits}{machine_name(machine)} program; vers guests "
                       "are x86_64")


def check_disk(path: Path) -> None:
    """Refuse a raw disk that is not ext2/3/4 (the kernel mounts all three as ext4). A qcow2 disk
    is left to the initramfs, which says why at boot if it cannot use it."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(EXT_MAGIC_OFFSET)
            magic = f.read(2)
    except OSError as exc:
        raise BadInput(f"cannot read disk {path}: {exc}") from exc
    if head == QCOW2_MAGIC or magic == EXT_MAGIC:
        return
    raise BadInput(f"{path} is not an ext4 file system: vers boots ext4 root disks (for a "
                   "directory or a tarball use `vers image import`)")


def check_name(name: str, reserved: set[str]) -> None:
    if not NAME_RE.match(name):
        raise BadInput(f"bad image name {name!r}: use lower-case letters, digits, '.', '_', '-'")
    if name in reserved:
        raise BadInput(f"{name!r} is the name of an image vers builds itself; pick another")


def _unpack(src: str, root: Path) -> str:
    """Copy a directory or unpack a tar stream (``-`` is stdin) into ``root``; returns how the
    source is named in messages."""
    root.mkdir()
    if src != "-" and Path(src).is_dir():
        run_tool(["cp", "-a", "--reflink=auto", f"{src.rstrip('/')}/.", str(root)])
        return src
    if src != "-" and not Path(src).is_file():
        raise BadInput(f"{src}: no such file or directory")
    res = subprocess.run(["tar", "-x", "-p", "--numeric-owner", "-f", src, "-C", str(root)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        why = next((line.removeprefix("tar: ") for line in res.stderr.splitlines()
                    if line.strip()), f"tar exited with {res.returncode}")
        raise BadInput(f"{src} is neither a directory nor a tar archive tar can read: "
                       f"{why[:300]}")
    return "stdin" if src == "-" else src


def import_rootfs(src: str, name: str, reserved: set[str],
                  cache: Path | None = None) -> builder.BuiltImage:
    """Make image ``name`` from a root tree (a directory) or a tar stream of one (``docker
    export``'s output, or ``-`` for stdin). The source is only read: vers' files go into a copy."""
    check_name(name, reserved)
    cache = cache or builder.images_root()
    cache.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=cache, prefix=".import-") as tmp:
        work = Path(tmp)
        root = work / "root"
        what = _unpack(src, root)
        check_tree(root, what)
        builder.add_vers_files(root, with_busybox=True)
        stage = work / "out"
        stage.mkdir()
        builder.make_disk(root, stage / "disk.raw", IMPORT_FREE_SPACE)
        meta = {"name": name, "kind": "imported", "source": str(Path(src).resolve())
                if src != "-" else "stdin", "built_at": time.time(),
                "build_seconds": round(time.monotonic() - started, 1)}
        target = builder.publish(stage, builder.new_import_dir(cache, name), meta)
    return builder.BuiltImage(name, "imported", target, meta)


def sized_overlay(base: Path, out: Path, size: int) -> None:
    """A qcow2 overlay of ``size`` bytes on a raw image: how a guest gets a disk larger than its
    image (the guest init grows the file system to fill it)."""
    if shutil.which("qemu-img") is None:
        raise VMError("qemu-img not found: apt-get install qemu-utils")
    if size < base.stat().st_size:
        raise BadInput(f"disk size {size} is smaller than the image {base} "
                       f"({base.stat().st_size} bytes)")
    run_tool(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(out),
              str(size)])
