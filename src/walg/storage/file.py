"""Local-folder storage (``WALG_FILE_PREFIX``), laid out as WAL-G's fs storage.

Writes go to ``<path>.tmp.<UTC YYYYMMDDThhmmssZ>-<16 hex>`` (with direct I/O where the
filesystem takes it, see :class:`_UploadFile`), are fsynced, renamed over the final name (or,
for a write that must not replace an object, hard-linked to it) and the directory is fsynced,
so an object is either absent or complete after a crash.
Listings hide those temporary names. Deleting removes parent directories left empty.
"""

from __future__ import annotations

import contextlib
import errno
import io
import mmap
import os
import stat
import time

from walg.core.durable import fsync_path
from walg.core.owner import own_like_folder
from walg.errors import NotAnObject, ObjectNotFound, StorageError
from walg.storage.base import ObjectInfo, Storage, check_key, check_prefix
from walg.storage.mounts import FSTAB, MountCheck

# Paths are plain strings and time stamps are imported late: wal-push loads this module on
# every archive_command call (typing, pathlib and datetime would cost it milliseconds).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from walg.streams.base import Sink, Source

_TRANSIENT_ERRNOS = {errno.EAGAIN, errno.EINTR, errno.EBUSY, errno.ETIMEDOUT}


def temporary_stamp(name: str) -> str | None:
    """The time stamp in a temporary file's name (``.tmp.<YYYYMMDDThhmmssZ>-<16 hex>`` at its
    end), or None if it is no temporary file's: the one rule by which listings leave them out
    and :meth:`FileStorage.remove_temporaries` finds them.

    Matched without ``re``: a ``wal-push`` lists and sweeps, and would otherwise import it
    (with ``enum``) on PostgreSQL's archive path.
    """
    suffix = name[-38:]
    if len(suffix) != 38 or not suffix.startswith(".tmp.") or suffix[21] != "-":
        return None
    stamp = suffix[5:21]
    if not (
        stamp[:8].isdecimal() and stamp[8] == "T" and stamp[9:15].isdecimal() and stamp[15] == "Z"
    ):
        return None
    return stamp if all(c in "0123456789abcdef" for c in suffix[22:]) else None


def _error(exc: OSError, what: str) -> StorageError:
    return StorageError(f"{what}: {exc.strerror or exc}", transient=exc.errno in _TRANSIENT_ERRNOS)


def _make_dirs(path: str, top: str) -> None:
    """Create folder ``path`` and its missing parents below ``top``, each made durable in its
    parent; ``top`` itself is never made.

    The fsync of the folder an object is renamed in makes the object's name durable, not the
    folder's own name in its parent: after a crash, a new ``wal_005/`` could vanish with the
    first WAL files archived in it, which PostgreSQL has since recycled. ``top`` is the folder
    ``WALG_FILE_PREFIX`` names: made here, a missing one (an unmounted volume) would take the
    archive onto the file system beneath, where it is hidden once the volume is mounted.
    """
    if os.path.normpath(path) == top:
        if not os.path.isdir(top):
            raise _missing_root(top)
        return
    # A relative path's top folder has "" for its parent: the working folder.
    parent = os.path.dirname(path) or "."
    try:
        os.mkdir(path)
    except FileExistsError:
        return
    except FileNotFoundError:
        if os.path.normpath(parent) == os.path.normpath(path):
            raise  # the file system root itself is gone: nothing to make it in
        _make_dirs(parent, top)
        try:
            os.mkdir(path)
        except FileExistsError:
            return  # made meanwhile by another writer, who makes it durable
    own_like_folder(path, parent)
    fsync_path(parent, folder=True)


def _missing_root(top: str) -> StorageError:
    """The error for a storage folder that is not a folder here: not there, or not reachable
    by this user (a folder above it it may not enter), which is no reason to create it."""
    try:
        os.stat(top)
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as exc:
        return StorageError(f"storage folder {top} cannot be reached: {exc.strerror or exc}")
    where = top
    if not os.path.isabs(top):
        # The server runs archive_command in its data directory, the DBA's shell elsewhere:
        # "backups does not exist" there contradicts an ls in the shell.
        where = f"{top} ({os.path.abspath(top)}: relative to the working directory)"
    return StorageError(
        f"storage folder {where} does not exist or is not a folder: walg does not create it "
        "(an unmounted volume?); create it or mount its volume"
    )


def _not_an_object(path: str, mode: int) -> NotAnObject:
    kind = {
        stat.S_IFDIR: "a folder",
        stat.S_IFIFO: "a FIFO",
        stat.S_IFSOCK: "a socket",
        stat.S_IFCHR: "a character device",
        stat.S_IFBLK: "a block device",
    }.get(stat.S_IFMT(mode), "not a regular file")
    return NotAnObject(f"{path} is {kind}, not an object's file")


def _dangling_link(path: str) -> NotAnObject:
    return NotAnObject(f"{path} is a symbolic link to a missing file")


class _LimitedReader:
    """Reads an object's file, up to ``length`` bytes; a failing read (EIO) is a
    :class:`StorageError` naming the file."""

    def __init__(self, handle: Source, length: int | None, path: str) -> None:
        self._handle = handle
        self._left = length
        self._path = path

    def read(self, size: int = -1, /) -> bytes:
        if self._left is not None:
            if self._left <= 0:
                return b""
            size = self._left if size < 0 else min(size, self._left)
        try:
            data = self._handle.read(size)
        except OSError as exc:
            raise _error(exc, f"cannot read {self._path}") from None
        if self._left is not None:
            self._left -= len(data)
        return data


WRITEBACK_EVERY = 1 << 20
DIRECT_CHUNK = 1 << 20  # a multiple of every logical block size; the staging buffer's size


class _UploadFile:
    """The temporary file of an upload; every write is whole.

    Direct (``O_DIRECT``, when the filesystem takes it): bytes are gathered in a page-aligned
    buffer and written a whole ``DIRECT_CHUNK`` at a time straight to the disk, and the last,
    shorter piece is written through the page cache after ``O_DIRECT`` is switched off. An
    archived object is not read back soon, and page-cache pages are costly here: on these VMs
    writing and fsyncing 6.4 MB took 15–17 ms of CPU through the page cache when the host had
    to hand the memory back, against 0.5 ms direct. A write the filesystem refuses with EINVAL
    (no direct I/O after all, or a short write that broke the alignment) switches the file to
    buffered writes and goes on from where it was.

    Buffered: writeback of what was written is started every ``WRITEBACK_EVERY`` bytes, so the
    disk works while the producer is still compressing and the fsync that commits the object
    has little left to wait for (``POSIX_FADV_DONTNEED`` starts writeback of dirty pages
    without waiting for it).
    """

    def __init__(self, handle: io.FileIO, stage: mmap.mmap | None = None) -> None:
        self._handle = handle
        self._fd = handle.fileno()
        self._stage = stage  # a DIRECT_CHUNK buffer while the file is written direct
        self._fill = 0
        self._written = 0
        self._kicked = 0

    @property
    def direct(self) -> bool:
        return self._stage is not None

    def write(self, data: bytes | memoryview, /) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        stage = self._stage
        if stage is None:
            self._write_buffered(view)
            return size
        pos = 0
        while pos < size and self._stage is not None:
            take = min(DIRECT_CHUNK - self._fill, size - pos)
            stage[self._fill : self._fill + take] = view[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == DIRECT_CHUNK:
                self._fill = 0
                self._write_all(memoryview(stage))
        if pos < size:  # switched to buffered writes on the way
            self._write_buffered(view[pos:])
        return size

    def finish(self) -> mmap.mmap | None:
        """Write what is staged; returns the staging buffer for reuse."""
        stage, fill = self._stage, self._fill
        if stage is not None and fill:
            self._buffered()
            self._write_all(memoryview(stage)[:fill])
        self._stage, self._fill = None, 0
        return stage

    def fileno(self) -> int:
        return self._fd

    def _buffered(self) -> None:
        import fcntl

        fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~os.O_DIRECT)

    def _write_all(self, view: memoryview) -> None:
        done = 0
        while done < len(view):
            try:
                done += self._handle.write(view[done:])
            except OSError as exc:
                if exc.errno != errno.EINVAL or self._stage is None:
                    raise
                # Not direct after all: the rest goes through the page cache.
                self._buffered()
                self._stage = None
        self._written += len(view)

    def _write_buffered(self, view: memoryview) -> None:
        self._write_all(view)
        if self._written - self._kicked >= WRITEBACK_EVERY:
            os.posix_fadvise(
                self._fd, self._kicked, self._written - self._kicked, os.POSIX_FADV_DONTNEED
            )
            self._kicked = self._written


def _commit_if_absent(tmp: str, path: str, key: str) -> None:
    """Give the written ``tmp`` the name ``path`` unless something has that name already.

    A hard link fails with EEXIST when the name exists, and creates it whole otherwise (no
    window in which another writer's object could be replaced); the temporary name is dropped
    afterwards. Where the filesystem has no hard links, the check and the rename are two steps:
    an object committed by another process between them would still be replaced.
    """
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise StorageError(f"{key} exists already; not replaced") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if os.path.lexists(path):
            raise StorageError(f"{key} exists already; not replaced") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _local(path: str | os.PathLike[str]) -> str:
    text = str(path)
    if text.startswith("file://localhost"):
        text = text[len("file://localhost") :]
    elif text.startswith("file://"):
        text = text[len("file://") :]
    return os.path.normpath(text) if text else "."


class FileStorage(Storage):
    """Objects are the regular files below ``root`` (a symbolic link to one counts as it).

    Anything else found where an object's file would be (a directory, a FIFO, a device, a
    symbolic link whose target is missing) is a :class:`StorageError` for ``stat``,
    ``exists``, ``open_read`` and ``list``, never "not found": it is what an archive on an
    unmounted or half-copied volume looks like, and a restore_command's "not found" ends
    PostgreSQL's recovery. Only a name with nothing at it (in folders that exist) is absent.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        direct_io: bool = True,
        top: str | os.PathLike[str] | None = None,
        fstab: str = FSTAB,
    ) -> None:
        """``direct_io=False`` (``WALG_FILE_DIRECT_IO=false``) writes through the page cache.

        ``top``: the folder that must exist already (default ``root``; the folder of
        ``WALG_FILE_PREFIX`` when ``WALG_STORAGE_PREFIX`` names one inside it). Writes make
        the folders they need below it, never ``top`` itself. ``top`` must not lie on a
        mount point ``fstab`` lists that is not mounted (see :mod:`walg.storage.mounts`).
        """
        self.root = _local(root)
        self._top = self.root if top is None else _local(top)
        self._mounts = MountCheck(fstab)
        self.location = self.root
        self._direct = direct_io  # until the filesystem refuses O_DIRECT
        # Staging buffers of direct writes, reused: fresh pages cost a page fault each.
        self._stages: list[mmap.mmap] = []
        # Temporary files of failed writes that could not be removed then (a folder made
        # unwritable): remove_temporaries tries again whatever their age.
        self._left: set[str] = set()

    def _path(self, key: str) -> str:
        return os.path.join(self.root, check_key(key))

    @contextlib.contextmanager
    def open_write(self, key: str, overwrite: bool = True) -> Iterator[Sink]:
        path = self._path(key)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        tmp = f"{path}.tmp.{stamp}-{os.urandom(8).hex()}"
        parent = os.path.dirname(path)
        # Before every write, not only when the command starts: a daemon runs for months, and
        # its volume may be unmounted under it. The object's folder too: wal_005/ may be the
        # mount point of a volume of its own.
        self._check_mounted(parent)
        try:
            _make_dirs(parent, self._top)
            handle, direct = self._create(tmp)
        except OSError as exc:
            # The folder is what the operator must fix (read-only, another user's, full, a
            # file in its place): named, not the temporary file that was never made.
            if exc.filename in (None, tmp):
                where = f"cannot create a file in {parent}"
            else:
                where = f"cannot create folder {exc.filename}"
            raise _error(exc, f"cannot write {path}: {where}") from None
        try:
            own_like_folder(handle.fileno(), parent)
            stage = None
            if direct:
                try:
                    stage = self._stages.pop()  # uploads run in several threads of a daemon
                except IndexError:
                    stage = mmap.mmap(-1, DIRECT_CHUNK)
            sink = _UploadFile(handle, stage)
            yield sink
            if (stage := sink.finish()) is not None:
                self._stages.append(stage)
            os.fsync(handle.fileno())
            handle.close()
            if overwrite:
                os.replace(tmp, path)
            else:
                _commit_if_absent(tmp, path, key)
            fsync_path(parent, folder=True)
        except BaseException as exc:
            handle.close()
            self._drop_temporary(tmp)
            if isinstance(exc, OSError):
                raise _error(exc, f"cannot write {path}") from None
            raise

    def _drop_temporary(self, tmp: str) -> None:
        """Remove the temporary file of a failed write, or remember it for a later try: the
        error to report is the write's, not this one."""
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        except OSError:
            self._left.add(tmp)

    def remove_temporaries(self, prefix: str, older_than: float) -> int:
        """Remove temporary files in the folder ``prefix`` names (not below it) whose name
        stamp and modification time are both more than ``older_than`` seconds from now (old,
        or dated ahead by a clock since set back), and those of this instance's failed writes.
        Raises :class:`StorageError` after the sweep if some could not be removed (they are
        tried again next time)."""
        folder = os.path.join(self.root, check_prefix(prefix).rpartition("/")[0])
        removed = 0
        failed: list[str] = []
        for tmp in sorted(self._left):
            if os.path.dirname(tmp) != os.path.normpath(folder):
                continue
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            except OSError as exc:
                failed.append(f"{tmp}: {exc.strerror or exc}")
                continue
            else:
                removed += 1
            self._left.discard(tmp)
        # Both clocks: the stamp is when the write began (a copy keeps no mtime from the
        # original), the mtime when it last wrote. Either way from now: one dated that far
        # ahead was written by a clock since set back (by more than a live write outlasts),
        # and would otherwise stay until the clock reached its date.
        now = time.time()
        cutoff, ahead = now - older_than, now + older_than
        stamp_cutoff = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(cutoff))
        stamp_ahead = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ahead))
        try:
            entries = os.scandir(folder)
        except FileNotFoundError:
            return removed
        except OSError as exc:
            raise _error(exc, f"cannot list {folder}") from None
        with entries:
            for entry in entries:
                stamp = temporary_stamp(entry.name)
                if stamp is None or stamp_cutoff <= stamp <= stamp_ahead:
                    continue
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    if cutoff <= entry.stat(follow_symlinks=False).st_mtime <= ahead:
                        continue
                    os.unlink(entry.path)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    failed.append(f"{entry.path}: {exc.strerror or exc}")
                    continue
                removed += 1
        if failed:
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise StorageError(f"cannot remove temporary file {failed[0]}{more}")
        return removed

    def _create(self, tmp: str) -> tuple[io.FileIO, bool]:
        """The new temporary file, and whether it is open for direct I/O."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        if self._direct:
            try:
                return io.FileIO(os.open(tmp, flags | os.O_DIRECT, 0o666), "wb"), True
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._direct = False  # this filesystem has no direct I/O
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        return io.FileIO(os.open(tmp, flags, 0o666), "wb"), False

    def _open_object(self, path: str, key: str) -> int:
        """A blocking read-only descriptor of the regular file at ``path``."""
        try:
            # Non-blocking: opening a FIFO for reading would wait for a writer forever.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise self._absent(path, key) from None
        except OSError as exc:
            # A socket (ENXIO) or a device without its driver cannot be opened at all: named
            # for what it is, as a FIFO is, not as a failing storage.
            with contextlib.suppress(OSError):
                mode = os.stat(path).st_mode
                if not stat.S_ISREG(mode):
                    raise _not_an_object(path, mode) from None
            raise _error(exc, f"cannot open {path}") from None
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise _not_an_object(path, mode)
            os.set_blocking(fd, True)
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, OSError):
                raise _error(exc, f"cannot open {path}") from None
            raise
        return fd

    @contextlib.contextmanager
    def open_read(self, key: str, offset: int = 0, length: int | None = None) -> Iterator[Source]:
        path = self._path(key)
        fd = self._open_object(path, key)
        try:
            handle = io.FileIO(fd, "rb")
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, OSError):
                raise _error(exc, f"cannot open {path}") from None
            raise
        try:
            if offset:
                try:
                    handle.seek(offset)
                except OSError as exc:
                    raise _error(exc, f"cannot read {path}") from None
            yield _LimitedReader(handle, length, path)
        finally:
            handle.close()

    def _stat_object(self, key: str) -> os.stat_result | None:
        """The object's stat result; None if nothing is at ``key``."""
        path = self._path(key)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            absent = self._absent(path, key)
            if isinstance(absent, ObjectNotFound):
                return None
            raise absent from None
        except OSError as exc:
            raise _error(exc, f"cannot stat {path}") from None
        if not stat.S_ISREG(st.st_mode):
            raise _not_an_object(path, st.st_mode)
        return st

    def _absent(self, path: str, key: str) -> StorageError:
        """Why ``path`` was not found: :class:`ObjectNotFound` when nothing is there, else
        (a symbolic link at it or at a folder above it whose target is missing, a missing
        storage folder) a :class:`StorageError` saying what was found."""
        if os.path.islink(path) and not os.path.exists(path):
            return _dangling_link(path)
        if os.path.lexists(path):
            # Stored since the look that found nothing (a wal-push committing the segment
            # backup-push waits for): it was absent at that look.
            return ObjectNotFound(key)
        folder = os.path.dirname(path)
        while True:
            if folder == self._top or len(folder) <= len(self._top):
                if not os.path.isdir(self._top):
                    return _missing_root(self._top)
                return self._unmounted(folder) or ObjectNotFound(key)
            if os.path.lexists(folder):
                if os.path.isdir(folder):
                    # The empty folder an unmounted volume leaves (wal_005/ on its own) is no
                    # empty archive: "not found" would end a restore_command's recovery.
                    return self._unmounted(folder) or ObjectNotFound(key)
                return StorageError(f"{folder} is not a folder (a symbolic link to nothing?)")
            folder = os.path.dirname(folder)

    def make_durable(self, key: str) -> None:
        """fsync the object, its folder, and each folder above it up to the storage folder:
        the writer may have been killed before any of its fsyncs, even before those of the
        folders it made. On a file already on disk each costs a system call."""
        path = self._path(key)
        fd = self._open_object(path, key)
        try:
            os.fsync(fd)
            folder = os.path.dirname(path)
            while True:
                fsync_path(folder, folder=True)
                if len(folder) <= len(self._top):
                    break
                folder = os.path.dirname(folder)
        except OSError as exc:
            raise _error(exc, f"cannot make {path} durable") from None
        finally:
            os.close(fd)

    def local_path(self, key: str) -> str | None:
        # Not resolved: a link or mount point pointed elsewhere later must not find it.
        return os.path.abspath(self._path(key))

    def exists(self, key: str) -> bool:
        # Without stat()'s ObjectInfo: its GoTime would import datetime on the WAL path.
        return self._stat_object(key) is not None

    def check_available(self) -> None:
        # An unmounted backup volume looks like an empty archive to every lookup.
        if not os.path.isdir(self._top):
            raise _missing_root(self._top)
        self._check_mounted()
        if self.root != self._top and os.path.lexists(self.root) and not os.path.isdir(self.root):
            raise StorageError(f"storage folder {self.root} is not a folder")

    def _check_mounted(self, folder: str | None = None) -> None:
        """Raise if ``folder`` (default: the storage folder) lies at or below a mount point
        the system table lists that is not mounted."""
        error = self._unmounted(self._top if folder is None else folder)
        if error is not None:
            raise error

    def _unmounted(self, folder: str) -> StorageError | None:
        point = self._mounts.unmounted(folder)
        if point is None:
            return None
        what = "storage folder" if folder == self._top else "folder"
        return StorageError(
            f"{what} {folder} is on {point}, a mount point {self._mounts.fstab} "
            "lists that is not mounted: its volume is not there (what is beneath it is "
            "another file system's folder); mount it"
        )

    def stat(self, key: str) -> ObjectInfo:
        st = self._stat_object(key)
        if st is None:
            raise ObjectNotFound(key)
        from walg.core.gotime import GoTime

        return ObjectInfo(key, st.st_size, GoTime(st.st_mtime_ns))

    def list(
        self,
        prefix: str,
        recursive: bool = True,
        unlisted: list[str] | None = None,
        *,
        limit: int | None = None,
    ) -> list[ObjectInfo]:
        """Regular files are objects and folders are descended into (links to either are
        followed); any other entry whose name matches is a StorageError, as for ``stat``,
        or with ``unlisted`` left out and described there."""
        folder, _, name_prefix = check_prefix(prefix).rpartition("/")
        from walg.core.gotime import GoTime

        start = os.path.join(self.root, folder) if folder else self.root
        out: list[ObjectInfo] = []
        if limit is not None and limit < 1:
            return out
        self._check_mounted(start)  # an unmounted volume's empty folder lists as empty
        try:
            top = os.scandir(start)
        except NotADirectoryError:
            return out  # a prefix through an object's name
        except FileNotFoundError:
            # A listing of a folder not made yet is empty; of a storage that is not there,
            # or of a folder that is a link to nothing, an error.
            absent = self._absent(os.path.join(start, "x"), "x")
            if isinstance(absent, ObjectNotFound):
                return out
            raise absent from None
        except OSError as exc:
            raise _error(exc, f"cannot list {start}") from None
        # Depth first over open directory iterators: a wal_005/ of 10^5 files is read as it is
        # listed, not first held whole as DirEntry objects beside the result (1 KB each).
        # The folders being read, by identity: a link back to one of them is a loop.
        open_folders: list[tuple[int, int]] = []
        if recursive:
            st = os.stat(start)
            open_folders.append((st.st_dev, st.st_ino))
        stack = [(f"{folder}/" if folder else "", top, name_prefix)]
        try:
            while stack:
                rel, entries, wanted = stack[-1]
                try:
                    entry = next(entries, None)
                except OSError as exc:
                    raise _error(exc, f"cannot list {os.path.join(self.root, rel)}") from None
                if entry is None:
                    stack.pop()[1].close()
                    if recursive:
                        open_folders.pop()
                    continue
                if not entry.name.startswith(wanted):
                    continue
                key = rel + entry.name
                try:
                    if entry.is_dir():
                        if recursive:
                            st = entry.stat()
                            identity = (st.st_dev, st.st_ino)
                            if identity in open_folders:
                                raise StorageError(f"{entry.path} links back to a folder above it")
                            stack.append((key + "/", os.scandir(entry.path), ""))
                            open_folders.append(identity)
                        continue
                    if temporary_stamp(entry.name) is not None:
                        continue
                    st = entry.stat()
                except FileNotFoundError:
                    if os.path.lexists(entry.path):
                        odd = _dangling_link(entry.path)
                        if unlisted is None:
                            raise odd from None
                        unlisted.append(str(odd))
                    continue  # deleted meanwhile
                except OSError as exc:
                    raise _error(exc, f"cannot list {entry.path}") from None
                if not stat.S_ISREG(st.st_mode):
                    if unlisted is None:
                        raise _not_an_object(entry.path, st.st_mode)
                    unlisted.append(str(_not_an_object(entry.path, st.st_mode)))
                    continue
                out.append(ObjectInfo(key, st.st_size, GoTime(st.st_mtime_ns)))
                if len(out) == limit:
                    break
        finally:
            for _, entries, _ in stack:
                entries.close()
        return out

    def delete(self, keys: Iterable[str]) -> None:
        parents: set[str] = set()
        for key in keys:
            path = self._path(key)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise _error(exc, f"cannot delete {path}") from None
            parents.add(os.path.dirname(path))
        for parent in sorted(parents, key=lambda p: p.count(os.sep), reverse=True):
            self._prune(parent)

    def _prune(self, folder: str) -> None:
        root = os.path.realpath(self.root)
        while True:
            real = os.path.realpath(folder)
            if real == root or not real.startswith(root.rstrip(os.sep) + os.sep):
                return
            try:
                os.rmdir(folder)
            except OSError:
                return
            folder = os.path.dirname(folder)
