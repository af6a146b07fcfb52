"""wal-fetch never hands PostgreSQL a wrong file, and fails in a way PostgreSQL cannot mistake
for the end of the archive: foreign prefetched segments, a prefetch folder on another file
system, an abandoned daemon request, exit codes in archive recovery and on a standby, and a
prefetch child that cannot be started after the file is in place."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import lz4.frame
import pytest

from pgcluster import make_shared_dir, pg_user_env, run_as_pg
from walg.core.lsn import Segment
from walg.core.walpage import cluster_system_id
from walg.errors import IntegrityError, RequestAbandoned
from walg.ops.wal_fetch import wal_fetch
from walg.ops.wal_prefetch import take_prefetched
from walg.settings import load
from walg.storage.memory import MemoryStorage

SEG = 16 * 1024 * 1024
NAME = Segment(1, 3).name()


def _segment_bytes(name: str, sysid: int) -> bytes:
    segno = Segment.parse(name).segno
    header = (0xD110).to_bytes(2, "little") + (2).to_bytes(2, "little") + (1).to_bytes(4, "little")
    header += (segno * SEG).to_bytes(8, "little") + bytes(4) + bytes(4)
    header += sysid.to_bytes(8, "little") + SEG.to_bytes(4, "little") + (8192).to_bytes(4, "little")
    return header + bytes(SEG - len(header))


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
    (root / NAME).write_bytes(_segment_bytes(NAME, 1111))
    assert not take_prefetched(str(root), NAME, str(dest), SEG)
    assert not dest.exists()
    assert not (root / NAME).exists()  # discarded, so it is downloaded instead
    (root / NAME).write_bytes(_segment_bytes(NAME, 2222))
    assert take_prefetched(str(root), NAME, str(dest), SEG)
    assert dest.read_bytes()[24:32] == (2222).to_bytes(8, "little")


def test_wal_fetch_downloads_when_the_prefetched_file_is_foreign(tmp_path: Path) -> None:
    pgdata = _pgdata(tmp_path, 2222)
    settings = load(environ={"WALG_FILE_PREFIX": "/x", "WALG_PREFETCH_DIR": str(tmp_path)})
    root = tmp_path / ".wal-g" / "prefetch"
    root.mkdir(parents=True)
    (root / NAME).write_bytes(_segment_bytes(NAME, 1111))
    storage = MemoryStorage()
    storage.put_bytes(f"wal_005/{NAME}.lz4", lz4.frame.compress(_segment_bytes(NAME, 2222)))
    dest = pgdata / "pg_wal" / "RECOVERYXLOG"
    result = wal_fetch(settings, storage, NAME, str(dest))
    assert not result.from_prefetch
    assert dest.read_bytes() == _segment_bytes(NAME, 2222)


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
        (root / NAME).write_bytes(_segment_bytes(NAME, 2222))
        # Renaming across file systems fails (EXDEV): the file is copied, then renamed.
        assert take_prefetched(str(root), NAME, str(dest), SEG)
        assert not (root / NAME).exists()
    assert dest.read_bytes() == _segment_bytes(NAME, 2222)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["RECOVERYXLOG"]


def test_an_abandoned_request_puts_nothing_in_place(tmp_path: Path) -> None:
    pgdata = _pgdata(tmp_path, 2222)
    dest = pgdata / "pg_wal" / "RECOVERYXLOG"
    settings = load(environ={"WALG_FILE_PREFIX": "/x", "WALG_PREFETCH_DIR": str(tmp_path)})
    storage = MemoryStorage()
    storage.put_bytes(f"wal_005/{NAME}.lz4", lz4.frame.compress(_segment_bytes(NAME, 2222)))
    asked: list[bool] = []

    def refuse() -> bool:
        asked.append(True)
        return False

    with pytest.raises(RequestAbandoned):
        wal_fetch(settings, storage, NAME, str(dest), commit=refuse)
    assert asked
    assert list(dest.parent.iterdir()) == []  # no file, no temporary left
    # The same for a prefetched file: it stays where it is for the next request.
    root = tmp_path / ".wal-g" / "prefetch"
    root.mkdir(parents=True)
    (root / NAME).write_bytes(_segment_bytes(NAME, 2222))
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
            f"{good}.lz4": lz4.frame.compress(_segment_bytes(good, 5)),
            f"{NAME}.lz4": b"\x04\x22\x4d\x18garbage that is not an lz4 frame",
        },
    )
    pgdata = make_shared_dir(base / "pgdata", 0o700)
    make_shared_dir(pgdata / "pg_wal", 0o700)
    for signal in signals:
        (pgdata / signal).touch()
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


def test_a_prefetch_child_that_cannot_start_does_not_fail_the_fetch(
    walg_bin: str, pg_workdir: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run walg as pgtest with a process limit")
    base = pg_workdir
    good = Segment(1, 2).name()
    store = _archive(base, {f"{good}.lz4": lz4.frame.compress(_segment_bytes(good, 5))})
    pgdata = make_shared_dir(base / "pgdata", 0o700)
    make_shared_dir(pgdata / "pg_wal", 0o700)
    (pgdata / "recovery.signal").touch()
    # With one process allowed, starting the prefetch child fails (EAGAIN) after the file is
    # in place: the call must still report the file restored.
    got = _fetch(walg_bin, store, pgdata, good, prlimit=True, WALG_DOWNLOAD_CONCURRENCY="4")
    assert got.returncode == 0, got.stderr
    assert "not prefetching" in got.stderr
    assert (pgdata / "pg_wal" / "RECOVERYXLOG").read_bytes() == _segment_bytes(good, 5)


def test_a_prefetch_folder_the_server_cannot_read_means_a_download(
    walg_bin: str, pg_workdir: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to make a folder the server's user cannot read")
    good = Segment(1, 2).name()
    store = _archive(pg_workdir, {f"{good}.lz4": lz4.frame.compress(_segment_bytes(good, 5))})
    pgdata = make_shared_dir(pg_workdir / "pgdata", 0o700)
    make_shared_dir(pgdata / "pg_wal", 0o700)
    # A wal-fetch run once as root left its prefetch folder behind.
    locked = pgdata / "pg_wal" / ".wal-g"
    (locked / "prefetch" / "running").mkdir(parents=True)
    locked.chmod(0o700)
    got = _fetch(walg_bin, store, pgdata, good, WALG_DOWNLOAD_CONCURRENCY="1")
    assert got.returncode == 0, got.stderr
    assert "cannot look into the prefetch folder" in got.stderr
    assert (pgdata / "pg_wal" / "RECOVERYXLOG").read_bytes() == _segment_bytes(good, 5)


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
    (root / NAME).write_bytes(_segment_bytes(NAME, 2222))
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
