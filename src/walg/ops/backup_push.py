"""backup-push: a non-exclusive base backup of a running cluster, in WAL-G's layout.

Order of objects (DESIGN.md §1, promise 1): data partitions (several filled and uploaded at
once), ``pg_control.tar``, then — after ``pg_backup_stop`` — ``backup_label.tar``,
``files_metadata.json`` (whose checksum the sentinel records), ``metadata.json`` and the
sentinel last. A database moved to another tablespace while the backup ran fails it, since
recovery could not rebuild it. Any failure before the sentinel aborts the backup on the
server, removes what was uploaded (best effort) and leaves no backup that lists.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from walg import __version__
from walg.core.checksum import Checksum, StoredObject
from walg.core.gotime import GoTime
from walg.core.log import get_logger
from walg.core.lsn import Segment, format_lsn, is_segment_name, is_wal_file_name
from walg.core.metadata import BackupMetadata, FileDescription, FilesMetadata, Sentinel
from walg.core.naming import (
    BACKUP_LABEL_MEMBER,
    PG_CONTROL_MEMBER,
    TABLESPACE_MAP_MEMBER,
    backup_folder,
    backup_name,
    claim_key,
    claim_takeover_key,
    claim_takeover_removal_key,
    metadata_key,
    part_object_name,
    partitions_prefix,
    sentinel_key,
    with_ext,
)
from walg.core.timeline import History, history_file_name
from walg.errors import (
    BackupInProgress,
    FormatError,
    IntegrityError,
    PostgresError,
    StorageError,
    UsageError,
)
from walg.ops.catalog import write_files_metadata
from walg.ops.pipeline import SIGNAL_POLL, leave_workers, upload
from walg.ops.wal import (
    clear_prefetched_after_recovery,
    find_wal_object,
    foreign_system_id,
    newest_timeline,
    read_history,
    refuse_archive_in_data_directory,
)
from walg.ops.wal_push import stored_refusal
from walg.postgres import datadir
from walg.postgres.backup_session import (
    ArchiverStatus,
    BackupSession,
    BackupStart,
    BackupStop,
    DatabaseLocation,
    ServerInfo,
    database_locations,
    moved_databases,
    server_info,
)
from walg.postgres.connection import Connection, connect, query_one
from walg.settings import Settings
from walg.storage.base import Storage
from walg.streams.compression import Codec, codec_for_method
from walg.tarball.writer import TarWriter

log = get_logger(__name__)


@dataclass(frozen=True)
class BackupPushResult:
    """What a backup-push stored: its name, WAL range and sizes."""

    name: str
    start_lsn: int
    finish_lsn: int
    uncompressed_size: int
    compressed_size: int
    parts: int
    files: int


@dataclass
class _Collected:
    """What the partition workers report, guarded by a lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    files: dict[str, FileDescription] = field(default_factory=dict)
    tar_sets: dict[str, tuple[str, ...]] = field(default_factory=dict)
    objects: dict[str, StoredObject] = field(default_factory=dict)
    payload: int = 0
    next_part: int = 1

    def part_number(self) -> int:
        with self.lock:
            number = self.next_part
            self.next_part += 1
            return number


def _local_time(ns: int) -> GoTime:
    return GoTime(ns, time.localtime(ns // 1_000_000_000).tm_gmtoff)


def _now_utc_us() -> GoTime:
    ns = time.time_ns()
    return GoTime(-(-ns // 1000) * 1000)


# Past this difference between this host's clock and the server's, backup-push says so.
CLOCK_SKEW_WARNING = 60.0


def _server_stop_time(session: BackupSession) -> GoTime | None:
    """When the backup stopped by the server's clock, the one its commit times (which
    ``--target-time`` is compared with) are read from; None if it cannot be read.

    Sentinel times are this host's, as in WAL-G. Where this host's clock is behind (a step
    back, a VM resumed with a stale clock, backup-push run on another host than the
    server), FinishTime would lie before commits the backup holds, and ``backup-fetch
    --target-time`` between the two would restore them: a restore past its target, which
    PostgreSQL does not notice. The later of the two is recorded; a difference is warned of.
    """
    try:
        server_us = session.clock_us()
    except PostgresError as exc:
        log.warning("cannot read the server's clock (%s); FinishTime is this host's", exc)
        return None
    skew = server_us / 1e6 - time.time()
    if abs(skew) > CLOCK_SKEW_WARNING:
        log.warning(
            "this host's clock is %.0f s %s the server's%s; check both hosts' time "
            "synchronisation: --target-time restores choose backups by their FinishTime",
            abs(skew),
            "behind" if skew > 0 else "ahead of",
            " (FinishTime is taken from the server's)" if skew > 0 else "",
        )
    return GoTime(server_us * 1000)


def partition_workers(settings: Settings) -> int:
    if settings.upload_disk_concurrency is not None:
        return settings.upload_disk_concurrency
    return max(1, min(os.cpu_count() or 1, settings.upload_concurrency))


class _Abandoned(Exception):
    """A partition worker stops because the backup failed or was interrupted elsewhere."""


class _Partitions:
    """Fills tar partitions from a shared list of entries with several workers.

    The list is consumed: each entry is dropped from it when taken, so what a backup of many
    files holds shrinks as it goes instead of keeping every entry to the end.
    """

    def __init__(
        self,
        storage: Storage,
        codec: Codec,
        prefix: str,
        threshold: int,
        entries: list[datadir.Entry],
        collected: _Collected,
    ) -> None:
        self._storage = storage
        self._codec = codec
        self._prefix = prefix
        self._threshold = threshold
        entries.reverse()  # taken from the end, in walk order
        self._entries = entries
        self._lock = threading.Lock()
        self._collected = collected
        self.failed = threading.Event()

    def _take(self) -> datadir.Entry | None:
        with self._lock:
            if not self._entries or self.failed.is_set():
                return None
            return self._entries.pop()

    def run_worker(self) -> None:
        try:
            entry = self._take()
            while entry is not None:
                entry = self._one_partition(entry)
        except BaseException:
            self.failed.set()
            raise

    def _one_partition(self, first: datadir.Entry) -> datadir.Entry | None:
        number = self._collected.part_number()
        object_name = part_object_name(number, self._codec.extension)
        files: dict[str, FileDescription] = {}
        next_entry: datadir.Entry | None = None
        with upload(self._storage, self._prefix + object_name, self._codec) as up:
            tar = TarWriter(up.writer)
            entry: datadir.Entry | None = first
            while entry is not None:
                if self.failed.is_set():
                    # Abandon this partition's upload: the backup is being given up.
                    raise _Abandoned
                checksum = tar.add_entry(entry)
                if entry.kind == datadir.KIND_DIR or checksum is not None:
                    files[entry.member] = FileDescription(
                        mtime=_local_time(entry.mtime_ns), checksum=checksum
                    )
                if tar.payload_size >= self._threshold:
                    next_entry = self._take()
                    break
                entry = self._take()
            if self.failed.is_set():
                raise _Abandoned
            tar.finish()
        assert up.result is not None
        with self._collected.lock:
            self._collected.files.update(files)
            self._collected.tar_sets[object_name] = tuple(tar.members)
            self._collected.objects[object_name] = up.result
            self._collected.payload += tar.payload_size
        log.info(
            "uploaded %s: %d members, %d bytes stored",
            object_name,
            len(tar.members),
            up.result.stored.size,
        )
        return next_entry


def _single_member_tar(
    storage: Storage, codec: Codec, key: str, members: list[tuple[str, bytes, int]]
) -> tuple[StoredObject, dict[str, Checksum], int]:
    sums: dict[str, Checksum] = {}
    with upload(storage, key, codec) as up:
        tar = TarWriter(up.writer)
        for name, data, mtime in members:
            sums[name] = tar.add_bytes(name, data, mtime=mtime)
        tar.finish()
    assert up.result is not None
    return up.result, sums, tar.payload_size


def backup_push(
    settings: Settings,
    storage: Storage,
    pgdata_arg: str | None,
    *,
    permanent: bool = False,
    user_data: Any = None,
) -> BackupPushResult:
    """Take a base backup of the server running on ``pgdata_arg`` (else PGDATA).

    ``permanent`` marks it so (``IsPermanent``, as WAL-G's ``--permanent``); ``user_data``,
    when not None, is stored instead of ``WALG_SENTINEL_USER_DATA`` (``--add-user-data``).
    """
    if user_data is None:
        user_data = settings.sentinel_user_data
    pgdata = settings.require_pgdata(pgdata_arg)
    datadir.check_data_directory(pgdata)
    refuse_archive_in_data_directory(storage, sentinel_key("base"), pgdata)
    # Settings checks this one when it is first read; read now, a bad value fails the command
    # before the backup starts, not at pg_backup_stop after all of it is uploaded.
    _ = settings.stop_backup_timeout
    _ = settings.tar_size_threshold
    _ = settings.upload_disk_concurrency
    codec = codec_for_method(settings.compression)
    start_time = _now_utc_us()
    conn = _connect(settings)
    info = server_info(conn)
    if os.path.realpath(pgdata) != os.path.realpath(info.data_directory):
        conn.close()
        raise UsageError(
            f"{pgdata} is not the data directory of the server walg connected to "
            f"({info.data_directory}); check PGHOST/PGPORT"
        )
    if not info.in_recovery and info.archive_mode == "off":
        log.warning(
            "archive_mode is off: the WAL this backup needs will not be archived, "
            "so it cannot be restored from the archive alone"
        )
    _warn_of_inherited_targets(pgdata)
    if not info.in_recovery:
        _clear_restore_prefetch(pgdata)
    # Read before the backup starts: a move that commits later is seen as a change at the end,
    # one committed earlier is all before the backup's starting checkpoint.
    databases = database_locations(conn, pgdata)
    session, start = _start(conn, info, settings, storage)
    name = backup_name(start.segment_name)
    log.info("backup %s started at LSN %s", name, format_lsn(start.lsn))
    try:
        _remove_leftovers(storage, name)
        result = _upload_backup(
            settings,
            storage,
            codec,
            session,
            info,
            start,
            name,
            pgdata,
            start_time,
            databases,
            permanent,
            user_data,
        )
    except BaseException:
        session.abort()
        _cleanup(storage, name)
        raise
    session.abort()
    _release_claim(storage, name)
    return result


def _connect(settings: Settings) -> Connection:
    """A connection to the server being backed up. Every answer is awaited at most
    ``WALG_STOP_BACKUP_TIMEOUT`` (as pgBackRest's db-timeout bounds each of its queries),
    ``pg_backup_start``'s checkpoint included: a backend that is stopped never answers."""
    return connect(settings.pg, settings.stop_backup_timeout, "WALG_STOP_BACKUP_TIMEOUT")


def _clear_restore_prefetch(pgdata: str) -> None:
    """Remove the segments a finished restore prefetched past its target into pg_wal.

    Archiving the new timeline's ``.history`` removes them, but a restored server with
    ``archive_mode = off`` archives nothing, and no other walg command runs there: they stayed
    for good, up to ``WALG_DOWNLOAD_CONCURRENCY`` segments. Tidying only: never fails the
    backup (the function checks the data directory is out of recovery and ignores errors).
    """
    for folder in ("pg_wal", "pg_xlog"):
        wal_dir = os.path.join(pgdata, folder)
        if removed := clear_prefetched_after_recovery(wal_dir):
            log.info("removed %d prefetched segments left by the recovery in %s", removed, wal_dir)


def _warn_of_inherited_targets(pgdata: str) -> None:
    """Name a recovery target an earlier point-in-time restore left in postgresql.auto.conf,
    or in the data directory's postgresql.conf (where WAL-G's instructions have it written)
    or a file of the data directory it includes.

    PostgreSQL keeps it after promotion and ignores it on a primary; but a standby cloned
    from this server stops replicating there and promotes, and a restore of this backup that
    does not write its own recovery settings stops there (walg's backup-fetch comments it out).
    """
    from walg.ops.recovery import active_targets, datadir_conf_files

    for conf in datadir_conf_files(pgdata):
        try:
            text = (Path(pgdata) / conf).read_bytes().decode("utf-8", "replace")
        except OSError:
            continue
        for setting in active_targets(text):
            name = setting.split(" ", 1)[0]
            log.warning(
                "%s sets %s, left by a point-in-time restore: a standby cloned from this "
                "server would stop replicating at it and promote; remove it (%s)",
                conf,
                setting,
                f"ALTER SYSTEM RESET {name}"
                if conf == "postgresql.auto.conf"
                else f"the line in {conf}; ALTER SYSTEM does not edit that file",
            )


def _start(
    conn: Connection, info: ServerInfo, settings: Settings, storage: Storage
) -> tuple[BackupSession, BackupStart]:
    """Start the backup and claim its name; the name is this run's alone when this returns."""
    label = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    session = BackupSession(conn, info, settings.pg)
    start = session.start(label)
    if not _claimed_and_new(session, storage, backup_name(start.segment_name)):
        if info.in_recovery:
            session.abort()
            raise PostgresError(
                f"a backup named {backup_name(start.segment_name)} already exists: a "
                "standby's backup starts at its last restartpoint, which moves only when it "
                "replays a new checkpoint of the primary; retry after the primary's next "
                "checkpoint (CHECKPOINT on the primary makes one)"
            )
        # Same start segment as an existing backup: stop, switch to a new segment and start
        # again, rather than overwrite the existing backup's objects.
        session.abort()
        conn = _connect(settings)
        query_one(conn, "SELECT pg_switch_wal()::text")
        session = BackupSession(conn, info, settings.pg)
        start = session.start(label)
        if not _claimed_and_new(session, storage, backup_name(start.segment_name)):
            session.abort()
            raise PostgresError(f"a backup named {backup_name(start.segment_name)} already exists")
    return session, start


def _claimed_and_new(session: BackupSession, storage: Storage, name: str) -> bool:
    """Claim ``name``; True when no backup of that name exists, else the claim is let go.

    The sentinel is looked for only once the claim is held: a run that finished meanwhile
    wrote its sentinel before it deleted its claim, so it is seen here.
    """
    try:
        _claim(storage, name)
    except BaseException:
        session.abort()
        raise
    try:
        exists = storage.exists(sentinel_key(name))
    except BaseException:
        _release_claim(storage, name)
        session.abort()
        raise
    if exists:
        _release_claim(storage, name)
        return False
    return True


@dataclass(frozen=True)
class Claim:
    """Who is taking a backup: stored as ``<name>/walg_claim.json`` while it runs."""

    host: str
    pid: int
    start_time: str

    def dumps(self) -> bytes:
        doc = {"host": self.host, "pid": self.pid, "start_time": self.start_time}
        return json.dumps(doc).encode()

    @classmethod
    def loads(cls, data: bytes) -> Claim | None:
        try:
            doc = json.loads(data)
            return cls(str(doc["host"]), int(doc["pid"]), str(doc["start_time"]))
        except (ValueError, TypeError, KeyError):
            return None

    def describe(self) -> str:
        return f"process {self.pid} on host {self.host}, started {self.start_time}"


def _pid_alive(pid: int) -> bool:
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False  # gone, or a number no process can have (a damaged claim)
    except PermissionError:
        return True  # another user's process
    return True


def _claim(storage: Storage, name: str) -> None:
    """Write the claim of ``name`` with a write that never replaces; refuse a live one.

    Two backup-push runs that start in the same WAL segment would otherwise both write
    ``base_<segment>`` and overwrite (or, failing, delete) each other's objects. A claim left
    by a run that died on this host (its process is gone) is taken over (see
    :func:`_take_over`).
    """
    key = claim_key(name)
    mine = Claim(socket.gethostname(), os.getpid(), _now_utc_us().format())
    for attempt in range(2):
        try:
            with storage.open_write(key, overwrite=False) as sink:
                sink.write(mine.dumps())
            return
        except StorageError:
            if not storage.exists(key):
                if attempt == 0:
                    continue  # let go meanwhile (its run ended): claim it again
                raise
        try:
            held: bytes | None = storage.get_bytes(key, limit=1 << 16)
        except StorageError:
            held = None  # deleted meanwhile, or unreadable: treated as held
        holder = Claim.loads(held) if held is not None else None
        stale = holder is not None and holder.host == mine.host and not _pid_alive(holder.pid)
        if held is not None and holder is not None and stale and attempt == 0:
            _take_over(storage, name, held, holder, mine)
            continue
        who = holder.describe() if holder is not None else "an unknown process"
        raise BackupInProgress(
            f"backup {name} is being taken by another backup-push ({who}); wait for it to "
            f"end and run backup-push again. If that process is gone for good, delete "
            f"{key} in {storage.location} and retry"
        )


def _take_over(storage: Storage, name: str, held: bytes, holder: Claim, mine: Claim) -> None:
    """Remove the claim ``held`` of the dead run ``holder``, as the only run doing so.

    Two runs that both found it stale (cron and an operator, after a run was killed) each
    deleted "the" claim: the later delete removed the claim the other had written meanwhile,
    and both went on under one name, each deleting the other's objects as a dead run's
    leftovers. So the takeover is held by a no-overwrite write of its own, and within it the
    claim is deleted only if it is still the one judged stale; the run that finds the
    takeover held is refused, naming the run taking over. The claim's write that follows
    decides between this run and any run that found no claim at all.
    """
    lock = claim_takeover_key(name)
    for attempt in range(2):
        try:
            with storage.open_write(lock, overwrite=False) as sink:
                sink.write(mine.dumps())
            break
        except StorageError:
            if not storage.exists(lock):
                raise
        try:
            found: bytes | None = storage.get_bytes(lock, limit=1 << 16)
        except StorageError:
            found = None
        taker = Claim.loads(found) if found is not None else None
        # Its writer, on this host and no longer running, was killed before deleting it.
        dead = taker is not None and taker.host == mine.host and not _pid_alive(taker.pid)
        if found is not None and taker is not None and dead and attempt == 0:
            _remove_dead_takeover(storage, name, found, taker, mine)
            continue
        who = taker.describe() if taker is not None else "an unknown process"
        raise BackupInProgress(
            f"backup {name} is being taken by another backup-push ({who}), which is taking "
            f"over the claim left by {holder.describe()}; wait for it to end and run "
            f"backup-push again. If that process is gone for good, delete {lock} in "
            f"{storage.location} and retry"
        ) from None
    try:
        try:
            current: bytes | None = storage.get_bytes(claim_key(name), limit=1 << 16)
        except StorageError:
            current = None
        if current == held:
            log.warning(
                "taking over backup %s: its claim was left by %s, which is no longer running",
                name,
                holder.describe(),
            )
            storage.delete([claim_key(name)])
        # Otherwise it was taken over and finished, or let go, meanwhile: the write decides.
    finally:
        storage.delete([lock])


def _remove_dead_takeover(
    storage: Storage, name: str, found: bytes, taker: Claim, mine: Claim
) -> None:
    """Remove the takeover object ``found`` of ``taker``, a run on this host that no longer
    runs (killed between writing it and deleting it), as the only run doing so.

    Two runs that both found it stale and both deleted it would be the race the takeover
    object is there to stop: the later delete could remove the object the other had written
    since. So the removal is held by a no-overwrite write of its own, under a name made from
    ``found``'s content (a run's host, pid and start time, never written twice), and within
    it the object is deleted only if it is still ``found``. A run refused that write finds,
    on its next look, either no object or a live run's.
    """
    import hashlib

    lock = claim_takeover_key(name)
    guard = claim_takeover_removal_key(name, hashlib.sha256(found).hexdigest()[:16])
    try:
        with storage.open_write(guard, overwrite=False) as sink:
            sink.write(mine.dumps())
    except StorageError:
        if not storage.exists(guard):
            raise
        raise BackupInProgress(
            f"backup {name}: another backup-push is removing {lock}, left by "
            f"{taker.describe()}, which is no longer running; run backup-push again. If no "
            f"backup-push runs on host {mine.host}, delete {lock} and {guard} in "
            f"{storage.location} and retry"
        ) from None
    try:
        try:
            current: bytes | None = storage.get_bytes(lock, limit=1 << 16)
        except StorageError:
            current = None
        if current == found:
            log.warning(
                "backup %s: removing %s, left by %s, which was stopped while taking over a "
                "claim and is no longer running",
                name,
                lock,
                taker.describe(),
            )
            storage.delete([lock])
    finally:
        storage.delete([guard])


def _release_claim(storage: Storage, name: str) -> None:
    try:
        storage.delete([claim_key(name)])
    except StorageError as exc:
        log.warning("could not remove the claim %s: %s", claim_key(name), exc)


def _remove_leftovers(storage: Storage, name: str) -> None:
    """Delete what a dead run of the same name left in the folder (this run holds the claim).

    A standby names its backup by its restart point, so a run killed there is followed by
    one of the same name; its stray partitions would otherwise sit among the new ones.
    """
    claim = claim_key(name)
    keys = [o.key for o in storage.list(backup_folder(name)) if o.key != claim]
    if keys:
        storage.delete(keys)
        log.info("removed %d objects left in %s by an earlier run", len(keys), backup_folder(name))


def _upload_backup(
    settings: Settings,
    storage: Storage,
    codec: Codec,
    session: BackupSession,
    info: ServerInfo,
    start: BackupStart,
    name: str,
    pgdata: str,
    start_time: GoTime,
    databases: dict[int, DatabaseLocation],
    permanent: bool,
    user_data: Any,
) -> BackupPushResult:
    prefix = partitions_prefix(name)
    walk = datadir.walk(pgdata)
    if walk.pg_control is None:
        raise UsageError(f"{pgdata}/global/pg_control is missing")
    _warn_skipped(walk.skipped)
    collected = _Collected()
    parts = _Partitions(
        storage, codec, prefix, settings.tar_size_threshold, walk.entries, collected
    )
    workers = partition_workers(settings)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="part")
    futures: list[Future[None]] = []
    try:
        futures = [pool.submit(parts.run_worker) for _ in range(workers)]
        # In slices: a signal the kernel hands to a worker thread only sets a flag, which
        # the main thread acts on when it wakes (see walg.ops.pipeline.SIGNAL_POLL).
        while wait(futures, timeout=SIGNAL_POLL).not_done:
            pass
        errors = [f.exception() for f in futures]
    except BaseException:
        # SIGINT / SIGTERM (KeyboardInterrupt) while waiting: stop the workers, or every
        # remaining partition would be uploaded first, and leave one storage holds.
        parts.failed.set()
        leave_workers(pool, futures)
        raise
    pool.shutdown(wait=True)
    for error in errors:
        if error is not None and not isinstance(error, _Abandoned):
            raise error

    # pg_control goes last among the data, so a restored directory is only startable once
    # everything else is in place.
    control_bytes = Path(walk.pg_control.path).read_bytes()
    control_obj, control_sums, control_payload = _single_member_tar(
        storage,
        codec,
        prefix + with_ext("pg_control.tar", codec.extension),
        [(PG_CONTROL_MEMBER, control_bytes, walk.pg_control.mtime_ns // 1_000_000_000)],
    )

    stop_started = time.monotonic()
    # Where this server archives, pg_stat_archiver tells early that archiving fails; a
    # standby without archive_mode=always leaves its WAL to the primary, which it cannot see.
    archiving = info.archive_mode != "off" and (
        not info.in_recovery or info.archive_mode == "always"
    )
    baseline = session.archiver_status() if archiving else None
    stop = session.stop(settings.stop_backup_timeout)
    server_stopped = _server_stop_time(session)
    # Read at once: a move after pg_backup_stop is ordinary WAL after the backup's end, and
    # the wait for the archive below may last long (a standby's idle primary).
    now_located = session.database_locations(pgdata)
    end_timeline = stop.timeline
    if archiving or info.in_recovery:
        # At least a second to look, however long pg_backup_stop took.
        deadline = max(stop_started + settings.stop_backup_timeout, time.monotonic() + 1.0)
        needed = _segments_needed(storage, start, stop, info.segment_size, deadline)

        warned_abandoned = False

        def replan() -> list[Segment] | None:
            nonlocal warned_abandoned
            histories = list(_later_histories(storage, stop.timeline))
            abandoned = _abandoned_branch(histories, stop)
            if abandoned is not None and not warned_abandoned:
                # Said now, not only when the wait ends (30 min by default): the old primary
                # may still archive that WAL (a restore elsewhere promoted into this storage
                # while production goes on), so the wait goes on, but where that primary is
                # gone the operator can stop it.
                warned_abandoned = True
                log.warning(
                    "%s; waiting for the WAL of the backup's end until WALG_STOP_BACKUP_TIMEOUT "
                    "in case the server that wrote timeline %d still archives it",
                    abandoned,
                    stop.timeline,
                )
            return _segments_after_promotion(histories, start, stop, info.segment_size)

        try:
            needed = _wait_for_archived(
                storage,
                session,
                needed,
                info.segment_size,
                baseline,
                deadline,
                replan if info.in_recovery else None,
                info.system_identifier,
                _RefusalJudge(settings, storage, os.path.join(pgdata, "pg_wal")),
            )
        except PostgresError as exc:
            abandoned = (
                _abandoned_branch(list(_later_histories(storage, stop.timeline)), stop)
                if info.in_recovery
                else None
            )
            if abandoned is None:
                raise
            raise PostgresError(f"{abandoned} ({exc})") from None
        if needed:
            # Where the archive holds the end: after a promotion during the wait, a later
            # timeline than the end's own (whose copy of that segment is never archived).
            end_timeline = max(end_timeline, needed[-1].timeline)
    else:
        last = Segment.before(start.timeline, stop.lsn, info.segment_size)
        log.warning("archive_mode is off: %s will not be archived", last.name(info.segment_size))
    moved = moved_databases(databases, now_located)
    if moved:
        which = f"database {moved[0]}" if len(moved) == 1 else f"databases {', '.join(moved)}"
        raise PostgresError(
            f"{which} moved to another tablespace (ALTER DATABASE ... SET TABLESPACE) while "
            "the backup ran: recovery could not rebuild it from this backup, which is "
            "removed; run backup-push again"
        )
    label_name = with_ext("backup_label.tar", codec.extension)
    now = int(time.time())
    label_obj, label_sums, label_payload = _single_member_tar(
        storage,
        codec,
        prefix + label_name,
        [
            (BACKUP_LABEL_MEMBER, stop.label_file.encode("utf-8", "surrogateescape"), now),
            (TABLESPACE_MAP_MEMBER, stop.tablespace_map.encode("utf-8", "surrogateescape"), now),
        ],
    )
    collected.tar_sets[label_name] = (TABLESPACE_MAP_MEMBER, BACKUP_LABEL_MEMBER)
    collected.objects[with_ext("pg_control.tar", codec.extension)] = control_obj
    collected.objects[label_name] = label_obj

    uncompressed = collected.payload + control_payload + label_payload
    compressed = sum(o.stored.size for o in collected.objects.values())
    files_meta = FilesMetadata(
        files={member: collected.files[member] for member in sorted(collected.files)},
        tar_file_sets=dict(sorted(collected.tar_sets.items())),
        utility_files={**control_sums, **label_sums},
        objects=dict(sorted(collected.objects.items())),
    )
    files_sum = write_files_metadata(storage, name, files_meta)
    del files_meta
    finish_time = _now_utc_us()
    if server_stopped is not None and server_stopped.ns > finish_time.ns:
        # This host's clock is behind the server's: its time would date the backup's end
        # before commits it holds, and a --target-time between the two would choose it.
        finish_time = server_stopped
    hostname = socket.gethostname()
    data_dir = os.path.realpath(info.data_directory)
    metadata = BackupMetadata(
        start_time=start_time,
        finish_time=finish_time,
        hostname=hostname,
        data_dir=data_dir,
        pg_version=info.version_num,
        start_lsn=start.lsn,
        finish_lsn=stop.lsn,
        is_permanent=permanent,
        system_identifier=info.system_identifier,
        uncompressed_size=uncompressed,
        compressed_size=compressed,
        user_data=user_data,
    )
    sentinel = Sentinel(
        lsn=start.lsn,
        finish_lsn=stop.lsn,
        pg_version=info.version_num,
        start_time=start_time,
        finish_time=finish_time,
        hostname=hostname,
        data_dir=data_dir,
        system_identifier=info.system_identifier,
        uncompressed_size=uncompressed,
        compressed_size=compressed,
        data_catalog_size=walk.total_size,
        spec=walk.spec(data_dir),
        user_data=user_data,
        walg_version=__version__,
        files_metadata_checksum=files_sum,
        finish_timeline=end_timeline if end_timeline != start.timeline else None,
        is_permanent=permanent,
    )
    storage.put_bytes(metadata_key(name), metadata.dumps())
    storage.put_bytes(sentinel_key(name), sentinel.dumps())
    log.info("Wrote backup with name %s to storage default", name)
    return BackupPushResult(
        name=name,
        start_lsn=start.lsn,
        finish_lsn=stop.lsn,
        uncompressed_size=uncompressed,
        compressed_size=compressed,
        parts=len(collected.tar_sets),
        files=sum(1 for d in collected.files.values() if d.checksum is not None),
    )


# Enough to name a stray file or two; a directory full of sockets is summed up.
SKIPPED_NAMED = 10


def _warn_skipped(skipped: list[datadir.Skipped]) -> None:
    for item in skipped[:SKIPPED_NAMED]:
        log.warning(
            "not backed up: %s is a %s (only files and directories are archived; a restore "
            "will not have it)",
            item.member,
            item.what,
        )
    if len(skipped) > SKIPPED_NAMED:
        log.warning(
            "not backed up: %d more symbolic links, FIFOs, sockets or devices in the data "
            "directory",
            len(skipped) - SKIPPED_NAMED,
        )


def _segments_needed(
    storage: Storage, start: BackupStart, stop: BackupStop, segment_size: int, deadline: float
) -> list[Segment]:
    """The WAL segments recovery reads from the backup's start to its end, in order.

    A standby's backup may end on a later timeline than it started on (the standby followed
    its promoted upstream). Recovery then reads each segment from the timeline the end
    timeline's history assigns it, as PostgreSQL does: the segment holding the switch comes
    from the new timeline; the old timeline's copy is archived only as ``.partial``.
    """
    if stop.timeline == start.timeline:
        return _segments_read(None, start, stop, segment_size)
    history = _wait_for_history(storage, stop.timeline, deadline)
    if start.timeline not in history.timelines():
        raise PostgresError(
            f"the standby is on timeline {stop.timeline}, whose history does not lead back to "
            f"timeline {start.timeline}, on which the backup started: the backup is not usable"
        )
    left = history.end_lsn(start.timeline)
    if left is not None and start.lsn >= left:
        raise PostgresError(
            f"the backup started at {format_lsn(start.lsn)} on timeline {start.timeline}, "
            f"after timeline {stop.timeline}'s history leaves it at {format_lsn(left)}: the "
            "backup is not usable"
        )
    return _segments_read(history, start, stop, segment_size)


def _segments_read(
    history: History | None, start: BackupStart, stop: BackupStop, segment_size: int
) -> list[Segment]:
    """The segments from the backup's start to its end, each on the timeline recovery that
    follows ``history`` reads it from (without one, the start's timeline)."""
    first = start.lsn // segment_size
    last = Segment.before(stop.timeline, stop.lsn, segment_size).segno
    if history is None:
        return [Segment(start.timeline, segno) for segno in range(first, last + 1)]
    return [history.segment(segno, segment_size) for segno in range(first, last + 1)]


def _segments_after_promotion(
    histories: list[History], start: BackupStart, stop: BackupStop, segment_size: int
) -> list[Segment] | None:
    """The segments a standby's backup needs when a later timeline has branched off its end
    timeline at or after its end; None while there is none.

    The upstream may fail after ``pg_backup_stop``, while walg waits for the segment holding
    the backup's end: a crashed primary never finishes or archives that segment, and the
    promoted standby archives it only on its new timeline (the old one's copy as
    ``.partial``). Recovery onto the new timeline reads it from there and reaches the
    backup's end, which lies before the switch. The newest such timeline is taken, as
    recovery follows the newest by default. ``histories``: what :func:`_later_histories` yields.
    """
    for history in histories:
        left = history.end_lsn(stop.timeline)
        if left is None or left < stop.lsn or start.timeline not in history.timelines():
            continue
        return _segments_read(history, start, stop, segment_size)
    return None


def _later_histories(storage: Storage, timeline: int) -> Iterator[History]:
    """The histories of the timelines archived after ``timeline`` that branch off it, newest
    first; one that cannot be read is skipped with a warning."""
    for later in range(newest_timeline(storage, timeline), timeline, -1):
        try:
            history = read_history(storage, later)
        except IntegrityError as exc:
            log.warning("%s", exc)
            continue
        if history is not None and timeline in history.timelines():
            yield history


def _abandoned_branch(histories: list[History], stop: BackupStop) -> str | None:
    """Why a standby's backup cannot finish, where a later timeline branched off its end
    timeline before its end; None otherwise.

    The standby was ahead of the one promoted: it replayed WAL of the old primary past the
    switch point, which no archive will hold once that primary is gone (only the segments
    it archived itself), and a backup ending there restores only onto the old timeline.
    ``histories``: what :func:`_later_histories` yields.
    """
    for history in histories:
        left = history.end_lsn(stop.timeline)
        if left is not None and left < stop.lsn:
            timeline = history.timeline
            return (
                f"timeline {timeline} branched off timeline {stop.timeline} at "
                f"{format_lsn(left)}, before this backup's end at {format_lsn(stop.lsn)}: "
                "this standby replayed WAL the promoted server never had, which only "
                f"timeline {stop.timeline}'s own segments hold, and a restore onto timeline "
                f"{timeline} cannot use the backup; rebuild the standby from the new primary "
                "(or pg_rewind it) and take the backup there"
            )
    return None


def _wait_for_history(storage: Storage, timeline: int, deadline: float) -> History:
    """``<timeline>.history`` from storage, waited for: recovery needs it to follow the
    switch, and the promoted server archives it before any WAL of its own."""
    name = history_file_name(timeline)
    delay = 0.02
    next_status = time.monotonic()
    while True:
        history = read_history(storage, timeline)
        if history is not None:
            return history
        now = time.monotonic()
        if now >= deadline:
            raise PostgresError(
                f"{name}, which this backup needs to follow the standby's switch to timeline "
                f"{timeline}, did not reach {storage.location} within the stop timeout "
                "(WALG_STOP_BACKUP_TIMEOUT): check the new primary's archive_command"
            )
        if now >= next_status:
            next_status = now + 30.0
            log.info("waiting for %s to be archived by the new primary", name)
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def _wait_for_archived(
    storage: Storage,
    session: BackupSession,
    needed: list[Segment],
    segment_size: int,
    baseline: ArchiverStatus | None,
    deadline: float,
    replan: Callable[[], list[Segment] | None] | None = None,
    system_id: int | None = None,
    judge: _RefusalJudge | None = None,
) -> list[Segment]:
    """Wait until every segment the backup needs (``needed``, in order) is in storage;
    returns the segments waited for (``replan``'s, where it changed them).

    A backup whose WAL is not archived cannot be restored, so exiting 0 before would be a lie.
    The last segment alone proves nothing about the ones before it: walg's look-ahead
    uploaders (and the daemon) archive later segments while PostgreSQL's own call for an
    earlier one keeps failing (another cluster's segment stored under its name, say).
    Polls storage quickly at first; reports a failing ``archive_command`` as soon as
    ``pg_stat_archiver`` shows it, and gives up at ``deadline`` (``time.monotonic``).
    ``baseline`` is None where another server archives the segment (the primary of a
    standby): then only storage is watched. While a segment is missing, ``replan`` (a
    standby's) is asked every second for the segments to wait for instead, once the upstream
    was promoted meanwhile (see :func:`_segments_after_promotion`).
    Where the file PostgreSQL's archiver keeps failing on is stored as another database
    system's (``system_id`` is this cluster's), or ``judge`` finds that wal-push refuses it
    for what storage holds under its name, no wait can end well: that fails at once.
    """
    if not needed:
        return needed
    last = needed[-1]
    delay = 0.02
    warned = False
    # Without pg_stat_archiver to report, say at once what is waited for.
    next_status = time.monotonic() + (2.0 if baseline is not None else 0.0)
    next_replan = time.monotonic() + 1.0
    index = 0
    while True:
        # Each segment is looked for until found, then never again.
        while index < len(needed) and find_wal_object(storage, needed[index].name(segment_size)):
            index += 1
        if index < len(needed) and replan is not None and time.monotonic() >= next_replan:
            next_replan = time.monotonic() + 1.0
            planned = replan()
            if planned is not None and planned != needed:
                log.info(
                    "a new timeline branched off at or after the backup's end: waiting for "
                    "%s to %s, as recovery onto it reads them",
                    planned[0].name(segment_size),
                    planned[-1].name(segment_size),
                )
                needed, last, index = planned, planned[-1], 0
                continue
        if index == len(needed):
            # Where this server archives, PostgreSQL must also have archived them all: an
            # object under a segment's name may be another cluster's, which PostgreSQL's own
            # call keeps refusing to overwrite.
            if baseline is None or _archived_up_to(session.archiver_status(), last, segment_size):
                return needed
            segment = last.name(segment_size)
        else:
            segment = needed[index].name(segment_size)
        now = time.monotonic()
        if baseline is None:
            if now >= next_status:
                next_status = now + 30.0
                log.info(
                    "waiting for %s, which this backup needs, to be archived by the primary "
                    "(or this standby, with archive_mode=always); an idle primary switches "
                    "segments only when archive_timeout is set",
                    segment,
                )
            if now >= deadline:
                raise PostgresError(
                    f"WAL segment {segment}, which this backup taken on a standby needs, did "
                    f"not reach {storage.location} within the stop timeout "
                    "(WALG_STOP_BACKUP_TIMEOUT): check the primary's archive_command, and set "
                    "archive_timeout on an idle primary so that it switches segments"
                )
        elif now >= next_status:
            next_status = now + 5.0
            status = session.archiver_status()
            refused = _refused_as_another_system(storage, status, system_id)
            if refused is None and judge is not None:
                refused = judge.refusal(status)
            if refused is not None:
                raise PostgresError(refused)
            if status.failing_since(baseline) and not warned:
                warned = True
                log.warning(
                    "WAL archiving is failing (%s); the backup needs %s archived",
                    status.describe(),
                    segment,
                )
            else:
                log.info("waiting for %s to be archived (%s)", segment, status.describe())
        if baseline is not None and now >= deadline:
            status = session.archiver_status()
            failing = "archive_command is FAILING; " if status.failing_since(baseline) else ""
            raise PostgresError(
                f"WAL segment {segment}, which this backup needs, was not archived to "
                f"{storage.location} within the stop timeout (WALG_STOP_BACKUP_TIMEOUT): "
                f"{failing}pg_stat_archiver: {status.describe()}; check archive_command"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def _refused_as_another_system(
    storage: Storage, status: ArchiverStatus, system_id: int | None
) -> str | None:
    """Why archiving can never succeed, where PostgreSQL's archiver is failing on a segment
    that storage holds as another database system's; else None.

    A cluster made anew by initdb and pointed at the prefix of the one it replaced writes the
    same first segment names, which wal-push never overwrites, and PostgreSQL's archiver
    retries its oldest file for ever: the backup waited out WALG_STOP_BACKUP_TIMEOUT (30
    minutes by default) and then only said to check archive_command.
    """
    failed = status.failing_on()
    if system_id is None or not is_segment_name(failed):
        return None
    theirs = foreign_system_id(storage, failed, system_id)
    if theirs is None:
        return None
    return (
        f"PostgreSQL's archive_command keeps failing on {failed}: {storage.location} already "
        f"holds a {failed} of another database system (system identifier {theirs}; this "
        f"cluster's is {system_id}), which wal-push never overwrites, so this backup's WAL "
        "cannot be archived there. Archive this cluster into a storage prefix of its own "
        "(WALG_FILE_PREFIX, WALG_STORAGE_PREFIX), and keep the other system's WAL while its "
        "backups may be restored"
    )


class _RefusalJudge:
    """Why archiving can never succeed, where PostgreSQL's archiver keeps failing on a file
    that wal-push refuses for what storage holds under its name (another server of this
    system archived its own copy first: two servers promoted from one backup onto one prefix;
    a WAL reset by pg_resetwal to names the archive had passed).

    The backup waited out WALG_STOP_BACKUP_TIMEOUT (30 minutes by default) and then only said
    to check archive_command. The verdict is wal-push's own (:func:`stored_refusal`), on the
    file in ``wal_dir``: anything short of a refusal (storage unreachable, the object equal,
    a copy wal-push would replace) is no verdict, and the wait goes on. Each failing file is
    compared at most once a minute: a comparison downloads the stored copy.
    """

    def __init__(self, settings: Settings, storage: Storage, wal_dir: str) -> None:
        self._settings = settings
        self._storage = storage
        self._wal_dir = wal_dir
        self._next: dict[str, float] = {}

    def refusal(self, status: ArchiverStatus) -> str | None:
        failed = status.failing_on()
        if not is_wal_file_name(failed):
            return None
        now = time.monotonic()
        if now < self._next.get(failed, 0.0):
            return None
        self._next[failed] = now + 60.0
        source = os.path.join(self._wal_dir, failed)
        if not os.path.isfile(source):
            return None
        refused = stored_refusal(self._settings, self._storage, source)
        if refused is None:
            return None
        return (
            f"PostgreSQL's archive_command keeps failing on {failed}, which wal-push refuses "
            f"for good, so this backup's WAL cannot be archived to {self._storage.location}: "
            f"{refused}"
        )


def _archived_up_to(status: ArchiverStatus, last: Segment, segment_size: int) -> bool:
    """Has PostgreSQL's archiver reported ``last`` (and so, archiving in order, every segment
    before it) archived? Its last file may be a segment or a ``.backup`` file named after one."""
    archived = status.last_archived_wal[:24]
    if not is_segment_name(archived):
        return False
    try:
        return Segment.parse(archived, segment_size) >= last
    except FormatError:
        return False


def _cleanup(storage: Storage, name: str) -> None:
    """Best effort: remove the objects of a backup that failed before its sentinel."""
    try:
        claim = claim_key(name)
        keys = [o.key for o in storage.list(backup_folder(name)) if o.key != claim]
        storage.delete(keys)
        if keys:
            log.info("removed %d objects of the failed backup %s", len(keys), name)
        # Last: until the objects are gone, no other run may take the name.
        storage.delete([claim])
    except Exception as exc:
        log.warning("could not remove the objects of the failed backup %s: %s", name, exc)
