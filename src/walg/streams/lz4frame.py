"""A parallel writer for WAL-G's LZ4 frame layout, and walg's digest trailer.

This module owns the frame bytes (header, block size words, end mark, content checksum) of one
layout: version 1, independent 4 MiB blocks, content checksum, no block checksums, no content
size — what WAL-G's Go writer and python-lz4's ``LZ4FrameCompressor`` with those settings write.
:class:`Lz4FrameWriter` compresses blocks on a few worker threads while the caller's thread
computes the content checksum; blocks reach the sink in input order. The frame pieces
(:func:`frame_header`, :func:`block_record`, :data:`END_MARK`, :func:`digest_trailer`) are
public for code that assembles such a frame block by block itself.

The digest trailer replaces the content checksum on objects whose checksum walg records
nowhere else (WAL files): the frame's checksum flag is off and a skippable frame follows it,
holding the size and XXH3-128 of the content. XXH32, the frame's own checksum, costs about as
much CPU as compressing a WAL segment; XXH3 a sixth of that. Skippable frames are part of the
LZ4 frame format: WAL-G's reader (pierrec/lz4 v4) stops at the end of the first frame, the
``lz4`` tool and liblz4 skip them.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: see walg.settings

if TYPE_CHECKING:
    import threading
    from typing import Any

    from walg.streams.base import Sink

MAGIC = b"\x04\x22\x4d\x18"
FLG = 0x64  # version 01, independent blocks, content checksum
CONTENT_CHECKSUM_FLAG = 0x04
BD = 0x70  # maximum block size code 7: 4 MiB
BLOCK_SIZE = 4 << 20
RAW_BLOCK = 0x80000000
END_MARK = b"\0\0\0\0"
# Skippable frames have the magic numbers 0x184D2A50-0x184D2A5F; walg's trailer uses one.
SKIPPABLE_MAGIC_MASK = 0xFFFFFFF0
SKIPPABLE_MAGIC = 0x184D2A50
TRAILER_MAGIC = (0x184D2A5A).to_bytes(4, "little")
TRAILER_TAG = b"WALG\x01"  # then the content size (8 bytes, little-endian), then the digest
TRAILER_PAYLOAD = len(TRAILER_TAG) + 8 + 16
TRAILER_SIZE = 8 + TRAILER_PAYLOAD


def frame_header(content_checksum: bool = True) -> bytes:
    import xxhash

    flg = FLG if content_checksum else FLG & ~CONTENT_CHECKSUM_FLAG
    descriptor = bytes((flg, BD))
    return MAGIC + descriptor + bytes(((xxhash.xxh32_intdigest(descriptor) >> 8) & 0xFF,))


def digest_trailer(size: int, xxh3_128: bytes) -> bytes:
    """The skippable frame that follows a frame without content checksum: ``size`` bytes of
    content whose XXH3-128 (canonical, big-endian) is ``xxh3_128``."""
    payload = TRAILER_TAG + size.to_bytes(8, "little") + xxh3_128
    return TRAILER_MAGIC + len(payload).to_bytes(4, "little") + payload


def parse_trailer(frame: bytes) -> tuple[int, bytes] | None:
    """(size, digest) from a whole skippable frame if it is walg's trailer, else None."""
    payload = frame[8:]
    if (
        frame[:4] != TRAILER_MAGIC
        or len(payload) != TRAILER_PAYLOAD
        or int.from_bytes(frame[4:8], "little") != TRAILER_PAYLOAD
        or not payload.startswith(TRAILER_TAG)
    ):
        return None
    tag = len(TRAILER_TAG)
    return int.from_bytes(payload[tag : tag + 8], "little"), payload[tag + 8 :]


def block_record(lz4_block: Any, block: memoryview) -> tuple[bytes, bytes | memoryview]:
    """One data block as the frame holds it: its size word, then its payload (``lz4.block``
    is passed in so that callers pay its import once)."""
    return _record(block, _compress_block(lz4_block, block))


def _compress_block(lz4_block: Any, block: memoryview) -> bytes | None:
    """The compressed block, or None when it must be stored raw (it did not get smaller)."""
    out: bytes = lz4_block.compress(block, store_size=False)
    return out if len(out) < len(block) else None


def _record(block: memoryview, compressed: bytes | None) -> tuple[bytes, bytes | memoryview]:
    if compressed is None:
        return (len(block) | RAW_BLOCK).to_bytes(4, "little"), block
    return len(compressed).to_bytes(4, "little"), compressed


def _stable(view: memoryview) -> bool:
    import mmap

    return isinstance(view.obj, bytes) or (view.readonly and isinstance(view.obj, mmap.mmap))


class _Job:
    __slots__ = ("block", "buffer", "compressed", "done", "error", "finished")

    def __init__(self, block: memoryview, buffer: memoryview | None) -> None:
        self.block = block
        self.buffer = buffer  # ours to reuse once the block is written; None: caller's memory
        self.compressed: bytes | None = None
        self.error: BaseException | None = None
        self.done = False
        self.finished: threading.Lock | None = None  # held until the job is done


class _Workers:
    """A minimal FIFO thread pool.

    Not concurrent.futures: on a command that has not loaded :mod:`logging` its import costs
    about as much as the parallel compression saves on a 16 MB WAL segment. Jobs travel through
    a C-level queue and each signals completion by releasing its own lock, so a handoff costs
    no Python-level condition variables.
    """

    def __init__(self, size: int, lz4_block: Any) -> None:
        import threading

        try:
            # The C queue itself: the queue module around it imports heapq and its own
            # classes, about 1 ms of a cold wal-push.
            from _queue import SimpleQueue
        except ImportError:  # pragma: no cover - interpreters without it
            from queue import SimpleQueue

        self._threading = threading
        self._size = size
        self._lz4 = lz4_block
        self._queue: SimpleQueue[_Job | None] = SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._stopping = False

    def submit(self, job: _Job, unfinished: int) -> None:
        job.finished = self._threading.Lock()
        job.finished.acquire()
        # Threads start on demand: a small file needs no more threads than it has blocks.
        if len(self._threads) < min(self._size, unfinished):
            thread = self._threading.Thread(
                target=self._run, name=f"walg-lz4-{len(self._threads)}", daemon=True
            )
            try:
                thread.start()
            except RuntimeError:
                # No thread to spare (the user's process limit): the threads there are do the
                # work, or with none this one does, rather than fail an archive_command.
                if not self._threads:
                    self._work(job)
                    return
            else:
                self._threads.append(thread)
        self._queue.put(job)

    def wait(self, job: _Job) -> None:
        if not job.done:
            assert job.finished is not None
            job.finished.acquire()

    def stop(self) -> None:
        """Skip queued jobs, let running ones finish and join every thread."""
        self._stopping = True
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        self._threads.clear()

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            self._work(job)

    def _work(self, job: _Job) -> None:
        if not self._stopping:
            try:
                job.compressed = _compress_block(self._lz4, job.block)
            except BaseException as exc:
                job.error = exc
        job.done = True
        assert job.finished is not None
        job.finished.release()


class Lz4FrameWriter:
    """Writes one LZ4 frame to ``sink``; ``threads`` > 1 compresses blocks concurrently.

    With ``trailer`` the frame has no content checksum and the digest trailer follows it.

    At most ``threads`` blocks wait for the workers while one more is being filled, so memory
    stays near ``threads + 1`` raw 4 MiB blocks plus their compressed copies. An exception from
    ``write`` or ``close`` aborts the writer. A caller that gives up must call ``abort()`` (it
    stops the threads); ``close()`` then refuses to end the truncated frame.
    """

    def __init__(self, sink: Sink, threads: int = 1, trailer: bool = False) -> None:
        import lz4.block
        import xxhash

        self._sink = sink
        self._lz4 = lz4.block
        self._trailer = trailer
        self._hash: Any = xxhash.xxh3_128() if trailer else xxhash.xxh32()
        self._content_size = 0
        self._threads = max(1, threads)
        self._workers = _Workers(self._threads, lz4.block) if self._threads > 1 else None
        self._pending: list[_Job] = []
        # Block buffers are memoryviews: assigning into a bytearray slice would first copy the
        # source into a temporary bytearray.
        self._free: list[memoryview] = []
        self._buffer: memoryview | None = None
        self._fill = 0
        self._state = "open"
        # For tests: the most blocks ever handed to the workers at once, buffers ever made.
        self.peak_pending = 0
        self.buffers_allocated = 0
        sink.write(frame_header(content_checksum=not trailer))

    def write(self, data: bytes | memoryview, /) -> int:
        self._check_open()
        view = memoryview(data).cast("B")
        size = len(view)
        try:
            pos = 0
            # Whole blocks skip the copy when nothing can change them while they are compressed:
            # immutable bytes, a read-only map of a file (see walg.ops.wal_push), or any buffer
            # when compressing synchronously within this call.
            if self._fill == 0 and (self._workers is None or _stable(view)):
                while size - pos >= BLOCK_SIZE:
                    self._submit(view[pos : pos + BLOCK_SIZE], None)
                    pos += BLOCK_SIZE
            while pos < size:
                buffer = self._buffer
                if buffer is None:
                    buffer = self._buffer = self._take_buffer()
                take = min(BLOCK_SIZE - self._fill, size - pos)
                buffer[self._fill : self._fill + take] = view[pos : pos + take]
                self._fill += take
                pos += take
                if self._fill == BLOCK_SIZE:
                    self._submit_buffer()
        except BaseException:
            self.abort()
            raise
        return size

    def close(self) -> None:
        if self._state == "closed":
            return
        self._check_open()
        try:
            if self._fill:
                self._submit_buffer()
            while self._pending:
                self._retire()
            if self._trailer:
                self._sink.write(END_MARK + digest_trailer(self._content_size, self._hash.digest()))
            else:
                self._sink.write(END_MARK + self._hash.intdigest().to_bytes(4, "little"))
        except BaseException:
            self.abort()
            raise
        self._state = "closed"
        self._shutdown()

    def abort(self) -> None:
        """Give up on the frame: drop queued blocks, wait for running ones, stop the threads."""
        if self._state == "open":
            self._state = "aborted"
        self._pending.clear()
        self._shutdown()

    def _check_open(self) -> None:
        if self._state != "open":
            raise ValueError(f"LZ4 frame writer is {self._state}")

    def _shutdown(self) -> None:
        workers, self._workers = self._workers, None
        if workers is not None:
            workers.stop()
        self._free.clear()
        self._buffer = None

    def _take_buffer(self) -> memoryview:
        if self._free:
            return self._free.pop()
        self.buffers_allocated += 1
        return memoryview(bytearray(BLOCK_SIZE))

    def _submit_buffer(self) -> None:
        buffer, fill = self._buffer, self._fill
        assert buffer is not None
        self._buffer, self._fill = None, 0
        self._submit(buffer[:fill], buffer)

    def _submit(self, block: memoryview, buffer: memoryview | None) -> None:
        self._content_size += len(block)
        if self._workers is None:
            self._hash.update(block)
            self._emit(block_record(self._lz4, block))
            if buffer is not None:
                self._free.append(buffer)
            return
        job = _Job(block, buffer)
        self._pending.append(job)
        self.peak_pending = max(self.peak_pending, len(self._pending))
        self._workers.submit(job, len(self._pending))
        # Hashing here overlaps the workers' compression and keeps the checksum in input order.
        self._hash.update(block)
        while self._pending and (len(self._pending) > self._threads or self._pending[0].done):
            self._retire()

    def _retire(self) -> None:
        job = self._pending[0]
        assert self._workers is not None
        self._workers.wait(job)
        if job.error is not None:
            raise job.error
        del self._pending[0]
        self._emit(_record(job.block, job.compressed))
        if job.buffer is not None:
            self._free.append(job.buffer)

    def _emit(self, record: tuple[bytes, bytes | memoryview]) -> None:
        size, payload = record
        self._sink.write(size)
        self._sink.write(payload)
