"""End to end: archive, back up under load, restore, recover from the archive, compare.

Each test runs the real ``walg`` command against real clusters made by initdb, on every
installed PostgreSQL major (15 always). The restored cluster must equal the source: the same
``pg_dumpall`` output (taken after the writes stopped and their WAL was archived) and a clean
amcheck.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pgcluster import Cluster, PgInstall, make_shared_dir
from walgcli import (
    WalgSetup,
    archive_now,
    archiving_primary,
    normalized_dump,
    restore_and_recover,
    start_load,
)


def _source(install: PgInstall, workdir: Path, walg: WalgSetup) -> Cluster:
    cluster = archiving_primary(
        walg, install, workdir / "src", archive_timeout="0", wal_level="replica"
    )
    return cluster


def _write_after_backup(cluster: Cluster, rows: int) -> None:
    cluster.psql(
        "CREATE TABLE after_backup (id int PRIMARY KEY, note text);"
        f"INSERT INTO after_backup SELECT g, md5(g::text) FROM generate_series(1, {rows}) g;"
    )


@pytest.mark.parametrize("with_tablespace", [False, True], ids=["plain", "tablespace"])
def test_backup_under_load_restores_identical_cluster(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str, with_tablespace: bool
) -> None:
    walg = WalgSetup.create(walg_bin, pg_workdir, WALG_TAR_SIZE_THRESHOLD="4000000")
    src = _source(pg_install, pg_workdir, walg)
    ts_location = None
    if with_tablespace:
        ts_location = src.add_tablespace("ts1", pg_workdir / "ts1")
        src.psql(
            "CREATE TABLE in_ts (id int PRIMARY KEY, v text) TABLESPACE ts1;"
            "INSERT INTO in_ts SELECT g, repeat('x', g % 100) FROM generate_series(1, 20000) g;"
            "CREATE INDEX in_ts_v ON in_ts (v) TABLESPACE ts1;"
        )
    src.pgbench(["-i", "-s", "3", "-q"])

    load = start_load(src, seconds=6)
    try:
        time.sleep(1)
        pushed = walg.run(["backup-push", str(src.datadir)], cluster=src)
    finally:
        _, load_err = load.communicate(timeout=120)
    assert load.returncode == 0, load_err
    assert "Wrote backup with name base_" in pushed.stderr

    _write_after_backup(src, 5000)
    if with_tablespace:
        src.psql("INSERT INTO in_ts SELECT g, 'after' FROM generate_series(20001, 25000) g")
    archive_now(src)
    expected = normalized_dump(src.pg_dumpall())
    expected_rows = src.psql("SELECT count(*) FROM pgbench_history")
    src.stop()

    listing = json.loads(walg.run(["backup-list", "--json", "--detail"]).stdout)
    assert len(listing) == 1
    assert listing[0]["backup_name"].startswith("base_")
    assert listing[0]["pg_version"] // 10000 == pg_install.major

    args: list[str] = []
    if ts_location is not None:
        sentinel = json.loads(
            (
                walg.store
                / "basebackups_005"
                / f"{listing[0]['backup_name']}_backup_stop_sentinel.json"
            ).read_text()
        )
        spec = sentinel["Spec"]
        assert spec["tablespaces"] and spec[spec["tablespaces"][0]]["loc"] == str(ts_location)
        new_location = make_shared_dir(pg_workdir / "ts1-restored", 0o700)
        spec[spec["tablespaces"][0]]["loc"] = str(new_location)
        spec_file = pg_workdir / "restore-spec.json"
        spec_file.write_text(json.dumps(spec))
        spec_file.chmod(0o644)
        args = ["--restore-spec", str(spec_file)]

    restored = restore_and_recover(pg_install, pg_workdir, walg, args)
    actual = normalized_dump(restored.pg_dumpall())
    if ts_location is not None:
        assert restored.tablespaces() == {"ts1": str(pg_workdir / "ts1-restored")}
        actual = actual.replace(str(pg_workdir / "ts1-restored"), str(ts_location))
        assert restored.psql("SELECT count(*) FROM in_ts") == "25000"
    assert actual == expected
    assert restored.psql("SELECT count(*) FROM after_backup") == "5000"
    assert restored.psql("SELECT count(*) FROM pgbench_history") == expected_rows
    if pg_install.has_amcheck:
        assert restored.amcheck() > 0
    restored.stop()
