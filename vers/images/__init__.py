"""Guest images vers boots, by name (docs/guests.md).

``default`` is the busybox guest (``guest``): the kernel and initramfs every image boots with.
``debian`` and ``postgres`` are recipes (``recipes``) built with mmdebstrap (``build``); other
names are root file systems users imported (``rootfs``). ``guestfs`` holds the scripts baked into
every guest: the initramfs /init, the guest init and the agent.

    get(name, build=True) -> GuestImages   the files to boot (building the image if allowed)
    list_images()                          what is built and what can be built
    build(name)                            build ahead of time
    import_rootfs(src, name)               a tree or tar stream made into a bootable image
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vers.errors import BadInput
from vers.images import builder, rootfs
from vers.images.guest import BASE_CMDLINE, GuestImages, build_guest, find_cached
from vers.images.recipes import RECIPES
from vers.progress import NO_PROGRESS, Progress

DEFAULT = "default"
RESERVED = {DEFAULT, *RECIPES}


@dataclass(frozen=True)
class ImageInfo:
    """One row of ``vers images``."""

    name: str
    kind: str  # "default", "recipe" or "imported"
    summary: str
    built: bool
    path: str | None = None
    #: Bytes the image's files take on the host (sparse files count what is allocated).
    stored_bytes: int | None = None
    #: The root disk's size as the guest sees it before --disk-size grows it.
    disk_bytes: int | None = None
    build_seconds: float | None = None


def _allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def _with_default_kernel(disk: Path, build: bool) -> GuestImages:
    guest = build_guest() if build else find_cached()
    if guest is None:
        raise BadInput("the default guest (kernel and initramfs) is not built: "
                       "vers image build default")
    return GuestImages(guest.kernel, guest.initrd, disk, BASE_CMDLINE)


def _newest_import(name: str) -> builder.BuiltImage | None:
    for b in builder.built_images():
        if b.kind == "imported" and b.name == name:
            return b
    return None


def get(name: str, build: bool = True, progress: Progress = NO_PROGRESS) -> GuestImages:
    """The files to boot image ``name``; a recipe image is built first unless ``build`` is off
    (``progress`` shows the build's steps)."""
    if name == DEFAULT:
        guest = build_guest() if build else find_cached()
        if guest is None:
            raise BadInput("the default guest is not built: vers image build default")
        return guest
    recipe = RECIPES.get(name)
    if recipe is not None:
        found = (builder.build_recipe(recipe, progress=progress) if build
                 else builder.find_recipe_image(recipe))
        if found is None:
            raise BadInput(f"image {name!r} is not built: vers image build {name}")
        return _with_default_kernel(found.disk, build)
    imported = _newest_import(name)
    if imported is None:
        known = ", ".join(sorted(RESERVED))
        raise BadInput(f"no image named {name!r}: build one of {known}, or import your own "
                       f"with `vers image import SRC {name}`")
    return _with_default_kernel(imported.disk, build)


def build(name: str, progress: Progress = NO_PROGRESS) -> GuestImages:
    """Build image ``name`` now (a no-op when it is cached)."""
    if name != DEFAULT and name not in RECIPES:
        raise BadInput(f"vers builds {', '.join(sorted(RESERVED))}; {name!r} is none of them "
                       "(import your own with `vers image import`)")
    return get(name, build=True, progress=progress)


def import_rootfs(src: str, name: str) -> GuestImages:
    """Make a bootable image ``name`` from a directory or a tar stream (``-``: stdin)."""
    built = rootfs.import_rootfs(src, name, RESERVED)
    return _with_default_kernel(built.disk, build=True)


def _info(name: str, kind: str, summary: str, disk: Path | None,
          extra: list[Path], seconds: float | None) -> ImageInfo:
    if disk is None:
        return ImageInfo(name, kind, summary, built=False)
    stored = sum(_allocated(p) for p in [disk, *extra] if p.exists())
    return ImageInfo(name, kind, summary, True, str(disk.parent), stored, disk.stat().st_size,
                     seconds)


def list_images() -> list[ImageInfo]:
    """The default guest and the recipes (built or not), then every imported image."""
    guest = find_cached()
    kernel_files = [guest.kernel, guest.initrd] if guest else []
    rows = [_info(DEFAULT, "default", "busybox guest: the kernel and initramfs every image uses",
                  guest.disk if guest else None, kernel_files, None)]
    for recipe in RECIPES.values():
        found = builder.find_recipe_image(recipe)
        rows.append(_info(recipe.name, "recipe", recipe.summary,
                          found.disk if found else None, [],
                          found.meta.get("build_seconds") if found else None))
    seen = set()
    for b in builder.built_images():
        if b.kind == "imported" and b.name not in seen:
            seen.add(b.name)
            rows.append(_info(b.name, "imported", f"imported from {b.meta.get('source', '?')}",
                              b.disk, [], b.meta.get("build_seconds")))
    return rows


__all__ = ["DEFAULT", "GuestImages", "ImageInfo", "build", "get", "import_rootfs", "list_images"]
