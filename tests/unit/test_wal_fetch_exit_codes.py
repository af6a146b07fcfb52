"""The exit code of a failed ``walg wal-fetch`` in a data directory recovering from before
PostgreSQL 12, whose recovery settings are in ``recovery.conf``: archive recovery unless
``standby_mode`` is on. Any code up to 125 there reads as "not in the archive", and the
server ends recovery and promotes without the rest of the WAL; 128 stops it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

NAME = "000000010000000000000003"


@pytest.mark.parametrize(
    ("conf", "expected"),
    [
        ("restore_command = 'walg wal-fetch %f %p'\n", 128),
        ("standby_mode = 'on'\nrestore_command = 'walg wal-fetch %f %p'\n", 1),
        ("standby_mode = on\nstandby_mode = off\n", 128),
        ("standby_mode = 1\n", 1),
        ("standby_mode = 'y'  # a prefix of yes\n", 1),
    ],
    ids=["archive-recovery", "standby", "standby-turned-off-again", "standby-1", "standby-y"],
)
def test_a_walg_that_cannot_be_loaded_stops_a_recovery_conf_archive_recovery(
    walg_bin: str, tmp_path: Path, conf: str, expected: int
) -> None:
    """The installed command run by a Python that cannot import walg (a broken upgrade): its
    launcher decides the code alone, and read only recovery.signal, so a recovery.conf
    archive recovery got 1."""
    pgdata = tmp_path / "pgdata"
    (pgdata / "pg_wal").mkdir(parents=True)
    (pgdata / "recovery.conf").write_text(conf)
    fetched = subprocess.run(
        ["/usr/bin/python3", "-S", "-E", walg_bin, "wal-fetch", NAME, "pg_wal/RECOVERYXLOG"],
        cwd=pgdata,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert fetched.returncode == expected, fetched.stderr
    assert "cannot load walg" in fetched.stderr
    assert not (pgdata / "pg_wal" / "RECOVERYXLOG").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--config", "/etc/walg.json", "wal-fetch", NAME, "pg_wal/RECOVERYXLOG"], 128),
        (["--walg-file-prefix", "/x", "wal-fetch", NAME, "pg_wal/RECOVERYXLOG"], 128),
        (["--walg-file-prefix=/x", "--pghost=h", "wal-fetch", NAME, "pg_wal/RECOVERYXLOG"], 128),
        (["wal-fetch", NAME, "pg_wal/RECOVERYXLOG", "--walg-file-prefix", "/x"], 128),
        (["--walg-file-prefix", "/x", "wal-push", f"pg_wal/{NAME}"], 1),
        (["wal-push", f"pg_wal/{NAME}"], 1),
        (["backup-list"], 1),
    ],
    ids=[
        "fetch-with-config",
        "fetch-after-a-setting-flag",
        "fetch-after-setting-flags-with-values",
        "fetch-before-a-setting-flag",
        "push-after-a-setting-flag",
        "push",
        "other",
    ],
)
def test_a_walg_that_cannot_be_loaded_exits_by_the_command_it_was_given(
    walg_bin: str, tmp_path: Path, args: list[str], expected: int
) -> None:
    """In a data directory in archive recovery: a ``restore_command`` naming a config file
    (``walg --config FILE wal-fetch %f %p``) or giving a setting as a flag before or after the
    command (``walg --walg-file-prefix /x wal-fetch %f %p``) stops recovery like the plain
    one; any other
    command fails with 1 (a ``wal-push`` never exits above 125, and 2 would claim a usage
    error the command line does not have)."""
    pgdata = tmp_path / "pgdata"
    (pgdata / "pg_wal").mkdir(parents=True)
    (pgdata / "recovery.signal").touch()
    (pgdata / "pg_wal" / NAME).write_bytes(b"\0" * 8192)
    called = subprocess.run(
        ["/usr/bin/python3", "-S", "-E", walg_bin, *args],
        cwd=pgdata,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert called.returncode == expected, called.stderr
    assert called.stderr.startswith("walg: cannot load walg:"), called.stderr
    assert called.stderr.count("\n") == 1, called.stderr


@pytest.mark.parametrize(
    "args",
    [["wal-push", f"pg_wal/{NAME}"], ["wal-fetch", NAME, "pg_wal/RECOVERYXLOG"]],
    ids=["push", "fetch"],
)
def test_a_working_directory_that_was_removed_is_reported_not_a_traceback(
    walg_bin: str, tmp_path: Path, args: list[str]
) -> None:
    """The data directory removed under a running server: its archive_command and
    restore_command run in a working directory that no longer exists, and %p is relative.
    wal-push died with a FileNotFoundError traceback from the launcher, wal-fetch with one
    from its exit-code rule (or an "unexpected FileNotFoundError" with no path named)."""
    store = tmp_path / "store"
    store.mkdir()
    gone = tmp_path / "gone"
    gone.mkdir()
    remove_cwd = 'cd "$1" && rmdir "$1" && shift && exec "$@"'
    ran = subprocess.run(
        ["/bin/sh", "-c", remove_cwd, "sh", str(gone), walg_bin, *args],
        env={"PATH": "/usr/bin:/bin", "WALG_FILE_PREFIX": str(store)},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert ran.returncode == 1, ran.stderr
    assert "Traceback" not in ran.stderr, ran.stderr
    assert f"{args[-1]} is relative and the working directory no longer exists" in ran.stderr
    assert "nothing was done" in ran.stderr
    assert list(store.iterdir()) == []
