"""Prefetching archived WAL segments ahead of PostgreSQL's ``restore_command`` calls.

Layout, as WAL-G's one folder further down: ``<dir of the destination>/.wal-g/prefetch/<key>/
<name>`` for complete files (or under ``WALG_PREFETCH_DIR``), ``…/<key>/running/<name>`` while
downloading; ``<key>`` is the archive's destination key (see :func:`prefetch_root`). A file is
written in ``running/`` and renamed into ``prefetch/`` only when complete and valid (not
synced: one written before the system last started, or dated after now by a clock that was
ahead, is never served), and before it is served it is checked again (size, WAL page magic,
page address and segment size in its long page header, and the system identifier against the
cluster's ``global/pg_control``), so a truncated, stale or foreign file is never handed to
PostgreSQL: a prefetch folder shared by several clusters (``WALG_PREFETCH_DIR``) holds the
same names for all of them.

The next segment names follow the timeline history found in the archive: after a switch,
segments past the switch point are taken from the newer timeline, as PostgreSQL reads them.
Which history recovery follows is judged from the segment it asked for, so a
``recovery_target_timeline`` older than the newest, or one of two sibling branches, is followed
too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time

from walg.core.log import get_logger
from walg.core.lsn import Segment, is_segment_name
from walg.core.owner import make_folders, own_like_folder
from walg.core.walpage import cluster_system_id, valid_segment_file
from walg.errors import ObjectNotFound, RequestAbandoned, WalgError
from walg.ops.wal import (
    data_dir_of,
    download_wal,
    find_wal_object,
    newest_timeline,
    put_in_place,
    read_history,
    recovery_ended,
    remove,
    remove_stale_files,
    temporary_beside,
)
from walg_destination import is_key

# restore_command loads this module on every call to look for a prefetched file: paths are
# strings, and the thread pool and timeline history are imported only by the prefetcher.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from walg.core.timeline import History
    from walg.settings import Settings
    from walg.storage.base import Storage

log = get_logger(__name__)

STALE_RUNNING_SECONDS = 600
RUNNING_STALL_SECONDS = 0.2
# How far a prefetched file's mtime may lie after this process's clock: a file system whose
# times come from another machine's clock (NFS) may be a little ahead.
FUTURE_SLACK_SECONDS = 60.0


def prefetch_root(settings: Settings, destination: str) -> str:
    """The folder of prefetched files for this archive: ``…/.wal-g/prefetch/<key>``.

    ``<key>`` is the destination key (walg_destination): clones of one cluster (a DR copy, a
    restore given its own archive) share its system identifier and its segment names, so a
    file prefetched from one archive must not be served to a restore from another.
    """
    base = settings.prefetch_dir or os.path.dirname(os.path.abspath(destination))
    return os.path.join(base, ".wal-g", "prefetch", settings.destination_key)


def take_prefetched(
    root: str,
    name: str,
    destination: str,
    segment_size: int | None = None,
    commit: Callable[[], bool] | None = None,
) -> bool:
    """Move a valid prefetched ``name`` to ``destination``; False if there is none.

    ``segment_size`` None: as the file's first page states (a segment of a cluster made with
    ``initdb --wal-segsize``, whatever ``WALG_PG_WAL_SIZE`` says).

    Where ``destination`` is in a data directory (``PGDATA/pg_wal/…``, as PostgreSQL passes
    ``%p``), the file must also carry that cluster's system identifier. Anything that goes
    wrong here only means the file is downloaded instead: prefetching is an optimisation.
    ``commit`` is as for :func:`walg.ops.wal_fetch.wal_fetch`.
    """
    if not is_segment_name(name):
        return False
    candidate = os.path.join(root, name)
    try:
        _wait_for_running(root, name)
        found = os.stat(candidate)
    except (FileNotFoundError, NotADirectoryError):  # none prefetched; no folder for them
        return False
    except OSError as exc:
        log.warning("cannot look into the prefetch folder %s (%s); downloading %s", root, exc, name)
        return False
    written = found.st_mtime
    if not stat.S_ISREG(found.st_mode):
        # A FIFO would make every check below wait for a writer forever (a shared
        # WALG_PREFETCH_DIR); no prefetcher makes anything but regular files.
        log.warning("discarding %s from the prefetch folder: not a regular file", candidate)
        _discard(candidate)
        return False
    # A prefetched file is renamed into place unsynced (an fsync per segment would cost the
    # replay disk time): after a power loss its tail may be zeros, which PostgreSQL reads as
    # the end of the WAL, ending recovery early. The checks below see only the first page.
    # Its mtime and the boot time are both wall-clock readings: a file dated after now was
    # written by a clock that ran ahead of this one, perhaps before a reboot that set it
    # right, so it is no proof of having been written since this boot (after a step back of
    # this boot's clock, it costs a download).
    booted = boot_time()
    if booted is not None and written < booted:
        log.info("discarding %s, prefetched before the system last started", candidate)
        _discard(candidate)
        return False
    if written > time.time() + FUTURE_SLACK_SECONDS:
        log.info(
            "discarding %s, dated in the future: written by a clock ahead of this one", candidate
        )
        _discard(candidate)
        return False
    # Taken first, to a private name beside DEST: checked there, nothing can change it, and
    # what is left after ``commit`` is a rename within one folder, which cannot half-fail
    # (the daemon answers as soon as ``commit`` has agreed).
    tmp = temporary_beside(destination)
    if not _take(candidate, tmp):
        return False
    try:
        pgdata = data_dir_of(destination)
        if not valid_segment_file(tmp, name, segment_size, cluster_system_id(pgdata)):
            log.warning("discarding invalid or foreign prefetched WAL file %s", candidate)
            remove(tmp)
            return False
        if commit is not None and not commit():
            # Left for the next request, as it was found.
            with contextlib.suppress(OSError):
                os.replace(tmp, candidate)
            raise RequestAbandoned()
        put_in_place(tmp, destination)
    except BaseException:
        remove(tmp)
        raise
    return True


def boot_time() -> float | None:
    """When the running system started (Linux's ``btime`` in /proc/stat); None if unknown."""
    try:
        with open("/proc/stat", "rb") as handle:
            for line in handle:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _take(candidate: str, tmp: str) -> bool:
    """Move (or, from another file system, copy) the prefetched ``candidate`` to ``tmp``.

    Only a file a prefetcher of this user made is taken: a regular file of this user's with
    no other name. A shared ``WALG_PREFETCH_DIR`` may be writable by other local users, and
    what they plant there would otherwise reach pg_wal: a symbolic link (moved along as a
    link, so PostgreSQL reads, and once it recycles the segment writes, through it), or a
    file they own or have another name of, which they can change after it was checked. The
    check is made on ``tmp``, in DEST's folder, where no other user can swap it.
    """
    try:
        os.replace(candidate, tmp)
    except FileNotFoundError:
        return False  # taken by a prefetcher's cleanup meanwhile: downloaded instead
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            log.warning("cannot take prefetched %s (%s); downloading it", candidate, exc)
            return False
    else:
        try:
            planted = _not_made_by_a_prefetcher(os.lstat(tmp))
        except OSError:
            planted = "cannot be looked at"
        if planted:
            log.warning("discarding %s from the prefetch folder: %s", candidate, planted)
            if os.path.isdir(tmp) and not os.path.islink(tmp):
                # A folder swapped in after the look cannot be unlinked: not left beside DEST.
                with contextlib.suppress(OSError):
                    os.rename(tmp, candidate)
            _discard(tmp)
            return False
        return True
    try:
        fd = os.open(candidate, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        log.warning("cannot copy prefetched %s (%s); downloading it", candidate, exc)
        _discard(candidate)
        return False
    try:
        with open(fd, "rb") as source:
            planted = _not_made_by_a_prefetcher(os.fstat(source.fileno()))
            if planted:
                log.warning("discarding %s from the prefetch folder: %s", candidate, planted)
                _discard(candidate)
                return False
            with open(tmp, "xb") as target:
                while chunk := source.read(1 << 20):
                    target.write(chunk)
    except OSError as exc:
        log.warning("cannot copy prefetched %s (%s); downloading it", candidate, exc)
        remove(tmp)
        return False
    _discard(candidate)
    return True


def _discard(path: str) -> None:
    """Remove ``path``, passed over in the prefetch folder. What cannot be removed (a folder
    another user made under a segment's name) is left with a warning: the segment is
    downloaded all the same, and a failure here must not fail the fetch (exit 128 in
    archive recovery stops it)."""
    try:
        remove(path)
    except OSError as exc:
        log.warning("cannot remove %s (%s); leaving it", path, exc)


def _not_made_by_a_prefetcher(st: os.stat_result) -> str:
    """Why the file ``st`` describes is no prefetcher's of this user; empty if it may be."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid != os.geteuid():
        return f"owned by another user (uid {st.st_uid})"
    if st.st_nlink != 1:
        return f"it has {st.st_nlink - 1} other name(s) (a hard link)"
    return ""


def _wait_for_running(root: str, name: str) -> None:
    """If a prefetcher is downloading ``name`` right now, give it a moment to finish.

    Only a regular file of this user's is a prefetcher's: in a folder other users may write
    in, one of them could otherwise hold the fetch for as long as they kept a file of that
    name growing.
    """
    running = os.path.join(root, "running", name)
    last_size = -1
    last_change = time.monotonic()
    while True:
        try:
            st = os.lstat(running)
        except (FileNotFoundError, NotADirectoryError):  # no such folder: nothing running
            return
        if _not_made_by_a_prefetcher(st):
            return
        size = st.st_size
        now = time.monotonic()
        if size != last_size:
            last_size, last_change = size, now
        elif now - last_change > RUNNING_STALL_SECONDS:
            return
        time.sleep(0.002)


# Segments prefetched ahead at most, whatever WALG_DOWNLOAD_CONCURRENCY says (WAL-G prefetches
# that many): 64 of 16 MiB is 1 GiB of pg_wal's file system, far more than replay needs.
MAX_PREFETCH_DEPTH = 64


# A prefetch download starts only if, once it and those running beside it are complete, this
# many segments' worth stays free on the prefetch folder's file system: room for the segment
# a restore asks for next when it is not prefetched, and for one more PostgreSQL writes.
FREE_SEGMENTS_KEPT = 2


def prefetch_depth(settings: Settings) -> int:
    """How many segments after the one fetched are prefetched."""
    return min(settings.download_concurrency, MAX_PREFETCH_DEPTH)


class Prefetcher:
    """Downloads the segments after a given one into the prefetch folder."""

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        root: str,
        segment_size: int | None = None,
        destination: str | None = None,
    ) -> None:
        """``segment_size``: that of the segment just fetched (default: the settings').

        ``destination``: where that segment was put (``%p``, ``pg_wal/RECOVERYXLOG``). Once
        the data directory above it is out of recovery, downloads are dropped rather than
        kept: no ``wal-fetch`` will come for them, and the archiving of the new timeline's
        history has removed, or is about to remove, what was prefetched.
        """
        self._settings = settings
        self._data_dir = None if destination is None else data_dir_of(destination)
        self._storage = storage
        self._root = os.fspath(root)
        self._running = os.path.join(self._root, "running")
        self._segment_size = segment_size or settings.wal_segment_size
        self._histories: dict[int, History | None] = {}

    def upcoming(self, name: str, count: int) -> list[str]:
        """The next ``count`` segment names after ``name``, following the archive's history."""
        current = Segment.parse(name, self._segment_size)
        history = self._followed_history(current)
        names = []
        for offset in range(1, count + 1):
            segno = current.segno + offset
            segment = (
                history.segment(segno, self._segment_size)
                if history is not None
                else Segment(current.timeline, segno)
            )
            names.append(segment.name(self._segment_size))
        return names

    def _followed_history(self, current: Segment) -> History | None:
        """The history recovery follows, judged from the segment it asked for: the newest
        archived history that leads through ``current``'s timeline and reads ``current`` from
        it. PostgreSQL asks for a segment on an older timeline only when it does not follow a
        newer one there (a ``recovery_target_timeline`` of that timeline, a sibling branch).
        """
        newest = newest_timeline(self._storage, current.timeline)
        for timeline in range(newest, current.timeline, -1):
            if timeline not in self._histories:
                self._histories[timeline] = self._read_history(timeline)
            history = self._histories[timeline]
            if (
                history is not None
                and current.timeline in history.timelines()
                and history.timeline_of(current.segno, self._segment_size) == current.timeline
            ):
                return history
        return None

    def _read_history(self, timeline: int) -> History | None:
        try:
            return read_history(self._storage, timeline)
        except (WalgError, OSError) as exc:
            log.warning("cannot read the history of timeline %d: %s", timeline, exc)
            return None

    def run(self, name: str, count: int) -> list[str]:
        """Prefetch the segments after ``name`` (at most ``MAX_PREFETCH_DEPTH``); returns the
        names now waiting in the folder."""
        count = min(count, MAX_PREFETCH_DEPTH)
        make_folders(self._running)
        self.cleanup(name)
        wanted = [
            n
            for n in self.upcoming(name, count)
            if not os.path.exists(os.path.join(self._root, n))
            and not os.path.exists(os.path.join(self._running, n))
        ]
        if not wanted:
            return []
        from concurrent.futures import ThreadPoolExecutor

        workers = max(1, min(len(wanted), self._settings.download_concurrency))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prefetch") as pool:
            results = list(pool.map(self._fetch_one, wanted))
        return [n for n, ok in zip(wanted, results, strict=True) if ok]

    def _fetch_one(self, name: str) -> bool:
        try:
            found = find_wal_object(self._storage, name)
        except WalgError as exc:
            # Left for wal-fetch, which fails on it rather than report it absent.
            log.debug("not prefetching %s: %s", name, exc)
            return False
        if found is None:
            return False
        key, ext = found
        running = os.path.join(self._running, name)
        try:
            fd = os.open(running, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        try:
            own_like_folder(fd, self._running)
        except OSError:
            os.close(fd)
            remove(running)
            return False
        # Created first, so that downloads starting at the same time count one another.
        if not self._room_for_one_more():
            os.close(fd)
            remove(running)
            log.debug("not prefetching %s: too little free space left beside it", name)
            return False
        try:
            with os.fdopen(fd, "wb") as out:
                download_wal(self._storage, key, ext, out, self._segment_size)
            if not valid_segment_file(running, name, self._segment_size):
                log.warning("archived %s is not a valid WAL segment; not prefetching it", key)
                remove(running)
                return False
            if self._data_dir is not None and recovery_ended(self._data_dir):
                log.debug("recovery has ended: not keeping the prefetched %s", name)
                remove(running)
                return False
            os.replace(running, os.path.join(self._root, name))
            return True
        except (WalgError, OSError, ObjectNotFound) as exc:
            log.debug("prefetch of %s failed: %s", name, exc)
            remove(running)
            return False

    def _room_for_one_more(self) -> bool:
        """Is there room for every download in ``running/`` (this one included) to finish
        and still :data:`FREE_SEGMENTS_KEPT` segments' worth free?

        Prefetched files sit in pg_wal's file system (unless ``WALG_PREFETCH_DIR`` is
        elsewhere) beside what PostgreSQL keeps there; filled by the prefetch, a restore's
        next download fails for want of space, recovery stops, and the prefetch after a
        restart fills it again. Unknown (statvfs or the folder cannot be read): no prefetch.
        """
        try:
            fs = os.statvfs(self._running)
            outstanding = 0
            with os.scandir(self._running) as entries:
                for entry in entries:
                    with contextlib.suppress(FileNotFoundError):
                        done = entry.stat(follow_symlinks=False).st_size
                        outstanding += max(0, self._segment_size - done)
        except OSError:
            return False
        free = fs.f_bavail * fs.f_frsize
        return free - outstanding >= FREE_SEGMENTS_KEPT * self._segment_size

    def cleanup(self, current: str) -> None:
        """Drop prefetched files PostgreSQL has moved past, and abandoned downloads."""
        try:
            segno = Segment.parse(current, self._segment_size).segno
        except WalgError:
            return
        now = time.time()
        for folder in (self._root, self._running):
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                continue
            for entry in entries:
                if not entry.is_file() or not is_segment_name(entry.name):
                    continue
                old = Segment.parse(entry.name, self._segment_size).segno < segno
                stale = folder == self._running and now - entry.stat().st_mtime > (
                    STALE_RUNNING_SECONDS
                )
                if old or stale:
                    remove(entry.path)
        self._sweep_others(now)

    def _sweep_others(self, now: float) -> None:
        """Drop what other archives' prefetchers left beside this one's folder once it is
        stale, and the files of walg before folders per archive (never served now)."""
        parent = os.path.dirname(self._root)
        try:
            entries = list(os.scandir(parent))
        except OSError:
            return
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False) and is_segment_name(entry.name):
                    remove(entry.path)
                elif (
                    entry.is_dir(follow_symlinks=False)
                    and (is_key(entry.name) or entry.name == "running")
                    and entry.path != self._root
                ):
                    _drop_stale(entry.path, now)
            except OSError as exc:
                log.debug("cannot clear %s: %s", entry.path, exc)


def _drop_stale(folder: str, now: float) -> None:
    """Remove segments in ``folder`` and its ``running/`` not touched for a while, then the
    folders themselves if empty (another restore may be using them: it downloads again)."""
    for directory in (os.path.join(folder, "running"), folder):
        remove_stale_files(directory, is_segment_name, STALE_RUNNING_SECONDS, now, ahead=True)
        with contextlib.suppress(OSError):
            os.rmdir(directory)
