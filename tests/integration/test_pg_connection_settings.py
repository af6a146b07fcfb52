"""PG* settings reach the server as libpq would apply them, against a real cluster.

In-process (walg imported from the source tree): the config file's PG* values are passed to
libpq, a multi-host PGHOST/PGPORT pair connects, and a WALG_STOP_BACKUP_TIMEOUT longer than
PostgreSQL's statement_timeout allows still stops a backup (it used to discard it). Text
comes back as str under client_encoding SQL_ASCII too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pgcluster import Cluster
from walg.errors import PostgresError
from walg.postgres.backup_session import BackupSession, server_info
from walg.postgres.connection import connect, query_one
from walg.settings import Settings, load


def settings_for(cluster: Cluster, tmp: Path, config: dict[str, str], **env: str) -> Settings:
    path = tmp / "walg.json"
    path.write_text(json.dumps(config))
    return load(environ={**cluster.conninfo_env(), **env}, config_path=str(path))


def test_config_file_pg_values_reach_libpq(pg_cluster: Cluster, tmp_path: Path) -> None:
    settings = settings_for(
        pg_cluster, tmp_path, {"pgoptions": "-c statement_timeout=1234", "PGAPPNAME": "from-file"}
    )
    conn = connect(settings.pg, 30, "the test")
    try:
        assert query_one(conn, "SHOW statement_timeout") == ("1234ms",)
        assert query_one(conn, "SHOW application_name") == ("from-file",)
    finally:
        conn.close()


def test_channel_binding_from_the_config_file_is_enforced(
    pg_cluster: Cluster, tmp_path: Path
) -> None:
    # The test cluster trusts local connections: no SCRAM, so no channel binding. Before, the
    # file's PGCHANNELBINDING=require was dropped and walg connected anyway.
    settings = settings_for(pg_cluster, tmp_path, {"PGCHANNELBINDING": "require"})
    with pytest.raises(PostgresError, match="channel binding"):
        connect(settings.pg, 30, "the test").close()


def test_text_is_str_with_client_encoding_sql_ascii(pg_cluster: Cluster, tmp_path: Path) -> None:
    # psycopg returns bytes for text under SQL_ASCII (a cluster initdb made under LANG=C, or
    # PGCLIENTENCODING): backup-push compared b'/path' with PGDATA and refused the cluster.
    settings = settings_for(pg_cluster, tmp_path, {}, PGCLIENTENCODING="SQL_ASCII")
    conn = connect(settings.pg, 30, "the test")
    try:
        assert query_one(conn, "SHOW client_encoding") == ("SQL_ASCII",)
        info = server_info(conn)
        assert info.data_directory == str(pg_cluster.datadir)
        assert query_one(conn, "SELECT 'caf' || chr(233), 'x'::name, 'y'::varchar") == (
            "café",
            "x",
            "y",
        )
    finally:
        conn.close()


def test_a_multi_host_list_connects(pg_cluster: Cluster, tmp_path: Path) -> None:
    missing = tmp_path / "no-server-here"
    settings = settings_for(
        pg_cluster,
        tmp_path,
        {},
        PGHOST=f"{missing},{pg_cluster.socket_dir}",
        PGPORT=f"{pg_cluster.port},{pg_cluster.port}",
        PGCONNECT_TIMEOUT="0",
    )
    conn = connect(settings.pg, 30, "the test")
    try:
        assert query_one(conn, "SELECT 1") == (1,)
    finally:
        conn.close()


def test_a_720h_stop_backup_timeout_stops_the_backup(pg_cluster: Cluster, tmp_path: Path) -> None:
    settings = settings_for(pg_cluster, tmp_path, {"WALG_STOP_BACKUP_TIMEOUT": "720h"})
    conn = connect(settings.pg, 30, "the test")
    session = BackupSession(conn, server_info(conn), settings.pg)
    try:
        session.start("walg test")
        stop = session.stop(settings.stop_backup_timeout)
        assert stop.lsn > 0
        assert "START WAL LOCATION" in stop.label_file
    finally:
        session.abort()
