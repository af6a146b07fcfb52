"""Locating and reading WAL objects: WAL-G's probe by extension (``wal_005/<name>.<ext>``),
and timeline history files read from storage.

Also what the WAL commands share for their markers and temporary files: a marker's record of
the file it vouches for (:func:`file_identity`, :func:`write_marker`, :func:`take_marker`), its
name, which carries the key of the destination it was written for (:func:`marker_path`),
:func:`temporary_beside` (and :func:`forget_stale_temporaries`), :class:`DestinationFile` and
:func:`put_in_place` (which name the destination in their errors) and :func:`remove`.

Every extension WAL-G may have written is probed, including those this build cannot decode yet:
a segment that exists but cannot be read must be an error, never "not in the archive" (which
would make PostgreSQL end recovery early) and never a reason to upload a second copy.
"""

from __future__ import annotations

import os

from walg.core.lsn import is_wal_file_name
from walg.core.naming import wal_key
from walg.core.owner import own_like_folder
from walg.streams.compression import FETCH_PROBE_ORDER
from walg_destination import is_key

TYPE_CHECKING = False  # not typing's: see walg.settings
if TYPE_CHECKING:
    from collections.abc import Callable

    from walg.core.timeline import History
    from walg.errors import DestinationError
    from walg.storage.base import Storage
    from walg.streams.base import Sink

CHUNK = 1 << 20
# A timeline history file has one short line per ancestor; anything this large is not one.
HISTORY_SIZE_LIMIT = 16 << 20


def find_wal_object(storage: Storage, file_name: str) -> tuple[str, str] | None:
    """The stored key of a WAL file and its compression extension, or None if not archived."""
    for ext in FETCH_PROBE_ORDER:
        keys = [wal_key(file_name, ext)]
        if ext == "":
            # Older WAL-G wrote uncompressed objects with a trailing dot.
            keys.append(wal_key(file_name, "") + ".")
        for key in keys:
            if storage.exists(key):
                return key, ext
    return None


def stored_first_page_header(storage: Storage, key: str, ext: str) -> bytes:
    """The first bytes of the stored WAL file ``key`` (compressed as ``ext``), as many as a
    segment's first page header holds (fewer for a shorter file)."""
    from walg.core.walpage import LONG_HEADER
    from walg.ops.pipeline import download
    from walg.streams.compression import codec_for_extension

    with download(storage, key, codec_for_extension(ext), key, hash_stored=False) as dl:
        return dl.reader.read(LONG_HEADER.size)


def stored_system_id(storage: Storage, key: str, ext: str) -> int | None:
    """The system identifier the stored segment ``key`` (compressed as ``ext``) states in its
    first page header; None where it has none (a history file, a corrupt object)."""
    from walg.core.walpage import stated_system_id

    return stated_system_id(stored_first_page_header(storage, key, ext))


def archived_system_id(
    storage: Storage, file_name: str, found: tuple[str, str] | None = None
) -> int | None:
    """The system identifier the archived segment ``file_name`` states; None where nothing is
    archived under it, or it states none, or cannot be read. ``found``: its object, where the
    caller has just looked it up (:func:`find_wal_object`), which is then not asked again."""
    from walg.errors import WalgError

    if found is None:
        found = find_wal_object(storage, file_name)
        if found is None:
            return None
    try:
        return stored_system_id(storage, *found)
    except (OSError, WalgError):
        return None


def foreign_system_id(
    storage: Storage, file_name: str, system_id: int, found: tuple[str, str] | None = None
) -> int | None:
    """The system identifier the archived segment ``file_name`` states, where it is another
    than ``system_id``: another database system's WAL under this system's name. None where
    nothing is archived under it, or it states this one, none, or cannot be read. ``found``
    as for :func:`archived_system_id`."""
    theirs = archived_system_id(storage, file_name, found)
    return theirs if theirs is not None and theirs != system_id else None


def download_wal(storage: Storage, key: str, ext: str, out: Sink, limit: int | None = None) -> int:
    """Write the decompressed object ``key`` (compressed as ``ext``) to ``out``; its size.

    More than ``limit`` bytes is an IntegrityError, raised before they are written: LZ4
    expands up to 255 times, and a corrupt or foreign object must not fill pg_wal's disk. A
    segment whose first page states a larger segment size (a cluster made with ``initdb
    --wal-segsize``, ``WALG_PG_WAL_SIZE`` left at 16) may be that large, at most 1 GiB, if
    that page is the named segment's at that size.
    """
    from walg.core.walpage import named_segment_size
    from walg.errors import IntegrityError
    from walg.ops.pipeline import download
    from walg.streams.compression import codec_for_extension

    size = 0
    with download(storage, key, codec_for_extension(ext), key, hash_stored=False) as dl:
        while chunk := dl.reader.read(CHUNK):
            if size == 0 and limit is not None:
                limit = max(limit, named_segment_size(chunk, os.path.basename(key)) or 0)
            size += len(chunk)
            if limit is not None and size > limit:
                raise IntegrityError(f"{key} holds more than {limit} bytes: not a WAL file")
            out.write(chunk)
    return size


def newest_timeline(storage: Storage, timeline: int) -> int:
    """The newest timeline archived after ``timeline``, as PostgreSQL's findNewestTimeLine
    finds it: ``<TLI+1>.history``, ``+2``, ... up to the first one missing."""
    from walg.core.timeline import history_file_name

    newest = timeline
    while find_wal_object(storage, history_file_name(newest + 1)) is not None:
        newest += 1
    return newest


def read_history(storage: Storage, timeline: int) -> History | None:
    """``<TLI>.history`` from storage, in any compression walg reads; None if not archived."""
    from walg.core.timeline import History, history_file_name
    from walg.errors import FormatError, IntegrityError
    from walg.ops.pipeline import download
    from walg.streams.compression import codec_for_extension

    found = find_wal_object(storage, history_file_name(timeline))
    if found is None:
        return None
    key, ext = found
    parts: list[bytes] = []
    size = 0
    with download(storage, key, codec_for_extension(ext), key, hash_stored=False) as dl:
        # To the end, not one read: a decompressor checks walg's checksum trailer only when
        # asked for more after the content, and a damaged history read as sound would send
        # recovery, the prefetcher and wal-verify down a timeline wal-fetch then refuses.
        while size <= HISTORY_SIZE_LIMIT:
            chunk = dl.reader.read(HISTORY_SIZE_LIMIT + 1 - size)
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
    data = b"".join(parts)
    if len(data) > HISTORY_SIZE_LIMIT:
        raise IntegrityError(f"{key} is larger than {HISTORY_SIZE_LIMIT} bytes")
    try:
        return History.parse(timeline, data.decode("utf-8", "replace"))
    except FormatError as exc:
        raise IntegrityError(f"{key} is not a timeline history file: {exc}") from None


def file_identity(path: str) -> bytes:
    """What a marker records of the file it vouches for: device, inode, size, mtime."""
    return stat_identity(os.stat(path))


def stat_identity(st: os.stat_result) -> bytes:
    """:func:`file_identity` of a file already open (``os.fstat``)."""
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}\n".encode()


def marker_path(status: str, name: str, key: str) -> str:
    """The marker of WAL file ``name`` archived to the destination with ``key`` (see
    walg_destination): ``<status>/<name>.<key>``. Markers of several destinations for one
    file live side by side; each call sees only its own."""
    return os.path.join(status, f"{name}.{key}")


def marker_name(entry: str) -> str | None:
    """The WAL file name a status folder entry is a marker of, or None if it is none.

    Markers without a key (walg before keys, WAL-G's own) count: they are stale for every
    destination, and whoever cleans the folder may remove them.
    """
    if is_wal_file_name(entry):
        return entry
    name, _, key = entry.rpartition(".")
    return name if is_key(key) and is_wal_file_name(name) else None


MARKER_READ = 8192  # an identity line and a path: far less


def write_marker(marker: str, identity: bytes, stored: str | None = None) -> None:
    """Record that the file with ``identity`` is archived (written whole, then renamed).

    A marker names the file's identity, not only its name: a segment that is rewritten under
    the same name later (pg_rewind, a restore into the same directory) is not vouched for.
    ``stored``: the path of the object written, where storage is a local folder
    (:meth:`~walg.storage.base.Storage.local_path`), on a second line; the marker vouches only
    while that file is there, so an archive folder swapped under the same name (a link
    pointed at a new volume, another file system mounted there) is archived to again.
    """
    directory, name = os.path.split(marker)
    temporary = os.path.join(directory, f".{name}.new")
    if stored is not None:
        identity += os.fsencode(stored) + b"\n"
    # Its name is this marker's own: whatever is there (a killed writer's file, a FIFO that
    # would hold the open for good) goes, and the new file is made afresh.
    remove(temporary)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            own_like_folder(fd, directory)
            os.write(fd, identity)
        finally:
            os.close(fd)
        os.replace(temporary, marker)
    except BaseException:
        # A full pg_wal (archiving behind) fails the write: nothing else would ever remove
        # the temporary file, whose name is no marker's.
        remove(temporary)
        raise


def take_marker(marker: str, source: str) -> bool:
    """Consume ``marker`` (a :func:`marker_path`) if it vouches for ``source`` as it is now.

    Only a marker whose name carries a destination key is ever taken: one without (walg
    before keys, WAL-G's own) says nothing about where the file went, and is left alone.
    A keyed marker for another file (or an empty one) vouches for nothing: it is removed, and
    the caller archives ``source`` the ordinary way, overwrite check included. (Markers are
    renamed into place, so one is never read half written; removing a valid one that replaced
    a stale one meanwhile costs only that work.) Markers of other destinations have other
    names and are never looked at.
    """
    if not is_key(os.path.basename(marker).rpartition(".")[2]):
        return False
    try:
        # Not blocking: a FIFO under the marker's name must not hang the call or the daemon;
        # it reads as empty, vouches for nothing and is removed.
        fd = os.open(marker, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as handle:
            recorded = handle.read(MARKER_READ)
    except FileNotFoundError:
        return False
    try:
        valid = vouches(recorded, file_identity(source))
    except FileNotFoundError:
        valid = False
    remove(marker)
    return valid


def vouches(recorded: bytes, identity: bytes) -> bool:
    """Does a marker holding ``recorded`` vouch for the file with ``identity``: the same file,
    and the object it names (if any: see :func:`write_marker`) still there? The ``walg``
    launcher reads markers by the same rule without importing this module."""
    if not recorded.startswith(identity):
        return False
    stored = recorded[len(identity) :]
    if not stored:
        return True
    if not stored.endswith(b"\n") or b"\n" in stored[:-1]:
        return False
    return os.path.isfile(stored[:-1])


def destination_error(destination: str, exc: OSError) -> DestinationError:
    """A WAL file cannot be put at ``destination`` (no such folder, no permission, a full
    disk): the error names that path, the one PostgreSQL gave, and not the hidden temporary
    file beside it that failed."""
    from walg.errors import DestinationError

    return DestinationError(f"cannot write {destination}: {exc.strerror or exc}")


class DestinationFile:
    """The temporary file ``path`` a WAL file is written to before it is renamed over
    ``destination``; every error of the local file system is a :func:`destination_error`."""

    def __init__(self, path: str, destination: str) -> None:
        self._destination = destination
        try:
            self._file = open(path, "xb")  # noqa: SIM115 (closed by close or discard)
        except OSError as exc:
            raise destination_error(destination, exc) from None
        try:
            own_like_folder(self._file.fileno(), os.path.dirname(path) or ".")
        except OSError as exc:
            import contextlib

            self.discard()
            with contextlib.suppress(OSError):  # the failure to report is the one above
                os.unlink(path)
            raise destination_error(destination, exc) from None

    def write(self, data: bytes | memoryview, /) -> int:
        try:
            return self._file.write(data)
        except OSError as exc:
            raise destination_error(self._destination, exc) from None

    def close(self) -> None:
        """Close, writing out what is buffered: a full disk may only show here."""
        try:
            self._file.close()
        except OSError as exc:
            raise destination_error(self._destination, exc) from None

    def discard(self) -> None:
        """Close after a failure, which is what is reported (the caller removes the file)."""
        import contextlib

        with contextlib.suppress(OSError):
            self._file.close()


def put_in_place(path: str, destination: str) -> None:
    """Rename the complete ``path`` over ``destination``."""
    try:
        os.replace(path, destination)
    except OSError as exc:
        raise destination_error(destination, exc) from None


def temporary_beside(destination: str) -> str:
    """A private name in ``destination``'s folder for a file that is renamed over it when
    complete (the same file system, so the rename is atomic; hidden by its leading dot)."""
    folder, base = os.path.split(destination)
    return os.path.join(folder, f".{base}.walg-{os.urandom(4).hex()}")


# A temporary file beside DEST untouched this long is a killed call's (SIGKILL, an immediate
# shutdown): a live download writes to it all the time, and every one has a time limit.
STALE_TEMPORARY_SECONDS = 600


def forget_stale_temporaries(destination: str) -> list[str]:
    """Remove :func:`temporary_beside` files of ``destination`` left by calls that were
    killed (each up to a segment, in pg_wal); the names removed. Run by the prefetcher, by a
    ``wal-fetch`` that starts none, and by the daemon at most once a minute per destination:
    a killed daemon's leftovers would otherwise stay, as its own fetches never start a
    prefetcher. Names are
    matched without ``re``, which a ``wal-fetch`` does not import otherwise."""
    import time

    folder, base = os.path.split(os.path.abspath(destination))
    prefix = f".{base}.walg-"

    def wanted(name: str) -> bool:
        tail = name[len(prefix) :]
        return name.startswith(prefix) and len(tail) == 8 and all(c in HEX for c in tail)

    return remove_stale_files(folder, wanted, STALE_TEMPORARY_SECONDS, time.time())


HEX = frozenset("0123456789abcdef")


def recovery_ended(data_dir: str) -> bool:
    """Is ``data_dir`` a data directory (it has ``PG_VERSION``) out of recovery, with neither
    ``recovery.signal`` nor ``standby.signal``, nor (before PostgreSQL 12) ``recovery.conf``?
    PostgreSQL removes the signal files, and renames ``recovery.conf`` to ``recovery.done``,
    when recovery ends, after its last ``restore_command``."""
    return os.path.exists(os.path.join(data_dir, "PG_VERSION")) and not any(
        os.path.lexists(os.path.join(data_dir, signal))
        for signal in ("recovery.signal", "standby.signal", "recovery.conf")
    )


def data_dir_of(destination: str) -> str:
    """The data directory of a ``restore_command`` destination: ``%p`` is ``pg_wal/<file>``
    in it (with ``pg_rewind --restore-target-wal``, ``<target>/pg_wal/<file>``)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(destination)))


def fetched_for_pg_rewind(name: str, destination: str) -> bool:
    """Is this fetch of ``name`` to ``destination`` one that ``pg_rewind
    --restore-target-wal`` asked for: into the pg_wal of a data directory (it has
    ``PG_VERSION``) under the file's own name?

    Recovery always gives ``%p`` as ``pg_wal/RECOVERYXLOG`` (``RECOVERYHISTORY`` for a
    history file); pg_rewind gives ``<target>/pg_wal/<name>``. It lists the stopped target's
    files, reads WAL through such calls, then rewrites the target by that list: anything a
    call leaves running in that pg_wal (a detached prefetch adding and renaming files in
    ``.wal-g/prefetch``, a sweep removing files) makes it fail midway ("could not remove
    file", "Directory not empty"), the target half rewound. Nobody would ask for prefetched
    segments there either. (Whether a server runs is no test: ``postmaster.pid`` names a
    process a walg daemon in another PID namespace, a container of its own, cannot see.)
    """
    if os.path.basename(destination) != name:
        return False
    return os.path.exists(os.path.join(data_dir_of(destination), "PG_VERSION"))


def clear_prefetched_after_recovery(wal_dir: str) -> int:
    """Remove what ``wal-fetch`` prefetched into ``wal_dir``'s ``.wal-g/prefetch`` once the
    data directory above it is out of recovery (:func:`recovery_ended`); the number of files
    removed.

    A restore stopped at a target leaves the segments prefetched past it there, up to
    ``WALG_DOWNLOAD_CONCURRENCY`` of them (a GB at 64), and no ``wal-fetch`` will come to
    take or sweep them. Called when a ``.history`` file is archived: a new timeline has begun,
    so recovery has ended, and the prefetched segments belong to the timeline left behind (a
    prefetch still running then keeps nothing: see ``wal_prefetch.Prefetcher``). A standby
    that archives (``archive_mode = always``) keeps its signal file and its prefetch.
    ``WALG_PREFETCH_DIR`` is left alone: other clusters may share it. Errors are ignored:
    this is tidying, never a reason to fail the push.
    """
    import contextlib

    from walg.core.lsn import is_segment_name

    base = os.path.join(wal_dir, ".wal-g", "prefetch")
    if not os.path.isdir(base) or not recovery_ended(os.path.dirname(os.path.abspath(wal_dir))):
        return 0
    removed = 0
    for folder, _dirs, files in os.walk(base, topdown=False):
        for name in files:
            try:
                if is_segment_name(name) and remove(os.path.join(folder, name)):
                    removed += 1
            except OSError:
                continue
        with contextlib.suppress(OSError):
            os.rmdir(folder)  # only if empty: anything else there is not ours
    return removed


def remove_stale_files(
    folder: str, wanted: Callable[[str], bool], age: float, now: float, ahead: bool = False
) -> list[str]:
    """Remove the files in ``folder`` whose names ``wanted`` takes and that nothing has
    written for ``age`` seconds before ``now``; the names removed. A folder or file that
    cannot be looked at is left alone. ``ahead``: also those dated more than ``age`` after
    ``now`` (by a clock since set back), where removing one still in use costs nothing
    but a download."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        try:
            if (
                wanted(entry.name)
                and entry.is_file(follow_symlinks=False)
                and _stale(now - entry.stat(follow_symlinks=False).st_mtime, age, ahead)
                and remove(entry.path)
            ):
                removed.append(entry.name)
        except OSError:
            continue
    return removed


def _stale(elapsed: float, age: float, ahead: bool) -> bool:
    return elapsed > age or (ahead and -elapsed > age)


def remove(path: str) -> bool:
    """Delete ``path`` if it is there; whether it was."""
    try:
        os.unlink(path)
    except (FileNotFoundError, NotADirectoryError):  # a file where a folder of it should be
        return False
    return True


def refuse_archive_in_data_directory(storage: Storage, key: str, data_dir: str) -> None:
    """ConfigError if ``key``'s object would be stored inside ``data_dir`` (or in its
    ``pg_wal``, which may be a link elsewhere).

    ``WALG_FILE_PREFIX=backups`` is resolved against the working directory, which for the
    server's ``archive_command`` is the data directory. An archive there is lost with the data
    directory, is emptied with it before a ``backup-fetch`` (which needs an empty
    destination), and every base backup copies it, earlier backups included. Neither WAL-G
    nor pgBackRest archives so knowingly; walg refuses, and PostgreSQL keeps the WAL.
    """
    stored = storage.local_path(key)
    if stored is None:
        return
    folder = os.path.realpath(os.path.dirname(stored))
    for inside in (data_dir, os.path.join(data_dir, "pg_wal")):
        real = os.path.realpath(inside)
        if folder == real or folder.startswith(real.rstrip(os.sep) + os.sep):
            from walg.errors import ConfigError

            raise ConfigError(
                f"the storage folder {folder} lies inside the data directory {data_dir} "
                f"({real}): an archive there is lost with the data directory and copied into "
                "every backup; set WALG_FILE_PREFIX to an absolute path outside it (a relative "
                "one is read from the server's working directory, the data directory)"
            )
