"""walg.core.gotime: RFC 3339 times as Go's encoding/json writes and reads them."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from walg.core.gotime import GoTime
from walg.errors import FormatError

NS = 1_000_000_000
# Instants whose local time (with any offset up to ±23:59) stays within years 1000..9999.
MIN_NS = int((datetime(1000, 1, 2, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())
MAX_NS = int(
    (datetime(9999, 12, 30, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()
)
RFC3339NANO_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d*[1-9])?(Z|[+-]\d{2}:\d{2})$"
)

instants = st.integers(min_value=MIN_NS * NS, max_value=MAX_NS * NS)
offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(lambda m: m * 60)


@given(ns=instants, offset=offsets)
def test_format_parse_round_trip(ns: int, offset: int) -> None:
    t = GoTime(ns, offset)
    text = t.format()
    assert RFC3339NANO_RE.match(text), text
    assert GoTime.parse(text) == t


@given(ns=instants, offset=offsets)
def test_parse_format_round_trip_of_canonical_text(ns: int, offset: int) -> None:
    text = GoTime(ns, offset).format()
    assert GoTime.parse(text).format() == text


@given(ns=instants)
def test_utc_and_offset_forms_are_the_same_instant(ns: int) -> None:
    t = GoTime(ns, 5 * 3600)
    assert GoTime.parse(t.format()).ns == GoTime.parse(t.utc().format()).ns == ns


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (NS, "1970-01-01T00:00:01Z"),
        (NS + 500_000_000, "1970-01-01T00:00:01.5Z"),
        (NS + 120_000_000, "1970-01-01T00:00:01.12Z"),
        (NS + 100, "1970-01-01T00:00:01.0000001Z"),
        (NS + 1, "1970-01-01T00:00:01.000000001Z"),
        (1_714_557_600_123_457_000, "2024-05-01T10:00:00.123457Z"),
        (1_714_557_607_000_001_000, "2024-05-01T10:00:07.000001Z"),
        (-1, "1969-12-31T23:59:59.999999999Z"),
    ],
)
def test_rfc3339nano_trims_trailing_zeros_like_go(ns: int, text: str) -> None:
    assert GoTime(ns).format() == text
    assert GoTime.parse(text) == GoTime(ns)


def test_positive_offset_keeps_nanoseconds_and_zone() -> None:
    text = "2020-08-21T19:09:52.966149937+05:00"
    t = GoTime.parse(text)
    assert t.offset == 5 * 3600
    assert t.ns == 1_598_018_992_966_149_937  # 14:09:52.966149937 UTC
    assert t.format() == text
    assert t.utc().format() == "2020-08-21T14:09:52.966149937Z"


def test_negative_offset_with_minutes() -> None:
    text = "2020-08-21T06:39:52.000000001-07:30"
    t = GoTime.parse(text)
    assert t.offset == -(7 * 3600 + 30 * 60)
    assert t.utc().format() == "2020-08-21T14:09:52.000000001Z"
    assert t.format() == text


def test_lower_case_z_and_offset_zero_format_as_z() -> None:
    assert GoTime.parse("2024-05-01T10:00:00z").format() == "2024-05-01T10:00:00Z"
    assert GoTime.parse("2024-05-01T10:00:00+00:00").format() == "2024-05-01T10:00:00Z"


def test_nanosecond_precision_is_not_lost() -> None:
    ns = 1_598_018_992_966_149_937
    assert GoTime.from_ns(ns).format() == "2020-08-21T14:09:52.966149937Z"
    assert GoTime.parse(GoTime.from_ns(ns).format()).ns == ns
    assert GoTime(ns) != GoTime(ns + 1)


def test_from_datetime_and_to_datetime() -> None:
    tz = timezone(timedelta(hours=-3))
    value = datetime(2024, 5, 1, 7, 0, 0, 123457, tzinfo=tz)
    t = GoTime.from_datetime(value)
    assert t.offset == -3 * 3600
    assert t.format() == "2024-05-01T07:00:00.123457-03:00"
    assert t.to_datetime() == value
    assert t.to_datetime().utcoffset() == timedelta(hours=-3)
    with pytest.raises(ValueError):
        GoTime.from_datetime(datetime(2024, 5, 1))


def test_format_seconds_drops_fraction_in_utc() -> None:
    t = GoTime.parse("2025-12-20T07:00:19.999999999+05:00")
    assert t.format_seconds() == "2025-12-20T02:00:19Z"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2024-05-01",
        "2024-05-01T10:00:00",  # no zone
        "2024-13-01T10:00:00Z",  # month 13
        "2024-02-30T10:00:00Z",
        "2024-05-01T10:00:00.1234567890Z",  # ten fractional digits
        "2024-05-01T10:00:00.Z",
        "2024-05-01T10:00:00+0500",
        "24-05-01T10:00:00Z",
        "not a time",
    ],
)
def test_parse_rejects_malformed_times(text: str) -> None:
    with pytest.raises(FormatError):
        GoTime.parse(text)


def test_go_zero_time_round_trips() -> None:
    zero = "0001-01-01T00:00:00Z"
    assert GoTime.parse(zero).format() == zero
    assert GoTime.parse("0999-12-31T23:59:59.5-01:30").format() == "0999-12-31T23:59:59.5-01:30"
