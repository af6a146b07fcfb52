"""wal-verify: can the archive replay from the oldest backup to where the cluster is now?

Two checks, computed as WAL-G computes them:

``integrity``
    Walks the segment numbers backwards from just before the cluster's current segment (the one
    holding ``current LSN - 1``, still being written) down to the start segment of the oldest
    usable backup (segment 1 when there is none), taking each segment from the timeline the
    current timeline's history says PostgreSQL would read it from. A stored segment is
    ``FOUND``. A missing one is ``MISSING_DELAYED`` while the walk is within
    ``max_delayed`` segments of the start and has found nothing yet (PostgreSQL may not have
    handed it to ``archive_command`` yet), ``MISSING_UPLOADING`` within the next
    ``upload_concurrency`` segments (an upload may be in flight), and ``MISSING_LOST`` beyond.
    On a primary whose ``archive_mode`` is not ``always``, a missing segment of an older
    timeline is ``MISSING_LOST`` wherever it lies (nothing will archive it after a failover).
    On a primary, so is a missing segment of its own timeline at or before the last one its
    archiver reports archived (``pg_stat_archiver``): the archiver goes in order, so the
    upload of that segment succeeded, and storage has lost it since.
    The result is ``FAILURE`` if anything is lost, ``WARNING`` if something is missing but not
    lost, else ``OK``; lost segments below the first found one only warn when storage holds no
    backup at all (there is no telling where the archive was meant to begin).
    Permanent backups are not used as the starting point unless there is no other (then the
    oldest of them is), nor backups that the history shows to lie outside their timeline,
    nor (unlike WAL-G) another database system's backups, whose ``SystemIdentifier`` is not
    the cluster's: a pg_upgrade continues the old system's WAL names, and a cluster initdb
    replaced left its backups and segments under the names the new one writes.

    Beyond WAL-G, four things make the result ``FAILURE`` (each named in ``problems``), as a
    restore could not reach the current position: backups exist but none lies on the current
    timeline's history; backups exist but all are another database system's; the walk
    examined segments and found none of them stored; or a ``<TLI>.history`` is missing for a
    timeline id after the starting point's timeline, up to the current one (PostgreSQL looks
    for the newest timeline by reading them in turn and stops at the first missing one,
    abandoned branches included). The walk is computed in stretches
    from the stored segments, so its length (up to 2^40 segments) costs neither time nor
    memory.

``timeline``
    ``OK`` when the cluster's timeline is the highest one named in ``wal_005/`` (segments and
    ``.history`` files), ``FAILURE`` when it differs (another cluster is archiving a newer
    timeline here, or this one was restored without a fresh archive), ``WARNING`` when storage
    names no timeline at all.

The operations take the cluster position as a value, so they run without PostgreSQL;
:func:`query_cluster_position` asks a server for it. Nothing is written anywhere.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from walg.core.log import get_logger
from walg.core.lsn import DEFAULT_SEGMENT_SIZE, Segment, is_segment_name, parse_lsn
from walg.core.metadata import BackupMetadata
from walg.core.timeline import History, history_file_name
from walg.errors import (
    BackupNotFound,
    ConfigError,
    FormatError,
    IntegrityError,
    PostgresError,
    UsageError,
)
from walg.ops import catalog
from walg.ops.pipeline import map_on_threads
from walg.ops.wal import foreign_system_id, read_history
from walg.ops.wal_show import (
    history_timeline,
    list_wal_object_names,
    segments_from_names,
    timelines_from_names,
)
from walg.settings import PgConnection
from walg.storage.base import Storage

log = get_logger(__name__)

INTEGRITY = "integrity"
TIMELINE = "timeline"
CHECKS = (INTEGRITY, TIMELINE)
MAX_TIMELINE = 0xFFFFFFFF
POSITION_TIMEOUT = 60.0  # seconds for the query of the cluster's position


class SegmentStatus(enum.Enum):
    FOUND = "FOUND"
    MISSING_DELAYED = "MISSING_DELAYED"
    MISSING_UPLOADING = "MISSING_UPLOADING"
    MISSING_LOST = "MISSING_LOST"


class CheckStatus(enum.Enum):
    OK = "OK"
    WARNING = "WARNING"
    FAILURE = "FAILURE"


@dataclass(frozen=True)
class ClusterPosition:
    """Where the cluster is: its timeline and current LSN (write LSN, or on a standby the
    furthest received or replayed)."""

    timeline: int
    lsn: int
    in_recovery: bool = False
    #: the server's archive_mode setting; None when unknown (a position given by hand)
    archive_mode: str | None = None
    #: pg_control_system()'s system identifier; None when unknown (a position given by hand)
    system_identifier: int | None = None
    #: the server's WAL segment size; None when unknown (a position given by hand)
    segment_size: int | None = None
    #: pg_stat_archiver's last_archived_wal; None when unknown or never archived
    last_archived_wal: str | None = None
    #: where the server's archiver failed after it last archived (pg_stat_archiver), what it
    #: says; None when it is not failing or that is unknown
    archive_failure: str | None = None

    @property
    def archives_older_timelines(self) -> bool:
        """Could this cluster still archive a segment of a timeline older than its own?

        A primary archives, of older timelines, only what its own ``.ready`` files name: with
        ``archive_mode = on`` (or off) a promoted standby marked what it received or restored
        done, and archives only the ``.partial`` of the switch segment; with ``always`` it
        may still be working through them. On a standby the primary's setting is unknown.
        """
        return self.in_recovery or self.archive_mode in (None, "always")

    def archived_through(self, segment_size: int = DEFAULT_SEGMENT_SIZE) -> Segment | None:
        """The newest segment of its own timeline a primary's archiver reports archived, or
        None (a standby, another kind of file last, a position given by hand).

        PostgreSQL archives completed segments oldest first and retries a failed one until it
        succeeds, so every segment of the timeline up to this one was handed to
        ``archive_command`` and stored: one missing from storage is no upload under way, as
        WAL-G's uploading window supposes. A ``.backup``, ``.partial`` or ``.history`` file
        archived last tells nothing here.
        """
        name = self.last_archived_wal
        if self.in_recovery or name is None or not is_segment_name(name):
            return None
        try:
            segment = Segment.parse(name, segment_size)
        except FormatError:
            return None
        return segment if segment.timeline == self.timeline else None

    def current_segment(self, segment_size: int = DEFAULT_SEGMENT_SIZE) -> Segment:
        """The segment holding ``lsn - 1``: the one being written (WAL-G's current segment)."""
        return Segment.before(self.timeline, max(self.lsn, 1), segment_size)


@dataclass(frozen=True)
class SegmentRun:
    """Consecutive segments of one timeline with the same status."""

    timeline: int
    start_segment: str
    end_segment: str
    segments_count: int
    status: SegmentStatus


@dataclass(frozen=True)
class IntegrityResult:
    """wal-verify integrity: the segment runs found and the overall status."""

    status: CheckStatus
    runs: tuple[SegmentRun, ...]
    current_segment: str
    #: the backup whose start segment bounded the walk; None when none was usable
    earliest_backup: str | None
    #: the lowest segment number examined (the backup's start segment, or 1)
    stop_segno: int
    #: ``<TLI>.history`` files a restore from ``earliest_backup`` needs that are not stored
    missing_histories: tuple[str, ...] = ()
    #: why the status is FAILURE beyond the runs' statuses, one sentence each
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class TimelineResult:
    """wal-verify timeline: the server's timeline against storage's highest."""

    status: CheckStatus
    current_timeline: int
    highest_storage_timeline: int


@dataclass(frozen=True)
class WalVerifyResult:
    """The checks wal-verify ran; a check not asked for is None."""

    integrity: IntegrityResult | None
    timeline: TimelineResult | None

    @property
    def failed(self) -> bool:
        return any(r is not None and r.status is CheckStatus.FAILURE for r in self.results())

    def results(self) -> list[IntegrityResult | TimelineResult | None]:
        return [self.integrity, self.timeline]


@dataclass(frozen=True)
class BackupStart:
    """What the integrity check needs to know about one backup."""

    name: str
    timeline: int
    segno: int
    is_permanent: bool
    # From metadata.json or the sentinel; None where neither records it.
    start_lsn: int | None = None
    # Likewise; None where neither records it (WAL-G before 0.2.x, WAL-E).
    system_identifier: int | None = None


# --- the cluster ---------------------------------------------------------------------------

_POSITION_SQL = (
    "SELECT pg_catalog.pg_is_in_recovery(),"
    " (CASE WHEN pg_catalog.pg_is_in_recovery() THEN GREATEST("
    "pg_catalog.pg_last_wal_receive_lsn(), pg_catalog.pg_last_wal_replay_lsn())"
    " ELSE pg_catalog.pg_current_wal_lsn() END)::text,"
    " (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()),"
    " (SELECT bytes_per_wal_segment FROM pg_catalog.pg_control_init()),"
    " (CASE WHEN NOT pg_catalog.pg_is_in_recovery()"
    " THEN pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()) END),"
    " (SELECT received_tli FROM pg_catalog.pg_stat_wal_receiver),"
    " pg_catalog.current_setting('archive_mode'),"
    " (SELECT system_identifier FROM pg_catalog.pg_control_system()),"
    " (SELECT last_archived_wal FROM pg_catalog.pg_stat_archiver),"
    " (SELECT ARRAY[failed_count::text, last_failed_wal, last_failed_time::text,"
    " last_archived_time::text] FROM pg_catalog.pg_stat_archiver"
    " WHERE last_failed_time > COALESCE(last_archived_time, '-infinity'))"
)


def query_cluster_position(pg: PgConnection, segment_size: int | None) -> ClusterPosition:
    """The cluster's timeline and current LSN: ``pg_current_wal_lsn()`` on a primary and the
    timeline it writes (from ``pg_walfile_name``).

    WAL-G takes the timeline of the last checkpoint, which a promoted standby keeps until the
    spread checkpoint after its promotion ends, minutes later: in that time both checks
    failed, walking the old timeline's segments and calling storage's newest timeline ahead
    of the cluster. A standby likewise keeps its last restartpoint's timeline after following
    its upstream onto a new one, so the timeline it receives on is taken when it is newer
    (``pg_stat_wal_receiver``; unseen without streaming or the pg_read_all_stats role).

    On a standby, WAL-G's ``pg_last_wal_receive_lsn()``: a delayed standby has received WAL
    far ahead of what it replayed, and the archive must hold that WAL too. Unlike WAL-G, the
    replay position when it is further (WAL restored from the archive after streaming
    stopped) or the only one (no streaming: WAL-G fails on the NULL).

    Fails when the server's WAL segment size is not ``segment_size`` (``WALG_PG_WAL_SIZE``):
    segment names would mean other segments. ``segment_size`` None (the setting not given):
    any, and the position carries the server's.
    """
    from walg.postgres.connection import ANSWER_MARGIN, connect, query_one

    # statement_timeout bounds the query where the server works; the connection's own limit
    # where its backend is stalled (stopped, stuck in I/O) and would never answer.
    conn = connect(pg, POSITION_TIMEOUT + ANSWER_MARGIN, "wal-verify's limit for its query")
    try:
        query_one(
            conn,
            "SELECT pg_catalog.set_config('statement_timeout', %s, false)",
            (f"{POSITION_TIMEOUT:.0f}s",),
        )
        row = query_one(conn, _POSITION_SQL)
        (in_recovery, lsn_text, timeline, server_segment_size, writing, receiving, mode,
         system, archived, failing) = row  # fmt: skip
    finally:
        conn.close()
    if lsn_text is None:
        raise PostgresError("the server reports no current WAL position (standby not replaying?)")
    if segment_size is not None and int(server_segment_size) != segment_size:
        raise ConfigError(
            f"the server's WAL segments are {int(server_segment_size)} bytes but "
            f"WALG_PG_WAL_SIZE says {segment_size // (1024 * 1024)} MiB"
        )
    if writing is not None:
        timeline = int(str(writing)[:8], 16)
    elif receiving is not None:
        # Timelines only grow along a standby's history: the newer one is where it is now.
        timeline = max(int(timeline), int(receiving))
    return ClusterPosition(
        int(timeline),
        parse_lsn(str(lsn_text)),
        bool(in_recovery),
        str(mode),
        int(system) if system is not None else None,
        int(server_segment_size),
        str(archived) if archived is not None else None,
        _archive_failure(failing, archived),
    )


def _archive_failure(failing: list[str | None] | None, archived: str | None) -> str | None:
    """What pg_stat_archiver's row, where the archiver failed after it last archived, tells
    the operator: which file it is stuck on and since when. WAL-G's wal-verify says nothing
    of it, and the segments after the last archived one only show as missing while pg_wal
    fills and the server heads for a full disk."""
    if not failing:
        return None
    count, wal, when, archived_at = failing
    since = f"last archived {archived} at {archived_at}" if archived else "never archived"
    return (
        f"WAL archiving is failing: PostgreSQL's archive_command failed on {wal} at {when} "
        f"({count} failures since the statistics were reset) and archived nothing after it "
        f"({since}); the server retries that file until it succeeds and keeps every later "
        "segment in pg_wal meanwhile: the command's error is in the server's log"
    )


def position_from_args(timeline: int, lsn_text: str) -> ClusterPosition:
    """A position given on the command line (``--timeline`` and ``--lsn``)."""
    # A timeline id is 32 bits (WAL-G's --timeline is a uint32); a wider one would make
    # segment names of more than 24 hex digits.
    if not 1 <= timeline <= MAX_TIMELINE:
        raise UsageError(
            f"--timeline must be a timeline id from 1 to {MAX_TIMELINE}, not {timeline}"
        )
    try:
        lsn = parse_lsn(lsn_text)
    except FormatError:
        raise UsageError(f"--lsn {lsn_text!r} is not an LSN like 0/16B3748") from None
    return ClusterPosition(timeline, lsn)


# --- the integrity check ---------------------------------------------------------------------


def _other_system(backup: BackupStart, system: int | None) -> bool:
    """Is ``backup`` known to be another database system's than ``system``?"""
    return (
        system is not None
        and backup.system_identifier is not None
        and backup.system_identifier != system
    )


def backup_is_usable(
    backup: BackupStart,
    current_timeline: int,
    history: History | None,
    segment_size: int,
    allow_permanent: bool = False,
) -> bool:
    """WAL-G's ``checkBackupIsCorrect``: may this backup bound the integrity walk?

    As in WAL-G, a backup must start within the part of its timeline the current history
    keeps, compared by segment, except in the segment holding the switch, where its start LSN
    decides. Unlike WAL-G, that part ends where PostgreSQL leaves the
    timeline when it follows the history (:meth:`History.end_lsn`: a later switch point can
    be earlier than the timeline's own), and it begins where the history says the timeline
    begins, not where timeline ``id - 1`` ended.
    """
    if backup.is_permanent and not allow_permanent:
        log.warning(
            "%s: backup is permanent, it is not used as the earliest backup for wal-verify",
            backup.name,
        )
        return False
    if backup.timeline > current_timeline:
        # A history holds only older timelines: this one cannot lead here.
        log.warning(
            "%s: backup timeline %d is newer than the current timeline %d",
            backup.name,
            backup.timeline,
            current_timeline,
        )
        return False
    if history is None:
        return True
    if backup.timeline not in history.timelines():
        log.warning(
            "%s: backup timeline %d is neither current nor in the current history",
            backup.name,
            backup.timeline,
        )
        return False
    if backup.segno < history.begin_lsn(backup.timeline) // segment_size:
        log.warning("%s: backup starts before its timeline %d begins", backup.name, backup.timeline)
        return False
    ends = history.end_lsn(backup.timeline)
    # In the segment holding the switch, WAL-G refuses every backup. One that started before
    # the switch is restorable (recovery reads that segment from the new timeline, which holds
    # the old one's WAL up to the switch): a standby's backup taken after a failover, before
    # its next restartpoint, starts there.
    if ends is not None and backup.segno >= ends // segment_size:
        start = backup.start_lsn
        # Only an LSN inside the named segment: metadata.json without one reads as 0.
        if start is not None and start // segment_size == backup.segno and start < ends:
            return True
        log.warning("%s: backup starts after its timeline %d ended", backup.name, backup.timeline)
        return False
    return True


def load_backup_starts(
    storage: Storage, segment_size: int, concurrency: int = 10
) -> list[BackupStart]:
    """Every listed backup whose name carries its start segment, with its permanence.

    Permanence comes from ``metadata.json``, falling back to the sentinel; a backup with
    neither readable is left out (and logged).
    """
    refs = []
    for ref in catalog.list_backups(storage):
        try:
            refs.append((ref, Segment.parse(ref.wal_file_name, segment_size)))
        except FormatError:
            log.warning("%s: no WAL segment in the backup name; ignored", ref.name)

    def load(item: tuple[catalog.BackupRef, Segment]) -> BackupStart | None:
        ref, segment = item
        meta: BackupMetadata | None
        try:
            meta = catalog.read_metadata(storage, ref.name)
        except IntegrityError as exc:
            log.warning("%s", exc)
            meta = None
        start_lsn: int | None
        if meta is not None:
            permanent, start_lsn, system = meta.is_permanent, meta.start_lsn, meta.system_identifier
        else:
            try:
                sentinel = catalog.read_sentinel(storage, ref.name)
            except (IntegrityError, BackupNotFound) as exc:
                log.warning("%s; ignored", exc)
                return None
            permanent, start_lsn = sentinel.is_permanent, sentinel.lsn
            system = sentinel.system_identifier
        return BackupStart(
            ref.name, segment.timeline, segment.segno, permanent, start_lsn, system or None
        )

    if not refs:
        return []
    return [b for b in map_on_threads(load, refs, concurrency) if b is not None]


#: a stretch of the walk, newest first: (timeline, highest segno, lowest segno, stored?)
_Block = tuple[int, int, int, bool]


def _walk_blocks(
    pieces: Iterable[tuple[int, int, int]], present: dict[int, list[int]]
) -> Iterator[_Block]:
    """The walk over ``pieces`` ((timeline, highest, lowest) segment numbers, newest first) as
    stretches of stored and of missing segments, newest first.

    Built from the stored segments, never segment by segment: the walk spans up to 2^40
    segments (no usable backup, an LSN far from 0), and its length must cost nothing.
    """
    for timeline, high, low in pieces:
        stored = present.get(timeline, [])
        index = bisect.bisect_right(stored, high) - 1
        cursor = high
        while cursor >= low:
            if index >= 0 and stored[index] >= low:
                segno = stored[index]
                if segno < cursor:
                    yield timeline, cursor, segno + 1, False
                # Consecutive stored segments make one stretch.
                bottom = segno
                while index > 0 and stored[index - 1] == bottom - 1 and bottom - 1 >= low:
                    index -= 1
                    bottom -= 1
                index -= 1
                yield timeline, segno, bottom, True
                cursor = bottom - 1
            else:
                yield timeline, cursor, low, False
                break


def _classify(
    blocks: Iterable[_Block],
    max_delayed: int,
    upload_concurrency: int,
    lost_below: int | None = None,
    archived: Segment | None = None,
) -> Iterator[tuple[int, int, int, SegmentStatus]]:
    """WAL-G's three scans over the walk (newest first): delayed, uploading, lost.

    The delayed window ends after ``max_delayed`` segments or at the first stored one, the
    uploading window ``upload_concurrency`` segments later (stored ones count); a stretch is
    split where a window ends. A missing segment of a timeline below ``lost_below`` is lost
    wherever it lies: nothing will archive it (see ClusterPosition.archives_older_timelines).
    So is a missing segment of ``archived``'s timeline up to ``archived`` (see
    ClusterPosition.archived_through).
    """
    phase = 0  # 0: delayed, 1: uploading, 2: lost
    taken = 0
    if max_delayed <= 0:
        phase = 1 if upload_concurrency > 0 else 2
    missing = (
        SegmentStatus.MISSING_DELAYED,
        SegmentStatus.MISSING_UPLOADING,
        SegmentStatus.MISSING_LOST,
    )
    for timeline, top, low, stored in _split_at(blocks, archived):
        if not stored and (
            (lost_below is not None and timeline < lost_below)
            or (archived is not None and timeline == archived.timeline and top <= archived.segno)
        ):
            yield timeline, top, low, SegmentStatus.MISSING_LOST
            continue
        high = top
        while high >= low:
            status = SegmentStatus.FOUND if stored else missing[phase]
            if phase == 2:
                yield timeline, high, low, status
                break
            if phase == 0 and stored:
                take = 1
            else:
                window = max_delayed if phase == 0 else upload_concurrency
                take = min(high - low + 1, window - taken)
            yield timeline, high, high - take + 1, status
            high -= take
            taken += take
            if phase == 0 and (stored or taken >= max_delayed):
                phase, taken = (1 if upload_concurrency > 0 else 2), 0
            elif phase == 1 and taken >= upload_concurrency:
                phase, taken = 2, 0


def _split_at(blocks: Iterable[_Block], segment: Segment | None) -> Iterator[_Block]:
    """``blocks`` with the missing stretch that spans ``segment`` cut just above it."""
    for timeline, top, low, stored in blocks:
        if (
            segment is not None
            and not stored
            and timeline == segment.timeline
            and low <= segment.segno < top
        ):
            yield timeline, top, segment.segno + 1, stored
            yield timeline, segment.segno, low, stored
            continue
        yield timeline, top, low, stored


def _collapse(
    classified: Iterable[tuple[int, int, int, SegmentStatus]], segment_size: int
) -> list[SegmentRun]:
    """Runs of one timeline and status, oldest first (input comes newest first)."""
    runs: list[SegmentRun] = []
    current: tuple[int, SegmentStatus] | None = None
    low = high = count = 0

    def close() -> None:
        assert current is not None
        runs.append(
            SegmentRun(
                current[0],
                Segment(current[0], low).name(segment_size),
                Segment(current[0], high).name(segment_size),
                count,
                current[1],
            )
        )

    for timeline, top, bottom, status in classified:
        if current == (timeline, status):
            low = bottom
            count += top - bottom + 1
            continue
        if current is not None:
            close()
        current, low, high, count = (timeline, status), bottom, top, top - bottom + 1
    if current is not None:
        close()
    runs.reverse()
    return runs


def _walk_pieces(
    history: History | None, timeline: int, high: int, low: int, segment_size: int
) -> list[tuple[int, int, int]]:
    """Segments ``high`` down to ``low`` as (timeline, highest, lowest) pieces, newest first,
    each read from the timeline the history gives for it (``timeline`` without one)."""
    if high < low:
        return []
    if history is None:
        return [(timeline, high, low)]
    # The timeline chosen for a segment changes only where some timeline begins.
    starts = sorted(
        {low}
        | {
            begin
            for tli in history.timelines()
            if low < (begin := history.begin_lsn(tli) // segment_size) <= high
        }
    )
    pieces = []
    for index, begin in enumerate(starts):
        end = starts[index + 1] - 1 if index + 1 < len(starts) else high
        pieces.append((history.timeline_of(begin, segment_size), end, begin))
    pieces.reverse()
    return pieces


def _integrity_status(runs: Sequence[SegmentRun], no_backup: bool) -> CheckStatus:
    status = CheckStatus.OK
    found_before = False
    for run in runs:
        if run.status is SegmentStatus.FOUND:
            found_before = True
        elif run.status is SegmentStatus.MISSING_LOST:
            if no_backup and not found_before:
                status = CheckStatus.WARNING
            else:
                return CheckStatus.FAILURE
        else:
            status = CheckStatus.WARNING
    return status


def verify_integrity(
    storage: Storage,
    position: ClusterPosition,
    *,
    max_delayed: int = 0,
    upload_concurrency: int = 16,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    backup_name: str | None = None,
    wal_names: Sequence[str] | None = None,
    concurrency: int = 10,
) -> IntegrityResult:
    """The ``integrity`` check. ``wal_names`` reuses a listing of ``wal_005/``."""
    if max_delayed < 0 or upload_concurrency < 0:
        raise ConfigError("delayed and uploading WAL counts must not be negative")
    names = list_wal_object_names(storage) if wal_names is None else wal_names
    present: dict[int, list[int]] = {}
    for segment in segments_from_names(names, segment_size):
        present.setdefault(segment.timeline, []).append(segment.segno)
    for segnos in present.values():
        segnos.sort()
    try:
        history = read_history(storage, position.timeline)
    except IntegrityError as exc:
        # Without the history there is no telling which timeline PostgreSQL reads each older
        # segment from, so no status could be trusted: refuse rather than guess.
        raise IntegrityError(
            f"cannot check integrity: the history of timeline {position.timeline} "
            f"cannot be used, so it is unknown which timeline each segment must come from "
            f"({exc})"
        ) from None
    if history is None and position.timeline > 1:
        log.warning(
            "%08X.history is not in storage: every segment is looked for on timeline %d",
            position.timeline,
            position.timeline,
        )

    all_backups = load_backup_starts(storage, segment_size, concurrency)
    # Another database system's backups (the cluster before a pg_upgrade, whose WAL names
    # this one's continue; one that initdb replaced) never restore to this cluster's position,
    # however well their segment names line up with its own.
    system = position.system_identifier
    backups = [b for b in all_backups if not _other_system(b, system)]
    others = [b for b in all_backups if _other_system(b, system)]
    for backup in others:
        log.warning(
            "%s: backup of another database system (system identifier %d; this cluster's is "
            "%d), not used for wal-verify",
            backup.name,
            backup.system_identifier,
            system,
        )
    problems: list[str] = []
    earliest: BackupStart | None = None
    if backup_name is not None:
        chosen = [b for b in backups if b.name == backup_name]
        if not chosen and any(b.name == backup_name for b in others):
            raise UsageError(
                f"backup {backup_name} is another database system's: it cannot restore to "
                "this cluster's position"
            )
        if not chosen:
            raise BackupNotFound(f"backup {backup_name} does not exist in storage")
        if not backup_is_usable(chosen[0], position.timeline, history, segment_size, True):
            raise UsageError(f"backup {backup_name} does not lie on the current timeline's history")
        earliest = chosen[0]
    else:
        for backup in backups:
            if not backup_is_usable(backup, position.timeline, history, segment_size):
                continue
            if earliest is None or backup.segno < earliest.segno:
                earliest = backup
        if earliest is None:
            # Only permanent backups: WAL-G then walks down to segment 1 and only warns of
            # what it finds lost. A restore from the oldest of them works, so it starts the
            # walk here, and WAL lost after it fails the check.
            permanent = [
                b
                for b in backups
                if b.is_permanent
                and backup_is_usable(
                    b, position.timeline, history, segment_size, allow_permanent=True
                )
            ]
            earliest = min(permanent, key=lambda b: b.segno, default=None)
            if earliest is not None:
                log.info("only permanent backups: the walk starts at %s", earliest.name)
        if earliest is None and backups:
            # WAL-G only warns; but then no backup in storage is known to restore to the
            # current timeline, and a monitor must hear of it.
            problems.append(
                f"none of the {len(backups)} backups in storage can start a restore that "
                "reaches the current position (each is off the current timeline's history)"
            )
        elif earliest is None and others:
            # WAL-G walks from the other system's oldest backup through that system's WAL,
            # and says OK while none of this cluster's own WAL may be archived at all.
            problems.append(
                f"none of the {len(others)} backups in storage is this database system's "
                f"(system identifier {system}): they are another database system's, archived "
                "into this storage before (the cluster before a pg_upgrade, or one initdb "
                "replaced), and cannot restore this one; take a backup-push of this cluster, "
                "and make sure its own WAL is being archived"
            )
        elif earliest is None:
            log.warning(
                "no backup in storage: checking every segment down to segment 1 "
                "(lost segments below the oldest archived one only warn)"
            )
    stop = earliest.segno if earliest is not None else 1

    current = position.current_segment(segment_size)

    def timeline_of(segno: int) -> int:
        return history.timeline_of(segno, segment_size) if history else position.timeline

    pieces = _walk_pieces(history, position.timeline, current.segno - 1, stop, segment_size)
    blocks = _walk_blocks(pieces, present)
    # WAL-G's windows stand for uploads that may be under way; after a failover, the old
    # timeline's segments the dead primary had not archived are under way nowhere.
    lost_below = None if position.archives_older_timelines else position.timeline
    archived = position.archived_through(segment_size)
    classified = _classify(blocks, max_delayed, upload_concurrency, lost_below, archived)
    runs = _collapse(classified, segment_size)
    if runs and not any(run.status is SegmentStatus.FOUND for run in runs):
        problems.append(
            f"no segment from {Segment(timeline_of(stop), stop).name(segment_size)} to "
            f"{current.name(segment_size)} is archived"
        )

    # Another primary given this prefix by mistake and further on stores segments under names
    # this cluster reaches later: its archiver is refused on the first of them for ever, and a
    # restore stops before it (wal-fetch refuses another system's segment), while the walk
    # counted it FOUND. One read: the newest segment found below the current position is the
    # other system's whichever of the two is ahead.
    found = [run for run in runs if run.status is SegmentStatus.FOUND]
    if system is not None and found:
        newest = max(found, key=lambda run: run.end_segment[8:]).end_segment
        theirs = foreign_system_id(storage, newest, system)
        if theirs is not None:
            problems.append(
                f"{newest} in storage is another database system's WAL (system identifier "
                f"{theirs}; this cluster's is {system}): another cluster archives into this "
                "storage, this cluster's WAL is refused there, and a restore of it stops before "
                "that segment; give each cluster a storage prefix of its own"
            )

    # Recovery (recovery_target_timeline=latest) finds the newest timeline by reading
    # <TLI+1>.history, <TLI+2>.history, ... from the backup's timeline on and stops at the
    # first one missing: every timeline id up to the current one needs its history, even one
    # of an abandoned branch, or the restore silently ends on an older timeline.
    first = earliest.timeline if earliest is not None else timeline_of(stop)
    stored_histories = {t for t in map(history_timeline, names) if t is not None}
    missing_histories = tuple(
        history_file_name(tli)
        for tli in range(first + 1, position.timeline + 1)
        if tli not in stored_histories
    )
    if missing_histories:
        problems.append(
            f"{', '.join(missing_histories)} not in storage: a restore from timeline {first} "
            f"would stop before timeline {position.timeline}"
        )

    status = _integrity_status(runs, earliest is None)
    return IntegrityResult(
        status=CheckStatus.FAILURE if problems else status,
        runs=tuple(runs),
        current_segment=current.name(segment_size),
        earliest_backup=earliest.name if earliest else None,
        stop_segno=stop,
        missing_histories=missing_histories,
        problems=tuple(problems),
    )


# --- the timeline check ------------------------------------------------------------------------


def verify_timeline(
    storage: Storage,
    position: ClusterPosition,
    *,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    wal_names: Sequence[str] | None = None,
) -> TimelineResult:
    names = list_wal_object_names(storage) if wal_names is None else wal_names
    highest = timelines_from_names(names, segment_size)
    if highest == 0:
        status = CheckStatus.WARNING
    elif highest == position.timeline:
        status = CheckStatus.OK
    else:
        status = CheckStatus.FAILURE
    return TimelineResult(status, position.timeline, highest)


def wal_verify(
    storage: Storage,
    checks: Sequence[str],
    position: ClusterPosition,
    *,
    max_delayed: int = 0,
    upload_concurrency: int = 16,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    backup_name: str | None = None,
    concurrency: int = 10,
    wal_names: Sequence[str] | None = None,
) -> WalVerifyResult:
    """Run the named checks (both when ``checks`` is empty) on one listing of ``wal_005/``:
    ``wal_names`` where the caller has made it (:func:`list_wal_object_names`), else made
    here."""
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise UsageError(f"unknown check {unknown[0]!r} (available: {', '.join(CHECKS)})")
    wanted = set(checks) or set(CHECKS)
    names = list_wal_object_names(storage) if wal_names is None else wal_names
    integrity = timeline = None
    if INTEGRITY in wanted:
        integrity = verify_integrity(
            storage,
            position,
            max_delayed=max_delayed,
            upload_concurrency=upload_concurrency,
            segment_size=segment_size,
            backup_name=backup_name,
            wal_names=names,
            concurrency=concurrency,
        )
    if TIMELINE in wanted:
        timeline = verify_timeline(storage, position, segment_size=segment_size, wal_names=names)
    return WalVerifyResult(integrity, timeline)
