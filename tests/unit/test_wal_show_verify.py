"""wal-show and wal-verify: timelines, gaps, history, backups, segment statuses, output shapes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from countingstorage import CountingStorage
from loglines import undated
from walg.cli.context import Context
from walg.cli.main import build_parser, main
from walg.cli.wal_show import Number, pretty_table
from walg.core import naming
from walg.core.gotime import GoTime
from walg.core.lsn import DEFAULT_SEGMENT_SIZE, Segment
from walg.core.metadata import BackupMetadata, Sentinel
from walg.errors import BackupNotFound, IntegrityError, UsageError
from walg.ops.pipeline import upload
from walg.ops.wal_show import (
    STATUS_LOST_SEGMENTS,
    STATUS_OK,
    segments_from_names,
    timelines_from_names,
    wal_show,
)
from walg.ops.wal_verify import (
    CheckStatus,
    ClusterPosition,
    IntegrityResult,
    SegmentStatus,
    verify_integrity,
    verify_timeline,
    wal_verify,
)
from walg.settings import load as load_settings
from walg.storage.base import Storage
from walg.storage.file import FileStorage
from walg.storage.memory import MemoryStorage
from walg.streams.compression import codec_for_method

SEG = DEFAULT_SEGMENT_SIZE


def name(tli: int, segno: int) -> str:
    return Segment(tli, segno).name()


def put_wal(storage: Storage, file_name: str, data: bytes = b"wal", method: str = "lz4") -> str:
    codec = codec_for_method(method)
    key = naming.wal_key(file_name, codec.extension)
    with upload(storage, key, codec) as up:
        up.writer.write(data)
    return key


def put_segments(storage: Storage, tli: int, segnos: range | list[int]) -> None:
    for segno in segnos:
        put_wal(storage, name(tli, segno))


def put_history(storage: Storage, tli: int, switches: list[tuple[int, str]], method: str) -> None:
    text = "".join(f"{parent}\t{lsn}\tno recovery target specified\n" for parent, lsn in switches)
    put_wal(storage, f"{tli:08X}.history", text.encode(), method)


def put_backup(
    storage: Storage,
    tli: int,
    start_lsn: int,
    finish_lsn: int,
    *,
    permanent: bool = False,
    metadata: bool = True,
    start_time: int = 1_700_000_000,
    system: int = 7000000000000000001,
) -> str:
    backup = naming.backup_name(Segment.containing(tli, start_lsn).name())
    if metadata:
        meta = BackupMetadata(
            start_time=GoTime(start_time * 10**9),
            finish_time=GoTime((start_time + 60) * 10**9),
            hostname="db1",
            data_dir="/var/lib/postgresql/15/main",
            pg_version=150004,
            start_lsn=start_lsn,
            finish_lsn=finish_lsn,
            is_permanent=permanent,
            system_identifier=system,
            uncompressed_size=100,
            compressed_size=50,
        )
        storage.put_bytes(naming.metadata_key(backup), meta.dumps())
    sentinel = Sentinel(
        lsn=start_lsn, finish_lsn=finish_lsn, pg_version=150004, is_permanent=permanent
    )
    storage.put_bytes(naming.sentinel_key(backup), sentinel.dumps())
    return backup


def statuses(result: IntegrityResult) -> dict[str, SegmentStatus]:
    """Segment name → status, expanded from the runs."""
    out = {}
    for run in result.runs:
        low = Segment.parse(run.start_segment)
        high = Segment.parse(run.end_segment)
        assert low.timeline == high.timeline == run.timeline
        assert high.segno - low.segno + 1 == run.segments_count
        for segno in range(low.segno, high.segno + 1):
            out[name(run.timeline, segno)] = run.status
    return out


def at(tli: int, segno: int, offset: int = 0x100) -> ClusterPosition:
    """A cluster writing segment ``segno`` of ``tli``."""
    return ClusterPosition(tli, segno * SEG + offset)


# --- names -------------------------------------------------------------------------------------


def test_segment_names_strip_one_extension_and_skip_other_files() -> None:
    names = [
        name(1, 1) + ".lz4",
        name(1, 2) + ".",  # old uncompressed layout
        name(1, 3),  # current uncompressed layout
        name(1, 4) + ".br",
        name(1, 5) + ".partial.lz4",
        name(1, 6) + ".00000028.backup.lz4",
        name(1, 7) + ".json",  # per-segment upload metadata is not the segment
        name(1, 8)[:23] + ".json",
        name(1, 9) + "_delta.lz4",
        "00000002.history.lz4",
        "garbage.lz4",
        name(1, 10).lower() + ".lz4",
        name(1, 11) + ".partial",  # uncompressed partial: not the segment once ".partial" goes
        name(1, 12) + ".partial.",  # old uncompressed layout of a partial
    ]
    assert segments_from_names(names) == {Segment(1, n) for n in (1, 2, 3, 4)}


def test_highest_timeline_counts_history_files_in_every_layout() -> None:
    assert timelines_from_names([]) == 0
    assert timelines_from_names(["junk", name(1, 1) + ".json"]) == 0
    assert timelines_from_names([name(2, 1) + ".lz4", name(1, 9)]) == 2
    assert timelines_from_names([name(2, 1) + ".lz4", "00000003.history.lz4"]) == 3
    assert timelines_from_names([name(2, 1), "0000000A.history"]) == 10
    assert timelines_from_names([name(2, 1), "0000000B.history."]) == 11
    assert timelines_from_names([name(5, 1) + ".partial.lz4"]) == 0
    assert timelines_from_names([name(5, 1) + ".partial", name(1, 1)]) == 1


# --- wal-show ----------------------------------------------------------------------------------


def test_wal_show_empty_storage(storage: Storage) -> None:
    result = wal_show(storage)
    assert result.timelines == ()


def test_wal_show_finds_gaps_highest_first(storage: Storage) -> None:
    put_segments(storage, 1, [2, 3, 6, 7, 9])
    (info,) = wal_show(storage).timelines
    assert info.id == 1
    assert (info.parent_id, info.switch_point_lsn) == (0, 0)
    assert info.start_segment == name(1, 2)
    assert info.end_segment == name(1, 9)
    assert info.segments_count == 5
    assert info.segment_range_size == 8
    assert tuple(info.missing_segments()) == (name(1, 8), name(1, 5), name(1, 4))
    assert info.status == STATUS_LOST_SEGMENTS
    assert info.backups == ()


def test_wal_show_single_segment_is_ok(storage: Storage) -> None:
    put_segments(storage, 1, [0x1FF])
    (info,) = wal_show(storage).timelines
    assert tuple(info.missing_segments()) == ()
    assert info.status == STATUS_OK
    assert info.segment_range_size == 1
    assert info.start_segment == info.end_segment == "0000000100000001000000FF"


def test_wal_show_timelines_with_history_in_any_compression(storage: Storage) -> None:
    put_segments(storage, 1, range(1, 6))
    put_segments(storage, 2, range(5, 9))
    put_segments(storage, 3, range(8, 12))
    put_history(storage, 2, [(1, "0/5000000")], "lz4")
    put_history(storage, 3, [(1, "0/5000000"), (2, "0/8800028")], "none")
    # Not segments of the listing: a sub-folder, a partial, a backup history file.
    storage.put_bytes("wal_005/sub/" + name(1, 20) + ".lz4", b"x")
    put_wal(storage, name(1, 5) + ".partial")
    put_wal(storage, name(2, 5) + ".00000028.backup")

    timelines = wal_show(storage).timelines
    assert [t.id for t in timelines] == [1, 2, 3]
    one, two, three = timelines
    assert (one.parent_id, one.switch_point_lsn) == (0, 0)
    assert (two.parent_id, two.switch_point_lsn) == (1, 0x5000000)
    assert (three.parent_id, three.switch_point_lsn) == (2, 0x8800028)
    assert [t.status for t in timelines] == [STATUS_OK] * 3
    assert one.end_segment == name(1, 5)


def test_wal_show_unusable_history_costs_only_its_timeline(storage: Storage) -> None:
    put_segments(storage, 1, range(1, 4))
    put_segments(storage, 2, range(3, 6))
    put_segments(storage, 3, range(5, 8))
    put_segments(storage, 4, range(7, 9))
    # Timeline 2: text that is no history; 3: an lz4 object that does not decompress; 4: sound.
    put_wal(storage, "00000002.history", b"this is not a history\n", "none")
    storage.put_bytes("wal_005/00000003.history.lz4", b"not an lz4 frame")
    put_history(storage, 4, [(1, "0/3000000"), (2, "0/5000000"), (3, "0/7000000")], "lz4")

    result = wal_show(storage)
    assert [(t.id, t.parent_id, t.switch_point_lsn) for t in result.timelines] == [
        (1, 0, 0),
        (2, 0, 0),
        (3, 0, 0),
        (4, 3, 0x7000000),
    ]
    assert [t.segments_count for t in result.timelines] == [3, 3, 3, 2]
    two, three = result.history_errors
    assert two.startswith("timeline 2: ") and "00000002.history" in two
    assert three.startswith("timeline 3: ") and "00000003.history.lz4" in three


def test_bare_partial_object_is_not_the_segment(storage: Storage) -> None:
    # WALG_COMPRESSION_METHOD=none stores the partial as "<segment>.partial", no extension.
    put_segments(storage, 1, [*range(1, 5), *range(6, 10)])
    put_wal(storage, name(1, 5) + ".partial", method="none")
    assert storage.exists("wal_005/" + name(1, 5) + ".partial")

    (info,) = wal_show(storage).timelines
    assert tuple(info.missing_segments()) == (name(1, 5),)
    assert info.status == STATUS_LOST_SEGMENTS

    result = verify_integrity(storage, at(1, 10), upload_concurrency=0)
    assert result.status is CheckStatus.FAILURE
    assert statuses(result)[name(1, 5)] is SegmentStatus.MISSING_LOST


def test_wal_verify_refuses_an_unusable_history(storage: Storage) -> None:
    put_segments(storage, 1, range(1, 6))
    put_segments(storage, 2, range(5, 9))
    put_wal(storage, "00000002.history", b"1\t0/5000000\tok\ngarbage\n", "none")
    with pytest.raises(IntegrityError, match=r"history of timeline 2 cannot be used") as info:
        verify_integrity(storage, at(2, 9))
    assert "00000002.history" in str(info.value)
    assert "garbage" in str(info.value)
    # The timeline check needs no history and still answers.
    assert verify_timeline(storage, at(2, 9)).status is CheckStatus.OK


def test_wal_show_attaches_backups_inside_the_timeline_range(storage: Storage) -> None:
    put_segments(storage, 1, range(1, 11))
    put_segments(storage, 2, range(10, 16))
    put_history(storage, 2, [(1, "0/A000000")], "lz4")
    inside1 = put_backup(storage, 1, 2 * SEG + 0x28, 3 * SEG + 0x100, start_time=1)
    inside2 = put_backup(storage, 2, 12 * SEG + 0x28, 12 * SEG + 0x200, start_time=2)
    # Finishes past the end of timeline 1's range: belongs to no timeline.
    put_backup(storage, 1, 9 * SEG + 0x28, 11 * SEG, start_time=3)
    no_meta = put_backup(storage, 2, 14 * SEG + 0x28, 14 * SEG + 0x100, metadata=False)

    result = wal_show(storage)
    one, two = result.timelines
    assert [b.ref.name for b in one.backups] == [inside1]
    assert [b.ref.name for b in two.backups] == [inside2]
    assert result.skipped_backups == (no_meta,)

    without = wal_show(storage, with_backups=False)
    assert [t.backups for t in without.timelines] == [(), ()]
    assert without.skipped_backups == ()


# --- wal-verify: statuses --------------------------------------------------------------------


def test_all_found_is_ok_and_the_current_segment_is_not_checked(storage: Storage) -> None:
    put_segments(storage, 1, range(1, 21))
    result = verify_integrity(storage, at(1, 21), upload_concurrency=3)
    assert result.status is CheckStatus.OK
    assert len(result.runs) == 1
    run = result.runs[0]
    assert (run.start_segment, run.end_segment, run.segments_count) == (
        name(1, 1),
        name(1, 20),
        20,
    )
    assert result.current_segment == name(1, 21)
    assert result.earliest_backup is None
    # Segment 21 is being written: its absence is not reported.
    assert name(1, 21) not in statuses(result)


def test_lsn_on_a_segment_boundary_belongs_to_the_previous_segment(storage: Storage) -> None:
    put_segments(storage, 1, range(1, 20))
    result = verify_integrity(storage, ClusterPosition(1, 21 * SEG), upload_concurrency=0)
    assert result.current_segment == name(1, 20)
    assert result.status is CheckStatus.OK
    assert result.runs[-1].end_segment == name(1, 19)


def test_uploading_window_then_lost(storage: Storage) -> None:
    put_segments(storage, 1, range(1, 16))  # 16..20 missing
    result = verify_integrity(storage, at(1, 21), max_delayed=0, upload_concurrency=3)
    got = statuses(result)
    assert [got[name(1, n)] for n in (20, 19, 18)] == [SegmentStatus.MISSING_UPLOADING] * 3
    assert [got[name(1, n)] for n in (17, 16)] == [SegmentStatus.MISSING_LOST] * 2
    assert got[name(1, 15)] is SegmentStatus.FOUND
    assert result.status is CheckStatus.FAILURE
    assert [(r.status, r.segments_count) for r in result.runs] == [
        (SegmentStatus.FOUND, 15),
        (SegmentStatus.MISSING_LOST, 2),
        (SegmentStatus.MISSING_UPLOADING, 3),
    ]


def test_missing_within_uploading_window_only_warns(storage: Storage) -> None:
    put_segments(storage, 1, range(1, 18))  # 18..20 missing
    result = verify_integrity(storage, at(1, 21), upload_concurrency=3)
    assert result.status is CheckStatus.WARNING
    assert result.runs[-1].status is SegmentStatus.MISSING_UPLOADING
    assert result.runs[-1].segments_count == 3


def test_delayed_window_then_uploading_then_lost(storage: Storage) -> None:
    put_segments(storage, 1, range(1, 14))  # 14..20 missing
    result = verify_integrity(storage, at(1, 21), max_delayed=2, upload_concurrency=3)
    got = statuses(result)
    assert [got[name(1, n)] for n in (20, 19)] == [SegmentStatus.MISSING_DELAYED] * 2
    assert [got[name(1, n)] for n in (18, 17, 16)] == [SegmentStatus.MISSING_UPLOADING] * 3
    assert [got[name(1, n)] for n in (15, 14)] == [SegmentStatus.MISSING_LOST] * 2
    assert result.status is CheckStatus.FAILURE


def test_delayed_window_ends_at_the_first_found_segment(storage: Storage) -> None:
    put_segments(storage, 1, [*range(1, 15), 19])  # 20 and 15..18 missing
    result = verify_integrity(storage, at(1, 21), max_delayed=5, upload_concurrency=3)
    got = statuses(result)
    assert got[name(1, 20)] is SegmentStatus.MISSING_DELAYED
    assert got[name(1, 19)] is SegmentStatus.FOUND
    # The uploading window starts right after the found segment, whatever the delayed limit.
    assert [got[name(1, n)] for n in (18, 17, 16)] == [SegmentStatus.MISSING_UPLOADING] * 3
    assert got[name(1, 15)] is SegmentStatus.MISSING_LOST
    assert result.status is CheckStatus.FAILURE


def test_only_delayed_is_a_warning(storage: Storage) -> None:
    put_segments(storage, 1, range(1, 19))
    result = verify_integrity(storage, at(1, 21), max_delayed=2, upload_concurrency=0)
    assert result.status is CheckStatus.WARNING
    assert statuses(result)[name(1, 20)] is SegmentStatus.MISSING_DELAYED
    assert statuses(result)[name(1, 19)] is SegmentStatus.MISSING_DELAYED


def test_gap_far_below_the_current_segment_is_lost(storage: Storage) -> None:
    put_segments(storage, 1, [*range(1, 5), *range(6, 40)])
    result = verify_integrity(storage, at(1, 40), max_delayed=3, upload_concurrency=16)
    assert result.status is CheckStatus.FAILURE
    lost = [r for r in result.runs if r.status is SegmentStatus.MISSING_LOST]
    assert [(r.start_segment, r.end_segment) for r in lost] == [(name(1, 5), name(1, 5))]


# --- wal-verify: where the walk starts and stops --------------------------------------------


def test_walk_stops_at_the_oldest_backup_start(storage: Storage) -> None:
    put_segments(storage, 1, range(10, 21))  # nothing below 10
    backup = put_backup(storage, 1, 10 * SEG + 0x28, 11 * SEG)
    put_backup(storage, 1, 15 * SEG + 0x28, 16 * SEG)
    result = verify_integrity(storage, at(1, 21), upload_concurrency=3)
    assert result.earliest_backup == backup
    assert result.stop_segno == 10
    assert result.status is CheckStatus.OK
    assert result.runs[0].start_segment == name(1, 10)


def test_permanent_backups_do_not_bound_the_walk_unless_named(storage: Storage) -> None:
    put_segments(storage, 1, range(10, 21))
    permanent = put_backup(storage, 1, 5 * SEG + 0x28, 6 * SEG, permanent=True)
    regular = put_backup(storage, 1, 12 * SEG + 0x28, 13 * SEG)
    result = verify_integrity(storage, at(1, 21), upload_concurrency=0)
    assert result.earliest_backup == regular
    assert result.status is CheckStatus.OK

    named = verify_integrity(storage, at(1, 21), upload_concurrency=0, backup_name=permanent)
    assert named.earliest_backup == permanent
    assert named.status is CheckStatus.FAILURE  # 5..9 are missing
    with pytest.raises(BackupNotFound):
        verify_integrity(storage, at(1, 21), backup_name="base_000000010000000000000099")


def test_another_database_system_s_backups_never_start_the_walk(storage: Storage) -> None:
    """A pg_upgrade's old system archived 2..4 and backed up at 2; the new one, whose WAL
    names continue, archived 10..20 and backed up at 12."""
    old, new = 7000000000000000001, 7000000000000000002
    put_segments(storage, 1, range(2, 5))
    old_backup = put_backup(storage, 1, 2 * SEG + 0x28, 3 * SEG, system=old)

    def on_new(**kwargs: Any) -> IntegrityResult:
        return verify_integrity(
            storage, ClusterPosition(1, 21 * SEG + 0x100, system_identifier=new), **kwargs
        )

    put_segments(storage, 1, range(10, 21))
    # Before the new system's first backup: nothing here restores it.
    result = on_new(upload_concurrency=0)
    assert result.earliest_backup is None
    assert result.status is CheckStatus.FAILURE
    assert any("another database system" in p and str(new) in p for p in result.problems)
    with pytest.raises(UsageError):
        on_new(backup_name=old_backup)

    new_backup = put_backup(storage, 1, 12 * SEG + 0x28, 13 * SEG, system=new)
    result = on_new(upload_concurrency=0)
    assert result.earliest_backup == new_backup
    assert result.status is CheckStatus.OK and not result.problems
    # A position given by hand has no system: WAL-G's walk, from the oldest backup.
    by_hand = verify_integrity(storage, at(1, 21), upload_concurrency=0)
    assert by_hand.earliest_backup == old_backup
    assert by_hand.status is CheckStatus.FAILURE  # 5..9 are missing


def test_permanence_from_the_sentinel_when_metadata_is_missing(storage: Storage) -> None:
    put_segments(storage, 1, range(10, 21))
    put_backup(storage, 1, 5 * SEG, 6 * SEG, permanent=True, metadata=False)
    regular = put_backup(storage, 1, 10 * SEG, 11 * SEG, metadata=False)
    assert verify_integrity(storage, at(1, 21)).earliest_backup == regular


def test_without_backups_leading_lost_segments_only_warn(storage: Storage) -> None:
    put_segments(storage, 1, range(5, 21))  # archiving began at segment 5
    result = verify_integrity(storage, at(1, 21), upload_concurrency=2)
    assert result.stop_segno == 1
    assert result.runs[0].status is SegmentStatus.MISSING_LOST
    assert result.runs[0].start_segment == name(1, 1)
    assert result.status is CheckStatus.WARNING

    storage.delete([naming.wal_key(name(1, 10), "lz4")])
    assert verify_integrity(storage, at(1, 21), upload_concurrency=2).status is (
        CheckStatus.FAILURE
    )


def test_backup_at_the_current_segment_checks_nothing(storage: Storage) -> None:
    put_backup(storage, 1, 21 * SEG + 0x28, 21 * SEG + 0x1000)
    result = verify_integrity(storage, at(1, 21))
    assert result.runs == ()
    assert result.status is CheckStatus.OK


# --- wal-verify: timelines -------------------------------------------------------------------


def test_walk_follows_the_current_timeline_history(storage: Storage) -> None:
    put_segments(storage, 1, range(1, 7))  # timeline 1 went on to segment 6 (not ours)
    put_segments(storage, 2, range(5, 9))
    put_segments(storage, 3, range(8, 12))
    put_history(storage, 2, [(1, "0/5800000")], "lz4")
    put_history(storage, 3, [(1, "0/5800000"), (2, "0/8000000")], "none")
    backup = put_backup(storage, 1, 2 * SEG + 0x28, 3 * SEG)

    result = verify_integrity(storage, at(3, 12), upload_concurrency=0)
    assert result.earliest_backup == backup
    assert result.status is CheckStatus.OK
    assert [(r.timeline, r.start_segment, r.end_segment) for r in result.runs] == [
        (1, name(1, 2), name(1, 4)),
        (2, name(2, 5), name(2, 7)),
        (3, name(3, 8), name(3, 11)),
    ]

    storage.delete([naming.wal_key(name(2, 6), "lz4")])
    broken = verify_integrity(storage, at(3, 12), upload_concurrency=0)
    assert broken.status is CheckStatus.FAILURE
    assert statuses(broken)[name(2, 6)] is SegmentStatus.MISSING_LOST


def test_backups_outside_the_current_history_are_not_used(storage: Storage) -> None:
    put_segments(storage, 1, range(1, 6))
    put_segments(storage, 2, range(5, 12))
    put_history(storage, 2, [(1, "0/5000000")], "lz4")
    # On timeline 1 but after timeline 1 ended at segment 5: not on our history.
    put_backup(storage, 1, 7 * SEG + 0x28, 8 * SEG)
    # On timeline 2 but before timeline 2 began.
    put_backup(storage, 2, 3 * SEG + 0x28, 3 * SEG + 0x100)
    # On timeline 4, neither current nor an ancestor.
    put_backup(storage, 4, 2 * SEG + 0x28, 2 * SEG + 0x100)
    good = put_backup(storage, 1, 4 * SEG + 0x28, 4 * SEG + 0x100)
    result = verify_integrity(storage, at(2, 12), upload_concurrency=0)
    assert result.earliest_backup == good
    assert result.status is CheckStatus.OK


def test_a_backup_of_a_newer_timeline_does_not_start_the_walk_of_timeline_1(
    storage: Storage,
) -> None:
    """Timeline 1 has no history file to rule anything out: a backup of timeline 2 (a
    promoted clone archiving here) cannot restore to timeline 1's position."""
    put_segments(storage, 1, range(1, 8))
    put_backup(storage, 2, 2 * SEG + 0x28, 2 * SEG + 0x100)
    good = put_backup(storage, 1, 4 * SEG + 0x28, 4 * SEG + 0x100)
    result = verify_integrity(storage, at(1, 8), upload_concurrency=0)
    assert result.earliest_backup == good
    assert result.status is CheckStatus.OK


def test_a_backup_of_a_sibling_timeline_does_not_start_the_walk(storage: Storage) -> None:
    """Timelines 2 and 3 both branched off timeline 1 (two restores of it): a timeline-2
    backup is older than the current timeline 3 but not in its history."""
    put_segments(storage, 1, range(1, 6))
    put_segments(storage, 2, range(4, 8))
    put_segments(storage, 3, range(5, 10))
    put_history(storage, 2, [(1, "0/4000000")], "lz4")
    put_history(storage, 3, [(1, "0/5000000")], "lz4")
    put_backup(storage, 2, 4 * SEG + 0x28, 4 * SEG + 0x100)
    good = put_backup(storage, 1, 4 * SEG + 0x28, 4 * SEG + 0x100)
    result = verify_integrity(storage, at(3, 10), upload_concurrency=0)
    assert result.earliest_backup == good
    assert result.status is CheckStatus.OK


def test_a_backup_past_an_earlier_later_switch_point_is_not_used(storage: Storage) -> None:
    """Timeline 3 came of a restore that followed timeline 2 but stopped at 0/3000000 on
    timeline 1, before 2 branched off at 0/5000000; PostgreSQL wrote 3's history as 2's plus
    that earlier point. Following it, PostgreSQL leaves timeline 1 at 0/3000000: a backup
    taken on timeline 1 at segment 4 cannot be restored onto timeline 3 (the server refuses
    it as "not a child of this server's history"). WAL-G takes timeline 1's own switch point
    (0/5000000) and vouches for it."""
    put_segments(storage, 1, range(1, 6))
    put_segments(storage, 2, range(5, 9))
    put_segments(storage, 3, range(3, 11))
    put_history(storage, 2, [(1, "0/5000000")], "lz4")
    put_history(storage, 3, [(1, "0/5000000"), (2, "0/3000000")], "lz4")
    after_fork = put_backup(storage, 1, 4 * SEG + 0x28, 4 * SEG + 0x100)
    put_backup(storage, 2, 6 * SEG + 0x28, 6 * SEG + 0x100)  # tl 2 is not on 3's path
    put_backup(storage, 4, 7 * SEG + 0x28, 7 * SEG + 0x100)  # newer than timeline 3
    # For timeline 2, which left timeline 1 at 0/5000000, the backup at segment 4 is good.
    on_two = verify_integrity(storage, at(2, 9), upload_concurrency=0)
    assert on_two.earliest_backup == after_fork
    assert on_two.status is CheckStatus.OK
    only_wrong = verify_integrity(storage, at(3, 11), upload_concurrency=0)
    assert only_wrong.earliest_backup is None
    assert only_wrong.status is CheckStatus.FAILURE
    assert "none of the 3 backups" in only_wrong.problems[0]
    with pytest.raises(UsageError):
        verify_integrity(
            storage,
            at(3, 11),
            upload_concurrency=0,
            backup_name=naming.backup_name(name(1, 4)),
        )

    good = put_backup(storage, 1, 2 * SEG + 0x28, 2 * SEG + 0x100)
    result = verify_integrity(storage, at(3, 11), upload_concurrency=0)
    assert result.earliest_backup == good
    assert result.status is CheckStatus.OK
    assert [(r.timeline, r.start_segment, r.end_segment) for r in result.runs] == [
        (1, name(1, 2), name(1, 2)),
        (3, name(3, 3), name(3, 10)),
    ]


def test_missing_history_keeps_the_walk_on_the_current_timeline(storage: Storage) -> None:
    put_segments(storage, 1, range(1, 5))
    put_segments(storage, 2, range(5, 10))
    put_backup(storage, 1, 2 * SEG, 2 * SEG + 0x100)
    result = verify_integrity(storage, at(2, 10), upload_concurrency=0)
    assert {r.timeline for r in result.runs} == {2}
    assert result.status is CheckStatus.FAILURE


def test_timeline_check(storage: Storage) -> None:
    assert verify_timeline(storage, at(1, 5)).status is CheckStatus.WARNING
    put_segments(storage, 1, range(1, 5))
    assert verify_timeline(storage, at(1, 5)).status is CheckStatus.OK
    put_history(storage, 2, [(1, "0/5000000")], "lz4")
    result = verify_timeline(storage, at(1, 5))
    assert result.status is CheckStatus.FAILURE
    assert (result.current_timeline, result.highest_storage_timeline) == (1, 2)
    assert verify_timeline(storage, at(3, 5)).status is CheckStatus.FAILURE
    assert verify_timeline(storage, at(2, 5)).status is CheckStatus.OK


def test_wal_verify_runs_the_named_checks(storage: Storage) -> None:
    put_segments(storage, 1, range(1, 5))
    both = wal_verify(storage, [], at(1, 5))
    assert both.integrity is not None and both.timeline is not None
    only = wal_verify(storage, ["timeline"], at(1, 5))
    assert only.integrity is None and only.timeline is not None
    assert not only.failed
    with pytest.raises(UsageError):
        wal_verify(storage, ["everything"], at(1, 5))


# --- rendering ---------------------------------------------------------------------------------


def test_pretty_table_aligns_numbers_right_like_go_pretty() -> None:
    text = pretty_table(["TLI", "Start", "Status"], [[1, "abc", Number("FOUND")], [12, "d", "X"]])
    assert text == (
        "+-----+-------+--------+\n"
        "| TLI | START | STATUS |\n"
        "+-----+-------+--------+\n"
        "|   1 | abc   | FOUND  |\n"
        "|  12 | d     | X      |\n"
        "+-----+-------+--------+\n"
    )
    assert pretty_table(["a", "bb"], []) == "+---+----+\n| A | BB |\n+---+----+\n"


# --- the commands ------------------------------------------------------------------------------


@pytest.fixture
def store(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> FileStorage:
    monkeypatch.setenv("WALG_FILE_PREFIX", str(clean_env / "store"))
    (clean_env / "store").mkdir()
    return FileStorage(clean_env / "store")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_wal_show_table(store: FileStorage, capsys: pytest.CaptureFixture[str]) -> None:
    put_segments(store, 1, [1, 2, 4])
    put_segments(store, 2, [4, 5])
    put_history(store, 2, [(1, "0/4000000")], "lz4")
    put_backup(store, 1, 1 * SEG + 0x28, 2 * SEG)
    code, out, _ = run_cli(capsys, "wal-show")
    assert code == 0
    assert out == (
        "+-----+------------+-----------------+--------------------------+"
        "--------------------------+---------------+----------------+---------------+"
        "---------------+\n"
        "| TLI | PARENT TLI | SWITCHPOINT LSN | START SEGMENT            | END SEGMENT"
        "              | SEGMENT RANGE | SEGMENTS COUNT | STATUS        | BACKUPS COUNT |\n"
        "+-----+------------+-----------------+--------------------------+"
        "--------------------------+---------------+----------------+---------------+"
        "---------------+\n"
        "|   1 |          0 |             0/0 | 000000010000000000000001 | "
        "000000010000000000000004 |             4 |              3 | LOST_SEGMENTS |"
        "             1 |\n"
        "|   2 |          1 |       0/4000000 | 000000020000000000000004 | "
        "000000020000000000000005 |             2 |              2 | OK            |"
        "             0 |\n"
        "+-----+------------+-----------------+--------------------------+"
        "--------------------------+---------------+----------------+---------------+"
        "---------------+\n"
    )
    code, out, _ = run_cli(capsys, "wal-show", "--without-backups")
    assert "BACKUPS COUNT" not in out
    assert out.count("\n") == 6


def test_wal_show_detailed_json(store: FileStorage, capsys: pytest.CaptureFixture[str]) -> None:
    put_segments(store, 1, [1, 2, 4])
    put_segments(store, 2, [4, 5])
    put_history(store, 2, [(1, "0/4000000")], "lz4")
    backup = put_backup(store, 1, 1 * SEG + 0x28, 2 * SEG)
    code, out, _ = run_cli(capsys, "wal-show", "--detailed-json")
    assert code == 0
    assert out.endswith("\n") and out.count("\n") == 1
    assert '"id":1,"parent_id":0' in out  # compact, as Go's json.Marshal
    doc = json.loads(out)
    assert [list(t) for t in doc] == [
        [
            "id",
            "parent_id",
            "switch_point_lsn",
            "start_segment",
            "end_segment",
            "segments_count",
            "missing_segments",
            "backups",
            "segment_range_size",
            "status",
        ],
        [
            "id",
            "parent_id",
            "switch_point_lsn",
            "start_segment",
            "end_segment",
            "segments_count",
            "missing_segments",
            "segment_range_size",
            "status",
        ],
    ]
    one, two = doc
    assert one["missing_segments"] == [name(1, 3)]
    assert one["status"] == "LOST_SEGMENTS"
    assert one["segment_range_size"] == 4
    assert two["switch_point_lsn"] == 0x4000000
    assert two["parent_id"] == 1
    assert two["missing_segments"] == []
    (b,) = one["backups"]
    assert b["backup_name"] == backup
    assert b["wal_file_name"] == name(1, 1)
    assert b["storage_name"] == "default"
    assert b["start_lsn"] == SEG + 0x28 and b["finish_lsn"] == 2 * SEG
    assert b["is_permanent"] is False
    assert b["hostname"] == "db1"

    code, out2, _ = run_cli(capsys, "wal-show", "--json", "--without-backups")
    assert all("backups" not in t for t in json.loads(out2))


def test_wal_show_empty_json(store: FileStorage, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "wal-show", "--detailed-json")[:2] == (0, "[]\n")


def test_wal_show_warns_about_an_unusable_history_and_shows_the_rest(
    store: FileStorage, capsys: pytest.CaptureFixture[str]
) -> None:
    put_segments(store, 1, [1, 2])
    put_segments(store, 2, [2, 3])
    put_wal(store, "00000002.history", b"no history here\n", "none")
    code, out, err = run_cli(capsys, "wal-show", "--detailed-json", "--without-backups")
    assert code == 0
    doc = json.loads(out)
    assert [(t["id"], t["parent_id"], t["switch_point_lsn"]) for t in doc] == [(1, 0, 0), (2, 0, 0)]
    warnings = [line for line in err.splitlines() if "00000002.history" in line]
    assert len(warnings) == 1
    assert "timeline 2" in warnings[0] and "without parent timeline" in warnings[0]

    code, out, _ = run_cli(capsys, "wal-show")
    assert code == 0
    assert "| 000000020000000000000002 |" in out


def test_wal_verify_cli_refuses_an_unusable_history(
    store: FileStorage, capsys: pytest.CaptureFixture[str]
) -> None:
    put_segments(store, 1, range(1, 6))
    put_segments(store, 2, range(5, 9))
    put_wal(store, "00000002.history", b"no history here\n", "none")
    code, out, err = run_cli(capsys, "wal-verify", "--timeline", "2", "--lsn", "0/9000100")
    assert code == 1
    assert out == ""
    assert "cannot check integrity: the history of timeline 2 cannot be used" in err


def test_wal_verify_plain_output(store: FileStorage, capsys: pytest.CaptureFixture[str]) -> None:
    put_segments(store, 1, range(1, 10))
    put_backup(store, 1, 2 * SEG + 0x28, 3 * SEG)
    code, out, err = run_cli(capsys, "wal-verify", "--timeline", "1", "--lsn", "0/A000100")
    assert code == 0
    assert out == (
        "[wal-verify] integrity check status: OK\n"
        "[wal-verify] integrity check details:\n"
        "+-----+--------------------------+--------------------------+----------------+--------+\n"
        "| TLI | START                    | END                      | SEGMENTS COUNT | STATUS |\n"
        "+-----+--------------------------+--------------------------+----------------+--------+\n"
        "|   1 | 000000010000000000000002 | 000000010000000000000009 |              8 |  FOUND |\n"
        "+-----+--------------------------+--------------------------+----------------+--------+\n"
        "[wal-verify] timeline check status: OK\n"
        "[wal-verify] timeline check details:\n"
        "Highest timeline found in storage: 1\n"
        "Current cluster timeline: 1\n"
    )
    assert "Current WAL segment: 00000001000000000000000A" in err


def test_wal_verify_with_a_given_position_lists_wal_once(
    store: FileStorage, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --timeline and --lsn the command read the archive's segment size from one listing
    of wal_005/ and checked on a second: on object storage, twice the requests for a busy
    archive (200 LISTs for 100,000 segments), and two listings that may disagree."""
    put_segments(store, 1, range(1, 10))
    put_backup(store, 1, 2 * SEG + 0x28, 3 * SEG)
    counting = CountingStorage(store)
    ctx = Context(load_settings(environ={"WALG_FILE_PREFIX": str(store.root)}), _storage=counting)
    args = build_parser().parse_args(["wal-verify", "--timeline", "1", "--lsn", "0/A000100"])
    assert args.run(args, ctx) == 0
    assert "integrity check status: OK" in capsys.readouterr().out
    assert counting.listed.count(naming.WAL) == 1


def test_wal_verify_json_and_fail_on_problem(
    store: FileStorage, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    put_segments(store, 1, [*range(1, 5), *range(6, 20)])
    put_backup(store, 1, 1 * SEG + 0x28, 2 * SEG)
    position = ["--timeline", "1", "--lsn", "0/14000100"]  # writing segment 0x14
    monkeypatch.setenv("WALG_UPLOAD_CONCURRENCY", "2")
    code, out, _ = run_cli(capsys, "wal-verify", "integrity", "timeline", "--json", *position)
    assert code == 0  # as WAL-G: the status is in the output
    assert out.count("\n") == 1 and ", " not in out
    doc = json.loads(out)
    assert list(doc) == ["integrity", "timeline"]
    assert doc["integrity"]["status"] == "FAILURE"
    assert doc["integrity"]["details"] == [
        {
            "timeline_id": 1,
            "start_segment": name(1, 1),
            "end_segment": name(1, 4),
            "segments_count": 4,
            "status": "FOUND",
        },
        {
            "timeline_id": 1,
            "start_segment": name(1, 5),
            "end_segment": name(1, 5),
            "segments_count": 1,
            "status": "MISSING_LOST",
        },
        {
            "timeline_id": 1,
            "start_segment": name(1, 6),
            "end_segment": name(1, 19),
            "segments_count": 14,
            "status": "FOUND",
        },
    ]
    assert doc["timeline"] == {
        "status": "OK",
        "details": {"current_timeline_id": 1, "highest_storage_timeline_id": 1},
    }

    code, out, _ = run_cli(capsys, "wal-verify", "integrity", "--fail-on-problem", *position)
    assert code == 1
    assert out.startswith("[wal-verify] integrity check status: FAILURE\n")
    assert "timeline check" not in out
    code, out, _ = run_cli(capsys, "wal-verify", "timeline", "--fail-on-problem", *position)
    assert code == 0

    # Segments 18..19 missing instead: within the delayed window, a warning, exit 0.
    put_wal(store, name(1, 5))
    store.delete([naming.wal_key(name(1, n), "lz4") for n in (18, 19)])
    monkeypatch.setenv("WALG_INTEGRITY_MAX_DELAYED_WALS", "2")
    monkeypatch.setenv("WALG_UPLOAD_CONCURRENCY", "1")
    code, out, _ = run_cli(
        capsys, "wal-verify", "integrity", "--json", "--fail-on-problem", *position
    )
    assert code == 0
    details = json.loads(out)["integrity"]
    assert details["status"] == "WARNING"
    assert details["details"][-1]["status"] == "MISSING_DELAYED"
    assert details["details"][-1]["segments_count"] == 2


def test_wal_verify_bad_input(
    store: FileStorage, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    position = ["--timeline", "1", "--lsn", "0/5000000"]
    assert run_cli(capsys, "wal-verify", "everything", *position)[0] == 2
    assert run_cli(capsys, "wal-verify", "--timeline", "1")[0] == 2
    assert run_cli(capsys, "wal-verify", "--timeline", "1", "--lsn", "nope")[0] == 2
    monkeypatch.setenv("WALG_INTEGRITY_MAX_DELAYED_WALS", "-1")
    code, _, err = run_cli(capsys, "wal-verify", *position)
    assert code == 78
    assert "WALG_INTEGRITY_MAX_DELAYED_WALS" in err


def test_wal_verify_refuses_an_unknown_check_before_connecting(
    store: FileStorage,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A typo in the check's name is a usage error (2) even where PostgreSQL cannot be
    reached: the monitoring script's author reads the mistake, not a connection failure."""
    monkeypatch.setenv("PGHOST", str(tmp_path))  # no server's socket there
    monkeypatch.setenv("PGPORT", "1")
    code, out, err = run_cli(capsys, "wal-verify", "integrity", "timelines")
    assert code == 2, err
    assert out == ""
    assert "invalid check specified: timelines" in err


def test_wal_verify_without_a_server_fails_with_one_line_naming_it(
    store: FileStorage,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """PostgreSQL not reachable: exit 1 and one line saying where walg looked, on stderr;
    nothing on stdout, where a monitoring script would take it for a result."""
    monkeypatch.setenv("PGHOST", str(tmp_path))  # no server's socket there
    monkeypatch.setenv("PGPORT", "1")
    code, out, err = run_cli(capsys, "wal-verify", "integrity", "--json")
    assert code == 1, err
    assert out == ""
    errors = [line for line in err.splitlines() if line.startswith("ERROR")]
    assert errors == [line for line in err.splitlines() if line.strip()], err
    assert len(errors) == 1, err
    assert undated(errors[0]).startswith(
        f"ERROR: cannot connect to PostgreSQL at {tmp_path}:1: "
    ), err


def test_wal_show_names_a_backup_it_leaves_out(
    store: FileStorage, capsys: pytest.CaptureFixture[str]
) -> None:
    """A backup whose metadata.json cannot be read is left out of the listing (WAL-G fails
    there): the operator is told which, on stderr, as a warning."""
    put_segments(store, 1, [2, 3])
    no_meta = put_backup(store, 1, 2 * SEG + 0x28, 2 * SEG + 0x100, metadata=False)
    code, out, err = run_cli(capsys, "wal-show")
    assert code == 0, err
    assert no_meta not in out
    warnings = [line for line in err.splitlines() if line.startswith("WARNING: ")]
    assert len(warnings) == 1, err
    assert warnings[0].endswith(f" backup {no_meta} has no readable metadata.json; not shown")


def test_wal_verify_help_documents_fail_on_problem(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["wal-verify", "--help"])
    assert "--fail-on-problem" in capsys.readouterr().out


def test_wal_show_does_not_import_psycopg(store: FileStorage) -> None:
    put_segments(store, 1, [1, 2])
    code = (
        "import sys\n"
        "from walg.cli.main import main\n"
        "assert main(['wal-show']) == 0\n"
        "assert 'psycopg' not in sys.modules, 'psycopg imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "000000010000000000000001" in done.stdout


def test_memory_storage_helpers_round_trip() -> None:
    storage = MemoryStorage()
    key = put_wal(storage, name(1, 1), b"payload")
    assert key == "wal_005/000000010000000000000001.lz4"
    assert storage.raw(key) != b"payload"  # stored lz4-compressed


# --- what a restore could not use ------------------------------------------------------------


def _abandoned_branch(storage: Storage) -> str:
    """Timelines 1 -> 2 -> 3 (abandoned) and 2 -> 4 (current); a backup on timeline 2."""
    put_segments(storage, 1, range(1, 6))
    put_segments(storage, 2, range(5, 11))
    put_segments(storage, 3, range(9, 11))
    put_segments(storage, 4, range(9, 13))
    put_history(storage, 2, [(1, "0/5000000")], "lz4")
    put_history(storage, 3, [(1, "0/5000000"), (2, "0/9000000")], "lz4")
    put_history(storage, 4, [(1, "0/5000000"), (2, "0/9800000")], "lz4")
    return put_backup(storage, 2, 6 * SEG + 0x28, 7 * SEG)


def test_a_missing_history_of_an_abandoned_timeline_fails(storage: Storage) -> None:
    backup = _abandoned_branch(storage)
    sound = verify_integrity(storage, at(4, 13), upload_concurrency=0)
    assert sound.earliest_backup == backup
    assert sound.status is CheckStatus.OK

    # Recovery probes 00000003.history first, finds none and stays on timeline 2, though
    # every segment of the walk (timelines 2 and 4) is stored.
    storage.delete(["wal_005/00000003.history.lz4"])
    broken = verify_integrity(storage, at(4, 13), upload_concurrency=0)
    assert broken.status is CheckStatus.FAILURE
    assert {r.status for r in broken.runs} == {SegmentStatus.FOUND}
    assert broken.missing_histories == ("00000003.history",)
    assert "00000003.history" in broken.problems[0]
    assert sound.missing_histories == () and sound.problems == ()


def test_a_missing_history_between_backup_and_current_timeline_fails(storage: Storage) -> None:
    put_segments(storage, 1, range(1, 6))
    put_segments(storage, 2, range(5, 9))
    put_segments(storage, 3, range(8, 12))
    put_history(storage, 2, [(1, "0/5000000")], "none")
    put_history(storage, 3, [(1, "0/5000000"), (2, "0/8000000")], "lz4")
    put_backup(storage, 1, 2 * SEG + 0x28, 3 * SEG, start_time=1)
    assert verify_integrity(storage, at(3, 12)).status is CheckStatus.OK

    storage.delete(["wal_005/00000002.history"])
    result = verify_integrity(storage, at(3, 12))
    assert result.status is CheckStatus.FAILURE
    assert result.missing_histories == ("00000002.history",)

    # A backup on the current timeline needs no older history.
    newer = put_backup(storage, 3, 9 * SEG + 0x28, 10 * SEG, start_time=2)
    named = verify_integrity(storage, at(3, 12), backup_name=newer)
    assert named.status is CheckStatus.OK
    assert named.missing_histories == ()


def test_wal_verify_cli_names_the_missing_history(
    store: FileStorage, capsys: pytest.CaptureFixture[str]
) -> None:
    _abandoned_branch(store)
    store.delete(["wal_005/00000003.history.lz4"])
    code, out, err = run_cli(
        capsys, "wal-verify", "--json", "--fail-on-problem", "--timeline", "4", "--lsn", "0/C000188"
    )
    assert code == 1
    doc = json.loads(out)
    assert doc["integrity"]["status"] == "FAILURE"
    assert doc["timeline"]["status"] == "OK"
    assert "00000003.history not in storage" in err


@pytest.mark.parametrize("metadata", [True, False])
def test_a_backup_that_started_in_the_switch_segment_before_the_switch_is_used(
    storage: Storage, metadata: bool
) -> None:
    """A standby's backup taken after it followed a failover, before its next restartpoint,
    starts on timeline 1 in the segment where timeline 2 began, before the switch. WAL-G
    compares by segment and refuses it; recovery reads that segment from timeline 2 and
    restores it. One that started after the switch in that segment stays refused."""
    put_history(storage, 2, [(1, "0/50000A0")], "lz4")
    put_segments(storage, 1, range(1, 5))
    put_segments(storage, 2, range(5, 9))
    before = put_backup(storage, 1, 5 * SEG + 0x28, 5 * SEG + 0x400, metadata=metadata)
    result = verify_integrity(storage, at(2, 9), upload_concurrency=0)
    assert result.earliest_backup == before
    assert result.status is CheckStatus.OK, result
    assert [(r.timeline, r.start_segment, r.end_segment) for r in result.runs] == [
        (2, name(2, 5), name(2, 8))
    ]

    storage.delete([naming.sentinel_key(before), naming.metadata_key(before)])
    put_backup(storage, 1, 5 * SEG + 0xA0, 5 * SEG + 0x400, metadata=metadata)
    after = verify_integrity(storage, at(2, 9), upload_concurrency=0)
    assert after.earliest_backup is None
    assert after.status is CheckStatus.FAILURE


def test_a_metadata_start_lsn_outside_the_named_segment_does_not_count(storage: Storage) -> None:
    """metadata.json without start_lsn reads as LSN 0: not a start before the switch."""
    put_history(storage, 2, [(1, "0/50000A0")], "lz4")
    put_segments(storage, 2, range(5, 9))
    backup = naming.backup_name(name(1, 5))
    meta = BackupMetadata(
        start_time=GoTime(1_700_000_000 * 10**9),
        finish_time=GoTime(1_700_000_060 * 10**9),
        hostname="db1",
        data_dir="/data",
        pg_version=150004,
        start_lsn=0,
        finish_lsn=0,
        is_permanent=False,
        system_identifier=None,
        uncompressed_size=1,
        compressed_size=1,
    )
    storage.put_bytes(naming.metadata_key(backup), meta.dumps())
    storage.put_bytes(
        naming.sentinel_key(backup), Sentinel(lsn=None, finish_lsn=None, pg_version=150004).dumps()
    )
    result = verify_integrity(storage, at(2, 9), upload_concurrency=0)
    assert result.earliest_backup is None


def test_only_unusable_backups_is_a_failure(storage: Storage) -> None:
    # The only backup is on timeline 3, a sibling of the current timeline 2 (both from 1).
    put_history(storage, 2, [(1, "0/5000000")], "lz4")
    put_backup(storage, 3, 6 * SEG + 0x28, 7 * SEG)
    put_segments(storage, 1, range(1, 6))
    put_segments(storage, 2, range(5, 21))
    result = verify_integrity(storage, at(2, 21), upload_concurrency=2)
    assert result.earliest_backup is None
    assert result.status is CheckStatus.FAILURE
    assert "none of the 1 backups" in result.problems[0]


def test_only_permanent_backups_start_the_walk_at_the_oldest(storage: Storage) -> None:
    """WAL-G never starts at a permanent backup (it walks to segment 1 and only warns). A
    restore from one works, so with no other the oldest starts the walk: a healthy archive is
    OK, and WAL lost after it is a FAILURE."""
    oldest = put_backup(storage, 1, 2 * SEG + 0x28, 3 * SEG, permanent=True)
    put_backup(storage, 1, 4 * SEG + 0x28, 5 * SEG, permanent=True)
    put_segments(storage, 1, range(2, 21))
    healthy = verify_integrity(storage, at(1, 21), upload_concurrency=2)
    assert healthy.earliest_backup == oldest
    assert healthy.status is CheckStatus.OK, healthy
    for segno in range(2, 8):
        storage.delete([naming.wal_key(name(1, segno), "lz4")])
    lost = verify_integrity(storage, at(1, 21), upload_concurrency=2)
    assert lost.status is CheckStatus.FAILURE
    assert statuses(lost)[name(1, 5)] is SegmentStatus.MISSING_LOST


def test_nothing_archived_is_a_failure(storage: Storage) -> None:
    empty = verify_integrity(storage, at(1, 21), upload_concurrency=2)
    assert empty.runs and all(r.status is not SegmentStatus.FOUND for r in empty.runs)
    assert empty.status is CheckStatus.FAILURE
    assert "no segment from 000000010000000000000001 to" in empty.problems[0]

    # A backup whose WAL is all missing but within the uploading window: still nothing stored.
    put_backup(storage, 1, 19 * SEG + 0x28, 20 * SEG)
    recent = verify_integrity(storage, at(1, 21), upload_concurrency=16)
    assert [r.status for r in recent.runs] == [SegmentStatus.MISSING_UPLOADING]
    assert recent.status is CheckStatus.FAILURE

    # Nothing to examine (the backup starts at the current segment) is no failure.
    assert verify_integrity(storage, at(1, 19)).status is CheckStatus.OK


@pytest.mark.parametrize("suffix", [".bak", ".LZ4", ".lz4~", ".lz4.tmp", ".gzip", ".."])
def test_an_extension_wal_fetch_never_tries_is_not_the_segment(
    storage: Storage, suffix: str
) -> None:
    put_segments(storage, 1, [*range(1, 10), *range(11, 20)])
    storage.put_bytes(
        "wal_005/" + name(1, 10) + suffix, storage.get_bytes(naming.wal_key(name(1, 9), "lz4"))
    )
    result = verify_integrity(storage, at(1, 20), upload_concurrency=0)
    assert result.status is CheckStatus.FAILURE
    assert statuses(result)[name(1, 10)] is SegmentStatus.MISSING_LOST
    (info,) = wal_show(storage).timelines
    assert tuple(info.missing_segments()) == (name(1, 10),)
    assert timelines_from_names([name(1, 1), "00000002.history" + suffix]) == 1


def test_every_form_wal_fetch_tries_is_the_segment() -> None:
    forms = [name(1, 1) + "." + ext for ext in ("lz4", "lzma", "gz", "br", "lzo", "zst")]
    forms += [name(1, 7) + ".", name(1, 8)]
    assert segments_from_names(forms) == {Segment(1, n) for n in (1, 7, 8)}
    assert timelines_from_names(["00000005.history.zst"]) == 5
    assert timelines_from_names(["00000006.history."]) == 6


FAR = Segment.parse("00000001FFFFFFFF000000FF").segno


def test_wal_show_keeps_a_far_gap_as_a_range(storage: Storage) -> None:
    put_segments(storage, 1, [1, 2, 4, FAR])
    (info,) = wal_show(storage, with_backups=False).timelines
    assert info.end_segment == "00000001FFFFFFFF000000FF"
    assert info.segment_range_size == FAR
    assert info.missing_count == FAR - 4
    assert info.missing_ranges == ((5, FAR - 1), (3, 3))
    names = info.missing_segments()
    assert [next(names) for _ in range(2)] == [name(1, FAR - 1), name(1, FAR - 2)]


def test_wal_show_detailed_json_caps_the_missing_names(
    store: FileStorage, capsys: pytest.CaptureFixture[str]
) -> None:
    put_segments(store, 1, [1, 2, 4, FAR])
    code, out, err = run_cli(capsys, "wal-show", "--detailed-json", "--without-backups")
    assert code == 0
    (doc,) = json.loads(out)
    missing = doc["missing_segments"]
    assert len(missing) == 100_000
    assert missing[0] == name(1, FAR - 1)
    assert missing[-1] == name(1, FAR - 100_000)
    assert doc["segment_range_size"] == FAR
    assert doc["status"] == STATUS_LOST_SEGMENTS
    assert f"{FAR - 4 - 100_000} left out" in err


def test_wal_verify_walk_far_from_the_archive_is_counted_not_walked(storage: Storage) -> None:
    put_segments(storage, 1, range(1, 6))
    result = verify_integrity(storage, at(1, FAR), upload_concurrency=3)
    assert [(r.status, r.segments_count) for r in result.runs] == [
        (SegmentStatus.FOUND, 5),
        (SegmentStatus.MISSING_LOST, FAR - 1 - 5 - 3),
        (SegmentStatus.MISSING_UPLOADING, 3),
    ]
    assert result.status is CheckStatus.FAILURE


def _naive_runs(
    present: set[Segment],
    timeline_of: Any,
    high: int,
    low: int,
    max_delayed: int,
    upload_concurrency: int,
) -> list[tuple[int, int, int, int, SegmentStatus]]:
    """WAL-G's walk one segment at a time, as walg did before it walked in stretches."""
    phase = 0 if max_delayed > 0 else (1 if upload_concurrency > 0 else 2)
    taken = 0
    runs: list[list[Any]] = []
    for segno in range(high, low - 1, -1):
        tli = timeline_of(segno)
        found = Segment(tli, segno) in present
        status = (
            SegmentStatus.FOUND
            if found
            else (
                SegmentStatus.MISSING_DELAYED,
                SegmentStatus.MISSING_UPLOADING,
                SegmentStatus.MISSING_LOST,
            )[phase]
        )
        if runs and runs[-1][0] == tli and runs[-1][4] is status:
            runs[-1][1] = segno
            runs[-1][3] += 1
        else:
            runs.append([tli, segno, segno, 1, status])
        taken += 1
        if phase == 0 and (found or taken >= max_delayed):
            phase, taken = (1 if upload_concurrency > 0 else 2), 0
        elif phase == 1 and taken >= upload_concurrency:
            phase, taken = 2, 0
    return [tuple(r) for r in reversed(runs)]  # type: ignore[misc]


def test_the_walk_in_stretches_matches_the_walk_segment_by_segment() -> None:
    import random

    rng = random.Random(20261126)
    for _ in range(300):
        storage = MemoryStorage()
        present: set[Segment] = set()
        for tli in (1, 2, 3):
            for segno in rng.sample(range(1, 40), rng.randint(0, 30)):
                storage.put_bytes(naming.wal_key(name(tli, segno), ""), b"x")
                present.add(Segment(tli, segno))
        first, second = sorted(rng.sample(range(2, 38), 2))
        put_history(storage, 2, [(1, f"0/{first:X}000000")], "none")
        put_history(storage, 3, [(1, f"0/{first:X}000000"), (2, f"0/{second:X}800000")], "none")
        current = rng.randint(1, 40)
        max_delayed, uploading = rng.randint(0, 5), rng.randint(0, 5)
        result = verify_integrity(
            storage, at(3, current), max_delayed=max_delayed, upload_concurrency=uploading
        )

        def timeline_of(segno: int, a: int = first, b: int = second) -> int:
            return 3 if segno >= b else 2 if segno >= a else 1

        expected = _naive_runs(present, timeline_of, current - 1, 1, max_delayed, uploading)
        got = [
            (
                r.timeline,
                Segment.parse(r.start_segment).segno,
                Segment.parse(r.end_segment).segno,
                r.segments_count,
                r.status,
            )
            for r in result.runs
        ]
        assert got == expected, (first, second, current, max_delayed, uploading)


def test_an_empty_segment_object_is_lost_not_found(storage: Storage) -> None:
    """A 0-byte object under a segment's name cannot be restored: integrity vouched for it."""
    put_segments(storage, 1, range(1, 21))
    storage.put_bytes(f"wal_005/{name(1, 7)}.lz4", b"")
    result = verify_integrity(storage, at(1, 21), max_delayed=0, upload_concurrency=3)
    assert result.status is CheckStatus.FAILURE
    assert statuses(result)[name(1, 7)] is SegmentStatus.MISSING_LOST


@pytest.mark.parametrize(
    ("in_recovery", "archived", "lost"),
    [
        (False, name(1, 18), {11, 12, 17}),  # archived past 17: only 19 and 20 may be under way
        (False, name(1, 17), {11, 12, 17}),
        (False, name(1, 16), {11, 12}),  # 17 not yet handed to archive_command
        (False, name(1, 12), {11, 12}),
        (False, name(1, 16) + ".partial", set()),  # tells nothing: WAL-G's windows
        (False, name(1, 16) + ".00000028.backup", set()),
        (False, name(2, 18), set()),  # another timeline's
        (False, None, set()),  # never archived, or a position given by hand
        (True, name(1, 18), set()),  # a standby's own archiver says nothing of the primary
    ],
)
def test_a_segment_missing_below_the_last_one_archived_is_lost_on_a_primary(
    storage: Storage, in_recovery: bool, archived: str | None, lost: set[int]
) -> None:
    """PostgreSQL's archiver goes in order and retries a segment until archive_command takes
    it: a segment of its timeline missing at or below pg_stat_archiver's last archived one was
    stored and is gone, not an upload under way as WAL-G's window (16 segments here) supposes.
    Such a gap stops a restore there."""
    put_segments(storage, 1, [*range(3, 11), *range(13, 17), 18])  # 11, 12, 17, 19, 20 missing
    position = ClusterPosition(1, 21 * SEG + 0x100, in_recovery, "on", last_archived_wal=archived)
    result = verify_integrity(storage, position, max_delayed=0, upload_concurrency=16)
    got = statuses(result)
    missing = {n: got[name(1, n)] for n in (11, 12, 17, 19, 20)}
    assert {n for n, status in missing.items() if status is SegmentStatus.MISSING_LOST} == lost
    assert all(
        status is SegmentStatus.MISSING_UPLOADING for n, status in missing.items() if n not in lost
    )
    assert result.status is (CheckStatus.FAILURE if lost else CheckStatus.WARNING)


@pytest.mark.parametrize(
    ("in_recovery", "archive_mode", "status"),
    [
        (False, "on", SegmentStatus.MISSING_LOST),  # a promoted standby never archives them
        (False, "off", SegmentStatus.MISSING_LOST),
        (False, "always", SegmentStatus.MISSING_UPLOADING),  # it may still be archiving them
        (True, "on", SegmentStatus.MISSING_UPLOADING),  # a standby: the primary's is unknown
        (False, None, SegmentStatus.MISSING_UPLOADING),  # a position given by hand
    ],
)
def test_old_timeline_segments_missing_after_a_failover_are_lost_on_a_primary(
    storage: Storage, in_recovery: bool, archive_mode: str | None, status: SegmentStatus
) -> None:
    """The primary died before archiving segments 6 and 7; its standby, promoted at 0/8000100,
    archived timeline 2 from segment 8 on. WAL-G's windows called 6 and 7 uploading."""
    put_backup(storage, 1, 3 * SEG + 0x28, 3 * SEG + 0x100)
    put_segments(storage, 1, range(3, 6))
    put_history(storage, 2, [(1, "0/8000100")], "lz4")
    put_segments(storage, 2, range(8, 10))
    position = ClusterPosition(2, 10 * SEG + 0x100, in_recovery, archive_mode)
    result = verify_integrity(storage, position, max_delayed=0, upload_concurrency=16)
    got = statuses(result)
    assert [got[name(1, n)] for n in (6, 7)] == [status] * 2
    assert got[name(2, 9)] is SegmentStatus.FOUND
    expected = CheckStatus.FAILURE if status is SegmentStatus.MISSING_LOST else CheckStatus.WARNING
    assert result.status is expected


def test_wal_show_warns_about_a_missing_history_of_a_later_timeline(
    store: FileStorage, capsys: pytest.CaptureFixture[str]
) -> None:
    """Timeline 3's segments without its ``00000003.history`` (deleted, never archived): WAL-G
    prints parent 0 and switch point 0/0 as for a timeline with no parent, and so does walg,
    but it says why on stderr instead of passing a forked timeline off as a root. Timeline 1
    has no history, and needs none."""
    put_segments(store, 1, [1, 2])
    put_segments(store, 2, [2, 3])
    put_segments(store, 3, [3, 4])
    put_history(store, 2, [(1, "0/2000000")], "lz4")
    code, out, err = run_cli(capsys, "wal-show", "--detailed-json", "--without-backups")
    assert code == 0
    doc = json.loads(out)
    assert [(t["id"], t["parent_id"], t["switch_point_lsn"]) for t in doc] == [
        (1, 0, 0),
        (2, 1, 0x2000000),
        (3, 0, 0),
    ]
    warnings = [line for line in err.splitlines() if "history" in line]
    assert len(warnings) == 1, err
    assert "timeline 3" in warnings[0] and "00000003.history" in warnings[0]
    assert "not in storage" in warnings[0] and "without parent timeline" in warnings[0]
