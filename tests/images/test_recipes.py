"""Recipes and the catalogue without booting: cache keys follow what goes into an image, `vers
images` lists what can be built, and a mirror that cannot be reached is reported as such."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest

from vers import images
from vers.errors import BadInput, MirrorUnreachable
from vers.images import builder, guestfs
from vers.images.recipes import DEBIAN, POSTGRES, RecipeFile
from vers.testing import run_vers


def test_recipe_key_follows_packages_files_hooks_and_guest_scripts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    key = DEBIAN.key()
    assert key == DEBIAN.key() and key != POSTGRES.key()
    assert dataclasses.replace(DEBIAN, packages=(*DEBIAN.packages, "vim")).key() != key
    assert dataclasses.replace(DEBIAN, hooks=("true",)).key() != key
    assert dataclasses.replace(DEBIAN, files=(RecipeFile("/etc/x", "y"),)).key() != key
    monkeypatch.setattr(guestfs, "GUEST_INIT", guestfs.GUEST_INIT + "# changed\n")
    assert DEBIAN.key() != key


def test_images_lists_what_can_be_built(tmp_path: Path) -> None:
    p = run_vers(tmp_path, "images", "--format", "json",
                 env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert p.returncode == 0, p.stderr
    rows = {r["name"]: r for r in json.loads(p.stdout)}
    assert set(rows) == {"default", "debian", "postgres"}
    assert not any(r["built"] for r in rows.values())
    assert rows["postgres"]["kind"] == "recipe"
    text = run_vers(tmp_path, "images", env={"XDG_CACHE_HOME": str(tmp_path / "cache")}).stdout
    assert "buildable" in text and "postgres" in text


def test_names_are_checked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(BadInput, match="builds itself"):
        images.import_rootfs(str(tmp_path), "debian")
    with pytest.raises(BadInput, match="bad image name"):
        images.import_rootfs(str(tmp_path), "My Image")
    with pytest.raises(BadInput, match="no image named 'nothing'"):
        images.get("nothing", build=False)
    with pytest.raises(BadInput, match="is none of them"):
        images.build("mine")


@pytest.mark.skipif(shutil.which("mmdebstrap") is None or os.geteuid() != 0,
                    reason="needs mmdebstrap and root")
def test_an_unreachable_mirror_is_reported_as_such(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setenv("VERS_DEBIAN_MIRROR", "http://127.0.0.1:9/debian")  # nothing listens
    with pytest.raises(MirrorUnreachable, match="cannot reach the Debian package mirror"):
        builder.build_recipe(DEBIAN, tmp_path)
    assert list(tmp_path.iterdir()) == [], "a failed build left files behind"
