"""Self-test of tests/pgcluster.py against every installed PostgreSQL major."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

import pgcluster
from pgcluster import Cluster, CommandError, PgInstall

pytestmark = pytest.mark.pg


def test_required_major_installed() -> None:
    assert 15 in pgcluster.available_majors(), "PostgreSQL 15 must be installed (scripts/setup.sh)"


def test_install_env(pg_install: PgInstall) -> None:
    assert pg_install.has_amcheck
    out = pgcluster.run_as_pg(
        [pg_install.tool("postgres"), "--version"], env=pg_install.env()
    ).stdout
    assert f"PostgreSQL) {pg_install.major}." in out
    if os.geteuid() == 0:
        who = pgcluster.run_as_pg(["id", "-un"], env=pg_install.env()).stdout.strip()
        assert who == pgcluster.PG_USER


def test_lifecycle(pg_install: PgInstall, pg_workdir: Path) -> None:
    cluster = Cluster.create(pg_install, pg_workdir / "data", conf={"work_mem": "8MB"})
    assert cluster.port != 5432
    assert not cluster.is_running()
    cluster.start()
    assert cluster.is_running()
    assert cluster in pgcluster.running_clusters()

    assert cluster.psql("SHOW server_version_num")[:2] == str(pg_install.major)
    assert cluster.psql("SHOW work_mem") == "8MB"
    assert cluster.psql("SHOW jit") == "off"
    assert cluster.psql("SHOW port") == str(cluster.port)
    assert not cluster.is_in_recovery()

    cluster.pgbench(["-i", "-s", "1", "-q"])
    assert cluster.psql("SELECT count(*) FROM pgbench_accounts") == "100000"
    # several statements, several result rows
    assert cluster.psql("SELECT 1; SELECT 'a', 2") == "1\na|2"
    assert cluster.query("SELECT 'x', NULL::text UNION ALL SELECT 'y', 'z' ORDER BY 1") == [
        ["x", ""],
        ["y", "z"],
    ]
    with pytest.raises(CommandError, match="no_such_table"):
        cluster.psql("SELECT 1; SELECT * FROM no_such_table; SELECT 2")

    dump = cluster.pg_dumpall()
    assert "CREATE TABLE public.pgbench_accounts" in dump

    checked = cluster.amcheck()
    # pgbench's 3 primary keys plus catalog indexes (and heaps on 14+)
    assert checked > 50
    assert cluster.psql("SELECT count(*) FROM pg_extension WHERE extname = 'amcheck'") == "0"

    env = cluster.conninfo_env()
    assert env["PGPORT"] == str(cluster.port)
    assert Path(env["PGHOST"]).is_dir()

    cluster.stop()
    assert not cluster.is_running()
    assert cluster not in pgcluster.running_clusters()
    assert not (cluster.datadir / "postmaster.pid").exists()
    cluster.stop()  # idempotent
    assert "shut down" in cluster.log_tail() or "shutting down" in cluster.log_tail()


def test_amcheck_detects_corrupt_index(pg_install: PgInstall, pg_workdir: Path) -> None:
    cluster = Cluster.create(pg_install, pg_workdir / "data")
    cluster.start()
    cluster.psql(
        "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g;"
        "CREATE INDEX t_v ON t (v); CHECKPOINT;"
    )
    relpath = cluster.psql("SELECT pg_relation_filepath('t_v')")
    cluster.amcheck()
    cluster.stop()
    index_file = cluster.datadir / relpath
    assert index_file.stat().st_size > 3 * 8192
    with index_file.open("r+b") as f:  # zero a page past the metapage
        f.seek(2 * 8192)
        f.write(b"\0" * 8192)
    cluster.start()
    with pytest.raises(CommandError, match="zero page"):
        cluster.amcheck()


def test_restart_and_from_existing(pg_install: PgInstall, pg_workdir: Path) -> None:
    cluster = Cluster.create(pg_install, pg_workdir / "a")
    cluster.start()
    cluster.psql("CREATE TABLE kv (k int PRIMARY KEY, v text); INSERT INTO kv VALUES (1, 'one')")
    cluster.restart()
    assert cluster.psql("SELECT v FROM kv") == "one"
    cluster.stop()

    # A copy carries the source's port and socket directory; from_existing overrides them.
    copy = pg_workdir / "b"
    pgcluster.run_as_pg(["cp", "-a", str(cluster.datadir), str(copy)], env=dict(os.environ))
    cluster.start()
    other = Cluster.from_existing(pg_install, copy)
    assert other.port != cluster.port
    other.start()
    assert other.psql("SHOW port") == str(other.port)
    assert other.psql("SELECT v FROM kv") == "one"
    assert stat.S_IMODE(copy.stat().st_mode) == 0o700
    other.stop()
    cluster.stop()


def test_standby_and_promote(pg_install: PgInstall, pg_workdir: Path) -> None:
    primary = Cluster.create(pg_install, pg_workdir / "primary")
    primary.start()
    primary.add_tablespace("ts1", pg_workdir / "ts1")
    primary.psql(
        "CREATE TABLE a (x int) TABLESPACE ts1; INSERT INTO a SELECT generate_series(1, 10)"
    )
    standby = primary.make_standby(pg_workdir / "standby")
    assert standby.is_in_recovery()
    assert standby.tablespaces()["ts1"] != primary.tablespaces()["ts1"]
    primary.psql("INSERT INTO a SELECT generate_series(11, 20)")
    primary.wait_for_replay(standby)
    assert standby.psql("SELECT count(*) FROM a") == "20"
    primary.stop()
    standby.promote()
    assert not standby.is_in_recovery()
    standby.psql("INSERT INTO a VALUES (21)")
    assert standby.psql("SELECT count(*) FROM a") == "21"
    assert standby.amcheck() > 0
    standby.stop()


def test_stop_all_and_workdir_permissions(pg_install: PgInstall, pg_workdir: Path) -> None:
    mode = stat.S_IMODE(pg_workdir.stat().st_mode)
    assert mode == 0o755
    sub = pgcluster.make_shared_dir(pg_workdir / "x" / "y", 0o700)
    assert stat.S_IMODE(sub.stat().st_mode) == 0o700
    clusters = [Cluster.create(pg_install, pg_workdir / f"c{i}") for i in range(2)]
    for c in clusters:
        c.start()
    stopped = pgcluster.stop_clusters_under(pg_workdir)
    assert sorted(stopped) == sorted(str(c.datadir) for c in clusters)
    assert not any(c.is_running() for c in clusters)


def test_port_clash_moves_to_free_port(pg_workdir: Path) -> None:
    cluster = Cluster.create(PgInstall.load(15), pg_workdir / "data")
    taken = cluster.port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", taken))
        blocker.listen()
        cluster.start()
        assert cluster.port != taken
        assert cluster.psql("SHOW port") == str(cluster.port)
    cluster.stop()


def test_archive_now_right_after_a_segment_switch(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    """walgcli.archive_now just after a switch (a primary's backup-push ends with one): from
    PostgreSQL 17 on, pg_switch_wal at a segment's first record switches nothing and returns
    a position inside that segment, and archive_now waited for it until its timeout."""
    from walgcli import WalgSetup, archive_now, archiving_primary

    walg = WalgSetup.create(walg_bin, pg_workdir)
    cluster = archiving_primary(walg, pg_install, pg_workdir / "c")
    cluster.psql("CREATE TABLE t AS SELECT 1 AS x")
    cluster.switch_wal()
    first = archive_now(cluster, timeout=20)
    assert archive_now(cluster, timeout=20) > first
    cluster.stop()
