"""The storage contract (DESIGN.md §4).

A backend MUST:

* ``open_write(key, overwrite=True)``: return a context manager yielding a writer; the object
  becomes visible under ``key`` only when the block exits without an exception, and replaces any
  object of that name atomically; on error nothing new is visible (temp file removed, multipart
  aborted). With ``overwrite=False`` an object already under ``key`` when the write commits is
  kept as it is: nothing new becomes visible and :class:`StorageError` is raised (atomically:
  a hard link or ``If-None-Match: *``; a backend that cannot do that checks just before
  committing and says so). The caller tells "exists" from other failures with ``exists``.
* ``open_read(key, offset=0, length=None)``: return a context manager yielding a reader of the
  object's bytes (from ``offset``, at most ``length`` bytes); raise :class:`ObjectNotFound` when
  entering if the key does not exist.
* ``stat(key)``: return the object's size and modification time, or raise
  :class:`ObjectNotFound`; a point lookup, never a listing.
* ``list(prefix, recursive=True, limit=None)``: return every object whose key starts with
  ``prefix`` (``recursive=False``: only keys with no ``/`` after the prefix); a missing prefix
  is empty. Order is unspecified. With ``limit``, at most that many of them (which ones is
  unspecified), and the backend stops listing once it has them: "is anything stored here?"
  costs one request, not a walk of a folder of 10^5 objects.
* ``delete(keys)``: remove the objects; keys that do not exist are ignored (idempotent).
* ``remove_temporaries(prefix, older_than)`` (optional): remove what unfinished writes left
  behind under ``prefix`` (a folder: ``wal_005/``), temporary objects last written more than
  ``older_than`` seconds ago and ones this instance failed to remove; a write in flight whose
  temporary object goes fails, it never commits a partial object. Backends whose writes leave
  nothing (an aborted multipart upload is gone) keep the default, which does nothing.
* ``check_available()``: raise :class:`StorageError` when the storage itself (root folder,
  bucket) is missing or unreachable, so that "not found" is never reported for an archive that
  could not be looked at (a restore_command's "not found" ends PostgreSQL's recovery). A
  backend never creates its root folder or bucket: a missing one is this error.

"Not found" (:class:`ObjectNotFound`, an empty listing) means that nothing is stored under the
name. Something there that cannot be read as an object (a local folder's dangling link, a
directory or FIFO at an object's path) is a :class:`StorageError` for ``stat``, ``exists``,
``open_read`` and ``list`` alike, never skipped or reported absent.

Errors other than "not found" are raised as :class:`StorageError` with ``transient`` set when a
retry could help. Retrying lives in :mod:`walg.storage.retry`, never inside a backend.
Keys use ``/`` separators and never start with ``/``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from walg.errors import ObjectTooLarge, StorageError

TYPE_CHECKING = False  # not typing's: see walg.settings
if TYPE_CHECKING:
    from collections.abc import Iterable
    from contextlib import AbstractContextManager

    from walg.core.gotime import GoTime
    from walg.streams.base import Sink, Source


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """An object in storage: its key, size and modification time. Slotted: a whole-archive
    listing holds one per object (a fifth less memory than with a ``__dict__`` each)."""

    key: str
    size: int
    modified: GoTime


class Storage(abc.ABC):
    """Abstract object store rooted at a prefix."""

    #: human-readable location for messages (never contains credentials)
    location: str = ""

    @abc.abstractmethod
    def open_write(self, key: str, overwrite: bool = True) -> AbstractContextManager[Sink]: ...

    @abc.abstractmethod
    def open_read(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AbstractContextManager[Source]: ...

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo: ...

    @abc.abstractmethod
    def list(
        self,
        prefix: str,
        recursive: bool = True,
        unlisted: list[str] | None = None,
        *,
        limit: int | None = None,
    ) -> list[ObjectInfo]:
        """Every object under ``prefix`` (at most ``limit`` of them). An entry that is not an
        object (on a file system: a FIFO, a socket, a device, a link to nothing) MUST fail the
        listing, unless
        ``unlisted`` is given: then it is left out and a line saying what it is is appended
        there, for a caller that can go on without it and warn."""

    @abc.abstractmethod
    def delete(self, keys: Iterable[str]) -> None: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients and connections."""

    def remove_temporaries(self, prefix: str, older_than: float) -> int:
        """Remove leftovers of unfinished writes under ``prefix``; how many were removed."""
        return 0

    def make_durable(self, key: str) -> None:  # noqa: B027 - optional hook
        """Make an object this instance found stored, but did not write, survive a crash of
        the machine that holds it. Another writer may have been killed after its object got
        its name and before that was made durable; success reported on the strength of such
        an object (PostgreSQL then recycles its segment) must not rest on the page cache.
        Stores that acknowledge only durable writes do nothing."""

    @abc.abstractmethod
    def check_available(self) -> None: ...

    # Convenience built on the contract.

    def put_bytes(self, key: str, data: bytes) -> None:
        with self.open_write(key) as sink:
            sink.write(data)

    def get_bytes(self, key: str, limit: int = 64 << 20) -> bytes:
        """Read a small object whole (metadata documents); refuses anything over ``limit``.
        Read in pieces: a large limit allocates nothing up front."""
        chunks = []
        total = 0
        with self.open_read(key) as source:
            while total <= limit:
                data = source.read(min(1 << 20, limit + 1 - total))
                if not data:
                    break
                chunks.append(data)
                total += len(data)
        if total > limit:
            raise ObjectTooLarge(f"{key} is larger than {limit} bytes; refusing to load it whole")
        return b"".join(chunks)

    def local_path(self, key: str) -> str | None:
        """The absolute path of ``key``'s object where objects are files on this machine, for
        records that vouch for an object (a look-ahead marker checks it is still there, so a
        storage folder swapped under the same name is noticed); None elsewhere."""
        return None

    def exists(self, key: str) -> bool:
        from walg.errors import ObjectNotFound

        try:
            self.stat(key)
        except ObjectNotFound:
            return False
        return True


def check_key(key: str) -> str:
    """Reject keys that could escape the storage root or are not normalised."""
    if not key or key.startswith("/") or "\\" in key or "\0" in key:
        raise StorageError(f"invalid storage key {key!r}")
    if any(p in ("", ".", "..") for p in key.split("/")):
        raise StorageError(f"invalid storage key {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    """A listing prefix: like a key, but empty and a trailing ``/`` are allowed."""
    if prefix and (prefix.startswith("/") or not check_key(prefix.rstrip("/") or "x")):
        raise StorageError(f"invalid storage prefix {prefix!r}")
    return prefix
