"""Local-folder storage (``WALG_FILE_PREFIX``), laid out as WAL-G's fs storage.

Writes go to ``<path>.tmp.<UTC YYYYMMDDThhmmssZ>-<16 hex>``, are fsynced, renamed over the final
name and the directory is fsynced, so an object is either absent or complete after a crash.
Listings hide those temporary names. Deleting removes parent directories left empty.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time

from walg.core.pattern import LazyPattern
from walg.errors import ObjectNotFound, StorageError
from walg.storage.base import ObjectInfo, Storage, check_key, check_prefix

# Paths are plain strings and time stamps are imported late: wal-push loads this module on
# every archive_command call (typing, pathlib and datetime would cost it milliseconds).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import io
    from collections.abc import Iterable, Iterator

    from walg.streams.base import Sink, Source

TEMP_SUFFIX_RE = LazyPattern(r"\.tmp\.\d{8}T\d{6}Z-[0-9a-f]{16}$")
_TRANSIENT_ERRNOS = {errno.EAGAIN, errno.EINTR, errno.EBUSY, errno.ETIMEDOUT}


def _error(exc: OSError, what: str) -> StorageError:
    return StorageError(f"{what}: {exc.strerror or exc}", transient=exc.errno in _TRANSIENT_ERRNOS)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _LimitedReader:
    def __init__(self, handle: Source, length: int | None) -> None:
        self._handle = handle
        self._left = length

    def read(self, size: int = -1, /) -> bytes:
        if self._left is None:
            return self._handle.read(size)
        if self._left <= 0:
            return b""
        size = self._left if size < 0 else min(size, self._left)
        data = self._handle.read(size)
        self._left -= len(data)
        return data


WRITEBACK_EVERY = 1 << 20


class _UploadFile:
    """The temporary file of an upload. Every write is whole, and writeback of what was written
    is started every ``WRITEBACK_EVERY`` bytes, so the disk works while the producer is still
    compressing and the fsync that commits the object has little left to wait for.
    (``POSIX_FADV_DONTNEED`` starts writeback of dirty pages without waiting for it.)"""

    def __init__(self, handle: io.FileIO) -> None:
        self._handle = handle
        self._fd = handle.fileno()
        self._written = 0
        self._kicked = 0

    def write(self, data: bytes | memoryview, /) -> int:
        size = data.nbytes if isinstance(data, memoryview) else len(data)
        done = self._handle.write(data)
        if done != size:  # a short write (a signal, a full disk): finish it or get the error
            view = memoryview(data).cast("B")
            while done < size:
                done += self._handle.write(view[done:])
        self._written += size
        if self._written - self._kicked >= WRITEBACK_EVERY:
            os.posix_fadvise(
                self._fd, self._kicked, self._written - self._kicked, os.POSIX_FADV_DONTNEED
            )
            self._kicked = self._written
        return size

    def fileno(self) -> int:
        return self._fd


class FileStorage(Storage):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        text = str(root)
        if text.startswith("file://localhost"):
            text = text[len("file://localhost") :]
        elif text.startswith("file://"):
            text = text[len("file://") :]
        self.root = os.path.normpath(text) if text else "."
        self.location = self.root

    def _path(self, key: str) -> str:
        return os.path.join(self.root, check_key(key))

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[Sink]:
        path = self._path(key)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        tmp = f"{path}.tmp.{stamp}-{os.urandom(8).hex()}"
        parent = os.path.dirname(path)
        try:
            os.makedirs(parent, exist_ok=True)
            handle = open(tmp, "xb", buffering=0)  # noqa: SIM115 - closed below on every path
        except OSError as exc:
            raise _error(exc, f"cannot create {tmp}") from None
        try:
            yield _UploadFile(handle)
            os.fsync(handle.fileno())
            handle.close()
            os.replace(tmp, path)
            _fsync_dir(parent)
        except BaseException as exc:
            handle.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            if isinstance(exc, OSError):
                raise _error(exc, f"cannot write {path}") from None
            raise

    @contextlib.contextmanager
    def open_read(self, key: str, offset: int = 0, length: int | None = None) -> Iterator[Source]:
        path = self._path(key)
        try:
            handle = open(path, "rb", buffering=0)  # noqa: SIM115
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        except OSError as exc:
            raise _error(exc, f"cannot open {path}") from None
        try:
            if offset:
                handle.seek(offset)
            yield _LimitedReader(handle, length)
        finally:
            handle.close()

    def _stat_object(self, key: str) -> os.stat_result | None:
        path = self._path(key)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _error(exc, f"cannot stat {path}") from None
        return st if stat.S_ISREG(st.st_mode) else None

    def exists(self, key: str) -> bool:
        # Without stat()'s ObjectInfo: its GoTime would import datetime on the WAL path.
        return self._stat_object(key) is not None

    def stat(self, key: str) -> ObjectInfo:
        st = self._stat_object(key)
        if st is None:
            raise ObjectNotFound(key)
        from walg.core.gotime import GoTime

        return ObjectInfo(key, st.st_size, GoTime(st.st_mtime_ns))

    def list(self, prefix: str, recursive: bool = True) -> list[ObjectInfo]:
        folder, _, name_prefix = check_prefix(prefix).rpartition("/")
        from walg.core.gotime import GoTime

        start = os.path.join(self.root, folder) if folder else self.root
        out: list[ObjectInfo] = []
        try:
            entries = list(os.scandir(start))
        except (FileNotFoundError, NotADirectoryError):
            return out
        except OSError as exc:
            raise _error(exc, f"cannot list {start}") from None
        base = f"{folder}/" if folder else ""
        stack = [(base, e) for e in entries if e.name.startswith(name_prefix)]
        while stack:
            rel, entry = stack.pop()
            key = rel + entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if recursive:
                        stack.extend((key + "/", e) for e in os.scandir(entry.path))
                    continue
                if TEMP_SUFFIX_RE.search(entry.name) or not entry.is_file():
                    continue
                st = entry.stat()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _error(exc, f"cannot list {entry.path}") from None
            out.append(ObjectInfo(key, st.st_size, GoTime(st.st_mtime_ns)))
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
