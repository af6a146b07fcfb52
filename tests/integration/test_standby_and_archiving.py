"""Backups taken from a standby, a standby promoted mid-backup, and broken WAL archiving."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from pathlib import Path

from pgcluster import Cluster, PgInstall, run_as_pg
from walgcli import (
    WalgSetup,
    archive_now,
    archiving_primary,
    normalized_dump,
    push_on_standby,
    restore_and_recover,
)


def _primary(install: PgInstall, workdir: Path, walg: WalgSetup) -> Cluster:
    cluster = archiving_primary(walg, install, workdir / "primary")
    cluster.pgbench(["-i", "-s", "2", "-q"])
    return cluster


def test_backup_from_standby_restores(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    walg = WalgSetup.create(walg_bin, pg_workdir)
    primary = _primary(pg_install, pg_workdir, walg)
    standby = primary.make_standby(pg_workdir / "standby")
    primary.pgbench(["-n", "-t", "200", "-c", "2"])
    primary.wait_for_replay(standby)

    pushed = push_on_standby(walg, primary, standby)
    assert "Wrote backup with name base_" in pushed
    primary.psql("CREATE TABLE after_standby_backup AS SELECT generate_series(1, 1000) AS g")
    archive_now(primary)
    expected = normalized_dump(primary.pg_dumpall())
    standby.stop()
    primary.stop()

    listing = json.loads(walg.run(["backup-list", "--json", "--detail"]).stdout)
    assert len(listing) == 1
    restored = restore_and_recover(pg_install, pg_workdir, walg)
    assert normalized_dump(restored.pg_dumpall()) == expected
    assert restored.psql("SELECT count(*) FROM after_standby_backup") == "1000"
    if pg_install.has_amcheck:
        assert restored.amcheck() > 0
    restored.stop()


def test_a_second_standby_backup_before_a_new_checkpoint_is_refused_then_works_after_one(
    pg_workdir: Path, walg_bin: str
) -> None:
    """A standby's backup starts at its last restartpoint, so two in a row share a name
    until the standby replays a new checkpoint of the primary: the second must leave the
    first alone and say what to do, and work once the primary has checkpointed."""
    install = PgInstall.load(15)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    primary = _primary(install, pg_workdir, walg)
    primary.set_conf({"checkpoint_timeout": "1h"})
    primary.reload()
    standby = primary.make_standby(pg_workdir / "standby")
    push_on_standby(walg, primary, standby)
    (first,) = walg.store.rglob("*_backup_stop_sentinel.json")
    before = first.read_bytes()

    again = walg.run(["backup-push", str(standby.datadir)], cluster=standby, check=False)
    assert again.returncode == 1, again.stderr
    assert "already exists" in again.stderr, again.stderr
    assert "retry after the primary's next checkpoint" in again.stderr, again.stderr
    assert first.read_bytes() == before
    assert len(json.loads(walg.run(["backup-list", "--json"]).stdout)) == 1

    primary.psql("CHECKPOINT")
    primary.wait_for_replay(standby)
    push_on_standby(walg, primary, standby)
    names = [b["backup_name"] for b in json.loads(walg.run(["backup-list", "--json"]).stdout)]
    assert len(names) == 2 and names[0] != names[1], names
    standby.stop()
    primary.stop()


def test_standby_promoted_during_backup_fails(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    walg = WalgSetup.create(walg_bin, pg_workdir)
    primary = _primary(pg_install, pg_workdir, walg)
    standby = primary.make_standby(pg_workdir / "standby")
    # Hold the backup just before pg_control is written, long enough to promote the standby.
    faults = json.dumps([{"op": "write", "key": "pg_control\\.tar", "delay": 6}])
    proc = walg.popen(
        ["backup-push", str(standby.datadir)],
        cluster=standby,
        env={"WALG_FAULT_INJECTION": faults},
    )
    deadline = time.monotonic() + 60
    while not list(walg.store.rglob("part_*.tar.lz4")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "backup-push never wrote a partition"
        time.sleep(0.05)
    standby.promote()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    # Not only the server's words, which name no consequence: walg says what it means.
    assert "the standby was promoted while the backup was running" in stderr, stderr
    assert "the backup is not usable" in stderr, stderr
    assert not list(walg.store.rglob("*_backup_stop_sentinel.json")), "no backup may be listed"
    assert walg.run(["backup-list", "--json"]).stdout.strip() == "[]"
    standby.stop()
    primary.stop()


def test_broken_archiving_fails_stop_with_a_clear_message(pg_workdir: Path, walg_bin: str) -> None:
    install = PgInstall.load(15)
    walg = WalgSetup.create(walg_bin, pg_workdir, WALG_STOP_BACKUP_TIMEOUT="3s")
    cluster = archiving_primary(walg, install, pg_workdir / "data", archive_command="false")
    started = time.monotonic()
    result = walg.run(["backup-push", str(cluster.datadir)], cluster=cluster, check=False)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert "WALG_STOP_BACKUP_TIMEOUT" in result.stderr
    assert "archiv" in result.stderr.lower()
    assert elapsed < 60
    assert walg.run(["backup-list", "--json"]).stdout.strip() == "[]"
    assert not list(walg.store.rglob("*.json"))
    cluster.stop(mode="immediate")


def _files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _plant(path: Path, data: str) -> None:
    run_as_pg(["mkdir", "-p", str(path.parent)])
    run_as_pg(["dd", "status=none", f"of={path}"], input=data)


def test_standby_backup_waits_for_its_wal_and_replaces_a_dead_runs_leftovers(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    walg = WalgSetup.create(walg_bin, pg_workdir, WALG_STOP_BACKUP_TIMEOUT="3s")
    primary = _primary(pg_install, pg_workdir, walg)
    standby = primary.make_standby(pg_workdir / "standby")
    # WAL past the segment pg_basebackup finished (and had archived), replayed by the standby:
    # its backup will need this unfinished segment.
    primary.psql("CREATE TABLE after_standby AS SELECT 1 AS x")
    primary.wait_for_replay(standby)
    backups = walg.store / "basebackups_005"

    # The primary is idle: the last segment the backup needs is never archived. Exiting 0
    # would list a backup that cannot be restored; it fails within the stop timeout instead.
    failed = walg.run(["backup-push", str(standby.datadir)], cluster=standby, check=False)
    assert failed.returncode == 1, failed.stderr
    assert "WALG_STOP_BACKUP_TIMEOUT" in failed.stderr, failed.stderr
    assert "archive_timeout" in failed.stderr
    match = re.search(r"backup (base_[0-9A-F]{24}) started", failed.stderr)
    assert match, failed.stderr
    name = match.group(1)
    assert _files_under(backups) == [], "the failed backup's objects must be removed"

    # A run killed on this host left its claim and a partition under the same name (a standby
    # names its backups by restart point, so the next run takes that name again).
    dead = subprocess.Popen(["true"])
    dead.wait()
    claim = {"host": socket.gethostname(), "pid": dead.pid, "start_time": "2026-01-01T00:00:00Z"}
    _plant(backups / name / "walg_claim.json", json.dumps(claim))
    _plant(backups / name / "tar_partitions" / "part_099.tar.lz4", "junk of a dead run")

    proc = walg.popen(
        ["backup-push", str(standby.datadir)],
        cluster=standby,
        env={"WALG_STOP_BACKUP_TIMEOUT": "120s"},
    )
    control = backups / name / "tar_partitions" / "pg_control.tar.lz4"
    deadline = time.monotonic() + 60
    while not control.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "backup-push never wrote pg_control"
        time.sleep(0.05)
    time.sleep(1.0)
    # Still waiting for the primary: no sentinel yet.
    assert proc.poll() is None, proc.communicate()
    assert not (backups / f"{name}_backup_stop_sentinel.json").exists()
    primary.psql("SELECT pg_switch_wal()")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert f"Wrote backup with name {name}" in stderr
    assert "taking over" in stderr and f"process {dead.pid}" in stderr
    assert "removed 1 objects left" in stderr
    assert "to be archived by the primary" in stderr
    assert "part_099.tar.lz4" not in _files_under(backups)
    assert "walg_claim.json" not in str(_files_under(backups)), "the claim is removed at the end"

    # An object the backup's metadata does not list is ignored by a restore, with a warning.
    _plant(backups / name / "tar_partitions" / "part_099.tar.lz4", "junk of a dead run")
    fetched = walg.run(["backup-fetch", str(pg_workdir / "restored"), name], check=False)
    assert fetched.returncode == 0, fetched.stderr
    assert "ignoring 1 objects" in fetched.stderr and "part_099.tar.lz4" in fetched.stderr
    standby.stop()
    primary.stop()


def test_backup_waits_for_every_segment_it_needs_not_only_the_last(
    pg_workdir: Path, walg_bin: str
) -> None:
    """The look-ahead uploader archives later segments while PostgreSQL's call for an earlier
    one keeps failing (here: another cluster's segment stored under its name). The last
    segment the backup needs reaches storage, the first one never does: the backup cannot be
    restored, and backup-push must not write its sentinel."""
    install = PgInstall.load(15)
    walg = WalgSetup.create(
        walg_bin, pg_workdir, WALG_UPLOAD_CONCURRENCY="4", WALG_STOP_BACKUP_TIMEOUT="8s"
    )
    cluster = archiving_primary(walg, install, pg_workdir / "data")
    cluster.psql("CREATE TABLE filler (x text)")
    # Held before pg_control is written, while WAL is switched past the starting segment.
    faults = json.dumps([{"op": "write", "key": "pg_control\\.tar", "delay": 4}])
    proc = walg.popen(
        ["backup-push", str(cluster.datadir)],
        cluster=cluster,
        env={"WALG_FAULT_INJECTION": faults},
    )
    backups = walg.store / "basebackups_005"
    deadline = time.monotonic() + 60
    while not list(backups.glob("base_*/tar_partitions/part_*")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "backup-push never wrote a partition"
        time.sleep(0.05)
    (folder,) = backups.glob("base_*")
    first = folder.name[len("base_") :]
    # Another cluster's segment under the backup's first segment's name.
    foreign = pg_workdir / "foreign"
    foreign.mkdir(mode=0o755)
    (foreign / first).write_bytes(b"another cluster" * 1000)
    walg.run(["wal-push", str(foreign / first)], env={"WALG_UPLOAD_CONCURRENCY": "1"})
    for _ in range(3):
        cluster.psql("INSERT INTO filler SELECT repeat('x', 100) FROM generate_series(1, 1000)")
        cluster.psql("SELECT pg_switch_wal()")
        time.sleep(0.2)
    _, stderr = proc.communicate(timeout=120)
    later = sorted(p.name for p in (walg.store / "wal_005").iterdir() if p.name[:24] > first)
    assert later, "the look-ahead uploader archived the later segments"
    assert proc.returncode == 1, stderr
    assert first in stderr, stderr
    assert not list(walg.store.rglob("*_backup_stop_sentinel.json")), "no backup may be listed"
    cluster.stop(mode="immediate")
