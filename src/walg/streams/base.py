"""The two minimal stream shapes every stage speaks."""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: see walg.settings
if TYPE_CHECKING:
    from typing import Protocol
else:
    # Structural types matter only to mypy; at run time they are plain classes, which spares
    # every archive_command call the import of typing.
    Protocol = object


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
