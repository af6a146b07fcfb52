"""Disaster-recovery drills on real clusters: what an operator sees when the archive or the
restore host is not what the runbook assumed.

A segment missing between a backup and a recovery target, a restore onto the host of a
primary that still uses its tablespace, two servers promoted from one backup into one
archive (a split brain), and a backup whose primary crashed right after it. Each pins what
walg and PostgreSQL do together: recovery stops with the missing file named and resumes once
the archive is mended, nothing of the running primary or of the archive is overwritten, and a
backup reported done restores.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path

import pytest

from loglines import STAMP, undated
from pgcluster import Cluster, PgInstall
from walg.core.lsn import Segment
from walgcli import (
    Outcome,
    WalgSetup,
    archive_now,
    archiving_primary,
    fetch_for_recovery,
    restore_to_target,
    start_load,
    start_recovery,
)


def _mark(cluster: Cluster, phase: str) -> None:
    cluster.psql(f"INSERT INTO marks VALUES ('{phase}')")


def _walg_lines(log: str) -> list[str]:
    """The lines of a server's log that are not the server's own (those start with a
    timestamp or continue one): what restore_command wrote."""
    return [
        line
        for line in log.splitlines()
        if line.strip() and not line[:4].isdigit() and not line.startswith(("\t", " "))
    ]


@pytest.mark.majors(13, 17)
@pytest.mark.parametrize("action", ["promote", "pause", "shutdown"])
def test_a_target_past_a_gap_in_the_archive_stops_recovery_until_the_gap_is_mended(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str, action: str
) -> None:
    """A segment between the backup and the target is missing from storage (a deleted
    object, a lost upload). wal-show names it, and wal-verify on the primary, which archived
    past it, calls it lost (FAILURE). wal-fetch says, once per call, that this segment is not
    in the archive (exit 74, the end of the archive to PostgreSQL), and PostgreSQL 13+ then
    refuses to end recovery short of the target whatever --target-action says: "recovery
    ended before configured recovery target was reached", no new timeline, recovery.signal
    kept. Once the segment is back in storage the same directory recovers to the target and
    takes its action."""
    walg = WalgSetup.create(walg_bin, pg_workdir)
    src = archiving_primary(walg, pg_install, pg_workdir / "src")
    src.psql("CREATE TABLE marks (phase text PRIMARY KEY)")
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    _mark(src, "a")
    archive_now(src)
    _mark(src, "b")
    gap = archive_now(src)
    _mark(src, "c")
    target = src.psql("SELECT clock_timestamp()")
    _mark(src, "d")
    archive_now(src)
    stored = walg.store / "wal_005" / f"{gap}.lz4"
    kept = pg_workdir / "kept-aside.lz4"
    shutil.move(stored, kept)

    show = walg.run(["wal-show", "--detailed-json"])
    assert f'"{gap}"' in show.stdout, show.stdout
    # The primary has archived past the gap: no upload of it is under way, it is lost.
    verify = walg.run(["wal-verify", "integrity", "--json"], cluster=src)
    doc = json.loads(verify.stdout)["integrity"]
    assert doc["status"] == "FAILURE", verify.stdout
    missing = [(r["start_segment"], r["status"]) for r in doc["details"] if r["status"] != "FOUND"]
    assert missing == [(gap, "MISSING_LOST")], verify.stdout
    src.stop()

    dest = pg_workdir / "restored"
    flags = ("--target-time", target, "--target-action", action)
    restored = restore_to_target(pg_install, walg, dest, *flags, until="stopped", timeout=120)
    log = restored.logfile.read_text(errors="replace")
    assert "FATAL:  recovery ended before configured recovery target was reached" in log, log
    assert "selected new timeline ID" not in log, log
    assert (dest / "recovery.signal").exists()
    # walg said which segment is missing, and that the archive goes on after it (a gap, not
    # the end of the archive, which would read the same to PostgreSQL), and nothing else: no
    # error, no traceback, no line from the prefetchers that ran on past the gap.
    after = Segment.parse(gap).next().name()
    said = _walg_lines(log)
    assert said, log
    # Dated as walg's log lines are: the server writes them without a time of its own.
    assert all(re.match(rf"(INFO|WARNING): {STAMP} WAL file ", line) for line in said), said
    said = [undated(line) for line in said]
    histories = [line for line in said if line.split()[3].endswith(".history")]
    assert all(
        line.startswith("INFO: ") and line.endswith(" is not in the archive") for line in histories
    ), said
    segments = [line for line in said if line not in histories]
    assert segments, log
    assert all(
        line.startswith(f"WARNING: WAL file {gap} is not in the archive, but {after} after it is:")
        and "a gap in the archive" in line
        for line in segments
    ), said

    # The archive mended, the same restore goes on to its target.
    shutil.move(kept, stored)
    restored.logfile.write_text("")
    if action == "shutdown":
        start_recovery(restored, "stopped", timeout=120)
        log = restored.logfile.read_text(errors="replace")
        assert "shutdown at recovery target" in log, log
        assert "selected new timeline ID" not in log, log
        return
    until: Outcome = "promoted" if action == "promote" else "paused"
    start_recovery(restored, until, timeout=120)
    if action == "pause":
        assert restored.is_in_recovery()
    assert restored.psql("SELECT string_agg(phase, ',' ORDER BY phase) FROM marks") == "a,b,c"
    restored.stop()


def test_a_restore_on_the_host_of_a_running_primary_leaves_its_tablespace_alone(
    pg_workdir: Path, walg_bin: str
) -> None:
    """Restoring into a new DEST on the primary's own host (a test restore, a second copy)
    without --restore-spec would put the tablespace at its original location, which the
    running primary uses: backup-fetch refuses before it touches anything (exit 2), naming the
    location and --restore-spec, and the primary's files are as they were."""
    install = PgInstall.load(15)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    src = archiving_primary(walg, install, pg_workdir / "src")
    location = src.add_tablespace("ts", pg_workdir / "ts")
    src.psql("CREATE TABLE marks (phase text PRIMARY KEY) TABLESPACE ts")
    _mark(src, "a")
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    src.checkpoint()

    def snapshot() -> dict[str, tuple[int, int]]:
        return {
            str(p): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in location.rglob("*")
            if p.is_file()
        }

    before = snapshot()
    assert before
    dest = pg_workdir / "restored"
    for extra in ([], ["--restore-command", walg.command("wal-fetch", "%f", "%p")]):
        result = walg.run(["backup-fetch", str(dest), "LATEST", *extra], check=False)
        assert result.returncode == 2, result.stderr
        assert str(location) in result.stderr and "--restore-spec" in result.stderr
        assert not dest.exists()
    assert snapshot() == before
    assert src.psql("SELECT phase FROM marks") == "a"
    src.stop()


def test_two_servers_promoted_from_one_backup_into_one_archive_overwrite_nothing(
    pg_workdir: Path, walg_bin: str
) -> None:
    """A split brain: two restores of the same backup promote while neither can reach the
    archive (a network partition), so both choose timeline 2 from the same switch point.
    When archiving comes back, the second server's 00000002.history, the same bytes, is
    taken as archived; its first segment of timeline 2, other WAL under a stored name, is
    refused with a message that names the cause, and the first server's objects are left
    as they were."""
    install = PgInstall.load(15)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    src = archiving_primary(walg, install, pg_workdir / "src")
    src.psql("CREATE TABLE marks (phase text PRIMARY KEY)")
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    _mark(src, "a")
    archive_now(src)
    src.stop()

    nodes = []
    for name in ("one", "two"):
        conf = {"archive_mode": "on", "archive_command": "false"}
        nodes.append(restore_to_target(install, walg, pg_workdir / name, conf=conf, until=None))
    for node in nodes:
        node.start(wait_ready=False)
    for name, node in zip(("one", "two"), nodes, strict=True):
        node.wait_ready(timeout=120)
        node.wait_for_recovery_end(timeout=120)
        timeline = node.psql("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")
        assert timeline == "00000002"
        _mark(node, name)
        node.psql("SELECT pg_switch_wal()")
    one, two = nodes
    one.set_conf({"archive_command": walg.command("wal-push", "%p")})
    one.reload()
    first = archive_now(one)
    assert first.startswith("00000002")
    wal = walg.store / "wal_005"
    stored = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in wal.iterdir()}
    assert "00000002.history.lz4" in stored

    two.logfile.write_text("")
    two.set_conf({"archive_command": walg.command("wal-push", "%p")})
    two.reload()
    deadline = time.monotonic() + 60
    while True:
        failed = two.psql("SELECT coalesce(last_failed_wal, '') FROM pg_stat_archiver")
        if failed.startswith("00000002") and failed != "00000002.history":
            break
        assert time.monotonic() < deadline, two.log_tail(60)
        time.sleep(0.2)
    assert two.psql("SELECT last_archived_wal FROM pg_stat_archiver") == "00000002.history"
    log = two.logfile.read_text(errors="replace")
    assert f"WAL file {failed} is already archived as wal_005/{failed}.lz4" in log, log
    assert "another server of this system writes this timeline" in log, log
    one.stop()
    two.stop()
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in wal.iterdir()}
    assert {k: v for k, v in after.items() if k in stored} == stored
    assert not [k for k in after if k not in stored and k.startswith(failed)], after


@pytest.mark.majors(13, 17)
def test_a_backup_of_a_primary_that_crashed_right_after_it_restores(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    """backup-push exits 0 only once the WAL the backup needs is in storage: a primary
    killed the moment it returns, its data directory lost, is restored from that backup and
    reaches a consistent state."""
    walg = WalgSetup.create(walg_bin, pg_workdir)
    src = archiving_primary(walg, pg_install, pg_workdir / "src")
    src.pgbench(["-i", "-s", "1", "-q"])
    load = start_load(src, 30)
    try:
        walg.run(["backup-push", str(src.datadir)], cluster=src)
        src.stop(mode="immediate")
    finally:
        load.kill()
        load.communicate(timeout=60)
    shutil.rmtree(src.datadir)

    restored = restore_to_target(pg_install, walg, pg_workdir / "restored", timeout=120)
    assert "consistent recovery state reached" in restored.logfile.read_text(errors="replace")
    assert int(restored.psql("SELECT count(*) FROM pgbench_accounts")) == 100000
    if pg_install.has_amcheck:
        assert restored.amcheck() > 0
    restored.stop()


@pytest.mark.majors(13, 18)
def test_a_test_restore_with_archive_mode_off_archives_nothing_into_the_original_storage(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    """A restore keeps the backed-up server's archive settings: promoted, a test copy
    archives its new timeline into the original's storage, and a later restore of that
    archive with recovery_target_timeline = latest follows the test copy's timeline, not the
    original's (seen in a drill: the production restore came back with the test's rows).
    backup-fetch says so, and ``--archive-mode off`` (pgBackRest's option) writes
    archive_mode = 'off' so that the copy archives nothing."""
    walg = WalgSetup.create(walg_bin, pg_workdir)
    src = archiving_primary(walg, pg_install, pg_workdir / "src")
    src.psql("CREATE TABLE marks (phase text PRIMARY KEY)")
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    _mark(src, "a")
    archive_now(src)
    src.stop()

    kept = fetch_for_recovery(walg, pg_workdir / "kept")
    assert "archive_mode" in kept.stderr and "--archive-mode off" in kept.stderr, kept.stderr
    shutil.rmtree(pg_workdir / "kept")

    dest = pg_workdir / "test-copy"
    off = fetch_for_recovery(walg, dest, "--archive-mode", "off")
    assert "--archive-mode off" not in off.stderr, off.stderr
    copy = Cluster.from_existing(pg_install, dest)
    copy.start()
    copy.wait_for_recovery_end()
    assert copy.psql("SHOW archive_mode") == "off"
    assert copy.psql("SELECT string_agg(phase, ',' ORDER BY phase) FROM marks") == "a"
    _mark(copy, "test")
    copy.psql("SELECT pg_switch_wal()")
    copy.psql("CHECKPOINT")
    copy.stop()
    stored = sorted(p.name for p in (walg.store / "wal_005").iterdir())
    assert not [name for name in stored if name.startswith("00000002")], stored
