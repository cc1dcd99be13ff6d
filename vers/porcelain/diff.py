"""vers diff A B: changed memory pages and disk blocks: a summary a person can read (the
default), every range (``--ranges``), one line per image (``--stat``), or json."""

from __future__ import annotations

from vers.objects.model import PAGE_SIZE
from vers.porcelain.show import human_size
from vers.statediff import CommitDiff, ImageDiff

#: how many of the largest ranges the default summary names per image
SUMMARY_RANGES = 5


def _range_line(unit: str, start_page: int, count: int) -> str:
    start, end = start_page * PAGE_SIZE, (start_page + count) * PAGE_SIZE
    return (f"  {start:#014x}-{end:#014x}  {unit}s {start_page}-{start_page + count - 1}"
            f"  ({human_size(end - start)})")


def _header(img: ImageDiff) -> str:
    unit = "page" if img.name == "memory" else "block"
    sizes = "" if img.size_a == img.size_b else f" (size {img.size_a} -> {img.size_b})"
    return (f"{img.name}: {img.status}, {img.changed_pages} {unit}s "
            f"({human_size(img.changed_bytes)}) in {len(img.ranges)} ranges{sizes}")


def format_summary(d: CommitDiff, top: int = SUMMARY_RANGES) -> str:
    """Per changed image: what changed in pages/blocks and bytes, and its largest ranges."""
    lines = []
    for img in d.images:
        if img.status == "unchanged":
            continue
        unit = "page" if img.name == "memory" else "block"
        lines.append(_header(img))
        largest = sorted(img.ranges, key=lambda r: (-r.count, r.start))[:top]
        if len(img.ranges) > top:
            lines.append(f"  largest {top} of {len(img.ranges)} ranges (all: --ranges):")
        lines += [_range_line(unit, r.start, r.count)
                  for r in sorted(largest, key=lambda r: r.start)]
    return "\n".join(lines)


def format_ranges(d: CommitDiff) -> str:
    lines = []
    for img in d.images:
        if img.status == "unchanged":
            continue
        unit = "page" if img.name == "memory" else "block"
        lines.append(_header(img))
        lines += [_range_line(unit, r.start, r.count) for r in img.ranges]
    return "\n".join(lines)


def format_stat(d: CommitDiff) -> str:
    lines = []
    total = 0
    changed = 0
    for img in d.images:
        if img.status == "unchanged":
            continue
        changed += 1
        total += img.changed_bytes
        lines.append(f" {img.name:<10} | {img.status:<8} {img.changed_pages:>8} pages  "
                     f"{human_size(img.changed_bytes):>10}")
    lines.append(f" {changed} image(s) changed, {human_size(total)} differ")
    return "\n".join(lines)
