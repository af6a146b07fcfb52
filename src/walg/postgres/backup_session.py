"""Non-exclusive base backup start and stop, per server version, on one connection.

PostgreSQL 15+ has ``pg_backup_start``/``pg_backup_stop``; 9.6–14 the non-exclusive forms of
``pg_start_backup``/``pg_stop_backup``. The backup lives as long as the connection, so a crash of
walg aborts it on the server. The stop call waits for WAL archiving; it runs under a statement
timeout and, while it waits, a second connection watches ``pg_stat_archiver`` so that broken
archiving is reported instead of waited on forever. On a standby the timeline is checked at
start and stop, and a promotion during the backup fails it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from walg.core.lsn import Segment, format_lsn, parse_lsn
from walg.errors import PostgresError
from walg.postgres.connection import connect, first_line, query_one
from walg.settings import PgConnection

log = logging.getLogger(__name__)

MIN_SERVER_VERSION = 100000
ARCHIVER_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class ServerInfo:
    version_num: int
    data_directory: str
    in_recovery: bool
    timeline: int
    system_identifier: int | None
    segment_size: int
    archive_mode: str
    archive_command: str


@dataclass(frozen=True)
class BackupStart:
    lsn: int
    timeline: int
    segment_name: str


@dataclass(frozen=True)
class BackupStop:
    lsn: int
    label_file: str
    tablespace_map: str


def server_info(conn: Any) -> ServerInfo:
    (version_num,) = query_one(conn, "SELECT current_setting('server_version_num')::int")
    if version_num < MIN_SERVER_VERSION:
        raise PostgresError(
            f"PostgreSQL {version_num} is too old: walg supports PostgreSQL 10 and later"
        )
    data_directory, in_recovery, segment_size, archive_mode, archive_command = query_one(
        conn,
        "SELECT current_setting('data_directory'), pg_is_in_recovery(),"
        " (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),"
        " current_setting('archive_mode'), current_setting('archive_command')",
    )
    (timeline,) = query_one(conn, "SELECT timeline_id FROM pg_control_checkpoint()")
    (system_identifier,) = query_one(conn, "SELECT system_identifier FROM pg_control_system()")
    return ServerInfo(
        version_num=version_num,
        data_directory=data_directory,
        in_recovery=bool(in_recovery),
        timeline=int(timeline),
        system_identifier=int(system_identifier) if system_identifier is not None else None,
        segment_size=int(segment_size),
        archive_mode=archive_mode,
        archive_command=archive_command,
    )


class BackupSession:
    """One non-exclusive backup on one connection."""

    def __init__(self, conn: Any, info: ServerInfo, pg: PgConnection) -> None:
        self._conn = conn
        self._info = info
        self._pg = pg
        self._started: BackupStart | None = None

    def start(self, label: str) -> BackupStart:
        if self._info.version_num >= 150000:
            sql = "SELECT pg_backup_start(%s, true)::text"
        else:
            sql = "SELECT pg_start_backup(%s, true, false)::text"
        (lsn_text,) = query_one(self._conn, sql, (label,))
        lsn = parse_lsn(lsn_text)
        if self._info.in_recovery:
            (timeline,) = query_one(self._conn, "SELECT timeline_id FROM pg_control_checkpoint()")
            timeline = int(timeline)
            name = Segment.before(timeline, lsn, self._info.segment_size).name(
                self._info.segment_size
            )
        else:
            timeline = self._info.timeline
            (name,) = query_one(self._conn, "SELECT pg_walfile_name(%s::pg_lsn)", (lsn_text,))
            timeline = int(name[:8], 16)
        self._started = BackupStart(lsn, timeline, name)
        return self._started

    def stop(self, timeout: float) -> BackupStop:
        import psycopg

        if self._started is None:
            raise PostgresError("backup was not started")
        if self._info.version_num >= 150000:
            sql = "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(true)"
        else:
            sql = "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, true)"
        watcher = _ArchiverWatch(self._pg) if not self._info.in_recovery else None
        try:
            with self._conn.cursor() as cur:
                cur.execute(f"SET statement_timeout = {int(timeout * 1000)}")
                if watcher is not None:
                    watcher.start()
                try:
                    cur.execute(sql)
                    row = cur.fetchone()
                except psycopg.errors.QueryCanceled:
                    status = watcher.describe() if watcher else ""
                    raise PostgresError(
                        f"stopping the backup did not finish within {timeout:.0f} s "
                        "(WALG_STOP_BACKUP_TIMEOUT): PostgreSQL waits until the WAL the backup "
                        f"needs is archived{status}; check archive_command"
                    ) from None
                except psycopg.Error as exc:
                    message = first_line(exc)
                    if "promoted" in message:
                        raise PostgresError(
                            "the standby was promoted while the backup was running: "
                            f"the backup is not usable ({message})"
                        ) from None
                    raise PostgresError(f"stopping the backup failed: {message}") from None
                cur.execute("SET statement_timeout = 0")
        finally:
            if watcher is not None:
                watcher.stop()
        if row is None:
            raise PostgresError("stopping the backup returned nothing")
        lsn_text, label_file, spcmap = row
        if self._info.in_recovery:
            self._check_still_standby()
        return BackupStop(parse_lsn(lsn_text), label_file or "", spcmap or "")

    def _check_still_standby(self) -> None:
        assert self._started is not None
        in_recovery, timeline = query_one(
            self._conn,
            "SELECT pg_is_in_recovery(), (SELECT timeline_id FROM pg_control_checkpoint())",
        )
        if not in_recovery:
            raise PostgresError(
                "the standby was promoted while the backup was running: the backup is not usable"
            )
        if int(timeline) != self._started.timeline:
            raise PostgresError(
                f"the standby switched from timeline {self._started.timeline} to {timeline} "
                "while the backup was running: the backup is not usable"
            )

    def abort(self) -> None:
        """Close the connection; the server ends a non-exclusive backup with its session."""
        try:
            self._conn.close()
        except Exception as exc:  # pragma: no cover - best effort
            log.debug("closing the backup connection failed: %s", exc)


class _ArchiverWatch:
    """Polls pg_stat_archiver on its own connection while pg_backup_stop waits."""

    def __init__(self, pg: PgConnection) -> None:
        self._pg = pg
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="archiver-watch", daemon=True)
        self._baseline: int | None = None
        self._last: tuple[Any, ...] | None = None
        self._warned = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            conn = connect(self._pg)
        except PostgresError as exc:
            log.debug("cannot watch the archiver: %s", exc)
            return
        try:
            while not self._stop.is_set():
                row = query_one(
                    conn,
                    "SELECT failed_count, last_failed_wal, last_failed_time,"
                    " last_archived_wal, last_archived_time FROM pg_stat_archiver",
                )
                self._last = row
                if self._baseline is None:
                    self._baseline = int(row[0])
                elif int(row[0]) > self._baseline and not self._warned:
                    self._warned = True
                    log.warning(
                        "WAL archiving is failing (last failed: %s at %s); "
                        "the backup cannot finish until archive_command succeeds",
                        row[1],
                        row[2],
                    )
                self._stop.wait(ARCHIVER_POLL_SECONDS)
        except PostgresError as exc:
            log.debug("archiver watch stopped: %s", exc)
        finally:
            conn.close()

    def describe(self) -> str:
        row = self._last
        if row is None:
            return ""
        failed_count, failed_wal, failed_time, archived_wal, archived_time = row
        text = f"; pg_stat_archiver: last archived {archived_wal or 'none'}"
        if archived_time:
            text += f" at {archived_time}"
        if failed_count and self._baseline is not None and int(failed_count) > self._baseline:
            text += f", archiving FAILING: last failed {failed_wal} at {failed_time}"
        return text


def describe_lsn(lsn: int) -> str:
    return format_lsn(lsn)
