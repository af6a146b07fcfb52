"""WAL-G's setting flags on a real PostgreSQL 16 cluster: archive_command, backup-push,
backup-list, backup-fetch and restore_command all given ``--walg-file-prefix`` while the
config file names another folder; everything goes to, and comes from, the flag's folder."""

from __future__ import annotations

import shutil

import pytest

import pgcluster
from pgcluster import Cluster, PgInstall
from walgcli import WalgSetup, archive_now, archiving_primary


def test_storage_given_as_a_flag_serves_archiving_backup_and_restore(walg_bin: str) -> None:
    try:
        install = PgInstall.load(16)
    except pgcluster.PgSetupError as exc:
        pytest.fail(f"PostgreSQL 16 unavailable: {exc}", pytrace=False)
    workdir = pgcluster.pg_tmpdir(prefix="walg-flags-")
    try:
        walg = WalgSetup.create(walg_bin, workdir)  # its config file names walg.store
        store_b = pgcluster.make_shared_dir(workdir / "store-b", 0o755)
        flag = f"--walg-file-prefix={store_b}"
        cluster = archiving_primary(
            walg, install, workdir / "data", archive_command=walg.command("wal-push", "%p", flag)
        )
        cluster.psql("CREATE TABLE t AS SELECT 1 AS before_backup")
        done = walg.run(["backup-push", str(cluster.datadir), flag], cluster=cluster)
        assert done.returncode == 0, done.stderr
        cluster.psql("INSERT INTO t VALUES (2)")
        archive_now(cluster)
        listed = walg.run(["backup-list", "--json", flag]).stdout
        assert '"backup_name"' in listed
        assert walg.run(["backup-list", "--json"]).stdout.strip() in ("", "[]", "null")
        assert not (walg.store / "wal_005").exists()
        assert not (walg.store / "basebackups_005").exists()
        cluster.stop()

        dest = workdir / "restored"
        done = walg.run(["backup-fetch", str(dest), "LATEST", flag])
        assert done.returncode == 0, done.stderr
        restored = Cluster.from_existing(
            install,
            dest,
            conf={
                "restore_command": walg.command("wal-fetch", "%f", "%p", flag),
                "archive_mode": "off",
            },
        )
        restored.touch("recovery.signal")
        restored.start(wait_ready=False)
        restored.wait_ready(timeout=300)
        restored.wait_for_recovery_end(timeout=300)
        assert restored.psql("SELECT string_agg(before_backup::text, ',' ORDER BY 1) FROM t") == (
            "1,2"
        )
        restored.stop()
    finally:
        pgcluster.stop_clusters_under(workdir, mode="immediate")
        shutil.rmtree(workdir, ignore_errors=True)
