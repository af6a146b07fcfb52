"""Backups taken from a standby, a standby promoted mid-backup, and broken WAL archiving."""

from __future__ import annotations

import json
import time
from pathlib import Path

from pgcluster import Cluster, PgInstall
from walgcli import WalgSetup, archive_now, normalized_dump, restore_and_recover


def _primary(install: PgInstall, workdir: Path, walg: WalgSetup) -> Cluster:
    cluster = Cluster.create(
        install,
        workdir / "primary",
        conf={"archive_mode": "on", "archive_command": walg.command("wal-push", "%p")},
    )
    cluster.start()
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

    pushed = walg.run(["backup-push", str(standby.datadir)], cluster=standby)
    assert "Wrote backup with name base_" in pushed.stderr
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
    assert "promoted" in stderr
    assert not list(walg.store.rglob("*_backup_stop_sentinel.json")), "no backup may be listed"
    assert walg.run(["backup-list", "--json"]).stdout.strip() == "[]"
    standby.stop()
    primary.stop()


def test_broken_archiving_fails_stop_with_a_clear_message(pg_workdir: Path, walg_bin: str) -> None:
    install = PgInstall.load(15)
    walg = WalgSetup.create(walg_bin, pg_workdir, WALG_STOP_BACKUP_TIMEOUT="6s")
    cluster = Cluster.create(
        install, pg_workdir / "data", conf={"archive_mode": "on", "archive_command": "false"}
    )
    cluster.start()
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
