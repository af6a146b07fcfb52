"""Counting and SHA-256 hashing pass-through stages (hashlib releases the GIL on big buffers)."""

from __future__ import annotations

import hashlib

from walg.core.metadata import Checksum
from walg.streams.base import Sink, Source


class HashingWriter:
    """Counts and hashes every byte written through it to ``sink``."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._hash = hashlib.sha256()
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
        self._hash = hashlib.sha256()
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
