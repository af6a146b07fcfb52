"""The object pipeline shared by every command: raw bytes ⇄ codec ⇄ (crypter) ⇄ storage.

Upload: raw → count → compress → hash stored bytes → ``storage.open_write``. Download is the
mirror, with the stored bytes hashed as they arrive so they can be checked against metadata.
Encryption slots in between the codec and the stored-bytes hash when it lands.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from walg.core.checksum import StoredObject
from walg.streams.hashing import HashingReader, HashingWriter

TYPE_CHECKING = False  # not typing's: see walg.settings
if TYPE_CHECKING:
    from collections.abc import Iterator

    from walg.core.checksum import Checksum
    from walg.storage.base import Storage
    from walg.streams.base import Sink, Source
    from walg.streams.compression import Codec


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
    """What an upload wrote; ``result`` is set when the ``with`` block has finished."""

    writer: CountingWriter
    result: StoredObject | None = None


@contextmanager
def upload(storage: Storage, key: str, codec: Codec, threads: int = 1) -> Iterator[Upload]:
    """``threads`` > 1 lets the codec compress on that many threads."""
    with storage.open_write(key) as sink:
        stored = HashingWriter(sink)
        compressor = codec.writer(stored, threads=threads)
        raw = CountingWriter(compressor)
        handle = Upload(raw)
        try:
            yield handle
            compressor.close()
        except BaseException:
            # The compressor's threads must not outlive a failed upload.
            compressor.abort()
            raise
    handle.result = StoredObject(stored.checksum(), raw.size)


@dataclass
class Download:
    reader: Source
    stored: HashingReader

    def stored_checksum(self) -> Checksum:
        return self.stored.checksum()


@contextmanager
def download(storage: Storage, key: str, codec: Codec, what: str) -> Iterator[Download]:
    with storage.open_read(key) as source:
        stored = HashingReader(source)
        yield Download(codec.reader(stored, what), stored)
