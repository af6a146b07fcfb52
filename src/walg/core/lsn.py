"""Log sequence numbers and WAL file names.

An LSN is a 64-bit byte position in the WAL stream. A segment name is three 8-hex-digit fields:
timeline, ``segno // segments_per_xlogid`` and ``segno % segments_per_xlogid`` where
``segments_per_xlogid = 2**32 // segment_size``. Names are upper-case, as PostgreSQL writes them.
"""

from __future__ import annotations

from dataclasses import dataclass

from walg.core.pattern import LazyPattern
from walg.errors import FormatError

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024

_UPPER_HEX = frozenset("0123456789ABCDEF")

_LSN_RE = LazyPattern(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def _is_upper_hex(text: str) -> bool:
    return _UPPER_HEX.issuperset(text)


# WAL file names are checked with string operations, not regular expressions: every
# archive_command and restore_command call checks one, and ``re`` costs such a call more
# than everything else it checks.
def is_segment_name(name: str) -> bool:
    """24 upper-case hex digits: timeline, log and segment (``000000010000000A000000FF``)."""
    return len(name) == 24 and _is_upper_hex(name)


def is_history_name(name: str) -> bool:
    """``TTTTTTTT.history``."""
    return len(name) == 16 and name.endswith(".history") and _is_upper_hex(name[:8])


def is_partial_name(name: str) -> bool:
    """A segment name followed by ``.partial``."""
    return len(name) == 32 and name.endswith(".partial") and _is_upper_hex(name[:24])


def is_backup_history_name(name: str) -> bool:
    """A segment name, ``.``, 8 hex digits (the start offset) and ``.backup``."""
    return (
        len(name) == 40
        and name[24] == "."
        and name.endswith(".backup")
        and _is_upper_hex(name[:24])
        and _is_upper_hex(name[25:33])
    )


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
        if not is_segment_name(name):
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
    return (
        is_segment_name(name)
        or is_history_name(name)
        or is_partial_name(name)
        or is_backup_history_name(name)
    )


def check_wal_file_name(name: str) -> str:
    if not is_wal_file_name(name):
        raise FormatError(
            f"{name!r} is not a WAL file name (expected a 24-hex-digit segment name, "
            "TTTTTTTT.history, a .partial or a .backup file)"
        )
    return name
