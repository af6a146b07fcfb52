"""Compression codecs by WAL-G method name and object extension.

A codec wraps a :class:`Sink` into a compressing writer (``close()`` ends the stream but leaves
the sink open; ``abort()`` gives up on it, stopping any threads the writer runs; ``threads``
lets a writer compress in parallel) and a :class:`Source` into a decompressing reader that raises
:class:`~walg.errors.IntegrityError` on corrupt or truncated input. Library imports happen when a
codec is first used, so a command pays only for the codec it needs.

LZ4 output mirrors WAL-G's Go writer: one frame, independent 4 MiB blocks, content checksum
(written by :mod:`walg.streams.lz4frame`); with ``trailer=True`` (objects whose checksum walg
records nowhere else) the content checksum gives way to walg's XXH3-128 digest trailer.
"""

from __future__ import annotations

from dataclasses import dataclass

from walg.errors import ConfigError, IntegrityError, TruncatedObject
from walg.streams import lz4frame
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
        def __call__(
            self, sink: Sink, /, *, threads: int = 1, trailer: bool = False
        ) -> CodecWriter: ...


READ_CHUNK = 1 << 20
INPUT_CHUNK = 256 << 10
OUTPUT_CHUNK = 1 << 20


class PassWriter:
    """Identity "compression" (``threads`` and ``trailer`` are accepted and ignored: the stored
    bytes are the file's, with no room for a checksum)."""

    def __init__(self, sink: Sink, threads: int = 1, trailer: bool = False) -> None:
        self._sink = sink

    def write(self, data: bytes | memoryview, /) -> int:
        return self._sink.write(data)

    def close(self) -> None:
        return None

    def abort(self) -> None:
        return None


class Lz4Reader:
    """Decompresses one or more concatenated LZ4 frames from ``source``.

    A frame without content checksum is hashed with XXH3-128 as it is decoded, and checked
    against walg's digest trailer when one follows it (:mod:`walg.streams.lz4frame`); other
    skippable frames are skipped, as the frame format says.
    """

    def __init__(self, source: Source, what: str) -> None:
        import lz4.frame

        self._lz4 = lz4.frame
        self._source = source
        self._what = what
        self._dec: Any = None  # the current frame's decompressor; None between frames
        self._hash: Any = None  # XXH3-128 of the current frame's content, if it has no checksum
        self._content = 0
        self._ended: tuple[int, bytes] | None = None  # size and digest of the frame just ended
        self._input = b""  # read from the source, not yet decoded
        self._buffer = b""
        self._pos = 0
        self._frames = 0
        self._eof = False

    def _more(self, need: int) -> bool:
        """Read until ``need`` bytes wait to be decoded; False if the source ends first."""
        while len(self._input) < need:
            data = self._source.read(INPUT_CHUNK)
            if not data:
                return False
            self._input += data
        return True

    def _fill(self) -> None:
        while self._pos >= len(self._buffer) and not self._eof:
            if self._dec is None:
                self._between_frames()
                continue
            if self._dec.needs_input:
                if not self._more(1):
                    raise TruncatedObject(f"{self._what}: LZ4 stream is truncated")
                data, self._input = self._input, b""
            else:
                data = b""
            try:
                # Bounded output per call: highly compressible pages would otherwise inflate
                # one input chunk into tens of megabytes per reader thread.
                self._buffer = self._dec.decompress(data, max_length=OUTPUT_CHUNK)
            except RuntimeError as exc:
                raise IntegrityError(f"{self._what}: corrupt LZ4 data ({exc})") from None
            self._pos = 0
            if self._hash is not None:
                self._hash.update(self._buffer)
                self._content += len(self._buffer)
            if self._dec.eof:
                self._input = (self._dec.unused_data or b"") + self._input
                self._dec = None
                self._ended = None if self._hash is None else (self._content, self._hash.digest())

    def _between_frames(self) -> None:
        """Start the next frame, or check or skip a skippable one, or end the stream."""
        if not self._more(8) and not self._input:
            if not self._frames:
                raise TruncatedObject(f"{self._what}: LZ4 stream is empty")
            self._eof = True
            return
        head = self._input[:8]
        magic = int.from_bytes(head[:4], "little")
        if len(head) == 8 and magic & lz4frame.SKIPPABLE_MAGIC_MASK == lz4frame.SKIPPABLE_MAGIC:
            self._skippable(8 + int.from_bytes(head[4:8], "little"))
            return
        # A frame without content checksum and without trailer (not walg's) stays unchecked.
        self._ended = None
        checksum = len(head) > 4 and head[4] & lz4frame.CONTENT_CHECKSUM_FLAG
        self._hash = None
        if not checksum and head[:4] == lz4frame.MAGIC:
            import xxhash

            self._hash = xxhash.xxh3_128()
            self._content = 0
        self._dec = self._lz4.LZ4FrameDecompressor()
        self._frames += 1

    def _skippable(self, size: int) -> None:
        if self._input[:4] == lz4frame.TRAILER_MAGIC:
            # walg's magic number: damage to the trailer must not pass as some other frame.
            if size != lz4frame.TRAILER_SIZE:
                raise IntegrityError(f"{self._what}: LZ4 stream has a damaged checksum trailer")
            if not self._more(size):
                raise TruncatedObject(f"{self._what}: LZ4 stream is truncated (in its trailer)")
            frame, self._input = self._input[:size], self._input[size:]
            trailer = lz4frame.parse_trailer(frame)
            if trailer is None:
                raise IntegrityError(f"{self._what}: LZ4 stream has a damaged checksum trailer")
            self._check(trailer)
            return
        while size:
            if not self._more(1):
                raise TruncatedObject(f"{self._what}: LZ4 stream is truncated (in a skipped frame)")
            skip = min(size, len(self._input))
            self._input = self._input[skip:]
            size -= skip

    def _check(self, trailer: tuple[int, bytes]) -> None:
        ended, self._ended = self._ended, None
        if ended is None:
            raise IntegrityError(
                f"{self._what}: LZ4 stream has a checksum trailer that follows no frame "
                "without content checksum"
            )
        if ended[0] != trailer[0]:
            raise IntegrityError(
                f"{self._what}: LZ4 content is {ended[0]} bytes, its trailer says {trailer[0]}"
            )
        if ended[1] != trailer[1]:
            raise IntegrityError(
                f"{self._what}: LZ4 content does not match its checksum trailer "
                f"(XXH3-128 {ended[1].hex()}, trailer {trailer[1].hex()})"
            )

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


def _lz4_writer(sink: Sink, threads: int = 1, trailer: bool = False) -> Lz4FrameWriter:
    # Also for threads=1: compressing each block in place measured a little faster than
    # python-lz4's LZ4FrameCompressor, which writes the same bytes.
    return Lz4FrameWriter(sink, threads, trailer)


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
