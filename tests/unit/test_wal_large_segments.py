"""Large WAL segments (initdb --wal-segsize up to 1024): mapped a window at a time, same bytes.

wal-push's parallel compression maps the segment file. Above
walg.ops.wal_push.WINDOWED_ABOVE it lets go of its pages a window at a time; mapped whole, a
1 GiB segment counted 1 GiB in the RSS (and the OOM score) of the process archiving it. How
much of the file this process maps is read from /proc/self/smaps (the ``Rss`` of the mappings
of that file), sampled by the storage sink at each write the compressor makes.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lz4frames import check_trailer_object
from walg.ops.wal_push import (
    WINDOW,
    WINDOWED_ABOVE,
    mapped_file,
    push_one,
    write_in_windows,
)
from walg.settings import Settings, load
from walg.storage.file import FileStorage
from walg.streams.base import Sink
from walg.streams.compression import codec_for_method

MIB = 1 << 20
PAGE = 8192


def mapped_bytes(path: Path) -> int:
    """How many bytes of ``path`` this process has mapped now (its mappings' ``Rss``)."""
    total = 0
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):
                inside = line.rstrip("\n").endswith(" " + str(path))
            elif inside and first == "Rss:":
                total += int(line.split()[1]) * 1024
    return total


class _SamplingSink:
    def __init__(self, sink: Sink, storage: SamplingStorage) -> None:
        self._sink = sink
        self._storage = storage

    def write(self, data: bytes | memoryview, /) -> int:
        self._storage.sample()
        return self._sink.write(data)


class SamplingStorage(FileStorage):
    """Local storage whose writers note, at each write, how much of ``watched`` is mapped."""

    def __init__(self, root: str, watched: Path) -> None:
        super().__init__(root)
        self.watched = watched
        self.peak = 0
        self.samples = 0

    def sample(self) -> None:
        self.peak = max(self.peak, mapped_bytes(self.watched))
        self.samples += 1

    @contextlib.contextmanager
    def open_write(self, key: str, overwrite: bool = True) -> Iterator[Sink]:
        with super().open_write(key, overwrite) as sink:
            yield _SamplingSink(sink, self)


def settings_for(tmp_path: Path, **extra: str) -> Settings:
    (tmp_path / "store").mkdir(exist_ok=True)
    return load(
        environ={"HOME": str(tmp_path), "WALG_FILE_PREFIX": str(tmp_path / "store"), **extra}
    )


def varied_file(path: Path, size: int) -> bytes:
    """``size`` bytes that LZ4 compresses some, different in every MiB; written to ``path``."""
    parts = []
    for mib in range(size // MIB):
        pattern = os.urandom(16 << 10)
        parts.append(mib.to_bytes(4, "little") + pattern * 64)
    data = b"".join(parts)[:size]
    path.write_bytes(data)
    return data


def whole_mapping_frame(path: Path, threads: int) -> bytes:
    """The object walg stored for a segment before windows: the whole file mapped, written
    in one call to the codec's writer, as walg.ops.wal_push._upload_file did."""
    out = io.BytesIO()
    writer = codec_for_method("lz4").writer(out, threads=threads, trailer=True)
    with open(path, "rb", buffering=0) as handle, mapped_file(handle) as data:
        writer.write(data)
        writer.close()
    return out.getvalue()


@pytest.mark.parametrize("window", [MIB, 4 * MIB, 6 * MIB], ids=["1MiB", "4MiB", "6MiB"])
@pytest.mark.parametrize("threads", [1, 2])
def test_writing_in_windows_makes_the_same_frame(tmp_path: Path, window: int, threads: int) -> None:
    """Windows of any page-aligned size, a multiple of the 4 MiB block or not, give the
    compressor the same bytes in the same order: the frame is byte for byte the same."""
    path = tmp_path / "segment"
    data = varied_file(path, 21 * MIB + 3 * PAGE)
    out = io.BytesIO()
    writer = codec_for_method("lz4").writer(out, threads=threads, trailer=True)
    with open(path, "rb", buffering=0) as handle, mapped_file(handle, populate=False) as mapped:
        write_in_windows(writer, mapped, window)
        writer.close()
    assert out.getvalue() == whole_mapping_frame(path, threads)
    assert check_trailer_object(out.getvalue()) == data


def test_a_segment_above_the_threshold_is_pushed_a_window_at_a_time(tmp_path: Path) -> None:
    """wal-push's parallel path with the shipped threshold: a 96 MiB segment was mapped whole
    (and populated: all 96 MiB at once); now at most about two windows of it are, and the
    object is the one the whole mapping made."""
    size = WINDOWED_ABOVE + 32 * MIB
    path = tmp_path / "pg_wal" / "000000010000000000000003"
    path.parent.mkdir()
    data = varied_file(path, size)
    storage = SamplingStorage(str(tmp_path / "store"), path)
    result = push_one(settings_for(tmp_path), storage, str(path), threads=2)
    assert result.uploaded and result.raw_size == size
    assert storage.samples > size // (4 * MIB)
    assert storage.peak <= 2 * WINDOW + 4 * MIB, f"{storage.peak / MIB:.0f} MiB mapped"
    with storage.open_read(result.key) as source:
        stored = source.read()
    assert stored == whole_mapping_frame(path, threads=2)
    assert check_trailer_object(stored) == data
    assert mapped_bytes(path) == 0, "the mapping is gone"


def test_a_segment_at_the_threshold_keeps_its_whole_populated_mapping(tmp_path: Path) -> None:
    """The default path is untouched: a segment of WINDOWED_ABOVE bytes or less is mapped
    whole and populated up front, as every 16 MiB archive_command call always was."""
    path = tmp_path / "pg_wal" / "000000010000000000000003"
    path.parent.mkdir()
    data = varied_file(path, 16 * MIB)
    storage = SamplingStorage(str(tmp_path / "store"), path)
    result = push_one(settings_for(tmp_path), storage, str(path), threads=2)
    # The first write (the frame's header) comes after the mapping is made: all of it mapped.
    assert storage.peak == 16 * MIB
    with storage.open_read(result.key) as source:
        assert check_trailer_object(source.read()) == data
