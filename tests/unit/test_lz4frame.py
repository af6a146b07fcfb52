"""walg.streams.lz4frame: WAL-G's LZ4 frame layout, written by a parallel block compressor."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator

import lz4.block
import lz4.frame
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from lz4frames import (
    WALG_TRAILER_MAGIC,
    Frame,
    assert_no_silent_corruption,
    check_trailer_object,
    parse_frame,
    parse_skippable,
    walg_trailer,
)
from walg.errors import IntegrityError
from walg.ops.pipeline import download, upload
from walg.storage.memory import MemoryStorage
from walg.streams.compression import codec_for_method
from walg.streams.lz4frame import (
    BLOCK_SIZE,
    END_MARK,
    Lz4FrameWriter,
    block_record,
    digest_trailer,
    frame_header,
)

MIB = 1 << 20
THREADS = [1, 2, 4]


def compressible(size: int, seed: int = 7) -> bytes:
    """Page-like data: runs of zeros, repeated text and a little noise (as in test_streams)."""
    rnd = bytes((i * 131 + seed) % 251 for i in range(4096))
    page = (b"\0" * 3000 + b"tuple data " * 50 + rnd[:500]).ljust(8192, b"x")
    return (page * (size // len(page) + 1))[:size]


def lz4_writer(sink: io.BytesIO, threads: int, trailer: bool = False) -> Lz4FrameWriter:
    writer = codec_for_method("lz4").writer(sink, threads=threads, trailer=trailer)
    assert isinstance(writer, Lz4FrameWriter)
    return writer


def compress(
    data: bytes,
    threads: int,
    chunks: list[int] | None = None,
    reuse: bool = False,
    trailer: bool = False,
) -> bytes:
    """Write ``data`` in ``chunks`` (the rest in one go); ``reuse``: from one overwritten buffer,
    as wal-push does, so a writer that kept a view of the caller's memory would corrupt blocks."""
    sink = io.BytesIO()
    writer = lz4_writer(sink, threads, trailer)
    sizes = [*(chunks or []), len(data)]
    scratch = bytearray(max(sizes, default=0))
    pos = 0
    for size in sizes:
        part = data[pos : pos + size]
        pos += len(part)
        if reuse:
            scratch[: len(part)] = part
            writer.write(memoryview(scratch)[: len(part)])
            scratch[: len(part)] = b"\xa5" * len(part)
        else:
            writer.write(part)
    writer.close()
    return sink.getvalue()


def walg_decompress(raw: bytes, read_size: int = -1) -> bytes:
    reader = codec_for_method("lz4").reader(io.BytesIO(raw), "test object")
    if read_size < 0:
        return reader.read()
    out = []
    while chunk := reader.read(read_size):
        out.append(chunk)
    return b"".join(out)


def wal_g_reference(data: bytes) -> bytes:
    """python-lz4's frame compressor with WAL-G's settings: the layout to match."""
    comp = lz4.frame.LZ4FrameCompressor(
        block_size=lz4.frame.BLOCKSIZE_MAX4MB,
        block_linked=False,
        content_checksum=True,
        auto_flush=False,
    )
    return bytes(comp.begin() + comp.compress(data) + comp.flush())


def block_contents(blocks: list[tuple[bool, bytes]]) -> list[bytes]:
    return [
        payload if stored_raw else lz4.block.decompress(payload, uncompressed_size=BLOCK_SIZE)
        for stored_raw, payload in blocks
    ]


def check_frame(raw: bytes, data: bytes) -> Frame:
    frame = parse_frame(raw)
    assert frame.flg == 0x64
    assert frame.bd == 0x70
    assert frame.end == len(raw)  # one frame, nothing after it
    assert frame.checksum == xxhash.xxh32_intdigest(data)
    assert all(len(payload) <= BLOCK_SIZE for _, payload in frame.blocks)
    contents = block_contents(frame.blocks)
    assert [len(c) for c in contents[:-1]] == [BLOCK_SIZE] * (len(contents) - 1)
    assert len(contents) == -(-len(data) // BLOCK_SIZE)
    assert b"".join(contents) == data
    return frame


def lz4_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("walg-lz4")}


@pytest.fixture(autouse=True)
def no_threads_left_behind() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    assert lz4_threads() == set()
    assert set(threading.enumerate()) <= before


# --- round trips ------------------------------------------------------------------------------


CASES = {
    "empty": b"",
    "one byte": b"x",
    "exactly one block": compressible(BLOCK_SIZE),
    "one block minus one": compressible(BLOCK_SIZE - 1),
    "one block plus one": compressible(BLOCK_SIZE + 1),
    "16 MiB": compressible(16 * MIB, seed=3),
    "incompressible": os.urandom(2 * BLOCK_SIZE + 12345),
}


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("case", list(CASES))
def test_round_trip(case: str, threads: int) -> None:
    data = CASES[case]
    for reuse in (False, True):
        raw = compress(data, threads, reuse=reuse)
        check_frame(raw, data)
        assert lz4.frame.decompress(raw) == data
        assert walg_decompress(raw) == data
        assert walg_decompress(raw, 333_333) == data


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("case", ["empty", "one byte", "one block plus one", "incompressible"])
def test_output_is_byte_identical_to_python_lz4s(case: str, threads: int) -> None:
    data = CASES[case]
    assert compress(data, threads, chunks=[1, 100_000, 3 * MIB]) == wal_g_reference(data)


@settings(max_examples=30, deadline=None)
@given(
    size=st.integers(min_value=0, max_value=3 * BLOCK_SIZE + 100),
    chunks=st.lists(
        st.one_of(
            st.integers(min_value=0, max_value=300_000),
            st.integers(min_value=BLOCK_SIZE - 2, max_value=BLOCK_SIZE + 2),
        ),
        max_size=8,
    ),
    threads=st.sampled_from(THREADS),
    reuse=st.booleans(),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_round_trip_random_chunks(
    size: int, chunks: list[int], threads: int, reuse: bool, seed: int
) -> None:
    noise = random.Random(seed).randbytes(size // 3)
    data = (compressible(size - len(noise), seed) + noise)[:size]
    raw = compress(data, threads, chunks=chunks, reuse=reuse)
    check_frame(raw, data)
    assert lz4.frame.decompress(raw) == data
    assert walg_decompress(raw) == data


def test_empty_input_is_a_valid_frame() -> None:
    for threads in THREADS:
        raw = compress(b"", threads)
        assert check_frame(raw, b"").blocks == []
        assert len(raw) == 7 + 4 + 4  # header, end mark, checksum of nothing


# --- layout details ---------------------------------------------------------------------------


@pytest.mark.parametrize("threads", THREADS)
def test_incompressible_block_is_stored_raw(threads: int) -> None:
    noise = os.urandom(BLOCK_SIZE)
    data = compressible(BLOCK_SIZE) + noise + b"tail"
    raw = compress(data, threads)
    frame = check_frame(raw, data)
    assert [stored_raw for stored_raw, _ in frame.blocks] == [False, True, True]  # 4 bytes too
    assert frame.blocks[1][1] == noise
    assert lz4.frame.decompress(raw) == data
    assert walg_decompress(raw) == data


@pytest.mark.parametrize("where", ["content_checksum", "block_payload", "raw_block_payload"])
def test_corruption_is_detected_by_the_walg_reader(where: str) -> None:
    data = compressible(BLOCK_SIZE + 100_000) + os.urandom(200_000)
    raw = bytearray(compress(data, 2))
    positions = {
        "content_checksum": len(raw) - 2,
        "block_payload": 7 + 4 + 5000,
        "raw_block_payload": len(raw) - 8 - 1000,
    }
    raw[positions[where]] ^= 0x5A
    with pytest.raises(IntegrityError) as info:
        walg_decompress(bytes(raw))
    assert "test object" in str(info.value)


def test_frame_assembled_from_the_public_pieces() -> None:
    """frame_header + block_record per block + END_MARK + checksum, with smaller blocks."""
    data = compressible(2 * MIB + 5) + os.urandom(MIB)
    view = memoryview(data)
    parts: list[bytes | memoryview] = [frame_header()]
    for pos in range(0, len(data), MIB):
        parts.extend(block_record(lz4.block, view[pos : pos + MIB]))
    parts += [END_MARK, xxhash.xxh32_intdigest(data).to_bytes(4, "little")]
    raw = b"".join(parts)
    assert [stored_raw for stored_raw, _ in parse_frame(raw).blocks] == [False, False, True, True]
    assert lz4.frame.decompress(raw) == data
    assert walg_decompress(raw) == data


# --- the digest trailer (objects whose checksum walg records nowhere else: WAL) ----------------


def lz4_tool_decompress(raw: bytes) -> bytes:
    """The reference implementation's reader (the ``lz4`` tool, which scripts/setup.sh installs)."""
    done = subprocess.run(["lz4", "-dc"], input=raw, capture_output=True, check=True)
    return done.stdout


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("case", list(CASES))
def test_trailer_round_trip(case: str, threads: int) -> None:
    data = CASES[case]
    raw = compress(data, threads, chunks=[1, 100_000], reuse=True, trailer=True)
    assert check_trailer_object(raw) == data
    frame = parse_frame(raw)
    assert frame.bd == 0x70 and b"".join(block_contents(frame.blocks)) == data
    # The frame's blocks are those of the checksummed layout: only the flag and the end differ.
    reference = parse_frame(compress(data, threads))
    assert frame.blocks == reference.blocks
    assert lz4.frame.decompress(raw) == data
    assert walg_decompress(raw) == data
    assert walg_decompress(raw, 333_333) == data


def test_trailer_objects_are_read_by_the_lz4_tool() -> None:
    data = compressible(BLOCK_SIZE + 12345) + os.urandom(5000)
    raw = compress(data, 2, trailer=True)
    assert lz4_tool_decompress(raw) == data


def test_frame_with_trailer_assembled_from_the_public_pieces() -> None:
    """As the daemon's WAL follower writes it: smaller blocks, then END_MARK and the trailer."""
    data = compressible(MIB + 5) + os.urandom(MIB)
    view = memoryview(data)
    parts: list[bytes | memoryview] = [frame_header(content_checksum=False)]
    for pos in range(0, len(data), 256 << 10):
        parts.extend(block_record(lz4.block, view[pos : pos + (256 << 10)]))
    parts += [END_MARK, digest_trailer(len(data), xxhash.xxh3_128_digest(data))]
    raw = b"".join(parts)
    assert check_trailer_object(raw) == data
    assert walg_decompress(raw) == data


def trailer_object(data: bytes) -> tuple[bytes, int]:
    """An object with a trailer and the offset where its trailer starts."""
    raw = compress(data, 1, trailer=True)
    return raw, parse_frame(raw).end


@pytest.mark.parametrize(
    "where", ["raw_block_payload", "block_payload", "size", "digest", "tag", "length"]
)
def test_trailer_catches_corruption(where: str) -> None:
    # A block stored raw has no structure of its own: only the trailer can see damage there.
    data = compressible(BLOCK_SIZE) + os.urandom(300_000)
    raw, start = trailer_object(data)
    bad = bytearray(raw)
    positions = {
        "raw_block_payload": start - 4 - 1000,
        "block_payload": 7 + 4 + 5000,
        "tag": start + 8 + 2,
        "size": start + 8 + 5 + 1,
        "digest": len(raw) - 3,
        "length": start + 4,
    }
    bad[positions[where]] ^= 0x5A
    with pytest.raises(IntegrityError) as info:
        walg_decompress(bytes(bad))
    assert "test object" in str(info.value)
    if where == "raw_block_payload":
        assert "checksum trailer" in str(info.value)
        assert lz4.frame.decompress(bytes(bad)) != data  # python-lz4 alone cannot tell


def test_no_single_byte_corruption_of_a_trailer_object_passes_silently() -> None:
    data = os.urandom(300) + b"a" * 3000 + os.urandom(300)
    raw, _ = trailer_object(data)
    assert_no_silent_corruption(raw, data, walg_decompress)


def test_trailer_truncated_anywhere_is_an_error() -> None:
    data = compressible(100_000)
    raw, start = trailer_object(data)
    for cut in range(start + 1, len(raw)):
        with pytest.raises(IntegrityError, match="truncated"):
            walg_decompress(raw[:cut])
    # Cut exactly at the frame's end, the content is whole but unchecked (as any frame
    # without content checksum that another tool wrote): it decodes.
    assert walg_decompress(raw[:start]) == data


def test_trailer_must_follow_a_frame_without_checksum() -> None:
    data = b"x" * 1000
    trailer = digest_trailer(len(data), xxhash.xxh3_128_digest(data))
    for raw in (trailer, compress(data, 1) + trailer):  # alone; after a checksummed frame
        with pytest.raises(IntegrityError, match="trailer"):
            walg_decompress(raw)


def test_trailer_checks_the_frame_it_follows_in_a_concatenation() -> None:
    a, b = compressible(70_000, seed=1), os.urandom(5000)
    raw = compress(a, 1, trailer=True) + compress(b, 2, trailer=True)
    assert walg_decompress(raw, 4096) == a + b
    (raw_a, end_a), (raw_b, end_b) = trailer_object(a), trailer_object(b)
    swapped = raw_a[:end_a] + raw_b[end_b:]  # b's trailer after a's frame
    with pytest.raises(IntegrityError, match="trailer says"):
        walg_decompress(swapped)


def foreign_skippable(payload: bytes, magic: int = 0x184D2A50) -> bytes:
    return magic.to_bytes(4, "little") + len(payload).to_bytes(4, "little") + payload


def test_other_skippable_frames_are_skipped() -> None:
    data = compressible(50_000)
    raw, start = trailer_object(data)
    big = os.urandom(3 * MIB)  # larger than one read of the source
    stream = (
        foreign_skippable(b"before")
        + raw[:start]
        + foreign_skippable(big, 0x184D2A5F)
        + raw[start:]
        + foreign_skippable(b"")
        + compress(b"more", 1)
    )
    assert walg_decompress(stream) == data + b"more"
    assert lz4_tool_decompress(stream) == data + b"more"


def test_skippable_frame_claiming_more_than_there_is_is_truncated() -> None:
    raw = compress(b"data" * 100, 1) + foreign_skippable(b"abc")[:4] + b"\xff\xff\xff\xff" + b"abc"
    tracemalloc.start()
    try:
        with pytest.raises(IntegrityError, match="truncated"):
            walg_decompress(raw)
        assert tracemalloc.get_traced_memory()[1] < 4 * MIB
    finally:
        tracemalloc.stop()


def test_walg_magic_with_another_size_is_a_damaged_trailer() -> None:
    raw = compress(b"data" * 100, 1, trailer=True)
    start = parse_frame(raw).end
    assert parse_skippable(raw, start).magic == WALG_TRAILER_MAGIC
    other = raw[:start] + foreign_skippable(b"not walg's", WALG_TRAILER_MAGIC)
    with pytest.raises(IntegrityError, match="damaged checksum trailer"):
        walg_decompress(other)
    assert (
        walg_trailer(400, xxhash.xxh3_128_digest(b"data" * 100))
        == parse_skippable(raw, start).payload
    )


def test_upload_without_stored_hash_writes_the_trailer() -> None:
    storage = MemoryStorage()
    codec = codec_for_method("lz4")
    data = compressible(5 * MIB + 3)
    with upload(storage, "wal.lz4", codec, threads=2, hash_stored=False) as up:
        up.writer.write(data)
    with upload(storage, "part.lz4", codec, threads=2) as up:
        up.writer.write(data)
    assert check_trailer_object(storage.get_bytes("wal.lz4")) == data
    check_frame(storage.get_bytes("part.lz4"), data)  # tar parts keep WAL-G's layout
    with download(storage, "wal.lz4", codec, "wal", hash_stored=False) as down:
        assert down.reader.read() == data


PIERREC_ENV = "WALG_TEST_PIERREC_LZ4_READER"


@pytest.mark.skipif(
    not os.environ.get(PIERREC_ENV),
    reason=f"{PIERREC_ENV} names no build of tests/interop/pierrec_lz4_read (WAL-G's LZ4 reader)",
)
def test_wal_g_lz4_reader_reads_trailer_objects() -> None:
    """WAL-G's reader (pierrec/lz4 v4) decodes walg's WAL objects and ignores the trailer."""
    reader = os.environ[PIERREC_ENV]
    data = compressible(16 * MIB, seed=5)[: 15 * MIB] + os.urandom(MIB)
    view = memoryview(data)
    followed: list[bytes | memoryview] = [frame_header(content_checksum=False)]
    for pos in range(0, len(data), 256 << 10):
        followed.extend(block_record(lz4.block, view[pos : pos + (256 << 10)]))
    followed += [END_MARK, digest_trailer(len(data), xxhash.xxh3_128_digest(data))]
    objects = {
        "wal-push": compress(data, 2, trailer=True),
        "follower": b"".join(followed),
        "tar part": compress(data, 2),
    }
    for what, raw in objects.items():
        done = subprocess.run([reader], input=raw, capture_output=True, check=False)
        assert done.returncode == 0, (what, done.stderr)
        assert done.stdout == data, what
    # The reader checks what it can: a damaged content checksum fails it.
    bad = bytearray(objects["tar part"])
    bad[-2] ^= 0x5A
    done = subprocess.run([reader], input=bytes(bad), capture_output=True, check=False)
    assert done.returncode != 0 and b"checksum" in done.stderr


# --- errors, shutdown, memory -----------------------------------------------------------------


def slow_compress(monkeypatch: pytest.MonkeyPatch, delay: float) -> None:
    """Workers slower than the caller: what bounds memory and ordering must then show."""
    real = lz4.block.compress

    def compress(data: memoryview, **kwargs: object) -> bytes:
        time.sleep(delay)
        return real(data, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(lz4.block, "compress", compress)


def failing_compress(monkeypatch: pytest.MonkeyPatch, fail_on: int) -> list[int]:
    """Makes the ``fail_on``-th block compression (counting from 1) raise."""
    calls: list[int] = []
    real = lz4.block.compress

    def compress(data: memoryview, **kwargs: object) -> bytes:
        calls.append(len(data))
        if len(calls) >= fail_on:
            raise RuntimeError("boom in the compressor")
        return real(data, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(lz4.block, "compress", compress)
    return calls


@pytest.mark.parametrize("threads", THREADS)
def test_worker_error_propagates_and_stops_the_threads(
    threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing_compress(monkeypatch, fail_on=2)
    writer = lz4_writer(io.BytesIO(), threads)
    data = compressible(5 * BLOCK_SIZE)
    with pytest.raises(RuntimeError, match="boom"):
        writer.write(data)
        writer.close()
    assert lz4_threads() == set()
    with pytest.raises(ValueError):
        writer.close()  # never ends a frame that lost blocks
    writer.abort()


@pytest.mark.parametrize("threads", [2, 4])
def test_worker_error_from_write_itself(threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    failing_compress(monkeypatch, fail_on=1)
    writer = lz4_writer(io.BytesIO(), threads)
    with pytest.raises(RuntimeError, match="boom"):
        writer.write(compressible((threads + 2) * BLOCK_SIZE))  # more blocks than may wait
    assert lz4_threads() == set()


@pytest.mark.parametrize("threads", THREADS)
def test_worker_error_from_close(threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    failing_compress(monkeypatch, fail_on=1)
    writer = lz4_writer(io.BytesIO(), threads)
    writer.write(b"less than a block")
    with pytest.raises(RuntimeError, match="boom"):
        writer.close()
    assert lz4_threads() == set()


def test_sink_error_stops_the_threads() -> None:
    class FailingSink:
        def __init__(self) -> None:
            self.writes = 0

        def write(self, data: bytes | memoryview, /) -> int:
            self.writes += 1
            if self.writes > 3:
                raise OSError("disk full")
            return len(data)

    writer = Lz4FrameWriter(FailingSink(), 2)
    with pytest.raises(OSError, match="disk full"):
        for _ in range(8):
            writer.write(compressible(BLOCK_SIZE))
        writer.close()
    assert lz4_threads() == set()


def test_abort_stops_threads_and_refuses_to_close() -> None:
    sink = io.BytesIO()
    writer = lz4_writer(sink, 4)
    writer.write(compressible(3 * BLOCK_SIZE + 5))
    writer.abort()
    assert lz4_threads() == set()
    writer.abort()
    with pytest.raises(ValueError):
        writer.write(b"more")
    with pytest.raises(ValueError):
        writer.close()


@pytest.mark.parametrize("threads", THREADS)
def test_close_is_idempotent_and_leaves_the_sink_open(threads: int) -> None:
    sink = io.BytesIO()
    writer = lz4_writer(sink, threads)
    writer.write(b"abc" * 1000)
    writer.close()
    size = len(sink.getvalue())
    writer.close()
    writer.abort()  # harmless after a successful close
    writer.close()
    assert len(sink.getvalue()) == size
    sink.write(b"")  # still open
    assert lz4.frame.decompress(sink.getvalue()) == b"abc" * 1000
    with pytest.raises(ValueError):
        writer.write(b"late")


class CountingSink:
    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes | memoryview, /) -> int:
        self.size += len(data)
        return len(data)


@pytest.mark.parametrize("as_bytes", [False, True])
def test_memory_stays_bounded(as_bytes: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    slow_compress(monkeypatch, 0.01)
    threads = 2
    chunk = compressible(MIB + 4321)
    scratch = bytearray(chunk)
    total = 64 * MIB
    tracemalloc.start()
    try:
        writer = Lz4FrameWriter(CountingSink(), threads)
        written = 0
        while written < total:
            writer.write(chunk if as_bytes else memoryview(scratch))
            written += len(chunk)
        writer.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert writer.peak_pending <= threads + 1
    assert writer.buffers_allocated <= threads + 1
    assert peak < 40 * MIB


@pytest.mark.parametrize("threads", THREADS)
def test_caller_may_reuse_its_buffer_as_soon_as_write_returns(
    threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_compress(monkeypatch, 0.05)
    data = compressible(2 * BLOCK_SIZE + 100, seed=11)
    scratch = bytearray(data)
    sink = io.BytesIO()
    writer = lz4_writer(sink, threads)
    writer.write(memoryview(scratch))
    scratch[:] = bytes(len(scratch))
    writer.close()
    assert lz4.frame.decompress(sink.getvalue()) == data


def test_blocks_stay_in_order_when_workers_finish_out_of_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = lz4.block.compress
    calls = 0

    def uneven(data: memoryview, **kwargs: object) -> bytes:
        nonlocal calls
        calls += 1
        time.sleep(0.08 if calls == 1 else 0)  # the first block finishes last
        return real(data, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(lz4.block, "compress", uneven)
    data = b"".join(compressible(BLOCK_SIZE, seed=seed) for seed in range(4)) + b"end"
    assert compress(data, 2) == wal_g_reference(data)


def test_threads_start_only_as_needed() -> None:
    sink = io.BytesIO()
    writer = lz4_writer(sink, 4)
    writer.write(b"a small history file")
    assert lz4_threads() == set()  # nothing is compressed before a block is full
    writer.close()
    assert lz4.frame.decompress(sink.getvalue()) == b"a small history file"


def test_module_import_is_cheap() -> None:
    code = (
        "import sys, walg.streams.lz4frame\n"
        "heavy = ('lz4', 'xxhash', 'concurrent.futures', 'threading', 'typing')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


# --- through the upload pipeline --------------------------------------------------------------


def test_upload_with_threads_round_trips() -> None:
    storage = MemoryStorage()
    codec = codec_for_method("lz4")
    data = compressible(9 * MIB + 7) + os.urandom(MIB)
    with upload(storage, "obj.lz4", codec, threads=2) as up:
        up.writer.write(data)
    assert up.result is not None and up.result.raw_size == len(data)
    with download(storage, "obj.lz4", codec, "obj") as down:
        assert down.reader.read() == data
        assert down.stored_checksum() == up.result.stored


def test_failed_upload_stops_the_threads() -> None:
    storage = MemoryStorage()
    with (
        pytest.raises(KeyError, match="caller gave up"),
        upload(storage, "obj.lz4", codec_for_method("lz4"), threads=4) as up,
    ):
        up.writer.write(compressible(3 * BLOCK_SIZE))
        raise KeyError("caller gave up")
    assert lz4_threads() == set()
