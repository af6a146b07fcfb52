"""Point-in-time recovery lands exactly on its target, and recovery follows timeline switches.

Rows committed before a target must be present after recovery, rows committed after it absent.
Targets: a timestamp, an LSN, a transaction id and a named restore point, written with
backup-fetch's recovery options. Then a restored copy is promoted (timeline 2), keeps writing
and archiving, and a second restore of the same timeline-1 backup must follow the history onto
timeline 2.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import lz4.frame
import pytest

import pgcluster
from loglines import STAMP, undated
from pgcluster import Cluster, PgInstall, make_shared_dir, run_as_pg
from walgcli import (
    WalgSetup,
    archive_now,
    archiving_primary,
    fetch_for_recovery,
    normalized_dump,
    prefetched_after_fetch,
    restore_and_recover,
    restore_to_target,
    start_recovery,
)


def _mark(cluster: Cluster, phase: str) -> None:
    cluster.psql(f"INSERT INTO marks VALUES ('{phase}')")


def _phases(cluster: Cluster) -> list[str]:
    return cluster.psql("SELECT phase FROM marks ORDER BY phase").splitlines()


def test_recovery_lands_exactly_on_time_lsn_and_restore_point(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    walg = WalgSetup.create(walg_bin, pg_workdir)
    src = archiving_primary(walg, pg_install, pg_workdir / "src")
    src.pgbench(["-i", "-s", "1", "-q"])
    src.psql("CREATE TABLE marks (phase text PRIMARY KEY)")
    walg.run(["backup-push", str(src.datadir)], cluster=src)

    _mark(src, "a")
    target_time = src.psql("SELECT clock_timestamp()")
    time.sleep(0.2)
    _mark(src, "b")
    _mark(src, "c")
    target_lsn = src.psql("SELECT pg_current_wal_insert_lsn()")
    # d's own transaction id: recovery_target_xid stops just after it commits.
    target_xid = src.psql(
        "WITH d AS (INSERT INTO marks VALUES ('d') RETURNING 1) SELECT txid_current() FROM d"
    )
    _mark(src, "e")
    src.psql("SELECT pg_create_restore_point('walg_rp')")
    _mark(src, "f")
    archive_now(src)
    src.stop()
    # PostgreSQL archived the backup history file pg_backup_stop wrote, under WAL-G's name
    # for it (<segment>.<offset>.backup.lz4) and with its content.
    (backup_file,) = (walg.store / "wal_005").glob("*.backup.lz4")
    assert re.fullmatch(r"[0-9A-F]{24}\.[0-9A-F]{8}\.backup\.lz4", backup_file.name)
    assert lz4.frame.decompress(backup_file.read_bytes()).startswith(b"START WAL LOCATION: ")

    by_time = restore_to_target(
        pg_install, walg, pg_workdir / "by-time", "--target-time", target_time
    )
    assert _phases(by_time) == ["a"]
    by_time.stop()

    by_lsn = restore_to_target(pg_install, walg, pg_workdir / "by-lsn", "--target-lsn", target_lsn)
    assert _phases(by_lsn) == ["a", "b", "c"]
    by_lsn.stop()

    by_xid = restore_to_target(pg_install, walg, pg_workdir / "by-xid", "--target-xid", target_xid)
    assert _phases(by_xid) == ["a", "b", "c", "d"]
    by_xid.stop()

    by_name = restore_to_target(
        pg_install, walg, pg_workdir / "by-name", "--target-name", "walg_rp"
    )
    assert _phases(by_name) == ["a", "b", "c", "d", "e"]
    assert by_name.psql("SELECT count(*) FROM pgbench_accounts") == "100000"
    by_name.stop()


def _quiet_at_the_end_of_the_archive(restored: Cluster) -> None:
    """A recovery that ran to the end of the archive left nothing from walg in the server's
    log but one line for each file recovery asked for and the archive did not have (the next
    segment, the next timeline's history): no error, no traceback, nothing from the detached
    prefetchers that ran past the end. Lines of the server's own start with its timestamp."""
    text = restored.logfile.read_text(errors="replace")
    assert "restored log file" in text, text[-3000:]
    foreign = [
        line
        for line in text.splitlines()
        if line.strip() and not line[:4].isdigit() and not line.startswith(("\t", " "))
    ]
    missing = [
        re.fullmatch(rf"INFO: {STAMP} WAL file (\S+) is not in the archive", line)
        for line in foreign
    ]
    assert all(missing), foreign
    # Recovery asks for one segment past the archive's end (and for history files, one
    # call each); the prefetchers that went on past it say nothing there.
    segments = {
        m.group(1) for m in missing if m is not None and not m.group(1).endswith(".history")
    }
    assert len(segments) <= 1, foreign


def _prefetch_crosses_onto_timeline_2(walg: WalgSetup, workdir: Path) -> None:
    """A wal-fetch of timeline 1's last segment before the switch prefetches the segments
    after it from timeline 2, as recovery following the archived history will ask for them,
    not timeline 1's copy of the segment holding the switch (stored: the source archived it)."""
    history = lz4.frame.decompress((walg.store / "wal_005" / "00000002.history.lz4").read_bytes())
    parent, switch = history.decode().split("\t")[:2]
    assert parent == "1"
    high, low = (int(part, 16) for part in switch.split("/"))
    segno = ((high << 32) | low) >> 24  # 16 MiB segments
    before = f"00000001{segno - 1 >> 8:08X}{segno - 1 & 0xFF:08X}"
    after = [f"00000002{n >> 8:08X}{n & 0xFF:08X}" for n in (segno, segno + 1)]
    prefetched = prefetched_after_fetch(walg, workdir, before, after)
    assert not [name for name in prefetched if name.startswith("00000001")], prefetched


def test_recovery_follows_a_timeline_switch(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    walg = WalgSetup.create(walg_bin, pg_workdir)
    archiving = {"archive_mode": "on", "archive_command": walg.command("wal-push", "%p")}
    src = Cluster.create(pg_install, pg_workdir / "src", conf=archiving)
    src.start()
    src.pgbench(["-i", "-s", "1", "-q"])
    src.psql("CREATE TABLE marks (phase text PRIMARY KEY)")
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    _mark(src, "tl1")
    archive_now(src)
    src.stop()

    # A restored copy recovers to the end of timeline 1, is promoted onto timeline 2 and keeps
    # writing, archiving into the same storage (00000002.history included).
    first = restore_to_target(pg_install, walg, pg_workdir / "first", conf=archiving)
    _quiet_at_the_end_of_the_archive(first)
    assert first.psql("SELECT timeline_id FROM pg_control_checkpoint()") in ("1", "2")
    first.checkpoint()
    assert first.psql("SELECT timeline_id FROM pg_control_checkpoint()") == "2"
    _mark(first, "tl2")
    first.pgbench(["-n", "-t", "300", "-c", "2"])
    archive_now(first)
    assert (walg.store / "wal_005" / "00000002.history.lz4").exists()
    expected = normalized_dump(first.pg_dumpall())
    first.stop()
    _prefetch_crosses_onto_timeline_2(walg, pg_workdir)

    # The same timeline-1 backup, restored again, must follow the history onto timeline 2.
    second = restore_to_target(
        pg_install, walg, pg_workdir / "second", "--target-timeline", "latest"
    )
    assert _phases(second) == ["tl1", "tl2"]
    assert normalized_dump(second.pg_dumpall()) == expected
    second.checkpoint()
    assert second.psql("SELECT timeline_id FROM pg_control_checkpoint()") == "3"
    second.stop()


@dataclass(frozen=True)
class _Archived:
    """A stopped source's storage: a backup, then segment ``damaged``, then ``following``."""

    store: Path
    damaged: str
    following: str


def _archive_a_backup_and_two_segments(
    install: PgInstall, workdir: Path, walg_bin: str
) -> _Archived:
    walg = WalgSetup.create(walg_bin, workdir)
    src = archiving_primary(walg, install, workdir / "src")
    src.psql("CREATE TABLE t (i int)")
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    src.psql("INSERT INTO t SELECT generate_series(1, 1000)")
    damaged = archive_now(src)
    src.psql("INSERT INTO t SELECT generate_series(1, 1000)")
    following = archive_now(src)
    src.stop()
    return _Archived(walg.store, damaged, following)


@pytest.fixture(scope="module")
def archived_source(walg_bin: str) -> Iterator[Callable[[PgInstall], _Archived]]:
    """One source archive per major for the module, made on first use; each test damages
    a copy of it in its own storage, so no test sees another's damage."""
    workdir = pgcluster.pg_tmpdir(prefix="pitr-damage-")
    made: dict[int, _Archived] = {}

    def archived(install: PgInstall) -> _Archived:
        if install.major not in made:
            folder = make_shared_dir(workdir / f"pg{install.major}", 0o755)
            made[install.major] = _archive_a_backup_and_two_segments(install, folder, walg_bin)
        return made[install.major]

    yield archived
    pgcluster.stop_clusters_under(workdir, mode="immediate")
    shutil.rmtree(workdir, ignore_errors=True)


# Seven kinds of damage on six majors made 42 restores; wal-fetch's answer does not depend on
# the major, and what the server does with it is seen on both sides of each recovery change.
@pytest.mark.majors(13, 15, 18)
@pytest.mark.parametrize(
    "damage",
    [
        "corrupt",
        "dangling-link",
        "folder",
        "another-segment",
        "zeros",
        "truncated",
        "another-system",
    ],
)
def test_a_corrupt_archived_segment_stops_recovery_instead_of_ending_it(
    pg_install: PgInstall,
    pg_workdir: Path,
    walg_bin: str,
    damage: str,
    archived_source: Callable[[PgInstall], _Archived],
) -> None:
    """PostgreSQL takes a restore_command exit code up to 125 for the end of the archive: a
    corrupt segment must stop recovery with an error, not promote a server without the rest.
    So must one that is there but cannot be read: a symbolic link to a volume not mounted,
    or a folder in its place (these ended recovery early, losing the later rows). So must an
    intact object that holds another segment (a copy under the wrong name): wal-fetch handed
    its bytes over with exit 0, PostgreSQL read them as the end of the WAL ("unexpected
    pageaddr") and promoted. So must an uncompressed object of zeros, which carries no
    checksum and which storage that does not sync can leave after a crash: PostgreSQL read it
    as the end of the WAL ("invalid magic number 0000") and promoted. An object cut short
    (an upload that died, a copy that ran out of space) and another database system's
    segment under this one's name (a second cluster given the same prefix) stop it too, with
    walg naming the object."""
    source = archived_source(pg_install)
    damaged, following = source.damaged, source.following
    walg = WalgSetup.create(walg_bin, pg_workdir)
    run_as_pg(["cp", "-a", f"{source.store}/.", str(walg.store)])
    stored = walg.store / "wal_005" / f"{damaged}.lz4"
    if damage == "corrupt":
        data = bytearray(stored.read_bytes())
        data[len(data) // 2] ^= 0xFF
        stored.write_bytes(bytes(data))
    elif damage == "another-segment":
        assert following != damaged
        stored.write_bytes((walg.store / "wal_005" / f"{following}.lz4").read_bytes())
    elif damage == "zeros":
        size = len(lz4.frame.decompress(stored.read_bytes()))
        stored.unlink()
        (stored.parent / damaged).write_bytes(bytes(size))
    elif damage == "truncated":
        data = stored.read_bytes()
        stored.write_bytes(data[: len(data) // 2])
    elif damage == "another-system":
        stored.write_bytes(_another_systems_segment(pg_install, pg_workdir, walg_bin, damaged))
    else:
        stored.unlink()
        if damage == "folder":
            stored.mkdir()
        else:
            stored.symlink_to(f"/nonexistent/archive-volume/{damaged}.lz4")

    dest = pg_workdir / "restored"
    restored = restore_to_target(pg_install, walg, dest, until="stopped", timeout=120)
    log = restored.log_tail(200)
    assert not restored.is_running(), log
    assert f'could not restore file "{damaged}" from archive' in log, log
    assert "exit code 128" in log, log
    assert "selected new timeline ID" not in log, log
    assert not (dest / "pg_wal" / "00000002.history").exists()
    assert (dest / "recovery.signal").exists()  # still to be recovered, once the archive is fixed
    if damage == "truncated":
        assert f"ERROR: wal_005/{damaged}.lz4: LZ4 stream is truncated" in undated(log), log
    elif damage == "another-system":
        said = undated(log)
        assert f"ERROR: wal_005/{damaged}.lz4 is not WAL segment {damaged}: it is another" in said


def _another_systems_segment(install: PgInstall, workdir: Path, walg_bin: str, name: str) -> bytes:
    """The object another database system (its own initdb, not a copy of this one's
    template) archived under WAL segment ``name``."""
    other = WalgSetup.create(walg_bin, workdir / "other")
    cluster = archiving_primary(other, install, workdir / "other" / "data", use_template=False)
    while archive_now(cluster) < name:
        pass
    cluster.stop()
    return (other.store / "wal_005" / f"{name}.lz4").read_bytes()


def _backed_up_a_then_b(
    install: PgInstall, walg: WalgSetup, datadir: Path, archiving: dict[str, str]
) -> str:
    """A stopped, archived cluster with a backup, then phase "a", a moment (returned), and
    phase "b"."""
    src = Cluster.create(install, datadir, conf=archiving)
    src.start()
    src.psql("CREATE TABLE marks (phase text PRIMARY KEY)")
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    _mark(src, "a")
    moment = src.psql("SELECT clock_timestamp()")
    time.sleep(0.2)
    _mark(src, "b")
    archive_now(src)
    src.stop()
    return moment


def test_a_point_in_time_restore_leaves_no_target_for_later_restores(
    pg_workdir: Path, walg_bin: str
) -> None:
    """A server restored to a time keeps that target in postgresql.auto.conf after promotion,
    and so do its backups. A later restore of such a backup "files only" (restore_command in
    postgresql.conf, as WAL-G documents) used to stop at the old target and promote, leaving
    out what was archived after it; and LATEST with a time target restored a backup that
    finished after the target, so rows committed after it came back too."""
    install = PgInstall.load(15)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    archiving = {"archive_mode": "on", "archive_command": walg.command("wal-push", "%p")}
    first_target = _backed_up_a_then_b(install, walg, pg_workdir / "src", archiving)

    pitr = restore_to_target(
        install, walg, pg_workdir / "pitr", "--target-time", first_target, conf=archiving
    )
    assert _phases(pitr) == ["a"]
    _mark(pitr, "c")
    second_target = pitr.psql("SELECT clock_timestamp()")
    time.sleep(0.2)
    pushed = walg.run(["backup-push", str(pitr.datadir)], cluster=pitr)
    assert "recovery_target_time" in pushed.stderr and "ALTER SYSTEM RESET" in pushed.stderr
    _mark(pitr, "d")
    archive_now(pitr)
    pitr.stop()

    files_only = restore_and_recover(install, pg_workdir, walg)
    assert _phases(files_only) == ["a", "c", "d"]
    files_only.stop()

    # The newest backup finished after second_target: LATEST means the first one, which
    # replays onto timeline 2 and stops there.
    by_time = restore_to_target(
        install, walg, pg_workdir / "by-time", "--target-time", second_target
    )
    assert _phases(by_time) == ["a", "c"]
    by_time.stop()


def test_a_restore_that_stops_before_a_branch_leaves_a_history_walg_reads(
    pg_workdir: Path, walg_bin: str
) -> None:
    """A point-in-time restore to a time before timeline 2 branched off, following latest
    (the default), stops on timeline 1; PostgreSQL copies timeline 2's history into the new
    one's and appends the stop point, earlier than timeline 2's own switch. It reads such a
    history (it checks the order of timelines, not of switch points), and so must walg: the
    prefetcher, wal-verify and backup-fetch's choice of a backup follow it."""
    from walg.ops.wal import read_history
    from walg.storage.file import FileStorage

    install = PgInstall.load(15)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    archiving = {"archive_mode": "on", "archive_command": walg.command("wal-push", "%p")}
    target_time = _backed_up_a_then_b(install, walg, pg_workdir / "src", archiving)

    first = restore_to_target(install, walg, pg_workdir / "first", conf=archiving)
    first.checkpoint()
    _mark(first, "c")
    archive_now(first)
    first.stop()

    second = restore_to_target(
        install, walg, pg_workdir / "second", "--target-time", target_time, conf=archiving
    )
    assert _phases(second) == ["a"]
    second.checkpoint()
    archive_now(second)
    second.stop()

    shown = (walg.store / "wal_005").iterdir()
    history = read_history(FileStorage(str(walg.store)), 3)
    assert history is not None, sorted(p.name for p in shown)
    assert history.timelines() == [1, 2, 3]
    # Timeline 3 began where the restore stopped on timeline 1, before timeline 2 branched.
    stop = history.switches[1].lsn
    assert stop < history.switches[0].lsn
    assert history.end_lsn(1) == history.end_lsn(2) == stop
    assert history.timeline_of(stop // (16 << 20)) == 3


def test_a_restore_stopped_at_its_target_leaves_no_prefetched_wal_once_promoted(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    """The archive goes on for several segments past the target, so the restore prefetches
    segments it never replays. Once the restored copy is promoted and archives its new
    timeline's history, pg_wal must hold none of them (they stayed there for good)."""
    walg = WalgSetup.create(walg_bin, pg_workdir)
    archiving = {"archive_mode": "on", "archive_command": walg.command("wal-push", "%p")}
    src = Cluster.create(pg_install, pg_workdir / "src", conf=archiving)
    src.start()
    src.psql("CREATE TABLE marks (phase text PRIMARY KEY)")
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    _mark(src, "a")
    target_lsn = src.psql("SELECT pg_current_wal_insert_lsn()")
    for n in range(6):
        _mark(src, f"b{n}")
        archive_now(src)
    src.stop()

    restored = restore_to_target(
        pg_install, walg, pg_workdir / "pitr", "--target-lsn", target_lsn, conf=archiving
    )
    assert _phases(restored) == ["a"]
    history = walg.store / "wal_005" / "00000002.history.lz4"
    prefetch = restored.datadir / "pg_wal" / ".wal-g" / "prefetch"
    deadline = time.monotonic() + 60
    while True:
        # os.walk, not rglob: walg removes these folders while they are walked (rglob raised
        # FileNotFoundError for a running/ folder gone between its listing and its scan).
        left = sorted(name for _, _, files in os.walk(prefetch) for name in files)
        if history.exists() and not left:
            break
        assert time.monotonic() < deadline, f"history archived: {history.exists()}; left {left}"
        time.sleep(0.2)
    restored.stop()


def test_latest_without_a_target_is_a_backup_on_the_timeline_recovery_follows(
    pg_workdir: Path, walg_bin: str
) -> None:
    """After a point-in-time restore (timeline 2, branched off timeline 1 at a moment before
    the newest backup), the newest backup is on the abandoned part of timeline 1. Recovery
    follows the newest timeline (recovery_target_timeline's default), which cannot start
    from it: backup-fetch LATEST --restore-command restored it anyway, after the whole
    download, and the server refused to start ("could not locate required checkpoint
    record"). LATEST is the newest backup recovery can start from; a named one that it cannot
    is refused before anything is downloaded."""
    from walg.ops import catalog
    from walg.storage.file import FileStorage

    install = PgInstall.load(15)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    archiving = {"archive_mode": "on", "archive_command": walg.command("wal-push", "%p")}
    target_time = _backed_up_a_then_b(install, walg, pg_workdir / "src", archiving)
    src = Cluster.from_existing(install, pg_workdir / "src", conf=archiving)
    src.start()
    walg.run(["backup-push", str(src.datadir)], cluster=src)  # after "b", on timeline 1
    _mark(src, "c")
    archive_now(src)
    src.stop()
    first, newest = (ref.name for ref in catalog.list_backups(FileStorage(str(walg.store))))

    pitr = restore_to_target(
        install, walg, pg_workdir / "pitr", "--target-time", target_time, conf=archiving
    )
    assert _phases(pitr) == ["a"]
    pitr.psql("ALTER SYSTEM RESET recovery_target_time")
    pitr.checkpoint()
    _mark(pitr, "d")
    archive_now(pitr)
    expected = normalized_dump(pitr.pg_dumpall())
    pitr.stop()

    latest = restore_to_target(install, walg, pg_workdir / "latest")
    assert first[len("base_") :] in (latest.datadir / "backup_label.old").read_text()
    assert _phases(latest) == ["a", "d"]
    assert normalized_dump(latest.pg_dumpall()) == expected
    latest.stop()

    refused = fetch_for_recovery(walg, pg_workdir / "named", name=newest, check=False)
    assert refused.returncode == 2, refused.stderr
    assert "timeline 2" in refused.stderr, refused.stderr
    assert not (pg_workdir / "named").exists()


@pytest.mark.majors(13, 18)
def test_a_delay_inherited_from_a_delayed_standby_does_not_hold_back_the_restore(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    """A delayed standby (a common guard against exactly the DROP TABLE a point-in-time
    restore undoes) keeps recovery_min_apply_delay in postgresql.auto.conf, and so do its
    backups. PostgreSQL honours it in archive recovery too: a restore of such a backup to a
    target minutes ago stayed in recovery, waiting for each commit to be an hour old, and
    neither reached its target nor promoted. The setting is made here with ALTER SYSTEM on
    the primary (ignored there): its backup carries it as a delayed standby's would. Restored
    without recovery settings (files only), the delay is named in a warning."""
    walg = WalgSetup.create(walg_bin, pg_workdir)
    src = archiving_primary(walg, pg_install, pg_workdir / "src")
    src.psql("CREATE TABLE marks (phase text PRIMARY KEY)")
    src.psql("ALTER SYSTEM SET recovery_min_apply_delay = '1h'")
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    _mark(src, "a")
    target_time = src.psql("SELECT clock_timestamp()")
    time.sleep(0.2)
    _mark(src, "b")
    archive_now(src)
    src.stop()

    dest = pg_workdir / "pitr"
    restored = restore_to_target(
        pg_install, walg, dest, "--target-time", target_time, until="ready", timeout=60
    )
    # Recovery of these few records takes a second or two; the delay held it for an hour.
    restored.wait_for_recovery_end(timeout=45)
    assert _phases(restored) == ["a"]
    restored.stop()

    # Restored files only, walg cannot tell an archive recovery from a delayed standby to be:
    # it keeps the delay and says so.
    files_only = walg.run(["backup-fetch", str(pg_workdir / "files-only"), "LATEST"])
    assert "recovery_min_apply_delay = '1h'" in files_only.stderr, files_only.stderr


def test_a_named_backup_with_a_time_without_zone_that_may_precede_its_end_is_refused(
    pg_workdir: Path, walg_bin: str
) -> None:
    """A time without an offset is read by the restored server in its timezone, which walg
    cannot see before the restore. Named with such a time that may lie before its end, a
    backup was restored after a warning only; where the server's timezone put the target
    before the backup's end (Asia/Tokyo here), PostgreSQL replayed past it without noticing
    and promoted a server holding what was committed after the target. LATEST refused the
    same choice; a named backup is refused too (exit 2), before anything is restored."""
    install = PgInstall.load(15)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    src = archiving_primary(walg, install, pg_workdir / "src", conf={"timezone": "Asia/Tokyo"})
    src.psql("CREATE TABLE marks (phase text PRIMARY KEY)")
    target = src.psql("SELECT localtimestamp")  # the server's wall clock, no zone
    time.sleep(0.2)
    _mark(src, "after the target")
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    archive_now(src)
    src.stop()
    (sentinel,) = walg.store.glob("basebackups_005/*_backup_stop_sentinel.json")
    name = sentinel.name.removesuffix("_backup_stop_sentinel.json")

    for which in (name, "LATEST"):
        dest = pg_workdir / f"restore-{which}"
        refused = fetch_for_recovery(walg, dest, "--target-time", target, name=which, check=False)
        assert refused.returncode == 2, refused.stderr
        assert "has no time zone" in refused.stderr, refused.stderr
        assert not dest.exists()


def test_latest_warns_when_the_timeline_it_leaves_went_on_after_the_fork(
    pg_workdir: Path, walg_bin: str
) -> None:
    """A test restore of production's backup, started elsewhere with the restored
    archive_command, promotes and archives timeline 2 into production's storage while
    production goes on, and backs up, on timeline 1. Later, LATEST follows timeline 2 (the
    newest, as PostgreSQL's recovery_target_timeline = latest does) from the backup taken
    before the fork, and restored the test copy's data instead of production's, exit 0, with
    an INFO line only. The same happens to an old primary's backups in a split brain, where
    timeline 2 is the right one: walg cannot tell which it is, and now says so in a warning
    that names --target-timeline 1, whenever a backup it leaves out ended on the old timeline
    after the new one's history was archived."""
    install = PgInstall.load(15)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    archiving = {"archive_mode": "on", "archive_command": walg.command("wal-push", "%p")}
    prod = Cluster.create(install, pg_workdir / "prod", conf=archiving)
    prod.start()
    prod.psql("CREATE TABLE marks (phase text PRIMARY KEY)")
    walg.run(["backup-push", str(prod.datadir)], cluster=prod)
    _mark(prod, "a")
    archive_now(prod)

    drill = restore_to_target(install, walg, pg_workdir / "drill", conf=archiving)
    drill.checkpoint()
    _mark(drill, "drill")
    archive_now(drill)
    drill.stop()
    assert (walg.store / "wal_005" / "00000002.history.lz4").exists()

    _mark(prod, "b")
    walg.run(["backup-push", str(prod.datadir)], cluster=prod)
    _mark(prod, "c")
    archive_now(prod)
    prod.stop()

    for args in ([], ["--target-time", "2100-01-01 00:00:00+00"]):
        dest = pg_workdir / f"latest{len(args)}"
        fetched = fetch_for_recovery(walg, dest, *args)
        warnings = [line for line in fetched.stderr.splitlines() if line.startswith("WARNING")]
        assert any("--target-timeline 1" in line for line in warnings), fetched.stderr
    restored = restore_to_target(install, walg, pg_workdir / "timeline-1", "--target-timeline", "1")
    assert _phases(restored) == ["a", "b", "c"]
    restored.stop()


@pytest.mark.majors(13, 18)
@pytest.mark.parametrize("conf", ["postgresql.conf", "conf.d/50-old-target.conf"])
def test_a_files_only_restore_leaves_no_target_from_postgresql_conf(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str, conf: str
) -> None:
    """WAL-G's recovery instructions put recovery_target_time in postgresql.conf, and after
    the point-in-time restore it stays there (ignored by a primary), in the data directory and
    in its later backups. Restored files only, with restore_command and recovery.signal added
    as those instructions say, such a backup stopped at the first commit after it became
    consistent (the old target lies before it) and promoted, without anything archived after
    the backup, and without a word from walg: only postgresql.auto.conf was cleaned. The same
    held, after postgresql.conf was cleaned too, for a target in a file it includes."""
    walg = WalgSetup.create(walg_bin, pg_workdir)
    target = {
        "recovery_target_time": "2020-01-01 00:00:00+00",
        "recovery_target_action": "promote",
    }
    src = archiving_primary(
        walg,
        pg_install,
        pg_workdir / "src",
        conf=target if conf == "postgresql.conf" else {},
        start=False,
    )
    if conf != "postgresql.conf":
        (src.datadir / "conf.d").mkdir()
        (src.datadir / conf).write_text("".join(f"{k} = '{v}'\n" for k, v in target.items()))
        with (src.datadir / "postgresql.conf").open("a") as handle:
            handle.write("include_dir 'conf.d'\n")
    src.start()
    src.psql("CREATE TABLE marks (phase text PRIMARY KEY)")
    pushed = walg.run(["backup-push", str(src.datadir)], cluster=src)
    # As for one in postgresql.auto.conf: a standby cloned with pg_basebackup would stop
    # at it. backup-push said nothing of this one.
    warned = [line for line in pushed.stderr.splitlines() if line.startswith("WARNING")]
    assert any(f"{conf} sets recovery_target_time" in line for line in warned), pushed.stderr
    _mark(src, "a")
    _mark(src, "b")
    archive_now(src)
    src.stop()

    restored = restore_and_recover(pg_install, pg_workdir, walg)
    assert _phases(restored) == ["a", "b"]
    restored.stop()


@pytest.mark.majors(13, 16)
def test_a_target_time_in_the_future_is_warned_of_and_the_restore_can_go_on_to_the_end(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    """A --target-time later than now (an offset typed wrong: local time given as +00) is
    reached by no commit in the archive: recovery replays it all, and PostgreSQL 13+ stops with
    FATAL instead of promoting. backup-fetch says so before restoring, and the README's way on
    (the target line removed from postgresql.auto.conf, the server started again) recovers to
    the end of the archive."""
    walg = WalgSetup.create(walg_bin, pg_workdir)
    src = Cluster.create(
        pg_install,
        pg_workdir / "src",
        conf={"archive_mode": "on", "archive_command": walg.command("wal-push", "%p")},
    )
    src.start()
    src.psql("CREATE TABLE marks (phase text PRIMARY KEY)")
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    _mark(src, "a")
    future = src.psql("SELECT (now() + interval '3 hours')::timestamptz(0)")
    archive_now(src)
    src.stop()

    dest = pg_workdir / "restored"
    fetched = fetch_for_recovery(walg, dest, "--target-time", future)
    assert f"--target-time '{future}' is in the future" in fetched.stderr, fetched.stderr
    assert "recovery ended before configured recovery target was reached" in fetched.stderr
    restored = Cluster.from_existing(pg_install, dest, conf={"archive_mode": "off"})
    start_recovery(restored, "stopped")
    log = restored.logfile.read_text(errors="replace")
    assert "FATAL:  recovery ended before configured recovery target was reached" in log

    auto = dest / "postgresql.auto.conf"
    kept = [
        line
        for line in auto.read_text().splitlines(keepends=True)
        if not line.startswith("recovery_target_time")
    ]
    auto.write_text("".join(kept))
    start_recovery(restored)
    assert _phases(restored) == ["a"]
    restored.stop()


@pytest.mark.majors(13, 16)
def test_a_target_past_the_end_of_the_archive_is_warned_of_before_recovery_stops_short(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    """A target after the last archived WAL (a time at the moment of a disaster, after the
    lost primary's last archived commit) is never reached: PostgreSQL 13+ replays the whole
    archive, then stops with "recovery ended before configured recovery target was reached"
    and does not start. backup-fetch restored such a restore without a word; it now warns,
    for a time and for an LSN, and says how to recover all that was archived instead, which
    works. A target inside the archive gets no such warning and lands exactly."""
    from walg.core.lsn import format_lsn, parse_lsn

    walg = WalgSetup.create(walg_bin, pg_workdir)
    src = Cluster.create(
        pg_install,
        pg_workdir / "src",
        conf={"archive_mode": "on", "archive_command": walg.command("wal-push", "%p")},
    )
    src.start()
    src.psql("CREATE TABLE marks (phase text PRIMARY KEY)")
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    _mark(src, "a")
    within = src.psql("SELECT clock_timestamp()")
    time.sleep(0.2)
    _mark(src, "b")
    archive_now(src)
    past_time = src.psql("SELECT clock_timestamp() + interval '1 hour'")
    past_lsn = format_lsn(parse_lsn(src.psql("SELECT pg_current_wal_insert_lsn()")) + (64 << 20))
    src.stop()
    warning = "without reaching the target"

    said = fetch_for_recovery(walg, pg_workdir / "within", "--target-time", within).stderr
    assert warning not in said, said
    restored = Cluster.from_existing(
        pg_install, pg_workdir / "within", conf={"archive_mode": "off"}
    )
    start_recovery(restored)
    assert _phases(restored) == ["a"]
    restored.stop()

    said = fetch_for_recovery(walg, pg_workdir / "past-lsn", "--target-lsn", past_lsn).stderr
    assert warning in said and past_lsn in said, said

    dest = pg_workdir / "past-time"
    said = fetch_for_recovery(walg, dest, "--target-time", past_time).stderr
    assert warning in said and "postgresql.auto.conf" in said, said
    stopped = Cluster.from_existing(pg_install, dest, conf={"archive_mode": "off"})
    start_recovery(stopped, "stopped", timeout=120)
    log = stopped.logfile.read_text(errors="replace")
    assert "recovery ended before configured recovery target was reached" in log, log
    # What the warning says to do: the target out, the same directory recovers to the end.
    auto = dest / "postgresql.auto.conf"
    auto.write_text(
        "".join(
            line
            for line in auto.read_text().splitlines(keepends=True)
            if not line.startswith("recovery_target_time")
        )
    )
    start_recovery(stopped)
    assert _phases(stopped) == ["a", "b"]
    stopped.stop()
