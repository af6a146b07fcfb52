"""A walg caught half-way through an upgrade: a module the package manager has truncated and
not yet rewritten (a careless copy truncates then writes) fails to compile, which is not an
ImportError. The launchers must still answer with the code PostgreSQL reads rightly: 128
from a restore_command in archive recovery, which stops it, never 1 ("not in the archive"),
on which it ends recovery early and promotes without the rest of the WAL.

Each test builds its own copy of the installed package (tmp_path), never touching the prefix.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from daemonenv import client_in_venv, run_in

NAME = "000000010000000000000003"


def _site_packages(walg_bin: str) -> Path:
    venv = Path(walg_bin).parent.parent
    found = sorted(venv.glob("lib/python3*/site-packages/walg"))
    assert found, f"no walg package under {venv}"
    return found[0].parent


def _truncate(path: Path, keep: int) -> None:
    """Cut ``path`` to its first ``keep`` bytes, as a copy caught between its truncate and its
    last write leaves it, and drop its cached bytecode so the cut source is what is read."""
    path.write_bytes(path.read_bytes()[:keep])
    for cached in path.parent.glob(f"__pycache__/{path.stem}.*"):
        cached.unlink()


def _pgdata(tmp_path: Path) -> Path:
    pgdata = tmp_path / "pgdata"
    (pgdata / "pg_wal").mkdir(parents=True)
    (pgdata / "recovery.signal").touch()
    (pgdata / "pg_wal" / NAME).write_bytes(b"\0" * 8192)
    return pgdata


@pytest.mark.parametrize(
    ("module", "args", "expected"),
    [
        ("walg/cli/main.py", ["wal-fetch", NAME, "pg_wal/RECOVERYXLOG"], 128),
        ("walg/errors.py", ["wal-fetch", NAME, "pg_wal/RECOVERYXLOG"], 128),
        ("walg_destination.py", ["wal-fetch", NAME, "pg_wal/RECOVERYXLOG"], 128),
        ("walg/cli/main.py", ["wal-push", f"pg_wal/{NAME}"], 1),
        ("walg_destination.py", ["--config", "/nonexistent.json", "wal-push", f"pg_wal/{NAME}"], 1),
        # Imported only once the command runs (the argument parser takes every command's).
        ("walg/cli/wal_show.py", ["wal-fetch", NAME, "pg_wal/RECOVERYXLOG", "--no-prefetch"], 128),
        ("walg/core/log.py", ["wal-fetch", NAME, "pg_wal/RECOVERYXLOG", "--no-prefetch"], 128),
        ("walg/cli/wal_push.py", ["wal-push", f"pg_wal/{NAME}"], 1),
    ],
    ids=[
        "fetch-main",
        "fetch-errors",
        "fetch-destination",
        "push-main",
        "push-destination",
        "fetch-parser",
        "fetch-log",
        "push-command",
    ],
)
def test_a_module_truncated_by_an_upgrade_gets_the_broken_installation_code(
    walg_bin: str, tmp_path: Path, module: str, args: list[str], expected: int
) -> None:
    """The installed launcher, with a copy of the package whose ``module`` lost its tail: it
    answered with the interpreter's traceback and exit 1."""
    site = tmp_path / "site"
    site.mkdir()
    installed = _site_packages(walg_bin)
    shutil.copytree(installed / "walg", site / "walg")
    shutil.copy2(installed / "walg_destination.py", site / "walg_destination.py")
    target = site / module
    # Cut inside the module docstring: the rest does not compile.
    _truncate(target, 120)
    pgdata = _pgdata(tmp_path)
    called = subprocess.run(
        [sys.executable, walg_bin, *args],
        cwd=pgdata,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert called.returncode == expected, called.stderr
    assert called.stderr.startswith(
        ("walg: cannot load walg:", "walg: unexpected failure (a broken installation?):")
    ), called.stderr
    assert "Traceback" not in called.stderr


def test_a_daemon_client_truncated_by_an_upgrade_stops_archive_recovery(
    walg_bin: str, tmp_path: Path
) -> None:
    """The Python client script in a copy of the venv whose walg/daemon_client.py lost its
    tail: it exited 1 with a traceback, which ends archive recovery."""
    venv = tmp_path / "venv"
    script = client_in_venv(venv, walg_bin)
    installed = _site_packages(walg_bin)
    site = venv / installed.relative_to(Path(walg_bin).parent.parent)
    site.mkdir(parents=True)
    shutil.copytree(installed / "walg", site / "walg")
    _truncate(site / "walg" / "daemon_client.py", 120)
    pgdata = _pgdata(tmp_path)
    env = {"PATH": os.environ.get("PATH", ""), "WALG_DAEMON_CLIENT_PYTHON": "1"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_in(pgdata, env, [str(script), str(tmp_path / "sock"), *args])

    fetched = run("wal-fetch", NAME, "pg_wal/RECOVERYXLOG")
    assert fetched.returncode == 128, fetched.stderr
    assert "cannot load walg" in fetched.stderr
    assert "Traceback" not in fetched.stderr
    pushed = run("wal-push", f"pg_wal/{NAME}")
    assert pushed.returncode == 1, pushed.stderr
    assert "cannot load walg" in pushed.stderr
