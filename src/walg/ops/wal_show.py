"""wal-show: the WAL segments in storage grouped by timeline, with gaps and backups.

What WAL-G's ``wal-show`` reports, computed the same way: ``wal_005/`` is listed without
recursing, the compression extension is stripped from each object name (``.lz4``, ``.br``, the
trailing dot of old uncompressed objects, or none), and the names that are 24-hex-digit WAL
segment names are grouped by timeline. For each timeline the gaps between its lowest and
highest segment are reported (highest first, as WAL-G lists them; kept as ranges, so a stray
far-off name costs no memory), and its ``<TLI>.history`` file, read with the same probe by
extension as ``wal-fetch``, gives the parent timeline and the switch point. A
backup belongs to a timeline when it started on that timeline and both its start and finish
segments lie inside the timeline's segment range; a timeline's backups are listed as WAL-G
lists them, in the reverse byte order of their sentinel keys (newest first).

Deliberate differences from WAL-G: only an extension ``wal-fetch`` probes is stripped (WAL-G
strips any), so ``<segment>.bak``, ``.LZ4`` or ``.lz4~``, which ``wal-fetch`` never finds, do
not count as the segment here nor in wal-verify; neither do ``<segment>.json`` objects
(per-segment upload metadata, ``WALG_UPLOAD_WAL_METADATA=INDIVIDUAL``) nor ``<segment>.partial``
objects (the unfinished last segment of a timeline, which ``wal-fetch`` never serves for the
segment; stored bare with ``WALG_COMPRESSION_METHOD=none``); a backup without a readable
``metadata.json`` is skipped and named in the result instead of failing the whole listing; and
a damaged ``.history`` file (one that does not decompress or parse) is named in the result, its
timeline shown without parent (0) and switch point (0/0), instead of failing the whole listing
(a missing one of a timeline after the first is named too, where WAL-G is silent);
a storage error reading one still fails it.

The listing and the history files are read; nothing is written. The result is a snapshot: WAL
archived while it runs may or may not be counted.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from walg.core.log import get_logger
from walg.core.lsn import DEFAULT_SEGMENT_SIZE, Segment, is_wal_file_name
from walg.core.metadata import BackupMetadata
from walg.core.naming import WAL, sentinel_key
from walg.errors import FormatError, IntegrityError
from walg.ops import catalog
from walg.ops.backup_list import BackupListing
from walg.ops.pipeline import map_on_threads
from walg.ops.wal import archived_system_id, read_history, stored_first_page_header
from walg.storage.base import Storage
from walg.streams.compression import FETCH_PROBE_ORDER

log = get_logger(__name__)

STATUS_OK = "OK"
STATUS_LOST_SEGMENTS = "LOST_SEGMENTS"

_HISTORY_FILE_RE = re.compile(r"([0-9A-F]{8})\.history")
_PROBED_EXTENSIONS = frozenset(FETCH_PROBE_ORDER)  # "" is the old trailing-dot form


@dataclass(frozen=True)
class TimelineInfo:
    """One timeline as found in ``wal_005/``."""

    id: int
    parent_id: int
    switch_point_lsn: int
    start_segment: str
    end_segment: str
    segments_count: int
    #: the gaps as (lowest, highest) segment numbers, highest gap first: a far-off stray name
    #: makes a gap of up to 2^40 segments, too many to name one by one
    missing_ranges: tuple[tuple[int, int], ...]
    segment_range_size: int
    backups: tuple[BackupListing, ...] = ()

    @property
    def status(self) -> str:
        return STATUS_LOST_SEGMENTS if self.missing_ranges else STATUS_OK

    @property
    def missing_count(self) -> int:
        return sum(high - low + 1 for low, high in self.missing_ranges)

    def missing_segments(self, segment_size: int = DEFAULT_SEGMENT_SIZE) -> Iterator[str]:
        """Names of the missing segments, highest first (as WAL-G lists them), made lazily."""
        for low, high in self.missing_ranges:
            for segno in range(high, low - 1, -1):
                yield Segment(self.id, segno).name(segment_size)


@dataclass(frozen=True)
class WalShowResult:
    """wal-show's answer: the archive's timelines and their segment ranges."""

    timelines: tuple[TimelineInfo, ...]
    with_backups: bool
    #: backups left out because their metadata.json is missing or has no WAL name
    skipped_backups: tuple[str, ...] = ()
    #: why a timeline's ``.history`` could not be used (that timeline shows parent 0 at 0/0)
    history_errors: tuple[str, ...] = ()
    #: the segment size the names were read with
    segment_size: int = DEFAULT_SEGMENT_SIZE


def list_wal_object_names(storage: Storage) -> list[str]:
    """Names of the objects directly under ``wal_005/`` (no sub-folders).

    An empty object is left out, with a warning naming it: no WAL file is 0 bytes stored
    (compressed or not), so ``wal-fetch`` fails on it and a restore stops there; counted, it
    would make a gap in the archive look stored. So is an entry that is not an object (a FIFO
    on local-folder storage), which would otherwise fail the whole listing.
    """
    names = []
    unlisted: list[str] = []
    infos = storage.list(WAL, recursive=False, unlisted=unlisted)
    for problem in unlisted:
        log.warning("%s; not counted as archived", problem)
    for info in infos:
        name = info.key[len(WAL) :]
        if info.size == 0 and is_wal_file_name(fetched_as(name)):
            log.warning("%s is empty: not a WAL file wal-fetch can restore", info.key)
            continue
        names.append(name)
    return names


def fetched_as(name: str) -> str:
    """The file name ``wal-fetch`` would find stored as object ``name``.

    Only the forms :func:`walg.ops.wal.find_wal_object` probes count: ``<file>.<ext>`` for an
    extension of ``FETCH_PROBE_ORDER``, the old uncompressed ``<file>.`` and the bare
    ``<file>``. Any other suffix (``.bak``, ``.LZ4``, ``.lz4~``) is left on, so the name is
    not a WAL file name: wal-verify must not vouch for an object ``wal-fetch`` never tries.
    """
    stem, dot, ext = name.rpartition(".")
    if dot and ext in _PROBED_EXTENSIONS:
        return stem
    return name


def segments_from_names(
    names: Iterable[str], segment_size: int = DEFAULT_SEGMENT_SIZE
) -> set[Segment]:
    """The WAL segments among stored object names (in a form wal-fetch finds)."""
    found = set()
    for name in names:
        segment = _segment_of(name, segment_size)
        if segment is not None:
            found.add(segment)
    return found


def _segment_of(name: str, segment_size: int) -> Segment | None:
    """The segment a stored object name stands for, or None if it is not a whole segment.

    ``<segment>.partial`` and ``<segment>.json`` keep a suffix that is no segment name's.
    """
    try:
        return Segment.parse(fetched_as(name), segment_size)
    except FormatError:
        return None


def archived_segment_size(storage: Storage, names: Iterable[str]) -> int | None:
    """The segment size the first page of a stored segment states (``initdb --wal-segsize``),
    for when ``WALG_PG_WAL_SIZE`` is not set; None where none can be read.

    Segment names mean other positions at another size: taken as 16 MiB, a 64 MiB cluster's
    ``...0000003F`` followed by ``...000000010000000100000000`` shows 192 lost segments. The
    newest segment is read first (the archive's current cluster), then the oldest; only a
    header that is its named segment's first page at the stated size is believed.
    """
    from walg.core.lsn import is_segment_name
    from walg.core.walpage import named_segment_size
    from walg.errors import WalgError

    stored = sorted((fetched_as(n), n) for n in names if is_segment_name(fetched_as(n)))
    for segment, name in dict.fromkeys([*stored[-1:], *stored[:1]]):
        ext = name[len(segment) + 1 :]
        key = WAL + name
        try:
            size = named_segment_size(stored_first_page_header(storage, key, ext), segment)
        except (OSError, WalgError) as exc:
            log.warning("cannot read %s for the WAL segment size (%s)", key, exc)
            continue
        if size is not None:
            return size
    return None


def warn_of_another_segment_size(storage: Storage, names: Iterable[str], segment_size: int) -> None:
    """Warn where the archive's segments state another size than ``segment_size`` (the one
    ``WALG_PG_WAL_SIZE`` sets): names then mean other positions, and ranges and gaps computed
    with it are not the archive's."""
    stated = archived_segment_size(storage, names)
    if stated is not None and stated != segment_size:
        log.warning(
            "WALG_PG_WAL_SIZE says %d MiB but the archive's segments state %d MiB: segment "
            "ranges and gaps are computed with the setting (unset it, or set it to %d)",
            segment_size >> 20,
            stated >> 20,
            stated >> 20,
        )


def history_timeline(name: str) -> int | None:
    """The timeline whose ``.history`` file the stored object ``name`` is, or None."""
    match = _HISTORY_FILE_RE.fullmatch(fetched_as(name))
    return int(match.group(1), 16) if match else None


def timelines_from_names(names: Iterable[str], segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """The highest timeline named by a stored segment or ``.history`` object; 0 if none."""
    highest = 0
    for name in names:
        timeline = history_timeline(name)
        if timeline is None:
            segment = _segment_of(name, segment_size)
            timeline = segment.timeline if segment is not None else None
        if timeline is not None:
            highest = max(highest, timeline)
    return highest


def missing_ranges(present: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """The (lowest, highest) segment numbers of each gap between the present ones, highest
    gap first."""
    ordered = sorted(present, reverse=True)
    return tuple(
        (lower + 1, higher - 1)
        for higher, lower in itertools.pairwise(ordered)
        if higher - lower > 1
    )


def _load_backups(storage: Storage, concurrency: int) -> tuple[list[BackupListing], list[str]]:
    refs = catalog.list_backups(storage)
    if not refs:
        return [], []

    def load(ref: catalog.BackupRef) -> BackupMetadata | None:
        try:
            return catalog.read_metadata(storage, ref.name)
        except IntegrityError as exc:
            log.warning("%s", exc)
            return None

    metas = map_on_threads(load, refs, concurrency)
    listed: list[BackupListing] = []
    skipped: list[str] = []
    for ref, meta in zip(refs, metas, strict=True):
        if meta is None:
            skipped.append(ref.name)
        else:
            listed.append(BackupListing(ref, meta))
    # WAL-G reads the backups in the reverse of the storage listing, which S3, GCS, Azure and
    # a folder give in byte order of the sentinel keys: a timeline's newest backup first.
    listed.sort(key=lambda item: sentinel_key(item.ref.name), reverse=True)
    return listed, skipped


def backup_timeline(listing: BackupListing, segment_size: int) -> int | None:
    """The timeline a backup started on, from the WAL name in its backup name."""
    try:
        return Segment.parse(listing.ref.wal_file_name, segment_size).timeline
    except FormatError:
        return None


def _warn_of_two_systems(
    storage: Storage, tli: int, low: int, high: int, segment_size: int
) -> None:
    """Warn where a timeline's first and last segments state different system identifiers.

    Two clusters given one prefix by mistake, or a cluster made anew by ``initdb``, store
    their segments under one timeline's names, and the table shows one run of them; a restore
    stops where the other system's begin (``wal-fetch`` refuses them). A ``pg_upgrade`` that
    kept its prefix does so too, which the warning names. Two reads per timeline; a segment
    that cannot be read says nothing here (``wal-verify`` and ``wal-fetch`` report it).
    """
    systems = []
    for segno in (low, high):
        name = Segment(tli, segno).name(segment_size)
        system = archived_system_id(storage, name)
        if system is None:
            return
        systems.append((name, system))
    (first, ours), (last, theirs) = systems
    if ours != theirs:
        log.warning(
            "timeline %d holds segments of two database systems: %s states system identifier "
            "%d, %s states %d (a pg_upgrade that kept its storage prefix does so; otherwise "
            "another cluster archives into this storage, and a restore of either stops where "
            "the other's segments begin)",
            tli,
            first,
            ours,
            last,
            theirs,
        )


def wal_show(
    storage: Storage,
    with_backups: bool = True,
    segment_size: int | None = DEFAULT_SEGMENT_SIZE,
    concurrency: int = 10,
    check_size: bool = False,
) -> WalShowResult:
    """Every timeline with segments in ``wal_005/``, sorted by timeline id. ``segment_size``
    None: as a stored segment states (:func:`archived_segment_size`), else 16 MiB.
    ``check_size``: warn where a stored segment states another size than ``segment_size``
    (names then mean other positions: gaps shown are not the archive's)."""
    names = list_wal_object_names(storage)
    if segment_size is None:
        segment_size = archived_segment_size(storage, names) or DEFAULT_SEGMENT_SIZE
    elif check_size:
        warn_of_another_segment_size(storage, names, segment_size)
    by_timeline: dict[int, set[int]] = {}
    for segment in segments_from_names(names, segment_size):
        by_timeline.setdefault(segment.timeline, set()).add(segment.segno)

    backups: list[BackupListing] = []
    skipped: list[str] = []
    if with_backups and by_timeline:
        backups, skipped = _load_backups(storage, concurrency)
        if not backups and not skipped:
            log.info("No backups found in storage.")

    timelines = []
    history_errors: list[str] = []
    for tli in sorted(by_timeline):
        present = by_timeline[tli]
        low, high = min(present), max(present)
        # wal-show only describes the archive: one damaged history must not hide every other
        # timeline, so it costs that timeline its parent and switch point, with a warning.
        # Storage failing to hand it over (a StorageError) is no damage: it fails the command,
        # as WAL-G's does, rather than print a parent of 0 as if the file were not there.
        try:
            history = read_history(storage, tli)
        except IntegrityError as exc:
            history_errors.append(f"timeline {tli}: {exc}")
            history = None
        else:
            if history is None and tli > 1:
                # Printed as WAL-G prints it (parent 0 at 0/0), which reads as a timeline
                # that branched from nothing; a promotion always archives the history.
                history_errors.append(f"timeline {tli}: {tli:08X}.history is not in storage")
        if low != high:
            _warn_of_two_systems(storage, tli, low, high, segment_size)
        parent, switch_lsn = 0, 0
        if history is not None and history.switches:
            parent, switch_lsn = history.switches[-1].parent, history.switches[-1].lsn
        attached = []
        for item in backups:
            meta = item.metadata
            if meta is None or backup_timeline(item, segment_size) != tli:
                continue
            if low <= meta.start_lsn // segment_size and meta.finish_lsn // segment_size <= high:
                attached.append(item)
        timelines.append(
            TimelineInfo(
                id=tli,
                parent_id=parent,
                switch_point_lsn=switch_lsn,
                start_segment=Segment(tli, low).name(segment_size),
                end_segment=Segment(tli, high).name(segment_size),
                segments_count=len(present),
                missing_ranges=missing_ranges(present),
                segment_range_size=high - low + 1,
                backups=tuple(attached),
            )
        )
    for item in backups:
        if backup_timeline(item, segment_size) is None:
            skipped.append(item.ref.name)
    return WalShowResult(
        tuple(timelines), with_backups, tuple(skipped), tuple(history_errors), segment_size
    )
