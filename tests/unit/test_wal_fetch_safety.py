"""wal-fetch never hands PostgreSQL a wrong file, and fails in a way PostgreSQL cannot mistake
for the end of the archive: foreign prefetched segments, a prefetch folder on another file
system, an abandoned daemon request, exit codes in archive recovery and on a standby, and a
prefetch child that cannot be started after the file is in place."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import lz4.frame
import pytest

from fakewal import (
    SEGMENT_SIZE,
    in_mount_namespace,
    run_walg,
    segment_bytes,
    small_tmpfs,
    walg_env,
)
from loglines import STAMP, undated
from pgcluster import make_shared_dir, pg_user_env, run_as_pg
from walg.core.lsn import Segment
from walg.core.walpage import cluster_system_id
from walg.errors import IntegrityError, RequestAbandoned
from walg.ops.wal import temporary_beside
from walg.ops.wal_fetch import wal_fetch
from walg.ops.wal_prefetch import (
    Prefetcher,
    _take,
    boot_time,
    prefetch_root,
    take_prefetched,
)
from walg.settings import load
from walg.storage.memory import MemoryStorage

SEG = SEGMENT_SIZE
NAME = Segment(1, 3).name()


def _pgdata(base: Path, sysid: int) -> Path:
    """A data directory as far as wal-fetch looks: pg_wal/ and global/pg_control."""
    pgdata = base / "pgdata"
    (pgdata / "pg_wal").mkdir(parents=True)
    (pgdata / "global").mkdir()
    (pgdata / "global" / "pg_control").write_bytes(sysid.to_bytes(8, "little") + bytes(8184))
    return pgdata


def test_system_identifier_is_read_from_pg_control(tmp_path: Path) -> None:
    assert cluster_system_id(str(_pgdata(tmp_path, 0x1234_5678_9ABC))) == 0x1234_5678_9ABC
    assert cluster_system_id(str(tmp_path / "nowhere")) is None


def test_a_prefetched_segment_of_another_cluster_is_not_served(tmp_path: Path) -> None:
    pgdata = _pgdata(tmp_path, 2222)
    root = tmp_path / "shared-prefetch"
    root.mkdir()
    dest = pgdata / "pg_wal" / "RECOVERYXLOG"
    (root / NAME).write_bytes(segment_bytes(NAME, 1111))
    assert not take_prefetched(str(root), NAME, str(dest), SEG)
    assert not dest.exists()
    assert not (root / NAME).exists()  # discarded, so it is downloaded instead
    (root / NAME).write_bytes(segment_bytes(NAME, 2222))
    assert take_prefetched(str(root), NAME, str(dest), SEG)
    assert dest.read_bytes()[24:32] == (2222).to_bytes(8, "little")


def test_wal_fetch_downloads_when_the_prefetched_file_is_foreign(tmp_path: Path) -> None:
    pgdata = _pgdata(tmp_path, 2222)
    settings = load(environ={"WALG_FILE_PREFIX": "/x", "WALG_PREFETCH_DIR": str(tmp_path)})
    dest = pgdata / "pg_wal" / "RECOVERYXLOG"
    root = Path(prefetch_root(settings, str(dest)))
    root.mkdir(parents=True)
    (root / NAME).write_bytes(segment_bytes(NAME, 1111))
    storage = MemoryStorage()
    storage.put_bytes(f"wal_005/{NAME}.lz4", lz4.frame.compress(segment_bytes(NAME, 2222)))
    result = wal_fetch(settings, storage, NAME, str(dest))
    assert not result.from_prefetch
    assert dest.read_bytes() == segment_bytes(NAME, 2222)


def _other_file_system() -> Path | None:
    """A writable folder on another file system than the temporary folder, if any."""
    shm = Path("/dev/shm")
    if (
        shm.is_dir()
        and os.access(shm, os.W_OK)
        and os.stat(shm).st_dev != os.stat(tempfile.gettempdir()).st_dev
    ):
        return shm
    return None


def test_a_prefetch_folder_on_another_file_system_is_copied_into_place(tmp_path: Path) -> None:
    other = _other_file_system()
    if other is None:
        pytest.skip("no writable folder on another file system (/dev/shm)")
    pgdata = _pgdata(tmp_path, 2222)
    dest = pgdata / "pg_wal" / "RECOVERYXLOG"
    with tempfile.TemporaryDirectory(dir=other) as folder:
        root = Path(folder)
        (root / NAME).write_bytes(segment_bytes(NAME, 2222))
        # Renaming across file systems fails (EXDEV): the file is copied, then renamed.
        assert take_prefetched(str(root), NAME, str(dest), SEG)
        assert not (root / NAME).exists()
    assert dest.read_bytes() == segment_bytes(NAME, 2222)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["RECOVERYXLOG"]


def test_an_abandoned_request_puts_nothing_in_place(tmp_path: Path) -> None:
    pgdata = _pgdata(tmp_path, 2222)
    dest = pgdata / "pg_wal" / "RECOVERYXLOG"
    settings = load(environ={"WALG_FILE_PREFIX": "/x", "WALG_PREFETCH_DIR": str(tmp_path)})
    storage = MemoryStorage()
    storage.put_bytes(f"wal_005/{NAME}.lz4", lz4.frame.compress(segment_bytes(NAME, 2222)))
    asked: list[bool] = []

    def refuse() -> bool:
        asked.append(True)
        return False

    with pytest.raises(RequestAbandoned):
        wal_fetch(settings, storage, NAME, str(dest), commit=refuse)
    assert asked
    assert list(dest.parent.iterdir()) == []  # no file, no temporary left
    # The same for a prefetched file: it stays where it is for the next request.
    root = Path(prefetch_root(settings, str(dest)))
    root.mkdir(parents=True)
    (root / NAME).write_bytes(segment_bytes(NAME, 2222))
    with pytest.raises(RequestAbandoned):
        wal_fetch(settings, storage, NAME, str(dest), commit=refuse)
    assert list(dest.parent.iterdir()) == []
    assert (root / NAME).exists()
    assert wal_fetch(settings, storage, NAME, str(dest), commit=lambda: True).from_prefetch


# --- the real command ---------------------------------------------------------------------


def _archive(base: Path, objects: dict[str, bytes]) -> Path:
    store = make_shared_dir(base / "store", 0o755)
    wal = make_shared_dir(store / "wal_005", 0o755)
    for name, data in objects.items():
        (wal / name).write_bytes(data)
        os.chmod(wal / name, 0o644)
    return store


def _fetch(
    walg_bin: str, store: Path, pgdata: Path, name: str, *, prlimit: bool = False, **env: str
) -> subprocess.CompletedProcess[str]:
    full = {**pg_user_env(), "PATH": os.environ["PATH"], "WALG_FILE_PREFIX": str(store), **env}
    argv = [walg_bin, "wal-fetch", name, "pg_wal/RECOVERYXLOG"]
    if prlimit:
        argv = ["prlimit", "--nproc=1", *argv]
    return run_as_pg(argv, env=full, check=False, cwd=pgdata, timeout=60)


@pytest.mark.parametrize(
    ("signals", "corrupt_code"),
    [
        (("recovery.signal",), 128),  # archive recovery: stop, do not promote
        (("recovery.signal", "standby.signal"), 1),  # a standby streams and asks again
        ((), 1),  # not a server in recovery (a DBA at the prompt)
    ],
)
def test_exit_codes_of_a_failed_fetch(
    walg_bin: str, pg_workdir: Path, signals: tuple[str, ...], corrupt_code: int
) -> None:
    base = pg_workdir
    good = Segment(1, 2).name()
    store = _archive(
        base,
        {
            f"{good}.lz4": lz4.frame.compress(segment_bytes(good, 5)),
            f"{NAME}.lz4": b"\x04\x22\x4d\x18garbage that is not an lz4 frame",
        },
    )
    pgdata = make_shared_dir(base / "pgdata", 0o700)
    make_shared_dir(pgdata / "pg_wal", 0o700)
    for signal_file in signals:
        (pgdata / signal_file).touch()
    ok = _fetch(walg_bin, store, pgdata, good, WALG_DOWNLOAD_CONCURRENCY="1")
    assert ok.returncode == 0, ok.stderr
    corrupt = _fetch(walg_bin, store, pgdata, NAME, WALG_DOWNLOAD_CONCURRENCY="1")
    assert corrupt.returncode == corrupt_code, corrupt.stderr
    assert "ERROR" in corrupt.stderr
    missing = _fetch(walg_bin, store, pgdata, Segment(1, 9).name(), WALG_DOWNLOAD_CONCURRENCY="1")
    assert missing.returncode == 74, missing.stderr  # the end of the archive stays 74
    # An archive folder that is not there (an unmounted volume) is a failure, not "not found".
    unmounted = _fetch(walg_bin, base / "unmounted", pgdata, good)
    assert unmounted.returncode == corrupt_code, unmounted.stderr
    assert "does not exist" in unmounted.stderr


@pytest.mark.parametrize(
    ("signals", "said"),
    [
        (("standby.signal",), False),  # an archive-only standby polls every 5 s while idle
        (("recovery.signal", "standby.signal"), False),
        (("recovery.signal",), True),  # a restore: where its archive ended
        ((), True),  # a DBA at the prompt
    ],
)
def test_a_standby_waiting_at_the_end_of_the_archive_is_not_told_so_each_time(
    walg_bin: str, pg_workdir: Path, signals: tuple[str, ...], said: bool
) -> None:
    """An archive-only standby asks for the next segment and the next timeline's history
    every 5 s (wal_retrieve_retry_interval) while it waits for the primary's WAL: walg
    wal-fetch wrote 'WAL file ... is not in the archive' for each, 24 lines a minute in the
    server's log of an idle standby (PostgreSQL 13 and 18), where the daemon's clients write
    none. In a standby that answer is the normal state; a restore and a DBA still see it."""
    store = _archive(pg_workdir, {})
    pgdata = make_shared_dir(pg_workdir / "pgdata", 0o700)
    make_shared_dir(pgdata / "pg_wal", 0o700)
    for signal_file in signals:
        (pgdata / signal_file).touch()
    for name in (Segment(1, 9).name(), "00000002.history"):
        missing = _fetch(walg_bin, store, pgdata, name, WALG_DOWNLOAD_CONCURRENCY="1")
        assert missing.returncode == 74, missing.stderr
        if said:
            assert undated(missing.stderr) == f"INFO: WAL file {name} is not in the archive\n"
        else:
            assert missing.stderr == ""


@pytest.mark.parametrize(
    ("signals", "said"),
    [
        (("recovery.signal",), True),
        ((), True),
        (("recovery.signal", "standby.signal"), False),  # quiet, and no lookup
    ],
)
def test_a_segment_missing_before_a_stored_one_is_named_as_a_gap(
    walg_bin: str, pg_workdir: Path, signals: tuple[str, ...], said: bool
) -> None:
    """The end of the archive and a gap in it (an object deleted or lost) both exit 74, and
    PostgreSQL takes either for the end: without a target it promotes there, leaving out what
    was archived after the gap. The line walg writes in the server's log said the same for
    both; it names the stored successor where there is one."""
    gap, after = Segment(1, 3).name(), Segment(1, 4).name()
    store = _archive(pg_workdir, {f"{after}.lz4": lz4.frame.compress(segment_bytes(after, 5))})
    pgdata = make_shared_dir(pg_workdir / "pgdata", 0o700)
    make_shared_dir(pgdata / "pg_wal", 0o700)
    for signal_file in signals:
        (pgdata / signal_file).touch()
    missing = _fetch(walg_bin, store, pgdata, gap, WALG_DOWNLOAD_CONCURRENCY="1")
    assert missing.returncode == 74, missing.stderr
    if not said:
        assert missing.stderr == ""
        return
    assert missing.stderr.count("\n") == 1, missing.stderr
    assert undated(missing.stderr).startswith(
        f"WARNING: WAL file {gap} is not in the archive, but {after} after it is: a gap in the "
        "archive, not its end."
    ), missing.stderr
    assert f"put {gap} back into storage" in missing.stderr
    # The end of the archive reads as before.
    end = _fetch(walg_bin, store, pgdata, Segment(1, 5).name(), WALG_DOWNLOAD_CONCURRENCY="1")
    # Dated as walg's log lines are: PostgreSQL writes it into its log without a time.
    assert re.fullmatch(
        rf"INFO: {STAMP} WAL file {Segment(1, 5).name()} is not in the archive\n", end.stderr
    ), end.stderr


@pytest.mark.parametrize("entry", ["dangling-link", "folder", "fifo", "linked-wal-folder"])
def test_an_archived_name_that_cannot_be_read_is_a_failure_not_the_end_of_the_archive(
    walg_bin: str, pg_workdir: Path, entry: str
) -> None:
    """Something at the segment's object path that is no readable file (its volume not
    mounted, a copy gone wrong) exits 128 in archive recovery and 1 on a standby, never 74:
    PostgreSQL would take 74 for the end of the archive and promote without the rest."""
    base = pg_workdir
    store = _archive(base, {})
    obj = store / "wal_005" / f"{NAME}.lz4"
    if entry == "dangling-link":
        obj.symlink_to(f"/nonexistent/archive-volume/{NAME}.lz4")
    elif entry == "folder":
        obj.mkdir()
    elif entry == "fifo":
        os.mkfifo(obj)
    else:
        (store / "wal_005").rmdir()
        (store / "wal_005").symlink_to("/nonexistent/archive-volume/wal_005")
    pgdata = make_shared_dir(base / "pgdata", 0o700)
    make_shared_dir(pgdata / "pg_wal", 0o700)
    (pgdata / "recovery.signal").touch()
    failed = _fetch(walg_bin, store, pgdata, NAME)
    assert failed.returncode == 128, failed.stderr
    assert "ERROR" in failed.stderr and str(store) in failed.stderr
    (pgdata / "standby.signal").touch()
    failed = _fetch(walg_bin, store, pgdata, NAME)
    assert failed.returncode == 1, failed.stderr
    assert not (pgdata / "pg_wal" / "RECOVERYXLOG").exists()


def test_a_prefetch_child_that_cannot_start_does_not_fail_the_fetch(
    walg_bin: str, pg_workdir: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run walg as pgtest with a process limit")
    base = pg_workdir
    good = Segment(1, 2).name()
    store = _archive(base, {f"{good}.lz4": lz4.frame.compress(segment_bytes(good, 5))})
    pgdata = make_shared_dir(base / "pgdata", 0o700)
    make_shared_dir(pgdata / "pg_wal", 0o700)
    (pgdata / "recovery.signal").touch()
    # With one process allowed, starting the prefetch child fails (EAGAIN) after the file is
    # in place: the call must still report the file restored.
    got = _fetch(walg_bin, store, pgdata, good, prlimit=True, WALG_DOWNLOAD_CONCURRENCY="4")
    assert got.returncode == 0, got.stderr
    assert "not prefetching" in got.stderr
    assert (pgdata / "pg_wal" / "RECOVERYXLOG").read_bytes() == segment_bytes(good, 5)


def test_a_prefetch_folder_the_server_cannot_read_means_a_download(
    walg_bin: str, pg_workdir: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to make a folder the server's user cannot read")
    good = Segment(1, 2).name()
    store = _archive(pg_workdir, {f"{good}.lz4": lz4.frame.compress(segment_bytes(good, 5))})
    pgdata = make_shared_dir(pg_workdir / "pgdata", 0o700)
    make_shared_dir(pgdata / "pg_wal", 0o700)
    # A wal-fetch run once as root left its prefetch folder behind.
    locked = pgdata / "pg_wal" / ".wal-g"
    (locked / "prefetch" / "running").mkdir(parents=True)
    locked.chmod(0o700)
    got = _fetch(walg_bin, store, pgdata, good, WALG_DOWNLOAD_CONCURRENCY="1")
    assert got.returncode == 0, got.stderr
    assert "cannot look into the prefetch folder" in got.stderr
    assert (pgdata / "pg_wal" / "RECOVERYXLOG").read_bytes() == segment_bytes(good, 5)


def test_an_object_that_inflates_past_a_segment_is_refused(tmp_path: Path) -> None:
    """LZ4 expands up to 255 times: a corrupt or foreign object under a WAL name must not
    fill pg_wal's disk, nor hand PostgreSQL a file of the wrong size."""
    pgdata = _pgdata(tmp_path, 2222)
    dest = pgdata / "pg_wal" / "RECOVERYXLOG"
    settings = load(environ={"WALG_FILE_PREFIX": "/x", "WALG_PREFETCH_DIR": str(tmp_path)})
    storage = MemoryStorage()
    huge = lz4.frame.compress(bytes(SEG + (1 << 20)))
    assert len(huge) < SEG // 100
    storage.put_bytes(f"wal_005/{NAME}.lz4", huge)
    with pytest.raises(IntegrityError, match="more than 16777216 bytes"):
        wal_fetch(settings, storage, NAME, str(dest))
    assert list(dest.parent.iterdir()) == []


def test_commit_is_asked_once_the_prefetched_file_is_taken(tmp_path: Path) -> None:
    """The daemon answers as soon as ``commit`` agrees, so what follows it must not be able to
    fail: the prefetched file is first taken to a private name beside DEST (a failure there
    means a download, still before ``commit``), and after ``commit`` only renamed."""
    pgdata = _pgdata(tmp_path, 2222)
    dest = pgdata / "pg_wal" / "RECOVERYXLOG"
    root = tmp_path / "prefetch"
    root.mkdir()
    (root / NAME).write_bytes(segment_bytes(NAME, 2222))
    seen: list[tuple[bool, list[str]]] = []

    def commit() -> bool:
        seen.append(((root / NAME).exists(), sorted(p.name for p in dest.parent.iterdir())))
        return True

    assert take_prefetched(str(root), NAME, str(dest), SEG, commit)
    assert len(seen) == 1
    taken, beside = seen[0]
    assert not taken
    assert len(beside) == 1 and beside[0].startswith(".RECOVERYXLOG.walg-")
    assert sorted(p.name for p in dest.parent.iterdir()) == ["RECOVERYXLOG"]
    # Nothing to take: no commit asked (the download that follows asks it).
    assert not take_prefetched(str(root), NAME, str(dest), SEG, commit)
    assert len(seen) == 1


def test_a_prefetched_segment_of_another_archive_is_not_served(tmp_path: Path) -> None:
    """Clones of one cluster (a DR copy, a restore given its own archive) share its system
    identifier and its segment names: what was prefetched from one archive into a shared
    WALG_PREFETCH_DIR must not be served to a restore from the other."""
    pgdata = _pgdata(tmp_path, 2222)
    dest = pgdata / "pg_wal" / "RECOVERYXLOG"
    shared = str(tmp_path / "shared")
    first = load(environ={"WALG_FILE_PREFIX": "/archive-a", "WALG_PREFETCH_DIR": shared})
    second = load(environ={"WALG_FILE_PREFIX": "/archive-b", "WALG_PREFETCH_DIR": shared})
    ours, theirs = segment_bytes(NAME, 2222, fill=b"B"), segment_bytes(NAME, 2222, fill=b"A")
    store_a, store_b = MemoryStorage(), MemoryStorage()
    store_a.put_bytes(f"wal_005/{NAME}.lz4", lz4.frame.compress(theirs))
    store_b.put_bytes(f"wal_005/{NAME}.lz4", lz4.frame.compress(ours))
    before = Segment(1, 2).name()
    # A restore from archive A prefetched NAME into the shared folder.
    assert Prefetcher(first, store_a, prefetch_root(first, str(dest))).run(before, 1) == [NAME]
    assert prefetch_root(first, str(dest)) != prefetch_root(second, str(dest))
    result = wal_fetch(second, store_b, NAME, str(dest))
    assert not result.from_prefetch
    assert dest.read_bytes() == ours
    # Archive A's own restore is still served from its folder.
    assert wal_fetch(first, store_a, NAME, str(dest)).from_prefetch
    assert dest.read_bytes() == theirs


def test_other_archives_stale_prefetch_files_are_cleared(tmp_path: Path) -> None:
    """What another archive's restore left in a shared folder goes once it is stale, as do the
    files of walg before one folder per archive (they are never served now)."""
    settings = load(environ={"WALG_FILE_PREFIX": "/x", "WALG_PREFETCH_DIR": str(tmp_path)})
    dest = str(tmp_path / "pg_wal" / "RECOVERYXLOG")
    root = Path(prefetch_root(settings, dest))
    parent = root.parent
    other = parent / ("f" * 32)
    (other / "running").mkdir(parents=True)
    stale, fresh = Segment(1, 7).name(), Segment(1, 8).name()
    for path in (other / stale, other / "running" / stale, other / fresh, parent / stale):
        path.write_bytes(b"x")
    old = time.time() - 3600
    for path in (other / stale, other / "running" / stale):
        os.utime(path, (old, old))
    storage = MemoryStorage()
    Prefetcher(settings, storage, str(root)).run(Segment(1, 5).name(), 2)
    assert not (parent / stale).exists()
    assert not (other / stale).exists() and not (other / "running").exists()
    assert (other / fresh).exists(), "another restore may still want a fresh one"


def test_other_archives_prefetch_files_dated_ahead_are_cleared(tmp_path: Path) -> None:
    """Dated hours ahead by a clock since set back (up to 64 segments of another archive,
    a GB in pg_wal's file system), they stayed until the clock reached their date; one
    dated a few minutes ahead (a step back during a restore) may be in use, and stays."""
    settings = load(environ={"WALG_FILE_PREFIX": "/x", "WALG_PREFETCH_DIR": str(tmp_path)})
    root = Path(prefetch_root(settings, str(tmp_path / "pg_wal" / "RECOVERYXLOG")))
    other = root.parent / ("e" * 32)
    (other / "running").mkdir(parents=True)
    ahead, near = Segment(1, 7).name(), Segment(1, 8).name()
    for path, seconds in (
        (other / ahead, 7200),
        (other / "running" / ahead, 7200),
        (other / near, 120),
    ):
        path.write_bytes(b"x")
        when = time.time() + seconds
        os.utime(path, (when, when))
    Prefetcher(settings, MemoryStorage(), str(root)).run(Segment(1, 5).name(), 2)
    assert not (other / ahead).exists() and not (other / "running").exists()
    assert (other / near).exists()


def test_segments_of_a_cluster_made_with_another_segment_size(tmp_path: Path) -> None:
    """initdb --wal-segsize=64: WALG_PG_WAL_SIZE left at 16, the segments are fetched (their
    first page states their size) and prefetched by the names of that size."""
    size = 64 << 20
    pgdata = _pgdata(tmp_path, 2222)
    dest = pgdata / "pg_wal" / "RECOVERYXLOG"
    settings = load(environ={"WALG_FILE_PREFIX": "/x"})
    storage = MemoryStorage()
    # With 64 MiB segments the name after ...00000003F is ...000010000000000.
    last, first_of_next = Segment(1, 63).name(size), Segment(1, 64).name(size)
    assert first_of_next == "000000010000000100000000"
    for name in (last, first_of_next):
        data = lz4.frame.compress(segment_bytes(name, 2222, size))
        storage.put_bytes(f"wal_005/{name}.lz4", data)
    wal_fetch(settings, storage, last, str(dest))
    assert dest.stat().st_size == size
    root = prefetch_root(settings, str(dest))
    assert Prefetcher(settings, storage, root, size).run(last, 2) == [first_of_next]
    assert wal_fetch(settings, storage, first_of_next, str(dest)).from_prefetch
    assert dest.read_bytes() == segment_bytes(first_of_next, 2222, size)
    # Still refused: more than the size the object's first page states.
    storage.put_bytes(
        f"wal_005/{last}.lz4",
        lz4.frame.compress(segment_bytes(last, 2222, size) + bytes(1 << 20)),
    )
    with pytest.raises(IntegrityError, match=f"more than {size} bytes"):
        wal_fetch(settings, storage, last, str(dest), use_prefetch=False)


def fetch_call(command: str) -> bool:
    return command.startswith("wal-fetch")


@pytest.mark.parametrize(
    ("command", "recovering"),
    [
        ("wal-fetch", False),
        ("wal-fetch", True),
        ("wal-fetch --no-prefetch", False),
        ("wal-push", False),
    ],
    ids=["wal-fetch", "wal-fetch-in-archive-recovery", "wal-fetch --no-prefetch", "wal-push"],
)
def test_sigterm_cleans_up_and_still_ends_the_call_by_sigterm(
    walg_bin: str, tmp_path: Path, command: str, recovering: bool
) -> None:
    """PostgreSQL reads a restore_command or archive_command killed by SIGTERM as part of its
    shutdown (any exit code means something else), so the call must still end by SIGTERM;
    but first its clean-up runs: a wal-fetch's temporary file beside DEST (up to a segment,
    never removed otherwise) is gone. In archive recovery too, where a failed fetch's code
    becomes 128: a SIGTERM is not a failure to turn into that code."""
    name = Segment(1, 2).name()
    store = tmp_path / "store"
    (store / "wal_005").mkdir(parents=True)
    (store / "wal_005" / f"{name}.lz4").write_bytes(lz4.frame.compress(segment_bytes(name, 5)))
    pgdata = _pgdata(tmp_path, 5)
    if recovering:
        (pgdata / "recovery.signal").touch()
    pushed = Segment(1, 3).name()
    (pgdata / "pg_wal" / pushed).write_bytes(segment_bytes(pushed, 5))
    # Slow storage: the call is under way (DEST's temporary file made) when the signal comes.
    slow = (
        '[{"op": "read", "key": "wal_005", "delay": 30}, {"op": "stat", "key": "x", "delay": 30}]'
    )
    faults = slow if fetch_call(command) else slow.replace('"x"', '"wal_005"')
    env = walg_env(store, tmp_path, WALG_DOWNLOAD_CONCURRENCY="1", WALG_FAULT_INJECTION=faults)
    fetch = fetch_call(command)
    args = [name, "pg_wal/RECOVERYXLOG"] if fetch else [f"pg_wal/{pushed}"]
    proc = subprocess.Popen(
        [walg_bin, *command.split(), *args], cwd=pgdata, env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 30
    while fetch and len(list((pgdata / "pg_wal").iterdir())) < 2:
        assert time.monotonic() < deadline, "the fetch never made its temporary file"
        time.sleep(0.02)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=20)
    left = sorted(p.name for p in (pgdata / "pg_wal").iterdir() if p.name != "walg_data")
    assert left == [pushed]
    assert proc.returncode == -signal.SIGTERM, err
    assert "terminated" in err


def test_the_prefetch_child_fills_the_folder_its_parent_takes_from(
    walg_bin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Configured by ~/.walg.json (no --config): the detached prefetcher is started with an
    explicit --config, so a key of its own would name another folder, and no prefetched file
    would ever be served. It fills the folder of the wal-fetch that started it."""
    names = [Segment(1, n).name() for n in (2, 3, 4)]
    store = tmp_path / "store"
    (store / "wal_005").mkdir(parents=True)
    for name in names:
        data = lz4.frame.compress(segment_bytes(name, 5))
        (store / "wal_005" / f"{name}.lz4").write_bytes(data)
    home = tmp_path / "home"
    home.mkdir()
    (home / ".walg.json").write_text(json.dumps({"WALG_FILE_PREFIX": str(store)}))
    pgdata = _pgdata(tmp_path, 5)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "WALG_DOWNLOAD_CONCURRENCY": "3"}
    fetch = [walg_bin, "wal-fetch", names[0], "pg_wal/RECOVERYXLOG"]
    done = run_walg(fetch, env, pgdata)
    assert done.returncode == 0, done.stderr
    monkeypatch.chdir(pgdata)  # the key covers the working folder, as the call's did
    root = Path(prefetch_root(load(environ=env), "pg_wal/RECOVERYXLOG"))
    deadline = time.monotonic() + 30
    while not all((root / name).exists() for name in names[1:]):
        found = sorted(str(p.relative_to(pgdata)) for p in (pgdata / "pg_wal").rglob("0*"))
        assert time.monotonic() < deadline, f"not in {root}: {found}"
        time.sleep(0.05)


def test_a_log_that_cannot_be_written_changes_no_exit_code(walg_bin: str, tmp_path: Path) -> None:
    """stderr on a full disk or closed (PostgreSQL's log): a failed wal-fetch in archive
    recovery still exits 128 (1 would end recovery and promote), the Python daemon client's
    too, and a wal-push that stored its file, or a fetch that put it in place, exits 0."""
    good, corrupt, pushed = Segment(1, 2).name(), Segment(1, 3).name(), Segment(1, 4).name()
    store = tmp_path / "store"
    (store / "wal_005").mkdir(parents=True)
    (store / "wal_005" / f"{good}.lz4").write_bytes(lz4.frame.compress(segment_bytes(good, 5)))
    (store / "wal_005" / f"{corrupt}.lz4").write_bytes(b"\x04\x22\x4d\x18 not a frame")
    pgdata = _pgdata(tmp_path, 5)
    (pgdata / "recovery.signal").touch()
    (pgdata / "pg_wal" / pushed).write_bytes(segment_bytes(pushed, 5))
    env = walg_env(store, tmp_path, WALG_DOWNLOAD_CONCURRENCY="1", WALG_DAEMON_CLIENT_PYTHON="1")
    client = str(Path(walg_bin).with_name("walg-daemon-client"))
    calls = {
        (walg_bin, "wal-fetch", corrupt, "pg_wal/RECOVERYXLOG"): 128,
        (walg_bin, "wal-fetch", "--no-prefetch", corrupt, "pg_wal/RECOVERYXLOG"): 128,
        (client, str(tmp_path / "none.sock"), "wal-fetch", corrupt, "pg_wal/RECOVERYXLOG"): 128,
        (walg_bin, "wal-fetch", good, "pg_wal/RECOVERYXLOG"): 0,
        (walg_bin, "wal-push", f"pg_wal/{pushed}"): 0,
    }
    for closed in (False, True):
        for argv, expected in calls.items():
            with open("/dev/full", "w") as full:
                done = subprocess.run(
                    argv,
                    cwd=pgdata,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=full,
                    # Closed: the descriptors gone, as under a postmaster started with >&- 2>&-.
                    preexec_fn=(lambda: (os.close(1), os.close(2))) if closed else None,
                    timeout=60,
                    check=False,
                )
            assert done.returncode == expected, (argv, closed, done.returncode)


def test_a_header_stating_a_larger_segment_is_believed_only_for_its_own_segment(
    tmp_path: Path,
) -> None:
    """A corrupt object whose first page says 1 GiB, but is not that segment at 1 GiB (its
    page address), is held to WALG_PG_WAL_SIZE: it must not fill pg_wal's disk."""
    pgdata = _pgdata(tmp_path, 2222)
    dest = pgdata / "pg_wal" / "RECOVERYXLOG"
    settings = load(environ={"WALG_FILE_PREFIX": "/x"})
    storage = MemoryStorage()
    name = Segment(1, 5).name()  # no such segment at 1 GiB (four per 4 GiB)
    forged = bytearray(segment_bytes(name, 2222))
    forged[32:36] = (1 << 30).to_bytes(4, "little")
    storage.put_bytes(f"wal_005/{name}.lz4", lz4.frame.compress(bytes(forged) + bytes(SEG)))
    with pytest.raises(IntegrityError, match="more than 16777216 bytes"):
        wal_fetch(settings, storage, name, str(dest), use_prefetch=False)
    assert list(dest.parent.iterdir()) == []


def test_temporary_files_of_killed_fetches_are_removed(tmp_path: Path) -> None:
    """A wal-fetch killed outright (SIGKILL, an immediate shutdown) leaves its temporary
    file beside DEST, up to a segment in pg_wal: the prefetcher removes those untouched for
    ten minutes, and nothing else."""
    from walg.ops.wal import forget_stale_temporaries

    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir()
    stale, fresh = pg_wal / ".RECOVERYXLOG.walg-0a1b2c3d", pg_wal / ".RECOVERYXLOG.walg-99999999"
    others = [pg_wal / ".other.walg-0a1b2c3d", pg_wal / Segment(1, 2).name()]
    for path in (stale, fresh, *others):
        path.write_bytes(b"x")
    old = time.time() - 3600
    for path in (stale, *others):
        os.utime(path, (old, old))
    assert forget_stale_temporaries(str(pg_wal / "RECOVERYXLOG")) == [stale.name]
    assert sorted(p.name for p in pg_wal.iterdir()) == sorted(
        [fresh.name, *(p.name for p in others)]
    )


@pytest.mark.parametrize("shape", ["missing", "a file", "read-only"])
def test_a_destination_that_cannot_be_written_is_named_and_stops_recovery(
    walg_bin: str, pg_workdir: Path, shape: str
) -> None:
    if shape == "read-only" and os.geteuid() != 0:
        pytest.skip("needs root to make a folder the server's user cannot write in")
    good = Segment(1, 2).name()
    store = _archive(pg_workdir, {f"{good}.lz4": lz4.frame.compress(segment_bytes(good, 5))})
    pgdata = make_shared_dir(pg_workdir / "pgdata", 0o700)
    (pgdata / "recovery.signal").touch()
    if shape == "a file":
        (pgdata / "pg_wal").write_bytes(b"")
    elif shape == "read-only":
        (pgdata / "pg_wal").mkdir(mode=0o755)  # root's: the server's user may not write
    got = _fetch(walg_bin, store, pgdata, good, WALG_DOWNLOAD_CONCURRENCY="1")
    # Archive recovery: above 125, so PostgreSQL stops instead of promoting early.
    assert got.returncode == 128, got.stderr
    lines = undated(got.stderr).strip().splitlines()
    assert len(lines) == 1, got.stderr
    # The path PostgreSQL gave, not the hidden temporary file beside it.
    assert lines[0].startswith("ERROR: cannot write pg_wal/RECOVERYXLOG: "), lines
    assert ".walg-" not in got.stderr and "unexpected" not in got.stderr


@pytest.fixture
def small_pg_wal(pg_workdir: Path) -> Iterator[Path]:
    """A data directory whose ``pg_wal`` is a 4 MiB tmpfs owned by the server's user: too
    small for one 16 MiB segment, as a full WAL volume is."""
    pgdata = make_shared_dir(pg_workdir / "pgdata", 0o700)
    pg_wal = make_shared_dir(pgdata / "pg_wal", 0o700)
    owner = pg_wal.stat()
    with small_tmpfs(pg_wal, f"size=4m,mode=0700,uid={owner.st_uid},gid={owner.st_gid}"):
        yield pgdata


@pytest.mark.parametrize("prefetched", [False, True], ids=["downloaded", "prefetched"])
def test_a_full_wal_volume_is_a_failure_that_stops_recovery_and_leaves_nothing(
    walg_bin: str, pg_workdir: Path, small_pg_wal: Path, prefetched: bool
) -> None:
    """A segment that does not fit where PostgreSQL asked for it: exit 128 in archive recovery
    (74, or any code up to 125, would end recovery early and promote), the cause named, and no
    partial file left to fill the volume further; the file stays archived (and prefetched)."""
    pgdata = small_pg_wal
    (pgdata / "recovery.signal").touch()
    name = Segment(1, 2).name()
    data = segment_bytes(name, 5, fill=b"\x07")
    store = _archive(pg_workdir, {f"{name}.lz4": lz4.frame.compress(data)})
    env = {
        "WALG_PREFETCH_DIR": str(make_shared_dir(pg_workdir / "prefetch", 0o700)),
        "WALG_DOWNLOAD_CONCURRENCY": "1",
    }
    if prefetched:
        # A prefetch folder on another file system: the file is copied into pg_wal. Its key
        # is that of the wal-fetch process (its variables, its working folder).
        full = {**pg_user_env(), "PATH": os.environ["PATH"], "WALG_FILE_PREFIX": str(store), **env}
        code = "import walg_destination as d, os; print(d.destination_key(os.environ, None))"
        key = run_as_pg([sys.executable, "-c", code], env=full, cwd=pgdata).stdout.strip()
        root = make_shared_dir(pg_workdir / "prefetch" / ".wal-g" / "prefetch" / key, 0o700)
        (root / name).write_bytes(data)
        os.chown(root / name, pgdata.stat().st_uid, pgdata.stat().st_gid)
    got = _fetch(walg_bin, store, pgdata, name, **env)
    assert got.returncode == 128, got.stderr
    assert "No space left on device" in got.stderr, got.stderr
    assert list((pgdata / "pg_wal").iterdir()) == []
    assert (store / "wal_005" / f"{name}.lz4").exists()
    if prefetched:
        assert "cannot copy prefetched" in got.stderr, got.stderr
        assert (root / name).read_bytes() == data
    (pgdata / "standby.signal").touch()
    got = _fetch(walg_bin, store, pgdata, name, **env)
    assert got.returncode == 1, got.stderr
    assert list((pgdata / "pg_wal").iterdir()) == []


@pytest.mark.parametrize(
    ("signals", "expected"),
    [(("recovery.signal",), 128), (("recovery.signal", "standby.signal"), 1), ((), 1)],
    ids=["archive-recovery", "standby", "no-recovery"],
)
def test_a_walg_that_cannot_be_loaded_stops_archive_recovery(
    walg_bin: str, tmp_path: Path, signals: tuple[str, ...], expected: int
) -> None:
    """The installed command run by a Python that cannot import walg (a broken upgrade, a
    venv whose site-packages is gone): in archive recovery a failed restore_command must
    exit above 125, or PostgreSQL takes the failure for the end of the archive and promotes
    without the rest of the WAL. The interpreter's own exit for an ImportError is 1."""
    pgdata = tmp_path / "pgdata"
    (pgdata / "pg_wal").mkdir(parents=True)
    for name in signals:
        (pgdata / name).touch()
    argv = ["/usr/bin/python3", "-S", "-E", walg_bin, "wal-fetch", NAME, "pg_wal/RECOVERYXLOG"]
    fetched = run_walg(argv, os.environ, pgdata)
    assert fetched.returncode == expected, fetched.stderr
    assert "cannot load walg" in fetched.stderr
    assert not (pgdata / "pg_wal" / "RECOVERYXLOG").exists()
    swapped = run_walg([*argv[:-2], "pg_wal/RECOVERYXLOG", NAME], os.environ, pgdata)
    assert swapped.returncode == expected, swapped.stderr  # 'wal-fetch %p %f'


def test_a_fifo_as_recovery_conf_hangs_no_failed_fetch(walg_bin: str, tmp_path: Path) -> None:
    """Before PostgreSQL 12 a failed fetch reads recovery.conf to tell archive recovery (128)
    from a standby (1). A FIFO under that name hung the call for good, in the launcher that
    cannot load walg and in walg's usage error alike. It is now opened without blocking and,
    not being a regular file, turns nothing on: archive recovery, 128, at once."""
    pgdata = tmp_path / "pgdata"
    (pgdata / "pg_wal").mkdir(parents=True)
    os.mkfifo(pgdata / "recovery.conf")
    argv = ["/usr/bin/python3", "-S", "-E", walg_bin, "wal-fetch", NAME, "pg_wal/RECOVERYXLOG"]
    for line in (argv, [walg_bin, "wal-fetch", NAME]):
        fetched = run_walg(line, os.environ, pgdata, timeout=20)
        assert fetched.returncode == 128, (line, fetched.stderr)
    assert not (pgdata / "pg_wal" / "RECOVERYXLOG").exists()


@pytest.mark.parametrize(
    ("signals", "expected"),
    [(("recovery.signal",), 128), (("recovery.signal", "standby.signal"), 2), ((), 2)],
    ids=["archive-recovery", "standby", "no-recovery"],
)
@pytest.mark.parametrize(
    "arguments",
    [
        ["wal-fetch", NAME],
        ["wal-fetch", NAME, "pg_wal/RECOVERYXLOG", "extra"],
        ["--config", "/etc/walg.json", "wal-fetch", NAME],
    ],
    ids=["missing-dest", "extra-argument", "config-missing-dest"],
)
def test_a_restore_command_with_wrong_arguments_stops_archive_recovery(
    walg_bin: str,
    tmp_path: Path,
    signals: tuple[str, ...],
    expected: int,
    arguments: list[str],
) -> None:
    """restore_command = 'walg wal-fetch %f' (no %p): PostgreSQL runs it in the data
    directory, and the usage error's 2 would read as "not in the archive": recovery would
    end at the backup and promote without any archived WAL."""
    pgdata = tmp_path / "pgdata"
    (pgdata / "pg_wal").mkdir(parents=True)
    for name in signals:
        (pgdata / name).touch()
    fetched = run_walg([walg_bin, *arguments], os.environ, pgdata)
    assert fetched.returncode == expected, fetched.stderr
    assert "usage" in fetched.stderr


def test_wal_fetch_help_in_archive_recovery_exits_0(walg_bin: str, tmp_path: Path) -> None:
    """Only a failed parse becomes 128 there: ``walg wal-fetch --help`` run by an operator in
    a recovering data directory prints its help and exits 0."""
    pgdata = tmp_path / "pgdata"
    (pgdata / "pg_wal").mkdir(parents=True)
    (pgdata / "recovery.signal").touch()
    shown = run_walg([walg_bin, "wal-fetch", "--help"], os.environ, pgdata)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: walg wal-fetch"), shown.stdout


def _before_boot() -> float:
    booted = boot_time()
    assert booted is not None, "no btime in /proc/stat"
    return booted - 60


def test_a_file_prefetched_before_the_system_started_is_not_served(tmp_path: Path) -> None:
    """Prefetched files are renamed into place unsynced: after a power loss one may end in
    zeros past the first page the checks read, and PostgreSQL would take them for the end of
    the WAL. One written before the running system started is discarded and downloaded."""
    pgdata = _pgdata(tmp_path, 2222)
    root = tmp_path / "prefetch"
    root.mkdir()
    dest = pgdata / "pg_wal" / "RECOVERYXLOG"
    (root / NAME).write_bytes(segment_bytes(NAME, 2222))
    before = _before_boot()
    os.utime(root / NAME, (before, before))
    assert not take_prefetched(str(root), NAME, str(dest), SEG)
    assert not dest.exists()
    assert not (root / NAME).exists()
    (root / NAME).write_bytes(segment_bytes(NAME, 2222))  # written since: served
    assert take_prefetched(str(root), NAME, str(dest), SEG)
    assert dest.read_bytes() == segment_bytes(NAME, 2222)


@pytest.mark.parametrize("dated", ["before-boot", "an-hour-ahead", "75-years-ahead"])
def test_wal_fetch_downloads_what_was_prefetched_before_boot_or_dated_ahead(
    walg_bin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dated: str
) -> None:
    """The real command: the archived file is put in place, not the prefetched one (sound
    first page, the rest zeros), when that was prefetched before the system started. Also
    when it is dated after now: the boot-time rule compares the file's mtime with this boot's
    start, both read from the wall clock, and a file prefetched unsynced by a system whose
    clock was ahead (a VM's clock an hour fast, then a power loss and a reboot that set it
    right, or an RTC kept in local time) is dated after the system started and was served, its
    tail zeros PostgreSQL takes for the end of the WAL. A file dated after now cannot have been
    written by this boot's clock as it stands (a step back of the clock costs a download)."""
    name = Segment(1, 2).name()
    store = tmp_path / "store"
    (store / "wal_005").mkdir(parents=True)
    archived = segment_bytes(name, 5, fill=b"\1")
    (store / "wal_005" / f"{name}.lz4").write_bytes(lz4.frame.compress(archived))
    pgdata = _pgdata(tmp_path, 5)
    env = walg_env(store, tmp_path, WALG_DOWNLOAD_CONCURRENCY="1")
    monkeypatch.chdir(pgdata)  # the key covers the working folder, as the call's does
    root = Path(prefetch_root(load(environ=env), "pg_wal/RECOVERYXLOG"))
    root.mkdir(parents=True)
    (root / name).write_bytes(segment_bytes(name, 5))  # valid, but not what was archived
    ahead = {"an-hour-ahead": 3600.0, "75-years-ahead": 75 * 365 * 86400.0}
    when = _before_boot() if dated == "before-boot" else time.time() + ahead[dated]
    os.utime(root / name, (when, when))
    done = run_walg([walg_bin, "wal-fetch", name, "pg_wal/RECOVERYXLOG"], env, pgdata)
    assert done.returncode == 0, done.stderr
    assert (pgdata / "pg_wal" / "RECOVERYXLOG").read_bytes() == archived
    assert not (root / name).exists()


# --- what a recovery prefetched, once it has ended -------------------------------------------


def _leftovers(pgdata: Path) -> list[str]:
    base = pgdata / "pg_wal" / ".wal-g" / "prefetch"
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    ("signals", "pushed", "cleared"),
    [
        ((), "00000002.history", True),  # promoted: the new timeline's history is archived
        (("standby.signal",), "00000002.history", False),  # archive_mode = always, following
        (("recovery.signal",), "00000002.history", False),
        (("recovery.conf",), "00000002.history", False),  # before PostgreSQL 12
        ((), NAME, False),  # a segment costs no look at the prefetch folder
    ],
)
def test_archiving_a_new_timeline_s_history_clears_what_recovery_prefetched(
    tmp_path: Path, walg_bin: str, signals: tuple[str, ...], pushed: str, cleared: bool
) -> None:
    """A restore stopped at its target leaves the segments prefetched past it in pg_wal (up to
    WALG_DOWNLOAD_CONCURRENCY of them, a GB at 64) and no wal-fetch comes for them again.
    Once recovery has ended (no signal file) the archiving of the new timeline's history
    removes them; a standby keeps its own. Files that are not segments are not walg's."""
    pgdata = _pgdata(tmp_path, 2222)
    (pgdata / "PG_VERSION").write_text("15\n")
    for signal_file in signals:
        (pgdata / signal_file).touch()
    base = pgdata / "pg_wal" / ".wal-g" / "prefetch"
    key = base / ("a" * 32)
    (key / "running").mkdir(parents=True)
    later = [Segment(1, n).name() for n in range(4, 8)]
    for name in later:
        (key / name).write_bytes(b"x" * 8192)
    (key / "running" / Segment(1, 8).name()).write_bytes(b"x" * 100)
    (base / "notes.txt").write_text("an operator's")
    (pgdata / "pg_wal" / pushed).write_bytes(
        b"1\t0/5000000\tno recovery target specified\n" if pushed.endswith(".history") else b"w"
    )
    store = tmp_path / "store"
    store.mkdir()
    done = run_walg([walg_bin, "wal-push", f"pg_wal/{pushed}"], walg_env(store, tmp_path), pgdata)
    assert done.returncode == 0, done.stderr
    if cleared:
        assert _leftovers(pgdata) == ["notes.txt"]
        assert "removed 5 prefetched segments" in done.stderr
    else:
        assert len(_leftovers(pgdata)) == 6


@pytest.mark.parametrize(
    ("signal", "version"), [("recovery.signal", "15"), ("recovery.conf", "11")]
)
def test_a_prefetch_still_running_when_recovery_ends_keeps_nothing(
    tmp_path: Path, signal: str, version: str
) -> None:
    """The last wal-fetch's prefetch may still download when recovery ends and the history
    push has cleared the folder: what it finishes then is dropped, not left in pg_wal. Before
    PostgreSQL 12 recovery is a recovery.conf (renamed recovery.done at its end): a prefetch
    in such recovery keeps what it downloads."""
    pgdata = _pgdata(tmp_path, 2222)
    (pgdata / "PG_VERSION").write_text(f"{version}\n")
    dest = pgdata / "pg_wal" / "RECOVERYXLOG"
    storage = MemoryStorage()
    following = [Segment(1, n).name() for n in (4, 5)]
    for name in following:
        storage.put_bytes(f"wal_005/{name}.lz4", lz4.frame.compress(segment_bytes(name, 2222)))
    settings = load(environ={"WALG_FILE_PREFIX": "/x", "WALG_DOWNLOAD_CONCURRENCY": "2"})
    root = prefetch_root(settings, str(dest))
    (pgdata / signal).touch()
    assert Prefetcher(settings, storage, root, SEG, str(dest)).run(NAME, 1) == following[:1]
    (pgdata / signal).unlink()  # recovery has ended
    assert Prefetcher(settings, storage, root, SEG, str(dest)).run(following[0], 1) == []
    assert sorted(os.listdir(root)) == [following[0], "running"]
    assert os.listdir(os.path.join(root, "running")) == []


def _beside_an_unmounted_volume(
    tmp_path: Path, walg_bin: str, volume: Path, store: Path
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """A data directory in archive recovery with a segment to archive, and a way to run the
    real walg there (storage folder ``store``) in a mount namespace whose /etc/fstab lists
    ``volume``, which is not mounted."""
    fstab = tmp_path / "fstab"
    fstab.write_text(f"UUID=0-0 {volume} ext4 defaults,nofail 0 2\n")
    pgdata = _pgdata(tmp_path, 2222)
    (pgdata / "PG_VERSION").write_text("15\n")
    (pgdata / "recovery.signal").touch()
    (pgdata / "pg_wal" / NAME).write_bytes(segment_bytes(NAME, 2222))
    namespace = in_mount_namespace('mount --bind "$0" /etc/fstab && exec "$@"', str(fstab))

    def walg(*args: str) -> subprocess.CompletedProcess[str]:
        return run_walg([*namespace, walg_bin, *args], walg_env(store, tmp_path), pgdata)

    return walg


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"),
    reason="a private /etc/fstab needs root and unshare",
)
def test_an_archive_on_a_volume_that_is_not_mounted_is_no_empty_archive(
    tmp_path: Path, walg_bin: str
) -> None:
    """WALG_FILE_PREFIX is the mount point of the backup volume, which is not mounted. Every
    wal-fetch in archive recovery answered 74 ("not in the archive"): PostgreSQL would end
    recovery there and promote. wal-push wrote the WAL onto the disk beneath. The real walg
    runs in a mount namespace whose /etc/fstab lists the volume."""
    volume = tmp_path / "volume"
    volume.mkdir()
    walg = _beside_an_unmounted_volume(tmp_path, walg_bin, volume, store=volume)
    fetched = walg("wal-fetch", Segment(1, 9).name(), "pg_wal/RECOVERYXLOG")
    assert fetched.returncode == 128, fetched.stderr
    assert "not mounted" in fetched.stderr
    pushed = walg("wal-push", f"pg_wal/{NAME}")
    assert pushed.returncode == 1, pushed.stderr
    assert "not mounted" in pushed.stderr
    assert list(volume.iterdir()) == []


@pytest.mark.parametrize("foreign", ["another-segment", "another-cluster"])
def test_an_intact_object_of_another_segment_or_cluster_is_never_handed_over(
    walg_bin: str, tmp_path: Path, foreign: str
) -> None:
    """An intact object under a segment's name that holds another segment (a copy under the
    wrong name) or another cluster's segment (two clusters archiving into one folder):
    wal-fetch handed it to PostgreSQL with exit 0, and PostgreSQL reads such a file as the
    end of the WAL ("unexpected pageaddr", "WAL file is from different database system"):
    in archive recovery it promotes without the rest. The prefetch refused it, and left the
    download to wal-fetch. Cold, after a prefetch and through the daemon it is a failure
    naming the object (128 in archive recovery), and nothing is put in place."""
    good = Segment(1, 2).name()
    held = (
        segment_bytes(Segment(1, 4).name(), 5)
        if foreign == "another-segment"
        else segment_bytes(NAME, 7)
    )
    store = tmp_path / "store"
    (store / "wal_005").mkdir(parents=True)
    (store / "wal_005" / f"{good}.lz4").write_bytes(lz4.frame.compress(segment_bytes(good, 5)))
    (store / "wal_005" / f"{NAME}.lz4").write_bytes(lz4.frame.compress(held))
    pgdata = _pgdata(tmp_path, 5)
    (pgdata / "recovery.signal").touch()
    env = walg_env(store, tmp_path)
    dest = pgdata / "pg_wal" / "RECOVERYXLOG"
    reason = Segment(1, 4).name() if foreign == "another-segment" else "another database system"

    def run(argv: list[str], **extra: str) -> subprocess.CompletedProcess[str]:
        return run_walg(argv, {**env, **extra}, pgdata)

    def walg(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return run([walg_bin, *args], **extra)

    cold = walg("wal-fetch", NAME, "pg_wal/RECOVERYXLOG", WALG_DOWNLOAD_CONCURRENCY="1")
    assert cold.returncode == 128, cold.stderr
    assert f"{NAME}.lz4 is not WAL segment {NAME}" in cold.stderr and reason in cold.stderr
    assert not dest.exists()

    # After a restore of the segment before it, the prefetch child looks at it first.
    previous = walg("wal-fetch", good, "pg_wal/RECOVERYXLOG", WALG_DOWNLOAD_CONCURRENCY="4")
    assert previous.returncode == 0, previous.stderr
    dest.unlink()
    running = pgdata / "pg_wal" / ".wal-g"
    deadline = time.monotonic() + 30
    while any(p.name == NAME for p in running.rglob("*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    after = walg("wal-fetch", NAME, "pg_wal/RECOVERYXLOG", WALG_DOWNLOAD_CONCURRENCY="4")
    assert after.returncode == 128, after.stderr
    assert not dest.exists()

    socket_path = tmp_path / "d.sock"
    daemon = subprocess.Popen(
        [walg_bin, "daemon", str(socket_path), str(pgdata)],
        env={**env, "WALG_DOWNLOAD_CONCURRENCY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not socket_path.exists():
            assert daemon.poll() is None, daemon.communicate()
            assert time.monotonic() < deadline, "the daemon did not start"
            time.sleep(0.02)
        client = str(Path(walg_bin).with_name("walg-daemon-client"))
        served = run(
            [client, str(socket_path), "wal-fetch", NAME, "pg_wal/RECOVERYXLOG"],
            WALG_DAEMON_CLIENT_PYTHON="1",
        )
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, log = daemon.communicate(timeout=30)
    assert served.returncode == 128, served.stderr
    assert "the daemon answered an error" in served.stderr
    assert f"is not WAL segment {NAME}" in log
    assert not dest.exists()


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"),
    reason="a private /etc/fstab needs root and unshare",
)
def test_a_wal_folder_on_its_own_volume_that_is_not_mounted_is_no_empty_archive(
    tmp_path: Path, walg_bin: str
) -> None:
    """The storage folder is there, and its wal_005/ is the mount point of a volume of its own
    (/etc/fstab lists it) that is not mounted: only the storage folder itself and the folders
    above it were checked. wal-fetch in archive recovery answered 74 ("not in the archive"),
    so PostgreSQL would end recovery and promote; wal-push wrote the WAL into the empty
    folder beneath the mount point, hidden once the volume is mounted."""
    store = tmp_path / "store"
    volume = store / "wal_005"
    volume.mkdir(parents=True)
    walg = _beside_an_unmounted_volume(tmp_path, walg_bin, volume, store=store)
    fetched = walg("wal-fetch", Segment(1, 9).name(), "pg_wal/RECOVERYXLOG")
    assert fetched.returncode == 128, fetched.stderr
    assert f"{volume}" in fetched.stderr and "not mounted" in fetched.stderr
    pushed = walg("wal-push", f"pg_wal/{NAME}")
    assert pushed.returncode == 1, pushed.stderr
    assert "not mounted" in pushed.stderr
    assert list(volume.iterdir()) == []
    shown = walg("wal-show")  # listed as an empty archive before
    assert shown.returncode == 1, shown.stderr
    assert "not mounted" in shown.stderr


def test_a_fifo_in_the_prefetch_folder_never_hangs_a_fetch(walg_bin: str, tmp_path: Path) -> None:
    """A FIFO under a segment's name in the prefetch folder (a WALG_PREFETCH_DIR several
    clusters share): wal-fetch took it as a prefetched file and opened it to check its first
    page, which waits for a writer forever; PostgreSQL's restore_command never returned. It is
    discarded now, and the segment downloaded."""
    good = Segment(1, 2).name()
    store = tmp_path / "store"
    (store / "wal_005").mkdir(parents=True)
    (store / "wal_005" / f"{good}.lz4").write_bytes(lz4.frame.compress(segment_bytes(good, 5)))
    pgdata = _pgdata(tmp_path, 5)
    shared = tmp_path / "shared"
    env = walg_env(store, tmp_path, WALG_PREFETCH_DIR=str(shared), WALG_DOWNLOAD_CONCURRENCY="2")

    def fetch() -> subprocess.CompletedProcess[str]:
        try:
            return run_walg([walg_bin, "wal-fetch", good, "pg_wal/RECOVERYXLOG"], env, pgdata, 30)
        except subprocess.TimeoutExpired:
            pytest.fail("wal-fetch waited on the FIFO in the prefetch folder")

    # The first call's prefetch child makes this archive's folder in the shared one.
    assert fetch().returncode == 0
    (pgdata / "pg_wal" / "RECOVERYXLOG").unlink()
    deadline = time.monotonic() + 30
    while not list(shared.glob(".wal-g/prefetch/*/running")):
        assert time.monotonic() < deadline, "no prefetch folder was made"
        time.sleep(0.05)
    (root,) = (p.parent for p in shared.glob(".wal-g/prefetch/*/running"))
    os.mkfifo(root / good)
    fetched = fetch()
    assert fetched.returncode == 0, fetched.stderr
    assert (pgdata / "pg_wal" / "RECOVERYXLOG").read_bytes() == segment_bytes(good, 5)


# --- pg_rewind --restore-target-wal: a fetch into a data directory no server runs on ---------


def _unused_pid() -> int:
    """A process id no process has now."""
    pid = os.getpid() + 1
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


def _wait_for_daemon(sock: Path, daemon: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while not sock.exists():
        assert daemon.poll() is None, daemon.communicate()
        assert time.monotonic() < deadline, "the daemon did not start"
        time.sleep(0.02)


@pytest.mark.parametrize("via", ["walg", "daemon"])
def test_a_fetch_for_pg_rewind_changes_nothing_else_in_pg_wal(
    tmp_path: Path, walg_bin: str, via: str
) -> None:
    """``pg_rewind --restore-target-wal`` runs restore_command with ``%p`` in the stopped
    target's pg_wal under the file's own name (``<target>/pg_wal/<name>``), between listing
    the target's files and rewriting them by that list. Each fetch started a prefetch there
    (detached, or the daemon's) that went on adding and renaming files under
    ``pg_wal/.wal-g``, and pg_rewind failed midway ("could not remove file ...", "Directory
    not empty"). Recovery (``pg_wal/RECOVERYXLOG``) still gets its prefetch."""
    from fakewal import detached_walg

    pgdata = _pgdata(tmp_path, 2222)
    (pgdata / "PG_VERSION").write_text("15\n")
    wal = pgdata / "pg_wal"
    names = [Segment(1, n).name() for n in range(3, 8)]
    store = tmp_path / "store"
    (store / "wal_005").mkdir(parents=True)
    for name in names:
        data = lz4.frame.compress(segment_bytes(name, 2222))
        (store / "wal_005" / f"{name}.lz4").write_bytes(data)
    env = walg_env(store, tmp_path, WALG_DOWNLOAD_CONCURRENCY="4")
    daemon = None
    if via == "daemon":
        sock = tmp_path / "d.sock"
        daemon = subprocess.Popen(
            [walg_bin, "daemon", str(sock), str(pgdata)],
            env={**env, "WALG_DAEMON_FOLLOW_WAL": "false"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_for_daemon(sock, daemon)
        client = str(Path(walg_bin).with_name("walg-daemon-client"))
        command = [client, str(sock), "wal-fetch"]
    else:
        command = [walg_bin, "wal-fetch"]

    def settled() -> None:
        # What a prefetch would do happens after the call has answered.
        time.sleep(1.5)
        deadline = time.monotonic() + 30
        while detached_walg(wal):
            assert time.monotonic() < deadline, "a detached prefetch did not finish"
            time.sleep(0.05)

    try:
        for name in names[:2]:
            done = run_walg([*command, name, str(wal / name)], env, pgdata)
            assert done.returncode == 0, done.stderr
        settled()
        assert sorted(p.name for p in wal.iterdir()) == names[:2]

        # A server in recovery gets its prefetch (%p is pg_wal/RECOVERYXLOG), also where its
        # postmaster's pid names no process walg can see: a walg daemon in a container of
        # its own (a Kubernetes sidecar) shares the data volume, not the PID namespace.
        (pgdata / "postmaster.pid").write_text(f"{_unused_pid()}\n{pgdata}\n")
        (pgdata / "recovery.signal").touch()
        done = run_walg([*command, names[2], str(wal / "RECOVERYXLOG")], env, pgdata)
        assert done.returncode == 0, done.stderr
        settled()
        prefetched = {p.name for p in (wal / ".wal-g" / "prefetch").rglob("*") if p.is_file()}
        assert prefetched == set(names[3:]), prefetched
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.communicate(timeout=60)


@pytest.mark.parametrize(
    ("signals", "expected"),
    [(("recovery.signal",), 128), (("recovery.signal", "standby.signal"), 1), ((), 1)],
    ids=["archive-recovery", "standby", "no-recovery"],
)
def test_swapped_restore_command_arguments_stop_archive_recovery(
    walg_bin: str, tmp_path: Path, signals: tuple[str, ...], expected: int
) -> None:
    """restore_command = 'walg wal-fetch %p %f': NAME is then pg_wal/RECOVERYXLOG, and DEST a
    segment name in the data directory, whose folder's folder is not the data directory. The
    refusal of the name exited 1, which recovery reads as "not in the archive": it ended at
    once. PostgreSQL runs restore_command in the data directory, so that is where the rule
    looks too."""
    pgdata = tmp_path / "pgdata"
    (pgdata / "pg_wal").mkdir(parents=True)
    for name in signals:
        (pgdata / name).touch()
    env = walg_env(_archive(tmp_path, {}), tmp_path)
    fetched = run_walg([walg_bin, "wal-fetch", "pg_wal/RECOVERYXLOG", NAME], env, pgdata)
    assert fetched.returncode == expected, fetched.stderr
    assert "is not a WAL file name" in fetched.stderr, fetched.stderr
    assert not (pgdata / NAME).exists()


# --- a prefetch folder another local user can write in (a shared WALG_PREFETCH_DIR) ---------


@pytest.mark.parametrize("planted", ["symlink", "hard link", "another user's file"])
def test_a_planted_file_in_the_prefetch_folder_is_never_handed_over(
    tmp_path: Path, planted: str
) -> None:
    """What another user can plant in a prefetch folder they can write in (a WALG_PREFETCH_DIR
    such as /var/tmp/walg, made by them first): a symbolic link to a valid segment, a hard
    link to one, or a valid segment of their own. Each was renamed into pg_wal as the file
    PostgreSQL reads (a link went along as a link, and PostgreSQL later recycles and writes
    through it; a file that has another name or owner can be changed after it was checked).
    Each is discarded now, and nothing is put in place: the segment is downloaded."""
    pgdata = _pgdata(tmp_path, 2222)
    dest = pgdata / "pg_wal" / "RECOVERYXLOG"
    root = tmp_path / "shared-prefetch"
    root.mkdir(mode=0o777)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "valid-segment"
    target.write_bytes(segment_bytes(NAME, 2222))
    candidate = root / NAME
    if planted == "symlink":
        candidate.symlink_to(target)
    elif planted == "hard link":
        os.link(target, candidate)
    else:
        if os.geteuid() != 0:
            pytest.skip("needs root to give a file to another user")
        candidate.write_bytes(segment_bytes(NAME, 2222))
        os.chown(candidate, pwd.getpwnam(pg_user_env()["USER"]).pw_uid, -1)
    assert not take_prefetched(str(root), NAME, str(dest), SEG)
    assert not os.path.lexists(dest)
    assert sorted(p.name for p in dest.parent.iterdir()) == []
    assert not os.path.lexists(candidate)  # discarded, so it is downloaded instead
    assert target.read_bytes() == segment_bytes(NAME, 2222)


def test_a_folder_planted_under_a_segment_s_name_in_the_prefetch_folder_is_passed_over(
    tmp_path: Path,
) -> None:
    """A folder under a segment's name in a prefetch folder other users may write in: the
    fetch failed on it (IsADirectoryError from discarding it; exit 128 in archive recovery,
    so PostgreSQL stopped recovery) where it is to be passed over and the segment downloaded.
    The same folder swapped in after that look is renamed beside DEST by the take: it is put
    back, and nothing is left beside DEST."""
    pgdata = _pgdata(tmp_path, 2222)
    dest = pgdata / "pg_wal" / "RECOVERYXLOG"
    root = tmp_path / "shared-prefetch"
    root.mkdir(mode=0o777)
    planted = root / NAME
    (planted / "inside").mkdir(parents=True)
    assert not take_prefetched(str(root), NAME, str(dest), SEG)
    assert sorted(p.name for p in dest.parent.iterdir()) == []
    # Swapped in between the look at the folder and the take (called here directly).
    assert not _take(str(planted), temporary_beside(str(dest)))
    assert sorted(p.name for p in dest.parent.iterdir()) == []
    assert (planted / "inside").is_dir()


def test_a_prefetched_file_of_this_user_is_still_taken(tmp_path: Path) -> None:
    """The check above refuses only what a prefetcher does not make: its own files pass."""
    pgdata = _pgdata(tmp_path, 2222)
    dest = pgdata / "pg_wal" / "RECOVERYXLOG"
    root = tmp_path / "prefetch"
    root.mkdir()
    (root / NAME).write_bytes(segment_bytes(NAME, 2222))
    assert take_prefetched(str(root), NAME, str(dest), SEG)
    assert not dest.is_symlink()
    assert dest.read_bytes() == segment_bytes(NAME, 2222)


def test_a_planted_link_in_a_prefetch_folder_on_another_file_system_is_not_copied(
    tmp_path: Path,
) -> None:
    """Across file systems the file is copied, not renamed: a symbolic link there was
    followed and its target copied into pg_wal. It is discarded now."""
    other = _other_file_system()
    if other is None:
        pytest.skip("no writable folder on another file system (/dev/shm)")
    pgdata = _pgdata(tmp_path, 2222)
    dest = pgdata / "pg_wal" / "RECOVERYXLOG"
    target = tmp_path / "valid-segment"
    target.write_bytes(segment_bytes(NAME, 2222))
    with tempfile.TemporaryDirectory(dir=other) as folder:
        root = Path(folder)
        (root / NAME).symlink_to(target)
        assert not take_prefetched(str(root), NAME, str(dest), SEG)
        assert not os.path.lexists(root / NAME)
    assert sorted(p.name for p in dest.parent.iterdir()) == []
    assert target.read_bytes() == segment_bytes(NAME, 2222)


def test_a_running_download_another_user_keeps_growing_holds_no_fetch(tmp_path: Path) -> None:
    """wal-fetch waits while ``running/NAME`` grows (a prefetcher downloading it right now).
    In a prefetch folder other users can write in, one of them appending to a file of that
    name kept every fetch of the segment waiting for as long as they liked: recovery stood
    still. Only this user's prefetchers are waited for now."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user")
    import threading

    pgdata = _pgdata(tmp_path, 2222)
    dest = pgdata / "pg_wal" / "RECOVERYXLOG"
    root = tmp_path / "shared-prefetch"
    (root / "running").mkdir(parents=True)
    running = root / "running" / NAME
    running.write_bytes(b"")
    os.chown(running, pwd.getpwnam(pg_user_env()["USER"]).pw_uid, -1)
    stop = threading.Event()

    def grow() -> None:
        with open(running, "ab") as handle:
            while not stop.is_set():
                handle.write(b"x")
                handle.flush()
                time.sleep(0.01)

    grower = threading.Thread(target=grow, daemon=True)
    grower.start()
    result: list[bool] = []
    fetch = threading.Thread(
        target=lambda: result.append(take_prefetched(str(root), NAME, str(dest), SEG)),
        daemon=True,
    )
    fetch.start()
    fetch.join(60)
    stop.set()
    grower.join(10)
    assert not fetch.is_alive(), "the fetch was still waiting on another user's file"
    fetch.join(10)
    assert result == [False]


def test_a_planted_file_the_server_cannot_remove_from_the_prefetch_folder_is_passed_over(
    walg_bin: str, pg_workdir: Path
) -> None:
    """A prefetch folder made first by another user (WALG_PREFETCH_DIR=/var/tmp/walg, mode
    1777): a file of theirs under the next segment's name, dated before the system started,
    could not be removed by the server's user, and that failure failed the fetch (exit 128
    in archive recovery: recovery stopped though storage held the segment). Passed over now,
    with a warning, and the segment downloaded."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give a folder and a file to another user than the server's")
    first, second = Segment(1, 2).name(), Segment(1, 3).name()
    store = _archive(
        pg_workdir,
        {
            f"{first}.lz4": lz4.frame.compress(segment_bytes(first, 5)),
            f"{second}.lz4": lz4.frame.compress(segment_bytes(second, 5)),
        },
    )
    pgdata = make_shared_dir(pg_workdir / "pgdata", 0o700)
    make_shared_dir(pgdata / "pg_wal", 0o700)
    (pgdata / "recovery.signal").touch()
    shared = make_shared_dir(pg_workdir / "shared", 0o1777)
    env = {"WALG_PREFETCH_DIR": str(shared), "WALG_DOWNLOAD_CONCURRENCY": "2"}
    got = _fetch(walg_bin, store, pgdata, first, **env)
    assert got.returncode == 0, got.stderr
    # The prefetch child of that call makes this archive's folder and fetches the second
    # segment into it: here that folder is taken to be another user's, made before the
    # server's.
    deadline = time.monotonic() + 30
    while not (prefetched := list(shared.glob(f".wal-g/prefetch/*/{second}"))):
        assert time.monotonic() < deadline, (got.stderr, list(shared.rglob("*")))
        time.sleep(0.05)
    folder = prefetched[0].parent
    for path in (shared / ".wal-g", shared / ".wal-g" / "prefetch", folder):
        os.chown(path, 0, 0)
        path.chmod(0o1777)
    planted = folder / second
    planted.unlink(missing_ok=True)
    planted.write_bytes(segment_bytes(second, 5))
    before = _before_boot()
    os.utime(planted, (before, before))
    got = _fetch(walg_bin, store, pgdata, second, **env)
    assert got.returncode == 0, got.stderr
    assert (pgdata / "pg_wal" / "RECOVERYXLOG").read_bytes() == segment_bytes(second, 5)
    assert "cannot remove" in got.stderr, got.stderr
    assert planted.exists()  # another user's: left where it was
