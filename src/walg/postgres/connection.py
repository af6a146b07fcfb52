"""Connections to the server being backed up (psycopg 3, imported only here).

Every wait has a timeout: the connect timeout from PGCONNECT_TIMEOUT (default 30 s, also where
libpq would wait forever), and each answer the ``answer_timeout`` a :class:`Connection` is
made with. ``statement_timeout`` cannot give that bound by itself: a backend that is stopped
(SIGSTOP, a frozen container) or stuck in uninterruptible I/O never acts on it, and libpq waits
for its answer forever. Past the limit the connection's socket is shut down from a timer
thread, which ends libpq's wait with an error; the session then ends on the server, and a
backup running in it with the session.
Every PG* variable libpq knows, from the environment or the config file, is passed on as a
keyword (see ``walg.settings.pg_connection``); one the linked libpq does not know makes the
connection fail rather than being dropped, since it may be a security setting.

Text comes back as str whatever the client encoding: with SQL_ASCII (the encoding of clusters
made by ``initdb`` under ``LANG=C``) psycopg would return bytes, so walg decodes them as UTF-8
with surrogateescape, as Python decodes file names (a path that is not UTF-8 compares equal).
The same for every other encoding, where the server still hands over paths as the file system
has them: psycopg would read a LATIN1 cluster's ``/srv/café`` (UTF-8 on disk) as
``/srv/cafÃ©``. Names (a database's) in such an encoding then read as their bytes, which only
messages show.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

from walg.errors import PostgresError
from walg.settings import PgConnection

# Added to a statement_timeout where one is set as well, so that the server's own
# cancellation, with its clean message, normally comes first.
ANSWER_MARGIN = 2.0


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


class Connection:
    """An autocommit connection whose every answer is awaited at most ``answer_timeout``
    seconds (``limit_name`` names the setting, for the error); ``raw`` is psycopg's."""

    def __init__(self, raw: Any, answer_timeout: float, limit_name: str, where: str) -> None:
        self.raw = raw
        self.answer_timeout = answer_timeout
        self.limit_name = limit_name
        self.where = where
        self.backend_pid: int = raw.info.backend_pid

    def close(self) -> None:
        self.raw.close()

    @contextlib.contextmanager
    def answering(self, what: str, limit: float | None = None) -> Iterator[Any]:
        """A cursor whose statements must all be answered within ``limit`` seconds (default
        ``answer_timeout``); past it a :class:`PostgresError` naming ``what`` and the stalled
        backend, and the connection is closed."""
        import psycopg

        seconds = self.answer_timeout if limit is None else limit
        fired = threading.Event()
        timer = threading.Timer(seconds, self._hang_up, (fired,))
        timer.daemon = True
        timer.start()
        try:
            with self.raw.cursor() as cur:
                yield cur
        except psycopg.Error:
            if fired.is_set():
                raise self._no_answer(what, seconds) from None
            raise
        finally:
            timer.cancel()
            timer.join()
        if fired.is_set():  # answered just as the socket was shut down: unusable all the same
            raise self._no_answer(what, seconds)

    def _hang_up(self, fired: threading.Event) -> None:
        fired.set()
        # Best effort: a connection closed meanwhile has no socket left to shut down.
        with (
            contextlib.suppress(Exception),
            socket.socket(fileno=os.dup(self.raw.pgconn.socket)) as sock,
        ):
            sock.shutdown(socket.SHUT_RDWR)

    def _no_answer(self, what: str, seconds: float) -> PostgresError:
        return PostgresError(
            f"PostgreSQL at {self.where} did not answer {what} within {seconds:g} s "
            f"({self.limit_name}): its backend process (pid {self.backend_pid}) or the server "
            "is stalled (stopped, or stuck in I/O); the connection was closed"
        )


def connect(pg: PgConnection, answer_timeout: float, limit_name: str) -> Connection:
    """An autocommit connection whose answers are awaited at most ``answer_timeout`` seconds
    (``limit_name`` names the setting that gives it), or a one-line :class:`PostgresError`
    saying where it failed."""
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
    # SQL_ASCII: psycopg's text loaders return bytes. Any encoding: the server passes paths
    # (a data directory, a tablespace location) as the file system has them, unconverted.
    _load_text_as_str(conn)
    return Connection(conn, answer_timeout, limit_name, _where(pg))


def _load_text_as_str(conn: Any) -> None:
    from psycopg.abc import Buffer
    from psycopg.adapt import Loader

    class SurrogateEscapedText(Loader):
        def load(self, data: Buffer) -> str:
            return bytes(data).decode("utf-8", "surrogateescape")

    for name in ("text", "varchar", "name", "bpchar", '"char"'):
        conn.adapters.register_loader(name, SurrogateEscapedText)
    conn.adapters.register_loader(0, SurrogateEscapedText)  # literals of unknown type


def query_one(conn: Connection, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
    import psycopg

    what = sql if len(sql) <= 60 else sql[:57] + "..."
    try:
        with conn.answering(f"'{what}'") as cur:
            cur.execute(sql, params)
            row = cur.fetchone()
    except psycopg.Error as exc:
        raise PostgresError(f"query failed: {first_line(exc)}") from None
    if row is None:
        raise PostgresError(f"query returned no row: {sql}")
    return tuple(row)
