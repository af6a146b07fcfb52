"""Whether "not in the archive" is the archive's end or a storage setting that points nowhere.

A daemon started again with a wrong or empty prefix (a typo, a config file not read) answers
every fetch of a standby or a restore "not in the archive", and PostgreSQL waits on, saying
nothing: a standby takes that for the end of the archive, and the clients print nothing for
it. :func:`archive_problem` looks for what proves the prefix cannot be the one this server's
WAL went to: nothing stored at all, or no history file for the timeline the server asks WAL
of (every timeline after the first starts by archiving one). It does not prove a prefix
right: another cluster's archive on timeline 1 passes.

It costs two listings that stop at the first object (of the backups' folder, and of the WAL
folder where there are no backups), and at most one point lookup; the caller rate-limits it.
"""

from __future__ import annotations

from walg.core.lsn import Segment, is_segment_name
from walg.core.naming import BASEBACKUPS, WAL
from walg.ops.wal import find_wal_object
from walg.storage.base import Storage


def archive_problem(storage: Storage, asked: str) -> str | None:
    """Why the archive cannot hold the WAL file ``asked``, that was not found; None when it
    may well be the archive's end. Storage errors go to the caller; an entry that is not an
    object (a FIFO on local-folder storage) is no backup and no WAL, as for the listings."""
    odd: list[str] = []
    if not storage.list(BASEBACKUPS, recursive=False, unlisted=odd, limit=1) and not storage.list(
        WAL, recursive=False, unlisted=odd, limit=1
    ):
        return f"{storage.location} holds no backups and no WAL at all"
    if is_segment_name(asked):
        timeline = Segment.parse(asked).timeline
        history = f"{timeline:08X}.history"
        if timeline > 1 and find_wal_object(storage, history) is None:
            return (
                f"{storage.location} holds no {history}, which every server on timeline "
                f"{timeline} archived, and the server asks for WAL of timeline {timeline}"
            )
    return None
