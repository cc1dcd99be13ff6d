"""Times as people type them after a bug report, to microseconds since the Unix epoch.

What ``REF@{...}``, ``vers rev-parse --at`` and ``vers log --since/--until`` accept (docs/cli.md,
"Times"): a subset of git's approxidate, chosen so that every accepted form means one thing, and
anything else is refused with one line instead of being half-understood (git's approxidate
ignores words it does not know, so ``@{3.hot.dogs.on.2001-09-17}`` is a date there):

- ``now``; ``today`` and ``midnight`` (00:00 today); ``yesterday`` (24 hours ago, as git);
  ``noon`` and a clock time ``10:32[:05[.25]]`` (their most recent occurrence: today, or
  yesterday if that is still to come); ``today``/``yesterday`` + ``noon``/``midnight``/a clock;
- durations back from now: ``10 minutes ago``, ``2.5 seconds ago``, ``1h30m``, ``10.minutes.ago``,
  in ms, s, min (or m), h, d and w and their long names; ``ago`` may be left out;
- ISO 8601 dates and date-times, local time unless they end in ``Z``/``UTC``/an offset:
  ``2026-12-01``, ``2026-12-01 10:32``, ``2026-12-01T10:32:05.123456+01:00``;
- ``@1701424325.5``: seconds since the epoch (up to nine decimals, as ``date +%s.%N`` prints).

Months and years are refused: their length varies, so "1 month ago" means different spans to
different readers; say it in days or give a date. Sub-microsecond parts are rounded down.
"""

from __future__ import annotations

import re
import time as _time
from datetime import UTC, date, datetime, timedelta, timezone
from datetime import time as clock

from vers.errors import BadInput

US = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DAY = 86_400 * US

_UNITS: dict[str, int] = {
    name: length
    for names, length in (
        (("ms", "msec", "msecs", "millisecond", "milliseconds"), 1000),
        (("s", "sec", "secs", "second", "seconds"), US),
        (("m", "min", "mins", "minute", "minutes"), 60 * US),
        (("h", "hr", "hrs", "hour", "hours"), 3600 * US),
        (("d", "day", "days"), _DAY),
        (("w", "week", "weeks"), 7 * _DAY),
    )
    for name in names
}
_VAGUE_UNITS = {"mo", "month", "months", "y", "yr", "yrs", "year", "years"}

# Patterns are compiled on first use (re keeps the compiled ones), not when vers starts.
_DURATION = r"(\d+(?:\.\d+)?|\.\d+)\s*([a-z]+)\s*"
_CLOCK = r"(\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?"
_CLOCK_RE = rf"^{_CLOCK}$"
_ISO = (rf"^(\d{{4}})-(\d{{2}})-(\d{{2}})(?:[t ]+{_CLOCK})?"
        r"\s*(z|utc|[+-]\d{2}(?::?\d{2})?)?$")
_EPOCH_RE = r"^@(\d+)(?:\.(\d{1,9}))?$"

EXAMPLES = ("'10 minutes ago', '2.5s ago', 'yesterday', 'noon', '2026-12-01 10:32:05', "
            "'2026-12-01T10:32:05.5Z' or '@1701424325.5'")


def now_us() -> int:
    return _time.time_ns() // 1000


def parse_time(text: str, now: int | None = None) -> int:
    """The instant ``text`` names, in microseconds since the epoch; ``now`` (microseconds) is the
    present for relative forms (default: the clock). Raises ``BadInput`` for anything else."""
    now = now_us() if now is None else now
    s = " ".join(text.strip().lower().split())
    if not s:
        raise BadInput(f"an empty time; try {EXAMPLES}")
    value = _epoch(s) if s.startswith("@") else None
    if value is None:
        value = _iso(s, text)
    if value is None:
        value = _words(s, now)
    if value is None:
        value = _relative(s, now, text)
    if value is None:
        raise BadInput(f"cannot read {text!r} as a time; try {EXAMPLES}")
    if value < 0:
        raise BadInput(f"{text!r} is before 1970, where no commit can be")
    return value


def format_local(time_us: int) -> str:
    """``2026-12-01 10:32:05.250000 +0100``: local time, with the fraction only if it is not
    zero (so a whole-second time reads as a person would type it)."""
    dt = datetime.fromtimestamp(time_us // US, UTC).astimezone()
    frac = f".{time_us % US:06d}" if time_us % US else ""
    return dt.strftime("%Y-%m-%d %H:%M:%S") + frac + dt.strftime(" %z")


def format_iso_utc(time_us: int) -> str:
    """``2026-12-01T09:32:05.250000Z``: always six decimals, for machines."""
    return (_EPOCH + timedelta(microseconds=time_us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _us(dt: datetime) -> int:
    """Microseconds since the epoch, exactly (no float on the way); a naive ``dt`` is local."""
    if dt.tzinfo is None:
        dt = dt.astimezone()
    return (dt - _EPOCH) // timedelta(microseconds=1)


def _fraction_us(digits: str | None) -> int:
    return int((digits or "").ljust(9, "0")[:6]) if digits else 0


def _epoch(s: str) -> int | None:
    m = re.match(_EPOCH_RE, s)
    if m is None:
        return None
    return int(m.group(1)) * US + _fraction_us(m.group(2))


def _iso(s: str, text: str) -> int | None:
    m = re.match(_ISO, s)
    if m is None:
        return None
    y, mo, d, hh, mm, ss, frac, zone = m.groups()
    try:
        dt = datetime(int(y), int(mo), int(d), int(hh or 0), int(mm or 0), int(ss or 0),
                      _fraction_us(frac))
    except ValueError as exc:
        raise BadInput(f"{text!r} is not a valid date or time: {exc}") from exc
    if zone is None:
        return _us(dt)
    if zone in ("z", "utc"):
        return _us(dt.replace(tzinfo=UTC))
    digits = zone[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:] or 0)
    if hours >= 24 or minutes >= 60:
        raise BadInput(f"{text!r}: UTC offset {zone} is out of range")
    offset = timedelta(hours=hours, minutes=minutes)
    return _us(dt.replace(tzinfo=timezone(offset if zone[0] == "+" else -offset)))


def _words(s: str, now: int) -> int | None:
    """now, today, yesterday, midnight, noon, a clock time, and a day word with a clock."""
    if s == "now":
        return now
    day, _, rest = s.partition(" ")
    if day not in ("today", "yesterday"):
        day, rest = "", s
    if not rest:
        return _local_midnight(now, 0) if day == "today" else now - _DAY
    at = _clock(rest)
    if at is None:
        return None
    if day:
        return _at(_local_date(now, 0 if day == "today" else 1), at)
    value = _at(_local_date(now, 0), at)
    return value if value <= now else _at(_local_date(now, 1), at)


def _clock(s: str) -> clock | None:
    if s == "noon":
        return clock(12)
    if s == "midnight":
        return clock(0)
    m = re.match(_CLOCK_RE, s)
    if m is None:
        return None
    hh, mm, ss, frac = m.groups()
    try:
        return clock(int(hh), int(mm), int(ss or 0), _fraction_us(frac))
    except ValueError as exc:
        raise BadInput(f"{s!r} is not a valid time of day: {exc}") from exc


def _local_date(now: int, days_back: int) -> date:
    return datetime.fromtimestamp(now // US).date() - timedelta(days=days_back)


def _local_midnight(now: int, days_back: int) -> int:
    return _at(_local_date(now, days_back), clock(0))


def _at(day: date, at: clock) -> int:
    return _us(datetime.combine(day, at))


def _relative(s: str, now: int, text: str) -> int | None:
    """``10 minutes ago``, ``1h30m``, ``2.5.seconds.ago``: a sum of durations back from now."""
    # a dot is a separator (git's ``10.minutes.ago``) unless it starts a fraction (``2.5``, ``.5``)
    s = re.sub(r"\.(?!\d)|(?<=[a-z])\.", " ", s).replace("_", " ").replace(",", " ").strip()
    s = s.removesuffix(" ago").removesuffix("ago").strip()
    from decimal import Decimal  # exact sums of fractional durations (2.5s)

    pos, total = 0, 0
    while pos < len(s):
        m = re.compile(_DURATION).match(s, pos)
        if m is None:
            return None
        number, unit = m.groups()
        if unit in _VAGUE_UNITS:
            raise BadInput(f"{text!r}: months and years have no fixed length; "
                           "say it in days or weeks, or give a date")
        if unit not in _UNITS:
            return None
        total += int((Decimal(number) * _UNITS[unit]).to_integral_value())
        pos = m.end()
    return now - total if pos else None
