"""Extraction of tar members into a destination directory, refusing anything unsafe.

Names are resolved lexically against the destination: absolute names are taken relative to it
(WAL-G stores ``/base/1/1259``), and ``..`` components, NUL bytes, hard links and device nodes
are refused with :class:`~walg.errors.UnsafeArchiveError`. Symbolic-link members are not created
(WAL-G's own restore does not recreate them meaningfully either); the only links in a restored
data directory are the ``pg_tblspc/<oid>`` links made from the tablespace spec. Files are
created with ``O_NOFOLLOW`` and PostgreSQL's modes (at most 0750 for directories, 0640 for files).
Every file with a recorded checksum is hashed while written and compared; a mismatch names the
file, and one whose header states another size is refused before any of it is written. Errors
of the destination's file system (a full disk) are :class:`~walg.errors.DestinationError`
naming the file. Safe for several threads extracting different tar objects at once.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from walg.core.checksum import Checksum
from walg.core.durable import fsync_path
from walg.core.log import get_logger
from walg.errors import DestinationError, IntegrityError, UnsafeArchiveError
from walg.streams.base import Source
from walg.streams.hashing import new_hasher
from walg.tarball.reader import Member, TarReader

log = get_logger(__name__)

CHUNK = 1 << 20
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


def safe_relative(name: str) -> str:
    """The member's path relative to the destination, or an error if it could escape it."""
    if "\0" in name:
        raise UnsafeArchiveError(f"tar member name contains a NUL byte: {name!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafeArchiveError(f"tar member {name!r} would be written outside the destination")
    return "/".join(parts)


class Extractor:
    """Writes members of tar streams under ``dest`` and checks them against their checksums."""

    def __init__(
        self,
        dest: Path,
        checksum_of: Callable[[str], Checksum | None],
        wanted: Collection[str] | None = None,
        fsync: bool = True,
    ) -> None:
        self.dest = dest
        self._checksum_of = checksum_of
        self._wanted = wanted
        self._syncer = _Syncer() if fsync else None
        self._lock = threading.Lock()
        self.verified: set[str] = set()
        # Every wanted member met in a tar stream, whatever its type (symbolic links included,
        # though they are not created): what a completeness check compares the metadata with.
        self.seen: set[str] = set()
        self.files = 0
        self.bytes = 0
        self.cancelled = threading.Event()

    def extract(self, source: Source, what: str) -> list[str]:
        """Extract one tar stream; returns the member names written."""
        written: list[str] = []
        for member, payload in TarReader(source, what).members():
            if self.cancelled.is_set():
                raise IntegrityError(f"{what}: extraction cancelled")
            rel = safe_relative(member.name)
            if self._wanted is not None and member.name not in self._wanted:
                log.debug("skipping %s: not listed in the backup's files metadata", member.name)
                continue
            with self._lock:
                self.seen.add(member.name)
            if member.is_dir:
                self._directory(rel, member.mode)
            elif member.is_file:
                self._file(member, rel, payload, what)
            elif member.type == b"2":
                log.warning("%s: not recreating symbolic link member %s", what, member.name)
                continue
            else:
                raise UnsafeArchiveError(
                    f"{what}: tar member {member.name!r} has a forbidden type {member.type!r}"
                )
            written.append(member.name)
        return written

    def _makedirs(self, path: Path) -> None:
        """Create the missing directories of ``path`` under ``dest``, each mode 0700."""
        missing = []
        current = path
        while current != self.dest and not current.is_dir():
            missing.append(current)
            current = current.parent
        for folder in reversed(missing):
            try:
                os.mkdir(folder, 0o700)
            except FileExistsError:
                if not folder.is_dir():
                    raise UnsafeArchiveError(
                        f"{folder.relative_to(self.dest)} exists and is not a directory"
                    ) from None
            except OSError as exc:
                if exc.errno in _SHAPE_ERRORS:
                    raise UnsafeArchiveError(
                        f"cannot create folder {folder.relative_to(self.dest)} ({exc.strerror})"
                    ) from None
                raise _unwritable(folder, exc) from None

    def _directory(self, rel: str, mode: int) -> None:
        path = self.dest / rel if rel else self.dest
        self._makedirs(path)
        os.chmod(path, (mode & 0o750) | 0o700)

    def _file(self, member: Member, rel: str, payload: Source, what: str) -> None:
        if not rel:
            raise UnsafeArchiveError(f"{what}: tar member {member.name!r} names the root as a file")
        expected = self._checksum_of(member.name)
        # Before anything is written: the header's size is what the payload will hold, and a
        # member larger than recorded (a corrupt or forged object; LZ4 expands up to 255
        # times) must not fill the destination's disk before the checksum catches it.
        if expected is not None and expected.size != member.size:
            raise IntegrityError(
                f"{what}: tar member {rel} holds {member.size} bytes, but the backup metadata "
                f"records {expected.size}; refusing it before writing anything"
            )
        path = self.dest / rel
        self._makedirs(path.parent)
        try:
            fd = os.open(path, _OPEN_FLAGS, (member.mode & 0o640) | 0o600)
        except OSError as exc:
            if exc.errno in _SHAPE_ERRORS:
                raise UnsafeArchiveError(
                    f"{what}: cannot create {rel} ({exc.strerror}); refusing the member"
                ) from None
            raise _unwritable(path, exc, what) from None
        digest = new_hasher()
        size = 0
        handed_over = False
        try:
            while True:
                chunk = payload.read(CHUNK)
                if not chunk:
                    break
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    try:
                        done = os.write(fd, view)
                    except OSError as exc:
                        raise _unwritable(path, exc, what) from None
                    view = view[done:]
                size += len(chunk)
            if self._syncer is not None:
                self._syncer.submit(fd, rel)
                handed_over = True
        finally:
            if not handed_over:
                os.close(fd)
        if expected is not None and (
            expected.size != size or expected.digest != digest.hexdigest()
        ):
            raise IntegrityError(
                f"restored file {rel} does not match its checksum in the backup metadata "
                f"(got {size} bytes blake3 {digest.hexdigest()[:16]}…, expected "
                f"{expected.size} bytes blake3 {expected.digest[:16]}…; from {what})"
            )
        with self._lock:
            if expected is not None:
                self.verified.add(member.name)
            self.files += 1
            self.bytes += size

    def barrier(self) -> None:
        """Wait until every file written so far is durable."""
        if self._syncer is not None:
            self._syncer.drain()

    def finish(self) -> None:
        """Wait until every file written is durable (fsynced and closed)."""
        if self._syncer is not None:
            self._syncer.finish()

    def abandon(self) -> None:
        """Close what is still open after a failure, without waiting for durability."""
        if self._syncer is not None:
            self._syncer.finish(raise_errors=False)


# What os.open answers when the path has the wrong shape (a link, a directory or a file in
# the way), which only an archive naming a member twice or through a link can cause here.
_SHAPE_ERRORS = frozenset({errno.ELOOP, errno.EISDIR, errno.ENOTDIR, errno.EEXIST})


def _unwritable(path: Path, exc: OSError, what: str = "") -> DestinationError:
    """The destination itself failed (a full disk, a read-only file system): name the file."""
    source = f" (restoring {what})" if what else ""
    return DestinationError(f"cannot write {path}: {exc.strerror or exc}{source}")


class _Syncer:
    """fsyncs and closes written files on background threads.

    The kernel writes a file back while the extraction goes on with the next ones, instead of
    each file's fsync stalling its extracting thread. At most ``MAX_PENDING`` files wait, which
    bounds the open descriptors.
    """

    MAX_PENDING = 64
    THREADS = 2

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=self.THREADS, thread_name_prefix="fsync")
        self._slots = threading.BoundedSemaphore(self.MAX_PENDING)
        self._lock = threading.Lock()
        self._errors: list[str] = []
        self._futures: list[Future[None]] = []

    def submit(self, fd: int, rel: str) -> None:
        self._slots.acquire()
        future = self._pool.submit(self._sync, fd, rel)
        with self._lock:
            self._futures = [f for f in self._futures if not f.done()]
            self._futures.append(future)

    def drain(self) -> None:
        """Wait for every fsync submitted so far; raise if any failed."""
        with self._lock:
            pending = list(self._futures)
        for future in pending:
            future.result()
        if self._errors:
            raise IntegrityError(f"could not make restored files durable: {self._errors[0]}")

    def _sync(self, fd: int, rel: str) -> None:
        try:
            os.fsync(fd)
        except OSError as exc:
            with self._lock:
                self._errors.append(f"{rel}: {exc.strerror}")
        finally:
            os.close(fd)
            self._slots.release()

    def finish(self, raise_errors: bool = True) -> None:
        self._pool.shutdown(wait=True)
        if self._errors and raise_errors:
            raise IntegrityError(f"could not make restored files durable: {self._errors[0]}")


def fsync_tree(root: Path) -> None:
    """fsync every directory under ``root`` so the new entries themselves are durable."""
    for dirpath, _dirs, _files in os.walk(root):
        fsync_path(dirpath, folder=True)
