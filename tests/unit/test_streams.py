"""walg.streams: the lz4 codec (as WAL-G's Go writer frames it), identity codec, hashing."""

from __future__ import annotations

import io
import os

import blake3
import lz4.frame
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lz4frames import assert_no_silent_corruption, parse_frame
from walg.errors import ConfigError, IntegrityError
from walg.streams.base import read_exactly
from walg.streams.compression import (
    CODECS,
    FETCH_PROBE_ORDER,
    codec_for_extension,
    codec_for_method,
    known_extensions,
)
from walg.streams.hashing import HashingReader, HashingWriter

LZ4_MAGIC = bytes.fromhex("04224D18")
MIB = 1 << 20


def compress(data: bytes, chunks: list[int] | None = None, method: str = "lz4") -> bytes:
    sink = io.BytesIO()
    writer = codec_for_method(method).writer(sink)
    if chunks is None:
        writer.write(data)
    else:
        pos = 0
        for size in chunks:
            writer.write(data[pos : pos + size])
            pos += size
        writer.write(data[pos:])
    writer.close()
    return sink.getvalue()


def decompress(raw: bytes, read_size: int = -1, method: str = "lz4") -> bytes:
    reader = codec_for_method(method).reader(io.BytesIO(raw), "test object")
    if read_size < 0:
        return reader.read()
    out = []
    while chunk := reader.read(read_size):
        assert len(chunk) <= read_size
        out.append(chunk)
    return b"".join(out)


def compressible(size: int, seed: int = 7) -> bytes:
    """Page-like data: runs of zeros, repeated text and a little noise."""
    rnd = bytes((i * 131 + seed) % 251 for i in range(4096))
    page = (b"\0" * 3000 + b"tuple data " * 50 + rnd[:500]).ljust(8192, b"x")
    return (page * (size // len(page) + 1))[:size]


# --- lz4 round trips --------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(max_size=70_000),
    chunks=st.lists(st.integers(min_value=0, max_value=20_000), max_size=6),
    read_size=st.sampled_from([-1, 1, 7, 4096, MIB]),
)
def test_lz4_round_trip_random_bytes(data: bytes, chunks: list[int], read_size: int) -> None:
    raw = compress(data, chunks)
    assert decompress(raw, read_size) == data
    assert lz4.frame.decompress(raw) == data


def test_lz4_round_trip_multi_megabyte_compressible_data() -> None:
    data = compressible(9 * MIB + 12345)
    raw = compress(data, [MIB] * 5 + [3, 100_000])
    assert len(raw) < len(data) // 4
    assert decompress(raw, 1 << 16) == data
    assert lz4.frame.decompress(raw) == data
    frame = parse_frame(raw)
    assert len(frame.blocks) >= 3
    assert all(len(payload) <= 4 * MIB for _, payload in frame.blocks)


def test_lz4_incompressible_data_round_trips() -> None:
    data = os.urandom(5 * MIB)
    raw = compress(data)
    assert lz4.frame.decompress(raw) == data
    assert decompress(raw) == data


def test_lz4_empty_input_is_still_a_valid_frame() -> None:
    raw = compress(b"")
    assert raw.startswith(LZ4_MAGIC)
    assert lz4.frame.decompress(raw) == b""
    assert decompress(raw) == b""


def test_lz4_output_is_one_frame_with_wal_g_descriptor() -> None:
    data = compressible(6 * MIB)
    raw = compress(data)
    assert raw[:4] == LZ4_MAGIC
    frame = parse_frame(raw)  # also: the header checksum, no content size, no dictionary id
    assert frame.flg >> 6 == 1  # version
    assert frame.flg & 0x20  # B.Indep: independent blocks, as pierrec/lz4
    assert not frame.flg & 0x10  # no block checksums
    assert not frame.flg & 0x08  # no content size
    assert frame.flg & 0x04  # content checksum
    assert not frame.flg & 0x01  # no dictionary id
    assert frame.flg & 0x02 == 0  # reserved
    assert (frame.bd >> 4) & 0x7 == 7  # 7 = 4 MiB maximum block size
    assert frame.bd & 0x8F == 0  # reserved
    assert frame.end == len(raw)  # exactly one frame, nothing after it
    assert raw[4] == 0x64 and raw[5] == 0x70


def test_lz4_writer_close_is_idempotent_and_leaves_sink_open() -> None:
    sink = io.BytesIO()
    writer = codec_for_method("lz4").writer(sink)
    writer.write(b"abc" * 1000)
    writer.close()
    size = len(sink.getvalue())
    writer.close()
    assert len(sink.getvalue()) == size
    sink.write(b"")  # still open
    assert lz4.frame.decompress(sink.getvalue()) == b"abc" * 1000


def test_lz4_reader_accepts_frames_written_by_the_lz4_library_defaults() -> None:
    data = compressible(300_000)
    raw = lz4.frame.compress(data)  # linked blocks, 64 KiB, no content checksum
    assert decompress(raw) == data


def test_concatenated_frames_decode_as_one_stream() -> None:
    a, b, c = b"first " * 1000, os.urandom(70_000), compressible(200_000)
    raw = compress(a) + compress(b) + lz4.frame.compress(c)
    assert decompress(raw) == a + b + c
    assert decompress(raw, 333) == a + b + c


def test_concatenated_frame_with_empty_frame_in_the_middle() -> None:
    raw = compress(b"x" * 10) + compress(b"") + compress(b"y" * 10)
    assert decompress(raw) == b"x" * 10 + b"y" * 10


def small_frame() -> tuple[bytes, bytes]:
    data = os.urandom(300) + b"a" * 3000 + os.urandom(300)
    return data, compress(data)


def test_truncated_stream_raises_integrity_error_at_every_cut() -> None:
    _, raw = small_frame()
    for cut in range(1, len(raw)):
        with pytest.raises(IntegrityError) as info:
            decompress(raw[:cut])
        assert "test object" in str(info.value)


def test_truncated_second_frame_raises() -> None:
    raw = compress(b"one" * 100) + compress(b"two" * 100)
    with pytest.raises(IntegrityError):
        decompress(raw[:-3])


def test_zero_byte_lz4_object_is_truncated() -> None:
    with pytest.raises(IntegrityError):
        decompress(b"")


@pytest.mark.parametrize(
    "where",
    ["flg", "bd", "header_checksum", "first_block_size", "content_checksum", "block_payload"],
)
def test_corrupted_byte_raises_integrity_error(where: str) -> None:
    data = compressible(100_000)
    raw = bytearray(compress(data))
    positions = {
        "flg": 4,
        "bd": 5,
        "header_checksum": 6,
        "first_block_size": 8,
        "content_checksum": len(raw) - 2,
        "block_payload": 200,
    }
    raw[positions[where]] ^= 0x5A
    with pytest.raises(IntegrityError) as info:
        decompress(bytes(raw))
    assert "test object" in str(info.value)


def test_no_single_byte_corruption_passes_silently() -> None:
    """Any flipped byte either raises IntegrityError or (harmlessly) decodes to the same data."""
    data, raw = small_frame()
    assert_no_silent_corruption(raw, data, decompress)


def test_garbage_after_frame_raises() -> None:
    raw = compress(b"data" * 10) + b"not an lz4 frame at all"
    with pytest.raises(IntegrityError):
        decompress(raw)


def test_not_lz4_at_all_raises() -> None:
    with pytest.raises(IntegrityError):
        decompress(b"\x28\xb5\x2f\xfd this is zstd's magic, not lz4's")


# --- identity codec and codec lookup ----------------------------------------------------------


@given(data=st.binary(max_size=5000), read_size=st.sampled_from([-1, 1, 100]))
def test_none_codec_is_identity(data: bytes, read_size: int) -> None:
    raw = compress(data, method="none")
    assert raw == data
    assert decompress(raw, read_size, method="none") == data


def test_codec_table() -> None:
    assert codec_for_method("lz4").extension == "lz4"
    assert codec_for_method("none").extension == ""
    assert CODECS["lz4"].name == "lz4"
    assert codec_for_extension("lz4") is CODECS["lz4"]
    assert codec_for_extension("") is CODECS["none"]
    assert codec_for_extension("tar") is CODECS["none"]
    assert known_extensions() == ("lz4", "")
    assert FETCH_PROBE_ORDER == ("lz4", "lzma", "gz", "", "br", "lzo", "zst")


@pytest.mark.parametrize("ext", ["zst", "br", "lzma", "lzo", "gz", "bz2", "LZ4"])
def test_unknown_extension_is_an_error(ext: str) -> None:
    with pytest.raises(IntegrityError) as info:
        codec_for_extension(ext)
    assert ext in str(info.value)


@pytest.mark.parametrize("method", ["zstd", "brotli", "lzma", "gzip"])
def test_unsupported_method_is_a_config_error(method: str) -> None:
    with pytest.raises(ConfigError) as info:
        codec_for_method(method)
    assert "WALG_COMPRESSION_METHOD" in str(info.value)


# --- hashing ----------------------------------------------------------------------------------


@given(parts=st.lists(st.binary(max_size=3000), max_size=8))
def test_hashing_writer(parts: list[bytes]) -> None:
    sink = io.BytesIO()
    writer = HashingWriter(sink)
    for part in parts:
        assert writer.write(part) == len(part)
    whole = b"".join(parts)
    assert sink.getvalue() == whole
    assert writer.size == len(whole)
    checksum = writer.checksum()
    assert checksum.size == len(whole)
    assert checksum.digest == blake3.blake3(whole).hexdigest()


def test_hashing_writer_accepts_memoryview() -> None:
    sink = io.BytesIO()
    writer = HashingWriter(sink)
    writer.write(memoryview(b"abcdef")[1:4])
    assert sink.getvalue() == b"bcd"
    assert writer.checksum().digest == blake3.blake3(b"bcd").hexdigest()


@given(data=st.binary(max_size=20_000), read_size=st.integers(min_value=1, max_value=5000))
def test_hashing_reader(data: bytes, read_size: int) -> None:
    reader = HashingReader(io.BytesIO(data))
    got = bytearray()
    while chunk := reader.read(read_size):
        got += chunk
    assert bytes(got) == data
    assert reader.checksum().size == len(data)
    assert reader.checksum().digest == blake3.blake3(data).hexdigest()


def test_hashing_reader_drain_and_partial_reads() -> None:
    data = os.urandom(3 * MIB + 5)
    reader = HashingReader(io.BytesIO(data))
    assert reader.read(10) == data[:10]
    assert reader.size == 10
    reader.drain(chunk=1 << 16)
    assert reader.size == len(data)
    assert reader.checksum().digest == blake3.blake3(data).hexdigest()


def test_hashing_reader_over_the_decompressor_hashes_raw_bytes() -> None:
    data = compressible(500_000)
    raw = compress(data)
    stored = HashingReader(io.BytesIO(raw))
    out = codec_for_extension("lz4").reader(stored, "x").read()
    assert out == data
    assert stored.checksum().digest == blake3.blake3(raw).hexdigest()
    assert stored.size == len(raw)


def test_read_exactly() -> None:
    class Dribble:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def read(self, size: int = -1, /) -> bytes:
            chunk, self.data = self.data[:3], self.data[3:]
            return chunk[: size if size >= 0 else None]

    assert read_exactly(Dribble(b"0123456789"), 8) == b"01234567"
    assert read_exactly(Dribble(b"0123"), 8) == b"0123"
    assert read_exactly(Dribble(b""), 8) == b""
