"""Backups and restores around a failover, seen from the standbys and from backup-fetch.

Each test stages its own cluster chain (a primary archiving with walg, a standby of it and,
where needed, a standby of that standby) and its own failover.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pgcluster import Cluster, PgInstall
from walgcli import (
    WalgSetup,
    archive_now,
    archiving_primary,
    fetch_for_recovery,
    normalized_dump,
    restore_and_recover,
    start_recovery,
)

STOP_TIMEOUT = {"WALG_STOP_BACKUP_TIMEOUT": "40s"}


def _sentinels(walg: WalgSetup) -> dict[str, dict[str, object]]:
    return {
        path.name.removesuffix("_backup_stop_sentinel.json"): json.loads(path.read_bytes())
        for path in walg.store.rglob("*_backup_stop_sentinel.json")
    }


@pytest.mark.majors(13, 15, 18)
def test_a_standby_backup_waiting_for_its_last_segment_survives_a_crash_failover(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    """The backup stopped on timeline 1 and waits for the segment holding its end, which the
    idle primary has not finished. The primary crashes and its standby is promoted: that
    segment is archived only from the new timeline (and as a .partial of the old one), and
    recovery onto the new timeline reads it from there. walg waited for the old timeline's
    copy until WALG_STOP_BACKUP_TIMEOUT and failed a backup that restores."""
    walg = WalgSetup.create(walg_bin, pg_workdir)
    primary = archiving_primary(walg, pg_install, pg_workdir / "primary")
    primary.pgbench(["-i", "-s", "2", "-q"])
    upstream = primary.make_standby(pg_workdir / "upstream")
    cascade = upstream.make_standby(pg_workdir / "cascade")
    primary.pgbench(["-n", "-t", "200", "-c", "2"])
    archive_now(primary)
    primary.psql("CREATE TABLE in_the_last_segment AS SELECT generate_series(1, 100) AS g")
    primary.wait_for_replay(cascade)

    proc = walg.popen(["backup-push", str(cascade.datadir)], cluster=cascade, env=STOP_TIMEOUT)
    deadline = time.monotonic() + 60
    while not list(walg.store.rglob("pg_control.tar*")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "backup-push never wrote pg_control"
        time.sleep(0.05)
    time.sleep(1.0)
    assert proc.poll() is None, proc.communicate()
    (name,) = [p.name for p in (walg.store / "basebackups_005").iterdir() if p.is_dir()]
    assert name.startswith("base_00000001"), name
    # A crash: the segment the backup ends in is neither finished nor archived on timeline 1.
    primary.stop(mode="immediate")
    upstream.promote()
    upstream.psql("CREATE TABLE on_timeline_2 AS SELECT generate_series(1, 1000) AS g")
    upstream.wait_for_replay(cascade)
    deadline = time.monotonic() + 90
    while proc.poll() is None and time.monotonic() < deadline:
        upstream.psql("SELECT pg_switch_wal()")
        time.sleep(0.3)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "a new timeline branched off at or after the backup's end" in stderr, stderr
    sentinels = _sentinels(walg)
    assert list(sentinels) == [name], sentinels
    # Its end lies before the switch, but the archive holds it only on timeline 2: recorded,
    # so that a restore following timeline 1 is refused before the download (PostgreSQL:
    # "WAL ends before consistent recovery point").
    assert sentinels[name]["WalgFinishTimeline"] == 2, sentinels

    upstream.psql("CREATE TABLE after_the_backup AS SELECT generate_series(1, 500) AS g")
    archive_now(upstream)
    expected = normalized_dump(upstream.pg_dumpall())
    cascade.stop()
    upstream.stop()
    refused = fetch_for_recovery(
        walg, pg_workdir / "timeline_1", "--target-timeline", "1", name=name, check=False
    )
    assert refused.returncode == 2, refused.stderr
    assert not (pg_workdir / "timeline_1").exists()
    restored = restore_and_recover(
        pg_install,
        pg_workdir,
        walg,
        ["--restore-command", walg.command("wal-fetch", "%f", "%p")],
    )
    assert normalized_dump(restored.pg_dumpall()) == expected
    assert restored.psql("SELECT count(*) FROM in_the_last_segment") == "100"
    if pg_install.has_amcheck:
        assert restored.amcheck() > 0
    restored.stop()


def _recovered(install: PgInstall, dest: Path) -> Cluster:
    restored = Cluster.from_existing(install, dest, conf={"archive_mode": "off"})
    start_recovery(restored)
    return restored


def _tables(cluster: Cluster) -> list[str]:
    text = cluster.psql(
        "SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class"
        " WHERE relkind = 'r' AND relname LIKE 'mark_%'"
    )
    return text.split(",") if text else []


@pytest.mark.majors(13, 18)
def test_backups_of_the_old_primary_in_a_split_brain_window_are_not_restored_onto_the_new_timeline(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    """The standby is promoted while the old primary goes on writing and archiving on
    timeline 1 (a split brain), and takes a backup there. That backup holds what timeline 2
    never saw: a restore onto timeline 2 (the default, latest) must never start from it, with
    a time target after the fork, without one, or when it is named; asked for timeline 1, it
    is the one to restore. (Coverage on real clusters: this passed before.)"""
    walg = WalgSetup.create(walg_bin, pg_workdir)
    old = archiving_primary(walg, pg_install, pg_workdir / "old")
    old.pgbench(["-i", "-s", "1", "-q"])
    new = old.make_standby(pg_workdir / "new")
    old.psql("CREATE TABLE mark_common AS SELECT generate_series(1, 100) AS g")
    archive_now(old)
    walg.run(["backup-push", str(old.datadir)], cluster=old)
    old.wait_for_replay(new)
    new.promote()
    new.psql("CREATE TABLE mark_timeline_2 AS SELECT generate_series(1, 1000) AS g")
    archive_now(new)
    old.psql("CREATE TABLE mark_abandoned AS SELECT generate_series(1, 777) AS g")
    walg.run(["backup-push", str(old.datadir)], cluster=old)
    # After the backup: a restore onto timeline 1 replays the abandoned branch's WAL too.
    old.psql("CREATE TABLE mark_abandoned_later AS SELECT generate_series(1, 7) AS g")
    archive_now(old)
    # Both on timeline 1, named by where they start: the one taken before the fork first.
    before, split = sorted(_sentinels(walg))
    time.sleep(1.0)
    expected = normalized_dump(new.pg_dumpall())
    target = new.psql("SELECT now()")
    time.sleep(1.0)
    new.psql("CREATE TABLE mark_after_the_target AS SELECT generate_series(1, 5) AS g")
    new.checkpoint()
    archive_now(new)
    old.stop()
    new.stop()

    refused = fetch_for_recovery(walg, pg_workdir / "named", name=split, check=False)
    assert refused.returncode == 2, refused.stderr
    assert "branched off timeline 1" in refused.stderr, refused.stderr
    assert not (pg_workdir / "named").exists()

    timed = fetch_for_recovery(walg, pg_workdir / "timed", "--target-time", target, check=False)
    assert timed.returncode == 0, timed.stderr
    assert f"backup {split} not considered" in timed.stderr, timed.stderr
    assert f"restored {before}" in timed.stderr, timed.stderr
    restored = _recovered(pg_install, pg_workdir / "timed")
    assert _tables(restored) == ["mark_common", "mark_timeline_2"]
    assert normalized_dump(restored.pg_dumpall()) == expected
    if pg_install.has_amcheck:
        assert restored.amcheck() > 0
    restored.stop()

    latest = fetch_for_recovery(walg, pg_workdir / "latest", check=False)
    assert latest.returncode == 0, latest.stderr
    assert f"restored {before}" in latest.stderr, latest.stderr

    abandoned = fetch_for_recovery(
        walg, pg_workdir / "abandoned", "--target-timeline", "1", check=False
    )
    assert abandoned.returncode == 0, abandoned.stderr
    assert f"restored {split}" in abandoned.stderr, abandoned.stderr
    restored = _recovered(pg_install, pg_workdir / "abandoned")
    assert _tables(restored) == ["mark_abandoned", "mark_abandoned_later", "mark_common"]
    restored.stop()


def test_a_standby_ahead_of_the_promoted_one_is_told_why_its_backup_cannot_finish(
    pg_workdir: Path, walg_bin: str
) -> None:
    """One standby had stopped receiving; the primary wrote on, crashed, and that standby was
    promoted. The other standby replayed WAL past the switch point that only the crashed
    primary had: its backup ends there, in a segment nobody will archive, and it cannot
    restore onto the new timeline. backup-push waited out WALG_STOP_BACKUP_TIMEOUT and then
    blamed the primary's archive_command; it must say that the standby is on the abandoned
    branch, and warn of it while it waits (30 min by default)."""
    install = PgInstall.load(15)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    primary = archiving_primary(walg, install, pg_workdir / "primary")
    primary.pgbench(["-i", "-s", "1", "-q"])
    ahead = primary.make_standby(pg_workdir / "ahead")
    behind = primary.make_standby(pg_workdir / "behind")
    primary.wait_for_replay(behind)
    behind.stop_streaming()
    primary.psql("CREATE TABLE only_on_timeline_1 AS SELECT generate_series(1, 1000) AS g")
    primary.wait_for_replay(ahead)
    primary.stop(mode="immediate")
    behind.promote()
    # Archived by the promoted server's archiver, in its own time.
    history = walg.store / "wal_005" / "00000002.history.lz4"
    deadline = time.monotonic() + 60
    while not history.exists():
        assert time.monotonic() < deadline, "the promoted server never archived its history"
        time.sleep(0.1)

    # The reason is warned of during the wait for the end's segment, which nobody will
    # archive (the old primary may still, where a restore elsewhere promoted into this
    # storage), and given when it times out: the whole timeout is waited out, so it is short.
    result = walg.run(
        ["backup-push", str(ahead.datadir)],
        cluster=ahead,
        env={"WALG_STOP_BACKUP_TIMEOUT": "5s"},
        check=False,
    )
    assert result.returncode == 1, result.stderr
    warned, _, failed = result.stderr.partition("in case the server that wrote timeline 1")
    assert "timeline 2 branched off timeline 1 at" in warned, result.stderr
    assert "before this backup's end" in failed, result.stderr
    assert _sentinels(walg) == {}
