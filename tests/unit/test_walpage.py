"""Telling from a file's first WAL page which segment, of which size and cluster, it is.

Headers are built field by field as PostgreSQL lays out XLogLongPageHeaderData; the functions
under test are the real ones that wal-fetch, the prefetcher and the daemon rely on.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from walg.core.lsn import Segment
from walg.core.walpage import (
    LONG_HEADER,
    XLP_LONG_HEADER,
    foreign_segment_problem,
    named_segment_size,
    stated_segment_size,
    valid_segment_file,
)

MAGIC = 0xD10D  # PostgreSQL 15's
SYSID = 7_300_000_000_000_000_001
MIB = 1 << 20


def _head(
    pageaddr: int, seg_size: int, *, info: int = XLP_LONG_HEADER, sysid: int = SYSID
) -> bytes:
    return LONG_HEADER.pack(MAGIC, info, 1, pageaddr, 0, sysid, seg_size, 8192)


def _segment(path: Path, name: str, seg_size: int, sysid: int = SYSID) -> Path:
    segno = Segment.parse(name, seg_size).segno
    head = _head(segno * seg_size, seg_size, sysid=sysid)
    path.write_bytes(head + b"\0" * (seg_size - len(head)))
    return path


@pytest.mark.parametrize("size", [MIB, 16 * MIB, 64 * MIB, 1 << 30])
def test_power_of_two_sizes_from_1_mib_to_1_gib_are_stated(size: int) -> None:
    assert stated_segment_size(_head(0, size)) == size


@pytest.mark.parametrize("size", [3 * MIB, 24 * MIB, MIB // 2, 2 << 30])
def test_other_sizes_are_not_believed(size: int) -> None:
    # initdb allows only powers of two in range: anything else is a corrupt or foreign file.
    assert stated_segment_size(_head(0, size)) is None


def test_a_short_page_header_states_nothing() -> None:
    # Only a segment's first page has the long header with the segment size; a page whose
    # info lacks XLP_LONG_HEADER has no such field, whatever bytes follow.
    assert stated_segment_size(_head(0, 16 * MIB, info=0)) is None
    assert named_segment_size(_head(0, 16 * MIB, info=0), "000000010000000000000000") is None


def test_named_segment_size_believes_only_the_named_segments_header() -> None:
    name = "000000010000000000000003"
    assert named_segment_size(_head(3 * 16 * MIB, 16 * MIB), name) == 16 * MIB
    # A well-formed header of another segment (a copy under the wrong name) states nothing.
    assert named_segment_size(_head(4 * 16 * MIB, 16 * MIB), name) is None
    assert named_segment_size(_head(3 * 64 * MIB, 64 * MIB), name) == 64 * MIB


def test_another_clusters_segment_is_foreign(tmp_path: Path) -> None:
    name = "000000010000000000000002"
    path = _segment(tmp_path / name, name, MIB, sysid=SYSID + 1)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert foreign_segment_problem(fd, name) is None  # no system identifier to compare
        problem = foreign_segment_problem(fd, name, SYSID)
    finally:
        os.close(fd)
    assert problem is not None and "another database system" in problem
    assert not valid_segment_file(str(path), name, MIB, SYSID)
    assert valid_segment_file(str(path), name, MIB, SYSID + 1)
    assert valid_segment_file(str(path), name, None)


def test_a_fifo_under_a_segment_name_is_not_a_segment(tmp_path: Path) -> None:
    name = "000000010000000000000002"
    os.mkfifo(tmp_path / name)
    # Must return at once (the open is O_NONBLOCK) and say no, rather than wait for a writer.
    assert not valid_segment_file(str(tmp_path / name), name, MIB)


def test_a_whole_segment_of_another_size_is_valid_under_its_own_size(tmp_path: Path) -> None:
    name = "000000010000000000000005"
    path = _segment(tmp_path / name, name, MIB)
    assert valid_segment_file(str(path), name, MIB)
    assert valid_segment_file(str(path), name, None)
    assert not valid_segment_file(str(path), name, 16 * MIB)
