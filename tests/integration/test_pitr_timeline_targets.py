"""A point-in-time target on timeline 2, reached from a backup taken on timeline 1.

A restore promoted onto timeline 2 while the old primary went on writing and backing up on
timeline 1 (a split brain, or a test restore archiving into production's storage). A time or
LSN target on timeline 2 must be reached from the timeline-1 backup taken before the fork, not
from a later timeline-1 backup that finished before the target: that one lies on the abandoned
part of timeline 1, from which recovery cannot follow timeline 2. With --target-timeline
current or 1, that later backup and timeline 1's own branch are what is restored.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pgcluster import Cluster, PgInstall
from walg.core.lsn import parse_lsn
from walgcli import WalgSetup, archive_now, archiving_primary, fetch_for_recovery, start_recovery


def _mark(cluster: Cluster, phase: str) -> None:
    cluster.psql(f"INSERT INTO marks VALUES ('{phase}')")


def _phases(cluster: Cluster) -> list[str]:
    return cluster.psql("SELECT phase FROM marks ORDER BY phase").splitlines()


def _restore(
    install: PgInstall, walg: WalgSetup, dest: Path, *target: str, archive: bool = False
) -> tuple[Cluster, str]:
    fetched = fetch_for_recovery(walg, dest, *target)
    conf = (
        {"archive_mode": "on", "archive_command": walg.command("wal-push", "%p")}
        if archive
        else {"archive_mode": "off"}
    )
    restored = Cluster.from_existing(install, dest, conf=conf)
    start_recovery(restored)
    return restored, fetched.stderr


@pytest.mark.majors(13, 16)
def test_a_target_on_timeline_2_is_reached_from_the_backup_before_the_fork(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    walg = WalgSetup.create(walg_bin, pg_workdir)
    src = archiving_primary(walg, pg_install, pg_workdir / "src")
    src.psql("CREATE TABLE marks (phase text PRIMARY KEY)")
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    first = walg.run(["backup-list"]).stdout.splitlines()[-1].split()[0]
    _mark(src, "a")
    archive_now(src)

    # A copy recovers to the end of what is archived and is promoted onto timeline 2,
    # archiving into the same storage, while the source goes on on timeline 1.
    fork, _ = _restore(pg_install, walg, pg_workdir / "fork", archive=True)
    fork.checkpoint()
    assert fork.psql("SELECT timeline_id FROM pg_control_checkpoint()") == "2"
    _mark(fork, "x")
    _mark(src, "s")
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    second = walg.run(["backup-list"]).stdout.splitlines()[-1].split()[0]
    assert second.startswith("base_00000001") and second != first
    src_time = src.psql("SELECT clock_timestamp()")
    time.sleep(0.2)
    _mark(src, "t")
    archive_now(src)
    src_end = parse_lsn(src.psql("SELECT pg_current_wal_insert_lsn()"))
    src.stop()
    # Timeline 2 goes past where the later timeline-1 backup ended, so that an LSN target
    # there is after that backup's end too.
    fork.psql("CREATE TABLE filler (n int)")
    while parse_lsn(fork.psql("SELECT pg_current_wal_insert_lsn()")) <= src_end:
        fork.psql("INSERT INTO filler VALUES (1)")
        fork.switch_wal()
    time.sleep(0.2)
    _mark(fork, "y")
    target_time = fork.psql("SELECT clock_timestamp()")
    target_lsn = fork.psql("SELECT pg_current_wal_insert_lsn()")
    time.sleep(0.2)
    _mark(fork, "z")
    archive_now(fork)
    fork.stop()
    assert (walg.store / "wal_005" / "00000002.history.lz4").exists()

    for kind, target in (("time", target_time), ("lsn", target_lsn)):
        restored, said = _restore(
            pg_install, walg, pg_workdir / f"by-{kind}", f"--target-{kind}", target
        )
        # The later timeline-1 backup finished before the target, and is passed over.
        assert f"backup {second} not considered for --target-{kind}" in said, said
        assert f"backup {first}" in said, said
        assert _phases(restored) == ["a", "x", "y"], kind
        restored.checkpoint()
        assert restored.psql("SELECT timeline_id FROM pg_control_checkpoint()") == "3"
        restored.stop()

    # Timeline 1 as it went on after the fork, on purpose: by the backup's own timeline or by
    # its number, from the later timeline-1 backup, landing on that branch's rows.
    for timeline in ("current", "1"):
        restored, said = _restore(
            pg_install,
            walg,
            pg_workdir / f"timeline-{timeline}",
            "--target-time",
            src_time,
            "--target-timeline",
            timeline,
        )
        assert f"LATEST for --target-time '{src_time}': backup {second}" in said, said
        assert _phases(restored) == ["a", "s"], timeline
        restored.stop()
