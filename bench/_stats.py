"""Percentiles for the benchmarks: one definition, so that a p50 or a p99 means the same in
every bench's output.

A percentile is interpolated between the two nearest runs (numpy's default, and
``statistics.quantiles(..., method="inclusive")``): the p50 is the median, and the p99 of 50
runs lies between the two slowest. Each bench runs as a script (``python3 bench/X.py``) with the
repository's root on ``sys.path`` and imports this as ``bench._stats``.
"""

from __future__ import annotations

from collections.abc import Iterable


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-quantile (0 <= q <= 1) of ``values``; NaN if there are none."""
    s = sorted(values)
    if not s:
        return float("nan")
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def p50_p99(values: Iterable[float]) -> tuple[float, float]:
    """The median and the 99th percentile of ``values``."""
    s = sorted(values)
    return percentile(s, 0.5), percentile(s, 0.99)
