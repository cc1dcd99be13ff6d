"""The named guest images vers builds from Debian packages: what goes into each, as data.

A recipe is a package list, files added to the root, and shell hooks run inside the new root after
the packages are installed. Everything in it, plus the guest init and agent, is hashed into the
image's cache key (``Recipe.key``), so changing a recipe builds a new image instead of reusing a
stale one. What each image contains and why is described in docs/guests.md.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from vers.images import guestfs

MiB = 1024 * 1024
#: Debian release of every recipe image (the cloud kernel of the default guest is bookworm's too).
SUITE = "bookworm"
#: Bumped when the way images are built changes in a way the recipes do not show.
BUILDER_VERSION = "1"
#: Documentation and translations are left out of the images (dpkg path-exclude): ~80 MB less.
DPKG_OPTIONS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
)


@dataclass(frozen=True)
class RecipeFile:
    path: str
    content: str
    mode: int = 0o644


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    packages: tuple[str, ...]
    files: tuple[RecipeFile, ...] = ()
    #: Shell scripts run with ``sh -e`` inside the new root (chroot), in order, after installing.
    hooks: tuple[str, ...] = ()
    #: Free space the image's file system gets beyond its content (more with --disk-size).
    free_space: int = 512 * MiB

    def key(self) -> str:
        """Hash of everything that goes into the image: its cache directory carries it."""
        h = hashlib.sha256()
        parts = [BUILDER_VERSION, SUITE, self.name, *self.packages, *DPKG_OPTIONS, *self.hooks,
                 guestfs.GUEST_INIT, guestfs.AGENT_SOURCE, str(self.free_space)]
        parts += [f"{f.path}\0{f.mode:o}\0{f.content}" for f in self.files]
        for p in parts:
            h.update(p.encode())
            h.update(b"\0")
        return h.hexdigest()[:12]


DEBIAN_PACKAGES = ("python3", "python3-pip", "python3-venv", "ca-certificates", "iproute2",
                   "procps", "curl", "e2fsprogs")

DEBIAN = Recipe(
    name="debian",
    summary="Debian bookworm: python3, pip, venv, ca-certificates, iproute2, procps, curl",
    packages=DEBIAN_PACKAGES,
)

POSTGRES_BOOT = r'''#!/bin/sh
# Start every PostgreSQL cluster of this image with Debian's pg_ctlcluster, which runs the server
# as its owner (user postgres) and waits until it accepts connections.
mkdir -p /run/postgresql
chown postgres:postgres /run/postgresql
chmod 2775 /run/postgresql
for conf in /etc/postgresql/*/*/postgresql.conf; do
    [ -f "$conf" ] || continue
    dir=${conf%/postgresql.conf}
    cluster=${dir##*/}
    version=${dir%/*}
    version=${version##*/}
    pg_ctlcluster "$version" "$cluster" start
done
'''

#: Debian's postgresql package initialises the cluster 15/main while it installs. This adds a
#: superuser role and a database named root, so ``vers exec VM -- psql`` works as the agent's user.
POSTGRES_ROLE_HOOK = r'''
for conf in /etc/postgresql/*/main/postgresql.conf; do
    version=${conf#/etc/postgresql/}
    version=${version%%/*}
    printf 'CREATE ROLE root SUPERUSER LOGIN;\nCREATE DATABASE root OWNER root;\n' |
        runuser -u postgres -- /usr/lib/postgresql/$version/bin/postgres --single \
            -D /var/lib/postgresql/$version/main -c config_file=$conf postgres >/dev/null
done
'''

POSTGRES = Recipe(
    name="postgres",
    summary="debian plus PostgreSQL 15, cluster 15/main started at boot, superuser role root",
    packages=(*DEBIAN_PACKAGES, "postgresql"),
    files=(RecipeFile("/etc/vers/boot.d/50-postgresql", POSTGRES_BOOT, 0o755),),
    hooks=(POSTGRES_ROLE_HOOK,),
)

RECIPES: dict[str, Recipe] = {r.name: r for r in (DEBIAN, POSTGRES)}
