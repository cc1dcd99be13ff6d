"""Building named images: a root tree (mmdebstrap for recipes, a user's tree for imports) with the
vers init and agent added, turned into a raw ext4 disk with ``mkfs.ext4 -d``.

Images live in ``$XDG_CACHE_HOME/vers/images/<name>-<key>/`` (``disk.raw`` + ``image.json``); the
kernel and initramfs are always the default guest's. A build goes to a temporary directory beside
the cache and is renamed into place, so concurrent builders never see half an image; an older
build of the same name stays until removed by hand, since VMs may still run on it.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vers.errors import BadInput, MirrorUnreachable, VMError
from vers.files import vers_cache
from vers.images import guestfs
from vers.images.guest import run_tool, static_busybox, write_exec
from vers.images.recipes import DPKG_OPTIONS, SUITE, Recipe
from vers.images.tree import resolve_in_root
from vers.progress import NO_PROGRESS, Meter, Progress

MiB = 1024 * 1024
META = "image.json"
#: mmdebstrap's messages when apt cannot reach the mirror.
_UNREACHABLE = re.compile(r"Temporary failure resolving|Could not resolve|Could not connect|"
                          r"Failed to fetch|Network is unreachable|Connection timed out|"
                          r"Unable to connect")


@dataclass(frozen=True)
class BuiltImage:
    """One image directory in the cache."""

    name: str
    kind: str  # "recipe" or "imported"
    dir: Path
    meta: dict[str, Any]

    @property
    def disk(self) -> Path:
        return self.dir / "disk.raw"


def images_root() -> Path:
    return vers_cache() / "images"


def built_images(cache: Path | None = None) -> list[BuiltImage]:
    """Every complete image in the cache, newest first."""
    root = cache or images_root()
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        meta_file = d / META
        if d.name.startswith(".") or not meta_file.exists():
            continue
        meta = json.loads(meta_file.read_text())
        found.append(BuiltImage(meta["name"], meta["kind"], d, meta))
    return sorted(found, key=lambda b: b.meta.get("built_at", 0), reverse=True)


def find_recipe_image(recipe: Recipe, cache: Path | None = None) -> BuiltImage | None:
    d = (cache or images_root()) / f"{recipe.name}-{recipe.key()}"
    if not (d / META).exists():
        return None
    return BuiltImage(recipe.name, "recipe", d, json.loads((d / META).read_text()))


def add_vers_files(root: Path, with_busybox: bool) -> None:
    """The guest init and agent (and, for roots vers did not build, a static busybox for them)."""
    for d in ("sbin", "dev", "proc", "sys", "tmp", "run", "root"):
        if resolve_in_root(root, d) is None:
            if (root / d).is_symlink():
                raise BadInput(f"/{d} in the root file system is a dangling symlink")
            (root / d).mkdir()
    sbin = resolve_in_root(root, "sbin") or root / "sbin"
    write_exec(sbin / "vers-init", guestfs.GUEST_INIT)
    guestfs.install_agent(sbin / "vers-agent")
    if with_busybox:
        shutil.copy2(static_busybox(), sbin / "busybox-vers")
        (sbin / "busybox-vers").chmod(0o755)


def make_disk(root: Path, out: Path, free_space: int) -> None:
    """A raw ext4 image holding ``root``: its content plus ``free_space``, in 4 KiB blocks."""
    used = int(run_tool(["du", "-sx", "--block-size=1", str(root)]).split()[0])
    files = sum(len(dirs) + len(names) for _, dirs, names in os.walk(root))
    size = math.ceil((used * 1.1 + 64 * MiB + free_space) / (64 * MiB)) * 64 * MiB
    inodes = max(2 * files + 4096, size // (16 * 1024))
    with open(out, "wb") as f:
        f.truncate(size)
    run_tool(["mkfs.ext4", "-q", "-F", "-b", "4096", "-N", str(inodes), "-L", "vers-root",
              "-E", "root_owner=0:0", "-d", str(root), str(out)])


def publish(stage: Path, target: Path, meta: dict[str, Any]) -> Path:
    """Write the metadata last, then rename the finished build into place."""
    (stage / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    try:
        stage.rename(target)
    except OSError:
        if not (target / META).exists():  # lost a race only if the winner finished
            raise
    return target


def apt_sources() -> list[str]:
    """The mirror mmdebstrap uses: $VERS_DEBIAN_MIRROR, else this machine's own apt sources when
    they are for the same release, else mmdebstrap's default (deb.debian.org)."""
    forced = os.environ.get("VERS_DEBIAN_MIRROR")
    if forced:
        return [forced]
    for p in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        if p.exists() and SUITE in p.read_text():
            return [str(p)]
    return []


def mmdebstrap_args(recipe: Recipe, root: Path) -> list[str]:
    args = ["mmdebstrap", "--variant=minbase", "--mode=root", "--format=directory",
            "--include=" + ",".join(recipe.packages)]
    args += [f"--dpkgopt={o}" for o in DPKG_OPTIONS]
    args += [f'--customize-hook=chroot "$1" sh -ec {shlex.quote(h)}' for h in recipe.hooks]
    return args + [SUITE, str(root), *apt_sources()]


#: mmdebstrap's steps, as its "I: ..." lines begin them, and vers's last step: a build's meter
MMDEBSTRAP_STEPS = ("running apt-get update", "downloading packages", "extracting archives",
                    "installing essential packages", "installing remaining packages",
                    "running --customize-hook", "cleaning package lists")
BUILD_STEPS = (*MMDEBSTRAP_STEPS, "making the root disk")


def _mmdebstrap(recipe: Recipe, root: Path, meter: Meter) -> None:
    if shutil.which("mmdebstrap") is None:
        raise VMError(f"building the {recipe.name} image needs mmdebstrap: apt-get install "
                      "mmdebstrap")
    if os.geteuid() != 0:
        raise VMError(f"building the {recipe.name} image needs root (mmdebstrap --mode=root keeps "
                      "the files' owners, which the image needs)")
    env = dict(os.environ, LC_ALL="C.UTF-8", DEBIAN_FRONTEND="noninteractive")
    lines: list[str] = []
    seen: set[str] = set()
    with subprocess.Popen(mmdebstrap_args(recipe, root), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            _mmdebstrap_step(line, meter, seen)
    if proc.returncode != 0:
        log = "".join(lines).strip()
        if _UNREACHABLE.search(log):
            raise MirrorUnreachable(f"cannot reach the Debian package mirror to build the "
                                    f"{recipe.name} image:\n{log[-1500:]}")
        raise VMError(f"mmdebstrap failed building the {recipe.name} image:\n{log[-2000:]}")


def _mmdebstrap_step(line: str, meter: Meter, seen: set[str]) -> None:
    """Move ``meter`` on when an mmdebstrap line begins one of its steps (once per step)."""
    if not line.startswith("I: "):
        return
    text = line[3:]
    for step in MMDEBSTRAP_STEPS:
        if text.startswith(step) and step not in seen:
            seen.add(step)
            meter.phase(step)
            meter.advance()
            return


def build_recipe(recipe: Recipe, cache: Path | None = None,
                 progress: Progress = NO_PROGRESS) -> BuiltImage:
    """The cached image of ``recipe``, built first if missing (~1-2 minutes, mostly apt);
    ``progress`` shows the build's steps."""
    found = find_recipe_image(recipe, cache)
    if found is not None:
        return found
    cache = cache or images_root()
    cache.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp, \
            progress.meter(f"building image {recipe.name}", total=len(BUILD_STEPS) - (
                not recipe.hooks), unit="steps") as meter:
        work = Path(tmp)
        root = work / "root"
        _mmdebstrap(recipe, root, meter)
        add_vers_files(root, with_busybox=False)
        for f in recipe.files:
            dest = root / f.path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(f.content)
            dest.chmod(f.mode)
        (root / "etc" / "hostname").write_text("vers-guest\n")
        (root / "etc" / "vers-guest").write_text(
            f"{recipe.name} image {recipe.key()}, built by vers.images\n")
        stage = work / "out"
        stage.mkdir()
        meter.phase(BUILD_STEPS[-1])
        make_disk(root, stage / "disk.raw", recipe.free_space)
        meter.advance()
        meta = {"name": recipe.name, "kind": "recipe", "key": recipe.key(), "suite": SUITE,
                "packages": list(recipe.packages), "built_at": time.time(),
                "build_seconds": round(time.monotonic() - started, 1)}
        target = publish(stage, cache / f"{recipe.name}-{recipe.key()}", meta)
    return BuiltImage(recipe.name, "recipe", target, json.loads((target / META).read_text()))


def new_import_dir(cache: Path, name: str) -> Path:
    return cache / f"{name}-import-{int(time.time())}-{secrets.token_hex(3)}"
