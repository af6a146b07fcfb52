"""walg.ops.wal_follow: the daemon's follower of the segment being written (no PostgreSQL).

A fake pg_wal is written the way PostgreSQL writes it: pages in order, each with a header that
carries the page's own WAL address, so the follower sees blocks become final one at a time.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import lz4.frame
import pytest

from lz4frames import check_trailer_object
from walg.core.lsn import Segment
from walg.errors import StorageError
from walg.ops.wal import find_wal_object, marker_path
from walg.ops.wal_follow import BLOCK, REPICK_AFTER, WalFollower
from walg.ops.wal_push import status_dir
from walg.settings import Settings, load
from walg.storage.file import FileStorage
from walg.streams.base import Sink

SEG_SIZE = 4 * 1024 * 1024  # WALG_PG_WAL_SIZE=4: sixteen follower blocks per segment
PAGE = 8192
MAGIC = 0xD110
NAME = "000000010000000000000005"


def make_settings(tmp_path: Path) -> Settings:
    (tmp_path / "store").mkdir(exist_ok=True)  # walg makes no storage folder
    return load(
        environ={
            "HOME": str(tmp_path),
            "WALG_FILE_PREFIX": str(tmp_path / "store"),
            "WALG_PG_WAL_SIZE": "4",
        }
    )


def page_bytes(name: str, page: int, fill: int) -> bytes:
    """One WAL page of segment ``name``: the (long, on page 0) header, then varied content."""
    segno = Segment.parse(name, SEG_SIZE).segno
    address = segno * SEG_SIZE + page * PAGE
    if page == 0:
        head = struct.pack("<HHIQI4xQII", MAGIC, 2, 1, address, 0, 7, SEG_SIZE, PAGE)
    else:
        head = struct.pack("<HHIQI4x", MAGIC, 0, 1, address, 0)
    body = bytes((fill + page + i) % 251 for i in range(64)) * (PAGE // 64)
    return head + body[len(head) :]


class FakeWal:
    """pg_wal with archive_status; segments written page by page like PostgreSQL's WAL writer."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "pg_wal"
        self.status = self.dir / "archive_status"
        self.status.mkdir(parents=True)

    def recycled(self, name: str) -> None:
        """A preallocated file holding an older segment's pages (what recycling leaves)."""
        old = Segment.parse(name, SEG_SIZE)
        older = Segment(old.timeline, max(0, old.segno - 3)).name(SEG_SIZE)
        data = b"".join(page_bytes(older, p, 3) for p in range(SEG_SIZE // PAGE))
        (self.dir / name).write_bytes(data)

    def write_pages(self, name: str, start: int, stop: int, fill: int = 0) -> None:
        self.write_at(name, start, b"".join(page_bytes(name, p, fill) for p in range(start, stop)))

    def write_at(self, name: str, start: int, data: bytes) -> None:
        """``data`` written from page ``start`` on, in one write, into a recycled file if the
        segment has none yet."""
        path = self.dir / name
        if not path.exists():
            self.recycled(name)
        with open(path, "r+b") as handle:
            handle.seek(start * PAGE)
            handle.write(data)

    def ready(self, name: str) -> None:
        (self.status / f"{name}.ready").touch()


def wait_until(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.fixture
def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path)
    storage = FileStorage(str(tmp_path / "store"))
    wal = FakeWal(tmp_path)
    claimed: list[str] = []

    def claim(name: str) -> bool:
        claimed.append(name)
        return True

    follower = WalFollower(settings, storage, str(wal.dir), claim=claim)
    yield settings, storage, wal, follower, claimed
    follower.stop()


def stored_content(storage: FileStorage, name: str) -> bytes:
    """The segment as stored, after checking the object's layout and digest trailer."""
    with storage.open_read(f"wal_005/{name}.lz4") as source:
        return check_trailer_object(source.read())


def temp_files(tmp_path: Path) -> list[str]:
    return [p.name for p in (tmp_path / "store").rglob("*") if ".tmp." in p.name]


def marker(wal: FakeWal, settings: Settings, name: str) -> Path:
    """The follower's marker for ``name``: named with its destination's key."""
    return Path(marker_path(status_dir(str(wal.dir)), name, settings.destination_key))


def test_blocks_are_prepared_as_they_become_final_and_finished_on_ready(
    setup, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    _settings, storage, wal, follower, claimed = setup
    wal.write_pages(NAME, 0, 10)
    follower.start()
    pages_per_block = BLOCK // PAGE
    # Block 0 is final only once the first page of block 1 has its header.
    wal.write_pages(NAME, 10, pages_per_block + 1)
    wait_until(lambda: follower.following(NAME) and follower._current.prepared == BLOCK)  # type: ignore[union-attr]
    wal.write_pages(NAME, pages_per_block + 1, 3 * pages_per_block + 1)
    wait_until(lambda: follower._current is not None and follower._current.prepared == 3 * BLOCK)
    # Nothing is visible in storage before the segment is finished.
    assert find_wal_object(storage, NAME) is None
    wal.write_pages(NAME, 3 * pages_per_block + 1, SEG_SIZE // PAGE)
    wal.ready(NAME)
    wait_until(lambda: follower.stats["finished"] == 1)
    assert claimed == [NAME]
    assert stored_content(storage, NAME) == (wal.dir / NAME).read_bytes()
    assert marker(wal, _settings, NAME).exists()
    assert follower.wait_for(NAME, 5) is True
    assert follower.wait_for(NAME, 5) is False  # reported once
    assert temp_files(tmp_path) == []


def test_a_request_finishes_the_followed_segment_without_waiting_for_the_poll(setup) -> None:  # type: ignore[no-untyped-def]
    _settings, storage, wal, follower, _claimed = setup
    wal.write_pages(NAME, 0, SEG_SIZE // PAGE)
    follower.start()
    wait_until(
        lambda: follower._current is not None and follower._current.prepared == SEG_SIZE - BLOCK
    )
    # archive_command asks before the follower has seen .ready (there is none here at all).
    assert follower.wait_for(NAME, 5) is True
    assert stored_content(storage, NAME) == (wal.dir / NAME).read_bytes()
    # The answer went to the request: no marker is left behind for a wal-push to consume.
    assert not marker(wal, _settings, NAME).exists()


def test_a_request_that_gives_up_waiting_leaves_nothing_behind(tmp_path: Path) -> None:
    """A request whose wait ends before the follower finishes (storage that hangs) must not
    leave its wake-up behind: one per such request, the daemon's memory grew for its life,
    and a later finish of the segment took the leftover for a request still waiting (and
    wrote no marker for the wal-push that will come)."""
    settings = make_settings(tmp_path)
    storage = FileStorage(str(tmp_path / "store"))
    wal = FakeWal(tmp_path)
    release = threading.Event()

    def slow_claim(name: str) -> bool:
        release.wait(30)
        return True

    follower = WalFollower(settings, storage, str(wal.dir), claim=slow_claim)
    try:
        wal.write_pages(NAME, 0, SEG_SIZE // PAGE)
        follower.start()
        wait_until(
            lambda: follower._current is not None and follower._current.prepared == SEG_SIZE - BLOCK
        )
        assert follower.wait_for(NAME, 0.3) is False
        assert NAME not in follower._results
        release.set()
        wait_until(lambda: follower.stats["finished"] == 1)
        # Finished for no request: the marker answers the wal-push that comes for it.
        assert marker(wal, settings, NAME).exists()
    finally:
        release.set()
        follower.stop()


def test_next_segment_is_followed_after_one_is_finished(setup) -> None:  # type: ignore[no-untyped-def]
    _settings, storage, wal, follower, _claimed = setup
    nxt = Segment.parse(NAME, SEG_SIZE).next().name(SEG_SIZE)
    wal.write_pages(NAME, 0, SEG_SIZE // PAGE)
    wal.recycled(nxt)  # preallocated, still old content: must not be followed yet
    follower.start()
    wait_until(lambda: follower.following(NAME))
    wal.ready(NAME)
    wait_until(lambda: follower.stats["finished"] == 1)
    time.sleep(0.1)
    assert not follower.following(nxt)
    wal.write_pages(nxt, 0, SEG_SIZE // PAGE, fill=9)
    wait_until(lambda: follower.following(nxt))
    wal.ready(nxt)
    wait_until(lambda: follower.stats["finished"] == 2)
    assert stored_content(storage, nxt) == (wal.dir / nxt).read_bytes()


def test_content_changed_after_it_was_read_is_never_archived(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _settings, storage, wal, follower, _claimed = setup
    wal.write_pages(NAME, 0, SEG_SIZE // PAGE)
    follower.start()
    wait_until(
        lambda: follower._current is not None and follower._current.prepared == SEG_SIZE - BLOCK
    )
    # Bytes of an already compressed block change (as if a reader had seen writes out of
    # order): the prepared object must be thrown away, not committed.
    with open(wal.dir / NAME, "r+b") as handle:
        handle.seek(PAGE + 100)
        handle.write(b"changed")
    wal.ready(NAME)
    wait_until(lambda: follower.stats["discarded"] == 1)
    assert find_wal_object(storage, NAME) is None
    assert follower.wait_for(NAME, 1) is False
    assert not marker(wal, _settings, NAME).exists()
    assert temp_files(tmp_path) == []


def test_an_archived_name_is_left_to_wal_push(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _settings, storage, wal, follower, _claimed = setup
    with storage.open_write(f"wal_005/{NAME}.lz4") as sink:
        sink.write(lz4.frame.compress(b"other content"))
    wal.write_pages(NAME, 0, SEG_SIZE // PAGE)
    follower.start()
    wait_until(lambda: follower.following(NAME))
    wal.ready(NAME)
    wait_until(lambda: follower.stats["discarded"] == 1)
    with storage.open_read(f"wal_005/{NAME}.lz4") as source:
        assert lz4.frame.decompress(source.read()) == b"other content"  # untouched
    assert follower.wait_for(NAME, 1) is False


class _StoredDuringCheck(FileStorage):
    """File storage where another writer stores ``data`` under ``key`` while the "already
    archived?" check probes its last extension: after the check has looked at ``key`` and
    before anything could commit."""

    def __init__(self, root: Path, key: str, data: bytes) -> None:
        super().__init__(str(root))
        self._key, self._data = key, data
        self.stored = False

    def exists(self, key: str) -> bool:
        if key.endswith(".zst") and not self.stored:
            self.stored = True
            with FileStorage(self.root).open_write(self._key) as sink:
                sink.write(self._data)
        return super().exists(key)


def test_an_object_stored_after_the_check_is_never_replaced(tmp_path: Path) -> None:
    """Another writer (a second cluster archiving into the same storage) stores its own
    segment under the name while the follower finishes: the follower must not replace it;
    the segment goes the usual way, where wal-push compares."""
    settings = make_settings(tmp_path)
    key = f"wal_005/{NAME}.lz4"
    other = lz4.frame.compress(b"another cluster's segment")
    storage = _StoredDuringCheck(tmp_path / "store", key, other)
    wal = FakeWal(tmp_path)
    follower = WalFollower(settings, storage, str(wal.dir), claim=lambda name: True)
    try:
        wal.write_pages(NAME, 0, SEG_SIZE // PAGE)
        follower.start()
        wait_until(lambda: follower.following(NAME))
        wal.ready(NAME)
        wait_until(lambda: not follower.following(NAME))
        assert storage.stored
        with storage.open_read(key) as source:
            assert source.read() == other, "the object stored first is kept"
        assert follower.wait_for(NAME, 1) is False
        assert not marker(wal, settings, NAME).exists()
    finally:
        follower.stop()
    assert temp_files(tmp_path) == []


def test_a_claim_refused_leaves_the_segment_to_the_uploader(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    storage = FileStorage(str(tmp_path / "store"))
    wal = FakeWal(tmp_path)
    follower = WalFollower(settings, storage, str(wal.dir), claim=lambda name: False)
    try:
        wal.write_pages(NAME, 0, SEG_SIZE // PAGE)
        follower.start()
        wait_until(lambda: follower.following(NAME))
        wal.ready(NAME)
        wait_until(lambda: follower.stats["discarded"] == 1)
        assert find_wal_object(storage, NAME) is None
    finally:
        follower.stop()
    assert temp_files(tmp_path) == []


def test_stop_abandons_the_prepared_object_and_leaves_no_threads(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    storage = FileStorage(str(tmp_path / "store"))
    wal = FakeWal(tmp_path)
    before = set(threading.enumerate())
    follower = WalFollower(settings, storage, str(wal.dir), claim=lambda name: True)
    wal.write_pages(NAME, 0, 2 * BLOCK // PAGE + 1)
    follower.start()
    wait_until(lambda: follower._current is not None and follower._current.prepared == 2 * BLOCK)
    assert temp_files(tmp_path)  # the object is being written...
    follower.stop()
    assert temp_files(tmp_path) == []  # ...and abandoned, never committed
    assert find_wal_object(storage, NAME) is None
    assert set(threading.enumerate()) <= before
    os.sync()


def test_a_stalled_segment_is_abandoned_for_the_one_now_written(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Promotion: the followed file becomes .partial and never .ready; the new timeline's
    segment is written instead. The follower moves on and leaves nothing half-written."""
    _settings, storage, wal, follower, _claimed = setup
    wal.write_pages(NAME, 0, BLOCK // PAGE + 1)
    follower.start()
    wait_until(lambda: follower._current is not None and follower._current.prepared == BLOCK)
    other = "000000020000000000000005"
    time.sleep(0.01)
    wal.write_pages(other, 0, SEG_SIZE // PAGE, fill=5)
    wait_until(lambda: follower.following(other), timeout=REPICK_AFTER + 10)
    assert not [p for p in temp_files(tmp_path) if NAME in p]  # the old object was abandoned
    wal.ready(other)
    wait_until(lambda: follower.stats["finished"] == 1)
    assert stored_content(storage, other) == (wal.dir / other).read_bytes()
    assert find_wal_object(storage, NAME) is None


def test_a_segment_switched_early_is_finished_when_ready(setup) -> None:  # type: ignore[no-untyped-def]
    """pg_switch_wal / archive_timeout: the rest of the segment stays zeroed, so no later page
    ever looks final; .ready alone must start the finish."""
    _settings, storage, wal, follower, _claimed = setup
    (wal.dir / NAME).write_bytes(bytes(SEG_SIZE))  # preallocated with zeros
    wal.write_pages(NAME, 0, BLOCK // PAGE + 10)
    follower.start()
    wait_until(lambda: follower._current is not None and follower._current.prepared == BLOCK)
    wal.ready(NAME)
    wait_until(lambda: follower.stats["finished"] == 1)
    assert stored_content(storage, NAME) == (wal.dir / NAME).read_bytes()


def mapped_paths() -> str:
    with open("/proc/self/maps") as maps:
        return maps.read()


def test_a_file_replaced_under_the_followed_name_is_never_archived(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The follower reads through a mapping of the file it opened; if another file now has the
    segment's name (renamed over it, recycled), the prepared object must not be committed."""
    _settings, storage, wal, follower, _claimed = setup
    wal.write_pages(NAME, 0, SEG_SIZE // PAGE)
    follower.start()
    wait_until(
        lambda: follower._current is not None and follower._current.prepared == SEG_SIZE - BLOCK
    )
    replacement = wal.dir / "replacement"
    data = bytearray((wal.dir / NAME).read_bytes())
    data[PAGE + 100 : PAGE + 107] = b"changed"
    replacement.write_bytes(bytes(data))
    os.replace(replacement, wal.dir / NAME)
    wal.ready(NAME)
    wait_until(lambda: follower.stats["discarded"] == 1)
    assert find_wal_object(storage, NAME) is None
    assert follower.wait_for(NAME, 1) is False
    assert temp_files(tmp_path) == []
    assert str(wal.dir / NAME) not in mapped_paths(), "the old mapping was released"


def test_no_mapping_or_descriptor_outlives_a_finished_segment(setup) -> None:  # type: ignore[no-untyped-def]
    _settings, storage, wal, follower, _claimed = setup
    fds_before = set(os.listdir("/proc/self/fd"))
    wal.write_pages(NAME, 0, SEG_SIZE // PAGE)
    follower.start()
    wait_until(lambda: follower.following(NAME))
    assert str(wal.dir / NAME) in mapped_paths()
    wal.ready(NAME)
    wait_until(lambda: follower.stats["finished"] == 1)
    wait_until(lambda: str(wal.dir / NAME) not in mapped_paths())
    follower.stop()
    assert set(os.listdir("/proc/self/fd")) <= fds_before
    assert stored_content(storage, NAME) == (wal.dir / NAME).read_bytes()


def test_names_nobody_asks_for_are_remembered_only_up_to_the_bound(tmp_path: Path) -> None:
    """With archive_command not going through the daemon, wait_for is never called: the set of
    finished names must not grow without bound (their markers answer those wal-pushes)."""
    settings = make_settings(tmp_path)
    storage = FileStorage(str(tmp_path / "store"))
    wal = FakeWal(tmp_path)
    follower = WalFollower(settings, storage, str(wal.dir), claim=lambda name: True, remember=1)
    first = NAME
    second = Segment.parse(NAME, SEG_SIZE).next().name(SEG_SIZE)
    try:
        follower.start()
        for count, name in enumerate((first, second), start=1):
            wal.write_pages(name, 0, SEG_SIZE // PAGE, fill=count)
            wait_until(lambda name=name: follower.following(name))
            wal.ready(name)
            wait_until(lambda count=count: follower.stats["finished"] == count)
    finally:
        follower.stop()
    assert marker(wal, settings, first).exists() and marker(wal, settings, second).exists()
    assert follower.wait_for(second, 1) is True
    assert follower.wait_for(first, 1) is False  # forgotten; its marker still answers
    assert stored_content(storage, first) == (wal.dir / first).read_bytes()


def test_a_segment_that_appears_after_the_start_is_followed(setup) -> None:  # type: ignore[no-untyped-def]
    """A daemon started on an empty or quiet pg_wal follows the first segment that is written,
    and keeps following the ones after it."""
    _settings, storage, wal, follower, _claimed = setup
    follower.start()
    wal.ready("000000010000000000000001")  # a .ready of something else wakes it meanwhile
    time.sleep(0.05)
    wal.write_pages(NAME, 0, SEG_SIZE // PAGE)
    wait_until(lambda: follower.following(NAME))
    wal.ready(NAME)
    wait_until(lambda: follower.stats["finished"] == 1)
    nxt = Segment.parse(NAME, SEG_SIZE).next().name(SEG_SIZE)
    wal.write_pages(nxt, 0, SEG_SIZE // PAGE, fill=4)
    wait_until(lambda: follower.following(nxt))
    wal.ready(nxt)
    wait_until(lambda: follower.stats["finished"] == 2)
    assert stored_content(storage, nxt) == (wal.dir / nxt).read_bytes()


def test_a_followed_file_cut_short_is_dropped_without_touching_missing_pages(setup) -> None:  # type: ignore[no-untyped-def]
    """pg_rewind (server stopped) may rewrite a file the follower has mapped. Reading a mapped
    page past the new end would kill the daemon with SIGBUS (and this test process with it):
    polls read page headers from the file, and the finish checks the size first."""
    _settings, storage, wal, follower, _claimed = setup
    wal.write_pages(NAME, 0, 2 * BLOCK // PAGE + 1)
    follower.start()
    wait_until(lambda: follower._current is not None and follower._current.prepared == 2 * BLOCK)
    os.truncate(wal.dir / NAME, PAGE)
    time.sleep(0.5)  # several polls of the shortened file
    wal.ready(NAME)
    wait_until(lambda: follower.stats["discarded"] == 1)
    assert find_wal_object(storage, NAME) is None
    assert follower.wait_for(NAME, 1) is False


class _FullDisk(FileStorage):
    """File storage on a disk that fills up while ``full`` is set: every write then fails as
    a full disk does, and so does dropping a write that failed (its buffered tail)."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.full = False

    @contextlib.contextmanager
    def open_write(self, key: str, overwrite: bool = True) -> Iterator[Sink]:
        with super().open_write(key, overwrite) as sink:
            try:
                yield _FullDiskSink(sink, self)
            except BaseException:
                if self.full:
                    raise StorageError(f"cannot write {key}: No space left on device") from None
                raise


class _FullDiskSink:
    def __init__(self, inner: Sink, owner: _FullDisk) -> None:
        self._inner, self._owner = inner, owner

    def write(self, data: bytes | memoryview, /) -> int:
        if self._owner.full:
            raise StorageError("cannot write: [Errno 28] No space left on device")
        return self._inner.write(data)


def test_the_follower_survives_a_full_disk(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Storage fills up mid-segment: the segment is dropped (wal-push will report the error),
    and once there is room again the next segments are followed and archived as before."""
    settings = make_settings(tmp_path)
    storage = _FullDisk(str(tmp_path / "store"))
    wal = FakeWal(tmp_path)
    follower = WalFollower(settings, storage, str(wal.dir), claim=lambda name: True)
    try:
        wal.write_pages(NAME, 0, BLOCK // PAGE + 1)
        follower.start()
        wait_until(lambda: follower._current is not None and follower._current.prepared == BLOCK)
        storage.full = True
        wal.write_pages(NAME, BLOCK // PAGE + 1, SEG_SIZE // PAGE)
        wal.ready(NAME)
        wait_until(lambda: "No space left on device" in caplog.text)
        assert find_wal_object(storage, NAME) is None
        storage.full = False
        following = Segment(1, Segment.parse(NAME, SEG_SIZE).segno + 1).name(SEG_SIZE)
        # The segment PostgreSQL writes next (one being written is what the follower takes).
        wal.write_pages(following, 0, BLOCK // PAGE + 1)
        wait_until(lambda: follower.following(following), timeout=30)
        wal.write_pages(following, BLOCK // PAGE + 1, SEG_SIZE // PAGE)
        wal.ready(following)
        wait_until(lambda: find_wal_object(storage, following) is not None, timeout=30)
        assert stored_content(storage, following) == (wal.dir / following).read_bytes()
        if find_wal_object(storage, NAME) is not None:  # followed again once there was room
            assert stored_content(storage, NAME) == (wal.dir / NAME).read_bytes()
        assert "Traceback" not in caplog.text and "BufferError" not in caplog.text
    finally:
        follower.stop()


class _CountingFullDisk(_FullDisk):
    """A full disk that counts the objects the follower starts."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.opened = 0

    @contextlib.contextmanager
    def open_write(self, key: str, overwrite: bool = True) -> Iterator[Sink]:
        self.opened += 1
        with super().open_write(key, overwrite) as sink:
            yield sink


def held_by_this_process(path: Path) -> tuple[int, int]:
    """How many descriptors of ``path`` this process has open, and how many mappings."""
    fds = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            fds += os.readlink(f"/proc/self/fd/{fd}") == str(path)
    maps = sum(line.rstrip("\n").endswith(f" {path}") for line in mapped_paths().splitlines())
    return fds, maps


def test_a_segment_that_fails_is_followed_again_only_after_a_growing_delay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A full storage folder fails every try the same way: the follower must not start a new
    object for the segment (compressing it again) many times a second, nor log each failure;
    PostgreSQL's own request for it is answered at once (archived the usual way)."""
    settings = make_settings(tmp_path)
    storage = _CountingFullDisk(str(tmp_path / "store"))
    storage.full = True
    wal = FakeWal(tmp_path)
    follower = WalFollower(settings, storage, str(wal.dir), claim=lambda name: True)
    try:
        wal.write_pages(NAME, 0, BLOCK // PAGE + 1)
        follower.start()
        wait_until(lambda: storage.opened >= 1)
        first = time.monotonic()
        # Followed again, but only once the first delay (1 s) has passed, not at the next poll.
        wait_until(lambda: storage.opened >= 2, timeout=15)
        assert time.monotonic() - first >= 0.5, "tried again at once"
        time.sleep(max(0.0, first + 2.5 - time.monotonic()))
        assert 2 <= storage.opened <= 3, storage.opened  # tries at 0, 1 and 3 s
        warnings = [
            r
            for r in caplog.records
            if r.levelno >= logging.WARNING and "No space left" in r.getMessage()
        ]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "not followed for 1 s" in warnings[0].getMessage()
        started = time.monotonic()
        assert follower.wait_for(NAME, 5) is False
        assert time.monotonic() - started < 1, "the request went the usual way at once"
        assert temp_files(tmp_path) == []
    finally:
        follower.stop()


class _DevFullDisk(FileStorage):
    """Local storage on a disk that is full while ``full`` is set: the file of a new object
    writes to /dev/full, so storage's own writer fails with ENOSPC as on a full disk."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.full = False

    def _create(self, tmp: str) -> tuple[io.FileIO, bool]:
        handle, direct = super()._create(tmp)
        if not self.full:
            return handle, direct
        handle.close()
        # "Direct": whole 1 MiB chunks are gathered before a write, as on most filesystems.
        return io.FileIO("/dev/full", "wb"), True


def write_random_pages(wal: FakeWal, name: str, start: int, stop: int) -> None:
    """Pages whose content LZ4 cannot shrink: the frame stores them raw, straight from the
    follower's mapping (as it does with random data PostgreSQL writes).

    Each page is whole (header and random body) in one write, in page order: a block the
    follower sees become final never still holds compressible content, which would leave the
    chunk unfilled and the failing write not done."""
    pages = []
    for page in range(start, stop):
        head = page_bytes(name, page, 0)[: 40 if page == 0 else 24]  # long header on page 0
        pages.append(head + os.urandom(PAGE - len(head)))
    wal.write_at(name, start, b"".join(pages))


def test_no_descriptor_or_mapping_outlives_a_failed_segment_without_the_collector(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The failed write's frames hold views of the mapping; they must not keep the segment
    open and mapped (16 MB) until the cyclic garbage collector happens to run."""
    import gc

    settings = make_settings(tmp_path)
    storage = _DevFullDisk(str(tmp_path / "store"))
    wal = FakeWal(tmp_path)
    follower = WalFollower(settings, storage, str(wal.dir), claim=lambda name: True)
    write_random_pages(wal, NAME, 0, 2 * BLOCK // PAGE + 1)
    gc.collect()
    gc.disable()
    try:
        storage.full = True
        follower.start()
        # Two blocks are gathered in memory, not written yet.
        wait_until(
            lambda: follower._current is not None and follower._current.prepared == 2 * BLOCK
        )
        # Its descriptor, and the mapping's own (mmap keeps a duplicate).
        assert held_by_this_process(wal.dir / NAME) == (2, 1)
        # The fourth raw block fills the first chunk: its write fails.
        write_random_pages(wal, NAME, 2 * BLOCK // PAGE + 1, SEG_SIZE // PAGE)
        wait_until(lambda: "No space left on device" in caplog.text)
        wait_until(lambda: follower._current is None)
        time.sleep(0.5)
        assert held_by_this_process(wal.dir / NAME) == (0, 0)
        assert temp_files(tmp_path) == []
    finally:
        gc.enable()
        follower.stop()


def test_a_fifo_under_the_next_segment_s_name_does_not_hang_the_follower(setup) -> None:  # type: ignore[no-untyped-def]
    """The follower opened the segment after the one it finished by name, blocking: a FIFO
    there (anything PostgreSQL's user made) held its thread in open() for good, and no later
    segment was followed again, nor could the daemon stop it. It is passed over now, and the
    segment written after it is followed."""
    _settings, storage, wal, follower, _claimed = setup
    nxt = Segment.parse(NAME, SEG_SIZE).next()
    fifo = wal.dir / nxt.name(SEG_SIZE)
    os.mkfifo(fifo)
    later = nxt.next().name(SEG_SIZE)
    try:
        follower.start()
        wal.write_pages(NAME, 0, SEG_SIZE // PAGE)
        wait_until(lambda: follower.following(NAME))
        wal.ready(NAME)
        wait_until(lambda: follower.stats["finished"] == 1)
        wal.write_pages(later, 0, SEG_SIZE // PAGE, fill=6)
        wait_until(lambda: follower.following(later), timeout=15)
        wal.ready(later)
        wait_until(lambda: follower.stats["finished"] == 2)
        assert stored_content(storage, later) == (wal.dir / later).read_bytes()
    finally:
        # A follower stuck opening the FIFO is let go, so that the test can end.
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
