"""The detached look-ahead uploader (``walg wal-push-ahead``) and how ``wal-push`` calls share
work with it: per-file locks, markers that name the file they vouch for, stale markers.

The command-line flows run the installed ``walg`` as PostgreSQL would (one call per file, the
``.ready`` file renamed to ``.done`` after each success) against local storage.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from walg.ops.wal import file_identity, take_marker, write_marker
from walg.ops.wal_push import (
    UPLOADER_LOCK,
    LookaheadUploader,
    forget_finished_markers,
    segment_lock,
    status_dir,
    uploader_running,
)
from walg.settings import load
from walg.storage.memory import MemoryStorage

SEGMENTS = [f"0000000100000000000000{n:02X}" for n in range(0x20, 0x28)]


class PgWal:
    """A stand-in pg_wal: segments with ``.ready`` files, walg's status folder, a store."""

    def __init__(self, root: Path, walg_bin: str) -> None:
        self.root = root
        self.dir = root / "pg_wal"
        (self.dir / "archive_status").mkdir(parents=True)
        self.status = Path(status_dir(str(self.dir)))
        self.store = root / "store"
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

    def stored(self) -> list[str]:
        wal = self.store / "wal_005"
        return sorted(p.name for p in wal.iterdir()) if wal.is_dir() else []

    def walg(self, *args: str) -> subprocess.CompletedProcess[str]:
        # stderr to a file, as PostgreSQL's log: a detached uploader keeps it open after the
        # call, and a pipe would make this wait for the uploader too.
        with self.log.open("a") as err:
            out = subprocess.run(
                [self.walg_bin, *args],
                env=self.env,
                cwd=self.root,
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


def test_a_marker_vouches_for_one_file_only(tmp_path: Path) -> None:
    segment = tmp_path / SEGMENTS[0]
    segment.write_bytes(b"a" * 8192)
    marker = tmp_path / "marker"
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
    # Empty markers (walg before this change) vouch for nothing either.
    marker.touch()
    assert not take_marker(str(marker), str(segment))
    assert not take_marker(str(tmp_path / "none"), str(segment))


def test_markers_of_files_postgresql_finished_are_forgotten(pg_wal: PgWal) -> None:
    pg_wal.status.mkdir(parents=True)
    kept, done = SEGMENTS[0], SEGMENTS[1]
    for name in (kept, done):
        write_marker(str(pg_wal.status / name), file_identity(str(pg_wal.add(name))))
    ready = pg_wal.dir / "archive_status" / f"{done}.ready"
    ready.rename(ready.with_suffix(".done"))
    (pg_wal.status / f"{kept}.lock").touch()
    assert forget_finished_markers(str(pg_wal.dir)) == [done]
    assert sorted(p.name for p in pg_wal.status.iterdir()) == [kept, f"{kept}.lock"]


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
    assert [p.name for p in pg_wal.status.iterdir() if p.name != UPLOADER_LOCK] == []
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
        f"write_marker({str(pg_wal.status / name)!r}, file_identity({str(segment)!r}))",
    )
    start = time.monotonic()
    out = pg_wal.archive(name)
    assert out.returncode == 0, pg_wal.log.read_text()
    assert time.monotonic() - start >= 0.4, "it waited for the lock"
    assert "archived by the detached uploader" in pg_wal.log.read_text()
    assert pg_wal.stored() == [], "the call took the uploader's marker, nothing uploaded twice"
    assert not (pg_wal.status / name).exists()
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
        assert take_marker(str(pg_wal.status / name), str(pg_wal.dir / name))


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
    assert not (pg_wal.status / locked).exists()
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
    assert not (pg_wal.status / stored).exists()
    assert (pg_wal.status / other).exists()  # the file it did archive ahead
    after = (pg_wal.store / "wal_005" / f"{stored}.lz4").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


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
    assert not (pg_wal.status / name).exists()
    assert (pg_wal.status / other).exists()


class ProbeCountingStorage(MemoryStorage):
    """In-memory storage that records every existence probe (a HEAD request on a cloud)."""

    def __init__(self) -> None:
        super().__init__()
        self.probes: list[str] = []

    def exists(self, key: str) -> bool:
        self.probes.append(key)
        return super().exists(key)


def test_a_look_ahead_upload_probes_each_key_once(tmp_path: Path) -> None:
    """The uploader's "already stored?" question is the overwrite check's answer too: the
    upload does not probe the same keys again (each probe is a request on cloud storage)."""
    wal_dir = tmp_path / "pg_wal"
    (wal_dir / "archive_status").mkdir(parents=True)
    name = SEGMENTS[0]
    data = os.urandom(4096) * 16
    (wal_dir / name).write_bytes(data)
    (wal_dir / "archive_status" / f"{name}.ready").touch()
    settings = load(environ={"HOME": str(tmp_path), "WALG_FILE_PREFIX": str(tmp_path / "unused")})
    storage = ProbeCountingStorage()
    uploader = LookaheadUploader(settings, storage, str(wal_dir), workers=1, budget=None)
    uploader.start()
    try:
        assert uploader.wait_for(name, 30)
    finally:
        assert uploader.stop() == (name,)
    assert storage.probes, "the uploader must ask whether the file is archived already"
    assert len(storage.probes) == len(set(storage.probes)), storage.probes
    assert storage.get_bytes(f"wal_005/{name}.lz4") != b""
    assert (Path(status_dir(str(wal_dir))) / name).exists()
