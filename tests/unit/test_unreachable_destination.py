"""A wal-fetch whose DEST folder cannot be entered fails naming DEST, as the README promises.

README, Promises: a destination that cannot be written fails "with one line naming it: DEST
for backup-fetch and wal-fetch (never wal-fetch's hidden temporary file; exit 128 in archive
recovery)". A folder the server's user may not enter (mode 000, another user's 0700 folder)
is such a destination. The real walg runs as the test user (root would enter any folder).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from loglines import undated
from pgcluster import make_shared_dir, pg_tmpdir, pg_user_env, run_as_pg

HISTORY = "00000002.history"


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = pg_tmpdir("unreachable-dest-")
    yield path
    for folder in path.rglob("*"):
        if folder.is_dir() and not folder.is_symlink():
            folder.chmod(0o755)
    shutil.rmtree(path)


@pytest.mark.parametrize("in_recovery", [False, True], ids=["no recovery", "archive recovery"])
def test_wal_fetch_into_a_folder_it_cannot_enter_names_dest(
    walg_bin: str, workdir: Path, in_recovery: bool
) -> None:
    store = make_shared_dir(workdir / "store", 0o755)
    wal = make_shared_dir(store / "wal_005", 0o755)
    (wal / HISTORY).write_bytes(b"1\t0/3000000\tno recovery target specified\n")
    (wal / HISTORY).chmod(0o644)
    data = make_shared_dir(workdir / "data", 0o700)
    if in_recovery:
        signal = data / "recovery.signal"
        signal.write_bytes(b"")
        shutil.chown(signal, "pgtest", "pgtest")
    pg_wal = make_shared_dir(data / "pg_wal", 0o000)
    dest = pg_wal / "RECOVERYXLOG"
    env = {"PATH": "/usr/bin:/bin", **pg_user_env(), "WALG_FILE_PREFIX": str(store)}
    result = run_as_pg(
        [walg_bin, "wal-fetch", "--no-prefetch", HISTORY, str(dest)], env=env, check=False
    )
    assert result.returncode == (128 if in_recovery else 1), result.stderr
    errors = [line for line in undated(result.stderr).splitlines() if line.startswith("ERROR")]
    assert errors == [f"ERROR: cannot write {dest}: Permission denied"], result.stderr
    assert ".RECOVERYXLOG.walg-" not in result.stderr
