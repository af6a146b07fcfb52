"""Odd names end to end on real clusters: paths with spaces, quotes, '%' and non-ASCII
letters (the data directory, the config file, the storage folder, the prefetch folder, a
tablespace, the restore's destination, the daemon's socket), SQL names with quotes and line
breaks, a leftover file whose name is not UTF-8, and user data with control characters.

A path in ``archive_command`` or ``restore_command`` is quoted for the shell and has each
'%' doubled, as PostgreSQL's placeholder syntax asks; what backup-fetch writes must reach the
server as given."""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

import pytest

from pgcluster import Cluster, PgInstall, make_shared_dir
from walgcli import (
    WalgSetup,
    archive_now,
    fetch_for_recovery,
    normalized_dump,
    start_daemon,
    start_recovery,
    stop_daemon,
)

# pg_ctl puts the data directory and its log file between double quotes in a shell command
# line: a '"' there is PostgreSQL's limit, so only the paths pg_ctl never sees hold one.
ODD = "it's 50% café ✓"
QUOTED = "conf \"d\" 'é' %p"
# PostgreSQL refuses a tablespace location with a single quote.
TS = 'ts "d" 50% café ✓ %f'

ARCHIVING = {"archive_mode": "on", "wal_level": "replica", "archive_timeout": "0"}


def _for_server(*words: str) -> str:
    """A command line for archive_command / restore_command: each path quoted for the shell,
    each '%' in it doubled for PostgreSQL."""
    return " ".join(shlex.quote(w).replace("%", "%%") for w in words)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _setting(cluster: Cluster, name: str) -> str:
    got = cluster.run(["postgres", "-C", name, "-D", str(cluster.datadir)])
    return got.stdout.rstrip("\n")


DB = "base \"q\" 'é' ✓"
ROLE = "rôle 'x' \"y\""
SCHEMA = "sch\nema é"
TABLE = "tä'b\"le"
ROWS_SQL = f"SELECT string_agg(v, '|' ORDER BY id) FROM {_ident(SCHEMA)}.{_ident(TABLE)}"


@pytest.mark.majors(13, 16)
def test_odd_paths_and_names_round_trip(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    odd = make_shared_dir(pg_workdir / ODD, 0o755)
    prefetch = odd / "pre fetch 'p' \"q\" %f"
    walg = WalgSetup.create(walg_bin, odd / QUOTED, WALG_PREFETCH_DIR=str(prefetch))
    assert all(c in str(walg.config) for c in "'\"%é")
    push = _for_server(walg.walg_bin, "--config", str(walg.config), "wal-push") + " %p"
    fetch = _for_server(walg.walg_bin, "--config", str(walg.config), "wal-fetch") + " %f %p"
    src = Cluster.create(
        pg_install,
        odd / ("data %p " + os.fsdecode(b"\xff\xfe")),
        conf={**ARCHIVING, "archive_command": push},
    )
    leftover = os.path.join(os.fsencode(src.datadir), b"left\nover \xff 'q'.txt")
    with open(leftover, "wb") as handle:
        handle.write(b"kept")
    os.chown(leftover, src.datadir.stat().st_uid, src.datadir.stat().st_gid)
    ts = make_shared_dir(pg_workdir / TS / "ts", 0o700)
    src.start()
    src.psql(f"CREATE TABLESPACE odd_ts LOCATION {_literal(str(ts))}")
    src.psql(f"CREATE ROLE {_ident(ROLE)} LOGIN SUPERUSER")
    src.psql(f"CREATE DATABASE {_ident(DB)} OWNER {_ident(ROLE)} TABLESPACE odd_ts")
    src.psql(
        f"CREATE SCHEMA {_ident(SCHEMA)};"
        f"CREATE TABLE {_ident(SCHEMA)}.{_ident(TABLE)} (id int, v text) TABLESPACE odd_ts;"
        f"INSERT INTO {_ident(SCHEMA)}.{_ident(TABLE)}"
        " SELECT i, 'ligne é ' || i || E' \\' \" \\n' FROM generate_series(1, 1000) i",
        dbname=DB,
    )
    user_data = {"note": "café \u0007 bell\nline 'q' \"d\" \\ ✓", "n": 1}
    # Connected as a role, to a database, under such names.
    walg.run(
        ["backup-push", str(src.datadir), "--add-user-data", json.dumps(user_data)],
        cluster=src,
        env={"PGUSER": ROLE, "PGDATABASE": DB, "PGAPPNAME": "app 'é' %"},
    )

    # backup-list keeps the user data exact, and its JSON stays JSON.
    listed = json.loads(walg.run(["backup-list", "--json", "--detail"]).stdout)
    assert [b["user_data"] for b in listed] == [user_data]
    assert listed[0]["backup_name"] in walg.run(["backup-list"]).stdout
    # A data directory whose name is not UTF-8 is shown as WAL-G's JSON shows it.
    assert listed[0]["data_dir"] == str(odd / "data %p \ufffd\ufffd")

    src.psql(f"INSERT INTO {_ident(SCHEMA)}.{_ident(TABLE)} VALUES (1001, 'before')", dbname=DB)
    point = "rp 'é' \"x\" 50%"
    src.psql(f"SELECT pg_create_restore_point({_literal(point)})")
    expected_rows = src.psql(ROWS_SQL, dbname=DB)
    expected = normalized_dump(src.pg_dumpall())
    src.psql(f"INSERT INTO {_ident(SCHEMA)}.{_ident(TABLE)} VALUES (1002, 'after')", dbname=DB)
    archive_now(src)
    src.stop()

    # Restored elsewhere: the tablespace moved to another odd place, DEST oddly named.
    moved = pg_workdir / TS / "moved"
    [oid] = os.listdir(src.datadir / "pg_tblspc")
    spec = odd / "spec 'x' \"y\".json"
    spec.write_text(
        json.dumps(
            {
                "base_prefix": "",
                "tablespaces": [oid],
                oid: {"loc": str(moved), "link": f"pg_tblspc/{oid}"},
            }
        )
    )
    dest = odd / ("dest %p " + os.fsdecode(b"\xe9t\xe9"))
    # Each other recovery flag, as the server reads it back (not started: one restore is
    # enough to see the command work).
    for flag, value, setting in (
        ("--target-time", "2099-11-25 12:00:00+00", "recovery_target_time"),
        ("--target-lsn", "0/FF000000", "recovery_target_lsn"),
        ("--target-xid", "1234", "recovery_target_xid"),
        ("--target-timeline", "1", "recovery_target_timeline"),
    ):
        options = ["--restore-spec", str(spec), "--restore-command", fetch, flag, value]
        walg.run(["backup-fetch", str(dest), "LATEST", *options])
        probe = Cluster.from_existing(pg_install, dest)
        assert _setting(probe, setting) == value, flag
        assert _setting(probe, "restore_command") == fetch
        shutil.rmtree(dest)
        shutil.rmtree(moved, ignore_errors=True)
    walg.run(
        [
            "backup-fetch",
            str(dest),
            "--target-user-data",
            json.dumps(user_data, ensure_ascii=False),
            "--restore-spec",
            str(spec),
            "--restore-command",
            fetch,
            "--target-name",
            point,
        ]
    )
    auto = (dest / "postgresql.auto.conf").read_text()
    assert f"restore_command = {_literal(fetch)}\n" in auto
    assert f"recovery_target_name = {_literal(point)}\n" in auto
    assert (dest / "recovery.signal").is_file()
    restored = Cluster.from_existing(pg_install, dest, conf={"archive_mode": "off"})
    assert _setting(restored, "restore_command") == fetch
    assert _setting(restored, "recovery_target_name") == point
    with open(os.path.join(os.fsencode(dest), b"left\nover \xff 'q'.txt"), "rb") as handle:
        assert handle.read() == b"kept"
    start_recovery(restored)
    assert restored.psql(ROWS_SQL, dbname=DB) == expected_rows
    assert restored.tablespaces()["odd_ts"] == str(moved)
    got = normalized_dump(restored.pg_dumpall())
    assert got.replace(_literal(str(moved)), _literal(str(ts))) == expected
    assert prefetch.is_dir()  # walg made the prefetch folder it was given
    restored.stop()


@pytest.mark.majors(13, 16)
def test_odd_paths_through_the_daemon_and_its_client(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    """The socket, the config file named by WALG_CONFIG_PATH in the command and both data
    directories under odd names; archived and restored through walg-daemon-client."""
    odd = make_shared_dir(pg_workdir / "d 'q' 5%", 0o755)  # sun_path holds 107 bytes
    walg = WalgSetup.create(walg_bin, pg_workdir / QUOTED)
    client = str(Path(walg_bin).parent / "walg-daemon-client")

    def through(socket: Path, *args: str) -> str:
        env = "WALG_CONFIG_PATH=" + _for_server(str(walg.config))
        return f"{env} {_for_server(client, str(socket))} {' '.join(args)}"

    pushing = make_shared_dir(odd / "p é", 0o700) / "s"
    ts = make_shared_dir(pg_workdir / TS, 0o700)  # restored where it was
    src = Cluster.create(
        pg_install,
        odd / f"data {ODD}",
        conf={**ARCHIVING, "archive_command": through(pushing, "wal-push", "%p")},
    )
    daemon = start_daemon(walg, pushing, src.datadir)
    try:
        src.start()
        src.psql(f"CREATE TABLESPACE {_ident(ROLE)} LOCATION {_literal(str(ts))}")
        src.psql(
            f"CREATE TABLE t TABLESPACE {_ident(ROLE)}"
            " AS SELECT i, 'é ' || i AS v FROM generate_series(1, 5000) i"
        )
        user_data = "tab\tbell\u0007 é ✓ 'q' \"d\""  # not JSON: kept as text
        walg.run(
            ["backup-push", str(src.datadir)],
            cluster=src,
            env={"WALG_SENTINEL_USER_DATA": user_data},
        )
        [listed] = json.loads(walg.run(["backup-list", "--json", "--detail"]).stdout)
        assert listed["user_data"] == user_data
        src.psql("INSERT INTO t VALUES (5001, 'at the target')")
        target = src.psql("SELECT pg_current_wal_insert_lsn()")
        expected = normalized_dump(src.pg_dumpall())
        src.psql("SELECT txid_current()")
        archive_now(src)
        src.psql("INSERT INTO t VALUES (5002, 'after')")
        archive_now(src)
        src.stop()
    finally:
        stop_daemon(daemon)
    shutil.rmtree(ts)  # a new host: restored at the location the backup names

    dest = odd / f"dest {ODD} %f"
    fetching = make_shared_dir(odd / "f é", 0o700) / "s"
    command = through(fetching, "wal-fetch", "%f", "%p")
    fetch_for_recovery(walg, dest, "--target-lsn", target, restore_command=command)
    assert f"restore_command = {_literal(command)}\n" in (dest / "postgresql.auto.conf").read_text()
    restored = Cluster.from_existing(pg_install, dest, conf={"archive_mode": "off"})
    assert _setting(restored, "restore_command") == command
    daemon = start_daemon(walg, fetching, dest, env={"WALG_LOG_LEVEL": "DEVEL"})
    try:
        start_recovery(restored)
        assert normalized_dump(restored.pg_dumpall()) == expected
        assert restored.tablespaces() == {ROLE: str(ts)}
        restored.stop()
    finally:
        log = stop_daemon(daemon)
    # Served by the daemon at that socket, not by the client's fallback to walg itself.
    assert "00000002.history is not in the archive" in log
