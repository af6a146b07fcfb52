"""Following the WAL segment PostgreSQL is writing, so that archiving it is nearly done when asked.

``walg daemon SOCKET PGDATA`` runs one follower. PostgreSQL writes WAL in order, page after page,
so once a later page of the current segment carries a valid header (page magic, the page's own
address) everything before it is final. The follower reads the segment in 256 KiB blocks as
they become final, compresses each into the LZ4 frame of the segment's object and writes it to
storage straight away (local storage starts writing it to disk as it goes). When the segment is
``.ready`` (reported by inotify, seen by a poll, or because ``archive_command`` asks for it) only
the last block, the frame's end and one short sync remain.

Nothing is trusted from the early reads: before the object is committed, the file now at the
segment's path must still be the one followed (same inode, full size), and the XXH3-128 digest of
its prepared part must equal the digest of the bytes that were compressed. (This is an equality
check against PostgreSQL's own writes, not against an adversary, so the fastest sound hash does:
about four times BLAKE3's speed here.) Any difference (a file rewritten or replaced, a filesystem
that shows writes out of order) discards the prepared object and the segment is archived from
scratch by the usual path. The overwrite rules of ``wal-push`` apply: a name that is already
archived is handed to that path too, and so is one stored by another writer while the segment
was being finished (the commit never replaces an object).
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time

from walg.core.backoff import FailureBackoff
from walg.core.frames import clear_frames
from walg.core.log import get_logger
from walg.core.lsn import Segment, is_segment_name
from walg.core.naming import wal_key
from walg.core.walpage import (
    LONG_HEADER,
    PAGE_HEADER,
    named_segment_size,
    segment_file_magic,
    valid_segment_file,
)
from walg.errors import StorageError
from walg.ops.wal import file_identity, find_wal_object, marker_path, write_marker
from walg.ops.wal_push import WINDOW, WINDOWED_ABOVE, status_dir, wait_polled

TYPE_CHECKING = False  # not typing's: see walg.settings
if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractContextManager
    from types import TracebackType

    from walg.core.inotify import DirWatch
    from walg.settings import Settings
    from walg.storage.base import Storage
    from walg.streams.base import Sink

log = get_logger(__name__)

# Small enough that little is left to do at .ready; LZ4 looks back only 64 KiB, so smaller
# blocks cost next to nothing in ratio.
BLOCK = 256 << 10
# How often the follower looks at the segment. Every wake-up costs CPU (about 0.14 ms on these
# VMs), so it looks often only while pages arrive; inotify reports .ready at once in any case.
FAST_POLL = 0.002  # pages arriving in the last FAST_POLL_TAIL bytes of the segment
FAST_POLL_TAIL = 1 << 20
SLOW_POLL = 0.02  # pages arriving
IDLE_POLL = 0.2  # nothing arrived for ACTIVE_SPAN, or no segment to follow
ACTIVE_SPAN = 0.5
ARCHIVED_MEMORY = 1024  # finished names kept for a request that may come (see WalFollower)
REPICK_AFTER = 1.0  # seconds without progress before looking for another segment
# Looking for a newer segment than a stalled one lists pg_wal and opens candidates: on an idle
# server it would otherwise run at every poll. (With nothing followed, the poll is IDLE_POLL.)
PICK_EVERY = 1.0
# The oldest a prepared object may get before it is dropped and prepared afresh. Storage's
# sweep removes temporary objects older than walg.ops.wal_push.STALE_TEMPORARY (at least an hour)
# as left by a killed process, and a slow server may take longer than that to fill a segment;
# an object only ever shows its creation time (a compressible segment may sit in the writer's
# buffer without touching the file). Preparing 16 MB again costs a few tens of milliseconds.
PREPARED_MAX_AGE = 20 * 60.0


class _Followed:
    """One segment being followed: the prepared part of its object, open in storage.

    The file is mapped (read-only, shared) for as long as it is followed: blocks are compressed
    straight from the page cache, and at the finish the check reads pages already mapped
    instead of paying for a new mapping while archive_command waits. (PostgreSQL allocates a
    segment at its full size and never truncates it; see :meth:`page_valid` for the rest.)

    A segment larger than ``windowed_above`` (initdb --wal-segsize up to 1 GiB) is let go of
    ``window`` bytes at a time once compressed and again once checked (:meth:`release`):
    kept, every page read stayed mapped until the finish, and the daemon's RSS and OOM score
    grew by the segment's size. PostgreSQL's default 16 MiB segment stays mapped whole, as
    before: the check at its finish reads pages still mapped while archive_command waits.
    """

    def __init__(
        self,
        name: str,
        path: str,
        fd: int,
        segment_size: int,
        magic: int,
        windowed_above: int = WINDOWED_ABOVE,
        window: int = WINDOW,
    ) -> None:
        import mmap

        import lz4.block
        import xxhash

        self.name = name
        self.path = path
        self.fd = fd
        self.segment_size = segment_size
        self.base = Segment.parse(name, segment_size).segno * segment_size
        self.magic = magic
        self.map: mmap.mmap | None = mmap.mmap(
            fd, segment_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ
        )
        self.view = memoryview(self.map)
        self.windowed = segment_size > windowed_above
        self.window = window
        self.released = 0  # this process's pages before this offset were let go of
        self.prepared = 0
        self.stored = 0
        self.lz4 = lz4.block
        # What was read: for the check before commit, then the object's digest trailer.
        self.digest = xxhash.xxh3_128()
        self.writer: AbstractContextManager[Sink] | None = None
        self.sink: Sink | None = None
        self.opened_at = 0.0  # when the object was created in storage
        self.last_progress = time.monotonic()

    def page_valid(self, offset: int) -> bool:
        # Read, not taken from the mapping: polls go on while the server is stopped, when
        # something else (pg_rewind) may rewrite the file, and a mapped page past a shortened
        # end would kill the daemon with SIGBUS. The mapping is read only for blocks whose
        # next page was just read from the file, and at the finish after a size check.
        head = os.pread(self.fd, PAGE_HEADER.size, offset)
        if len(head) != PAGE_HEADER.size:
            return False
        magic, _info, _tli, pageaddr = PAGE_HEADER.unpack(head)
        return bool(magic == self.magic and pageaddr == self.base + offset)

    def same_file(self) -> bool:
        """Is the file now at ``path`` still the one mapped, at a segment's full size?"""
        try:
            now = os.stat(self.path)
        except OSError:
            return False
        mapped = os.fstat(self.fd)
        return (now.st_dev, now.st_ino) == (mapped.st_dev, mapped.st_ino) and (
            now.st_size == self.segment_size
        )

    def release(self, start: int, end: int) -> None:
        """Let go of this process's mapped pages from ``start`` to ``end`` (page-aligned).

        ``MADV_DONTNEED`` on a shared file mapping drops the page references of this process
        only: the page cache keeps the pages, and a later read maps them again, unchanged.
        """
        import mmap

        assert self.map is not None
        if end > start:
            self.map.madvise(mmap.MADV_DONTNEED, start, end - start)

    def release_prepared(self) -> None:
        """Let go of the whole windows already compressed."""
        end = self.prepared - self.prepared % self.window
        if end > self.released:
            self.release(self.released, end)
            self.released = end

    def append(self, block: memoryview) -> None:
        from walg.streams import lz4frame

        assert self.sink is not None
        self.digest.update(block)
        for part in lz4frame.block_record(self.lz4, block):
            self.sink.write(part)
            self.stored += len(part)

    def abandon(self, exc: BaseException) -> None:
        """Drop the object being written, if any (storage removes it), and close the file.

        Committing is never done here: only :meth:`WalFollower._finish` does that, after the
        whole segment has been checked. Idempotent.
        """
        writer, self.writer, self.sink = self.writer, None, None
        try:
            if writer is not None:
                tb: TracebackType | None = exc.__traceback__
                writer.__exit__(type(exc), exc, tb)
        except Exception as failure:
            # Dropping a write that failed (a full disk) may fail again the same way: what is
            # left is storage's temporary object, never a visible one (its sweep removes it).
            log.debug("WAL follower: dropping the object of %s: %s", self.name, failure)
            clear_frames(failure)
        finally:
            # The failed write's frames (compressor, storage's writer) still hold slices of the
            # mapping, and the exception lives on in the caller: until the cyclic collector got
            # to them (minutes), the mapping could not be closed and kept the segment open.
            clear_frames(exc)
            self.close_file()

    def close_file(self) -> bool:
        """Unmap and close the segment; False if views of the mapping are still held (the
        mapping stays, for another try)."""
        mapping = self.map
        if mapping is not None:
            try:
                self.view.release()
                mapping.close()
            except BufferError:
                log.debug("WAL follower: the mapping of %s is still in use", self.name)
                return False
            self.map = None
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        return True


class _Discarded(Exception):
    """The prepared object cannot be used; the segment goes through the usual path."""


class WalFollower:
    """Prepares the object of the segment being written; finishes it when it is ``.ready``.

    ``claim(name)`` is asked before a segment is finished (the daemon's look-ahead uploader
    answers it, so a segment is never uploaded twice at once); ``following(name)`` tells that
    uploader to leave the followed segment alone.
    """

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        wal_dir: str,
        claim: Callable[[str], bool],
        remember: int = ARCHIVED_MEMORY,
        windowed_above: int = WINDOWED_ABOVE,
        window: int = WINDOW,
    ) -> None:
        self._settings = settings
        self._windows = (windowed_above, window)  # see _Followed
        self._storage = storage
        self._wal_dir = wal_dir
        self._learnt_size: int | None = None  # see _segment_size
        self._archive_status = os.path.join(wal_dir, "archive_status")
        self._claim = claim
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._current: _Followed | None = None
        self._next_name: str | None = None
        self._next_since = 0.0
        self._picked_at = -PICK_EVERY
        self._requested: str | None = None
        self._results: dict[str, threading.Event] = {}
        # Names finished and not yet asked for, oldest first, with the identity of the file
        # archived (walg.ops.wal.file_identity): a wal-push that does not come through the
        # daemon never asks, so it is bounded.
        self._archived: dict[str, bytes] = {}
        self._remember = remember
        self._thread = threading.Thread(target=self._loop, name="wal-follower", daemon=True)
        self._watch: DirWatch | None = None
        # Segments that failed (a full or unwritable storage folder) are not followed again
        # until their delay is over; PostgreSQL's wal-push archives them the usual way.
        self._backoff = FailureBackoff()
        self._trying: str | None = None
        # Set by hold(): nothing is followed, nor committed, until resume().
        self._held = False
        # Segments whose mapping could not be closed yet (views still held): tried again.
        self._unclosed: list[_Followed] = []
        self.stats = {"finished": 0, "discarded": 0}

    # -- the daemon's side ---------------------------------------------------------------------

    def start(self) -> None:
        from walg.core.inotify import DirWatch

        # A .ready wakes the follower at once; without inotify the next poll finds it.
        self._watch = DirWatch.start(self._archive_status, self._on_status_file)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        self._drop(None)
        self._close_leftovers()

    def hold(self) -> None:
        """Follow and commit nothing until :meth:`resume` (see LookaheadUploader.hold): the
        segment being followed is dropped by the follower thread at its next step."""
        self._held = True
        self._wake.set()

    def resume(self) -> None:
        self._held = False
        self._wake.set()

    def _on_status_file(self, name: str) -> None:
        if not name or name.endswith(".ready"):
            self._wake.set()

    def following(self, name: str) -> bool:
        current = self._current
        return current is not None and current.name == name

    def wait_for(
        self, name: str, timeout: float, give_up: Callable[[], bool] | None = None
    ) -> bool:
        """True if the follower archived ``name`` (finishing it now if it was following it),
        the very file now at its path. ``give_up`` is asked every WAIT_POLL seconds of the
        wait: True ends it, as the timeout does."""
        with self._lock:
            if name in self._archived:
                return self._still_archived(name)
            current = self._current
            if current is None or current.name != name:
                return False
            done = self._results.setdefault(name, threading.Event())
            self._requested = name
        self._wake.set()
        finished = wait_polled(done.wait, timeout, give_up)
        with self._lock:
            if self._results.get(name) is done:
                del self._results[name]
            if not finished:
                # Given up on: finished later, the segment gets its marker (nobody waits).
                return False
            if name in self._archived:
                return self._still_archived(name)
        return False

    def _still_archived(self, name: str) -> bool:
        """Forget ``name``; whether the file at its path is still the one archived. A name
        vouches for nothing: the data directory may have been restored anew under the
        daemon (a file system snapshot put back), and the segment written again with other
        content, which the caller must archive (and the overwrite check refuse)."""
        identity = self._archived.pop(name)
        try:
            if file_identity(os.path.join(self._wal_dir, name)) != identity:
                return False
        except OSError:
            return False
        # Nor does the upload vouch for an object storage has lost since (a volume rolled
        # back), where it can tell: the rule of a look-ahead marker (walg.ops.wal.vouches).
        stored = self._storage.local_path(wal_key(name, "lz4"))
        return stored is None or os.path.isfile(stored)

    # -- the follower thread -------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            # Cleared before the step, so that a wake-up during it is not lost.
            self._wake.clear()
            self._trying = None
            try:
                interval = self._step()
            except Exception as exc:
                name = self._trying or ""
                warning = self._backoff.failed(name, f"WAL follower: {exc}")
                if warning is not None and name:
                    delay = self._backoff.delay(name)
                    log.warning("%s; %s is not followed for %.0f s", warning, name, delay)
                elif warning is not None:
                    log.warning("%s", warning)
                self._drop(exc)
                interval = IDLE_POLL
            self._close_leftovers()
            self._wake.wait(interval)

    def _step(self) -> float:
        if self._held:
            if self._current is not None:
                self._drop(None)
            return IDLE_POLL
        current = self._current
        if current is None:
            current = self._open_next()
            if current is None:
                # Right after a finish the next segment is expected any moment on a busy server.
                return SLOW_POLL if self._next_name else IDLE_POLL
        self._trying = current.name
        self._advance(current)
        tail = current.segment_size - current.prepared
        last_block = tail <= BLOCK
        with self._lock:
            requested = self._requested == current.name
        # Not only in the last block: a segment switched early (archive_timeout,
        # pg_switch_wal) ends in zeroed pages that never look final.
        if requested or self._is_ready(current.name):
            self._finish(current)
            return 0.0
        if current.writer is not None and time.monotonic() - current.opened_at > PREPARED_MAX_AGE:
            log.debug("WAL follower: preparing %s afresh (its object is old)", current.name)
            self._drop(None)
            return 0.0
        idle = time.monotonic() - current.last_progress
        if idle > REPICK_AFTER and not last_block:
            newer = self._pick_now_and_then()
            if newer is not None and newer != current.name:
                log.debug("WAL follower: %s stalled, following %s", current.name, newer)
                self._drop(None)
                self._next_name = newer
                self._next_since = time.monotonic()
                return 0.0
        if idle >= ACTIVE_SPAN:
            return IDLE_POLL
        return FAST_POLL if tail <= FAST_POLL_TAIL else SLOW_POLL

    def _is_ready(self, name: str) -> bool:
        return os.path.exists(os.path.join(self._archive_status, f"{name}.ready"))

    def _open_next(self) -> _Followed | None:
        if self._next_name and time.monotonic() - self._next_since > REPICK_AFTER:
            self._next_name = None  # e.g. a new timeline: look at what is written instead
        name = self._next_name or self._pick()
        if name is None or self._backoff.waiting(name):
            return None
        self._trying = name
        path = os.path.join(self._wal_dir, name)
        try:
            # Not blocking: a FIFO under the name (anything PostgreSQL's user made) would hold
            # this thread in open() for good.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        try:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
        except OSError:
            os.close(fd)
            raise
        if not regular:
            os.close(fd)
            self._next_name = None  # look at what is written instead
            return None
        segment_size = self._segment_size(path)
        try:
            magic = segment_file_magic(fd, name, segment_size)
        except OSError:
            os.close(fd)
            raise
        if magic is None:
            # Not written yet in this life (a recycled file still holds an older segment).
            os.close(fd)
            return None
        try:
            followed = _Followed(name, path, fd, segment_size, magic, *self._windows)
        except BaseException:
            os.close(fd)
            raise
        with self._lock:
            self._current = followed
            self._next_name = None
        log.debug("WAL follower: following %s", name)
        return followed

    def _pick_now_and_then(self) -> str | None:
        now = time.monotonic()
        if now - self._picked_at < PICK_EVERY:
            return None
        self._picked_at = now
        return self._pick()

    def _pick(self) -> str | None:
        """The segment PostgreSQL writes now: the newest one not yet marked for archiving."""
        try:
            names = [n for n in os.listdir(self._wal_dir) if is_segment_name(n)]
            marked = {n.split(".", 1)[0] for n in os.listdir(self._archive_status)}
        except OSError:
            return None
        stamped: list[tuple[int, str]] = []
        for name in names:
            if name in marked:
                continue
            try:
                stamped.append((os.stat(os.path.join(self._wal_dir, name)).st_mtime_ns, name))
            except OSError:
                continue
        # Newest first; a file preallocated or recycled ahead is newer at times but does not
        # start with its own page address yet.
        for _mtime, name in sorted(stamped, reverse=True):
            path = os.path.join(self._wal_dir, name)
            if valid_segment_file(path, name, self._segment_size(path)):
                return name
        return None

    def _segment_size(self, path: str) -> int:
        """``WALG_PG_WAL_SIZE`` where given; else the size the cluster's segment files state
        (``initdb --wal-segsize``), learnt from the first that states one. Taken as 16 MiB, no
        segment of a 64 MiB cluster was valid and none was ever followed."""
        if self._settings.wal_segment_size_set:
            return self._settings.wal_segment_size
        if self._learnt_size is None:
            # Only a first page at its own address is believed: a recycled file's is older.
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block
                with open(fd, "rb") as handle:
                    st = os.fstat(handle.fileno())
                    head = handle.read(LONG_HEADER.size) if stat.S_ISREG(st.st_mode) else b""
            except OSError:
                head = b""
            self._learnt_size = named_segment_size(head, os.path.basename(path))
        return self._learnt_size or self._settings.wal_segment_size

    def _advance(self, current: _Followed) -> None:
        """Compress every block followed by a valid page header."""
        while current.prepared + BLOCK < current.segment_size and current.page_valid(
            current.prepared + BLOCK
        ):
            self._prepare_block(current, current.prepared, BLOCK)

    def _prepare_block(self, current: _Followed, offset: int, size: int) -> None:
        """Compress and store the block at ``offset``."""
        from walg.streams import lz4frame

        if current.sink is None:
            codec_key = wal_key(current.name, "lz4")
            # Never replacing: the finish looks for an archived object long before the commit,
            # and another writer (a second cluster on the same storage) may store one between.
            current.writer = self._storage.open_write(codec_key, overwrite=False)
            current.opened_at = time.monotonic()
            current.sink = current.writer.__enter__()
            header = lz4frame.frame_header(content_checksum=False)
            current.sink.write(header)
            current.stored += len(header)
        with current.view[offset : offset + size] as block:
            current.append(block)
        current.prepared = offset + size
        current.last_progress = time.monotonic()
        if current.windowed:
            current.release_prepared()

    def _finish(self, current: _Followed) -> None:
        name = current.name
        archived = False
        identity = b""
        try:
            if not self._claim(name):
                raise _Discarded("another upload has it")
            if find_wal_object(self._storage, name) is not None:
                raise _Discarded("already archived; wal-push compares it")
            if not current.same_file():
                raise _Discarded("the file was replaced or is not a whole segment")
            # Taken before the digest check: the marker vouches for the file as verified.
            identity = file_identity(current.path)
            self._verify(current)
            while (offset := current.prepared) < current.segment_size:
                size = min(BLOCK, current.segment_size - offset)
                self._prepare_block(current, offset, size)
            from walg.streams import lz4frame

            assert current.sink is not None
            trailer = lz4frame.digest_trailer(current.prepared, current.digest.digest())
            tail = lz4frame.END_MARK + trailer
            current.sink.write(tail)
            current.stored += len(tail)
            writer, current.writer, current.sink = current.writer, None, None
            assert writer is not None
            try:
                writer.__exit__(None, None, None)
            except StorageError:
                if not self._storage.exists(wal_key(name, "lz4")):
                    raise
                raise _Discarded(
                    "archived meanwhile by another writer; wal-push compares it"
                ) from None
            with self._lock:
                waiting = name in self._results
            if not waiting:
                # The marker answers a wal-push that does not come through this daemon (or
                # comes after a restart). A request already waiting gets the answer directly,
                # and would only remove the marker again.
                markers = status_dir(self._wal_dir)
                os.makedirs(markers, mode=0o700, exist_ok=True)
                write_marker(
                    marker_path(markers, name, self._settings.destination_key),
                    identity,
                    self._storage.local_path(wal_key(name, "lz4")),
                )
            archived = True
            self._backoff.succeeded(name)
            self.stats["finished"] += 1
            log.debug("WAL follower archived %s (%d bytes)", name, current.stored)
        except _Discarded as exc:
            self.stats["discarded"] += 1
            log.debug("WAL follower: %s goes the usual way: %s", name, exc)
            current.abandon(exc)
        except BaseException as exc:
            current.abandon(exc)
            raise
        finally:
            with self._lock:
                self._current = None
                self._requested = None
                if archived:
                    self._archived[name] = identity
                    while len(self._archived) > self._remember:
                        del self._archived[next(iter(self._archived))]
                    segment = Segment.parse(name, current.segment_size)
                    self._next_name = segment.next().name(current.segment_size)
                    self._next_since = time.monotonic()
                done = self._results.get(name)
            if done is not None:
                done.set()
            # After the answer: unmapping 16 MB takes a while. The object was committed or
            # abandoned above.
            self._close(current)

    def _verify(self, current: _Followed) -> None:
        """The complete file must start with exactly the bytes compressed so far."""
        import xxhash

        if current.windowed:
            # Window by window, each let go of once hashed: the same digest, read in parts.
            hasher = xxhash.xxh3_128()
            for start in range(0, current.prepared, current.window):
                end = min(start + current.window, current.prepared)
                with current.view[start:end] as part:
                    hasher.update(part)
                current.release(start, end)
            digest = hasher.digest()
        else:
            with current.view[: current.prepared] as final:
                digest = xxhash.xxh3_128(final).digest()
        if digest != current.digest.digest():
            log.warning(
                "WAL follower: %s changed after it was read; archiving it from scratch",
                current.name,
            )
            raise _Discarded("content changed")

    def _drop(self, exc: BaseException | None) -> None:
        with self._lock:
            current, self._current = self._current, None
            self._next_name = None
            requested, self._requested = self._requested, None
            done = self._results.get(requested) if requested else None
        try:
            if current is not None:
                current.abandon(exc or _Discarded("follower stopped"))
                self._close(current)
        finally:
            # The request waiting for this segment archives it itself (wait_for is False).
            if done is not None:
                done.set()

    def _close(self, followed: _Followed) -> None:
        if not followed.close_file():
            self._unclosed.append(followed)

    def _close_leftovers(self) -> None:
        self._unclosed = [f for f in self._unclosed if not f.close_file()]
