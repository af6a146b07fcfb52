"""Non-exclusive base backup start and stop, per server version, on one connection.

PostgreSQL 15+ has ``pg_backup_start``/``pg_backup_stop``; 10–14 the non-exclusive forms of
``pg_start_backup``/``pg_stop_backup``. The backup lives as long as the connection, so a crash of
walg aborts it on the server. The stop call does not wait for archiving (the caller checks that
the WAL reached storage, with a timeout, reading ``pg_stat_archiver`` to explain a delay) and
runs under a statement timeout. On a standby a promotion during the backup fails it; a switch
to a new timeline (the standby following its promoted upstream, before or during the backup)
is returned as the backup's stop timeline, for the caller to wait for the WAL of both. Where
each database lives (``pg_database.dattablespace``) is read for the caller to compare before
and after: a database moved meanwhile may be missing from the backup (see
:func:`moved_databases`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from walg.core.log import get_logger
from walg.core.lsn import Segment, parse_lsn
from walg.errors import PostgresError
from walg.postgres.connection import ANSWER_MARGIN, Connection, first_line, query_one
from walg.settings import PgConnection

log = get_logger(__name__)

MIN_SERVER_VERSION = 100000
# statement_timeout is an int of milliseconds: PostgreSQL refuses to SET more (about 24.8 days).
MAX_STATEMENT_TIMEOUT_MS = 2**31 - 1


def statement_timeout_ms(seconds: float) -> int:
    """The ``statement_timeout`` that bounds a statement to ``seconds``.

    Longer limits are capped at PostgreSQL's maximum: the server would refuse the SET and so
    fail a backup whose data is all uploaded (WAL-G sends any value and fails so). Capping
    rather than sending 0 keeps walg's promise that nothing waits without a bound. A limit
    under a millisecond becomes 1 ms, since 0 would mean no limit at all.
    """
    if not seconds * 1000 < MAX_STATEMENT_TIMEOUT_MS:  # also infinity and NaN
        return MAX_STATEMENT_TIMEOUT_MS
    return max(1, math.ceil(seconds * 1000))


@dataclass(frozen=True)
class ServerInfo:
    """What a backup needs to know about the server it connects to."""

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
    """Where a base backup starts: LSN, timeline and WAL file."""

    lsn: int
    timeline: int
    segment_name: str


@dataclass(frozen=True)
class ArchiverStatus:
    """pg_stat_archiver's view of failed and archived WAL files."""

    failed_count: int
    last_failed_wal: str
    last_failed_time: str
    last_archived_wal: str
    last_archived_time: str
    # The last failure is newer than the last success, as the server compares them: the
    # times above are text in the session's DateStyle and TimeZone ('Postgres' puts the
    # weekday first), which need not sort as the moments do.
    failed_last: bool

    def failing_since(self, baseline: ArchiverStatus) -> bool:
        """True when archiving failed after ``baseline`` and nothing was archived since."""
        return self.failed_count > baseline.failed_count and self.failed_last

    def failing_on(self) -> str:
        """The file archiving last failed on, where that failure is newer than the last
        success (the archiver is stuck on it, retrying); else ""."""
        return self.last_failed_wal if self.failed_last else ""

    def describe(self) -> str:
        text = f"last archived {self.last_archived_wal or 'none'}"
        if self.last_archived_time:
            text += f" at {self.last_archived_time}"
        if self.last_failed_wal:
            text += f"; last failed {self.last_failed_wal} at {self.last_failed_time}"
        return text


@dataclass(frozen=True)
class BackupStop:
    """Where a base backup ends, with the label and tablespace map to store."""

    lsn: int
    label_file: str
    tablespace_map: str
    # The timeline of ``lsn``: a standby may follow its promoted upstream while the backup runs.
    timeline: int


@dataclass(frozen=True)
class DatabaseLocation:
    """A database's name, the OID of the tablespace holding it and, where it could be read,
    the identity of its directory: (device, inode of the directory, inode of its
    ``PG_VERSION``)."""

    name: str
    tablespace: int
    directory: tuple[int, int, int] | None = None


def database_locations(conn: Connection, pgdata: str) -> dict[int, DatabaseLocation]:
    """Each database's tablespace and directory, by database OID."""
    oids, names, tablespaces, directories = query_one(
        conn,
        "SELECT coalesce(array_agg(oid::bigint ORDER BY oid), '{}'),"
        " coalesce(array_agg(datname::text ORDER BY oid), '{}'),"
        " coalesce(array_agg(dattablespace::bigint ORDER BY oid), '{}'),"
        # TABLESPACE_VERSION_DIRECTORY is PG_<major>_<catalog version> from PostgreSQL 10 on.
        " coalesce(array_agg(CASE WHEN dattablespace = 1663 THEN 'base/' || oid"
        " ELSE 'pg_tblspc/' || dattablespace || '/PG_'"
        " || current_setting('server_version_num')::int / 10000 || '_'"
        " || (SELECT catalog_version_no FROM pg_control_system()) || '/' || oid END"
        " ORDER BY oid), '{}') FROM pg_database",
    )
    return {
        int(oid): DatabaseLocation(
            str(name), int(tablespace), _directory_identity(os.path.join(pgdata, str(directory)))
        )
        for oid, name, tablespace, directory in zip(
            oids, names, tablespaces, directories, strict=True
        )
    }


def _directory_identity(path: str) -> tuple[int, int, int] | None:
    try:
        folder = os.stat(path)
        version = os.stat(os.path.join(path, "PG_VERSION"))
    except OSError:  # a database dropped meanwhile, or left invalid by an interrupted DROP
        return None
    return folder.st_dev, folder.st_ino, version.st_ino


def moved_databases(
    before: dict[int, DatabaseLocation], after: dict[int, DatabaseLocation]
) -> list[str]:
    """Names of the databases that changed tablespace between two readings, or whose
    directory was made anew in between: moved away and back.

    ``ALTER DATABASE … SET TABLESPACE`` copies the files without WAL-logging them, and
    recovery re-copies them from the old directory, which a backup reading while the move ran
    may have found already removed: the restored database cannot be opened. Databases created
    or dropped in between are WAL-logged in full and do not count. (A move copies into new
    files: the directory and its ``PG_VERSION`` get new inodes, unless the filesystem hands
    both freed numbers out again.)
    """
    return sorted(
        location.name
        for oid, location in after.items()
        if oid in before
        and (
            before[oid].tablespace != location.tablespace
            or (
                before[oid].directory is not None
                and location.directory is not None
                and before[oid].directory != location.directory
            )
        )
    )


def server_info(conn: Connection) -> ServerInfo:
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


def label_start_timeline(label_file: str) -> int | None:
    """The ``START TIMELINE`` a backup_label records (PostgreSQL 11+); None without one."""
    for line in label_file.splitlines():
        key, sep, value = line.partition(":")
        if sep and key == "START TIMELINE":
            try:
                return int(value.strip())
            except ValueError:
                return None
    return None


class BackupSession:
    """One non-exclusive backup on one connection."""

    def __init__(self, conn: Connection, info: ServerInfo, pg: PgConnection) -> None:
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
        """End the backup without letting the server wait for archiving.

        The caller waits for the WAL the backup needs to reach storage itself (see
        ``ops.backup_push``), which is faster than the server's one-second polling and can
        report a broken archive_command instead of blocking.
        """
        import psycopg

        if self._started is None:
            raise PostgresError("backup was not started")
        if self._info.version_num >= 150000:
            sql = "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)"
        else:
            sql = "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, false)"
        timeout_ms = statement_timeout_ms(timeout)
        try:
            # The server cancels the statement at its statement_timeout; a stalled backend
            # never does, and the connection's own limit ends the wait then.
            limit = timeout_ms / 1000 + ANSWER_MARGIN
            with self._conn.answering("pg_backup_stop", limit) as cur:
                cur.execute(f"SET statement_timeout = {timeout_ms}")
                cur.execute(sql)
                row = cur.fetchone()
                cur.execute("SET statement_timeout = 0")
        except psycopg.errors.QueryCanceled:
            raise PostgresError(
                f"stopping the backup did not finish within {timeout_ms / 1000:.0f} s "
                "(WALG_STOP_BACKUP_TIMEOUT)"
            ) from None
        except psycopg.Error as exc:
            message = first_line(exc)
            if self._promoted():
                raise PostgresError(
                    "the standby was promoted while the backup was running: "
                    f"the backup is not usable ({message})"
                ) from None
            raise PostgresError(f"stopping the backup failed: {message}") from None
        if row is None:
            raise PostgresError("stopping the backup returned nothing")
        lsn_text, label_file, spcmap = row
        label_file = label_file or ""
        timeline = self._started.timeline
        if self._info.in_recovery:
            timeline = self._standby_stop_timeline(label_file)
        return BackupStop(parse_lsn(lsn_text), label_file, spcmap or "", timeline)

    def database_locations(self, pgdata: str) -> dict[int, DatabaseLocation]:
        return database_locations(self._conn, pgdata)

    def clock_us(self) -> int:
        """The server's clock now, in microseconds since the epoch; on a standby, the commit
        time of the last transaction it replayed (its primary's clock) if that is later."""
        (us,) = query_one(
            self._conn,
            "SELECT (extract(epoch FROM"
            " greatest(clock_timestamp(), pg_last_xact_replay_timestamp())) * 1000000)::bigint",
        )
        return int(us)

    def archiver_status(self) -> ArchiverStatus:
        row = query_one(
            self._conn,
            "SELECT failed_count, coalesce(last_failed_wal, ''), last_failed_time::text,"
            " coalesce(last_archived_wal, ''), last_archived_time::text,"
            " coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false)"
            " FROM pg_stat_archiver",
        )
        return ArchiverStatus(int(row[0]), row[1], row[2] or "", row[3], row[4] or "", bool(row[5]))

    def _promoted(self) -> bool:
        """Was this standby's backup ended by a promotion? Asked of the server's state, not
        read from its error, whose words follow its ``lc_messages``."""
        if not self._info.in_recovery:
            return False
        try:
            (in_recovery,) = query_one(self._conn, "SELECT pg_is_in_recovery()")
        except PostgresError:
            return False  # the connection went with the error: the server's words stand
        return not in_recovery

    def _standby_stop_timeline(self, label_file: str) -> int:
        """The timeline a standby's backup ends on; fails if it was promoted meanwhile.

        PostgreSQL ends a standby's backup at its minimum recovery point, on that point's
        timeline, read here just after: at worst a later one of the same lineage, whose history
        the caller follows. Not ``pg_control_checkpoint()``: its timeline changes only at the
        next restartpoint, which may come long after the standby followed a new timeline.
        """
        assert self._started is not None
        in_recovery, min_recovery_timeline = query_one(
            self._conn,
            "SELECT pg_is_in_recovery(), (SELECT min_recovery_end_timeline"
            " FROM pg_control_recovery())",
        )
        if not in_recovery:
            raise PostgresError(
                "the standby was promoted while the backup was running: the backup is not usable"
            )
        # The name and the WAL to wait for were taken from a query after pg_backup_start; a
        # restartpoint on a new timeline in between would make them another timeline's.
        labelled = label_start_timeline(label_file)
        if labelled is not None and labelled != self._started.timeline:
            raise PostgresError(
                f"the backup started on timeline {labelled} by its backup_label, not on "
                f"timeline {self._started.timeline} as walg read it just after the start "
                "(a restartpoint in between): run backup-push again"
            )
        timeline = max(self._started.timeline, int(min_recovery_timeline or 0))
        if timeline != self._started.timeline:
            log.info(
                "the standby is on timeline %d; the backup started on timeline %d (the "
                "standby followed a promoted upstream): it needs the WAL of both",
                timeline,
                self._started.timeline,
            )
        return timeline

    def abort(self) -> None:
        """Close the connection; the server ends a non-exclusive backup with its session."""
        try:
            self._conn.close()
        except Exception as exc:  # pragma: no cover - best effort
            log.debug("closing the backup connection failed: %s", exc)
