"""Backups of a standby that followed its promoted upstream onto a new timeline.

After a failover the standbys of the promoted server follow it onto the new timeline at once,
but their restartpoint (``pg_control_checkpoint()``, where a standby's backup starts) stays on
the old timeline until the next one, by default up to ``checkpoint_timeout`` later. A backup
taken meanwhile starts on the old timeline and ends on the new one. walg waited for the old
timeline's segments up to the end, which the new primary never archives (only a ``.partial``
of the switch segment): backup-push failed after ``WALG_STOP_BACKUP_TIMEOUT`` (30 minutes by
default), blaming the primary's archive_command. Here it must succeed, record where it ends,
and restore onto the new timeline.
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
    finish_with_switches,
    normalized_dump,
    push_on_standby,
    restore_and_recover,
)

# Far below the 30-minute default: where walg waits for WAL that never comes, the test fails.
STOP_TIMEOUT = {"WALG_STOP_BACKUP_TIMEOUT": "60s"}


def _chain(install: PgInstall, workdir: Path, walg: WalgSetup) -> tuple[Cluster, Cluster, Cluster]:
    """A primary archiving with walg, its standby (the upstream) and a standby of that
    standby, without restartpoints of its own for an hour; all of them caught up."""
    primary = archiving_primary(walg, install, workdir / "primary")
    primary.pgbench(["-i", "-s", "2", "-q"])
    upstream = primary.make_standby(workdir / "upstream")
    cascade = upstream.make_standby(workdir / "cascade", conf={"checkpoint_timeout": "1h"})
    primary.pgbench(["-n", "-t", "200", "-c", "2"])
    primary.wait_for_replay(cascade)
    return primary, upstream, cascade


def _failover(primary: Cluster, upstream: Cluster, cascade: Cluster) -> None:
    """The primary goes; its standby is promoted (timeline 2) and writes; the cascading
    standby follows it."""
    primary.stop()
    upstream.promote()
    upstream.psql("CREATE TABLE on_timeline_2 AS SELECT generate_series(1, 1000) AS g")
    upstream.wait_for_replay(cascade)


def _sentinel(walg: WalgSetup) -> tuple[str, dict[str, object]]:
    (path,) = walg.store.rglob("*_backup_stop_sentinel.json")
    return path.name.removesuffix("_backup_stop_sentinel.json"), json.loads(path.read_bytes())


def _restore_and_compare(
    install: PgInstall, workdir: Path, walg: WalgSetup, upstream: Cluster, cascade: Cluster
) -> None:
    """Restore LATEST and compare it with the new primary, which wrote after the backup."""
    upstream.psql("CREATE TABLE after_the_backup AS SELECT generate_series(1, 500) AS g")
    archive_now(upstream)
    expected = normalized_dump(upstream.pg_dumpall())
    cascade.stop()
    upstream.stop()
    # With recovery settings, LATEST is chosen among the backups recovery onto timeline 2 can
    # start from: a backup on timeline 1 ending past the switch is one only where walg
    # recorded that it ends on timeline 2.
    restored = restore_and_recover(
        install,
        workdir,
        walg,
        ["--restore-command", walg.command("wal-fetch", "%f", "%p")],
    )
    assert normalized_dump(restored.pg_dumpall()) == expected
    assert restored.psql("SELECT count(*) FROM on_timeline_2") == "1000"
    assert restored.psql("SELECT count(*) FROM after_the_backup") == "500"
    if install.has_amcheck:
        assert restored.amcheck() > 0
    restored.stop()


@pytest.mark.majors(13, 15, 18)
def test_a_standby_backup_after_its_upstream_was_promoted_restores_on_the_new_timeline(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    walg = WalgSetup.create(walg_bin, pg_workdir)
    primary, upstream, cascade = _chain(pg_install, pg_workdir, walg)
    _failover(primary, upstream, cascade)
    # The case: replaying timeline 2, with its last restartpoint still on timeline 1.
    assert cascade.psql("SELECT received_tli FROM pg_stat_wal_receiver") == "2"
    assert cascade.psql("SELECT timeline_id FROM pg_control_checkpoint()") == "1"

    pushed = push_on_standby(walg, upstream, cascade, env=STOP_TIMEOUT)
    assert "the standby is on timeline 2; the backup started on timeline 1" in pushed, pushed
    name, sentinel = _sentinel(walg)
    # Named as PostgreSQL's backup_label names its start: on timeline 1.
    assert name.startswith("base_00000001"), name
    assert sentinel["WalgFinishTimeline"] == 2, sentinel
    # wal-verify vouches for it: WAL-G's rule (by segment) refused a backup that starts in
    # the segment holding the switch.
    upstream.psql("CREATE TABLE before_the_check AS SELECT generate_series(1, 10) AS g")
    archive_now(upstream)
    verify = walg.run(["wal-verify", "integrity", "timeline", "--json"], cluster=upstream)
    integrity = json.loads(verify.stdout)["integrity"]
    assert integrity["status"] == "OK", (verify.stdout, verify.stderr)
    assert [(d["timeline_id"], d["start_segment"]) for d in integrity["details"]] == [
        (2, "00000002" + name[13:])
    ], verify.stdout

    _restore_and_compare(pg_install, pg_workdir, walg, upstream, cascade)


def test_a_standby_that_follows_a_promotion_during_its_backup_makes_a_usable_backup(
    pg_workdir: Path, walg_bin: str
) -> None:
    install = PgInstall.load(15)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    primary, upstream, cascade = _chain(install, pg_workdir, walg)
    # Hold the backup before pg_backup_stop, long enough for the failover and the follow.
    faults = json.dumps([{"op": "write", "key": "pg_control\\.tar", "delay": 20}])
    proc = walg.popen(
        ["backup-push", str(cascade.datadir)],
        cluster=cascade,
        env={"WALG_FAULT_INJECTION": faults, **STOP_TIMEOUT},
    )
    deadline = time.monotonic() + 60
    while not list(walg.store.rglob("part_*.tar.lz4")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "backup-push never wrote a partition"
        time.sleep(0.05)
    _failover(primary, upstream, cascade)
    assert proc.poll() is None, "the failover came too late to happen during the backup"
    finish_with_switches(proc, upstream)
    name, sentinel = _sentinel(walg)
    assert name.startswith("base_00000001"), name
    assert sentinel["WalgFinishTimeline"] == 2, sentinel

    _restore_and_compare(install, pg_workdir, walg, upstream, cascade)
