"""Which WAL segments a backup waits for: on one timeline, or across the switch a standby
followed during its backup (walg.ops.backup_push), and the start timeline its label records."""

from __future__ import annotations

import os
import time

import lz4.frame
import pytest

from walg.core.lsn import Segment, parse_lsn
from walg.errors import PostgresError
from walg.ops.backup_push import _later_histories, _segments_after_promotion, _segments_needed
from walg.postgres.backup_session import BackupStart, BackupStop, label_start_timeline
from walg.storage.memory import MemoryStorage

SIZE = 16 << 20


def _start(lsn: str, timeline: int = 1) -> BackupStart:
    return BackupStart(parse_lsn(lsn), timeline, "unused")


def _stop(lsn: str, timeline: int) -> BackupStop:
    return BackupStop(parse_lsn(lsn), "", "", timeline)


def _history(storage: MemoryStorage, timeline: int, text: str) -> None:
    storage.put_bytes(f"wal_005/{timeline:08X}.history.lz4", lz4.frame.compress(text.encode()))


def _names(segments: list[Segment]) -> list[str]:
    return [s.name(SIZE) for s in segments]


def test_on_one_timeline_every_segment_from_start_to_end() -> None:
    needed = _segments_needed(
        MemoryStorage(), _start("0/3000028"), _stop("0/5000100", 1), SIZE, time.monotonic()
    )
    assert _names(needed) == [
        "000000010000000000000003",
        "000000010000000000000004",
        "000000010000000000000005",
    ]
    # An end at a segment's first byte needs nothing of that segment.
    needed = _segments_needed(
        MemoryStorage(), _start("0/3000028"), _stop("0/5000000", 1), SIZE, time.monotonic()
    )
    assert _names(needed)[-1] == "000000010000000000000004"


def test_across_a_switch_the_segment_holding_it_comes_from_the_new_timeline() -> None:
    """Timeline 2 began inside segment 5: its copy of segment 5 holds timeline 1's WAL up to
    the switch, and timeline 1's own is archived only as .partial."""
    storage = MemoryStorage()
    _history(storage, 2, "1\t0/50000A0\tno recovery target specified\n")
    needed = _segments_needed(
        storage, _start("0/3000028"), _stop("0/6000100", 2), SIZE, time.monotonic()
    )
    assert _names(needed) == [
        "000000010000000000000003",
        "000000010000000000000004",
        "000000020000000000000005",
        "000000020000000000000006",
    ]


def test_a_history_that_does_not_lead_back_to_the_start_timeline_fails_the_backup() -> None:
    storage = MemoryStorage()
    _history(storage, 3, "2\t0/50000A0\tno recovery target specified\n")
    with pytest.raises(PostgresError, match="does not lead back to timeline 1"):
        _segments_needed(
            storage, _start("0/3000028"), _stop("0/6000100", 3), SIZE, time.monotonic()
        )


def test_a_start_after_the_new_timeline_branched_off_fails_the_backup() -> None:
    storage = MemoryStorage()
    _history(storage, 2, "1\t0/30000A0\tno recovery target specified\n")
    with pytest.raises(PostgresError, match="after timeline 2's history leaves it at 0/30000A0"):
        _segments_needed(
            storage, _start("0/4000028"), _stop("0/6000100", 2), SIZE, time.monotonic()
        )


def test_a_history_never_archived_fails_the_backup_at_the_deadline_naming_it() -> None:
    began = time.monotonic()
    with pytest.raises(PostgresError, match=r"00000002\.history, which this backup needs"):
        _segments_needed(
            MemoryStorage(), _start("0/3000028"), _stop("0/6000100", 2), SIZE, began + 0.3
        )
    assert time.monotonic() - began >= 0.3


def test_the_start_timeline_of_a_backup_label() -> None:
    label = (
        "START WAL LOCATION: 0/5000028 (file 000000010000000000000005)\n"
        "CHECKPOINT LOCATION: 0/5000028\nBACKUP METHOD: streamed\nBACKUP FROM: standby\n"
        "START TIME: 2026-11-27 08:07:41 UTC\nLABEL: START TIMELINE: 9\nSTART TIMELINE: 1\n"
    )
    assert label_start_timeline(label) == 1
    assert label_start_timeline(label.replace("START TIMELINE: 1", "START TIMELINE: 12")) == 12
    # PostgreSQL 10 wrote none.
    assert label_start_timeline(label.replace("START TIMELINE: 1\n", "")) is None
    assert label_start_timeline("") is None


def _after_promotion(
    storage: MemoryStorage, start: BackupStart, stop: BackupStop
) -> list[Segment] | None:
    histories = list(_later_histories(storage, stop.timeline))
    return _segments_after_promotion(histories, start, stop, SIZE)


def test_after_the_upstream_failed_the_segment_holding_the_end_comes_from_the_new_timeline() -> (
    None
):
    """The backup ended on timeline 1 inside segment 5, before timeline 2 branched off there:
    recovery onto timeline 2 reads segment 5 from it (the crashed primary never archived its
    own)."""
    storage = MemoryStorage()
    assert _after_promotion(storage, _start("0/3000028"), _stop("0/5000100", 1)) is None
    _history(storage, 2, "1\t0/50000A0\tno recovery target specified\n")
    needed = _after_promotion(storage, _start("0/3000028"), _stop("0/5000090", 1))
    assert needed is not None
    assert _names(needed) == [
        "000000010000000000000003",
        "000000010000000000000004",
        "000000020000000000000005",
    ]
    # Timeline 3 branched off timeline 1 before the end (a restore to an earlier point): its
    # history does not hold the backup's end, so timeline 2 is the one to follow.
    _history(storage, 3, "1\t0/4000000\tbefore 2016-01-01 00:00:00+00\n")
    assert _after_promotion(storage, _start("0/3000028"), _stop("0/5000090", 1)) == needed


def test_a_new_timeline_that_branched_off_before_the_end_changes_nothing() -> None:
    """A standby ahead of the one promoted: its backup holds WAL timeline 2 does not have, and
    only timeline 1's own segments can restore it."""
    storage = MemoryStorage()
    _history(storage, 2, "1\t0/50000A0\tno recovery target specified\n")
    assert _after_promotion(storage, _start("0/3000028"), _stop("0/5000100", 1)) is None


def test_a_claim_naming_a_pid_no_process_can_have_is_not_alive() -> None:
    # A damaged claim (or a forged one) may name any number: os.kill raised OverflowError
    # for one past a C int, and backup-push died with "unexpected OverflowError".
    from walg.ops.backup_push import _pid_alive

    assert not _pid_alive(1 << 70)
    assert not _pid_alive(1 << 40)
    assert _pid_alive(os.getppid())
