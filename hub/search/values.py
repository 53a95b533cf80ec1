"""FHIR values as search index values: normalised strings, date ranges, numbers.

Pure functions shared by index extraction (stored values) and query parsing
(searched values), so that both sides of every comparison are made alike.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

# Open ends of a range (a Period without start or end) as real instants, so
# that every range comparison is a plain comparison in SQL.
LOWEST = datetime(1, 1, 2, tzinfo=UTC)
HIGHEST = datetime(9999, 12, 30, tzinfo=UTC)

_ESCAPED = re.compile(r"\\([\\,|$])")

_DATE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?P<f>\.\d+)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def normalise(text: str) -> str:
    """Case- and accent-insensitive form: 'Müller' and 'muller' index alike."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _add_month(t: datetime) -> datetime:
    return t.replace(year=t.year + 1, month=1) if t.month == 12 else t.replace(month=t.month + 1)


def date_range(value: str) -> tuple[datetime, datetime] | None:
    """The half-open range [low, high) a date, dateTime or instant stands for.

    '2024' is all of 2024, '2024-03-05T10:00' that minute. A value without a
    time zone is taken as UTC.
    """
    m = _DATE.match(value.strip())
    if not m:
        return None
    try:
        year = int(m["y"])
        month = int(m["m"] or 1)
        day = int(m["d"] or 1)
        hour = int(m["H"] or 0)
        minute = int(m["M"] or 0)
        second = int(m["S"] or 0)
        micro = int(float(m["f"]) * 1_000_000) if m["f"] else 0
        offset = timedelta(0)
        if m["tz"] and m["tz"] != "Z":
            sign = 1 if m["tz"][0] == "+" else -1
            hh, mm = m["tz"][1:].split(":")
            offset = timedelta(hours=int(hh), minutes=int(mm)) * sign
        low = datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC) - offset
    except ValueError:
        return None
    if m["f"]:
        digits = len(m["f"]) - 1
        high = low + timedelta(microseconds=10 ** max(0, 6 - digits))
    elif m["S"]:
        high = low + timedelta(seconds=1)
    elif m["M"]:
        high = low + timedelta(minutes=1)
    elif m["d"]:
        high = low + timedelta(days=1)
    elif m["m"]:
        high = _add_month(low)
    else:
        high = low.replace(year=low.year + 1)
    return low, high


def decimal_range(text: str) -> tuple[Decimal, Decimal, Decimal] | None:
    """A number and the range its precision implies: '5.4' is [5.35, 5.45)."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    half = Decimal(5) * Decimal(10) ** (exponent - 1)
    return value, value - half, value + half


def unescape(value: str) -> str:
    return _ESCAPED.sub(r"\1", value)


def split_unescaped(value: str, separator: str, maxsplit: int = -1) -> list[str]:
    """`value` cut at each `separator` not escaped by a backslash (`\\\\,` is `\\`, then a cut).

    The pieces keep their escapes: each is unescaped once, after its own parsing.
    """
    pieces: list[str] = []
    start = i = 0
    while i < len(value):
        if value[i] == "\\":
            i += 2
            continue
        if value[i] == separator and len(pieces) != maxsplit:
            pieces.append(value[start:i])
            start = i + 1
        i += 1
    pieces.append(value[start:])
    return pieces
