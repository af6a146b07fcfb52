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
"""

from __future__ import annotations

import enum
import re
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from walg.core.log import get_logger
from walg.core.lsn import format_lsn, parse_lsn
from walg.core.metadata import Sentinel
from walg.errors import BackupNotFound, IntegrityError, UsageError
from walg.ops import catalog
from walg.ops.recovery import TIME_RE, RecoveryTarget
from walg.storage.base import Storage

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

    def fit(self, sentinel: Sentinel) -> Fit:
        if self.lsn is not None:
            if sentinel.finish_lsn is None:
                return Fit.UNKNOWN
            return Fit.BEFORE if sentinel.finish_lsn <= self.lsn else Fit.AFTER
        assert self.earliest_ns is not None and self.latest_ns is not None
        if sentinel.finish_time is None:
            return Fit.UNKNOWN
        finish = sentinel.finish_time.ns
        if finish <= self.earliest_ns:
            return Fit.BEFORE
        return Fit.AFTER if finish > self.latest_ns else Fit.UNSURE

    def describe_end(self, sentinel: Sentinel) -> str:
        if self.lsn is not None and sentinel.finish_lsn is not None:
            return f"ends at LSN {format_lsn(sentinel.finish_lsn)}"
        if sentinel.finish_time is not None:
            return f"finished at {sentinel.finish_time.utc().format()}"
        return "records no end"


def time_bounds(text: str) -> tuple[int, int]:
    """The earliest and latest instant (ns since the epoch) a ``--target-time`` may mean;
    the same instant twice when it has an offset or zone name. ``text`` passed
    :func:`walg.ops.recovery.check_target_time`."""
    match = re.fullmatch(TIME_RE, text.strip())
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
        sign = -1 if text.strip()[match.start("oh") - 1] == "-" else 1
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


def _in_zone(naive: datetime, name: str) -> datetime | None:
    """``naive`` in the zone ``name``; None where this machine has no such zone (the time is
    then taken as the window a time without a zone stands for)."""
    # PostgreSQL matches zone names in any case; zoneinfo wants the database's spelling.
    canonical = {zone.lower(): zone for zone in zoneinfo.available_timezones()}
    try:
        return naive.replace(tzinfo=zoneinfo.ZoneInfo(canonical.get(name.lower(), name)))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None


def _ns(moment: datetime, frac: str) -> int:
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * _NS + int(frac)


def backup_for_target(storage: Storage, name: str, target: RecoveryTarget | None) -> str:
    """The backup to restore for ``name`` (a backup name or LATEST) and ``target``."""
    bound = TargetBound.of(target) if target is not None else None
    if bound is None:
        return name
    if name != catalog.LATEST:
        sentinel = catalog.read_sentinel(storage, catalog.resolve(storage, name))
        fit = bound.fit(sentinel)
        if fit is Fit.AFTER:
            raise UsageError(
                f"backup {name} {bound.describe_end(sentinel)}, after {bound.what}: a restore "
                "from it cannot stop there; name an older backup, or LATEST to have walg "
                "choose one"
            )
        if fit is Fit.UNSURE:
            log.warning(
                "%s has no time zone: backup %s %s, which may be after it in the restored "
                "server's timezone",
                bound.what,
                name,
                bound.describe_end(sentinel),
            )
        return name
    for ref in reversed(catalog.list_backups(storage)):
        try:
            sentinel = catalog.read_sentinel(storage, ref.name)
        except (IntegrityError, BackupNotFound) as exc:
            log.warning("%s; not considered", exc)
            continue
        fit = bound.fit(sentinel)
        if fit is Fit.BEFORE:
            log.info(
                "LATEST for %s: backup %s, which %s", bound.what, ref.name,
                bound.describe_end(sentinel),
            )  # fmt: skip
            return ref.name
        if fit is Fit.UNSURE:
            raise UsageError(
                f"{bound.what} has no time zone, and backup {ref.name} "
                f"{bound.describe_end(sentinel)}: before or after it depends on the restored "
                "server's timezone; give the offset (like +00) or a zone name"
            )
        if fit is Fit.UNKNOWN:
            log.warning("backup %s records no end; not considered for %s", ref.name, bound.what)
    raise BackupNotFound(f"no backup in {storage.location} can reach {bound.what}")
