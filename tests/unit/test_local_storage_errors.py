"""A local storage folder (``WALG_FILE_PREFIX``) that misbehaves: the real ``walg`` names what
is wrong (the folder or object, and the reason) and exits as PostgreSQL needs.

Read-only (a read-only bind mount in a private mount namespace), not writable or not
reachable by the server's user (folders of root, walg run as ``pgtest``), an object whose
reads fail (EIO).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fakewal import in_mount_namespace, run_walg, walg_env
from pgcluster import make_shared_dir, pg_user_env, run_as_pg
from walg.core.lsn import Segment

SEG = Segment(1, 3).name()

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to make folders the server's user cannot use"
)


def _segment_file(pg_wal: Path) -> Path:
    path = pg_wal / SEG
    path.write_bytes(os.urandom(1 << 16) * 256)
    os.chmod(path, 0o644)
    return path


def _as_pg(
    argv: list[str], store: Path, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**pg_user_env(), "PATH": os.environ["PATH"], "WALG_FILE_PREFIX": str(store)}
    return run_as_pg(argv, env=env, check=False, cwd=cwd, timeout=60)


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"),
    reason="a read-only bind mount needs root and unshare",
)
@pytest.mark.parametrize("wal_folder", ["there", "not-yet"])
def test_a_read_only_storage_folder_is_named_not_a_temporary_file(
    walg_bin: str, tmp_path: Path, wal_folder: str
) -> None:
    """The error named the temporary file it could not create
    (``…/wal_005/<segment>.lz4.tmp.20261127T024153Z-c3ac1c7a8b3e80ee: Read-only file
    system``), a name that exists nowhere, instead of the folder that is read-only."""
    store = tmp_path / "store"
    store.mkdir()
    if wal_folder == "there":
        (store / "wal_005").mkdir()
    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir()
    segment = _segment_file(pg_wal)
    namespace = in_mount_namespace('mount --bind -o ro "$0" "$0" && exec "$@"', str(store))
    pushed = run_walg([*namespace, walg_bin, "wal-push", str(segment)], walg_env(store, tmp_path))
    assert pushed.returncode == 1, pushed.stderr
    wal = store / "wal_005"
    named = f"{wal}:" if wal_folder == "there" else f"folder {wal}:"
    assert named in pushed.stderr and "Read-only file system" in pushed.stderr, pushed.stderr
    assert ".tmp." not in pushed.stderr, pushed.stderr


@needs_root
def test_a_storage_folder_of_another_user_is_named_not_a_temporary_file(
    walg_bin: str, pg_workdir: Path
) -> None:
    """The server's user may not write in the archive folder (made by root): the error named
    the temporary file it could not create, not the folder to fix."""
    store = pg_workdir / "store"
    (store / "wal_005").mkdir(parents=True)  # root's, 0755
    pg_wal = make_shared_dir(pg_workdir / "pg_wal", 0o700)
    segment = _segment_file(pg_wal)
    pushed = _as_pg([walg_bin, "wal-push", str(segment)], store)
    assert pushed.returncode == 1, pushed.stderr
    assert f"{store / 'wal_005'}:" in pushed.stderr, pushed.stderr
    assert "Permission denied" in pushed.stderr and ".tmp." not in pushed.stderr
    assert list((store / "wal_005").iterdir()) == []


@needs_root
def test_a_storage_folder_the_server_s_user_cannot_reach_is_not_called_missing(
    walg_bin: str, pg_workdir: Path
) -> None:
    """The storage folder is there, under a folder of root's that the server's user may not
    enter (mode 0700): every command said it "does not exist or is not a folder: walg does
    not create it (an unmounted volume?); create it or mount its volume", sending the DBA to
    create or mount what is there. It now says the folder cannot be reached and why; the
    exit codes stay those of a storage failure (wal-fetch 128 in archive recovery)."""
    locked = pg_workdir / "locked"
    store = locked / "store"
    (store / "wal_005").mkdir(parents=True)
    locked.chmod(0o700)  # root's
    pgdata = make_shared_dir(pg_workdir / "pgdata", 0o700)
    pg_wal = make_shared_dir(pgdata / "pg_wal", 0o700)
    (pgdata / "recovery.signal").touch()
    segment = _segment_file(pg_wal)
    pushed = _as_pg([walg_bin, "wal-push", str(segment)], store)
    fetched = _as_pg([walg_bin, "wal-fetch", SEG, "pg_wal/RECOVERYXLOG"], store, cwd=pgdata)
    shown = _as_pg([walg_bin, "wal-show"], store)
    for result, code in ((pushed, 1), (fetched, 128), (shown, 1)):
        assert result.returncode == code, result.stderr
        assert f"storage folder {store} cannot be reached: Permission denied" in result.stderr
        assert "does not exist" not in result.stderr


def test_an_object_whose_reads_fail_is_named(walg_bin: str, tmp_path: Path) -> None:
    """A read error of the disk under the archive (EIO; here an object's file linked to
    /proc/self/mem, whose first page is never mapped) failed wal-fetch with "unexpected
    OSError: [Errno 5] Input/output error", naming nothing; wal-push's comparison with an
    archived object the same. The object is named now, with the reason."""
    if not os.path.exists("/proc/self/mem"):
        pytest.skip("no /proc/self/mem to fail reads with")
    store = tmp_path / "store"
    (store / "wal_005").mkdir(parents=True)
    obj = store / "wal_005" / f"{SEG}.lz4"
    obj.symlink_to("/proc/self/mem")
    pgdata = tmp_path / "pgdata"
    (pgdata / "pg_wal").mkdir(parents=True)
    (pgdata / "recovery.signal").touch()
    segment = _segment_file(pgdata / "pg_wal")
    env = walg_env(store, tmp_path, WALG_DOWNLOAD_CONCURRENCY="1")
    for argv, code in (
        (["wal-fetch", SEG, "pg_wal/RECOVERYXLOG"], 128),
        (["wal-push", str(segment)], 1),
    ):
        result = run_walg([walg_bin, *argv], env, pgdata)
        assert result.returncode == code, result.stderr
        assert f"cannot read {obj}: Input/output error" in result.stderr, result.stderr
        assert "unexpected" not in result.stderr
    assert not (pgdata / "pg_wal" / "RECOVERYXLOG").exists()


def test_an_empty_object_under_a_wal_name_is_reported_not_counted(
    walg_bin: str, tmp_path: Path
) -> None:
    """An object of 0 bytes under a segment's name (a copy that filled its disk, a writer that
    never synced before a crash, as WAL-G's local storage) can never be restored: wal-fetch
    fails on it and recovery stops there. wal-show counted it as a stored segment, so the
    archive looked whole (and wal-verify vouched for it). It is now a missing segment, and a
    warning names the object."""
    import json

    import lz4.frame

    store = tmp_path / "store"
    (store / "wal_005").mkdir(parents=True)
    for segno in (1, 2, 3):
        name = Segment(1, segno).name()
        data = b"" if segno == 2 else lz4.frame.compress(b"segment")
        (store / "wal_005" / f"{name}.lz4").write_bytes(data)
    argv = [walg_bin, "wal-show", "--detailed-json", "--without-backups"]
    shown = run_walg(argv, walg_env(store, tmp_path))
    assert shown.returncode == 0, shown.stderr
    (timeline,) = json.loads(shown.stdout)
    assert timeline["missing_segments"] == [Segment(1, 2).name()]
    assert timeline["segments_count"] == 2
    assert f"wal_005/{Segment(1, 2).name()}.lz4 is empty" in shown.stderr
