"""Large WAL segments (initdb --wal-segsize up to 1024): mapped a window at a time, same bytes.

wal-push's parallel compression and the daemon's WAL follower map the segment file. Above
walg.ops.wal_push.WINDOWED_ABOVE they let go of its pages a window at a time; mapped whole, a
1 GiB segment counted 1 GiB in the RSS (and the OOM score) of the process archiving it. How
much of the file this process maps is read from /proc/self/smaps (the ``Rss`` of the mappings
of that file), sampled by the storage sink at each write the compressor makes.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lz4frames import check_trailer_object
from walg.core.lsn import Segment
from walg.ops.wal import find_wal_object
from walg.ops.wal_follow import BLOCK as FOLLOW_BLOCK
from walg.ops.wal_follow import WalFollower
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
MAGIC = 0xD110


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


# -- the daemon's WAL follower ------------------------------------------------------------------


def wal_pages(name: str, segment_size: int, start: int, stop: int) -> bytes:
    """Pages ``start`` to ``stop`` of segment ``name`` as PostgreSQL writes them: each starts
    with a header carrying its own WAL address (a long one on page 0)."""
    base = Segment.parse(name, segment_size).segno * segment_size
    body = bytes(range(256)) * (PAGE // 256)
    pages = []
    for page in range(start, stop):
        address = base + page * PAGE
        if page == 0:
            head = struct.pack("<HHIQI4xQII", MAGIC, 2, 1, address, 0, 7, segment_size, PAGE)
        else:
            head = struct.pack("<HHIQI4x", MAGIC, 0, 1, address, 0)
        pages.append(head + page.to_bytes(4, "little") + body[len(head) + 4 :])
    return b"".join(pages)


def wait_until(check: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def follow(
    tmp_path: Path, segment_size: int, change_after_read: bool = False, **windows: int
) -> tuple[SamplingStorage, WalFollower, Path]:
    """Write a segment in two halves while a follower follows it, then mark it ready."""
    name = "000000010000000000000002"
    wal = tmp_path / "pg_wal"
    (wal / "archive_status").mkdir(parents=True)
    path = wal / name
    settings = settings_for(tmp_path, WALG_PG_WAL_SIZE=str(segment_size // MIB))
    storage = SamplingStorage(str(tmp_path / "store"), path)
    follower = WalFollower(settings, storage, str(wal), claim=lambda _name: True, **windows)
    pages = segment_size // PAGE
    with open(path, "wb") as handle:
        handle.truncate(segment_size)  # preallocated, as PostgreSQL does
        handle.write(wal_pages(name, segment_size, 0, pages // 2))
    follower.start()
    try:
        prepared = pages // 2 * PAGE - FOLLOW_BLOCK
        wait_until(lambda: follower._current is not None and follower._current.prepared >= prepared)
        with open(path, "r+b") as handle:
            handle.seek(pages // 2 * PAGE)
            handle.write(wal_pages(name, segment_size, pages // 2, pages))
            if change_after_read:
                handle.seek(PAGE + 100)
                handle.write(b"changed")
        (wal / "archive_status" / f"{name}.ready").touch()
        wait_until(lambda: follower.stats["finished"] + follower.stats["discarded"] == 1)
    finally:
        follower.stop()
    return storage, follower, path


def test_the_follower_maps_a_large_segment_a_window_at_a_time(tmp_path: Path) -> None:
    """With the shipped threshold, a 128 MiB segment: every page the follower had read stayed
    mapped until the finish, whose check then read the whole file again (128 MiB of the
    daemon's RSS); now about a window of it is mapped at any time, and the object is right."""
    size = 128 * MIB
    storage, follower, path = follow(tmp_path, size)
    assert follower.stats == {"finished": 1, "discarded": 0}
    assert storage.samples > size // FOLLOW_BLOCK
    assert storage.peak <= 2 * WINDOW, f"{storage.peak / MIB:.0f} MiB mapped"
    found = find_wal_object(storage, path.name)
    assert found is not None
    with storage.open_read(found[0]) as source:
        assert check_trailer_object(source.read()) == path.read_bytes()


def test_the_windowed_follower_still_refuses_a_segment_changed_after_it_was_read(
    tmp_path: Path,
) -> None:
    """The finish's check, read window by window, still sees bytes that changed after they
    were compressed (a small threshold and window stand for 1 GiB segments)."""
    storage, follower, path = follow(
        tmp_path, 8 * MIB, change_after_read=True, windowed_above=2 * MIB, window=MIB
    )
    assert follower.stats == {"finished": 0, "discarded": 1}
    assert find_wal_object(storage, path.name) is None
    assert storage.peak <= 2 * MIB, f"{storage.peak / MIB:.1f} MiB mapped"
