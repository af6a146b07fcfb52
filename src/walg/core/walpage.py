"""WAL page headers: what PostgreSQL writes at the start of every page of a WAL segment.

Every page starts with ``XLogPageHeaderData`` (magic, info, timeline, the page's own WAL
address, remaining length); the first page of a segment has the long form, which adds the
system identifier, the segment size and the page size (``access/xlog_internal.h``).
"""

from __future__ import annotations

import struct

PAGE_HEADER = struct.Struct("<HHIQ")  # xlp_magic, xlp_info, xlp_tli, xlp_pageaddr
LONG_HEADER = struct.Struct("<HHIQI4xQII")  # + xlp_rem_len, pad, sysid, seg_size, blcksz
XLP_LONG_HEADER = 0x0002
MIN_PAGE_MAGIC = 0xD061  # PostgreSQL 9.3's; every later major has a larger one


def segment_magic(head: bytes, segno: int, segment_size: int) -> int | None:
    """The page magic if ``head`` is the first page header of segment ``segno``, else None.

    A preallocated or recycled file holds zeros or an older segment's pages until PostgreSQL
    writes it, so its header names another address.
    """
    if len(head) < LONG_HEADER.size:
        return None
    magic, info, _tli, pageaddr, _rem, _sysid, seg_size, _blcksz = LONG_HEADER.unpack_from(head)
    if (
        magic < MIN_PAGE_MAGIC
        or not info & XLP_LONG_HEADER
        or pageaddr != segno * segment_size
        or seg_size != segment_size
    ):
        return None
    return int(magic)
