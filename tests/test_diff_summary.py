"""vers diff without flags: a summary a person can read, the full list behind --ranges."""

from __future__ import annotations

from pathlib import Path

from vers.objects.model import PAGE_SIZE
from vers.testing import run_vers


def test_default_is_a_summary_with_the_largest_ranges(tmp_path: Path) -> None:
    mem = tmp_path / "m.img"
    data = bytearray(4096 * PAGE_SIZE)
    mem.write_bytes(data)
    assert run_vers(tmp_path, "init").returncode == 0
    a = run_vers(tmp_path, "snapshot", "--memory", str(mem)).stdout.strip()
    # 40 one-page changes and one 32-page run: 41 ranges
    for i in range(40):
        data[(i * 50) * PAGE_SIZE] = 1
    data[3000 * PAGE_SIZE:3032 * PAGE_SIZE] = b"\x02" * (32 * PAGE_SIZE)
    mem.write_bytes(data)
    b = run_vers(tmp_path, "snapshot", "--memory", str(mem)).stdout.strip()

    summary = run_vers(tmp_path, "diff", a, b).stdout.splitlines()
    assert summary[0] == "memory: modified, 72 pages (288.0 KiB) in 41 ranges"
    assert summary[1] == "  largest 5 of 41 ranges (all: --ranges):"
    assert len(summary) == 7
    assert any("pages 3000-3031" in line for line in summary)

    full = run_vers(tmp_path, "diff", a, b, "--ranges").stdout.splitlines()
    assert full[0] == summary[0] and len(full) == 42
