"""A FIFO, socket or dangling link where a backup's sentinel (or its metadata.json) would be, on
local-folder storage: the listing commands skip that backup with a warning naming it, and never
block on it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from test_backup_fetch_wal_g_layout import NAME, assert_restored, put_wal_g_backup

from walg.core import naming
from walg.storage.file import FileStorage

# A newer backup's name than NAME's, so LATEST would take it if it were a backup.
ODD = "base_000000010000000000000009"


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path) -> None:
    # Bound by its name in its folder: the whole path is longer than a socket address takes.
    with contextlib.chdir(path.parent), socket.socket(socket.AF_UNIX) as sock:
        sock.bind(path.name)


def _dangling_link(path: Path) -> None:
    path.symlink_to(path.parent / "nothing-here")


@pytest.mark.parametrize("make", [_fifo, _socket, _dangling_link])
def test_listings_skip_a_backup_whose_sentinel_is_not_a_file(
    tmp_path: Path, walg_bin: str, make: Callable[[Path], None]
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    storage = FileStorage(store)
    put_wal_g_backup(storage)
    # A WAL segment, so that wal-show has a timeline to count backups on.
    storage.put_bytes(f"{naming.WAL}000000010000000000000003", b"\0" * 16)
    storage.close()
    make(store / naming.sentinel_key(ODD))
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "WALG_FILE_PREFIX": str(store),
        "WALG_TAR_DISABLE_FSYNC": "true",
    }

    def walg(*argv: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [walg_bin, *argv], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, (argv, done.stderr)
        assert f"{ODD}_backup_stop_sentinel.json" in done.stderr, (argv, done.stderr)
        assert "WARNING: " in done.stderr and "skipped" in done.stderr, (argv, done.stderr)
        assert ODD not in done.stdout, (argv, done.stdout)
        return done

    assert NAME in walg("backup-list").stdout
    assert NAME in walg("backup-list", "--detail").stdout
    assert NAME in walg("backup-list", "--detail", "--json").stdout
    walg("wal-show")
    walg("backup-fetch", str(tmp_path / "dest"), "LATEST")
    assert_restored(tmp_path / "dest")


def _folder(path: Path) -> None:
    path.mkdir()


@pytest.mark.parametrize("make", [_fifo, _socket, _dangling_link, _folder])
def test_wal_show_skips_a_backup_whose_metadata_is_not_a_file(
    tmp_path: Path, walg_bin: str, make: Callable[[Path], None]
) -> None:
    """wal-show leaves out, with a warning, a backup whose metadata.json it cannot read (none,
    or not JSON); one that is no object's file failed the whole listing instead. A command
    that needs that backup's details still fails, naming the file, without waiting on it."""
    store = tmp_path / "store"
    store.mkdir()
    storage = FileStorage(store)
    put_wal_g_backup(storage)
    storage.put_bytes(f"{naming.WAL}000000010000000000000003", b"\0" * 16)
    storage.put_bytes(naming.sentinel_key(ODD), storage.get_bytes(naming.sentinel_key(NAME)))
    storage.close()
    (store / naming.metadata_key(ODD)).parent.mkdir()
    make(store / naming.metadata_key(ODD))
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "WALG_FILE_PREFIX": str(store),
    }

    def walg(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [walg_bin, *argv], env=env, capture_output=True, text=True, timeout=60, check=False
        )

    shown = walg("wal-show", "--detailed-json")
    assert shown.returncode == 0, shown.stderr
    assert "WARNING: " in shown.stderr and f"{ODD}/metadata.json" in shown.stderr, shown.stderr
    assert NAME in shown.stdout and ODD not in shown.stdout, shown.stdout
    listed = walg("backup-list")
    assert listed.returncode == 0, listed.stderr
    assert NAME in listed.stdout and ODD in listed.stdout, listed.stdout
    detail = walg("backup-list", "--detail")
    assert detail.returncode == 1, detail.stderr
    assert f"{ODD}/metadata.json" in detail.stderr, detail.stderr


def test_wal_show_skips_a_fifo_among_wal_objects(tmp_path: Path, walg_bin: str) -> None:
    """wal-show leaves such an entry of wal_005/ out with a warning, as it does an empty
    object, instead of failing the whole listing."""
    store = tmp_path / "store"
    (store / "wal_005").mkdir(parents=True)
    (store / "wal_005" / "000000010000000000000003").write_bytes(b"\0" * 16)
    os.mkfifo(store / "wal_005" / "000000010000000000000004.lz4")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "WALG_FILE_PREFIX": str(store),
    }
    done = subprocess.run(
        [walg_bin, "wal-show"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "000000010000000000000004.lz4 is a FIFO" in done.stderr, done.stderr
    assert "000000010000000000000003" in done.stdout


def test_the_daemon_s_archive_check_passes_over_a_fifo_among_the_backups(tmp_path: Path) -> None:
    # The daemon's look at whether storage can be the server's archive (after a fetch found
    # nothing) failed on such an entry, and warned every 10 minutes that it could not look.
    from walg.ops.archive_check import archive_problem

    storage = FileStorage(tmp_path)
    put_wal_g_backup(storage)
    os.mkfifo(tmp_path / naming.BASEBACKUPS / f"{ODD}_backup_stop_sentinel.json")
    assert archive_problem(storage, "000000010000000000000009") is None
    storage.close()
