"""Compression codecs by WAL-G method name and object extension.

A codec wraps a :class:`Sink` into a compressing writer (``close()`` ends the stream but leaves
the sink open; ``abort()`` gives up on it, stopping any threads the writer runs; ``threads``
lets a writer compress in parallel) and a :class:`Source` into a decompressing reader that raises
:class:`~walg.errors.IntegrityError` on corrupt or truncated input. Library imports happen when a
codec is first used, so a command pays only for the codec it needs.

LZ4 output mirrors WAL-G's Go writer: one frame, independent 4 MiB blocks, content checksum
(written by :mod:`walg.streams.lz4frame`).
"""

from __future__ import annotations

from dataclasses import dataclass

from walg.errors import ConfigError, IntegrityError
from walg.streams.lz4frame import Lz4FrameWriter

TYPE_CHECKING = False  # not typing's: see walg.settings
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Protocol

    from walg.streams.base import Sink, Source

    class CodecWriter(Protocol):
        """What a codec's writer factory returns."""

        def write(self, data: bytes | memoryview, /) -> int: ...

        def close(self) -> None: ...

        def abort(self) -> None: ...

    class WriterFactory(Protocol):
        def __call__(self, sink: Sink, /, *, threads: int = 1) -> CodecWriter: ...


READ_CHUNK = 1 << 20
INPUT_CHUNK = 256 << 10
OUTPUT_CHUNK = 1 << 20


class PassWriter:
    """Identity "compression" (``threads`` is accepted and ignored)."""

    def __init__(self, sink: Sink, threads: int = 1) -> None:
        self._sink = sink

    def write(self, data: bytes | memoryview, /) -> int:
        return self._sink.write(data)

    def close(self) -> None:
        return None

    def abort(self) -> None:
        return None


class Lz4Reader:
    """Decompresses one or more concatenated LZ4 frames from ``source``."""

    def __init__(self, source: Source, what: str) -> None:
        import lz4.frame

        self._lz4 = lz4.frame
        self._source = source
        self._what = what
        self._dec: Any = lz4.frame.LZ4FrameDecompressor()
        self._buffer = b""
        self._pos = 0
        self._pending = b""
        self._started = False
        self._eof = False

    def _fill(self) -> None:
        while self._pos >= len(self._buffer) and not self._eof:
            if self._dec.eof:
                # A frame ended; anything after it is another frame (or trailing data).
                data = self._pending or self._source.read(INPUT_CHUNK)
                self._pending = b""
                if not data:
                    self._eof = True
                    return
                self._dec = self._lz4.LZ4FrameDecompressor()
            elif self._dec.needs_input:
                data = self._source.read(INPUT_CHUNK)
                if not data:
                    self._eof = True
                    if not self._started:
                        raise IntegrityError(f"{self._what}: LZ4 stream is empty")
                    raise IntegrityError(f"{self._what}: LZ4 stream is truncated")
            else:
                data = b""
            self._started = True
            try:
                # Bounded output per call: highly compressible pages would otherwise inflate
                # one input chunk into tens of megabytes per reader thread.
                self._buffer = self._dec.decompress(data, max_length=OUTPUT_CHUNK)
                self._pos = 0
            except RuntimeError as exc:
                raise IntegrityError(f"{self._what}: corrupt LZ4 data ({exc})") from None
            if self._dec.eof and self._dec.unused_data:
                self._pending = self._dec.unused_data

    def read(self, size: int = -1, /) -> bytes:
        if size < 0:
            parts: list[bytes] = []
            while True:
                chunk = self.read(READ_CHUNK)
                if not chunk:
                    return b"".join(parts)
                parts.append(chunk)
        self._fill()
        start = self._pos
        if start == 0 and size >= len(self._buffer):
            self._pos = len(self._buffer)
            return self._buffer
        self._pos = min(start + size, len(self._buffer))
        return self._buffer[start : self._pos]


@dataclass(frozen=True)
class Codec:
    """One compression method: its WAL-G name, its object extension and its stream factories."""

    name: str
    extension: str
    writer: WriterFactory
    reader: Callable[[Source, str], Source]


def _lz4_writer(sink: Sink, threads: int = 1) -> Lz4FrameWriter:
    # Also for threads=1: compressing each block in place measured a little faster than
    # python-lz4's LZ4FrameCompressor, which writes the same bytes.
    return Lz4FrameWriter(sink, threads)


def _none_reader(source: Source, what: str) -> Source:
    return source


CODECS: dict[str, Codec] = {
    "lz4": Codec("lz4", "lz4", _lz4_writer, Lz4Reader),
    "none": Codec("none", "", PassWriter, _none_reader),
}

# WAL-G probes WAL objects in this order of extensions (see the format notes, §2.1).
FETCH_PROBE_ORDER = ("lz4", "lzma", "gz", "", "br", "lzo", "zst")


def codec_for_method(method: str) -> Codec:
    try:
        return CODECS[method]
    except KeyError:
        raise ConfigError(
            f"WALG_COMPRESSION_METHOD={method!r} is not supported by this walg yet "
            f"(supported: {', '.join(sorted(CODECS))})"
        ) from None


def codec_for_extension(ext: str) -> Codec:
    for codec in CODECS.values():
        if codec.extension == ext:
            return codec
    if ext == "tar":
        return CODECS["none"]
    raise IntegrityError(
        f"objects compressed as .{ext} cannot be read by this walg yet "
        f"(readable: {', '.join(repr(c.extension) for c in CODECS.values())})"
    )


def known_extensions() -> tuple[str, ...]:
    """Extensions this build can decompress, in WAL-G's probe order."""
    have = {c.extension for c in CODECS.values()}
    return tuple(ext for ext in FETCH_PROBE_ORDER if ext in have)
