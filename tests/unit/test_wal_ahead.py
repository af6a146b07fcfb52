"""The detached look-ahead uploader (``walg wal-push-ahead``) and how ``wal-push`` calls share
work with it: per-file locks, markers that name the file they vouch for, stale markers.

The command-line flows run the installed ``walg`` as PostgreSQL would (one call per file, the
``.ready`` file renamed to ``.done`` after each success) against local storage.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fakewal import detached_walg, segment_bytes, small_tmpfs
from walg.ops.wal import file_identity, marker_path, take_marker, write_marker
from walg.ops.wal_push import (
    SWEEP_STAMP,
    UPLOADER_LOCK,
    LookaheadUploader,
    forget_finished_markers,
    push_one,
    segment_lock,
    status_dir,
    uploader_running,
)
from walg.settings import Settings, load
from walg.storage.file import FileStorage
from walg.storage.memory import MemoryStorage
from walg.streams.base import Sink, Source

SEGMENTS = [f"0000000100000000000000{n:02X}" for n in range(0x20, 0x28)]
KEY_A, KEY_B = "a" * 32, "b" * 32


def key_of(env: dict[str, str], cwd: Path, *config: str) -> str:
    """The destination key of a walg process run with ``env`` in ``cwd`` (``--config`` FILE
    when given), computed by a process started the same way: the interpreter may add to its
    environment (PEP 538 sets LC_CTYPE), and the key covers all of it."""
    code = (
        "import os, sys, walg_destination as d;"
        "print(d.destination_key(os.environ, sys.argv[1] if len(sys.argv) > 1 else None))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *config],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


class PgWal:
    """A stand-in pg_wal: segments with ``.ready`` files, walg's status folder, a store."""

    def __init__(self, root: Path, walg_bin: str) -> None:
        self.root = root
        self.dir = root / "pg_wal"
        (self.dir / "archive_status").mkdir(parents=True)
        self.status = Path(status_dir(str(self.dir)))
        self.store = root / "store"
        self.store.mkdir()  # walg makes no storage folder
        self.walg_bin = walg_bin
        self.log = root / "walg.log"
        keep = ("PATH", "HOME", "LANG", "TMPDIR")
        self.env = {k: v for k, v in os.environ.items() if k in keep}
        self.env["WALG_FILE_PREFIX"] = str(self.store)

    def add(self, name: str, data: bytes | None = None) -> Path:
        path = self.dir / name
        path.write_bytes(data if data is not None else os.urandom(4096) * 64)
        (self.dir / "archive_status" / f"{name}.ready").touch()
        return path

    def stored(self, store: Path | None = None) -> list[str]:
        wal = (store or self.store) / "wal_005"
        return sorted(p.name for p in wal.iterdir()) if wal.is_dir() else []

    def key(self) -> str:
        """The destination key of the calls :meth:`walg` makes."""
        return key_of(self.env, self.root)

    def marker(self, name: str, key: str | None = None) -> Path:
        return Path(marker_path(str(self.status), name, key or self.key()))

    def markers(self) -> list[str]:
        return sorted(
            p.name
            for p in self.status.iterdir()
            if not p.name.startswith(".") and not p.name.endswith(".lock")
        )

    def walg(
        self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        # stderr to a file, as PostgreSQL's log: a detached uploader keeps it open after the
        # call, and a pipe would make this wait for the uploader too.
        with self.log.open("a") as err:
            out = subprocess.run(
                [self.walg_bin, *args],
                env=self.env if env is None else env,
                cwd=self.root,
                input=stdin,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                timeout=120,
                check=False,
            )
        return out

    def archive(self, name: str) -> subprocess.CompletedProcess[str]:
        """What PostgreSQL's archiver does for one file."""
        out = self.walg("wal-push", f"pg_wal/{name}")
        if out.returncode == 0:
            ready = self.dir / "archive_status" / f"{name}.ready"
            ready.rename(ready.with_suffix(".done"))
        return out

    def wait_uploader_gone(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while uploader_running(str(self.status)):
            assert time.monotonic() < deadline, "the detached uploader did not exit"
            time.sleep(0.05)


@pytest.fixture
def pg_wal(tmp_path: Path, walg_bin: str) -> Iterator[PgWal]:
    wal = PgWal(tmp_path, walg_bin)
    yield wal
    wal.wait_uploader_gone()


def _hold(path: Path, seconds: float, then: str = "") -> Popen:
    """A separate process that holds an flock on ``path`` for ``seconds``, then runs the
    Python statements ``then`` (with ``os``, ``file_identity`` and ``write_marker`` at hand)
    and lets go; a per-file lock is removed first, as its holders do."""
    code = f"""
import fcntl, os, time
from walg.ops.wal import file_identity, write_marker
fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print('locked', flush=True)
time.sleep({seconds})
{then}
if {path.name.endswith(".lock") and path.name != UPLOADER_LOCK!r}:
    os.unlink({str(path)!r})
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


Popen = subprocess.Popen[str]


def test_segment_lock_is_exclusive_between_processes_and_leaves_nothing(tmp_path: Path) -> None:
    name = SEGMENTS[0]
    holder = _hold(tmp_path / f"{name}.lock", 0.6)
    with segment_lock(str(tmp_path), name, 0) as got:
        assert not got
    start = time.monotonic()
    with segment_lock(str(tmp_path), name, 30) as got:
        assert got
        assert time.monotonic() - start >= 0.3, "it waited for the holder"
        assert (tmp_path / f"{name}.lock").exists()
    holder.wait(timeout=30)
    assert list(tmp_path.iterdir()) == []


def test_a_lock_file_removed_between_its_open_and_its_lock_is_not_held(tmp_path: Path) -> None:
    """A caller opens the lock file, and before its flock the holder lets go (removing the
    file) and a third process makes the file anew and locks it. The caller's flock then
    succeeds on the removed inode: it must see another inode at the path and wait for the
    third process, not go on beside it (two uploads of one segment at once). The window is
    widened by strace, which delays the caller's first flock."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (scripts/setup.sh installs it)")
    status = tmp_path / "status"
    status.mkdir()
    name = SEGMENTS[0]
    path = status / f"{name}.lock"
    first = _hold(path, 1.5)
    code = (
        "import sys, time; from walg.ops.wal_push import segment_lock\n"
        "with segment_lock(sys.argv[1], sys.argv[2], 3.0) as locked:\n"
        "    print(locked, flush=True)\n"
    )
    delayed = [strace, "-f", "-qq", "-o", "/dev/null", "--inject=flock:delay_enter=2000000:when=1"]
    caller = subprocess.Popen(
        [*delayed, sys.executable, "-c", code, str(status), name], stdout=subprocess.PIPE, text=True
    )
    first.wait(timeout=30)  # let go at 1.5 s, the lock file removed
    third = _hold(path, 5.0)  # at the path anew, locked before the caller's flock (2 s)
    try:
        out, _ = caller.communicate(timeout=30)
    finally:
        third.wait(timeout=30)
    assert out.strip() == "False", "the caller took a lock the third process holds"


def test_a_marker_vouches_for_one_file_only(tmp_path: Path) -> None:
    segment = tmp_path / SEGMENTS[0]
    segment.write_bytes(b"a" * 8192)
    marker = Path(marker_path(str(tmp_path), SEGMENTS[0], KEY_A))
    write_marker(str(marker), file_identity(str(segment)))
    assert take_marker(str(marker), str(segment))
    assert not marker.exists()
    # The same name rewritten (pg_rewind, a restore into the same pg_wal): not vouched for,
    # and the marker is dropped.
    write_marker(str(marker), file_identity(str(segment)))
    segment.unlink()
    segment.write_bytes(b"b" * 8192)
    assert not take_marker(str(marker), str(segment))
    assert not marker.exists()
    # Empty markers (walg before markers named the file) vouch for nothing either.
    marker.touch()
    assert not take_marker(str(marker), str(segment))
    assert not take_marker(str(tmp_path / f"{SEGMENTS[0]}.{KEY_B}"), str(segment))


def test_a_marker_vouches_only_while_the_object_it_names_is_there(tmp_path: Path) -> None:
    segment = tmp_path / SEGMENTS[0]
    segment.write_bytes(b"a" * 8192)
    stored = tmp_path / "archive" / f"{SEGMENTS[0]}.lz4"
    stored.parent.mkdir()
    stored.write_bytes(b"x")
    marker = Path(marker_path(str(tmp_path), SEGMENTS[0], KEY_A))
    write_marker(str(marker), file_identity(str(segment)), str(stored))
    assert take_marker(str(marker), str(segment))
    write_marker(str(marker), file_identity(str(segment)), str(stored))
    stored.unlink()
    assert not take_marker(str(marker), str(segment))
    assert not marker.exists()


def test_an_archive_folder_swapped_under_its_name_is_archived_to_again(pg_wal: PgWal) -> None:
    """WALG_FILE_PREFIX names a link pointed at a new volume (or a mount point remounted)
    while markers for the old one wait: the same environment, so the same destination key,
    but the segments are not in the archive now written to, and must be archived there."""
    old, new = pg_wal.root / "old", pg_wal.root / "new"
    old.mkdir()
    new.mkdir()
    link = pg_wal.root / "archive"
    link.symlink_to(old)
    pg_wal.env["WALG_FILE_PREFIX"] = str(link)
    for name in SEGMENTS[:5]:
        pg_wal.add(name)
    assert pg_wal.archive(SEGMENTS[0]).returncode == 0, pg_wal.log.read_text()
    deadline = time.monotonic() + 60
    while len(pg_wal.markers()) < 4:  # the detached uploader vouches for the other four
        assert time.monotonic() < deadline, pg_wal.log.read_text()
        time.sleep(0.05)
    pg_wal.wait_uploader_gone()
    assert pg_wal.stored(old) == [f"{name}.lz4" for name in SEGMENTS[:5]]
    link.unlink()
    link.symlink_to(new)
    for name in SEGMENTS[1:5]:
        assert pg_wal.archive(name).returncode == 0, pg_wal.log.read_text()
    assert pg_wal.stored(new) == [f"{name}.lz4" for name in SEGMENTS[1:5]]


def test_a_marker_answers_only_the_destination_it_was_written_for(tmp_path: Path) -> None:
    """Markers of two destinations for one file live side by side; a call with one key never
    takes, nor removes, the other's; a marker without a key (walg before keys, WAL-G's own
    empty marker) says nothing about where the file went and is left alone."""
    name = SEGMENTS[0]
    segment = tmp_path / name
    segment.write_bytes(b"a" * 8192)
    for key in (KEY_A, KEY_B):
        write_marker(marker_path(str(tmp_path), name, key), file_identity(str(segment)))
    unkeyed = tmp_path / name
    unkeyed_status = tmp_path / "status"
    unkeyed_status.mkdir()
    write_marker(str(unkeyed_status / name), file_identity(str(segment)))
    assert not take_marker(str(unkeyed_status / name), str(segment))
    assert (unkeyed_status / name).exists(), "an unkeyed marker is not ours to take"
    assert take_marker(marker_path(str(tmp_path), name, KEY_A), str(segment))
    assert not Path(marker_path(str(tmp_path), name, KEY_A)).exists()
    assert Path(marker_path(str(tmp_path), name, KEY_B)).exists(), "B's marker stays for B"
    assert not take_marker(marker_path(str(tmp_path), name, KEY_A), str(unkeyed))
    assert take_marker(marker_path(str(tmp_path), name, KEY_B), str(segment))


def test_markers_of_files_postgresql_finished_are_forgotten(pg_wal: PgWal) -> None:
    pg_wal.status.mkdir(parents=True)
    kept, done = SEGMENTS[0], SEGMENTS[1]
    for name in (kept, done):
        identity = file_identity(str(pg_wal.add(name)))
        for key in (KEY_A, KEY_B):  # every destination's markers
            write_marker(marker_path(str(pg_wal.status), name, key), identity)
    # An unkeyed one (walg before keys, WAL-G) is as finished as the others.
    write_marker(str(pg_wal.status / done), b"")
    ready = pg_wal.dir / "archive_status" / f"{done}.ready"
    ready.rename(ready.with_suffix(".done"))
    (pg_wal.status / f"{kept}.lock").touch()
    assert forget_finished_markers(str(pg_wal.dir)) == [done, f"{done}.{KEY_A}", f"{done}.{KEY_B}"]
    assert sorted(p.name for p in pg_wal.status.iterdir()) == [
        f"{kept}.{KEY_A}",
        f"{kept}.{KEY_B}",
        f"{kept}.lock",
    ]


def test_a_backlog_drains_through_the_detached_uploader(pg_wal: PgWal) -> None:
    contents = {name: pg_wal.add(name).read_bytes() for name in SEGMENTS}
    first = pg_wal.archive(SEGMENTS[0])
    assert first.returncode == 0, pg_wal.log.read_text()
    for name in SEGMENTS[1:]:
        assert pg_wal.archive(name).returncode == 0, pg_wal.log.read_text()
    assert pg_wal.stored() == [f"{name}.lz4" for name in SEGMENTS]
    pg_wal.wait_uploader_gone()
    log = pg_wal.log.read_text()
    # The detached uploader's own line, not the in-process look-ahead's ("also archived N more").
    assert re.search(r"INFO: \S+ \S+ archived \d+ WAL files ahead of time", log), log
    assert "more WAL files ahead of time" not in log, log
    # Every marker was consumed by PostgreSQL's own call, and no lock file is left.
    left = [p.name for p in pg_wal.status.iterdir() if p.name not in (UPLOADER_LOCK, SWEEP_STAMP)]
    assert left == []
    for name, data in contents.items():
        fetched = pg_wal.root / f"fetched-{name}"
        assert pg_wal.walg("wal-fetch", name, str(fetched)).returncode == 0
        assert fetched.read_bytes() == data


def test_wal_push_waits_for_the_uploader_writing_its_file(pg_wal: PgWal) -> None:
    name = SEGMENTS[0]
    segment = pg_wal.add(name)
    pg_wal.status.mkdir(parents=True)
    # An uploader is running and is writing this very file: it holds the file's lock and
    # leaves the marker before it lets go.
    uploader = _hold(pg_wal.status / UPLOADER_LOCK, 3)
    writer = _hold(
        pg_wal.status / f"{name}.lock",
        0.8,
        f"write_marker({str(pg_wal.marker(name))!r}, file_identity({str(segment)!r}))",
    )
    start = time.monotonic()
    out = pg_wal.archive(name)
    assert out.returncode == 0, pg_wal.log.read_text()
    assert time.monotonic() - start >= 0.4, "it waited for the lock"
    assert "archived by the detached uploader" in pg_wal.log.read_text()
    assert pg_wal.stored() == [], "the call took the uploader's marker, nothing uploaded twice"
    assert pg_wal.markers() == []
    writer.wait(timeout=30)
    uploader.wait(timeout=30)


def test_only_one_uploader_runs(pg_wal: PgWal) -> None:
    for name in SEGMENTS[:3]:
        pg_wal.add(name)
    pg_wal.status.mkdir(parents=True)
    fd = os.open(pg_wal.status / UPLOADER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        out = pg_wal.walg("wal-push-ahead", str(pg_wal.dir))
        assert out.returncode == 0
        assert pg_wal.stored() == [], "a second uploader exits at once"
    finally:
        os.close(fd)
    out = pg_wal.walg("wal-push-ahead", str(pg_wal.dir), "--exclude", SEGMENTS[0])
    assert out.returncode == 0
    assert pg_wal.stored() == [f"{name}.lz4" for name in SEGMENTS[1:3]]
    for name in SEGMENTS[1:3]:
        assert take_marker(str(pg_wal.marker(name)), str(pg_wal.dir / name))


def test_the_uploader_leaves_files_it_cannot_have(pg_wal: PgWal) -> None:
    locked, gone = SEGMENTS[0], SEGMENTS[1]
    pg_wal.add(locked)
    pg_wal.add(gone)
    pg_wal.status.mkdir(parents=True)
    (pg_wal.dir / "archive_status" / f"{gone}.ready").rename(
        pg_wal.dir / "archive_status" / f"{gone}.done"
    )
    # A wal-push of `locked` is archiving it (and PostgreSQL marks it done when that ends).
    ready = pg_wal.dir / "archive_status" / f"{locked}.ready"
    holder = _hold(
        pg_wal.status / f"{locked}.lock",
        1.5,
        f"os.rename({str(ready)!r}, {str(ready)[:-6] + '.done'!r})",
    )
    out = pg_wal.walg("wal-push-ahead", str(pg_wal.dir))
    assert out.returncode == 0
    assert pg_wal.stored() == [], "neither the locked file nor one PostgreSQL finished"
    assert not pg_wal.marker(locked).exists()
    holder.wait(timeout=30)


def test_the_uploader_leaves_files_already_stored(pg_wal: PgWal) -> None:
    """A wal-push has just archived the file and PostgreSQL has not yet marked it done: the
    uploader neither archives it again nor leaves a marker that no call would take."""
    stored, other = SEGMENTS[0], SEGMENTS[1]
    pg_wal.add(stored)
    pg_wal.add(other)
    pg_wal.env["TOTAL_BG_UPLOADED_LIMIT"] = "1"  # this call alone, no uploader
    assert pg_wal.walg("wal-push", f"pg_wal/{stored}").returncode == 0
    del pg_wal.env["TOTAL_BG_UPLOADED_LIMIT"]
    before = (pg_wal.store / "wal_005" / f"{stored}.lz4").stat()
    assert (pg_wal.dir / "archive_status" / f"{stored}.ready").exists()
    out = pg_wal.walg("wal-push-ahead", str(pg_wal.dir))
    assert out.returncode == 0, pg_wal.log.read_text()
    assert pg_wal.stored() == [f"{stored}.lz4", f"{other}.lz4"]
    assert not pg_wal.marker(stored).exists()
    assert pg_wal.marker(other).exists()  # the file it did archive ahead
    after = (pg_wal.store / "wal_005" / f"{stored}.lz4").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


@pytest.mark.parametrize("limit", ["-1", "0", "1"])
def test_a_total_bg_uploaded_limit_below_two_archives_only_the_call_s_file(
    pg_wal: PgWal, limit: str
) -> None:
    """WAL-G reads TOTAL_BG_UPLOADED_LIMIT as an int and uploads nothing in the background
    for any value below 2, negative ones included. walg refused a negative one (exit 78 from
    every command), so a WAL-G configuration with -1 stopped archiving altogether."""
    first, other = SEGMENTS[0], SEGMENTS[1]
    pg_wal.add(first)
    pg_wal.add(other)
    pg_wal.env["TOTAL_BG_UPLOADED_LIMIT"] = limit
    out = pg_wal.walg("wal-push", f"pg_wal/{first}")
    assert out.returncode == 0, pg_wal.log.read_text()
    # None was started: a process, not only its lock or its upload, which on a loaded
    # machine may come later than any fixed pause.
    assert detached_walg(pg_wal.dir, ["wal-push-ahead"]) == []
    time.sleep(1.5)  # a detached uploader, had one been started, would have stored the other
    assert not uploader_running(str(pg_wal.status))
    assert pg_wal.stored() == [f"{first}.lz4"]


def test_an_upload_concurrency_of_one_archives_only_the_call_s_file(pg_wal: PgWal) -> None:
    """WALG_UPLOAD_CONCURRENCY=1 turns the look-ahead off: one upload at a time is the call's
    own (the look-ahead runs WALG_UPLOAD_CONCURRENCY - 1 beside it)."""
    first, other = SEGMENTS[0], SEGMENTS[1]
    pg_wal.add(first)
    pg_wal.add(other)
    pg_wal.env["WALG_UPLOAD_CONCURRENCY"] = "1"
    out = pg_wal.walg("wal-push", f"pg_wal/{first}")
    assert out.returncode == 0, pg_wal.log.read_text()
    time.sleep(1.5)  # a detached uploader, had one been started, would have stored the other
    assert not uploader_running(str(pg_wal.status))
    assert pg_wal.stored() == [f"{first}.lz4"]


def test_the_detached_uploader_archives_at_most_total_bg_uploaded_limit_files(
    pg_wal: PgWal,
) -> None:
    """TOTAL_BG_UPLOADED_LIMIT bounds one detached uploader's work: with a backlog of seven
    other files and a limit of three, the call's own file and three more are stored, and the
    uploader exits (the next calls start another for the rest)."""
    for name in SEGMENTS:
        pg_wal.add(name)
    pg_wal.env["TOTAL_BG_UPLOADED_LIMIT"] = "3"
    pg_wal.env["WALG_UPLOAD_CONCURRENCY"] = "2"
    out = pg_wal.walg("wal-push", f"pg_wal/{SEGMENTS[0]}")
    assert out.returncode == 0, pg_wal.log.read_text()
    # Its last line, written while it still holds its lock (it may not hold it yet now).
    deadline = time.monotonic() + 60
    while not re.search(r"archived \d+ WAL files ahead of time", pg_wal.log.read_text()):
        assert time.monotonic() < deadline, pg_wal.log.read_text()
        time.sleep(0.05)
    pg_wal.wait_uploader_gone()
    assert pg_wal.stored() == [f"{name}.lz4" for name in SEGMENTS[:4]], pg_wal.log.read_text()
    assert pg_wal.markers() == sorted(f"{name}.{pg_wal.key()}" for name in SEGMENTS[1:4])


def test_the_uploader_leaves_files_stored_under_another_compression(pg_wal: PgWal) -> None:
    """Archived before with another compression method: the uploader does not store a second
    copy next to it nor vouch for it; PostgreSQL's own call compares the content."""
    name, other = SEGMENTS[0], SEGMENTS[1]
    pg_wal.add(name)
    pg_wal.add(other)
    (pg_wal.store / "wal_005").mkdir(parents=True)
    (pg_wal.store / "wal_005" / f"{name}.zst").write_bytes(b"archived by another configuration")
    out = pg_wal.walg("wal-push-ahead", str(pg_wal.dir))
    assert out.returncode == 0, pg_wal.log.read_text()
    assert pg_wal.stored() == [f"{name}.zst", f"{other}.lz4"]
    assert not pg_wal.marker(name).exists()
    assert pg_wal.marker(other).exists()


class ProbeCountingStorage(MemoryStorage):
    """In-memory storage that records every existence probe (a HEAD request on a cloud)."""

    def __init__(self) -> None:
        super().__init__()
        self.probes: list[str] = []

    def exists(self, key: str) -> bool:
        self.probes.append(key)
        return super().exists(key)


def _ready_segments(tmp_path: Path, names: list[str]) -> tuple[Path, Settings]:
    """A pg_wal under ``tmp_path`` with ``names`` written (64 KiB of random bytes each) and
    .ready, and settings for an in-memory uploader (its storage folder is never used)."""
    wal_dir = tmp_path / "pg_wal"
    (wal_dir / "archive_status").mkdir(parents=True)
    for name in names:
        (wal_dir / name).write_bytes(os.urandom(4096) * 16)
        (wal_dir / "archive_status" / f"{name}.ready").touch()
    settings = load(environ={"HOME": str(tmp_path), "WALG_FILE_PREFIX": str(tmp_path / "unused")})
    return wal_dir, settings


def test_a_look_ahead_upload_probes_each_key_once(tmp_path: Path) -> None:
    """The uploader's "already stored?" question is the overwrite check's answer too: the
    upload does not probe the same keys again (each probe is a request on cloud storage)."""
    name = SEGMENTS[0]
    wal_dir, settings = _ready_segments(tmp_path, [name])
    storage = ProbeCountingStorage()
    uploader = LookaheadUploader(settings, storage, str(wal_dir), workers=1, budget=None)
    uploader.start()
    try:
        assert uploader.wait_for(name, 30)
    finally:
        # Resident (no budget, as the daemon's): it keeps no list of what it archived, which
        # would grow by one name per segment for as long as the daemon runs.
        assert uploader.stop() == ()
    assert storage.probes, "the uploader must ask whether the file is archived already"
    assert len(storage.probes) == len(set(storage.probes)), storage.probes
    assert storage.get_bytes(f"wal_005/{name}.lz4") != b""
    # wait_for took the marker: its caller answers for the file.
    assert not Path(marker_path(status_dir(str(wal_dir)), name, settings.destination_key)).exists()


def test_a_held_uploader_starts_nothing_until_resumed(tmp_path: Path) -> None:
    """hold() (the daemon's, once PostgreSQL's call was refused over another database
    system's WAL) keeps every .ready file out of storage, past its scans; resume() lets the
    backlog go."""
    wal_dir, settings = _ready_segments(tmp_path, SEGMENTS[:3])
    storage = MemoryStorage()
    uploader = LookaheadUploader(settings, storage, str(wal_dir), workers=2, budget=None)
    uploader.hold()
    uploader.start()
    try:
        time.sleep(1)  # ten scans
        assert storage.list("wal_005/") == []
        uploader.resume()
        deadline = time.monotonic() + 30
        while len(storage.list("wal_005/")) < 3:
            assert time.monotonic() < deadline, "resume() did not let the backlog go"
            time.sleep(0.05)
    finally:
        uploader.stop()


class GatedStorage(MemoryStorage):
    """In-memory storage whose writes wait for ``release`` once they have begun."""

    def __init__(self) -> None:
        super().__init__()
        self.began = threading.Event()
        self.release = threading.Event()

    @contextlib.contextmanager
    def open_write(self, key: str, overwrite: bool = True) -> Iterator[Sink]:
        self.began.set()
        assert self.release.wait(30)
        with super().open_write(key, overwrite) as sink:
            yield sink


def test_an_upload_in_flight_when_the_uploader_is_held_commits_nothing(tmp_path: Path) -> None:
    """hold() came while an upload was running (another upload of the look-ahead met another
    database system's segment): that upload commits nothing, and is no failure of storage
    (no pause, no warning): resumed, the uploader archives the file at once."""
    name = SEGMENTS[0]
    wal_dir, settings = _ready_segments(tmp_path, [name])
    storage = GatedStorage()
    uploader = LookaheadUploader(settings, storage, str(wal_dir), workers=1, budget=None)
    uploader.start()
    try:
        assert storage.began.wait(30)
        uploader.hold()
        storage.release.set()
        time.sleep(0.5)  # five scans
        assert storage.list("wal_005/") == []
        assert not Path(
            marker_path(status_dir(str(wal_dir)), name, settings.destination_key)
        ).exists()
        uploader.resume()
        deadline = time.monotonic() + 5  # well below the first pause after a failure
        while not storage.list("wal_005/"):
            assert time.monotonic() < deadline, "the held upload was taken for a failure"
            time.sleep(0.05)
    finally:
        uploader.stop()


class SlowReadStorage(MemoryStorage):
    """In-memory storage whose reads take half a second (a far bucket)."""

    @contextlib.contextmanager
    def open_read(self, key: str, offset: int = 0, length: int | None = None) -> Iterator[Source]:
        time.sleep(0.5)
        with super().open_read(key, offset, length) as source:
            yield source


def test_a_backlog_over_another_system_s_segment_stores_nothing_after_it(tmp_path: Path) -> None:
    """Started over a backlog whose first segment is stored as another database system's (a
    cluster made anew in the prefix of the one it replaced), the uploader stores none of the
    later ones, which collide with nothing: uploaded beside the first, the next committed
    while the stored object's first page was still being read, before the uploader held."""
    first, second = SEGMENTS[0], SEGMENTS[1]
    settings = load(environ={"HOME": str(tmp_path), "WALG_FILE_PREFIX": str(tmp_path / "unused")})
    storage = SlowReadStorage()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / first).write_bytes(segment_bytes(first, 222))
    push_one(settings, storage, str(theirs / first))
    wal_dir = tmp_path / "pg_wal"
    (wal_dir / "archive_status").mkdir(parents=True)
    for name in (first, second):
        (wal_dir / name).write_bytes(segment_bytes(name, 111))
        (wal_dir / "archive_status" / f"{name}.ready").touch()
    uploader = LookaheadUploader(settings, storage, str(wal_dir), workers=2, budget=None)
    uploader.start()
    try:
        time.sleep(2)
    finally:
        uploader.stop()
    assert [o.key for o in storage.list("wal_005/")] == [f"wal_005/{first}.lz4"]


# Destinations: a marker answers only calls configured for the archive it was written to.


def _archive_everything(pg_wal: PgWal, calls: list[tuple[list[str], dict[str, str]]]) -> None:
    """PostgreSQL's archiver with ``archive_command = 'CALL1 %p && CALL2 %p ...'``: each file,
    oldest first, is marked done once every call has succeeded."""
    ready_dir = pg_wal.dir / "archive_status"
    while names := sorted(p.name[: -len(".ready")] for p in ready_dir.glob("*.ready")):
        name = names[0]
        for args, env in calls:
            out = pg_wal.walg(*args, "wal-push", f"pg_wal/{name}", env=env)
            assert out.returncode == 0, pg_wal.log.read_text()
        (ready_dir / f"{name}.ready").rename(ready_dir / f"{name}.done")


def test_two_destinations_each_get_every_segment(pg_wal: PgWal) -> None:
    """The reviewer's loss: ``walg wal-push %p && walg --config b.json wal-push %p`` with a
    backlog. A's look-ahead markers must not end B's calls (nor B's A's): each archive gets
    every segment, and what each stored is the file's content."""
    contents = {name: pg_wal.add(name).read_bytes() for name in SEGMENTS}
    store_b = pg_wal.root / "store-b"
    store_b.mkdir()
    config_b = pg_wal.root / "b.json"
    config_b.write_text(json.dumps({"WALG_FILE_PREFIX": str(store_b)}))
    env_b = {k: v for k, v in pg_wal.env.items() if k != "WALG_FILE_PREFIX"}
    _archive_everything(pg_wal, [([], pg_wal.env), (["--config", str(config_b)], env_b)])
    pg_wal.wait_uploader_gone()
    for store in (pg_wal.store, store_b):
        assert pg_wal.stored(store) == [f"{name}.lz4" for name in SEGMENTS], store
    for name, data in contents.items():
        for args, env in (([], pg_wal.env), (["--config", str(config_b)], env_b)):
            fetched = pg_wal.root / f"fetched-{name}"
            out = pg_wal.walg(*args, "wal-fetch", name, str(fetched), env=env)
            assert out.returncode == 0, pg_wal.log.read_text()
            assert fetched.read_bytes() == data


def test_a_config_edited_during_a_backlog_sends_the_rest_to_the_new_archive(
    pg_wal: PgWal,
) -> None:
    """The config file is part of the key (path and identity): markers the uploader left for
    the old archive are not taken by calls that read the edited file."""
    for name in SEGMENTS:
        pg_wal.add(name)
    config = pg_wal.root / "walg.json"
    config.write_text(json.dumps({"WALG_FILE_PREFIX": str(pg_wal.store)}))
    env = {k: v for k, v in pg_wal.env.items() if k != "WALG_FILE_PREFIX"}
    first = pg_wal.walg("--config", str(config), "wal-push", f"pg_wal/{SEGMENTS[0]}", env=env)
    assert first.returncode == 0, pg_wal.log.read_text()
    ready = pg_wal.dir / "archive_status" / f"{SEGMENTS[0]}.ready"
    ready.rename(ready.with_suffix(".done"))
    deadline = time.monotonic() + 60
    while len(pg_wal.stored()) < len(SEGMENTS):
        assert time.monotonic() < deadline, "the uploader did not archive the backlog ahead"
        time.sleep(0.05)
    pg_wal.wait_uploader_gone()
    assert len(pg_wal.markers()) == len(SEGMENTS) - 1
    store_b = pg_wal.root / "store-b"
    store_b.mkdir()
    config.write_text(json.dumps({"WALG_FILE_PREFIX": str(store_b)}))
    _archive_everything(pg_wal, [(["--config", str(config)], env)])
    pg_wal.wait_uploader_gone()
    assert pg_wal.stored(store_b) == [f"{name}.lz4" for name in SEGMENTS[1:]]


def test_the_detached_uploader_marks_with_the_key_of_the_call_that_started_it(
    pg_wal: PgWal,
) -> None:
    """Configured by ~/.walg.json, a call starts the uploader with ``--config`` naming that
    file: another key, were it computed there. Its markers carry the caller's key, so the
    later calls take them (nothing archived twice, every marker consumed), and
    ``--destination-key`` names them as given."""
    home = pg_wal.root / "home"
    home.mkdir()
    (home / ".walg.json").write_text(json.dumps({"WALG_FILE_PREFIX": str(pg_wal.store)}))
    env = {k: v for k, v in pg_wal.env.items() if k != "WALG_FILE_PREFIX"}
    env["HOME"] = str(home)
    for name in SEGMENTS:
        pg_wal.add(name)
    _archive_everything(pg_wal, [([], env)])
    pg_wal.wait_uploader_gone()
    log = pg_wal.log.read_text()
    assert re.search(r"archived \d+ WAL files ahead of time", log), log
    assert "already archived with equal content" not in log, log
    assert pg_wal.markers() == []
    assert pg_wal.stored() == [f"{name}.lz4" for name in SEGMENTS]

    more = [f"0000000100000000000000{n:02X}" for n in range(0x30, 0x32)]
    for name in more:
        pg_wal.add(name)
    # The key comes through a pipe: a command line is anyone's to read (ps).
    args = ("wal-push-ahead", str(pg_wal.dir), "--destination-key-on-stdin")
    out = pg_wal.walg(*args, env=env, stdin=f"{KEY_A}\n")
    assert out.returncode == 0, pg_wal.log.read_text()
    assert pg_wal.markers() == [f"{name}.{KEY_A}" for name in more]
    assert pg_wal.walg(*args, env=env, stdin="x\n").returncode == 2
    assert pg_wal.walg(*args, env=env, stdin="").returncode == 2


def test_the_destination_key_holds_no_secret(tmp_path: Path) -> None:
    """The key names marker files: a digest of a password would let anyone who sees it test
    guesses. Secrets and unrelated variables leave it alone; what decides the destination
    changes it."""
    base = {"HOME": str(tmp_path), "PATH": "/usr/bin", "WALG_FILE_PREFIX": "/backups/a"}
    key = key_of(base, tmp_path)
    for name, value in (
        ("PGPASSWORD", "hunter2"),
        ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI"),
        ("AWS_SESSION_TOKEN", "t0k3n"),
        ("AZURE_STORAGE_SAS_TOKEN", "sv=2020"),
        ("WALG_LIBSODIUM_KEY", "0123456789abcdef"),
        ("WALG_PGP_KEY_PASSPHRASE", "pass"),
        ("WALG_SSH_PRIVATE_KEY_PATH", "/root/.ssh/id"),
        ("MY_DB_PW", "hunter2"),
    ):
        assert key_of({**base, name: value}, tmp_path) == key, name
    for name, value in (
        ("WALG_FILE_PREFIX", "/backups/b"),
        ("WALE_S3_PREFIX", "s3://bucket/x"),
        ("AWS_ENDPOINT", "http://127.0.0.1:9000"),
        ("WALG_CONFIG_PATH", str(tmp_path / "walg.json")),
    ):
        assert key_of({**base, name: value}, tmp_path) != key, name
    assert key_of(base, tmp_path / "..") != key  # a relative prefix would mean elsewhere


def test_the_launcher_takes_its_own_marker_and_leaves_the_others(pg_wal: PgWal) -> None:
    """bin/walg's fast path (before walg is imported): with markers of another destination
    and of its own for the file, it takes only its own and archives nothing; with only the
    other's it goes on to walg, which archives the file."""
    name = SEGMENTS[0]
    segment = pg_wal.add(name)
    pg_wal.status.mkdir(parents=True)
    identity = file_identity(str(segment))
    write_marker(str(pg_wal.marker(name, KEY_B)), identity)
    write_marker(str(pg_wal.marker(name)), identity)
    assert pg_wal.walg("wal-push", f"pg_wal/{name}").returncode == 0
    assert pg_wal.stored() == [], "its own marker answered the call"
    assert pg_wal.markers() == [f"{name}.{KEY_B}"]
    assert pg_wal.walg("wal-push", f"pg_wal/{name}").returncode == 0
    assert pg_wal.stored() == [f"{name}.lz4"]
    assert pg_wal.markers() == [f"{name}.{KEY_B}"], "the other destination's marker stays"


def test_the_launcher_takes_no_marker_whose_stored_object_is_gone(pg_wal: PgWal) -> None:
    """bin/walg's fast path, as walg.ops.wal.vouches: a marker naming a stored object vouches
    only while that object is there. Gone (the archive folder emptied or restored from an
    older copy after the look-ahead upload), the call must archive the file again, not
    answer 0 from the marker and let PostgreSQL recycle a segment the archive lacks."""
    name = SEGMENTS[0]
    segment = pg_wal.add(name)
    pg_wal.status.mkdir(parents=True)
    gone = pg_wal.store / "wal_005" / f"{name}.lz4"
    write_marker(str(pg_wal.marker(name)), file_identity(str(segment)), str(gone))
    assert pg_wal.walg("wal-push", f"pg_wal/{name}").returncode == 0, pg_wal.log.read_text()
    assert pg_wal.stored() == [f"{name}.lz4"]
    assert pg_wal.markers() == []


# A stalled look-ahead upload and PostgreSQL recycling the file under it.


def test_wal_push_fails_rather_than_archive_beside_a_stalled_uploader(tmp_path: Path) -> None:
    """The uploader holds the file's lock past the wait: the call fails (PostgreSQL retries)
    and stores nothing, instead of archiving the file beside an upload still reading it."""
    from walg.errors import WalgError
    from walg.ops.wal_push import wal_push
    from walg.storage.file import FileStorage

    wal_dir = tmp_path / "pg_wal"
    (wal_dir / "archive_status").mkdir(parents=True)
    name = SEGMENTS[0]
    (wal_dir / name).write_bytes(os.urandom(8192))
    (wal_dir / "archive_status" / f"{name}.ready").touch()
    status = Path(status_dir(str(wal_dir)))
    status.mkdir(parents=True)
    holder = _hold(status / f"{name}.lock", 5)
    settings = load(environ={"HOME": str(tmp_path), "WALG_FILE_PREFIX": str(tmp_path / "store")})
    (tmp_path / "store").mkdir()
    storage = FileStorage(tmp_path / "store")
    try:
        with pytest.raises(WalgError, match="has not finished it in 1 s"):
            wal_push(
                settings, storage, str(wal_dir / name), spawn_uploader=lambda *a: None, lock_wait=1
            )
        assert not (tmp_path / "store" / "wal_005").exists()
    finally:
        holder.kill()
        holder.wait(timeout=30)


class _MidUpload(FileStorage):
    """File storage that runs ``action`` once, when an upload has written ``after`` bytes:
    what happens meanwhile in pg_wal (or in storage) while a slow upload is under way."""

    def __init__(self, root: Path, after: int, action: Callable[[], None]) -> None:
        super().__init__(root)
        self._after = after
        self._action: Callable[[], None] | None = action

    @contextlib.contextmanager
    def open_write(self, key: str, overwrite: bool = True) -> Iterator[Sink]:
        with super().open_write(key, overwrite) as sink:
            yield _HookedSink(sink, self)

    def written(self, total: int) -> None:
        if self._action is not None and total >= self._after:
            action, self._action = self._action, None
            action()


class _HookedSink:
    def __init__(self, inner: Sink, owner: _MidUpload) -> None:
        self._inner, self._owner, self._total = inner, owner, 0

    def write(self, data: bytes | memoryview, /) -> int:
        written = self._inner.write(data)
        self._total += len(data)
        self._owner.written(self._total)
        return written


def _lookahead_setup(tmp_path: Path) -> tuple[Path, Path, Settings]:
    wal_dir = tmp_path / "pg_wal"
    (wal_dir / "archive_status").mkdir(parents=True)
    name = SEGMENTS[0]
    data = os.urandom(12 << 20)  # three 4 MiB blocks, read one after the other
    segment = wal_dir / name
    segment.write_bytes(data)
    ready = wal_dir / "archive_status" / f"{name}.ready"
    ready.touch()
    # The segment was written long before it was archived: its times are in an older tick.
    old = time.time_ns() - 10**9
    os.utime(segment, ns=(old, old))
    time.sleep(0.02)
    (tmp_path / "store").mkdir()  # walg makes no storage folder
    settings = load(environ={"HOME": str(tmp_path), "WALG_FILE_PREFIX": str(tmp_path / "store")})
    return segment, ready, settings


def test_a_look_ahead_upload_of_a_recycled_file_is_abandoned(tmp_path: Path) -> None:
    """The reviewer's race: while a look-ahead upload is under way PostgreSQL finishes with
    the file (.ready -> .done) and recycles it (renamed, the next segment written into the
    same inode). The upload must not commit what it read: nothing is stored, no marker."""
    from walg.errors import WalgError
    from walg.ops.wal_push import push_one

    segment, ready, settings = _lookahead_setup(tmp_path)
    later = segment.with_name(SEGMENTS[5])

    def recycle() -> None:
        ready.rename(ready.with_suffix(".done"))
        segment.rename(later)
        with later.open("r+b") as f:
            f.write(os.urandom(12 << 20))

    storage = _MidUpload(tmp_path / "store", 1 << 20, recycle)
    with pytest.raises(WalgError, match="look-ahead upload abandoned"):
        push_one(settings, storage, str(segment), absent=True, ready=str(ready))
    assert storage.list("") == []
    assert [p.name for p in (tmp_path / "store" / "wal_005").iterdir()] == [], "no temporary"


@pytest.mark.parametrize("change", ["rewritten", "not-ready"])
def test_a_look_ahead_upload_checks_the_file_after_its_last_read(
    tmp_path: Path, change: str
) -> None:
    """Either sign alone abandons the upload: the file changed in place (same inode and
    name), or PostgreSQL no longer has it .ready. Unchanged, the same upload commits and
    returns the identity its marker records."""
    from walg.errors import WalgError
    from walg.ops.wal_push import push_one

    segment, ready, settings = _lookahead_setup(tmp_path)

    def meddle() -> None:
        if change == "rewritten":
            with segment.open("r+b") as f:
                f.write(os.urandom(4096))
        else:
            ready.unlink()

    storage = _MidUpload(tmp_path / "store", 1 << 20, meddle)
    with pytest.raises(WalgError, match="look-ahead upload abandoned"):
        push_one(settings, storage, str(segment), absent=True, ready=str(ready))
    assert storage.list("") == []
    if change == "not-ready":
        ready.touch()
    identity = file_identity(str(segment))
    result = push_one(
        settings, FileStorage(tmp_path / "store"), str(segment), absent=True, ready=str(ready)
    )
    assert result.uploaded and result.identity == identity


def test_a_look_ahead_upload_never_replaces_an_object(tmp_path: Path) -> None:
    """An object stored under the key while a look-ahead upload runs (a standby archiving the
    same WAL, another host) is kept: equal content is success without writing; different
    content is an error and the stored object stays as it was."""
    from walg.errors import WalOverwriteError
    from walg.ops.wal_fetch import wal_fetch
    from walg.ops.wal_push import push_one

    segment, ready, settings = _lookahead_setup(tmp_path)
    key = f"wal_005/{SEGMENTS[0]}.lz4"
    plain = FileStorage(tmp_path / "store")

    def archived_meanwhile() -> None:
        push_one(settings, plain, str(segment))

    storage = _MidUpload(tmp_path / "store", 1 << 20, archived_meanwhile)
    result = push_one(settings, storage, str(segment), absent=True, ready=str(ready))
    assert not result.uploaded and result.identity == file_identity(str(segment))

    other = tmp_path / "other" / SEGMENTS[0]
    other.parent.mkdir()
    other.write_bytes(os.urandom(12 << 20))
    plain.delete([key])

    def other_archived_meanwhile() -> None:
        push_one(settings, plain, str(other))

    storage = _MidUpload(tmp_path / "store", 1 << 20, other_archived_meanwhile)
    with pytest.raises(WalOverwriteError):
        push_one(settings, storage, str(segment), absent=True, ready=str(ready))
    fetched = tmp_path / "fetched"
    wal_fetch(settings, plain, SEGMENTS[0], str(fetched))
    assert fetched.read_bytes() == other.read_bytes(), "the object stored first is kept"
    assert [p.name for p in (tmp_path / "store" / "wal_005").iterdir()] == [f"{SEGMENTS[0]}.lz4"]


def test_a_look_ahead_upload_never_replaces_an_object_with_overwrite_allowed(
    tmp_path: Path,
) -> None:
    """WALG_PREVENT_WAL_OVERWRITE=false lets PostgreSQL's own call replace a segment, never a
    look-ahead upload: it runs ahead of PostgreSQL on a file PostgreSQL has not asked about,
    and an object another writer stored meanwhile (another host archiving the same name) is
    kept and the upload fails."""
    from walg.errors import WalOverwriteError
    from walg.ops.wal_fetch import wal_fetch
    from walg.ops.wal_push import push_one

    segment, ready, _ = _lookahead_setup(tmp_path)
    settings = load(
        environ={
            "HOME": str(tmp_path),
            "WALG_FILE_PREFIX": str(tmp_path / "store"),
            "WALG_PREVENT_WAL_OVERWRITE": "false",
        }
    )
    assert not settings.prevent_wal_overwrite
    plain = FileStorage(tmp_path / "store")
    other = tmp_path / "other" / SEGMENTS[0]
    other.parent.mkdir()
    other.write_bytes(os.urandom(12 << 20))

    def other_archived_meanwhile() -> None:
        push_one(settings, plain, str(other))

    storage = _MidUpload(tmp_path / "store", 1 << 20, other_archived_meanwhile)
    with pytest.raises(WalOverwriteError):
        push_one(settings, storage, str(segment), absent=True, ready=str(ready))
    fetched = tmp_path / "fetched"
    wal_fetch(settings, plain, SEGMENTS[0], str(fetched))
    assert fetched.read_bytes() == other.read_bytes(), "the object stored first is kept"


# A status folder another user made.


def test_a_status_folder_of_another_user_means_no_look_ahead(tmp_path: Path, walg_bin: str) -> None:
    """walg_data/ (mode 0700) owned by root, as a wal-push run as root left it before such a
    call gave what it makes pg_wal's owner (or someone's chown -R did): the server's own calls
    must still archive (the ordinary way, with a warning naming the folder and its owner),
    not fail until pg_wal fills."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a call as root and the next ones as pgtest")
    from pgcluster import pg_tmpdir, pg_user_env, run_as_pg

    root = pg_tmpdir(prefix="status-owner-")
    try:
        wal_dir = root / "pg_wal"
        store = root / "store"
        for folder in (wal_dir, wal_dir / "archive_status", store, store / "wal_005"):
            folder.mkdir()
            shutil.chown(folder, "pgtest", "pgtest")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "WALG_FILE_PREFIX": str(store)}
        names = SEGMENTS[:3]
        for name in names:
            (wal_dir / name).write_bytes(os.urandom(4096) * 64)
            shutil.chown(wal_dir / name, "pgtest", "pgtest")
        (wal_dir / "archive_status" / f"{names[0]}.ready").touch()
        as_root = subprocess.run(
            [walg_bin, "wal-push", str(wal_dir / names[0])],
            env={**env, "HOME": "/root"},
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert as_root.returncode == 0, as_root.stderr
        status = Path(status_dir(str(wal_dir)))
        assert status.stat().st_uid == wal_dir.stat().st_uid  # given pg_wal's owner
        for made in (status.parent, status, *status.iterdir()):
            os.chown(made, 0, 0)
        assert status.stat().st_mode & 0o777 == 0o700
        for name in names[1:]:
            (wal_dir / "archive_status" / f"{name}.ready").touch()
        for name in names[1:]:
            out = run_as_pg(
                [walg_bin, "wal-push", str(wal_dir / name)],
                env={**env, **pg_user_env()},
                check=False,
                timeout=120,
            )
            assert out.returncode == 0, out.stderr
            assert "cannot use walg's status folder" in out.stderr, out.stderr
            assert f"{status} is owned by root, mode 0700" in out.stderr, out.stderr
        assert sorted(p.name for p in (store / "wal_005").iterdir()) == [
            f"{name}.lz4" for name in names
        ]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_an_uploader_that_cannot_start_does_not_fail_the_push(walg_bin: str) -> None:
    """With a backlog, a call starts the detached uploader; when no process can be started
    (EAGAIN: the user's process limit), it archives its own file and exits 0."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run walg as pgtest with a process limit")
    from pgcluster import pg_tmpdir, pg_user_env, run_as_pg

    root = pg_tmpdir(prefix="no-spawn-")
    try:
        wal_dir = root / "pg_wal"
        store = root / "store"
        for folder in (wal_dir, wal_dir / "archive_status", store):
            folder.mkdir()
            shutil.chown(folder, "pgtest", "pgtest")
        for name in SEGMENTS[:4]:
            (wal_dir / name).write_bytes(os.urandom(4096) * 64)
            shutil.chown(wal_dir / name, "pgtest", "pgtest")
            (wal_dir / "archive_status" / f"{name}.ready").touch()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "WALG_FILE_PREFIX": str(store)}
        out = run_as_pg(
            ["prlimit", "--nproc=1", walg_bin, "wal-push", str(wal_dir / SEGMENTS[0])],
            env={**env, **pg_user_env()},
            check=False,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert "cannot start the look-ahead uploader" in out.stderr, out.stderr
        assert sorted(p.name for p in (store / "wal_005").iterdir()) == [f"{SEGMENTS[0]}.lz4"]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_resident_uploader_clears_finished_markers(tmp_path: Path) -> None:
    """The daemon's uploader never exits, so it removes markers of files PostgreSQL has
    finished with as it goes (a cold ``wal-push`` beside it leaves some), not only at start."""
    wal_dir = tmp_path / "pg_wal"
    (wal_dir / "archive_status").mkdir(parents=True)
    status = Path(status_dir(str(wal_dir)))
    status.mkdir(parents=True)
    waiting, finished = SEGMENTS[0], SEGMENTS[1]
    for name in (waiting, finished):
        (wal_dir / name).write_bytes(b"\0" * 8192)
        write_marker(marker_path(str(status), name, KEY_A), file_identity(str(wal_dir / name)))
    (wal_dir / "archive_status" / f"{waiting}.ready").touch()
    (wal_dir / "archive_status" / f"{finished}.done").touch()
    settings = load(environ={"HOME": str(tmp_path), "WALG_FILE_PREFIX": str(tmp_path / "unused")})
    uploader = LookaheadUploader(
        settings, MemoryStorage(), str(wal_dir), workers=1, budget=0, sweep_interval=0.2
    )
    uploader.start()
    try:
        deadline = time.monotonic() + 10
        while (status / f"{finished}.{KEY_A}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        uploader.stop()
    assert not (status / f"{finished}.{KEY_A}").exists()
    assert (status / f"{waiting}.{KEY_A}").exists()


def test_a_failed_upload_of_a_mapped_file_reports_its_own_error(tmp_path: Path) -> None:
    """An upload that fails (a full disk) while its compressor threads still hold views of the
    mapped segment: the storage error is what the caller sees, not the mapping's BufferError
    ("cannot close exported pointers exist"), which said nothing of the cause."""
    from walg.errors import StorageError
    from walg.ops.wal_push import mapped_file

    segment = tmp_path / SEGMENTS[0]
    segment.write_bytes(os.urandom(1 << 20))
    with (
        pytest.raises(StorageError, match="No space left"),
        segment.open("rb") as handle,
        mapped_file(handle) as data,
    ):
        held = memoryview(data)[: 1 << 16]  # what a compressor thread still holds
        raise StorageError("cannot write: No space left on device")
    held.release()


class _FullStorage(FileStorage):
    """A storage folder on a full disk while ``full`` is set: no object can be created (as
    FileStorage reports it, naming the temporary file); counts the tries per key."""

    def __init__(self, root: Path) -> None:
        root.mkdir(exist_ok=True)  # walg never makes the storage folder itself
        super().__init__(root)
        self.full = True
        self.tries: dict[str, int] = {}

    def open_write(
        self, key: str, overwrite: bool = True
    ) -> contextlib.AbstractContextManager[Sink]:
        from walg.errors import StorageError

        self.tries[key] = self.tries.get(key, 0) + 1
        if self.full:
            tmp = f"{self.root}/{key}.tmp.20260101T000000Z-{os.urandom(8).hex()}"
            raise StorageError(f"cannot create {tmp}: No space left on device")
        return super().open_write(key, overwrite)


def _daemon_setup(tmp_path: Path, *names: str) -> tuple[Path, Settings]:
    pgdata = tmp_path / "pgdata"
    wal_dir = pgdata / "pg_wal"
    (wal_dir / "archive_status").mkdir(parents=True)
    for name in names:
        (wal_dir / name).write_bytes(os.urandom(64 << 10))
        (wal_dir / "archive_status" / f"{name}.ready").touch()
    settings = load(
        environ={
            "HOME": str(tmp_path),
            "WALG_FILE_PREFIX": str(tmp_path / "store"),
            "WALG_UPLOAD_CONCURRENCY": "3",
            "WALG_DAEMON_FOLLOW_WAL": "false",
        }
    )
    return pgdata, settings


def test_a_full_storage_is_retried_after_growing_delays_and_postgresql_calls_are_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The daemon's look-ahead on a full storage folder: each .ready file is tried again after
    1, 2, 4... s (not at every 0.1 s scan, compressing it again each time), the same warning is
    logged once, and PostgreSQL's own wal-push is tried at once and answered truthfully."""
    import logging

    from walg.errors import StorageError
    from walg.ops.daemon import OK, Daemon

    first, second = SEGMENTS[0], SEGMENTS[1]
    pgdata, settings = _daemon_setup(tmp_path, first, second)
    storage = _FullStorage(tmp_path / "store")
    daemon = Daemon(settings, storage, str(pgdata), timeout=30)
    caplog.set_level(logging.INFO)
    daemon.start()
    try:
        time.sleep(2.5)  # tries at 0, 1 and 3 s: two so far (three on a slow machine)
        # The second maybe not at all: a failure pauses the whole look-ahead, and the oldest
        # file goes first after each pause (on a loaded machine it fails before the second's
        # upload starts, which then waits for the next scan).
        assert f"wal_005/{first}.lz4" in storage.tries, storage.tries
        assert set(storage.tries) <= {f"wal_005/{first}.lz4", f"wal_005/{second}.lz4"}
        assert all(1 <= n <= 3 for n in storage.tries.values()), storage.tries
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings
        assert "No space left on device; next look-ahead try in 1 s" in warnings[0]
        tried = storage.tries[f"wal_005/{first}.lz4"]
        with pytest.raises(StorageError, match="No space left"):
            daemon.push(first)
        assert storage.tries[f"wal_005/{first}.lz4"] == tried + 1
        storage.full = False
        assert daemon.push(first) == OK
        assert storage.exists(f"wal_005/{first}.lz4")
        # The other one is archived ahead once its delay is over.
        deadline = time.monotonic() + 15
        while not storage.exists(f"wal_005/{second}.lz4"):
            assert time.monotonic() < deadline, "the look-ahead never tried again"
            time.sleep(0.05)
    finally:
        daemon.close()


def test_a_full_storage_pauses_the_whole_look_ahead_not_each_file_alone(tmp_path: Path) -> None:
    """A backlog on a full storage folder: the delays were per file, so every waiting .ready
    file was compressed and tried again about once a minute, and a backlog of thousands kept
    a CPU busy for as long as the outage lasted. A failure now holds back every look-ahead
    upload for the delay (until one succeeds, or PostgreSQL's own call through the daemon
    does): a handful of tries, whatever the backlog; then the backlog drains."""
    from walg.ops.daemon import OK, Daemon

    names = [f"0000000100000000000000{n:02X}" for n in range(0x40, 0x68)]
    pgdata, settings = _daemon_setup(tmp_path, *names)
    storage = _FullStorage(tmp_path / "store")
    daemon = Daemon(settings, storage, str(pgdata), timeout=30)
    daemon.start()
    try:
        time.sleep(2.5)
        tried = sum(storage.tries.values())
        assert 1 <= tried <= 8, storage.tries  # 2 workers at 0 s, maybe at 1 s again
        storage.full = False
        assert daemon.push(names[0]) == OK  # storage answers again: the pause is lifted
        deadline = time.monotonic() + 15
        while not all(storage.exists(f"wal_005/{name}.lz4") for name in names[1:]):
            assert time.monotonic() < deadline, "the look-ahead did not resume"
            time.sleep(0.05)
    finally:
        daemon.close()


def _temporary(folder: Path, key_name: str, age: float) -> Path:
    """A temporary file as FileStorage names them, written ``age`` seconds ago."""
    when = time.time() - age
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))
    path = folder / f"{key_name}.tmp.{stamp}-{os.urandom(8).hex()}"
    path.write_bytes(b"x" * 1000)
    os.utime(path, (when, when))
    return path


def test_the_daemon_removes_temporary_objects_abandoned_in_the_wal_folder(tmp_path: Path) -> None:
    """A daemon killed while it wrote (its follower always has an object open) leaves a
    temporary object of up to 16 MB that listings never show: the next daemon removes those
    older than an hour when it starts. Younger ones may be uploads in flight and stay, as does
    everything that is not a temporary object."""
    from walg.ops.daemon import Daemon

    pgdata, settings = _daemon_setup(tmp_path)
    wal = tmp_path / "store" / "wal_005"
    wal.mkdir(parents=True)
    abandoned = _temporary(wal, f"{SEGMENTS[0]}.lz4", 2 * 3600)
    in_flight = _temporary(wal, f"{SEGMENTS[1]}.lz4", 60)
    archived = wal / f"{SEGMENTS[2]}.lz4"
    archived.write_bytes(b"archived")
    old = time.time() - 2 * 3600
    os.utime(archived, (old, old))
    other = tmp_path / "store" / "basebackups_005"
    other.mkdir()
    elsewhere = _temporary(other, "base_000000010000000000000002_backup_stop_sentinel.json", 7200)
    daemon = Daemon(settings, FileStorage(tmp_path / "store"), str(pgdata), timeout=60)
    daemon.start()
    try:
        deadline = time.monotonic() + 10
        while abandoned.exists():
            assert time.monotonic() < deadline, "the abandoned temporary object is still there"
            time.sleep(0.05)
    finally:
        daemon.close()
    assert in_flight.exists() and archived.exists() and elsewhere.exists()


def test_a_detached_uploader_removes_temporary_objects_abandoned_by_cold_calls(
    pg_wal: PgWal,
) -> None:
    """Without a daemon, a cold ``wal-push`` killed mid-upload (an immediate shutdown, the OOM
    killer) left up to a segment's worth in ``wal_005/`` that nothing ever removed. The
    detached uploader a backlog starts (``walg wal-push-ahead``, run here in the foreground)
    now sweeps those older than an hour, at most once an hour (listing an archive of many
    segments is not free); young ones may be uploads in flight and stay."""
    wal = pg_wal.store / "wal_005"
    wal.mkdir()
    abandoned = _temporary(wal, f"{SEGMENTS[7]}.lz4", 2 * 3600)
    in_flight = _temporary(wal, f"{SEGMENTS[6]}.lz4", 60)

    def uploader(name: str) -> None:
        pg_wal.add(name)
        out = pg_wal.walg("wal-push-ahead", str(pg_wal.dir))
        assert out.returncode == 0, pg_wal.log.read_text()

    uploader(SEGMENTS[0])
    assert not abandoned.exists(), pg_wal.log.read_text()
    assert in_flight.exists()
    assert "removed 1 abandoned temporary objects in wal_005/" in pg_wal.log.read_text()
    stamp = pg_wal.status / SWEEP_STAMP
    assert abs(stamp.stat().st_mtime - time.time()) < 120
    # Swept a moment ago: the next backlog leaves even an old one for later.
    again = _temporary(wal, f"{SEGMENTS[7]}.lz4", 2 * 3600)
    uploader(SEGMENTS[1])
    assert again.exists()
    # An hour later it goes.
    old = time.time() - 3601
    os.utime(stamp, (old, old))
    uploader(SEGMENTS[2])
    assert not again.exists() and in_flight.exists()
    assert pg_wal.stored() == sorted([f"{name}.lz4" for name in SEGMENTS[:3]] + [in_flight.name])


class _DevFullStorage(FileStorage):
    """Local storage on a full disk: the file of a new object writes to /dev/full, so
    storage's own writer fails with ENOSPC once it has gathered a 1 MiB chunk."""

    def __init__(self, root: Path) -> None:
        root.mkdir(exist_ok=True)  # walg never makes the storage folder itself
        super().__init__(root)

    def _create(self, tmp: str) -> tuple[io.FileIO, bool]:
        handle, _direct = super()._create(tmp)
        handle.close()
        return io.FileIO("/dev/full", "wb"), True


def test_failed_pushes_in_the_daemon_leave_no_descriptor_or_mapping_without_the_collector(
    tmp_path: Path,
) -> None:
    """PostgreSQL's wal-push and the look-ahead fail on a full disk: the daemon must let go of
    the segment at once. The failure's frames held views of the mapping, and the daemon keeps
    such exceptions in reference cycles (a future and the frame waiting on it), so the segment
    stayed open and mapped until the cyclic collector ran (minutes later)."""
    import gc

    from walg.errors import StorageError
    from walg.ops.daemon import Daemon

    first, second = SEGMENTS[0], SEGMENTS[1]
    pgdata, settings = _daemon_setup(tmp_path, first, second)
    for name in (first, second):
        (pgdata / "pg_wal" / name).write_bytes(os.urandom(8 << 20))
    storage = _DevFullStorage(tmp_path / "store")

    def held() -> int:
        paths = {str(pgdata / "pg_wal" / name) for name in (first, second)}
        count = 0
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                count += os.readlink(f"/proc/self/fd/{fd}") in paths
        with open("/proc/self/maps") as maps:
            count += sum(line.rstrip("\n").split(" ")[-1] in paths for line in maps)
        return count

    gc.collect()
    gc.disable()
    daemon = Daemon(settings, storage, str(pgdata), timeout=30)
    try:
        daemon.start()
        for _ in range(2):
            with pytest.raises(StorageError, match="No space left on device"):
                daemon.push(first)
        time.sleep(1.5)  # the look-ahead tried the second one, twice
        assert held() == 0
    finally:
        daemon.close()
        gc.enable()


# Two calls for one name at once, from two clusters archiving into the same storage.


def test_two_calls_racing_with_different_content_never_both_succeed(
    tmp_path: Path, walg_bin: str
) -> None:
    """Two standbys promoted to the same timeline each archive their own 00000002.history
    (always checked): the first call checks, finds nothing and is slow to store (a delay at
    its write); the second checks, finds nothing and stores its own. The first must not then
    replace it and exit 0: one of them fails, and what is stored is what the other archived."""
    name = "00000002.history"
    first, second = PgWal(tmp_path / "a", walg_bin), PgWal(tmp_path / "b", walg_bin)
    second.store = first.store
    second.env["WALG_FILE_PREFIX"] = str(first.store)
    first.add(name, b"1\t0/3000000\tno recovery target specified\n")
    second.add(name, b"1\t0/5000000\tno recovery target specified\n")
    slow = {
        **first.env,
        "WALG_FAULT_INJECTION": json.dumps([{"op": "write", "key": r"\.history", "delay": 4}]),
    }
    with first.log.open("a") as err:
        racing = subprocess.Popen(
            [walg_bin, "wal-push", f"pg_wal/{name}"],
            env=slow,
            cwd=first.root,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        # The call holds the file's lock from before its overwrite check until it ends.
        lock = first.status / f"{name}.lock"
        deadline = time.monotonic() + 30
        while not lock.exists():
            assert racing.poll() is None and time.monotonic() < deadline, first.log.read_text()
            time.sleep(0.01)
        time.sleep(0.5)  # its check is done (a few stat calls); it waits at its write
        assert racing.poll() is None
        assert second.walg("wal-push", f"pg_wal/{name}").returncode == 0, second.log.read_text()
        assert racing.wait(timeout=60) != 0, "both calls reported the file archived"
    finally:
        racing.kill()
        racing.wait()
    assert "different content" in first.log.read_text()
    fetched = tmp_path / "fetched"
    assert second.walg("wal-fetch", name, str(fetched)).returncode == 0
    assert fetched.read_bytes() == (second.dir / name).read_bytes(), "the first stored is kept"
    assert first.stored() == [f"{name}.lz4"]


# A full WAL volume.


@pytest.fixture
def full_pg_wal(pg_wal: PgWal) -> Iterator[PgWal]:
    """``pg_wal`` on a small tmpfs, filled up once the test has put its files there."""
    with small_tmpfs(pg_wal.dir, "size=256k,mode=0700"):
        try:
            (pg_wal.dir / "archive_status").mkdir()
            yield pg_wal
        finally:
            pg_wal.wait_uploader_gone()


def _fill(folder: Path) -> None:
    """Fill the file system of ``folder`` to the last byte."""
    with (folder / "filler").open("wb", buffering=0) as filler:
        with contextlib.suppress(OSError):
            while True:
                filler.write(b"\0" * 4096)
        with contextlib.suppress(OSError):
            while True:
                filler.write(b"\0")


def test_a_marker_that_does_not_fit_leaves_nothing_behind(full_pg_wal: PgWal) -> None:
    """pg_wal full (archiving fell behind): the look-ahead upload succeeds, its marker cannot
    be written. The marker's temporary file must not stay in walg's status folder for good
    (nothing ever removed it); PostgreSQL's own call then archives the file (equal content)."""
    pg_wal = full_pg_wal
    name = SEGMENTS[1]
    pg_wal.add(name, os.urandom(8192))
    pg_wal.status.mkdir(parents=True)
    _fill(pg_wal.dir)
    out = pg_wal.walg("wal-push-ahead", str(pg_wal.dir))
    assert out.returncode == 0, pg_wal.log.read_text()
    assert pg_wal.stored() == [f"{name}.lz4"]
    assert "No space left on device" in pg_wal.log.read_text()
    left = [p.name for p in pg_wal.status.iterdir() if p.name not in (UPLOADER_LOCK, SWEEP_STAMP)]
    assert left == [], left
    assert pg_wal.archive(name).returncode == 0, pg_wal.log.read_text()


def test_an_equal_object_found_stored_is_made_durable_before_success(
    tmp_path: Path, walg_bin: str
) -> None:
    """Another writer (an earlier call killed between its rename and its fsyncs) left the
    segment's object only in the page cache. wal-push finds it equal and reports success,
    and PostgreSQL recycles the segment: the object, its folder and the folder above must be
    fsynced first, or a power loss could take the only copy. Watched with strace, as a crash
    cannot be staged here."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (scripts/setup.sh installs it)")
    name = "000000010000000000000007"
    pg = PgWal(tmp_path / "a", walg_bin)
    pg.add(name)
    other = PgWal(tmp_path / "other", walg_bin)
    other.add(name, (pg.dir / name).read_bytes())
    assert other.walg("wal-push", f"pg_wal/{name}").returncode == 0, other.log.read_text()
    # Copied as a writer that never got to its fsyncs would have left it.
    (pg.store / "wal_005").mkdir()
    obj = pg.store / "wal_005" / f"{name}.lz4"
    obj.write_bytes((other.store / "wal_005" / f"{name}.lz4").read_bytes())
    before = obj.stat()

    trace = tmp_path / "trace"
    watch = [strace, "-f", "-qq", "-y", "-e", "trace=fsync,fdatasync", "-o", str(trace)]
    with pg.log.open("a") as err:
        done = subprocess.run(
            [*watch, walg_bin, "wal-push", f"pg_wal/{name}"],
            env={**pg.env, "WALG_UPLOAD_CONCURRENCY": "1"},
            cwd=pg.root,
            stderr=err,
            timeout=120,
            check=False,
        )
    assert done.returncode == 0, pg.log.read_text()
    assert "already archived with equal content" in pg.log.read_text()
    synced = re.findall(r"f(?:data)?sync\(\d+<([^>]+)>\) = 0", trace.read_text())
    for path in (obj, obj.parent, pg.store):
        assert str(path) in synced, (path, synced)
    after = obj.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "rewritten"


class _DurableCalls(_MidUpload):
    """:class:`_MidUpload` that also notes each key :meth:`make_durable` was asked for."""

    def __init__(self, root: Path, after: int, action: Callable[[], None]) -> None:
        super().__init__(root, after, action)
        self.durable: list[str] = []

    def make_durable(self, key: str) -> None:
        self.durable.append(key)
        super().make_durable(key)


@pytest.mark.parametrize("lookahead", [False, True], ids=["call", "look-ahead"])
def test_an_equal_object_stored_during_the_upload_is_made_durable_before_success(
    tmp_path: Path, lookahead: bool
) -> None:
    """Another writer (a standby with archive_mode = always, another host) stores the same
    segment while this upload runs, and this upload's commit finds the name taken. Its object
    may still be only in the page cache (that writer killed before its fsyncs): success means
    PostgreSQL recycles the segment, so the object must be made durable first."""
    from walg.ops.wal_push import push_one

    segment, ready, settings = _lookahead_setup(tmp_path)
    key = f"wal_005/{SEGMENTS[0]}.lz4"

    def archived_meanwhile() -> None:
        push_one(settings, FileStorage(tmp_path / "store"), str(segment))

    storage = _DurableCalls(tmp_path / "store", 1 << 20, archived_meanwhile)
    result = push_one(
        settings, storage, str(segment), absent=lookahead, ready=str(ready) if lookahead else None
    )
    assert not result.uploaded
    assert storage.durable == [key]


class _TimingOutStorage(FileStorage):
    """Storage whose every write fails as a network client's socket does when its server
    stops answering: TimeoutError, an OSError (the daemon's request has its own limit)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(exist_ok=True)
        super().__init__(root)

    def open_write(
        self, key: str, overwrite: bool = True
    ) -> contextlib.AbstractContextManager[Sink]:
        raise TimeoutError("timed out")


def test_an_os_error_from_the_work_is_answered_as_the_request_failing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A storage timeout inside a push is that push failing: the client gets E at once. The
    daemon took it for its own request limit (the same class in Python 3.11) and, taking any
    OSError for the connection's, closed the connection without an answer: the client then
    said the daemon had stopped and ran walg itself."""
    import logging
    import socket
    import threading

    from walg.ops.daemon import Daemon, serve

    name = SEGMENTS[0]
    pgdata, settings = _daemon_setup(tmp_path, name)
    settings = load(environ={**settings.values, "WALG_UPLOAD_CONCURRENCY": "1"})
    daemon = Daemon(settings, _TimingOutStorage(tmp_path / "store"), str(pgdata), timeout=30)
    sock = tmp_path / "d.sock"
    server = serve(daemon, str(sock))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    caplog.set_level(logging.INFO)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(20)
            conn.connect(str(sock))
            body = name.encode()
            conn.sendall(b"F" + (len(body) + 3).to_bytes(2, "big") + body)
            assert conn.recv(1) == b"E"
    finally:
        server.shutdown()
        server.server_close()
        daemon.close()
        thread.join(10)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("timed out" in e for e in errors), errors
    assert not any("did not finish within" in e for e in errors), errors


def test_a_fifo_under_a_ready_segment_s_name_blocks_nothing_and_is_named(pg_wal: PgWal) -> None:
    """A FIFO where a ``.ready`` segment should be: the look-ahead started by the call for an
    earlier segment must not wait on it (a FIFO opened for reading waits for a writer), and
    PostgreSQL's own call for it fails at once saying what is there. Before, that call said
    "does not exist" of a file ``ls`` shows."""
    first, second = "000000010000000000000001", "000000010000000000000002"
    pg_wal.add(first)
    fifo = pg_wal.dir / second
    os.mkfifo(fifo)
    (pg_wal.dir / "archive_status" / f"{second}.ready").touch()
    assert pg_wal.archive(first).returncode == 0, pg_wal.log.read_text()
    pg_wal.wait_uploader_gone(timeout=30)
    assert pg_wal.archive(second).returncode != 0
    log = pg_wal.log.read_text()
    assert f"pg_wal/{second} is a FIFO, not a WAL file" in log, log
    assert "does not exist" not in log, log
    assert pg_wal.stored() == [f"{first}.lz4"]


def test_a_look_ahead_upload_of_a_file_archived_meanwhile_by_another_process_is_no_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two processes look ahead in one pg_wal (a second daemon, or the daemon beside the cold
    calls' detached uploader after archive_command was switched): PostgreSQL's call through
    the other one archives the file and marks it done while this upload runs. Abandoning the
    upload is right; but it was logged as a failed upload ("look-ahead upload of X failed")
    and paused the whole look-ahead as for a full storage, for longer at each such meeting."""
    segment, ready, settings = _lookahead_setup(tmp_path)
    later = segment.with_name(SEGMENTS[1])
    later.write_bytes(segment.read_bytes())

    def archived_elsewhere() -> None:
        ready.rename(ready.with_suffix(".done"))
        (ready.parent / f"{later.name}.ready").touch()

    storage = _MidUpload(tmp_path / "store", 1 << 20, archived_elsewhere)
    uploader = LookaheadUploader(settings, storage, str(segment.parent), workers=1, budget=None)
    with caplog.at_level("INFO"):
        uploader.start()
        try:
            deadline = time.monotonic() + 30
            # The next file is taken at the next scan, not after a pause for a failure.
            while not storage.exists(f"wal_005/{later.name}.lz4"):
                assert time.monotonic() < deadline, "the look-ahead did not go on"
                time.sleep(0.02)
            took = time.monotonic() - (deadline - 30)
        finally:
            uploader.stop()
    assert not storage.exists(f"wal_005/{segment.name}.lz4"), "nothing of the abandoned upload"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [], warnings
    assert took < 0.9, f"the look-ahead paused {took:.2f} s"


def test_a_fifo_at_a_marker_s_temporary_name_hangs_no_marker_write(tmp_path: Path) -> None:
    """A marker is written under ``.<marker>.new`` and renamed. A FIFO under that name (a
    killed writer leaves a regular file there; anything PostgreSQL's user made could be one)
    held the writer in open() for good: a detached uploader stuck with its lock taken, so no
    look-ahead ran again. It is replaced now, and the marker written."""
    segment = tmp_path / "000000010000000000000003"
    segment.write_bytes(b"x" * 8192)
    marker = marker_path(str(tmp_path), segment.name, "0" * 32)
    temporary = Path(marker).with_name(f".{Path(marker).name}.new")
    os.mkfifo(temporary)
    writer = threading.Thread(
        target=write_marker, args=(marker, file_identity(str(segment))), daemon=True
    )
    try:
        writer.start()
        writer.join(10)
        assert not writer.is_alive(), "write_marker is held opening the FIFO"
        assert take_marker(marker, str(segment))
        assert not temporary.exists()
    finally:
        # A writer stuck opening the FIFO is let go, so that the test can end.
        with contextlib.suppress(OSError):
            os.close(os.open(temporary, os.O_RDONLY | os.O_NONBLOCK))
