"""A parser of LZ4 frames for the tests (the LZ4 frame format, section "General Structure"):
what walg writes is checked against the specification, not against walg's own reader."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import xxhash

MAGIC = b"\x04\x22\x4d\x18"


@dataclass
class Frame:
    """One parsed frame: the FLG and BD bytes, the blocks, the content checksum, the end."""

    flg: int
    bd: int
    blocks: list[tuple[bool, bytes]]  # (stored raw, payload)
    checksum: int | None
    end: int


def parse_frame(raw: bytes) -> Frame:
    """One frame per the LZ4 frame spec, restricted to what WAL-G's layout may contain."""
    assert raw[:4] == MAGIC
    flg, bd = raw[4], raw[5]
    assert raw[6] == (xxhash.xxh32_intdigest(raw[4:6]) >> 8) & 0xFF
    assert not flg & 0x08 and not flg & 0x01  # no content size, no dictionary id
    pos = 7
    blocks: list[tuple[bool, bytes]] = []
    while True:
        (word,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if word == 0:
            break
        size = word & 0x7FFFFFFF
        blocks.append((bool(word & 0x80000000), raw[pos : pos + size]))
        assert len(blocks[-1][1]) == size
        pos += size + (4 if flg & 0x10 else 0)
    checksum = None
    if flg & 0x04:
        (checksum,) = struct.unpack_from("<I", raw, pos)
        pos += 4
    return Frame(flg, bd, blocks, checksum, pos)
