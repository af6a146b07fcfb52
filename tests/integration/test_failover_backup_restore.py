"""Backups and restores around a failover, seen from the standbys and from backup-fetch.

Each test stages its own cluster chain (a primary archiving with walg, a standby of it and,
where needed, a standby of that standby) and its own failover.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pgcluster import Cluster, PgInstall
from walgcli import WalgSetup, archive_now, normalized_dump, restore_and_recover

STOP_TIMEOUT = {"WALG_STOP_BACKUP_TIMEOUT": "40s"}


def _archiving(walg: WalgSetup) -> dict[str, str]:
    return {"archive_mode": "on", "archive_command": walg.command("wal-push", "%p")}


def _sentinels(walg: WalgSetup) -> dict[str, dict[str, object]]:
    return {
        path.name.removesuffix("_backup_stop_sentinel.json"): json.loads(path.read_bytes())
        for path in walg.store.rglob("*_backup_stop_sentinel.json")
    }


def test_a_standby_backup_waiting_for_its_last_segment_survives_a_crash_failover(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    """The backup stopped on timeline 1 and waits for the segment holding its end, which the
    idle primary has not finished. The primary crashes and its standby is promoted: that
    segment is archived only from the new timeline (and as a .partial of the old one), and
    recovery onto the new timeline reads it from there. walg waited for the old timeline's
    copy until WALG_STOP_BACKUP_TIMEOUT and failed a backup that restores."""
    walg = WalgSetup.create(walg_bin, pg_workdir)
    primary = Cluster.create(pg_install, pg_workdir / "primary", conf=_archiving(walg))
    primary.start()
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
    # It ends on timeline 1, before the switch: nothing to record beyond the name.
    assert "WalgFinishTimeline" not in sentinels[name], sentinels

    upstream.psql("CREATE TABLE after_the_backup AS SELECT generate_series(1, 500) AS g")
    archive_now(upstream)
    expected = normalized_dump(upstream.pg_dumpall())
    cascade.stop()
    upstream.stop()
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
