"""walg.core.inotify: names of files created in or moved into a directory, from a real inotify."""

from __future__ import annotations

import os
import struct
import threading
import time
from pathlib import Path

from walg.core.inotify import EVENT, IN_CREATE, IN_MOVED_TO, IN_Q_OVERFLOW, DirWatch, parse_events


def event(mask: int, name: bytes, padded: int) -> bytes:
    return EVENT.pack(1, mask, 0, padded) + name.ljust(padded, b"\0")


def test_parse_events_reads_padded_names_and_flags_an_overflow() -> None:
    data = (
        event(IN_CREATE, b"000000010000000000000005.ready", 32)
        + event(IN_MOVED_TO, b"x", 16)
        + event(IN_Q_OVERFLOW, b"", 0)
    )
    assert parse_events(data) == ["000000010000000000000005.ready", "x", ""]
    # A truncated trailing record is ignored rather than misread.
    assert parse_events(data + struct.pack("ii", 1, 2)) == parse_events(data)


def test_a_watch_reports_created_and_moved_in_files_and_stops_cleanly(tmp_path: Path) -> None:
    seen: list[str] = []
    arrived = threading.Event()

    def on_name(name: str) -> None:
        seen.append(name)
        if len(seen) >= 2:
            arrived.set()

    fds_before = set(os.listdir("/proc/self/fd"))
    threads_before = set(threading.enumerate())
    watch = DirWatch.start(str(tmp_path), on_name)
    assert watch is not None, "inotify is available on Linux"
    (tmp_path / "a.ready").touch()
    outside = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    outside.write_bytes(b"x")
    os.replace(outside, tmp_path / "b.ready")
    assert arrived.wait(10), seen
    watch.stop()
    assert seen == ["a.ready", "b.ready"]
    assert set(threading.enumerate()) <= threads_before
    assert set(os.listdir("/proc/self/fd")) <= fds_before


def test_a_failing_callback_does_not_stop_the_watch(tmp_path: Path) -> None:
    seen: list[str] = []

    def on_name(name: str) -> None:
        seen.append(name)
        if name == "first":
            raise RuntimeError("boom")

    watch = DirWatch.start(str(tmp_path), on_name)
    assert watch is not None
    try:
        (tmp_path / "first").touch()
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        # Only once the callback has failed: made together, both names may come in one read,
        # and a watch that ended after that read would still have reported the second.
        (tmp_path / "second").touch()
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        watch.stop()
    assert seen == ["first", "second"]


def test_no_watch_for_a_missing_directory(tmp_path: Path) -> None:
    assert DirWatch.start(str(tmp_path / "missing"), lambda name: None) is None
