"""Log sequence numbers and WAL file names.

An LSN is a 64-bit byte position in the WAL stream. A segment name is three 8-hex-digit fields:
timeline, ``segno // segments_per_xlogid`` and ``segno % segments_per_xlogid`` where
``segments_per_xlogid = 2**32 // segment_size``. Names are upper-case, as PostgreSQL writes them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from walg.errors import FormatError

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024

SEGMENT_NAME_RE = re.compile(r"[0-9A-F]{24}")
HISTORY_NAME_RE = re.compile(r"[0-9A-F]{8}\.history")
PARTIAL_NAME_RE = re.compile(r"[0-9A-F]{24}\.partial")
BACKUP_HISTORY_NAME_RE = re.compile(r"[0-9A-F]{24}\.[0-9A-F]{8}\.backup")


_LSN_RE = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def parse_lsn(text: str) -> int:
    """``'16/B374D848'`` → integer."""
    match = _LSN_RE.fullmatch(text.strip())
    if not match:
        raise FormatError(f"not an LSN: {text!r}")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segments_per_xlogid(segment_size: int) -> int:
    return 0x100000000 // segment_size


@dataclass(frozen=True, order=True)
class Segment:
    """One WAL segment: a timeline and a segment number."""

    timeline: int
    segno: int

    def name(self, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
        per = segments_per_xlogid(segment_size)
        return f"{self.timeline:08X}{self.segno // per:08X}{self.segno % per:08X}"

    def next(self) -> Segment:
        return Segment(self.timeline, self.segno + 1)

    @classmethod
    def parse(cls, name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> Segment:
        if not SEGMENT_NAME_RE.fullmatch(name):
            raise FormatError(f"not a WAL segment name: {name!r}")
        per = segments_per_xlogid(segment_size)
        timeline = int(name[0:8], 16)
        hi = int(name[8:16], 16)
        lo = int(name[16:24], 16)
        if lo >= per:
            raise FormatError(f"not a WAL segment name for {segment_size}-byte segments: {name!r}")
        return cls(timeline, hi * per + lo)

    @classmethod
    def containing(
        cls, timeline: int, lsn: int, segment_size: int = DEFAULT_SEGMENT_SIZE
    ) -> Segment:
        return cls(timeline, lsn // segment_size)

    @classmethod
    def before(cls, timeline: int, lsn: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> Segment:
        """The segment holding the byte just before ``lsn`` (PostgreSQL's XLByteToPrevSeg)."""
        return cls(timeline, (lsn - 1) // segment_size)


def is_wal_file_name(name: str) -> bool:
    """True for every name PostgreSQL hands to ``archive_command`` / ``restore_command``."""
    return bool(
        SEGMENT_NAME_RE.fullmatch(name)
        or HISTORY_NAME_RE.fullmatch(name)
        or PARTIAL_NAME_RE.fullmatch(name)
        or BACKUP_HISTORY_NAME_RE.fullmatch(name)
    )


def check_wal_file_name(name: str) -> str:
    if not is_wal_file_name(name):
        raise FormatError(
            f"{name!r} is not a WAL file name (expected a 24-hex-digit segment name, "
            "TTTTTTTT.history, a .partial or a .backup file)"
        )
    return name
