"""WAL archiving and restore_command through a failover: the primary dies, its standby is
promoted, and the old primary rejoins after ``pg_rewind``, as cluster managers (Patroni) do.

Each test stages the events once on real clusters and looks at what walg did at each step.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pgcluster import Cluster, PgInstall, run_as_pg
from walgcli import WalgSetup, archive_now

MAJORS = [15, 17]


@dataclass
class Failover:
    walg: WalgSetup
    old: Cluster  # the old primary, stopped by a crash after writing past the fork
    new: Cluster  # its standby, promoted onto timeline 2


def _failover(install: PgInstall, workdir: Path, walg: WalgSetup) -> Failover:
    """A primary archiving with walg and a standby; the standby loses its connection, the
    primary writes on (diverging, and archives the segment it finishes), then crashes; the
    standby is promoted, writes and archives on timeline 2."""
    conf = {
        "archive_mode": "on",
        "archive_command": walg.command("wal-push", "%p"),
        "restore_command": walg.command("wal-fetch", "%f", "%p"),
        "wal_log_hints": "on",  # pg_rewind needs it (or data checksums)
    }
    old = Cluster.create(install, workdir / "old", conf=conf)
    old.start()
    old.pgbench(["-i", "-s", "1", "-q"])
    # Streaming only: with restore_command it would replay what the old primary archives
    # after the cut, and not diverge.
    new = old.make_standby(workdir / "new", conf={**conf, "restore_command": ""})
    old.pgbench(["-n", "-t", "300", "-c", "2"])
    archive_now(old)
    # A record in the next segment, so that the timeline ends inside it, not at its start.
    old.psql("SELECT txid_current()")
    old.wait_for_replay(new)
    new.stop_streaming()
    old.psql("CREATE TABLE diverged AS SELECT generate_series(1, 100) AS g")
    archive_now(old)
    old.stop(mode="immediate")
    new.promote()
    new.psql("CREATE TABLE on_timeline_2 AS SELECT generate_series(1, 1000) AS g")
    archive_now(new)
    # pg_rewind reads the source's timeline from its control file: as Patroni does, wait for
    # the checkpoint after the promotion.
    new.checkpoint()
    return Failover(walg, old, new)


@pytest.mark.parametrize("major", MAJORS, ids=[f"pg{m}" for m in MAJORS])
def test_pg_rewind_fetching_the_old_primary_s_wal_through_wal_fetch_succeeds(
    major: int, pg_workdir: Path, walg_bin: str
) -> None:
    """``pg_rewind --restore-target-wal`` runs restore_command (wal-fetch) for the WAL the
    old primary has recycled since the last common checkpoint, with ``%p`` in the stopped
    target's pg_wal, between listing the target's files and rewriting them. Each wal-fetch
    started a detached prefetch into ``pg_wal/.wal-g/prefetch`` that went on adding and
    renaming files there, and pg_rewind failed midway ("could not remove file
    .../running/<segment>: No such file or directory", or "could not remove directory
    .../running: Directory not empty"), leaving the target half rewound."""
    install = PgInstall.load(major)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    event = _failover(install, pg_workdir, walg)
    old, new = event.old, event.new

    source = f"host={new.socket_dir} port={new.port} user=pgtest dbname=postgres"
    rewind = run_as_pg(
        [
            install.tool("pg_rewind"),
            "--target-pgdata",
            str(old.datadir),
            "--source-server",
            source,
            "--restore-target-wal",
        ],
        env=old.env(),
        check=False,
        timeout=120,
    )
    assert rewind.returncode == 0, rewind.stderr

    # pg_rewind copied the new primary's settings (its port and socket folder, no
    # restore_command) over ours.
    old.set_conf(
        {
            "port": str(old.port),
            "unix_socket_directories": str(old.socket_dir),
            "primary_conninfo": source,
            "restore_command": walg.command("wal-fetch", "%f", "%p"),
        }
    )
    old.touch("standby.signal")
    old.start()
    new.psql("CREATE TABLE after_the_rewind AS SELECT generate_series(1, 10) AS g")
    new.wait_for_replay(old, timeout=60)
    assert old.psql("SELECT count(*) FROM on_timeline_2") == "1000"
    assert old.psql("SELECT count(*) FROM after_the_rewind") == "10"
    assert old.psql("SELECT to_regclass('diverged') IS NULL") == "t"
    old.wait_for_streaming(2)


@pytest.mark.parametrize("major", MAJORS, ids=[f"pg{m}" for m in MAJORS])
def test_a_standby_archiving_always_is_not_stuck_on_the_segment_its_timeline_ended_in(
    major: int, pg_workdir: Path, walg_bin: str
) -> None:
    """A standby with ``archive_mode = always`` archives the segment its walreceiver was
    writing when the upstream's timeline ended, under the segment's full name, holding the
    old timeline's WAL up to the switch point and stale bytes after it. The old primary, cut
    off from its standbys but not from storage, wrote on and archived that segment first, in
    full. The contents differ only past the switch point, and the archive holds all the
    standby has (and more): wal-push refused it as an overwrite, for ever, and PostgreSQL's
    archiver, which retries the oldest file without end, archived nothing more on that
    standby (pg_wal grows until the disk is full)."""
    install = PgInstall.load(major)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    archiving = {"archive_mode": "on", "archive_command": walg.command("wal-push", "%p")}
    old = Cluster.create(install, pg_workdir / "old", conf=archiving)
    old.start()
    old.pgbench(["-i", "-s", "1", "-q"])
    # Streaming only: with a restore_command they would replay what the old primary
    # archives after the cut.
    new = old.make_standby(pg_workdir / "new", conf={"restore_command": ""})
    always = {**archiving, "archive_mode": "always", "restore_command": ""}
    cascade = new.make_standby(pg_workdir / "cascade", conf=always)
    old.pgbench(["-n", "-t", "300", "-c", "2"])
    archive_now(old)
    # A record in the next segment, so that the timeline ends inside it, not at its start.
    old.psql("SELECT txid_current()")
    old.wait_for_replay(cascade)
    new.stop_streaming()
    received = new.psql("SELECT pg_last_wal_receive_lsn()")
    fork = old.psql(f"SELECT pg_walfile_name('{received}')")
    old.psql("CREATE TABLE diverged AS SELECT generate_series(1, 100) AS g")
    assert archive_now(old) == fork  # the old primary archived the fork's segment, full
    old.stop(mode="immediate")
    new.promote()
    new.psql("CREATE TABLE on_timeline_2 AS SELECT generate_series(1, 1000) AS g")
    new.wait_for_replay(cascade)
    last = archive_now(new)
    assert last.startswith("00000002"), last

    # The cascading standby followed onto timeline 2 and archives as its upstream does.
    deadline = time.monotonic() + 30
    while cascade.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < last:
        failed = cascade.psql("SELECT last_failed_wal, failed_count FROM pg_stat_archiver")
        assert time.monotonic() < deadline, f"archiver stuck: {failed}\n{cascade.log_tail(15)}"
        time.sleep(0.2)
    ready = list((cascade.datadir / "pg_wal" / "archive_status").glob("*.ready"))
    assert not ready, ready
    # The archive kept the old primary's copy of the fork's segment, the longer one.
    assert (walg.store / "wal_005" / f"{fork}.lz4").exists()
    assert "only past where timeline 1 ends" in cascade.logfile.read_text()


@pytest.mark.parametrize("major", MAJORS, ids=[f"pg{m}" for m in MAJORS])
def test_wal_verify_after_a_failover_calls_the_old_primary_s_unarchived_segments_lost(
    major: int, pg_workdir: Path, walg_bin: str
) -> None:
    """The primary dies with finished segments its archiver had not stored yet. Its standby
    (``archive_mode = on``) received them by streaming and marked them done: once promoted
    it archives the new timeline, the old one's last segment as ``.partial``, and nothing
    else of the old timeline, ever. wal-verify on the new primary called such a segment
    MISSING_UPLOADING (WARNING: wait), although no restore from the backup can pass it: one
    ends there and promotes, without what came after."""
    install = PgInstall.load(major)
    # No look-ahead: it would archive what the gate below holds back.
    walg = WalgSetup.create(walg_bin, pg_workdir, WALG_UPLOAD_CONCURRENCY="1")
    blocked = pg_workdir / "archiving-blocked"
    conf = {
        "archive_mode": "on",
        "archive_command": f"test ! -e {blocked} && " + walg.command("wal-push", "%p"),
    }
    old = Cluster.create(install, pg_workdir / "old", conf=conf)
    old.start()
    old.pgbench(["-i", "-s", "1", "-q"])
    walg.run(["backup-push", str(old.datadir)], cluster=old)
    new = old.make_standby(pg_workdir / "new", conf=conf)
    old.psql("CREATE TABLE archived AS SELECT generate_series(1, 1000) AS g")
    archive_now(old)
    blocked.touch()
    old.psql("CREATE TABLE never_archived AS SELECT generate_series(1, 1000) AS g")
    unarchived = old.psql("SELECT pg_walfile_name(pg_switch_wal())")
    old.psql("CREATE TABLE after_it AS SELECT generate_series(1, 1000) AS g")
    old.wait_for_replay(new)
    old.stop(mode="immediate")
    blocked.unlink()
    new.promote()
    new.psql("CREATE TABLE on_timeline_2 AS SELECT generate_series(1, 10) AS g")
    assert not (walg.store / "wal_005" / f"{unarchived}.lz4").exists()

    verify = walg.run(["wal-verify", "integrity", "--json"], cluster=new)
    integrity = json.loads(verify.stdout)["integrity"]
    assert integrity["status"] == "FAILURE", (verify.stdout, verify.stderr)
    lost = [d for d in integrity["details"] if d["status"] == "MISSING_LOST"]
    assert [(d["timeline_id"], d["start_segment"]) for d in lost] == [(1, unarchived)], (
        verify.stdout
    )
