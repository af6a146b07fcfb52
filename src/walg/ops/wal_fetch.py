"""wal-fetch: restore one archived WAL file (the ``restore_command``).

A file already prefetched (and still valid) is moved into place; otherwise it is downloaded to
a temporary name beside the destination and renamed into place only when complete, so
PostgreSQL never sees a partial file. A file that is not archived raises
:class:`~walg.errors.WalNotFound` (exit 74), which PostgreSQL takes as "end of archive".
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from walg.core.lsn import Segment, check_wal_file_name, is_segment_name
from walg.core.walpage import cluster_system_id, foreign_segment_problem
from walg.errors import IntegrityError, RequestAbandoned, WalNotFound
from walg.ops.wal import (
    DestinationFile,
    data_dir_of,
    destination_error,
    download_wal,
    find_wal_object,
    put_in_place,
    remove,
    temporary_beside,
)
from walg.ops.wal_prefetch import prefetch_root, take_prefetched

TYPE_CHECKING = False  # not typing's: see walg.settings
if TYPE_CHECKING:
    from collections.abc import Callable

    from walg.settings import Settings
    from walg.storage.base import Storage


@dataclass(frozen=True)
class WalFetchResult:
    """What a wal-fetch delivered, and whether the prefetch had it ready."""

    name: str
    key: str
    size: int
    from_prefetch: bool


def wal_fetch(
    settings: Settings,
    storage: Storage,
    name: str,
    destination: str,
    use_prefetch: bool = True,
    *,
    commit: Callable[[], bool] | None = None,
) -> WalFetchResult:
    """Put the archived ``name`` at ``destination``.

    ``commit``, if given, is asked just before the file is put in place; when it answers False
    (the daemon's caller gave up), nothing is put in place and :class:`RequestAbandoned` is
    raised: a late rename could replace the file PostgreSQL was given for its next request.
    """
    check_wal_file_name(name)
    dest = os.fspath(destination)
    if use_prefetch:
        root = prefetch_root(settings, dest)
        if take_prefetched(root, name, dest, None, commit):
            return WalFetchResult(name, "", os.stat(dest).st_size, True)
    found = find_wal_object(storage, name)
    if found is None:
        storage.check_available()
        raise WalNotFound(f"WAL file {name} is not in the archive")
    key, ext = found
    tmp = temporary_beside(dest)
    try:
        out = DestinationFile(tmp, dest)
        try:
            size = download_wal(storage, key, ext, out, settings.wal_segment_size)
        except BaseException:
            out.discard()
            raise
        out.close()
        if is_segment_name(name):
            _check_segment(tmp, name, key, dest)
        if commit is not None and not commit():
            raise RequestAbandoned()
        put_in_place(tmp, dest)
    except BaseException:
        # A folder this user may not enter fails the unlink too (EACCES): the error to
        # report is the one above, which names DEST.
        import contextlib

        with contextlib.suppress(OSError):
            remove(tmp)
        raise
    return WalFetchResult(name, key, size, False)


def _check_segment(path: str, name: str, key: str, destination: str) -> None:
    """Refuse the downloaded ``path`` if its first page says it is another segment, or
    another cluster's (that of the data directory above ``destination``, where there is one).

    The object's own checksum cannot tell: a copy under the wrong name, or a segment of
    another cluster archiving into the same folder, is intact. PostgreSQL would read it as the
    end of the WAL and, in archive recovery, promote without the rest; failing instead stops
    recovery (exit 128). The prefetch checks the same before it serves a file.
    """
    pgdata = data_dir_of(destination)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise destination_error(destination, exc) from None
    try:
        problem = foreign_segment_problem(fd, name, cluster_system_id(pgdata))
    except OSError as exc:
        raise destination_error(destination, exc) from None
    finally:
        os.close(fd)
    if problem is not None:
        raise IntegrityError(f"{key} is not WAL segment {name}: {problem}")


def stored_after(storage: Storage, name: str, segment_size: int) -> str | None:
    """The segment after segment ``name`` on its timeline, where storage holds it; else None.

    Asked where ``name`` is not stored. PostgreSQL archives in order, so a stored successor
    means a gap in the archive (an object deleted or lost), not its end: recovery cannot
    replay past it, and without a target PostgreSQL ends recovery and promotes there, leaving
    out everything archived after it. (walg's look-ahead stores later segments while
    PostgreSQL's call for an earlier one is under way: a gap that may yet fill.)
    """
    following = Segment.parse(name, segment_size).next().name(segment_size)
    return following if find_wal_object(storage, following) is not None else None
