"""The two minimal stream shapes every stage speaks."""

from __future__ import annotations

from typing import Protocol


class Sink(Protocol):
    """Something bytes are written to."""

    def write(self, data: bytes | memoryview, /) -> int: ...


class Source(Protocol):
    """Something bytes are read from; ``read(n)`` returns ``b""`` only at the end."""

    def read(self, size: int = -1, /) -> bytes: ...


def read_exactly(source: Source, size: int) -> bytes:
    """Read ``size`` bytes or fewer only at the end of the stream."""
    chunks: list[bytes] = []
    remaining = size
    while remaining > 0:
        chunk = source.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
