"""A parser of LZ4 frames for the tests (the LZ4 frame format, section "General Structure"):
what walg writes is checked against the specification, not against walg's own reader."""

from __future__ import annotations

import struct
from collections.abc import Callable
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


SKIPPABLE_MAGICS = range(0x184D2A50, 0x184D2A60)
WALG_TRAILER_MAGIC = 0x184D2A5A


@dataclass
class Skippable:
    """One skippable frame: its magic number, its payload, where it ends."""

    magic: int
    payload: bytes
    end: int


def parse_skippable(raw: bytes, pos: int) -> Skippable:
    magic, size = struct.unpack_from("<II", raw, pos)
    assert magic in SKIPPABLE_MAGICS
    payload = raw[pos + 8 : pos + 8 + size]
    assert len(payload) == size
    return Skippable(magic, payload, pos + 8 + size)


def walg_trailer(size: int, content_xxh3_128: bytes) -> bytes:
    """The payload walg's digest trailer must have (docs/FORMAT.md)."""
    return b"WALG\x01" + size.to_bytes(8, "little") + content_xxh3_128


def check_trailer_object(raw: bytes) -> bytes:
    """A WAL object as walg writes it: one frame without content checksum, then walg's
    trailer, then nothing; returns the content, decoded by python-lz4."""
    import lz4.frame

    frame = parse_frame(raw)
    assert frame.flg == 0x60 and frame.checksum is None
    trailer = parse_skippable(raw, frame.end)
    assert trailer.magic == WALG_TRAILER_MAGIC and trailer.end == len(raw)
    content: bytes = lz4.frame.decompress(raw[: frame.end])
    assert trailer.payload == walg_trailer(len(content), xxhash.xxh3_128_digest(content))
    return content


def assert_no_silent_corruption(raw: bytes, data: bytes, decode: Callable[[bytes], bytes]) -> None:
    """Flip bits of every byte of ``raw``: ``decode`` must raise walg's IntegrityError or
    (harmlessly) return ``data`` unchanged."""
    from walg.errors import IntegrityError

    for pos in range(len(raw)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(raw)
            bad[pos] ^= mask
            try:
                out = decode(bytes(bad))
            except IntegrityError:
                continue
            assert out == data, f"byte {pos} ^ {mask:#x} changed the data without an error"
