"""walg.core.lsn: LSN text form, WAL segment names and WAL file name recognition."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walg.core.lsn import (
    DEFAULT_SEGMENT_SIZE,
    Segment,
    check_wal_file_name,
    format_lsn,
    is_backup_history_name,
    is_history_name,
    is_partial_name,
    is_segment_name,
    is_wal_file_name,
    parse_lsn,
    segments_per_xlogid,
)
from walg.errors import FormatError

MIB = 1024 * 1024
# PostgreSQL allows any power of two from 1 MiB to 1 GiB.
SEGMENT_SIZES = [MIB << k for k in range(11)]

u64 = st.integers(min_value=0, max_value=2**64 - 1)
timelines = st.integers(min_value=1, max_value=0xFFFFFFFF)


# --- LSN text ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0/0", 0),
        ("0/3000028", 0x3000028),
        ("16/B374D848", 0x16_B374_D848),
        ("30A/6000028", 0x30A_0600_0028),
        ("FFFFFFFF/FFFFFFFF", 2**64 - 1),
    ],
)
def test_parse_and_format_known_lsns(text: str, value: int) -> None:
    assert parse_lsn(text) == value
    assert format_lsn(value) == text


def test_parse_accepts_lower_case_and_surrounding_space() -> None:
    assert parse_lsn(" 16/b374d848\n") == 0x16_B374_D848


@given(u64)
def test_lsn_round_trip(value: int) -> None:
    text = format_lsn(value)
    assert text == text.upper()
    assert parse_lsn(text) == value


@pytest.mark.parametrize("text", ["", "16B374D848", "zz/1", "1/zz", "/", "1/", "/1", "1/2/3"])
def test_parse_rejects_malformed_lsns(text: str) -> None:
    with pytest.raises(FormatError):
        parse_lsn(text)


@pytest.mark.parametrize("text", ["0/100000000", "-1/0", "100000000/0", "0x1/0"])
def test_parse_rejects_out_of_range_halves(text: str) -> None:
    with pytest.raises(FormatError):
        parse_lsn(text)


# --- segments ---------------------------------------------------------------------------------


def test_segments_per_xlogid() -> None:
    assert segments_per_xlogid(16 * MIB) == 256
    assert segments_per_xlogid(MIB) == 4096
    assert segments_per_xlogid(1024 * MIB) == 4


@pytest.mark.parametrize(
    ("segment", "size", "name"),
    [
        (Segment(1, 1), 16 * MIB, "000000010000000000000001"),
        (Segment(1, 0xFF), 16 * MIB, "0000000100000000000000FF"),
        (Segment(1, 0x100), 16 * MIB, "000000010000000100000000"),
        (Segment(2, 0x0A_FE), 16 * MIB, "000000020000000A000000FE"),
        (Segment(1, 0x1000), MIB, "000000010000000100000000"),
        (Segment(1, 0xFFF), MIB, "000000010000000000000FFF"),
        (Segment(1, 5), 1024 * MIB, "000000010000000100000001"),
    ],
)
def test_segment_names(segment: Segment, size: int, name: str) -> None:
    assert segment.name(size) == name
    assert Segment.parse(name, size) == segment


def test_default_segment_size_is_16_mib() -> None:
    assert DEFAULT_SEGMENT_SIZE == 16 * MIB
    assert Segment(1, 0x1_05).name() == "000000010000000100000005"


@given(
    timeline=timelines,
    size=st.sampled_from(SEGMENT_SIZES),
    data=st.data(),
)
def test_segment_name_parse_round_trip(timeline: int, size: int, data: st.DataObject) -> None:
    max_segno = (2**64 // size) - 1
    segno = data.draw(st.integers(min_value=0, max_value=max_segno))
    seg = Segment(timeline, segno)
    name = seg.name(size)
    assert len(name) == 24
    assert name == name.upper()
    assert is_wal_file_name(name)
    assert Segment.parse(name, size) == seg


@given(lsn=u64, size=st.sampled_from(SEGMENT_SIZES))
def test_containing_segment_holds_the_lsn(lsn: int, size: int) -> None:
    seg = Segment.containing(1, lsn, size)
    assert seg.segno * size <= lsn < (seg.segno + 1) * size


def test_parse_rejects_low_part_beyond_segments_per_xlogid() -> None:
    # With 16 MiB segments the low 8 hex digits never exceed 0xFF.
    with pytest.raises(FormatError):
        Segment.parse("000000010000000000000100", 16 * MIB)
    assert Segment.parse("000000010000000000000100", MIB) == Segment(1, 0x100)


@pytest.mark.parametrize(
    "name",
    ["00000001000000000000000", "0000000100000000000000001", "00000001000000000000000g", ""],
)
def test_segment_parse_rejects_bad_names(name: str) -> None:
    with pytest.raises(FormatError):
        Segment.parse(name)


def test_next_segment() -> None:
    assert Segment(1, 0xFF).next() == Segment(1, 0x100)
    assert Segment(1, 0xFF).next().name() == "000000010000000100000000"


@pytest.mark.parametrize(
    ("lsn", "segno"),
    [
        (0x3000000, 2),  # exactly at a boundary: the byte before is in the previous segment
        (0x3000001, 3),
        (0x3000028, 3),
        (0x2FFFFFF, 2),
        (0x1_0000_0000, 0xFF),  # crossing an xlogid boundary
        (0x1_0000_0028, 0x100),
    ],
)
def test_segment_before_at_boundaries(lsn: int, segno: int) -> None:
    assert Segment.before(1, lsn) == Segment(1, segno)


def test_segment_before_vs_containing_differ_only_at_boundaries() -> None:
    assert Segment.before(3, 0x5000000) == Segment(3, 4)
    assert Segment.containing(3, 0x5000000) == Segment(3, 5)
    assert Segment.before(3, 0x5000001) == Segment.containing(3, 0x5000001)
    assert Segment.before(1, 2 * MIB, MIB).name(MIB) == "000000010000000000000001"


@given(lsn=st.integers(min_value=1, max_value=2**64 - 1), size=st.sampled_from(SEGMENT_SIZES))
def test_segment_before_holds_the_previous_byte(lsn: int, size: int) -> None:
    seg = Segment.before(1, lsn, size)
    assert seg.segno * size <= lsn - 1 < (seg.segno + 1) * size


# --- WAL file names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "000000010000000A000000FE",
        "00000002.history",
        "000000010000000000000004.00000028.backup",
        "000000010000000000000007.partial",
        "FFFFFFFFFFFFFFFFFFFFFFFF",
    ],
)
def test_wal_file_names_accepted(name: str) -> None:
    assert is_wal_file_name(name)
    assert check_wal_file_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "000000010000000a000000fe",  # lower case
        "00000002.HISTORY",
        "0000000100000000000000010",  # 25 chars
        "00000001000000000000001",  # 23 chars
        "0000002.history",
        "000000010000000000000004.backup",
        "000000010000000000000004.0000028.backup",
        "00000001000000000000000G",
        "../000000010000000000000001",
        "wal/000000010000000000000001",
        "000000010000000000000001/",
        "/000000010000000000000001",
        "..",
        "",
        "000000010000000000000001.lz4",
        "000000010000000000000001.",
        " 000000010000000000000001",
        "000000010000000000000001_delta",
    ],
)
def test_bad_wal_file_names_rejected(name: str) -> None:
    assert not is_wal_file_name(name)
    with pytest.raises(FormatError):
        check_wal_file_name(name)


@pytest.mark.parametrize("name", ["000000010000000000000001\n", "00000002.history\n"])
def test_trailing_newline_is_not_a_wal_file_name(name: str) -> None:
    assert not is_wal_file_name(name)


# The name checks use string operations (they run in every archive_command call); these regular
# expressions say what PostgreSQL's names are, and the checks must agree with them exactly.
_NAME_PATTERNS = {
    "segment": r"[0-9A-F]{24}",
    "history": r"[0-9A-F]{8}\.history",
    "partial": r"[0-9A-F]{24}\.partial",
    "backup": r"[0-9A-F]{24}\.[0-9A-F]{8}\.backup",
}
_HEXISH = "0123456789ABCDEFabcdefG.\u0661\uff10"


_SAMPLES = [
    "00000001000000A2000000FF",
    "0000001F.history",
    "00000003000000000000000B.partial",
    "000000010000000000000002.00000028.backup",
]


def _neighbours(name: str) -> set[str]:
    """Every name one character away from ``name``: changed, inserted or removed."""
    out = {name}
    for at in range(len(name) + 1):
        out.add(name[:at] + name[at + 1 :])
        for char in _HEXISH:
            out.add(name[:at] + char + name[at + 1 :])
            out.add(name[:at] + char + name[at:])
    return out


def _checks_agree(name: str) -> None:
    checks = {
        "segment": is_segment_name,
        "history": is_history_name,
        "partial": is_partial_name,
        "backup": is_backup_history_name,
    }
    for kind, pattern in _NAME_PATTERNS.items():
        assert checks[kind](name) is bool(re.fullmatch(pattern, name)), (kind, name)
    assert is_wal_file_name(name) is any(re.fullmatch(p, name) for p in _NAME_PATTERNS.values())


def test_name_checks_agree_with_the_patterns_next_to_real_names() -> None:
    for sample in _SAMPLES:
        assert is_wal_file_name(sample)
        for name in _neighbours(sample):
            _checks_agree(name)


@settings(max_examples=1000)
@given(st.text(alphabet=_HEXISH, max_size=42) | st.text(max_size=42))
def test_name_checks_agree_with_the_patterns(name: str) -> None:
    _checks_agree(name)
