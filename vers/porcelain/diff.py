"""vers diff A B: changed memory pages and disk blocks, as ranges, --stat or json."""

from __future__ import annotations

from vers.objects.model import PAGE_SIZE
from vers.porcelain.show import human_size
from vers.statediff import CommitDiff


def format_ranges(d: CommitDiff) -> str:
    lines = []
    for img in d.images:
        if img.status == "unchanged":
            continue
        unit = "page" if img.name == "memory" else "block"
        sizes = "" if img.size_a == img.size_b else f" (size {img.size_a} -> {img.size_b})"
        lines.append(f"{img.name}: {img.status}, {img.changed_pages} {unit}s "
                     f"({human_size(img.changed_bytes)}) in {len(img.ranges)} ranges{sizes}")
        for r in img.ranges:
            start, end = r.start * PAGE_SIZE, (r.start + r.count) * PAGE_SIZE
            lines.append(f"  {start:#014x}-{end:#014x}  {unit}s {r.start}-{r.start + r.count - 1}"
                         f"  ({human_size(end - start)})")
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
