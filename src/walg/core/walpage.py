"""WAL page headers: what PostgreSQL writes at the start of every page of a WAL segment.

Every page starts with ``XLogPageHeaderData`` (magic, info, timeline, the page's own WAL
address, remaining length); the first page of a segment has the long form, which adds the
system identifier, the segment size and the page size (``access/xlog_internal.h``). Also here:
telling from a file's first page whether it is the segment its name says, and of which cluster
(the system identifier, also the first field of ``global/pg_control``).
"""

from __future__ import annotations

import os
import stat
import struct

from walg.core.lsn import Segment

PAGE_HEADER = struct.Struct("<HHIQ")  # xlp_magic, xlp_info, xlp_tli, xlp_pageaddr
LONG_HEADER = struct.Struct("<HHIQI4xQII")  # + xlp_rem_len, pad, sysid, seg_size, blcksz
XLP_LONG_HEADER = 0x0002
MIN_PAGE_MAGIC = 0xD061  # PostgreSQL 9.3's; every later major has a larger one
# initdb --wal-segsize: a power of two from 1 MiB to 1 GiB.
MIN_SEGMENT_SIZE, MAX_SEGMENT_SIZE = 1 << 20, 1 << 30
SYSTEM_ID = struct.Struct("=Q")  # ControlFileData.system_identifier, in the server's byte order


def segment_magic(
    head: bytes, segno: int, segment_size: int, system_id: int | None = None
) -> int | None:
    """The page magic if ``head`` is the first page header of segment ``segno``, else None.

    A preallocated or recycled file holds zeros or an older segment's pages until PostgreSQL
    writes it, so its header names another address. With ``system_id``, a segment of another
    cluster is refused too: every cluster starts at the same segment names.
    """
    header = _long_header(head)
    if header is None:
        return None
    magic, _info, _tli, pageaddr, _rem, sysid, seg_size, _blcksz = header
    if (
        pageaddr != segno * segment_size
        or seg_size != segment_size
        or (system_id is not None and sysid != system_id)
    ):
        return None
    return int(magic)


def _long_header(head: bytes) -> tuple[int, ...] | None:
    """The fields of a segment's first page header, if ``head`` starts with one."""
    if len(head) < LONG_HEADER.size:
        return None
    fields: tuple[int, ...] = LONG_HEADER.unpack_from(head)
    magic, info = fields[0], fields[1]
    if magic < MIN_PAGE_MAGIC or not info & XLP_LONG_HEADER:
        return None
    return fields


def stated_system_id(head: bytes) -> int | None:
    """The system identifier a segment's first page header states, if ``head`` starts with
    one."""
    header = _long_header(head)
    return int(header[5]) if header is not None else None


def stated_segment_size(head: bytes) -> int | None:
    """The segment size a segment's first page header states, if ``head`` starts with one."""
    header = _long_header(head)
    if header is None:
        return None
    seg_size = header[6]
    if not MIN_SEGMENT_SIZE <= seg_size <= MAX_SEGMENT_SIZE or seg_size & (seg_size - 1):
        return None
    return int(seg_size)


def named_segment_size(head: bytes, name: str) -> int | None:
    """The segment size ``head`` states, if it is the first page of the segment ``name``
    (its first 24 characters: ``.partial`` names too) at that size; else None.

    A corrupt object may state anything: only a header whose page address is that of the
    named segment at the stated size is believed.
    """
    from walg.errors import WalgError

    size = stated_segment_size(head)
    if size is None:
        return None
    try:
        segno = Segment.parse(name[:24], size).segno
    except WalgError:
        return None
    return size if segment_magic(head, segno, size) is not None else None


def file_segment_size(path: str) -> int | None:
    """The segment size the first page header of the file at ``path`` states, if any."""
    try:
        with open(path, "rb") as handle:
            return stated_segment_size(handle.read(LONG_HEADER.size))
    except OSError:
        return None


def cluster_system_id(pgdata: str) -> int | None:
    """The system identifier in ``pgdata/global/pg_control``; None where there is none."""
    try:
        with open(os.path.join(pgdata, "global", "pg_control"), "rb") as handle:
            head = handle.read(SYSTEM_ID.size)
    except OSError:
        return None
    if len(head) < SYSTEM_ID.size:
        return None
    return int(SYSTEM_ID.unpack(head)[0])


def segment_file_magic(
    fd: int, name: str, segment_size: int, system_id: int | None = None
) -> int | None:
    """The page magic if open file ``fd`` is a whole segment that really is ``name``, else None.

    OSError from the file goes to the caller.
    """
    if os.fstat(fd).st_size != segment_size:
        return None
    head = os.pread(fd, LONG_HEADER.size, 0)
    return segment_magic(head, Segment.parse(name, segment_size).segno, segment_size, system_id)


def foreign_segment_problem(fd: int, name: str, system_id: int | None = None) -> str | None:
    """Why open file ``fd`` is, by its own first page, not the segment ``name`` (of cluster
    ``system_id``, where given); None if it is, or if that page is no segment's first page.

    A first page that names another segment (a copy under the wrong name) or another
    cluster's system identifier (two clusters archiving into one folder) is positive proof:
    PostgreSQL reads such a file as the end of the WAL ("unexpected pageaddr", "WAL file is
    from different database system") and, in archive recovery, ends recovery there. A file
    whose first page is that segment's must also be whole. A file that starts with a zeroed
    header is no segment at all. Any other file with no long page header says nothing here.
    OSError from the file goes to the caller.
    """
    head = os.pread(fd, LONG_HEADER.size, 0)
    if len(head) == LONG_HEADER.size and not any(head):
        # What unsynced storage can leave after a crash, and what PostgreSQL takes for the
        # end of the WAL: no segment it writes starts with zeros.
        return "it starts with zeros, where every WAL segment starts with its page header"
    size = stated_segment_size(head)
    if size is None:
        return None
    _magic, _info, tli, pageaddr, _rem, sysid, _seg, _blcksz = LONG_HEADER.unpack_from(head)
    from walg.errors import WalgError

    try:
        segno = Segment.parse(name[:24], size).segno
    except WalgError:
        return f"its first page states {size}-byte segments, of which none is named {name}"
    if pageaddr != segno * size:
        if pageaddr % size:
            return f"its first page is at WAL position {pageaddr >> 32:X}/{pageaddr & 0xFFFFFFFF:X}"
        return f"its first page is that of segment {Segment(tli, pageaddr // size).name(size)}"
    if system_id is not None and sysid != system_id:
        return (
            f"it is another database system's (system identifier {sysid}; this cluster's is "
            f"{system_id})"
        )
    stored = os.fstat(fd).st_size
    if stored != size:
        return f"it holds {stored} bytes, not a whole segment of {size}"
    return None


def valid_segment_file(
    path: str, name: str, segment_size: int | None, system_id: int | None = None
) -> bool:
    """Is ``path`` a complete WAL segment that really is ``name`` (of cluster ``system_id``)?

    ``segment_size`` None: the size its own first page header states.
    """
    from walg.errors import WalgError

    try:
        # Non-blocking: a FIFO at ``path`` would wait for a writer forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        if segment_size is None:
            segment_size = stated_segment_size(os.pread(fd, LONG_HEADER.size, 0))
            if segment_size is None:
                return False
        return segment_file_magic(fd, name, segment_size, system_id) is not None
    except (OSError, WalgError):  # WalgError: a name no segment of that size has
        return False
    finally:
        os.close(fd)
