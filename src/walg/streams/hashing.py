"""Counting and hashing pass-through stages.

walg's content checksum is BLAKE3: cryptographic, and several times faster than SHA-256 on
the same core (the ``blake3`` binding also releases the GIL), which matters when every byte of
a database is hashed during a backup.
"""

from __future__ import annotations

from walg.core.checksum import Checksum

TYPE_CHECKING = False  # not typing's: see walg.settings
if TYPE_CHECKING:
    from typing import Any

    from walg.streams.base import Sink, Source


def new_hasher() -> Any:
    import blake3

    return blake3.blake3()


class HashingWriter:
    """Counts and hashes every byte written through it to ``sink``."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._hash = new_hasher()
        self.size = 0

    def write(self, data: bytes | memoryview, /) -> int:
        self._hash.update(data)
        self.size += len(data)
        self._sink.write(data)
        return len(data)

    def checksum(self) -> Checksum:
        return Checksum(self.size, self._hash.hexdigest())


class HashingReader:
    """Counts and hashes every byte read through it from ``source``."""

    def __init__(self, source: Source) -> None:
        self._source = source
        self._hash = new_hasher()
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._source.read(size)
        self._hash.update(data)
        self.size += len(data)
        return data

    def drain(self, chunk: int = 1 << 20) -> None:
        while self.read(chunk):
            pass

    def checksum(self) -> Checksum:
        return Checksum(self.size, self._hash.hexdigest())
