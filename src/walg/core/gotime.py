"""Timestamps as Go's encoding/json writes them (RFC 3339 with up to nine fractional digits).

Python's ``datetime`` stops at microseconds, but WAL-G compares file mtimes to the nanosecond
when it picks files for a delta backup, so a time is kept as integer nanoseconds since the epoch
plus the UTC offset it was written with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from walg.errors import FormatError

_RFC3339_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)
_NS = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Go's zero time.Time, 0001-01-01T00:00:00Z, in nanoseconds from the Unix epoch: what Go's
# encoding/json leaves in (and writes for) a time field that a document lacks or holds null.
GO_ZERO_NS = -62_135_596_800 * _NS
GO_ZERO_TEXT = "0001-01-01T00:00:00Z"


@dataclass(frozen=True, order=True, slots=True)
class GoTime:
    """An instant with nanosecond precision and the UTC offset (seconds) it is shown in."""

    ns: int
    offset: int = 0

    @classmethod
    def from_ns(cls, ns: int, offset: int = 0) -> GoTime:
        return cls(ns, offset)

    @classmethod
    def from_datetime(cls, value: datetime) -> GoTime:
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        delta = value - _EPOCH
        ns = (delta.days * 86400 + delta.seconds) * _NS + delta.microseconds * 1000
        offset = value.utcoffset()
        return cls(ns, int(offset.total_seconds()) if offset else 0)

    def to_datetime(self) -> datetime:
        tz = UTC if self.offset == 0 else timezone(timedelta(seconds=self.offset))
        return (_EPOCH + timedelta(microseconds=self.ns // 1000)).astimezone(tz)

    def utc(self) -> GoTime:
        return GoTime(self.ns, 0)

    @property
    def is_zero(self) -> bool:
        """Go's ``Time.IsZero``: the instant 0001-01-01T00:00:00Z, whatever the offset."""
        return self.ns == GO_ZERO_NS

    def format(self) -> str:
        """RFC3339Nano: trailing zeros of the fraction dropped, ``Z`` for UTC."""
        local_ns = self.ns + self.offset * _NS
        seconds, frac = divmod(local_ns, _NS)
        when = _EPOCH + timedelta(seconds=seconds)
        stamp = (
            f"{when.year:04d}-{when.month:02d}-{when.day:02d}"
            f"T{when.hour:02d}:{when.minute:02d}:{when.second:02d}"
        )
        if frac:
            stamp += "." + f"{frac:09d}".rstrip("0")
        if self.offset == 0:
            return stamp + "Z"
        sign = "+" if self.offset > 0 else "-"
        hours, minutes = divmod(abs(self.offset) // 60, 60)
        return f"{stamp}{sign}{hours:02d}:{minutes:02d}"

    def format_seconds(self) -> str:
        """RFC3339 without fraction, in UTC (what ``backup-list`` prints)."""
        return GoTime(self.ns - self.ns % _NS).format()

    def format_rfc3339(self) -> str:
        """Go's ``Format(time.RFC3339)``: the fraction dropped, in the offset the time has.

        Go keeps the offset a time was parsed with, so a ``metadata.json`` time written with
        ``+03:00`` prints with it; only a time in UTC ends in ``Z``.
        """
        return GoTime(self.ns - self.ns % _NS, self.offset).format()

    @classmethod
    def parse(cls, text: str) -> GoTime:
        match = _RFC3339_RE.match(text.strip())
        if not match:
            raise FormatError(f"not an RFC 3339 time: {text!r}")
        year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
        frac = match.group(7) or ""
        offset = 0
        if match.group(9):
            offset = (int(match.group(10)) * 60 + int(match.group(11))) * 60
            if match.group(9) == "-":
                offset = -offset
        try:
            local = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
        except ValueError:
            raise FormatError(f"not an RFC 3339 time: {text!r}") from None
        delta = local - _EPOCH
        ns = (delta.days * 86400 + delta.seconds) * _NS + int(frac.ljust(9, "0") or 0)
        return cls(ns - offset * _NS, offset)
