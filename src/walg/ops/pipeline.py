"""The object pipeline shared by every command: raw bytes ⇄ codec ⇄ (crypter) ⇄ storage.

Upload: raw → count → compress → hash stored bytes → ``storage.open_write``. Download is the
mirror, with the stored bytes hashed as they arrive so they can be checked against metadata.
Encryption slots in between the codec and the stored-bytes hash when it lands.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

TYPE_CHECKING = False  # not typing's: see walg.settings
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from concurrent.futures import Future, ThreadPoolExecutor
    from typing import Any, TypeVar

    Item = TypeVar("Item")
    Result = TypeVar("Result")

    from walg.core.checksum import Checksum, StoredObject
    from walg.storage.base import Storage
    from walg.streams.base import Sink, Source
    from walg.streams.compression import Codec
    from walg.streams.hashing import HashingReader


# Seconds a main thread waits for its workers at a time. A signal (Ctrl-C, SIGTERM) that the
# kernel hands to a worker thread only sets a flag, which the main thread acts on when it
# wakes: one endless wait would make Ctrl-C wait for the whole backup or restore.
SIGNAL_POLL = 0.2

# Seconds the workers of a command stopped by a signal get to notice and end. One held by
# storage that does not answer (a hung mount) cannot, and is left behind: the command removes
# what it wrote and ends without it (walg.cli.main ends the process without joining threads).
INTERRUPT_GRACE = 5.0


def leave_workers(pool: ThreadPoolExecutor, futures: Iterable[Future[Any]]) -> None:
    """After SIGINT / SIGTERM: cancel what has not started and wait at most
    ``INTERRUPT_GRACE`` seconds for the running workers, already told to stop. Leaving the
    pool's ``with`` block instead joins them, which waited for ever on a stalled upload."""
    from concurrent.futures import wait

    pool.shutdown(wait=False, cancel_futures=True)
    # Not the cancelled ones: wait() counts a future cancelled before it ran as done only
    # once the pool has seen it, and this pool will not look again.
    wait([f for f in futures if not f.cancelled()], timeout=INTERRUPT_GRACE)


def map_on_threads(
    fn: Callable[[Item], Result], items: Sequence[Item], workers: int
) -> list[Result]:
    """``[fn(item) for item in items]`` on up to ``workers`` threads; the first error raised
    is raised. A signal leaves the workers storage holds (see :func:`leave_workers`), where
    ``Executor.map`` in a ``with`` block joined them: Ctrl-C waited for a stalled read."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(items))))
    futures: list[Future[Result]] = []
    try:
        futures = [pool.submit(fn, item) for item in items]
        results = [future.result() for future in futures]
    except BaseException:
        leave_workers(pool, futures)
        raise
    pool.shutdown(wait=True)
    return results


class CountingWriter:
    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self.size = 0

    def write(self, data: bytes | memoryview, /) -> int:
        self.size += len(data)
        self._sink.write(data)
        return len(data)


@dataclass
class Upload:
    """What an upload wrote, filled in when the ``with`` block has finished: the sizes, and
    ``result`` (with the stored bytes' checksum) when they were hashed."""

    writer: CountingWriter
    raw_size: int = 0
    stored_size: int = 0
    result: StoredObject | None = None


@contextmanager
def upload(
    storage: Storage,
    key: str,
    codec: Codec,
    threads: int = 1,
    hash_stored: bool = True,
    overwrite: bool = True,
    before_commit: Callable[[], None] | None = None,
) -> Iterator[Upload]:
    """``threads`` > 1 lets the codec compress on that many threads.

    ``hash_stored=False`` skips the BLAKE3 of the stored bytes, for objects whose checksum is
    recorded nowhere (WAL files: WAL-G's layout has no place for it); such an object carries
    its own, the codec's digest trailer. ``overwrite=False``: an object already stored under
    ``key`` when the upload commits is kept, and the upload fails (see the storage contract).
    ``before_commit`` is called once every byte is compressed and written (the codec's threads
    have read the last of the input), before the object is committed; what it raises abandons
    the upload.
    """
    # The hashing stages are imported only when used: WAL calls, which run once per segment,
    # do not hash the stored bytes (about 0.7 ms of imports).
    with storage.open_write(key, overwrite) as sink:
        hasher = None
        if hash_stored:
            from walg.streams.hashing import HashingWriter

            hasher = HashingWriter(sink)
        stored = hasher if hasher is not None else CountingWriter(sink)
        compressor = codec.writer(stored, threads=threads, trailer=not hash_stored)
        raw = CountingWriter(compressor)
        handle = Upload(raw)
        try:
            yield handle
            compressor.close()
            if before_commit is not None:
                before_commit()
        except BaseException:
            # The compressor's threads must not outlive a failed upload.
            compressor.abort()
            raise
    handle.raw_size, handle.stored_size = raw.size, stored.size
    if hasher is not None:
        from walg.core.checksum import StoredObject

        handle.result = StoredObject(hasher.checksum(), raw.size)


@dataclass
class Download:
    """The decompressed reader of a download and, if hashed, its stored-bytes hasher."""

    reader: Source
    stored: HashingReader | None

    def stored_checksum(self) -> Checksum:
        """The checksum of the whole stored object, reading whatever the reader left."""
        if self.stored is None:
            raise AssertionError("download(hash_stored=False) has no checksum")
        self.stored.drain()
        return self.stored.checksum()


@contextmanager
def download(
    storage: Storage, key: str, codec: Codec, what: str, hash_stored: bool = True
) -> Iterator[Download]:
    """``hash_stored=False``: as for :func:`upload`, for objects with no recorded checksum."""
    with storage.open_read(key) as source:
        if not hash_stored:
            yield Download(codec.reader(source, what), None)
            return
        from walg.streams.hashing import HashingReader

        stored = HashingReader(source)
        yield Download(codec.reader(stored, what), stored)
