"""Connections to the server being backed up (psycopg 3, imported only here).

Every wait has a timeout: the connect timeout from PGCONNECT_TIMEOUT (default 30 s, also where
libpq would wait forever), and callers set ``statement_timeout`` for queries that may block.
Every PG* variable libpq knows, from the environment or the config file, is passed on as a
keyword (see ``walg.settings.pg_connection``); one the linked libpq does not know makes the
connection fail rather than being dropped, since it may be a security setting.

Text comes back as str whatever the client encoding: with SQL_ASCII (the encoding of clusters
made by ``initdb`` under ``LANG=C``) psycopg would return bytes, so walg decodes them as UTF-8
with surrogateescape, as Python decodes file names (a path that is not UTF-8 compares equal).
The same for UTF8, where the server still hands over paths as bytes that need not be UTF-8.
"""

from __future__ import annotations

from typing import Any

from walg.errors import PostgresError
from walg.settings import PgConnection


def _where(pg: PgConnection) -> str:
    # Never the password; a service file may supply the host, so name the service then.
    host = pg.host or pg.params.get("hostaddr")
    if host is None and "service" in pg.params:
        return f"service {pg.params['service']}"
    host = host or "the default socket"
    return f"{host}:{pg.port}" if pg.port else host


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def connect(pg: PgConnection) -> Any:
    """An autocommit connection, or a one-line :class:`PostgresError` saying where it failed."""
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - dependency missing
        raise PostgresError(f"psycopg is not installed: {exc}") from None
    try:
        conn = psycopg.connect(autocommit=True, **pg.libpq_kwargs())
    except psycopg.Error as exc:
        raise PostgresError(
            f"cannot connect to PostgreSQL at {_where(pg)}: {first_line(exc)}"
        ) from None
    # SQL_ASCII: psycopg's text loaders return bytes. UTF8: the server passes paths (a data
    # directory, a tablespace location) as the file system has them, which need not be UTF-8.
    if conn.info.encoding in ("ascii", "utf-8"):
        _load_text_as_str(conn)
    return conn


def _load_text_as_str(conn: Any) -> None:
    from psycopg.abc import Buffer
    from psycopg.adapt import Loader

    class SurrogateEscapedText(Loader):
        def load(self, data: Buffer) -> str:
            return bytes(data).decode("utf-8", "surrogateescape")

    for name in ("text", "varchar", "name", "bpchar", '"char"'):
        conn.adapters.register_loader(name, SurrogateEscapedText)
    conn.adapters.register_loader(0, SurrogateEscapedText)  # literals of unknown type


def query_one(conn: Any, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
    import psycopg

    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            row = cur.fetchone()
    except psycopg.Error as exc:
        raise PostgresError(f"query failed: {first_line(exc)}") from None
    if row is None:
        raise PostgresError(f"query returned no row: {sql}")
    return tuple(row)
