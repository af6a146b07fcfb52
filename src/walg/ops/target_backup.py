"""Which backup a point-in-time restore can start from.

A restore reaches a target only if its backup is consistent before it: the backup must have
finished (``pg_backup_stop``) at or before a ``--target-time``, and its end LSN must be at or
before a ``--target-lsn``. PostgreSQL refuses a too-late LSN target when the restored server
starts, after the whole download; a too-late time target it does not notice at all, and the
restore silently holds what was committed after the target. So ``LATEST`` with one of these
targets means the newest backup that can reach it (as pgBackRest chooses), and a named backup
that cannot is refused before anything is downloaded.

A time without an offset or zone name is read by the restored server in its ``timezone``
setting, which walg cannot see before the restore: such a time is taken as the whole window
it may stand for (PostgreSQL's offsets reach 15:59:59 either way), and a backup is chosen only
when it finished before all of it. Name and xid targets cannot be placed before a restore;
they are left to PostgreSQL, which fails recovery when it ends before reaching them.

A backup can reach a target only on a timeline recovery will follow: that of
``--target-timeline`` (by default ``latest``, the newest timeline the archive's history files
lead to from the backup's, as PostgreSQL 12+ finds it; ``current`` before 12). The backup's
timeline must be that one or one of its ancestors, and the backup must have ended before the
history leaves its timeline; a backup taken on timeline 1 after timeline 2 branched off cannot
reach anything on timeline 2 (PostgreSQL: "could not locate required checkpoint record").
Among the backups that can, LATEST takes the one that ended last. A backup's end is its
sentinel's ``FinishTime`` and ``FinishLSN``, else ``metadata.json``'s (older WAL-G sentinels
carry neither time).
"""

from __future__ import annotations

import enum
import re
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from walg.core.gotime import GoTime
from walg.core.log import get_logger
from walg.core.lsn import format_lsn, parse_lsn
from walg.core.naming import first_wal_token
from walg.core.timeline import History, history_file_name
from walg.errors import BackupNotFound, IntegrityError, UsageError, WalgError
from walg.ops import catalog
from walg.ops.recovery import TIME_RE, TIME_SPACE, RecoveryTarget
from walg.ops.wal import find_wal_object, newest_timeline, read_history
from walg.storage.base import ObjectInfo, Storage

log = get_logger(__name__)

_NS = 1_000_000_000
# PostgreSQL's widest offset, 15:59:59: a time without one may stand for any instant this
# far either side of its reading in UTC.
_WIDEST_OFFSET_NS = (15 * 3600 + 59 * 60 + 59) * _NS


class Fit(enum.Enum):
    BEFORE = "before"  # consistent at or before the target: can reach it
    AFTER = "after"  # consistent only after the target: cannot
    UNKNOWN = "unknown"  # the backup does not say (no finish time or LSN recorded)
    UNSURE = "unsure"  # a time without a zone, and the backup finished inside its window


@dataclass(frozen=True)
class TargetBound:
    """A time or LSN target as bounds a backup's end can be compared with."""

    what: str
    earliest_ns: int | None = None
    latest_ns: int | None = None
    lsn: int | None = None

    @classmethod
    def of(cls, target: RecoveryTarget) -> TargetBound | None:
        if target.lsn:
            return cls(f"--target-lsn {target.lsn}", lsn=parse_lsn(target.lsn))
        if target.time:
            low, high = time_bounds(target.time)
            return cls(f"--target-time {target.time!r}", earliest_ns=low, latest_ns=high)
        return None

    def fit(self, end: BackupEnd) -> Fit:
        if self.lsn is not None:
            if end.finish_lsn is None:
                return Fit.UNKNOWN
            return Fit.BEFORE if end.finish_lsn <= self.lsn else Fit.AFTER
        assert self.earliest_ns is not None and self.latest_ns is not None
        if end.finish_time is None:
            return Fit.UNKNOWN
        finish = end.finish_time.ns
        if finish <= self.earliest_ns:
            return Fit.BEFORE
        return Fit.AFTER if finish > self.latest_ns else Fit.UNSURE

    def order(self, end: BackupEnd) -> int:
        """Sort key: later ends first among candidates."""
        if self.lsn is not None:
            return end.finish_lsn if end.finish_lsn is not None else -1
        return end.finish_time.ns if end.finish_time is not None else -(1 << 80)

    def describe_end(self, end: BackupEnd) -> str:
        if self.lsn is not None and end.finish_lsn is not None:
            return f"ends at LSN {format_lsn(end.finish_lsn)}"
        if end.finish_time is not None:
            return f"finished at {end.finish_time.utc().format()}"
        return "records no end"


@dataclass(frozen=True)
class BackupEnd:
    """Where and when a backup became consistent, as its documents record it."""

    name: str
    timeline: int | None
    finish_lsn: int | None
    finish_time: GoTime | None
    pg_version: int
    # The timeline finish_lsn is on, where walg recorded it differs from ``timeline`` (the
    # one the backup started on): a standby that followed its promoted upstream meanwhile.
    finish_timeline: int | None = None
    # The sentinel's SystemIdentifier; None where it records none (old WAL-G, WAL-E).
    system_identifier: int | None = None

    def other_system(self, other: BackupEnd) -> bool:
        """Is ``other`` known to be another database system's backup than this one?"""
        mine, theirs = self.system_identifier, other.system_identifier
        return mine is not None and theirs is not None and mine != theirs

    @classmethod
    def read(cls, storage: Storage, name: str) -> BackupEnd:
        sentinel = catalog.read_sentinel(storage, name)
        finish_lsn, finish_time = sentinel.finish_lsn, sentinel.finish_time
        if finish_time is None or finish_lsn is None:
            # WAL-G's older sentinels carry no times; its metadata.json does.
            meta = catalog.read_metadata(storage, name)
            if meta is not None:
                finish_time = finish_time or meta.finish_time
                finish_lsn = finish_lsn if finish_lsn is not None else meta.finish_lsn
        token = first_wal_token(name)
        return cls(
            name,
            int(token[:8], 16) if token else None,
            finish_lsn,
            finish_time,
            sentinel.pg_version,
            sentinel.finish_timeline,
            sentinel.system_identifier,
        )


class _Timelines:
    """Which backups lie on the timeline recovery will follow, from the archive's history."""

    def __init__(self, storage: Storage, asked: str | None) -> None:
        self._storage = storage
        self._asked = asked
        self._histories: dict[int, History | None] = {}
        self._unreadable: set[int] = set()
        self._newest: dict[int, int] = {}

    @property
    def asked(self) -> str | None:
        """``--target-timeline`` as given; None for the server's default."""
        return self._asked

    def target(self, end: BackupEnd) -> int:
        assert end.timeline is not None
        asked = self._asked
        if asked is None:
            asked = "latest" if end.pg_version >= 120000 else "current"
        if asked == "current":
            return end.timeline
        if asked != "latest":
            return int(asked)
        if end.timeline not in self._newest:
            newest = newest_timeline(self._storage, end.timeline)
            unreachable = _archived_without_history(self._storage, newest + 1)
            if unreachable is not None:
                raise UsageError(
                    f"storage holds WAL of timeline {newest + 1} ({unreachable}) but not "
                    f"{history_file_name(newest + 1)}: recovery following the newest timeline "
                    f"would stop on timeline {newest} without a word (PostgreSQL finds "
                    f"timelines by their history files) and promote onto timeline "
                    f"{newest + 1}, whose segment names are taken; put "
                    f"{history_file_name(newest + 1)} back into storage, or give "
                    f"--target-timeline {newest} to restore timeline {newest}"
                )
            self._newest[end.timeline] = newest
        return self._newest[end.timeline]

    def why_not(self, end: BackupEnd) -> str | None:
        """Why recovery from this backup cannot follow the target timeline; None if it can."""
        if end.timeline is None:
            return None  # no WAL name in the backup name: left to PostgreSQL
        # Where the backup ends; after its start timeline only for a standby's backup that
        # followed a switch, when recovery must follow it too.
        finish = end.finish_timeline or end.timeline
        target = self.target(end)
        if target == end.timeline == finish:
            return None
        if target < end.timeline:
            return f"it is on timeline {end.timeline}, after the target timeline {target}"
        if target < finish:
            return (
                f"it ends on timeline {finish}, to which it followed a switch, after the "
                f"target timeline {target}"
            )
        if target not in self._histories:
            try:
                self._histories[target] = read_history(self._storage, target)
            except WalgError as exc:
                log.warning("%s", exc)
                self._histories[target] = None
                self._unreadable.add(target)
        history = self._histories[target]
        if history is None and target in self._unreadable:
            return f"{history_file_name(target)} cannot be read from storage"
        if history is None:
            return (
                f"{history_file_name(target)} is not in storage: no timeline {target} was "
                f"archived there{self._hex_hint(target)}"
            )
        for timeline in sorted({end.timeline, finish}):
            if timeline not in history.timelines():
                return f"its timeline {timeline} is not in the history of timeline {target}"
        left = history.end_lsn(finish)
        if left is not None and end.finish_lsn is not None and end.finish_lsn > left:
            return (
                f"it ends at LSN {format_lsn(end.finish_lsn)}, after timeline {target} branched "
                f"off timeline {finish} at {format_lsn(left)}"
            )
        return None

    def _hex_hint(self, target: int) -> str:
        """Where ``--target-timeline``'s digits, read as the hex a file name shows them in,
        name an archived timeline (10 from 00000010.history, timeline 16): say so."""
        if self._asked is None or not self._asked.isdigit():
            return ""
        as_hex = int(self._asked, 16)
        if as_hex == target or find_wal_object(self._storage, history_file_name(as_hex)) is None:
            return ""
        return (
            f" ({history_file_name(as_hex)} is timeline {as_hex}: file names show timelines "
            f"in hex, PostgreSQL reads --target-timeline in decimal; for that one give "
            f"--target-timeline {as_hex})"
        )

    def outlived_fork(self, end: BackupEnd, written: GoTime) -> int | None:
        """For a backup :meth:`why_not` left out for ending on its timeline after a later one
        branched off: that later timeline, if the backup's sentinel was written after that
        timeline's history was archived; else None.

        Then both timelines went on after the fork: an old primary's in a split brain (the
        new timeline is the one to restore), or production's while a restore made elsewhere
        promoted and archived into the same storage (the old one is). Storage times of both
        objects, so that no two clocks are compared.
        """
        finish = end.finish_timeline or end.timeline
        if finish is None:
            return None
        history = self._histories.get(self.target(end))
        if history is None or finish not in history.timelines()[:-1]:
            return None
        chain = history.timelines()
        child = chain[chain.index(finish) + 1]
        found = find_wal_object(self._storage, history_file_name(child))
        if found is None:
            return None
        try:
            forked = self._storage.stat(found[0]).modified
        except WalgError:
            return None
        return child if written.ns > forked.ns else None


def _warn_outlived(timelines: _Timelines, end: BackupEnd, written: GoTime) -> None:
    child = timelines.outlived_fork(end, written)
    if child is None:
        return
    left = end.finish_timeline or end.timeline
    log.warning(
        "backup %s is on timeline %d after timeline %d branched off it, and was written after "
        "%s was archived: both timelines went on after the fork (a split brain, or a restore "
        "elsewhere that archived into this storage). This restore follows timeline %d; if "
        "timeline %d holds the data to restore, give --target-timeline %d",
        end.name,
        left,
        child,
        history_file_name(child),
        timelines.target(end),
        left,
        left,
    )


def time_bounds(text: str) -> tuple[int, int]:
    """The earliest and latest instant (ns since the epoch) a ``--target-time`` may mean;
    the same instant twice when it has an offset or zone name. ``text`` passed
    :func:`walg.ops.recovery.check_target_time`."""
    match = re.fullmatch(TIME_RE, text.strip(TIME_SPACE))
    if match is None:
        raise UsageError(f"--target-time {text!r} is not a timestamp walg can read")
    year, month, day = (int(part) for part in match["date"].split("-"))
    hour = int(match["h"] or 0)
    minute = int(match["m"] or 0)
    second = int(match["s"] or 0)
    frac = (match["frac"] or "")[:9].ljust(9, "0")
    # 24:00:00 and a leap second read as the moment after: carried by the timedelta.
    clock = timedelta(hours=hour, minutes=minute, seconds=second)
    if match["oh"] is not None:
        sign = -1 if text.strip(TIME_SPACE)[match.start("oh") - 1] == "-" else 1
        offset = timedelta(
            hours=int(match["oh"]), minutes=int(match["om"] or 0), seconds=int(match["os"] or 0)
        )
        zone = timezone(sign * offset)
        local = datetime(year, month, day, tzinfo=zone) + clock
    elif match["zone"] is not None and (
        zoned := _in_zone(datetime(year, month, day) + clock, match["zone"])
    ):
        local = zoned
    else:
        naive = datetime(year, month, day, tzinfo=UTC) + clock
        middle = _ns(naive, frac)
        return middle - _WIDEST_OFFSET_NS, middle + _WIDEST_OFFSET_NS
    instant = _ns(local, frac)
    return instant, instant


# Names that are both abbreviations of PostgreSQL's default set (timezonesets/Default) and zones
# of the time zone database. The server looks a name up as an abbreviation first, and these
# four stand there for a fixed offset, while the zones keep summer time: "2026-07-01 12:00 CET"
# is 11:00 UTC to PostgreSQL, not 10:00. (The others both sets share, EST, MST, HST, GMT, UTC,
# UCT and Zulu, are fixed zones with the abbreviation's offset.)
_ABBREVIATIONS_FIRST = {"cet": 3600, "eet": 7200, "met": 3600, "wet": 0}


def _in_zone(naive: datetime, name: str) -> datetime | None:
    """``naive`` in the zone ``name``, as PostgreSQL reads it; None where this machine has no
    such zone (the time is then taken as the window a time without a zone stands for)."""
    fixed = _ABBREVIATIONS_FIRST.get(name.lower())
    if fixed is not None:
        return naive.replace(tzinfo=timezone(timedelta(seconds=fixed)))
    # PostgreSQL matches zone names in any case; zoneinfo wants the database's spelling.
    canonical = {zone.lower(): zone for zone in zoneinfo.available_timezones()}
    try:
        local = naive.replace(tzinfo=zoneinfo.ZoneInfo(canonical.get(name.lower(), name)))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None
    # A time the clocks pass twice (autumn) is read by PostgreSQL with the offset after the
    # change, one they skip (spring) with the offset before it: the later reading, fold 1, in
    # the first case, fold 0 (Python's default) in the second.
    first, second = local.replace(fold=0).utcoffset(), local.replace(fold=1).utcoffset()
    if first is not None and second is not None and first > second:
        return local.replace(fold=1)
    return local


def _ns(moment: datetime, frac: str) -> int:
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * _NS + int(frac)


def _timeline_wal(storage: Storage, timeline: int, unused: str) -> list[tuple[str, ObjectInfo]]:
    """The WAL files stored for ``timeline`` (its segments, history, ``.partial`` and
    ``.backup`` files), each as the name wal-fetch gives it and its object.

    One prefix listing: the timeline's own objects, not the whole archive's. An entry that
    is no object (a FIFO on local-folder storage) is no WAL: passed over with a warning
    ending in ``unused``, as the listings do.
    """
    from walg.core.lsn import is_wal_file_name
    from walg.core.naming import WAL
    from walg.ops.wal_show import fetched_as

    prefix = f"{timeline:08X}"
    odd: list[str] = []
    infos = storage.list(WAL + prefix, recursive=False, unlisted=odd)
    for line in odd:
        log.warning("%s; %s", line, unused)
    found = ((fetched_as(info.key[len(WAL) :]), info) for info in infos)
    return [
        (name, info) for name, info in found if name.startswith(prefix) and is_wal_file_name(name)
    ]


def _archived_without_history(storage: Storage, timeline: int) -> str | None:
    """A stored segment of ``timeline`` (whose history file is not stored), or None."""
    stored = _timeline_wal(storage, timeline, f"not taken for WAL of timeline {timeline}")
    return stored[0][1].key if stored else None


def default_timeline_problem(storage: Storage, name: str) -> str | None:
    """Why recovery with PostgreSQL's default ``recovery_target_timeline`` (``latest`` from 12
    on) cannot start from backup ``name``, for a restore without recovery settings (which
    the operator writes); None if it can, or where the backup cannot be read.

    After a pg_upgrade (which starts the new cluster on timeline 1) of a cluster that was on
    timeline 2, the old system's histories make ``latest`` follow timeline 2, and PostgreSQL
    refuses the new system's backups: "requested timeline 2 is not a child of this server's
    history", after the whole download.
    """
    try:
        end = BackupEnd.read(storage, catalog.resolve(storage, name))
    except (IntegrityError, BackupNotFound):
        return None
    timelines = _Timelines(storage, None)
    try:
        reason = timelines.why_not(end)
    except UsageError as exc:
        return str(exc)  # the files alone are restored: the operator's settings decide
    if reason is None:
        return None
    return (
        f"recovery with the default recovery_target_timeline ('latest': timeline "
        f"{timelines.target(end)}) cannot start from backup {end.name}: {reason}; set "
        "recovery_target_timeline = 'current' with your recovery settings (or restore with "
        "--restore-command and --target-timeline current)"
    )


def backup_for_target(storage: Storage, name: str, target: RecoveryTarget | None) -> str:
    """The backup to restore for ``name`` (a backup name or LATEST) and ``target``."""
    if target is None:
        return name
    bound = TargetBound.of(target)
    if bound is not None:
        _warn_of_a_future_time(bound)
    timelines = _Timelines(storage, target.timeline)
    if bound is None:
        chosen = _backup_on_timeline(storage, name, timelines)
        if name == catalog.LATEST and (target.name or target.xid):
            _say_latest_for_unplaced_target(storage, chosen, target)
        return chosen
    if name != catalog.LATEST:
        end = BackupEnd.read(storage, catalog.resolve(storage, name))
        reason = timelines.why_not(end)
        if reason is not None:
            raise UsageError(
                f"backup {name} cannot reach {bound.what}: {reason}; name another backup, or "
                "LATEST to have walg choose one"
            )
        fit = bound.fit(end)
        if fit is Fit.AFTER:
            raise UsageError(
                f"backup {name} {bound.describe_end(end)}, after {bound.what}: a restore "
                "from it cannot stop there; name an older backup, or LATEST to have walg "
                "choose one"
            )
        if fit is Fit.UNSURE:
            # As for LATEST: where the server's timezone puts the target before the end,
            # PostgreSQL replays past it unnoticed and promotes.
            raise UsageError(
                f"{bound.what} has no time zone, and backup {name} {bound.describe_end(end)}: "
                "before or after it depends on the restored server's timezone; give the "
                "offset (like +00) or a zone name"
            )
        if fit is Fit.UNKNOWN:
            log.warning(
                "backup %s records no end: walg cannot tell whether it finished before %s; "
                "if it did not, the restore holds what was committed after the target",
                name,
                bound.what,
            )
        _warn_if_past_the_archive(storage, end, bound, timelines)
        return name
    ends = []
    written = {}
    for ref in catalog.list_backups(storage):
        try:
            ends.append(BackupEnd.read(storage, ref.name))
        except (IntegrityError, BackupNotFound) as exc:
            log.warning("%s; not considered", exc)
        written[ref.name] = ref.modified
    # The newest backup that finished before the target, on whatever timeline: the database
    # system live at the target. Another system's backup cannot reach it (its WAL ended
    # before: the cluster before a pg_upgrade), whatever timeline its histories lead to.
    live: BackupEnd | None = None
    skipped_other = False
    for end in sorted(ends, key=bound.order, reverse=True):
        fit = bound.fit(end)
        if fit is Fit.AFTER:
            continue
        if live is None and fit is Fit.BEFORE:
            live = end
        if live is not None and live.other_system(end):
            log.info(
                "backup %s not considered for %s: it is another database system's (system "
                "identifier %d) than backup %s (%d), which finished after it and before the "
                "target",
                end.name,
                bound.what,
                end.system_identifier,
                live.name,
                live.system_identifier,
            )
            skipped_other = True
            continue
        reason = timelines.why_not(end)
        if reason is not None:
            log.info("backup %s not considered for %s: %s", end.name, bound.what, reason)
            _warn_outlived(timelines, end, written[end.name])
            continue
        if fit is Fit.BEFORE:
            log.info(
                "LATEST for %s: backup %s, which %s", bound.what, end.name,
                bound.describe_end(end),
            )  # fmt: skip
            _warn_if_past_the_archive(storage, end, bound, timelines)
            return end.name
        if fit is Fit.UNSURE:
            raise UsageError(
                f"{bound.what} has no time zone, and backup {end.name} "
                f"{bound.describe_end(end)}: before or after it depends on the restored "
                "server's timezone; give the offset (like +00) or a zone name"
            )
        log.warning("backup %s records no end; not considered for %s", end.name, bound.what)
    if live is not None and skipped_other:
        raise BackupNotFound(
            f"no backup in {storage.location} can reach {bound.what}: the newest that finished "
            f"before it, {live.name} (system identifier {live.system_identifier}), cannot, as "
            f"{timelines.why_not(live)}, and the older ones that could are another database "
            "system's, whose WAL ended before (the cluster before a pg_upgrade, which starts the "
            f"new one on timeline 1). Restore {live.name} with --target-timeline current"
        )
    why = ""
    if ends and all(bound.fit(end) is Fit.AFTER for end in ends):
        first = min(ends, key=bound.order)
        ended = bound.describe_end(first)
        why = f": every backup ended after it, the earliest, {first.name}, {ended}"
    raise BackupNotFound(f"no backup in {storage.location} can reach {bound.what}{why}")


def _warn_of_a_future_time(bound: TargetBound) -> None:
    """Warn of a time target later than now (for a time without a zone, than all it may mean).

    No commit in the archive is after it (an offset typed wrong is the likely cause: local time
    given as +00), so recovery replays the whole archive: PostgreSQL 13 and later then stop
    with FATAL rather than promote, after the whole download and replay, and earlier majors
    promote at the end of the archive, later than the operator perhaps meant. Not refused: an
    archive still being written may yet reach it, and a clock may be wrong.
    """
    import time

    if bound.earliest_ns is None or bound.earliest_ns <= time.time_ns():
        return
    log.warning(
        "%s is in the future by this host's clock (is its offset or zone right?): no commit "
        "in the archive is after it, so recovery replays the whole archive, and PostgreSQL 13 "
        "and later then stop with 'recovery ended before configured recovery target was "
        "reached' instead of promoting (earlier majors promote at the end of the archive); to "
        "recover to the end then, remove the recovery_target_time line from the restored "
        "postgresql.auto.conf and start the server again",
        bound.what,
    )


def _warn_if_past_the_archive(
    storage: Storage, end: BackupEnd, bound: TargetBound, timelines: _Timelines
) -> None:
    """Warn where the WAL stored on the timeline recovery follows ends before the target.

    Recovery then replays to the end of the archive without reaching it, and PostgreSQL 13+
    stops with "recovery ended before configured recovery target was reached" instead of
    promoting: the usual case of a target at the moment of a disaster, after the last commit
    the lost primary archived. Not refused: a primary still archiving may yet reach it.

    An LSN is placed by the newest stored segment's name. A time by the newest segment's
    storage time: WAL holding a commit after the target was stored after that commit, so
    where every segment was stored before the target (by storage's clock) none holds one.
    """
    from walg.core.lsn import Segment, is_segment_name
    from walg.core.naming import WAL
    from walg.ops.wal_show import archived_segment_size

    if end.timeline is None:
        return
    timeline = timelines.target(end)
    newest: tuple[str, str] | None = None
    stored: GoTime | None = None
    # Advice only: an entry that is no object (a FIFO) is passed over, as wal-show does, and
    # a listing that fails says so; neither stops the restore (wal-fetch judges each segment).
    try:
        wal = _timeline_wal(storage, timeline, "not considered for where the archive ends")
    except WalgError as exc:
        log.warning("cannot tell where the archive ends for %s: %s", bound.what, exc)
        return
    for name, info in wal:
        if not is_segment_name(name):
            continue
        if newest is None or name > newest[0]:
            newest = (name, info.key[len(WAL) :])
        if stored is None or info.modified.ns > stored.ns:
            stored = info.modified
    if newest is None or stored is None:
        return  # nothing on that timeline yet: left to recovery
    if bound.lsn is not None:
        size = archived_segment_size(storage, [newest[1]])  # warns itself where it cannot read
        if size is None:
            return
        archive_end = (Segment.parse(newest[0], size).segno + 1) * size
        if bound.lsn < archive_end:
            return
        where = f"ends with segment {newest[0]}, before LSN {format_lsn(bound.lsn)}"
    else:
        assert bound.earliest_ns is not None
        if stored.ns >= bound.earliest_ns:
            return
        where = (
            f"was all stored by {stored.utc().format()} (storage's clock), before the target; "
            "no commit after the target is archived"
        )
    log.warning(
        "the WAL of timeline %d in %s %s: unless the server archives WAL past %s before "
        "recovery gets there, recovery replays to the end of the archive without reaching "
        "the target, and PostgreSQL 13 and later then stop with 'recovery ended before "
        "configured recovery target was reached' instead of promoting; to recover all that "
        "was archived, restore without a target (or remove the target from "
        "postgresql.auto.conf and start the server again)",
        timeline,
        storage.location,
        where,
        bound.what,
    )


def _say_latest_for_unplaced_target(storage: Storage, chosen: str, target: RecoveryTarget) -> None:
    """Say which backup LATEST is for a restore point or transaction target, and what
    happens if the target is older than that backup's end.

    walg cannot tell when a restore point was made or a transaction committed (only the WAL
    records say), so it cannot choose the backup as it does for a time or LSN. A target older
    than the chosen backup's end is never met: recovery replays to the end of the archive and
    stops with "recovery ended before configured recovery target was reached", after the
    whole download and replay.
    """
    option = "--target-name" if target.name else "--target-xid"
    end = BackupEnd.read(storage, chosen)
    ended = " and ".join(
        part
        for part in (
            f"at {end.finish_time.utc().format()}" if end.finish_time is not None else "",
            f"at LSN {format_lsn(end.finish_lsn)}" if end.finish_lsn is not None else "",
        )
        if part
    )
    log.info(
        "LATEST for %s is backup %s, the newest recovery can start from; it ended %s. walg "
        "cannot tell when that target was set: if it is older, recovery stops with 'recovery "
        "ended before configured recovery target was reached', and you must name an older "
        "backup (backup-list --detail shows where each ended)",
        option,
        chosen,
        ended or "at a point its documents do not record",
    )


def _backup_on_timeline(storage: Storage, name: str, timelines: _Timelines) -> str:
    """Without a time or LSN target, the backup recovery can start from on the timeline it
    will follow: ``name`` if it can (else a UsageError), for LATEST the newest that can.

    After a point-in-time restore branched a new timeline off an older one, the newest
    backups may lie on the abandoned part of the older timeline, and the restored server
    refuses to start from them ("requested timeline is not a child of this server's
    history") after the whole download.
    """
    if name != catalog.LATEST:
        end = BackupEnd.read(storage, catalog.resolve(storage, name))
        reason = timelines.why_not(end)
        if reason is not None:
            raise UsageError(
                f"backup {name} cannot start a recovery that follows timeline "
                f"{timelines.target(end)}: {reason}; name another backup, LATEST to have walg "
                "choose one, or --target-timeline"
            )
        return name
    refs = catalog.list_backups(storage)
    if not refs:
        raise BackupNotFound(f"no backups found in {storage.location}")
    newest: BackupEnd | None = None
    newest_reason: str | None = None
    skipped_other = False
    for ref in reversed(refs):
        try:
            end = BackupEnd.read(storage, ref.name)
        except (IntegrityError, BackupNotFound) as exc:
            log.warning("%s; not considered", exc)
            continue
        if newest is not None and newest.other_system(end):
            # Another database system's backup (the cluster before a pg_upgrade, or one that
            # initdb replaced): restoring it is never what LATEST asks for. pg_upgrade starts
            # the new system on timeline 1, so the old system's timeline histories can make
            # recovery follow a timeline on which only the old system's backups lie.
            log.info(
                "backup %s not considered: it is another database system's (system "
                "identifier %d) than the newest backup %s (%d)",
                end.name,
                end.system_identifier,
                newest.name,
                newest.system_identifier,
            )
            skipped_other = True
            continue
        reason = timelines.why_not(end)
        if newest is None:
            newest, newest_reason = end, reason
        if reason is None:
            # The name, never LATEST again: resolved later, LATEST could be a backup that
            # finished meanwhile and was never checked (an old primary's, off the timeline).
            if ref is not refs[-1]:
                log.info("LATEST: backup %s, the newest recovery can start from", end.name)
            return end.name
        log.info(
            "backup %s not considered: recovery follows timeline %d, and %s",
            end.name,
            timelines.target(end),
            reason,
        )
        _warn_outlived(timelines, end, ref.modified)
    if newest is not None and skipped_other:
        raise BackupNotFound(
            f"no backup in {storage.location} of the newest backup's database system (system "
            f"identifier {newest.system_identifier}) can start a recovery that follows timeline "
            f"{timelines.target(newest)}: the newest, {newest.name}, cannot, as {newest_reason}; "
            "the timeline histories recovery would follow are those of another database system "
            "archiving here before (the cluster before a pg_upgrade, which starts the new one on "
            f"timeline 1). Restore {newest.name} with --target-timeline current, or name another "
            "system's backup to restore that"
        )
    why = f" (the newest, {newest.name}: {newest_reason})" if newest and newest_reason else ""
    raise BackupNotFound(
        f"no backup in {storage.location} can start a recovery that follows the target "
        f"timeline{why}; "
        + (
            "give another --target-timeline"
            if timelines.asked is not None
            else "name one with --target-timeline"
        )
    )
