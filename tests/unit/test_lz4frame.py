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

from lz4frames import Frame, parse_frame
from walg.errors import IntegrityError
from walg.ops.pipeline import download, upload
from walg.storage.memory import MemoryStorage
from walg.streams.compression import codec_for_method
from walg.streams.lz4frame import (
    BLOCK_SIZE,
    END_MARK,
    Lz4FrameWriter,
    block_record,
    frame_header,
)

MIB = 1 << 20
THREADS = [1, 2, 4]


def compressible(size: int, seed: int = 7) -> bytes:
    """Page-like data: runs of zeros, repeated text and a little noise (as in test_streams)."""
    rnd = bytes((i * 131 + seed) % 251 for i in range(4096))
    page = (b"\0" * 3000 + b"tuple data " * 50 + rnd[:500]).ljust(8192, b"x")
    return (page * (size // len(page) + 1))[:size]


def lz4_writer(sink: io.BytesIO, threads: int) -> Lz4FrameWriter:
    writer = codec_for_method("lz4").writer(sink, threads=threads)
    assert isinstance(writer, Lz4FrameWriter)
    return writer


def compress(
    data: bytes, threads: int, chunks: list[int] | None = None, reuse: bool = False
) -> bytes:
    """Write ``data`` in ``chunks`` (the rest in one go); ``reuse``: from one overwritten buffer,
    as wal-push does, so a writer that kept a view of the caller's memory would corrupt blocks."""
    sink = io.BytesIO()
    writer = lz4_writer(sink, threads)
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
