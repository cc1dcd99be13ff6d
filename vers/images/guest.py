"""Build the default guest from Debian packages only, and cache it outside any repository.

The guest is three files: the Debian cloud kernel (``apt-get download`` + ``dpkg-deb -x``), a
busybox-static initramfs that loads the virtio modules and switches to the root disk, and an ext4
root disk made with ``mkfs.ext4 -d`` holding busybox, the guest init and the vers agent. Nothing is
downloaded from anywhere but the machine's own apt sources.

The cache directory name carries the kernel version and a hash of the guest scripts, so editing the
scripts or changing the kernel builds a new guest instead of silently reusing a stale one. Builds go
to a temporary directory that is renamed into place, so concurrent builders never see half a guest.

Run ``python3 -m vers.images.guest`` to build (or find) it; it prints the cache directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vers.errors import VMError
from vers.files import vers_cache
from vers.images import guestfs

KERNEL_PACKAGE_RE = re.compile(r"^linux-image-6\.1\.0-(\d+)-cloud-amd64$")
#: Load order measured to work with the Debian cloud kernel under microvm (docs/vmm.md);
#: virtio_net needs net_failover, which needs failover.
MODULES = ("virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "virtio_console",
           "failover", "net_failover", "virtio_net")
#: Under TCG the kernel's TSC/PIT calibration can hang on a loaded host, so the guest is told the
#: TSC rate (``tsc_early_khz``: the host's, see vers/vmm/tsc.py) and the delay-loop calibration
#: (``lpj``: TSC ticks per jiffy, at the Debian kernel's 250 Hz). ``tsc=reliable`` keeps the TSC as
#: the clocksource: the watchdog otherwise compares it with jiffies (TCG loses timer ticks), marks
#: it unstable ~3 s after boot and falls back to refined-jiffies, on which the guest's clock falls
#: behind by ~5% and the kernel cannot stop its 250 Hz tick when idle (docs/vmm.md).
#: ``rcupdate.rcu_expedited=1``: a TCG guest waits tens of milliseconds for each normal RCU grace
#: period, and freezing a file system for a commit waits for three (47 ms -> 14 ms measured).
def tcg_cmdline(tsc_khz: int) -> str:
    return (f"tsc_early_khz={tsc_khz} lpj={tsc_khz * 1000 // 250} tsc=reliable "
            "rcupdate.rcu_expedited=1")


BASE_CMDLINE = "console=ttyS0 panic=-1 quiet"
DISK_SIZE = 256 * 1024 * 1024


@dataclass(frozen=True)
class GuestImages:
    """Paths of a bootable guest plus the command line its init expects."""

    kernel: Path
    initrd: Path
    disk: Path
    cmdline: str


def cache_root() -> Path:
    return vers_cache() / "guest"


def scripts_hash() -> str:
    h = hashlib.sha256()
    for text in (guestfs.INITRAMFS_INIT, guestfs.GUEST_INIT, guestfs.AGENT_SOURCE, BASE_CMDLINE):
        h.update(text.encode())
        h.update(b"\0")
    h.update(repr(MODULES).encode())
    return h.hexdigest()[:12]


def run_tool(cmd: list[str], cwd: Path | None = None) -> str:
    """Run a build tool; a missing tool or a failure is a VMError that says which step."""
    try:
        res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise VMError(f"building the guest needs {cmd[0]!r}, which is not installed") from exc
    if res.returncode != 0:
        raise VMError(f"guest build step failed: {' '.join(cmd)}\n{res.stderr.strip()[-2000:]}")
    return res.stdout


def pick_kernel_package() -> str:
    """The newest linux-image-6.1.0-N-cloud-amd64 the apt sources know
    ($VERS_GUEST_KERNEL_PKG wins)."""
    forced = os.environ.get("VERS_GUEST_KERNEL_PKG")
    if forced:
        return forced
    names = run_tool(["apt-cache", "pkgnames", "linux-image-6.1.0-"]).split()
    if not any(KERNEL_PACKAGE_RE.match(n) for n in names):
        run_tool(["apt-get", "update", "-qq"])
        names = run_tool(["apt-cache", "pkgnames", "linux-image-6.1.0-"]).split()
    found = sorted(
        (int(m.group(1)), n) for n in names if (m := KERNEL_PACKAGE_RE.match(n))
    )
    if not found:
        raise VMError("no linux-image-6.1.0-*-cloud-amd64 package in the apt sources")
    return found[-1][1]


def _download_kernel(pkg: str, work: Path) -> Path:
    """apt-get download + dpkg-deb -x; returns the unpacked tree."""
    dl = work / "deb"
    dl.mkdir()
    try:
        run_tool(["apt-get", "download", "-q", pkg], cwd=dl)
    except VMError:
        run_tool(["apt-get", "update", "-qq"])
        run_tool(["apt-get", "download", "-q", pkg], cwd=dl)
    debs = list(dl.glob("*.deb"))
    if not debs:
        raise VMError(f"apt-get download {pkg} produced no .deb")
    tree = work / "kernel-tree"
    run_tool(["dpkg-deb", "-x", str(debs[0]), str(tree)])
    return tree


def _is_static_elf(path: Path) -> bool:
    """An ELF executable without a PT_INTERP program header needs no dynamic loader."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit ELF only
            return False
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def static_busybox() -> Path:
    """The host's statically linked busybox: it runs in any x86_64 root, whatever its libc."""
    for cand in ("/bin/busybox", "/usr/bin/busybox"):
        p = Path(cand)
        if p.exists() and _is_static_elf(p):
            return p
    raise VMError("no statically linked busybox found: apt-get install busybox-static")


def write_exec(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


def populate_busybox(root: Path, busybox: Path) -> None:
    (root / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    (root / "bin" / "busybox").chmod(0o755)
    applets = run_tool([str(busybox), "--list"]).split()
    for applet in applets:
        link = root / "bin" / applet
        if applet != "busybox" and not link.exists():
            link.symlink_to("busybox")
    for d in ("dev", "proc", "sys", "tmp", "root", "etc", "run", "sbin", "mnt"):
        (root / d).mkdir(exist_ok=True)
    (root / "tmp").chmod(0o1777)


def _build_initramfs(tree: Path, kver: str, busybox: Path, work: Path, out: Path) -> None:
    root = work / "initramfs"
    populate_busybox(root, busybox)
    moddir = root / "lib" / "modules"
    moddir.mkdir(parents=True)
    kmods = tree / "lib" / "modules" / kver / "kernel"
    for name in MODULES:
        hits = list(kmods.rglob(f"{name}.ko")) + list(kmods.rglob(f"{name}.ko.xz"))
        if not hits:
            raise VMError(f"kernel {kver} has no module {name}")
        src = hits[0]
        if src.suffix == ".xz":
            data = _run_bytes(["xz", "-dc", str(src)])
            (moddir / f"{name}.ko").write_bytes(data)
        else:
            shutil.copy2(src, moddir / f"{name}.ko")
    write_exec(root / "init", guestfs.INITRAMFS_INIT)
    write_exec(root / "sbin" / "vers-init", guestfs.GUEST_INIT)
    guestfs.install_agent(root / "sbin" / "vers-agent")
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    cpio = subprocess.run(
        ["cpio", "-o", "-H", "newc", "-R", "0:0", "--quiet"],
        cwd=root, input="\n".join(files).encode(), capture_output=True, check=False,
    )
    if cpio.returncode != 0:
        raise VMError(f"cpio failed: {cpio.stderr.decode()[-500:]}")
    out.write_bytes(cpio.stdout)


def _run_bytes(cmd: list[str]) -> bytes:
    res = subprocess.run(cmd, capture_output=True, check=False)
    if res.returncode != 0:
        raise VMError(f"{' '.join(cmd)} failed: {res.stderr.decode()[-500:]}")
    return res.stdout


def _build_disk(busybox: Path, work: Path, out: Path) -> None:
    root = work / "rootfs"
    populate_busybox(root, busybox)
    write_exec(root / "sbin" / "vers-init", guestfs.GUEST_INIT)
    guestfs.install_agent(root / "sbin" / "vers-agent")
    (root / "etc" / "hostname").write_text("vers-guest\n")
    (root / "etc" / "vers-guest").write_text("default vers guest, built by vers.images.guest\n")
    with open(out, "wb") as f:
        f.truncate(DISK_SIZE)
    run_tool(["mkfs.ext4", "-q", "-F", "-L", "vers-root", "-E", "root_owner=0:0",
          "-d", str(root), str(out)])


def build_guest(cache: Path | None = None) -> GuestImages:
    """Return the cached default guest, building it first if it is missing."""
    cache = cache or cache_root()
    existing = find_cached(cache)
    if existing is not None:
        return existing
    cache.mkdir(parents=True, exist_ok=True)
    pkg = pick_kernel_package()
    m = KERNEL_PACKAGE_RE.match(pkg)
    kver = f"6.1.0-{m.group(1)}-cloud-amd64" if m else pkg.removeprefix("linux-image-")
    target = cache / f"{kver}-{scripts_hash()}"
    if (target / "guest.json").exists():
        return _load(target)
    busybox = static_busybox()
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
        work = Path(tmp)
        tree = _download_kernel(pkg, work)
        stage = work / "out"
        stage.mkdir()
        vmlinuz = tree / "boot" / f"vmlinuz-{kver}"
        if not vmlinuz.exists():
            raise VMError(f"{pkg} has no /boot/vmlinuz-{kver}")
        shutil.copy2(vmlinuz, stage / "vmlinuz")
        _build_initramfs(tree, kver, busybox, work, stage / "initrd.img")
        _build_disk(busybox, work, stage / "disk.raw")
        meta = {"kernel_package": pkg, "kernel_version": kver, "cmdline": BASE_CMDLINE,
                "scripts": scripts_hash()}
        (stage / "guest.json").write_text(json.dumps(meta, indent=2) + "\n")
        try:
            stage.rename(target)
        except OSError:
            if not (target / "guest.json").exists():  # lost a race only if the winner finished
                raise
    return _load(target)


def find_cached(cache: Path | None = None) -> GuestImages | None:
    """The newest complete cached guest built from the current scripts, if any."""
    cache = cache or cache_root()
    if not cache.is_dir():
        return None
    suffix = f"-{scripts_hash()}"
    hits = sorted(p for p in cache.iterdir() if p.name.endswith(suffix)
                  and (p / "guest.json").exists())
    return _load(hits[-1]) if hits else None


def _load(d: Path) -> GuestImages:
    meta = json.loads((d / "guest.json").read_text())
    return GuestImages(d / "vmlinuz", d / "initrd.img", d / "disk.raw", meta["cmdline"])


def main(argv: list[str] | None = None) -> int:
    images = build_guest()
    print(images.kernel.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
