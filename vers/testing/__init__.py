"""Builders for tests and benchmarks (like dulwich's build_commit_graph): cheap images and
histories."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

from vers.objects.model import PAGE_SIZE


def make_image(path: str | os.PathLike[str], size: int, seed: int = 0,
               random_fraction: float = 0.5, zero_fraction: float = 0.25) -> bytearray:
    """An image like guest memory: a random part, an all-zero part and compressible text."""
    rnd = random.Random(seed)
    pages = size // PAGE_SIZE
    n_random = int(pages * random_fraction)
    n_zero = int(pages * zero_fraction)
    data = bytearray()
    for off in range(0, n_random * PAGE_SIZE, 16 << 20):  # randbytes is limited to < 256 MiB
        data += rnd.randbytes(min(16 << 20, n_random * PAGE_SIZE - off))
    data += bytes(n_zero * PAGE_SIZE)
    text = b"".join(b"line %08d of some compressible guest data\n" % i for i in range(2000))
    rest = size - len(data)
    data += (text * (rest // len(text) + 1))[:rest]
    Path(path).write_bytes(data)
    return data


def mutate_pages(data: bytearray, fraction: float, seed: int) -> list[int]:
    """Give ``fraction`` of the pages new random content; returns the page indices changed."""
    rnd = random.Random(seed)
    pages = len(data) // PAGE_SIZE
    chosen = sorted(rnd.sample(range(pages), max(1, int(pages * fraction))))
    for p in chosen:
        data[p * PAGE_SIZE : (p + 1) * PAGE_SIZE] = rnd.randbytes(PAGE_SIZE)
    return chosen


def vers_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment tests run ``vers`` in: ours with a fixed author, no $VERS_DIR, and
    ``extra`` on top."""
    env = dict(os.environ, VERS_AUTHOR="Test <t@example>", **(extra or {}))
    env.pop("VERS_DIR", None)
    return env


def run_vers(cwd: str | os.PathLike[str], *args: str, timeout: float = 300,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real ``vers`` entry point as a user would (``vers_env(env)``)."""
    return subprocess.run(["vers", *args], cwd=cwd, capture_output=True, text=True,
                          env=vers_env(env), timeout=timeout, check=False)


def vers_ok(cwd: str | os.PathLike[str], *args: str) -> str:
    """``run_vers`` that must succeed; returns its stdout."""
    p = run_vers(cwd, *args)
    assert p.returncode == 0, f"vers {args} failed ({p.returncode}): {p.stderr}"
    return p.stdout
