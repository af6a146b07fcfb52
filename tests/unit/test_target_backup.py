"""Which backup a point-in-time restore starts from, and what an earlier restore left behind."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import lz4.frame
import pytest

from walg.core.gotime import GoTime
from walg.core.lsn import parse_lsn
from walg.core.metadata import BackupMetadata, Sentinel
from walg.core.naming import metadata_key, sentinel_key
from walg.errors import BackupNotFound, UsageError
from walg.ops import catalog
from walg.ops.recovery import (
    RecoveryTarget,
    active_targets,
    datadir_conf_files,
    disable_inherited_targets,
    inherited_apply_delay,
)
from walg.ops.target_backup import backup_for_target, default_timeline_problem, time_bounds
from walg.storage.memory import MemoryStorage

NS = 1_000_000_000


def _ns(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).timestamp()) * NS


def test_time_bounds_of_each_form() -> None:
    exact = _ns("2026-11-25T12:00:00+00:00")
    assert time_bounds("2026-11-25 12:00:00+00") == (exact, exact)
    assert time_bounds("2026-11-25T17:30:00+05:30") == (exact, exact)
    assert time_bounds("2026-11-25 06:59:30 -05:00:30") == (exact, exact)
    assert time_bounds("2026-11-25 13:00:00 europe/paris") == (exact, exact)  # CET in November
    assert time_bounds("2026-11-25 12:00:00.5+00") == (exact + NS // 2, exact + NS // 2)
    assert time_bounds("2026-11-24 24:00:00+00")[0] == _ns("2026-11-25T00:00:00+00:00")
    # Without a zone, the server's timezone decides: any offset PostgreSQL takes, either way.
    low, high = time_bounds("2026-11-25 12:00:00")
    widest = (15 * 3600 + 59 * 60 + 59) * NS
    assert (low, high) == (exact - widest, exact + widest)
    assert time_bounds("2026-11-25")[0] == _ns("2026-11-25T00:00:00+00:00") - widest


def _backup(
    storage: MemoryStorage,
    name: str,
    finish: str,
    finish_lsn: str,
    pg_version: int = 160000,
    finish_timeline: int | None = None,
    system_identifier: int | None = None,
) -> None:
    sentinel = Sentinel(
        lsn=parse_lsn(finish_lsn) - 1,
        finish_lsn=parse_lsn(finish_lsn),
        pg_version=pg_version,
        finish_time=GoTime(_ns(finish)),
        finish_timeline=finish_timeline,
        system_identifier=system_identifier,
    )
    storage.put_bytes(sentinel_key(name), sentinel.dumps())


def _history(storage: MemoryStorage, timeline: int, text: str) -> None:
    storage.put_bytes(f"wal_005/{timeline:08X}.history.lz4", lz4.frame.compress(text.encode()))


@pytest.fixture
def storage() -> MemoryStorage:
    storage = MemoryStorage()
    _backup(storage, "base_000000010000000000000002", "2026-11-25T10:00:00+00:00", "0/2000100")
    _backup(storage, "base_000000010000000000000005", "2026-11-25T12:00:00+00:00", "0/5000100")
    _backup(storage, "base_000000010000000000000009", "2026-11-25T14:00:00+00:00", "0/9000100")
    return storage


def test_latest_for_a_target_is_the_newest_backup_that_reaches_it(storage: MemoryStorage) -> None:
    def chosen(**target: str) -> str:
        return backup_for_target(storage, "LATEST", RecoveryTarget("c", **target))

    assert chosen(time="2026-11-25 13:00:00+00") == "base_000000010000000000000005"
    assert chosen(time="2026-11-25 12:00:00+00") == "base_000000010000000000000005"
    assert chosen(time="2026-11-25 11:59:59+00") == "base_000000010000000000000002"
    assert chosen(time="2026-11-26 00:00:00+00") == "base_000000010000000000000009"
    assert chosen(lsn="0/9000100") == "base_000000010000000000000009"
    assert chosen(lsn="0/90000FF") == "base_000000010000000000000005"
    # Names and xids cannot be placed: the newest backup, as without a target.
    assert chosen(name="rp") == "base_000000010000000000000009"
    assert chosen(xid="1234") == "base_000000010000000000000009"
    assert backup_for_target(storage, "LATEST", None) == "LATEST"
    with pytest.raises(BackupNotFound):
        chosen(time="2026-11-25 09:00:00+00")
    with pytest.raises(BackupNotFound):
        chosen(lsn="0/1000000")


def test_a_target_before_every_backup_s_end_is_refused_naming_the_earliest_end(
    storage: MemoryStorage,
) -> None:
    """No backup can reach a target older than every backup's end: LATEST refuses, and says
    which backup ended first and where, so that the operator sees why (an older backup is
    needed, or the target is wrong) rather than a bare "no backup can reach"."""
    for target, end in (
        (RecoveryTarget("c", time="2026-11-25 09:00:00+00"), "finished at 2026-11-25T10:00:00Z"),
        (RecoveryTarget("c", lsn="0/1"), "ends at LSN 0/2000100"),
    ):
        with pytest.raises(BackupNotFound) as info:
            backup_for_target(storage, "LATEST", target)
        message = str(info.value)
        assert "every backup ended after it" in message, message
        assert f"base_000000010000000000000002, {end}" in message, message


def test_a_time_without_zone_chooses_only_when_every_reading_agrees(
    storage: MemoryStorage,
) -> None:
    # 2026-11-26 08:00 is after 14:00 UTC on the 25th whatever the offset: no doubt.
    target = RecoveryTarget("c", time="2026-11-26 08:00:00")
    assert backup_for_target(storage, "LATEST", target) == "base_000000010000000000000009"
    # 2026-11-25 15:00 may be before 14:00 UTC (at +01 and more): walg will not guess.
    with pytest.raises(UsageError) as info:
        backup_for_target(storage, "LATEST", RecoveryTarget("c", time="2026-11-25 15:00:00"))
    assert "offset" in str(info.value)


def test_a_named_backup_that_ends_after_the_target_is_refused(storage: MemoryStorage) -> None:
    name = "base_000000010000000000000009"
    with pytest.raises(UsageError) as info:
        backup_for_target(storage, name, RecoveryTarget("c", time="2026-11-25 13:00:00+00"))
    assert name in str(info.value) and "LATEST" in str(info.value)
    with pytest.raises(UsageError):
        backup_for_target(storage, name, RecoveryTarget("c", lsn="0/5000000"))
    target = RecoveryTarget("c", time="2026-11-25 14:00:01+00")
    assert backup_for_target(storage, name, target) == name
    with pytest.raises(BackupNotFound):
        backup_for_target(storage, "base_00000001000000000000000F", target)


def test_latest_never_crosses_to_another_database_system() -> None:
    """After pg_upgrade (a new system on timeline 1) of a cluster on timeline 2, the old
    system's 00000002.history makes recovery follow timeline 2, which only the old system's
    backups fit: LATEST refuses rather than restore those."""
    storage = MemoryStorage()
    old, new = 7000000000000000001, 7000000000000000002
    _backup(storage, "base_000000010000000000000002", "2026-11-25T10:00:00+00:00", "0/2000100",
            system_identifier=old)  # fmt: skip
    _backup(storage, "base_000000020000000000000005", "2026-11-25T11:00:00+00:00", "0/5000100",
            system_identifier=old)  # fmt: skip
    _history(storage, 2, "1\t0/4000000\tno recovery target specified\n")
    newest = "base_00000001000000000000000E"
    _backup(storage, newest, "2026-11-25T12:00:00+00:00", "0/E000120", pg_version=170000,
            system_identifier=new)  # fmt: skip
    with pytest.raises(BackupNotFound) as info:
        backup_for_target(storage, "LATEST", RecoveryTarget("c"))
    message = str(info.value)
    assert newest in message and "--target-timeline current" in message
    assert "another database system" in message
    assert backup_for_target(storage, "LATEST", RecoveryTarget("c", timeline="current")) == newest
    # With a time target after the new system's backup, the same; before it, the old system
    # was the one live then.
    after = RecoveryTarget("c", time="2026-11-25 13:00:00+00")
    with pytest.raises(BackupNotFound) as info:
        backup_for_target(storage, "LATEST", after)
    assert newest in str(info.value) and "--target-timeline current" in str(info.value)
    after_current = RecoveryTarget("c", time="2026-11-25 13:00:00+00", timeline="current")
    assert backup_for_target(storage, "LATEST", after_current) == newest
    before = RecoveryTarget("c", time="2026-11-25 11:30:00+00")
    assert backup_for_target(storage, "LATEST", before) == "base_000000020000000000000005"
    # Restored without recovery settings, walg says what the operator's must hold.
    problem = default_timeline_problem(storage, "LATEST")
    assert problem is not None and newest in problem and "'current'" in problem
    assert default_timeline_problem(storage, "base_000000020000000000000005") is None
    # Named, the old system's backup is restored as asked.
    old_name = "base_000000020000000000000005"
    assert backup_for_target(storage, old_name, RecoveryTarget("c")) == old_name
    # A backup that records no system identifier (WAL-G before 0.2.x, WAL-E) is not taken
    # for another system's.
    _backup(storage, newest, "2026-11-25T12:00:00+00:00", "0/E000120", pg_version=170000)
    assert backup_for_target(storage, "LATEST", RecoveryTarget("c")) == old_name


AUTO_CONF = (
    "# Do not edit this file manually!\n"
    "work_mem = '8MB'\n"
    "\n# recovery settings written by walg backup-fetch\n"
    "restore_command = 'walg wal-fetch %f %p'\n"
    "recovery_target = ''\n"
    "recovery_target_name = ''\n"
    "recovery_target_timeline = 'latest'\n"
    "recovery_target_action = 'promote'\n"
    "recovery_target_time = '2026-11-25 12:00:00+00'\n"
    "cluster_name = 'caf\xe9'\n"
)


def test_active_targets_are_the_non_empty_last_values() -> None:
    assert active_targets(AUTO_CONF) == ["recovery_target_time = '2026-11-25 12:00:00+00'"]
    assert active_targets(AUTO_CONF + "recovery_target_time = ''\n") == []
    assert active_targets("recovery_target_xid = '7' # x\nrecovery_target_lsn=''\n") == [
        "recovery_target_xid = '7'"
    ]


def test_a_files_only_restore_comments_out_inherited_targets(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 (ALTER SYSTEM on a SQL_ASCII or LATIN1 server) survive."""
    auto = tmp_path / "postgresql.auto.conf"
    auto.write_bytes(AUTO_CONF.encode("latin-1"))
    auto.chmod(0o640)
    assert disable_inherited_targets(tmp_path, 160000) == [
        "recovery_target_time = '2026-11-25 12:00:00+00'"
    ]
    lines = auto.read_bytes().split(b"\n")
    assert b"restore_command = 'walg wal-fetch %f %p'" in lines
    assert b"work_mem = '8MB'" in lines
    assert b"cluster_name = 'caf\xe9'" in lines
    assert not [line for line in lines if line.startswith(b"recovery_target")]
    assert active_targets(auto.read_bytes().decode("latin-1")) == []
    assert auto.stat().st_mode & 0o777 == 0o640
    # Nothing to do: the file is left alone; recovery.conf servers have none.
    before = auto.stat().st_mtime_ns
    assert disable_inherited_targets(tmp_path, 160000) == []
    assert auto.stat().st_mtime_ns == before
    assert disable_inherited_targets(tmp_path / "nowhere", 160000) == []
    assert disable_inherited_targets(tmp_path, 110000) == []


def test_the_data_directory_s_configuration_files_in_the_server_s_order(tmp_path: Path) -> None:
    """postgresql.conf, what it includes in its place (include, include_if_exists,
    include_dir's .conf files by name; relative to the including file), postgresql.auto.conf
    last. Files outside the data directory, loops and FIFOs are passed over."""
    import os

    data = tmp_path / "data"
    (data / "conf.d" / "deeper").mkdir(parents=True)
    outside = tmp_path / "operator.conf"
    outside.write_text("recovery_target_lsn = '0/5000000'\n")
    (data / "postgresql.conf").write_text(
        "work_mem = '4MB'\n"
        "  INCLUDE_DIR = 'conf.d'  # comment\n"
        f"include '{outside}'\n"
        "include_if_exists 'missing.conf'\n"
        "include first.conf\n"
    )
    (data / "first.conf").write_text("include 'postgresql.conf'\n")  # a loop
    (data / "conf.d" / "20-b.conf").write_text("include 'deeper/x.conf'\n")
    (data / "conf.d" / "10-a.conf").write_text("")
    (data / "conf.d" / ".hidden.conf").write_text("")
    (data / "conf.d" / "notes.txt").write_text("")
    (data / "conf.d" / "deeper" / "x.conf").write_text("")
    os.mkfifo(data / "conf.d" / "30-fifo.conf")
    (data / "postgresql.auto.conf").write_text("")
    assert datadir_conf_files(data) == [
        "postgresql.conf",
        "conf.d/10-a.conf",
        "conf.d/20-b.conf",
        "conf.d/deeper/x.conf",
        "first.conf",
        "postgresql.auto.conf",
    ]
    (data / "postgresql.conf").unlink()
    assert datadir_conf_files(data) == ["postgresql.auto.conf"]
    assert datadir_conf_files(tmp_path / "nowhere") == []


def test_an_inherited_apply_delay_is_found_where_the_server_would_take_it(
    tmp_path: Path,
) -> None:
    """postgresql.auto.conf is read after postgresql.conf, and the last line wins; 0 in any
    unit is no delay."""
    conf, auto = tmp_path / "postgresql.conf", tmp_path / "postgresql.auto.conf"
    assert inherited_apply_delay(tmp_path, 160000) is None
    conf.write_text("recovery_min_apply_delay = 5min\n")
    assert inherited_apply_delay(tmp_path, 160000) == "recovery_min_apply_delay = '5min'"
    auto.write_text("recovery_min_apply_delay = '0'\n")
    assert inherited_apply_delay(tmp_path, 160000) is None
    auto.write_text("recovery_min_apply_delay = '0'\nrecovery_min_apply_delay = '1h'\n")
    assert inherited_apply_delay(tmp_path, 160000) == "recovery_min_apply_delay = '1h'"
    auto.write_text("recovery_min_apply_delay = '1h'\n#recovery_min_apply_delay = 0\n")
    assert inherited_apply_delay(tmp_path, 160000) == "recovery_min_apply_delay = '1h'"
    for zero in ("0", "'0ms'", "'0 s'", "00h"):
        auto.write_text(f"recovery_min_apply_delay = {zero}\n")
        assert inherited_apply_delay(tmp_path, 160000) is None, zero
    assert inherited_apply_delay(tmp_path, 110000) is None


B1 = "base_000000010000000000000002"  # timeline 1, before timeline 2 branched off
B3 = "base_000000010000000000000005"  # timeline 1, after it
B2 = "base_000000020000000000000006"  # timeline 2


@pytest.fixture
def branched() -> MemoryStorage:
    storage = MemoryStorage()
    _history(storage, 2, "1\t0/4000000\tpromoted\n")
    _backup(storage, B1, "2026-11-25T10:00:00+00:00", "0/2000100")
    _backup(storage, B3, "2026-11-25T12:00:00+00:00", "0/5000100")
    _backup(storage, B2, "2026-11-25T13:00:00+00:00", "0/6000100")
    return storage


def test_only_backups_on_the_recovered_timeline_are_chosen(branched: MemoryStorage) -> None:
    """B3 was taken on timeline 1 after timeline 2 branched off: recovery onto timeline 2
    cannot start from it ("could not locate required checkpoint record")."""

    def chosen(**target: str) -> str:
        return backup_for_target(branched, "LATEST", RecoveryTarget("c", **target))

    # recovery_target_timeline latest (PostgreSQL 12+'s default) is timeline 2 here.
    assert chosen(time="2026-11-25 12:30:00+00") == B1
    assert chosen(time="2026-11-25 14:00:00+00") == B2
    assert chosen(lsn="0/5000200", timeline="2") == B1
    assert chosen(time="2026-11-25 12:30:00+00", timeline="1") == B3
    assert chosen(time="2026-11-25 14:00:00+00", timeline="1") == B3
    assert chosen(time="2026-11-25 14:00:00+00", timeline="current") == B2
    with pytest.raises(UsageError) as info:
        backup_for_target(branched, B3, RecoveryTarget("c", time="2026-11-25 12:30:00+00"))
    assert "branched off" in str(info.value)
    with pytest.raises(UsageError) as info:
        backup_for_target(branched, B2, RecoveryTarget("c", lsn="0/7000000", timeline="1"))
    assert "after the target timeline 1" in str(info.value)
    with pytest.raises(UsageError) as info:
        backup_for_target(branched, B1, RecoveryTarget("c", lsn="0/7000000", timeline="3"))
    assert "00000003.history" in str(info.value)


def test_a_target_timeline_read_from_a_file_name_is_told_it_is_hex(branched: MemoryStorage) -> None:
    """History and segment names show timelines in hex: 00000010.history is timeline 16. An
    operator who gives --target-timeline 10 from that name asks PostgreSQL (which reads it in
    decimal) for timeline 10; where none was archived, the refusal says which file the 10 he
    read names."""
    _history(branched, 16, "1\t0/4000000\tpromoted\n")
    with pytest.raises(UsageError) as info:
        backup_for_target(branched, B1, RecoveryTarget("c", timeline="10"))
    message = str(info.value)
    assert "0000000A.history is not in storage" in message, message
    assert "--target-timeline 16" in message and "00000010.history" in message, message
    with pytest.raises(UsageError) as other:
        backup_for_target(branched, B1, RecoveryTarget("c", timeline="7"))
    assert "--target-timeline 7" not in str(other.value) and "hex" not in str(other.value)


def test_a_target_timeline_never_archived_is_named_as_such(branched: MemoryStorage) -> None:
    """--target-timeline 7 where no timeline 7 was archived: the refusal said "00000007.history
    cannot be read from storage" (as for a damaged file) and, for LATEST, to "name one with
    --target-timeline" to someone who had."""
    with pytest.raises(UsageError) as info:
        backup_for_target(branched, B1, RecoveryTarget("c", timeline="7"))
    assert "00000007.history is not in storage: no timeline 7 was archived" in str(info.value)
    with pytest.raises(BackupNotFound) as latest:
        backup_for_target(branched, "LATEST", RecoveryTarget("c", timeline="7"))
    assert "no timeline 7 was archived" in str(latest.value)
    assert "give another --target-timeline" in str(latest.value)
    _history(branched, 3, "garbage without a tab\n")
    with pytest.raises(UsageError, match=r"00000003\.history cannot be read from storage"):
        backup_for_target(branched, B1, RecoveryTarget("c", timeline="3"))


def test_without_a_time_or_lsn_target_a_named_backup_off_the_timeline_is_refused(
    branched: MemoryStorage,
) -> None:
    """--restore-command alone: the server would refuse to start from B3 ("requested
    timeline is not a child of this server's history") only after the whole download."""
    with pytest.raises(UsageError) as info:
        backup_for_target(branched, B3, RecoveryTarget("c"))
    assert "cannot start a recovery that follows timeline 2" in str(info.value)
    assert "branched off" in str(info.value)
    assert backup_for_target(branched, B1, RecoveryTarget("c")) == B1
    assert backup_for_target(branched, B3, RecoveryTarget("c", timeline="1")) == B3


def test_a_backup_whose_timeline_the_target_history_does_not_name_is_refused() -> None:
    """Timeline 3's history names only timeline 2 (another lineage's file, say): recovery
    onto timeline 3 cannot start from a timeline-1 backup."""
    storage = MemoryStorage()
    _history(storage, 3, "2\t0/5000000\tno recovery target specified\n")
    name = "base_000000010000000000000002"
    _backup(storage, name, "2026-11-25T10:00:00+00:00", "0/2000100")
    with pytest.raises(UsageError, match="its timeline 1 is not in the history of timeline 3"):
        backup_for_target(storage, name, RecoveryTarget("c", timeline="3"))
    with pytest.raises(BackupNotFound):
        target = RecoveryTarget("c", time="2026-11-25 14:00:00+00", timeline="3")
        backup_for_target(storage, "LATEST", target)


def test_a_standby_backup_that_followed_the_switch_reaches_the_new_timeline(
    branched: MemoryStorage,
) -> None:
    """B4 started on timeline 1 on a standby that then followed its promoted upstream:
    it ends on timeline 2 after the switch (WalgFinishTimeline). Recovery onto timeline 2
    starts from it; recovery that stays on timeline 1 cannot reach its end. Without the
    record, the same numbers are B3's: a backup on timeline 1 after the branch."""
    b4 = "base_000000010000000000000003"
    _backup(branched, b4, "2026-11-25T13:30:00+00:00", "0/4000200", finish_timeline=2)
    assert backup_for_target(branched, b4, RecoveryTarget("c")) == b4
    # B4, the newest, as without --restore-command.
    assert backup_for_target(branched, "LATEST", RecoveryTarget("c")) == b4
    assert backup_for_target(branched, b4, RecoveryTarget("c", lsn="0/4000300")) == b4
    target = RecoveryTarget("c", time="2026-11-25 13:45:00+00")
    assert backup_for_target(branched, "LATEST", target) == b4
    with pytest.raises(UsageError, match="it ends on timeline 2, to which it followed a switch"):
        backup_for_target(branched, b4, RecoveryTarget("c", timeline="1"))
    target = RecoveryTarget("c", time="2026-11-25 13:45:00+00", timeline="1")
    assert backup_for_target(branched, "LATEST", target) == B3
    # Timeline 3 branched off timeline 2 before B4's end: recovery onto it cannot use B4.
    _history(branched, 3, "1\t0/4000000\tpromoted\n2\t0/4000100\tpromoted\n")
    with pytest.raises(UsageError, match="branched off timeline 2 at 0/4000100"):
        backup_for_target(branched, b4, RecoveryTarget("c"))
    # A history that does not name the end timeline.
    _history(branched, 3, "1\t0/4000000\tpromoted\n")
    with pytest.raises(UsageError, match="its timeline 2 is not in the history of timeline 3"):
        backup_for_target(branched, b4, RecoveryTarget("c"))


def test_before_postgresql_12_recovery_stays_on_the_backups_timeline() -> None:
    """recovery_target_timeline defaulted to 'current' before PostgreSQL 12: a backup taken
    on timeline 1 after timeline 2 branched off is the right one to reach a later time."""
    storage = MemoryStorage()
    _history(storage, 2, "1\t0/4000000\tpromoted\n")
    _backup(storage, B1, "2026-11-25T10:00:00+00:00", "0/2000100", pg_version=110000)
    _backup(storage, B3, "2026-11-25T12:00:00+00:00", "0/5000100", pg_version=110000)
    target = RecoveryTarget("c", time="2026-11-25 12:30:00+00")
    assert backup_for_target(storage, "LATEST", target) == B3
    assert backup_for_target(storage, B3, RecoveryTarget("c")) == B3


def test_the_backup_that_ended_last_is_chosen_not_the_newest_sentinel(
    storage: MemoryStorage,
) -> None:
    """A sentinel written again later (WAL-G's backup-mark) does not make its backup the
    newest: the end decides."""
    _backup(storage, "base_000000010000000000000002", "2026-11-25T10:00:00+00:00", "0/2000100")
    target = RecoveryTarget("c", time="2026-11-25 13:00:00+00")
    assert backup_for_target(storage, "LATEST", target) == "base_000000010000000000000005"


def test_the_end_comes_from_metadata_json_when_the_sentinel_has_none() -> None:
    """Older WAL-G sentinels carry no FinishTime; their metadata.json does."""
    storage = MemoryStorage()
    for name, finish, lsn in (
        (B1, "2026-11-25T10:00:00+00:00", 0x2000100),
        (B3, "2026-11-25T12:00:00+00:00", 0x5000100),
    ):
        storage.put_bytes(
            sentinel_key(name), Sentinel(lsn=lsn - 1, finish_lsn=lsn, pg_version=90600).dumps()
        )
        meta = BackupMetadata(
            start_time=GoTime(_ns(finish) - 60 * NS),
            finish_time=GoTime(_ns(finish)),
            hostname="db1",
            data_dir="/srv",
            pg_version=90600,
            start_lsn=lsn - 1,
            finish_lsn=lsn,
            is_permanent=False,
            system_identifier=None,
            uncompressed_size=0,
            compressed_size=0,
        )
        storage.put_bytes(metadata_key(name), meta.dumps())
    target = RecoveryTarget("c", time="2026-11-25 11:00:00+00")
    assert backup_for_target(storage, "LATEST", target) == B1
    with pytest.raises(UsageError):
        backup_for_target(storage, B3, target)


def test_times_the_clocks_pass_twice_or_skip_are_read_as_postgresql_reads_them() -> None:
    # 02:30 happens twice in Paris on 2026-10-25: PostgreSQL takes the offset after (+01).
    assert time_bounds("2026-10-25 02:30:00 Europe/Paris")[0] == _ns("2026-10-25T01:30:00+00:00")
    # It never happens on 2026-03-29: the offset before the change (+01) is taken.
    assert time_bounds("2026-03-29 02:30:00 Europe/Paris")[0] == _ns("2026-03-29T01:30:00+00:00")


def test_names_that_are_also_abbreviations_have_the_abbreviations_fixed_offset() -> None:
    """PostgreSQL looks a name up in its abbreviations first: CET is +01 in July too (the zone
    CET would be +02 then), EET +02, WET +00; zone names proper keep summer time."""
    assert time_bounds("2026-07-01 12:00:00 CET")[0] == _ns("2026-07-01T11:00:00+00:00")
    assert time_bounds("2026-07-01 12:00:00 met")[0] == _ns("2026-07-01T11:00:00+00:00")
    assert time_bounds("2026-07-01 12:00:00 EET")[0] == _ns("2026-07-01T10:00:00+00:00")
    assert time_bounds("2026-07-01 12:00:00 WET")[0] == _ns("2026-07-01T12:00:00+00:00")
    assert time_bounds("2026-07-01 12:00:00 Europe/Paris")[0] == _ns("2026-07-01T10:00:00+00:00")
    assert time_bounds("2026-01-15 12:00:00 CET")[0] == _ns("2026-01-15T11:00:00+00:00")


def test_a_history_whose_last_switch_is_earlier_is_followed() -> None:
    """Timeline 3 began on timeline 1 at 0/3000000, before timeline 2 branched off at
    0/8000000 (a restore to a point before the branch, following timeline 2): PostgreSQL
    writes timeline 2's history with that earlier stop appended. A timeline-1 backup that
    ended between the two cannot reach timeline 3."""
    storage = MemoryStorage()
    _history(storage, 2, "1\t0/8000000\tno recovery target specified\n")
    _history(
        storage,
        3,
        "1\t0/8000000\tno recovery target specified\n\n"
        "2\t0/3000000\tbefore 2026-11-25 11:00:00+00\n",
    )
    early, late = "base_000000010000000000000002", "base_000000010000000000000005"
    _backup(storage, early, "2026-11-25T10:00:00+00:00", "0/2000100")
    _backup(storage, late, "2026-11-25T12:00:00+00:00", "0/5000100")
    target = RecoveryTarget("c", time="2026-11-25 14:00:00+00")
    assert backup_for_target(storage, "LATEST", target) == early
    with pytest.raises(UsageError, match="branched off timeline 1 at 0/3000000"):
        backup_for_target(storage, late, target)


def test_latest_is_the_backup_checked_not_whatever_is_newest_when_the_restore_starts(
    branched: MemoryStorage,
) -> None:
    """backup-fetch downloads the backup this choice names. Handing back "LATEST" had it
    resolved again later: a backup finishing in between (the old primary's, in a split-brain
    window, on the abandoned part of timeline 1) would be restored unchecked."""
    chosen = backup_for_target(branched, "LATEST", RecoveryTarget("c"))
    _backup(branched, "base_000000010000000000000007", "2026-11-25T15:00:00+00:00", "0/7000100")
    assert catalog.resolve(branched, chosen) == B2


def test_wal_of_a_timeline_whose_history_is_gone_is_never_passed_over(
    branched: MemoryStorage,
) -> None:
    """Timeline 3's segments stored but 00000003.history not: following the newest timeline,
    PostgreSQL stops on timeline 2 (it probes history files only) and promotes onto 3, whose
    names are taken. Refused for every way of following the newest timeline; asked for by
    number, timeline 2 is restored; a restore of the files alone is warned."""
    branched.put_bytes("wal_005/000000030000000000000007.lz4", b"x")
    for name, target in (
        ("LATEST", RecoveryTarget("c")),
        (B1, RecoveryTarget("c", timeline="latest")),
        ("LATEST", RecoveryTarget("c", time="2026-11-25 14:00:00+00")),
    ):
        with pytest.raises(UsageError) as info:
            backup_for_target(branched, name, target)
        message = str(info.value)
        assert "000000030000000000000007" in message and "00000003.history" in message
        assert "--target-timeline 2" in message
    assert backup_for_target(branched, "LATEST", RecoveryTarget("c", timeline="2")) == B2
    problem = default_timeline_problem(branched, B2)
    assert problem is not None and "00000003.history" in problem
    # Its history back, timeline 3 is followed (and has no backup of its own: B2 is on 2).
    _history(branched, 3, "1\t0/4000000\tpromoted\n2\t0/7000000\tpromoted\n")
    assert backup_for_target(branched, "LATEST", RecoveryTarget("c")) == B2
    assert default_timeline_problem(branched, B2) is None
