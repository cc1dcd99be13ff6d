"""vers CLI commands for guest images: ``images``, ``image build``, ``image import``."""

from __future__ import annotations

import dataclasses

import click

from vers import images
from vers.cli._group import cli, emit_json, info, progress


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / (1024 * 1024):.0f}M" if n < 1 << 30 else f"{n / (1 << 30):.1f}G"


@cli.command("images")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def images_cmd(fmt: str) -> None:
    """List guest images: what is built and what `vers image build` can build."""
    rows = images.list_images()
    if fmt == "json":
        emit_json([dataclasses.asdict(r) for r in rows])
        return
    click.echo(f"{'NAME':<12} {'KIND':<9} {'STATE':<10} {'STORED':>7} {'DISK':>7}  CONTENT")
    for r in rows:
        state = "built" if r.built else "buildable" if r.kind != "imported" else "-"
        click.echo(f"{r.name:<12} {r.kind:<9} {state:<10} {_size(r.stored_bytes):>7} "
                   f"{_size(r.disk_bytes):>7}  {r.summary}")


@cli.group("image")
def image() -> None:
    """Build or import guest images (see `vers images`)."""


@image.command("build")
@click.argument("name")
def image_build(name: str) -> None:
    """Build image NAME now (default, debian, postgres); prints its root disk's path."""
    info(f"building image {name} (reused if it is cached)...")
    click.echo(images.build(name, progress()).disk)


@image.command("import")
@click.argument("src")
@click.argument("name")
def image_import(src: str, name: str) -> None:
    """Make image NAME from SRC: a root directory, or a tar stream of one (`-` for stdin, e.g.
    `docker export C | vers image import - NAME`). SRC is only read; prints the new root disk."""
    g = images.import_rootfs(src, name)
    info(f"imported {src} as image {name}")
    click.echo(g.disk)
