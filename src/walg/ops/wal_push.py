"""wal-push: archive WAL files (the ``archive_command``), never overwriting different content.

Archived WAL is immutable (DESIGN.md promise 2): if the name is already archived with identical
content the push succeeds without rewriting; with different content it fails and leaves the
archive as it was. ``.history`` files are always checked; other files unless
``WALG_PREVENT_WAL_OVERWRITE=false``. One difference is no overwrite: a segment that ends where
its timeline ends, whose stored copy has the same bytes up to there (see
:func:`_holds_what_this_copy_has`).

A look-ahead uploader pushes other files PostgreSQL has marked ``.ready``
(``WALG_UPLOAD_CONCURRENCY - 1`` at a time, at most ``TOTAL_BG_UPLOADED_LIMIT``) and records
each in walg's own status folder, ``<pg_wal>/walg_data/walg_archive_status/<name>.<key>``, with
the identity of the file it uploaded (:func:`walg.ops.wal.write_marker`); ``<key>`` names the
destination it was archived to (walg_destination), so a call configured for another archive
never takes it. When PostgreSQL later asks for one of those, the marker is consumed and the
call returns at once. A look-ahead upload never replaces an object, and commits only if the
file is still the one it read and still ``.ready`` (see :func:`push_one`). From the command
line the uploader is a detached process (``walg wal-push-ahead``) that outlives the call which
started it; in the daemon, and for callers of :func:`wal_push` that pass no spawner, it runs in
the process. A per-file lock (:func:`segment_lock`) keeps a call and the uploader from
archiving the same file at once. PostgreSQL's ``.ready`` files are never renamed: PostgreSQL
stays the only writer of its archive status.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from dataclasses import dataclass

from walg.core.backoff import FailureBackoff, doubling_delay
from walg.core.log import get_logger
from walg.core.lsn import check_wal_file_name, is_wal_file_name
from walg.core.naming import WAL, wal_key
from walg.core.owner import make_folders, own_like_folder
from walg.errors import (
    ForeignWalError,
    IntegrityError,
    RequestAbandoned,
    StorageError,
    TruncatedObject,
    UsageError,
    WalgError,
    WalOverwriteError,
)
from walg.ops.pipeline import download, upload
from walg.ops.wal import (
    clear_prefetched_after_recovery,
    find_wal_object,
    marker_name,
    marker_path,
    refuse_archive_in_data_directory,
    remove,
    stat_identity,
    take_marker,
    write_marker,
)
from walg.streams.compression import codec_for_extension, codec_for_method

# Paths are plain strings on this path and typing stays unimported: archive_command runs
# this module once per WAL segment (see walg.settings).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from concurrent.futures import Future
    from typing import Any, BinaryIO

    from walg.core.lsn import Segment
    from walg.ops.pipeline import Upload
    from walg.settings import Settings
    from walg.storage.base import Storage
    from walg.streams.base import Sink, Source
    from walg.streams.compression import Codec

log = get_logger(__name__)

CHUNK = 1 << 20
BLOCK = 4 << 20  # the LZ4 frame's block size

# What _judge_stored makes of a stored copy it does not refuse: the first two stand for the
# file, the other two are copies of it to replace.
EQUAL = "equal"
HOLDS = "holds"  # all the WAL the file has, and more
CUT_SHORT = "cut short"
TAKEN_WHILE_WRITTEN = "taken while written"

# A file mapped to compress it whole stays whole-mapped up to this size: PostgreSQL's default
# 16 MiB segment, the hot path of every archive_command, keeps its one populated mapping. A
# larger one (initdb --wal-segsize up to 1 GiB) is compressed WINDOW bytes at a time, and
# this process lets go of each window's pages once compressed: mapped whole, a 1 GiB segment
# counted 1 GiB in the RSS and the OOM score of the process that pushed it.
WINDOWED_ABOVE = 64 << 20
WINDOW = 16 << 20  # a multiple of BLOCK, so that the compressor never copies a block
STATUS_DIR = os.path.join("walg_data", "walg_archive_status")  # also in bin/walg
SCAN_INTERVAL = 0.1
WAIT_POLL = 0.25  # how often a wait for an upload (the daemon's too) asks whether to give up
UPLOADER_LOCK = ".uploader.lock"  # held by a detached uploader (walg wal-push-ahead) for life
# Its modification time: when a detached uploader last swept wal_005/'s abandoned temporaries.
SWEEP_STAMP = ".swept"
# The age from which a temporary object in wal_005/ counts as abandoned (a process killed
# mid-upload): at least an hour; the daemon takes twice its push timeout
# (WALG_DAEMON_WAL_UPLOAD_TIMEOUT) where that is longer. Uploads to local storage take seconds;
# one PostgreSQL still waits for is younger than the timeout; the daemon's follower prepares an
# object for at most wal_follow.PREPARED_MAX_AGE; the margin covers clocks of other hosts
# writing the same folder. Removing one still being written anyway (a stalled network
# filesystem) fails that upload: nothing partial is ever committed.
STALE_TEMPORARY = 3600.0
LOCK_WAIT = 60.0  # how long a wal-push waits for another process's upload of its file
IDLE_EXIT = 1.0  # a detached uploader exits after this long with nothing to upload


@dataclass(frozen=True)
class WalPushResult:
    """What a wal-push did: uploaded or already archived, sizes, look-ahead names."""

    name: str
    key: str
    uploaded: bool
    raw_size: int
    stored_size: int
    background: tuple[str, ...] = ()
    # What a marker records of the file archived (walg.ops.wal.stat_identity), as it was
    # when reading began and still was after the last read; empty when nothing was read.
    identity: bytes = b""


def status_dir(wal_dir: str) -> str:
    return os.path.join(wal_dir, STATUS_DIR)


def _check_exists(source: str) -> None:
    if os.path.isfile(source):
        return
    try:
        mode = os.stat(source).st_mode
    except OSError:
        mode = None
    if mode is not None:
        # Something else is there (never opened: a FIFO would wait for a writer for ever);
        # "does not exist" would contradict ls.
        import stat

        kind = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket"}
        what = kind.get(stat.S_IFMT(mode), "not a regular file")
        raise UsageError(f"{source} is {what}, not a WAL file")
    hint = ""
    if os.sep not in source and os.path.isfile(os.path.join("pg_wal", source)):
        # archive_command = 'walg wal-push %f': the server runs it in the data directory.
        hint = (
            f" here ({os.getcwd()}), but pg_wal/{source} does: archive_command must pass %p "
            "(the file's path), not %f (its name)"
        )
    raise UsageError(f"WAL file {source} does not exist{hint}")


def push_one(
    settings: Settings,
    storage: Storage,
    source: str,
    threads: int = 1,
    absent: bool = False,
    ready: str | None = None,
    commit: Callable[[], bool] | None = None,
) -> WalPushResult:
    """Upload one WAL file with the overwrite rules; no look-ahead, no markers.

    ``threads`` compress it in parallel: worth it when this is the only upload running.
    ``absent``: the caller has just found no object of this file in storage (under any
    extension), so the overwrite check need not ask again.

    ``ready``: this is a look-ahead upload, of a file PostgreSQL has not asked for yet, and
    ``ready`` is its ``.ready`` file. Such an upload may be slow and PostgreSQL may finish with
    the file meanwhile (archived by another call) and recycle it: rename it and write a later
    segment into the same inode. So before it commits, after its last read, the file must be
    the one it opened, unchanged (inode, size, mtime, ctime) and still ``.ready`` (PostgreSQL
    removes that before it may recycle the file); otherwise the upload is abandoned.

    A look-ahead upload, and any upload the overwrite check applies to, never replaces an
    object: one stored meanwhile (after the check) is compared instead, an equal one is
    success (``uploaded`` False) and a different one a :class:`WalOverwriteError`.

    ``commit``, if given, is asked once the whole file is read and compressed, just before the
    object is committed; when it answers False (the daemon gave up on the request and told
    PostgreSQL so), nothing is committed and :class:`RequestAbandoned` is raised. PostgreSQL
    may since have archived the file by another call and recycled it: what this upload read
    late may be a later segment's bytes.
    """
    source = os.fspath(source)
    name = check_wal_file_name(os.path.basename(source))
    _check_exists(source)
    _refuse_another_segment(source, name)
    if name.endswith(".history"):
        # A new timeline: recovery has ended, and what it prefetched is of no more use.
        wal_dir = os.path.dirname(os.path.abspath(source))
        if removed := clear_prefetched_after_recovery(wal_dir):
            log.info("removed %d prefetched segments left by the recovery in %s", removed, wal_dir)
    codec = codec_for_method(settings.compression)
    key = wal_key(name, codec.extension)
    checked = _checked(settings, name)
    replace = False
    if not absent and checked:
        existing = find_wal_object(storage, name)
        if existing is not None:
            verdict = _judge_stored(storage, existing, key, codec, source, name)
            if verdict == CUT_SHORT:
                # Refused, the segment failed for good and PostgreSQL archived nothing after
                # it; what the object holds, this file holds too.
                log.warning(
                    "WAL file %s: the archived %s is a copy of it cut short (a write that "
                    "failed midway: a full disk, an outage); replacing it with the whole file",
                    name,
                    key,
                )
                replace = True
            elif verdict == TAKEN_WHILE_WRITTEN:
                log.warning(
                    "WAL file %s: the archived %s is a copy of it taken while PostgreSQL was "
                    "still writing it (a wal-push by hand of the segment being written?), "
                    "which holds nothing this file does not; replacing it with the whole file",
                    name,
                    key,
                )
                replace = True
            else:
                storage.make_durable(existing[0])
                if verdict == EQUAL:
                    log.info("WAL file %s is already archived with equal content", name)
                return WalPushResult(name, existing[0], False, os.stat(source).st_size, 0)
    # Checked, the upload must also not replace what is stored when it commits: the check
    # above is an instant long before that, and another cluster archiving into the same
    # storage (two standbys promoted to the same timeline, each with its own history file)
    # may have stored its own file meanwhile. A copy cut short is replaced (see above).
    keep = (checked and not replace) or ready is not None
    with open(source, "rb", buffering=0) as handle:
        opened = os.fstat(handle.fileno())
        try:
            up = _upload_file(
                storage, key, codec, source, handle, opened, threads, ready, keep, commit
            )
        except StorageError:
            if not keep or not storage.exists(key):
                raise
            # Stored meanwhile by a writer this upload's lock does not keep out: a standby
            # archiving the same WAL (archive_mode = always), WAL-G, another host.
            same = _same_content(storage, key, codec, source)
            # A look-ahead upload leaves the judgement to PostgreSQL's own call.
            if not same and (
                ready is not None
                or not _holds_what_this_copy_has(storage, key, codec, source, name)
            ):
                raise _refusal(
                    f"WAL file {name} was archived as {key} by another writer while this "
                    "upload ran, with different content; left as it is",
                    storage,
                    key,
                    codec,
                    source,
                ) from None
            if ready is not None:
                _check_unchanged(handle, opened, source, ready)
            storage.make_durable(key)
            if same:
                log.info("WAL file %s was archived meanwhile with equal content", name)
            return WalPushResult(name, key, False, opened.st_size, 0, (), stat_identity(opened))
    return WalPushResult(name, key, True, up.raw_size, up.stored_size, (), stat_identity(opened))


def _judge_stored(
    storage: Storage, existing: tuple[str, str], key: str, codec: Codec, source: str, name: str
) -> str:
    """What the overwrite rules make of ``existing`` (object key, extension), stored under the
    name of WAL file ``source``, for an upload to ``key``: one of the verdicts above (EQUAL,
    HOLDS, CUT_SHORT, TAKEN_WHILE_WRITTEN); else the refusal is raised
    (:class:`WalOverwriteError`)."""
    existing_codec = codec_for_extension(existing[1])
    cut: str | None = None
    try:
        same = _same_content(storage, existing[0], existing_codec, source)
    except TruncatedObject as exc:
        same, cut = False, str(exc)
    if same:
        return EQUAL
    if existing[0] == key and _cut_short_copy(storage, key, codec, source, name):
        return CUT_SHORT
    if cut is None and _holds_what_this_copy_has(
        storage, existing[0], existing_codec, source, name
    ):
        return HOLDS
    if (
        cut is None
        and existing[0] == key
        and _copy_taken_while_written(storage, key, codec, source, name)
    ):
        return TAKEN_WHILE_WRITTEN
    if cut is not None:
        raise WalOverwriteError(
            f"WAL file {name} is already archived as {existing[0]}, damaged ({cut}), "
            "and what can be read of it does not show it to be a copy of this file; "
            "refusing to overwrite it (remove it if it is what a failed write left)"
        )
    raise _refusal(
        f"WAL file {name} is already archived as {existing[0]} with different "
        "content; refusing to overwrite it",
        storage,
        existing[0],
        existing_codec,
        source,
    )


def _checked(settings: Settings, name: str) -> bool:
    """Is what storage holds under ``name`` compared before a push (overwrite protection)?"""
    return settings.prevent_wal_overwrite or name.endswith(".history")


def stored_refusal(settings: Settings, storage: Storage, source: str) -> WalOverwriteError | None:
    """The refusal a wal-push of ``source`` would meet now for what storage holds under its
    name, judged by the rules of :func:`push_one` without uploading anything; None where it
    would store the file or take the stored object for it, and where nothing certain can be
    said (storage or the file could not be read: that may pass, so it is no verdict).

    For a caller that must tell a refusal, which lasts until someone changes what is stored,
    from a failure that may pass: backup-push, waiting for PostgreSQL's archiver.
    """
    name = os.path.basename(source)
    if not _checked(settings, name):
        return None
    codec = codec_for_method(settings.compression)
    try:
        existing = find_wal_object(storage, name)
    except (OSError, WalgError) as exc:
        log.info("could not look for the archived copy of %s: %s", name, exc)
        return None
    if existing is None:
        return None
    try:
        _judge_stored(storage, existing, wal_key(name, codec.extension), codec, source, name)
    except WalOverwriteError as exc:
        return exc
    except IntegrityError as exc:
        # Its data, not its reading, is wrong (a cut-short copy is judged above): every
        # push of the name fails the same way until someone removes the object.
        return WalOverwriteError(
            f"WAL file {name} is already archived as {existing[0]}, which cannot be read "
            f"({exc}); every wal-push of it fails until that object is removed (look at it "
            "first: a damaged copy of this file, or a failed write's leftover)"
        )
    except (OSError, WalgError) as exc:
        log.info("could not compare %s with the archived copy: %s", name, exc)
    return None


def _refuse_another_segment(source: str, name: str) -> None:
    """Refuse segment file ``source`` if it is empty, if its first page header is zeros, or
    if that header states another segment's position than ``name``'s, or another size than
    the file's.

    PostgreSQL hands archive_command only segments it has written, but a push by hand (a
    loop over pg_wal) reaches the files it recycled for later use: an old segment's bytes
    under a name not written yet. Stored, that object is refused by every wal-fetch (exit 128
    in archive recovery), and PostgreSQL's own call for the name, once it has written it, is
    refused for ever as different content. Parsed here with ``int.from_bytes`` (the long
    header of walg.core.walpage, which this import path does not load); a file without such
    a header says nothing and goes on as before.
    """
    if len(name) != 24:  # .history, .backup, .partial: not a segment's first page
        return
    with open(source, "rb", buffering=0) as handle:
        head = handle.read(40)
        length = os.fstat(handle.fileno()).st_size
    if length == 0:
        # No segment is empty; stored, the object fails every wal-fetch of the name.
        raise WalgError(f"{source} is empty, which no WAL segment is; not archived")
    if len(head) < 40:
        return
    if not any(head):
        # PostgreSQL writes a segment's first page header before the rest, and makes future
        # segments ahead of use full of zeros (wal_init_zero): a push by hand reached one.
        raise WalgError(
            f"{source}'s first page header is zeros: not a WAL segment PostgreSQL has written "
            "(a file made ahead of use?); not archived"
        )
    magic, info = int.from_bytes(head[0:2], "little"), int.from_bytes(head[2:4], "little")
    size = int.from_bytes(head[32:36], "little")
    # PostgreSQL 9.3's page magic and later; a long header; initdb --wal-segsize's sizes.
    if magic < 0xD061 or not info & 0x0002 or not 1 << 20 <= size <= 1 << 30 or size & (size - 1):
        return
    pageaddr = int.from_bytes(head[8:16], "little")
    per_id = 0x100000000 // size
    segno = int(name[8:16], 16) * per_id + int(name[16:24], 16)
    if pageaddr == segno * size:
        if length != size:
            # PostgreSQL archives whole segments only, and refuses to restore a file of
            # another size ("archive file has wrong size"), which ends a recovery.
            raise WalgError(
                f"{source} is {length} bytes, but its first page states a segment of {size} "
                "bytes (a copy cut short or grown?); not archived"
            )
        return
    if pageaddr % size:
        return
    tli = int.from_bytes(head[4:8], "little")
    stated = f"{tli:08X}{pageaddr // size // per_id:08X}{pageaddr // size % per_id:08X}"
    raise WalgError(
        f"{source} is not WAL segment {name}: its first page is that of segment {stated} "
        "(a file PostgreSQL recycled for later use and has not written yet?); not archived"
    )


def _upload_file(
    storage: Storage,
    key: str,
    codec: Codec,
    source: str,
    handle: BinaryIO,
    opened: os.stat_result,
    threads: int,
    ready: str | None,
    keep: bool,
    commit: Callable[[], bool] | None,
) -> Upload:
    """Compress and store ``source``, open in ``handle``; see :func:`push_one` for ``ready``
    and ``commit``. ``keep``: an object stored under ``key`` by the time the upload commits is
    kept, and the upload fails (:class:`StorageError`)."""
    overwrite = not keep

    def before_commit() -> None:
        if commit is not None and not commit():
            raise RequestAbandoned("the request was given up on; nothing committed")

    # A look-ahead upload compresses in this thread: its check must come after the last read,
    # and the compressor threads of a parallel upload read the mapping until it closes.
    if threads > 1 and ready is None:
        # Mapped, not read: its page-cache pages go to the compressor threads as they are,
        # while reading 16 MB into new memory costs a fresh process ~10 ms on these VMs.
        # The mapping outlives the upload, whose writer holds views of it until it closes.
        # (PostgreSQL never truncates a segment it has handed to archive_command.)
        windowed = opened.st_size > WINDOWED_ABOVE
        with (
            mapped_file(handle, populate=not windowed) as data,
            upload(
                storage,
                key,
                codec,
                threads=threads,
                hash_stored=False,
                overwrite=overwrite,
                before_commit=before_commit,
            ) as up,
        ):
            if windowed:
                write_in_windows(up.writer, data)
            else:
                up.writer.write(data)
        return up
    # One thread compresses each block within write(), so one block of the file is mapped at
    # a time: no copy out of the page cache and no fresh buffer to fault in (in a drain, 28 ms
    # of daemon CPU per segment against 31.5-33 read into a new 4 MiB buffer and 29-30 into a
    # reused one), and mapped pages stay one block's worth (a daemon draining a backlog peaked
    # at 50 MB, as reading; 98 MB with the whole file mapped). A file truncated while mapped
    # would end the process with SIGBUS rather than store a torn copy; PostgreSQL never
    # truncates a segment it has marked .ready.
    size = opened.st_size
    with upload(
        storage, key, codec, hash_stored=False, overwrite=overwrite, before_commit=before_commit
    ) as up:
        for offset in range(0, size, BLOCK):
            with mapped_file(handle, offset, min(BLOCK, size - offset)) as block:
                up.writer.write(block)
        # Inside the upload, so that a failed check leaves nothing visible.
        if ready is not None:
            _check_unchanged(handle, opened, source, ready)
    return up


def _check_unchanged(handle: BinaryIO, opened: os.stat_result, path: str, ready: str) -> None:
    """Raise unless the file open in ``handle`` is as it was when opened, still at ``path``,
    and PostgreSQL has not finished with it (``ready`` exists): called after the last read,
    it proves that what was read is the segment that was asked for, whole."""

    def identity(st: os.stat_result) -> tuple[int, ...]:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    now = os.fstat(handle.fileno())
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        at_path = None
    if (
        identity(now) != identity(opened)
        or at_path is None
        or identity(at_path) != identity(opened)
        or not os.path.exists(ready)
    ):
        raise WalgError(
            f"{path} changed while it was read, or PostgreSQL finished with it meanwhile: "
            "look-ahead upload abandoned"
        )


def wal_push(
    settings: Settings,
    storage: Storage,
    path: str,
    lookahead: bool = True,
    spawn_uploader: Callable[[str, str], None] | None = None,
    lock_wait: float = LOCK_WAIT,
) -> WalPushResult:
    """Archive ``path``; look ahead in this process, or in a detached uploader.

    Without ``spawn_uploader`` the look-ahead uploads run in this process, which waits for them
    before it returns. With it (the command line passes one that starts
    ``walg wal-push-ahead``), a backlog is left to a detached uploader that outlives this
    call, so PostgreSQL's next calls overlap its uploads. Both sides take a per-file lock
    (:func:`segment_lock`): a call whose file the uploader is writing waits for it and then
    takes its marker; one that waits in vain (``lock_wait`` seconds) fails, and PostgreSQL calls
    again later: archiving the file beside a stalled upload of it would let PostgreSQL recycle
    the file under that upload.

    Markers carry the key of their destination (``settings.destination_key``): a call takes
    only its own. A status folder this process cannot use (made by another user) means no
    markers and no look-ahead: the file is archived the ordinary way, with one warning.
    """
    source = os.fspath(path)
    name = check_wal_file_name(os.path.basename(source))
    # Before the status folder is made beside it: given %f, that would be the data directory.
    _check_exists(source)
    wal_dir = os.path.dirname(os.path.abspath(source))
    data_dir = os.path.dirname(wal_dir)
    if os.path.exists(os.path.join(data_dir, "PG_VERSION")):
        refuse_archive_in_data_directory(storage, wal_key(name, "lz4"), data_dir)
    status = status_dir(wal_dir)
    marker = marker_path(status, name, settings.destination_key)
    with contextlib.ExitStack() as held:
        try:
            if take_marker(marker, source):
                log.info("WAL file %s was already archived by a look-ahead upload", name)
                return WalPushResult(name, "", False, 0, 0)
            if spawn_uploader is not None:
                make_folders(status)
                detached = uploader_running(status)
                # Locked even with no uploader seen: one just started by the previous call may
                # not hold its own lock yet, and must find this file taken.
                locked = held.enter_context(segment_lock(status, name, lock_wait))
                if locked and take_marker(marker, source):
                    log.info("WAL file %s was archived by the detached uploader", name)
                    return WalPushResult(name, "", False, 0, 0)
        except OSError as exc:
            _status_unusable(status, exc)
            return push_one(settings, storage, source, solo_threads())
        if spawn_uploader is not None:
            if not locked:
                raise WalgError(
                    f"WAL file {name} is being archived by walg's look-ahead uploader, which "
                    f"has not finished it in {lock_wait:.0f} s (stalled storage?); not archiving "
                    "it beside that upload (PostgreSQL will retry)"
                )
            # The uploader leaves this file to this call (it is excluded, and locked here).
            if (
                not detached
                and lookahead
                and _wants_lookahead(settings, wal_dir, {name})
                and not _stored_as_another_system(storage, source, name)
            ):
                try:
                    spawn_uploader(wal_dir, name)
                    detached = True
                except OSError as exc:  # no process to spare (EAGAIN): archive this one alone
                    log.warning("cannot start the look-ahead uploader: %s", exc)
            # With uploads running beside it the CPUs are busy already.
            result = push_one(settings, storage, source, 1 if detached else solo_threads())
            if not detached:
                # No uploader (none is wanted, or look-ahead is off) to sweep what killed
                # uploads left: this call does, when it is due, once its file is stored.
                held.close()
                sweep_temporaries_if_due(storage, status)
            return result
    uploader = None
    if lookahead:
        try:
            uploader = LookaheadUploader.for_settings(settings, storage, wal_dir, exclude={name})
            if uploader is not None and _stored_as_another_system(storage, source, name):
                uploader = None
            if uploader is not None:
                uploader.start()
        except OSError as exc:
            _status_unusable(status, exc)
            if uploader is not None:
                uploader.stop()
            uploader = None
    try:
        # With look-ahead uploads running the CPUs are busy already.
        threads = 1 if uploader is not None else solo_threads()
        result = push_one(settings, storage, source, threads)
    finally:
        background = uploader.stop() if uploader is not None else ()
    if background:
        log.info("also archived %d more WAL files ahead of time", len(background))
    return WalPushResult(
        result.name, result.key, result.uploaded, result.raw_size, result.stored_size, background
    )


def _status_unusable(status: str, exc: OSError) -> None:
    """Warn that walg's status folder cannot be used, naming it and its owner."""
    owner = ""
    folder = status
    while folder and folder != os.path.dirname(folder):
        try:
            st = os.stat(folder)
        except OSError:
            folder = os.path.dirname(folder)
            continue
        import pwd

        try:
            user = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            user = str(st.st_uid)
        owner = f" ({folder} is owned by {user}, mode {st.st_mode & 0o7777:04o})"
        break
    log.warning(
        "cannot use walg's status folder %s%s: %s; archiving without look-ahead",
        status,
        owner,
        exc.strerror or exc,
    )


def archive_ahead(
    settings: Settings,
    storage: Storage,
    wal_dir: str,
    exclude: set[str],
    idle: float = IDLE_EXIT,
    destination_key: str | None = None,
) -> tuple[str, ...] | None:
    """A detached uploader's whole life; None when another one is running already.

    It uploads ``.ready`` files (at most ``TOTAL_BG_UPLOADED_LIMIT``) and exits once it has
    had nothing to do for ``idle`` seconds. Markers of files PostgreSQL has finished with are
    removed first: a marker is useful only while its ``.ready`` file exists.

    ``destination_key``: the key of the call that started it, for its markers (default: this
    process's own). The caller's, not one computed here: this process was started with other
    arguments (and maybe another environment), and its markers must answer that caller's
    destination, the one its settings were taken from.
    """
    status = status_dir(wal_dir)
    make_folders(status)
    fd = os.open(os.path.join(status, UPLOADER_LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        own_like_folder(fd, status)
        if not _lock_now(fd):
            return None
        forget_finished_markers(wal_dir)
        sweep_temporaries_if_due(storage, status)
        workers = max(1, lookahead_workers(settings))
        budget = max(1, settings.total_bg_uploaded_limit)
        uploader = LookaheadUploader(
            settings, storage, wal_dir, workers, budget, exclude, destination_key=destination_key
        )
        uploader.start()
        uploader.wait_idle(idle)
        done = uploader.stop()
        # Said while the lock is held: whoever sees the uploader gone sees its account too.
        if done:
            log.info("archived %d WAL files ahead of time", len(done))
        return done
    finally:
        os.close(fd)


def sweep_leftovers(storage: Storage, wal_dir: str, stale_temporaries: float | None) -> None:
    """Remove the markers of files PostgreSQL has finished with, what a recovery that has
    ended prefetched and never used and, with ``stale_temporaries``, the temporary objects in
    ``wal_005/`` older than that many seconds (uploads killed outright); failures are logged,
    never raised."""
    try:
        forget_finished_markers(wal_dir)
    except OSError as exc:
        log.warning("cannot clear finished look-ahead markers in %s: %s", status_dir(wal_dir), exc)
    # The archiving of the new timeline's .history does it too, but a restored server with
    # archive_mode = off archives nothing, and kept them for good.
    if removed := clear_prefetched_after_recovery(wal_dir):
        log.info("removed %d prefetched segments left by the recovery in %s", removed, wal_dir)
    if stale_temporaries is not None:
        _sweep_temporaries(storage, stale_temporaries)


def sweep_temporaries_if_due(storage: Storage, status: str) -> None:
    """Remove the temporary objects in ``wal_005/`` older than :data:`STALE_TEMPORARY`, unless
    that was done from this status folder less than that long ago.

    A cold ``wal-push`` killed mid-upload (a server stopped in immediate mode, the OOM killer)
    leaves up to a segment's worth that no listing shows; without a daemon nothing else would
    ever remove it. Listing ``wal_005/`` takes time in proportion to the archive, so a detached
    uploader, or a ``wal-push`` that starts none (no backlog, or look-ahead off), sweeps at most
    once per that age (the stamp's modification time), not at every call. Failures are
    logged, never raised.
    """
    stamp = os.path.join(status, SWEEP_STAMP)
    now = time.time()
    try:
        st = os.lstat(stamp)
        age: float | None = now - st.st_mtime
        if not stat.S_ISREG(st.st_mode):
            # A FIFO would hold the open below for good (archive_command hung); anything
            # but walg's own stamp is replaced by it.
            remove(stamp)
            age = None
    except FileNotFoundError:
        age = None
    except OSError as exc:
        log.warning("cannot read the sweep stamp %s: %s", stamp, exc)
        return
    if age is not None and 0 <= age < STALE_TEMPORARY:
        return
    try:
        # Stamped before the sweep: one that fails is not retried by every uploader after it.
        fd = os.open(stamp, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_NOFOLLOW, 0o600)
        try:
            own_like_folder(fd, os.path.dirname(stamp))
        finally:
            os.close(fd)
        os.utime(stamp, (now, now))
    except OSError as exc:
        log.warning("cannot stamp the sweep of temporary objects in %s: %s", stamp, exc)
        return
    _sweep_temporaries(storage, STALE_TEMPORARY)


def _sweep_temporaries(storage: Storage, older_than: float) -> None:
    try:
        removed = storage.remove_temporaries(WAL, older_than)
    except WalgError as exc:
        log.warning("cannot remove abandoned temporary objects in %s: %s", WAL, exc)
    else:
        if removed:
            log.info("removed %d abandoned temporary objects in %s", removed, WAL)


def uploader_running(status: str) -> bool:
    """Does a detached uploader hold its lock in ``status``?"""
    try:
        fd = os.open(os.path.join(status, UPLOADER_LOCK), os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        return not _lock_now(fd)
    finally:
        os.close(fd)  # closing releases a lock this probe took


def _lock_now(fd: int) -> bool:
    """Take an exclusive ``flock`` on ``fd`` if no other process holds one; whether it did."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def segment_lock(status: str, name: str, wait: float) -> Iterator[bool]:
    """Hold ``<status>/<name>.lock`` while the body runs; yields whether it was got in time.

    The holder removes the lock file before it lets go, so none are left behind; a process
    that locked a file removed meanwhile sees another inode at the path and tries again.
    """
    path = os.path.join(status, f"{name}.lock")
    deadline = time.monotonic() + wait
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            own_like_folder(fd, status)
        except OSError:
            os.close(fd)
            raise
        if not _lock_now(fd):
            os.close(fd)
            if time.monotonic() >= deadline:
                yield False
                return
            time.sleep(0.005)
            continue
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    try:
        yield True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def forget_finished_markers(wal_dir: str) -> list[str]:
    """Remove markers whose file has no ``.ready`` any more (PostgreSQL will not ask again);
    the names of the entries removed.

    Also what uploads killed outright left for such a file: its per-file lock (taken first,
    so a lock still held stays; :func:`segment_lock` removes it on letting go), and a marker's
    temporary file (``write_marker``) untouched for :data:`MARKER_WRITE_GRACE` seconds. The
    call that archives a file removes its lock, but one whose marker was written takes that
    in the ``walg`` launcher, which never looks at locks; and no one writes a marker again
    once its file is archived. Each kill left one for good.
    """
    status = status_dir(wal_dir)
    archive_status = os.path.join(wal_dir, "archive_status")
    removed: list[str] = []
    try:
        entries = os.listdir(status)
    except FileNotFoundError:
        return removed
    now = time.time()
    for entry in sorted(entries):
        # Every destination's markers: PostgreSQL asks no destination about a finished file.
        name = marker_name(entry)
        leftover = name is None
        if leftover:
            name = _leftover_of(entry)
        if name is None or os.path.exists(os.path.join(archive_status, f"{name}.ready")):
            continue
        path = os.path.join(status, entry)
        if not leftover:
            remove(path)
        elif entry.endswith(".lock"):
            with segment_lock(status, name, 0) as locked:
                if not locked:
                    continue
        else:
            try:
                if now - os.stat(path).st_mtime < MARKER_WRITE_GRACE or not remove(path):
                    continue
            except FileNotFoundError:
                continue
        removed.append(entry)
    return removed


# A marker's temporary file untouched this long was left by a killed writer: it is written
# and renamed in an instant.
MARKER_WRITE_GRACE = 60.0


def _leftover_of(entry: str) -> str | None:
    """The WAL file name of a status folder entry that is a per-file lock or a marker's
    temporary file (``.<marker>.new``); None for anything else."""
    if entry.endswith(".lock"):
        base = entry[: -len(".lock")]
        return base if is_wal_file_name(base) else None
    if entry.startswith(".") and entry.endswith(".new"):
        return marker_name(entry[1 : -len(".new")])
    return None


def _wants_lookahead(settings: Settings, wal_dir: str, exclude: set[str]) -> bool:
    """Look-ahead is on (a worker, a budget beyond the call's own file) and files wait."""
    return (
        lookahead_workers(settings) > 0
        and settings.total_bg_uploaded_limit > 1
        and _backlog(os.path.join(wal_dir, "archive_status"), exclude)
    )


def future_finished(future: Future[Any], timeout: float | None) -> bool:
    """Wait up to ``timeout`` s for ``future``: False if it is still running, True if it
    succeeded; its own exception is raised. A TimeoutError the work raised (a storage client's
    socket) is that error, not this wait's (they are one class since Python 3.11)."""
    try:
        future.result(timeout=timeout)
    except TimeoutError:
        if not future.done():
            return False
        error = future.exception()
        if error is not None:
            raise error from None
    return True


def wait_polled(
    done: Callable[[float], bool], timeout: float, give_up: Callable[[], bool] | None
) -> bool:
    """Whether ``done(seconds)``, which waits up to that long for something and says whether
    it happened, said so within ``timeout`` s; ``give_up()``, asked every WAIT_POLL seconds,
    ends the wait early (a daemon that stops must not wait on storage for as long as an
    upload may take)."""
    deadline = time.monotonic() + timeout
    while not done(max(0.0, min(WAIT_POLL, deadline - time.monotonic()))):
        if time.monotonic() >= deadline or (give_up is not None and give_up()):
            return False
    return True


class LookaheadUploader:
    """Uploads other ``.ready`` WAL files in the background and leaves markers for them."""

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        wal_dir: str,
        workers: int,
        budget: int | None,
        exclude: set[str] | None = None,
        on_foreign: Callable[[str], None] | None = None,
        destination_key: str | None = None,
        sweep_interval: float | None = None,
        stale_temporaries: float | None = None,
    ) -> None:
        """``destination_key``: the key of its markers (default: the settings').

        ``sweep_interval``: for a resident uploader (the daemon's), every so many seconds the
        markers of files PostgreSQL has finished with are removed (:func:`forget_finished_markers`),
        as a detached uploader does when it starts; otherwise markers a cold ``wal-push``
        left beside the daemon would pile up for as long as it runs.

        ``stale_temporaries``: with ``sweep_interval``, the sweep also removes temporary objects
        in ``wal_005/`` older than this many seconds (:meth:`Storage.remove_temporaries`), and
        the first sweep runs at once: a process killed mid-upload (the daemon's own follower
        keeps one open all the time) leaves up to 16 MB behind, which listings never show.
        """
        self._sweep_interval = sweep_interval
        self._stale_temporaries = stale_temporaries
        self._last_sweep = time.monotonic()
        if stale_temporaries is not None and sweep_interval is not None:
            self._last_sweep -= sweep_interval
        self._settings = settings
        self._key = destination_key or settings.destination_key
        self._storage = storage
        self._wal_dir = wal_dir
        self._archive_status = os.path.join(wal_dir, "archive_status")
        self._status = status_dir(wal_dir)
        self._budget = budget
        self._exclude = set(exclude or ())
        self._started: set[str] = set()
        self._done: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # Imported here: a wal-push with no backlog never starts a thread nor pays the import.
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lookahead")
        self._futures: dict[str, Future[None]] = {}
        self._scanner = threading.Thread(target=self._scan_loop, name="lookahead-scan", daemon=True)
        self._on_foreign = on_foreign
        self._backoff = FailureBackoff()
        # Storage-wide: a full or unwritable storage folder fails every file alike, and the
        # per-file delays alone had every waiting .ready file compressed again about once a
        # minute (a backlog of thousands kept a CPU busy through the outage). After failures
        # in a row, of any files, no look-ahead upload starts until this time.
        self._failed_in_row = 0
        self._paused_until = 0.0
        self._held = False  # see hold()
        # The first segment uploaded after a start or a hold goes alone (see scan_once).
        self._vetting = True
        self._first: Future[None] | None = None
        self._last_queued = time.monotonic()
        self.skip: Callable[[str], bool] | None = None

    @classmethod
    def for_settings(
        cls, settings: Settings, storage: Storage, wal_dir: str, exclude: set[str]
    ) -> LookaheadUploader | None:
        if not _wants_lookahead(settings, wal_dir, exclude):
            return None
        budget = settings.total_bg_uploaded_limit - 1
        return cls(settings, storage, wal_dir, lookahead_workers(settings), budget, exclude)

    def start(self) -> None:
        # Not in a data directory that is not there yet (a daemon started before backup-fetch,
        # which wants an empty one, made it): scan_once makes the folder when it is needed.
        if os.path.isdir(self._archive_status):
            make_folders(self._status)
        self.scan_once()
        self._scanner.start()

    def _scan_loop(self) -> None:
        while not self._stop.wait(SCAN_INTERVAL):
            self.scan_once()
            self._sweep_if_due()

    def _sweep_if_due(self) -> None:
        interval = self._sweep_interval
        if interval is None or time.monotonic() - self._last_sweep < interval:
            return
        self._last_sweep = time.monotonic()
        sweep_leftovers(self._storage, self._wal_dir, self._stale_temporaries)

    def scan_once(self) -> None:
        """Queue every ``.ready`` file not yet archived, oldest first, within the budget."""
        if self._paused():
            return
        try:
            names = sorted(
                entry[: -len(".ready")]
                for entry in os.listdir(self._archive_status)
                if entry.endswith(".ready")
            )
        except OSError:
            return
        if names:
            # Made again if it went: a data directory restored anew under a resident uploader
            # (the daemon's) has none, and every upload failed on its lock file for good.
            try:
                make_folders(self._status)
            except OSError as exc:
                log.debug("cannot make %s: %s", self._status, exc)
        with self._lock:
            # Forget names PostgreSQL has finished with, so a long-lived uploader stays small.
            ready = set(names)
            self._started = {
                n
                for n in self._started
                if n in ready or ((f := self._futures.get(n)) is not None and not f.done())
            }
            self._futures = {n: f for n, f in self._futures.items() if n in self._started}
            if self._first is not None:
                if not self._first.done():
                    return
                self._first = None
            for name in names:
                if self._stop.is_set() or (self._budget is not None and self._budget <= 0):
                    return
                if name in self._started or name in self._exclude or not is_wal_file_name(name):
                    continue
                if self.skip is not None and self.skip(name):
                    continue
                if self._backoff.waiting(name):
                    continue
                if os.path.exists(self._marker(name)):
                    continue
                self._started.add(name)
                if self._budget is not None:
                    self._budget -= 1
                self._futures[name] = future = self._pool.submit(self._upload, name)
                self._last_queued = time.monotonic()
                if self._vetting and len(name) == 24:
                    # Alone, and the rest after it: storage may hold another database system's
                    # WAL under this name and the next (a cluster made anew in the prefix of
                    # the one it replaced, its backlog waiting), and uploads beside it of later
                    # segments, which collide with nothing, would commit before it holds the
                    # uploader (see _hold_for).
                    self._vetting = False
                    self._first = future
                    return

    def _marker(self, name: str) -> str:
        return marker_path(self._status, name, self._key)

    def _paused(self) -> bool:
        return self._held or time.monotonic() < self._paused_until

    def hold(self) -> None:
        """Start no upload until :meth:`resume`: PostgreSQL's own call was refused because
        storage holds another database system's WAL under its name (a cluster made anew in
        the prefix of the one it replaced), and this system's later segments, which collide
        with nothing, must not be stored after that system's last one."""
        self._held = True

    def _hold_for(self, name: str) -> None:
        """:meth:`hold`, met by an upload of its own: ``name`` is stored as another database
        system's segment. Started over a backlog (a daemon started after PostgreSQL's calls
        failed), the look-ahead meets it before PostgreSQL's refused call does, and the later
        segments, which collide with nothing, must not be stored after that system's last."""
        self.hold()
        if self._on_foreign is not None:
            self._on_foreign(name)

    def resume(self) -> None:
        """Storage took an object (PostgreSQL's own call through the daemon): lift the pause
        that failed look-ahead uploads set, and a :meth:`hold`."""
        with self._lock:
            if self._held:
                self._vetting = True
            self._held = False
            self._failed_in_row = 0
            self._paused_until = 0.0

    def _upload(self, name: str) -> None:
        if self._stop.is_set():
            return
        if self._paused():  # queued before a failure paused the look-ahead: the next scan
            with self._lock:
                self._started.discard(name)
            return
        marker = self._marker(name)
        ready = os.path.join(self._archive_status, f"{name}.ready")
        archived = False
        # The message only: the exception itself, kept past its except block, would hold the
        # frames of the failed upload (views of the mapped segment) in a cycle with this one.
        failure: str | None = None
        try:
            with segment_lock(self._status, name, 0) as locked:
                # Not locked: a wal-push of this very file is archiving it. No .ready:
                # PostgreSQL has archived it meanwhile. A marker: archived by another uploader.
                if not locked or not os.path.exists(ready) or os.path.exists(marker):
                    return
                path = os.path.join(self._wal_dir, name)
                try:
                    # Stored already: a wal-push archived it just now and PostgreSQL has not
                    # yet marked it done (or it was archived before, maybe compressed
                    # otherwise): PostgreSQL's own call compares it. A marker would outlive
                    # every call for it.
                    if (found := find_wal_object(self._storage, name)) is not None:
                        if _stored_as_another_system(self._storage, path, name, found):
                            self._hold_for(name)
                        return
                    # Checked and never replacing an object: see push_one. Nothing is
                    # committed once held (another upload met another system's segment).
                    result = push_one(
                        self._settings,
                        self._storage,
                        path,
                        absent=True,
                        ready=ready,
                        commit=lambda: not self._held,
                    )
                except RequestAbandoned:
                    return  # held meanwhile: not a failure of storage
                except (WalgError, OSError) as exc:
                    if not os.path.exists(ready):
                        # PostgreSQL finished with the file meanwhile: archived by a call
                        # through another process (a second daemon, the cold calls'
                        # uploader). No failure of storage: neither a warning nor a pause
                        # of the whole look-ahead, which grew at each such meeting.
                        log.debug("look-ahead upload of %s dropped: %s", name, exc)
                        return
                    # PostgreSQL will call archive_command for this file and see the error
                    # itself.
                    failure = str(exc)
                    return
                if result.identity:
                    write_marker(marker, result.identity, self._storage.local_path(result.key))
                    archived = True
        except Exception as exc:  # the status folder (lock, marker): as unusable as storage
            failure = str(exc)
            raise
        finally:
            warning, retry = None, 0.0
            with self._lock:
                if failure is not None:
                    # Not retried at the next scan: a full or unwritable storage folder would
                    # have every .ready file compressed again and a warning logged ten times a
                    # second for as long as it lasts. PostgreSQL's own call is not held back.
                    warning = self._backoff.failed(
                        name, f"look-ahead upload of {name} failed: {failure}"
                    )
                    self._failed_in_row += 1
                    pause = doubling_delay(self._failed_in_row)
                    self._paused_until = max(self._paused_until, time.monotonic() + pause)
                    retry = max(self._backoff.delay(name), pause)
                elif archived:
                    self._backoff.succeeded(name)
                    self._failed_in_row = 0
                    self._paused_until = 0.0
                if not archived:
                    self._started.discard(name)
                elif self._budget is not None:
                    # A resident uploader (no budget: the daemon's) never reports its names,
                    # and would keep one for every segment it ever archived.
                    self._done.append(name)
            if warning is not None:
                log.warning("%s; next look-ahead try in %.0f s", warning, retry)

    def claim(self, name: str) -> bool:
        """Reserve ``name`` for the caller's own upload; False if an upload has it already."""
        with self._lock:
            if name in self._started:
                return False
            self._started.add(name)
            return True

    def wait_for(
        self, name: str, timeout: float, give_up: Callable[[], bool] | None = None
    ) -> bool:
        """True if the look-ahead uploaded ``name`` (waiting if it is uploading it now); its
        marker is consumed.

        Otherwise the name is reserved for the caller, who uploads it, and False is returned.
        ``give_up`` is asked every WAIT_POLL seconds of the wait: True ends it (a daemon that
        stops must not wait on storage for as long as an upload may take).
        """
        with self._lock:
            future = self._futures.get(name)
            if future is None:
                self._started.add(name)
                return False
        try:
            if not wait_polled(lambda seconds: future_finished(future, seconds), timeout, give_up):
                return False
        except Exception:
            return False
        # Taken: the caller answers for the file now, and would otherwise look for the marker
        # under a name of its own choosing. By the marker's rule, as a cold call takes it:
        # storage may have lost the object since (an archive volume rolled back while
        # PostgreSQL's own calls for older files failed), and the file must be archived again.
        return take_marker(self._marker(name), os.path.join(self._wal_dir, name))

    def wait_idle(self, idle: float) -> None:
        """Return when no upload is queued or running and, for ``idle`` seconds, nothing new
        was queued (or the budget is spent)."""
        while not self._stop.wait(SCAN_INTERVAL):
            with self._lock:
                busy = any(not f.done() for f in self._futures.values())
                spent = self._budget is not None and self._budget <= 0
                quiet = time.monotonic() - self._last_queued >= idle
            if not busy and (spent or quiet):
                return

    def stop(self) -> tuple[str, ...]:
        """Stop queueing; wait for uploads in flight; the names archived ahead of time (none
        for a resident uploader, one without a budget)."""
        self._stop.set()
        if self._scanner.is_alive():
            self._scanner.join()
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            done = tuple(self._done)
            self._done.clear()
            return done


def solo_threads() -> int:
    """Compression threads for an upload that runs alone."""
    return max(1, min(4, os.cpu_count() or 1))


def lookahead_workers(settings: Settings) -> int:
    """Look-ahead uploads at once: ``WALG_UPLOAD_CONCURRENCY - 1``, capped at two per CPU.

    Each upload holds about 12 MB (a 4 MiB read buffer and LZ4's block buffers) and is
    CPU-bound on local storage, so more threads than that only add memory: 15 of them
    peaked near 200 MB while draining a backlog.
    """
    return max(0, min(settings.upload_concurrency - 1, 2 * (os.cpu_count() or 1)))


@contextlib.contextmanager
def mapped_file(
    handle: BinaryIO, offset: int = 0, length: int | None = None, populate: bool = True
) -> Iterator[bytes | memoryview]:
    """``length`` bytes (default: to the end) of the file open in ``handle`` from ``offset``
    (a multiple of the page size), mapped read-only; ``b""`` when that is nothing.
    ``populate``: every page mapped up front (else each as it is read: for
    :func:`write_in_windows`)."""
    import mmap

    size = os.fstat(handle.fileno()).st_size - offset if length is None else length
    if size <= 0:
        yield b""
        return
    # MAP_POPULATE maps every page up front, cheaper than one fault per page later.
    flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
    mapping = mmap.mmap(handle.fileno(), size, flags=flags, prot=mmap.PROT_READ, offset=offset)
    view = memoryview(mapping)
    failed = True
    try:
        yield view
        failed = False
    except BaseException as exc:
        # The failed write's frames hold slices of the mapping: without them it can be
        # closed now, not when the cyclic collector frees the exception (minutes later).
        from walg.core.frames import clear_frames

        clear_frames(exc)
        raise
    finally:
        try:
            view.release()
            mapping.close()
        except BufferError:
            # Views are still held by an upload that failed (its compressor threads): the
            # mapping goes with them, and its error, not this one, is the one to report.
            if not failed:
                raise


def write_in_windows(writer: Sink, data: bytes | memoryview, window: int = WINDOW) -> None:
    """Write ``data``, a read-only shared mapping of a file from :func:`mapped_file`, to
    ``writer`` ``window`` bytes at a time, letting go of each window's pages once the next
    one is written: this process maps at most about two windows of the file at once.

    The writer gets the same bytes in the same order as from one ``write(data)``, so what it
    makes of them (an LZ4 frame cut into 4 MiB blocks by offset) is byte for byte the same.
    Each window is mapped up front when the kernel can (``MADV_POPULATE_READ``, Linux 5.14),
    as ``MAP_POPULATE`` does for a whole mapping. Letting go is ``MADV_DONTNEED``, which on a
    shared file mapping drops this process's references only: the page cache keeps the
    pages, and a compressor thread still reading one (a writer holds at most its threads'
    4 MiB blocks, fewer than a window) maps it again from there, unchanged.
    """
    import mmap

    assert isinstance(data, memoryview) and isinstance(data.obj, mmap.mmap)
    mapping = data.obj
    size = len(data)
    released = 0
    for start in range(0, size, window):
        length = min(window, size - start)
        with contextlib.suppress(OSError):  # an older kernel: pages are mapped as read
            mapping.madvise(_MADV_POPULATE_READ, start, length)
        writer.write(data[start : start + length])
        if start > released:
            mapping.madvise(mmap.MADV_DONTNEED, released, start - released)
            released = start
    # The last window stays mapped until the mapping closes, after the writer's last read.


_MADV_POPULATE_READ = 22  # <linux/mman.h>; Python's mmap module does not name it


def _backlog(archive_status: str, exclude: set[str]) -> bool:
    """Does PostgreSQL have other files waiting to be archived?"""
    try:
        names = os.listdir(archive_status)
    except OSError:
        return False
    return any(n.endswith(".ready") and n[: -len(".ready")] not in exclude for n in names)


def _same_content(storage: Storage, key: str, codec: Codec, source: str) -> bool:
    with open(source, "rb") as local, download(storage, key, codec, key, hash_stored=False) as dl:
        while True:
            theirs = dl.reader.read(CHUNK)
            ours = local.read(len(theirs) if theirs else CHUNK)
            if theirs != ours:
                return False
            if not theirs:
                return True


def _cut_short_copy(storage: Storage, key: str, codec: Codec, source: str, name: str) -> bool:
    """Is the archived ``key`` a copy of segment ``source`` cut short? It ends early (an
    empty object, an LZ4 stream without its end, fewer bytes than the segment uncompressed)
    and, unless it is empty, what can be decoded of it equals the start of ``source``, its
    first page header at least (this cluster's system identifier, this segment's address).

    That is what a write that failed midway leaves where a writer stores under the final name
    (WAL-G's local-folder storage, on a full disk), or a filesystem after a crash that kept
    less than was written. Only segments: a segment object is whole or no WAL at all. An
    object cut inside its first LZ4 block decodes to nothing, so nothing shows whose it is:
    not a copy (the caller refuses it, and says what it is).
    """
    from walg.core.lsn import is_segment_name
    from walg.core.walpage import LONG_HEADER

    if not is_segment_name(name):
        return False
    matched = 0
    with open(source, "rb") as local:
        try:
            with download(storage, key, codec, key, hash_stored=False) as dl:
                while theirs := dl.reader.read(CHUNK):
                    if theirs != local.read(len(theirs)):
                        return False
                    matched += len(theirs)
        except TruncatedObject:
            cut = True
        else:
            # An LZ4 stream that ended cleanly is whole; uncompressed bytes have no end mark,
            # and fewer than the segment has are cut short.
            cut = codec.extension == "" and bool(local.read(1))
    empty = matched == 0 and storage.stat(key).size == 0
    return cut and (empty or matched >= LONG_HEADER.size)


def _copy_taken_while_written(
    storage: Storage, key: str, codec: Codec, source: str, name: str
) -> bool:
    """Is the archived ``key``, as long as segment ``source`` but different, a copy of it read
    while PostgreSQL was still writing it? Its pages equal the file's up to one, which holds
    the start of the file's page and zeros after it (or is not written yet), and every later
    page is zeros or none of this segment's (a preallocated file's zeros, a recycled file's
    old pages): it holds no byte of WAL the file does not.

    Such a copy comes from a wal-push of the segment being written (by hand: PostgreSQL asks
    only for finished ones). Refused, PostgreSQL's own call for the finished segment failed
    for ever and archiving stopped. A copy with a page of this segment's after the point
    where the two part (WAL another server wrote on the same timeline) is not one.
    """
    from walg.core.walpage import LONG_HEADER

    size = os.stat(source).st_size
    segment = _segment_of(name, size)
    if segment is None:
        return False
    # Where the segment's timeline ends inside it, a copy of zeros past the end is the
    # promoted side's, and one with WAL there the old primary's, diverged: not this case
    # (see _holds_what_this_copy_has).
    if _timeline_ends_within(storage, segment, size):
        return False
    start = segment.segno * size
    parted = False
    with open(source, "rb") as local:
        head = local.read(LONG_HEADER.size)
        page = LONG_HEADER.unpack(head)[7] if len(head) == LONG_HEADER.size else 0
        if page <= 0 or page & (page - 1) or size % page:
            return False
        local.seek(0)
        with download(storage, key, codec, key, hash_stored=False) as dl:
            for offset in range(0, size, page):
                ours = local.read(page)
                theirs = _read_up_to(dl.reader, page)
                if len(ours) != page or len(theirs) != page:
                    return False
                if not parted:
                    if theirs == ours:
                        continue
                    parted = True
                    # The page being written then: the file's start of it, zeros after.
                    written = len(theirs.rstrip(b"\0"))
                    if theirs[:written] == ours[:written] and (
                        offset or written >= LONG_HEADER.size
                    ):
                        continue
                    if not offset:
                        return False
                if any(theirs) and _page_names(theirs, start + offset):
                    return False
            if dl.reader.read(1):
                return False
    return parted


def _read_up_to(reader: Source, size: int) -> bytes:
    """``size`` bytes from ``reader``, fewer only at its end."""
    parts = []
    while size > 0 and (part := reader.read(size)):
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def _page_names(data: bytes, address: int) -> bool:
    """Does the page ``data`` start with a WAL page header naming LSN ``address``?"""
    from walg.core.walpage import MIN_PAGE_MAGIC, PAGE_HEADER

    magic, _info, _tli, pageaddr = PAGE_HEADER.unpack_from(data)
    return bool(magic >= MIN_PAGE_MAGIC and pageaddr == address)


def _stored_as_another_system(
    storage: Storage, source: str, name: str, found: tuple[str, str] | None = None
) -> bool:
    """Is ``name`` stored as another database system's segment than the file ``source``?

    Then PostgreSQL's call for it is refused for ever (a cluster made anew by initdb in the
    prefix of the one it replaced), and no look-ahead may start: it stored this system's later
    segments, which do not collide, after the other system's last one, and a restore of the
    other system to the end then met them and stopped (wal-fetch exits 128 on a foreign
    segment) where it had ended cleanly before. Asked when a look-ahead would start, and by
    the look-ahead for a name it finds stored (``found``, its object, not looked up again).
    """
    from walg.ops.wal import foreign_system_id

    ours = _file_system_id(source)
    theirs = None if ours is None else foreign_system_id(storage, name, ours, found)
    if theirs is None:
        return False
    log.warning(
        "not archiving ahead: %s is stored as another database system's WAL (system "
        "identifier %d; this cluster's is %d)",
        name,
        theirs,
        ours,
    )
    return True


def _file_system_id(source: str) -> int | None:
    """The system identifier segment file ``source`` states in its first page header; None
    where it states none or cannot be read."""
    from walg.core.walpage import LONG_HEADER, stated_system_id

    try:
        with open(source, "rb") as local:
            return stated_system_id(local.read(LONG_HEADER.size))
    except OSError:
        return None


def _refusal(
    message: str, storage: Storage, key: str, codec: Codec, source: str
) -> WalOverwriteError:
    """The error refusing ``source`` over the archived ``key``: ``message`` and whose WAL
    ``key`` is (:func:`_whose_wal`); a :class:`ForeignWalError` for another system's, which
    the daemon's background uploads must then leave alone too."""
    whose, foreign = _whose_wal(storage, key, codec, source)
    return (ForeignWalError if foreign else WalOverwriteError)(message + whose)


def _whose_wal(storage: Storage, key: str, codec: Codec, source: str) -> tuple[str, bool]:
    """For a refusal of segment ``source``: whose WAL the archived ``key`` is, by the system
    identifiers both first pages state, and what to do, as a sentence (else nothing); and
    whether it is another database system's.

    A refusal that only said "different content" left the operator to guess while the
    archiver retried the same file for ever. Another system's segment: a cluster made anew
    by initdb writes the same first segment names as the one it replaced. This system's:
    another server writes the same timeline (a copy started as a primary), or pg_resetwal
    (after pg_wal was lost) restarted the WAL at names the archive had passed.
    """
    from walg.ops.wal import stored_system_id

    ours = _file_system_id(source)
    try:
        theirs = stored_system_id(storage, key, codec.extension)
    except (OSError, WalgError):
        return "", False
    if ours is None or theirs is None:
        return "", False
    if ours == theirs:
        return (
            f": the archived file is WAL of this same database system (system identifier "
            f"{ours}), written differently. Either another server of this system writes this "
            "timeline (a copy started as a primary, from pg_basebackup, a snapshot or a "
            "restore without recovery, with this archive_command: stop its archiving), or "
            "the WAL was reset (pg_resetwal) to a position the archive had passed: stop the "
            "server and run pg_resetwal -l with a segment name after the last one archived "
            "(walg wal-show)"
        ), False
    return (
        f": the archived file is another database system's WAL (system identifier {theirs}; "
        f"this file's is {ours}), so this storage holds another cluster's archive (one that "
        "initdb replaced, or another cluster given the same storage prefix). Archive this "
        "cluster into a prefix of its own (WALG_FILE_PREFIX, WALG_STORAGE_PREFIX), and keep "
        "the other system's WAL while its backups may be restored"
    ), True


def _holds_what_this_copy_has(
    storage: Storage, key: str, codec: Codec, source: str, name: str
) -> bool:
    """Does the archived ``key``, which differs from segment ``source``, hold all the WAL that
    ``source`` holds, because ``source`` ends where its timeline ends? Then it says so.

    A standby with ``archive_mode = always`` archives, under the segment's full name, the
    segment its walreceiver was writing when the upstream's timeline ended (at the switch
    point a later timeline's history records): the old timeline's WAL up to there, then
    whatever the preallocated or recycled file held. Another copy of that name (the old
    primary's, which wrote on; another standby's, with other stale bytes) differs past the
    switch point only. Refused, the push failed for ever, and PostgreSQL's archiver, which
    retries its oldest file without end, archived nothing more on that standby. So the push
    succeeds, storing nothing, when both copies hold the same bytes up to the switch point and
    ``source`` has no page of this segment after it (a preallocated file has zeros there, a
    recycled one another segment's pages). The old primary's own copy, with its diverged WAL
    after the switch point, is still refused: its pages there name this segment. So is any
    copy where the switch point lies in the segment's last page, with no later page to tell.
    """
    from walg.core.lsn import format_lsn
    from walg.core.walpage import LONG_HEADER

    size = os.stat(source).st_size
    segment = _segment_of(name, size)
    if segment is None:
        return False
    start = segment.segno * size
    ends = _timeline_ends_within(storage, segment, size)
    if not ends:
        return False
    with open(source, "rb") as local:
        head = local.read(LONG_HEADER.size)
        page = LONG_HEADER.unpack(head)[7] if len(head) == LONG_HEADER.size else 0
        if page <= 0 or page & (page - 1) or size % page:
            return False
        for end in sorted(ends):
            length = end - start
            if not _same_prefix(storage, key, codec, local, length):
                continue
            first = -(-length // page) * page
            if first >= size:
                # No page after the switch point's to tell a stale tail from WAL written on:
                # the old primary's copy could differ from this one in that page alone.
                continue
            if any(
                _names_page(local, offset, start + offset) for offset in range(first, size, page)
            ):
                continue
            log.warning(
                "WAL file %s differs from the archived %s only past where timeline %d ends "
                "(%s, as its history says), and this copy holds nothing of the segment "
                "after that: the archived copy holds all of it; left as it is",
                name,
                key,
                segment.timeline,
                format_lsn(end),
            )
            return True
    return False


def _segment_of(name: str, size: int) -> Segment | None:
    """The segment ``name`` names, for a file of ``size`` bytes; None for another WAL file
    (``.history``, ``.partial``...) or a size no segment has."""
    from walg.core.lsn import Segment, is_segment_name

    if not is_segment_name(name):
        return None
    try:
        return Segment.parse(name, size)
    except WalgError:
        return None


def _timeline_ends_within(storage: Storage, segment: Segment, size: int) -> set[int]:
    """Where later timelines' histories in storage say ``segment``'s timeline ends within it."""
    from walg.ops.wal import newest_timeline, read_history

    start = segment.segno * size
    ends = set()
    for timeline in range(segment.timeline + 1, newest_timeline(storage, segment.timeline) + 1):
        history = read_history(storage, timeline)
        end = history.end_lsn(segment.timeline) if history is not None else None
        if end is not None and start < end < start + size:
            ends.add(end)
    return ends


def _names_page(local: BinaryIO, offset: int, address: int) -> bool:
    """Does ``local`` hold, at ``offset``, a WAL page header naming LSN ``address``?"""
    from walg.core.walpage import PAGE_HEADER

    local.seek(offset)
    return _page_names(local.read(PAGE_HEADER.size), address)


def _same_prefix(storage: Storage, key: str, codec: Codec, local: BinaryIO, length: int) -> bool:
    """Do the first ``length`` bytes of the archived ``key`` and of ``local`` agree?"""
    local.seek(0)
    with download(storage, key, codec, key, hash_stored=False) as dl:
        left = length
        while left > 0:
            theirs = dl.reader.read(min(CHUNK, left))
            if not theirs or theirs != local.read(len(theirs)):
                return False
            left -= len(theirs)
    return True
