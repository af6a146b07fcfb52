"""A WAL-G user who changes nothing but the binary: WAL-G's command lines and configuration
files, run through the real ``walg`` command against a local storage folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fakewal import run_walg, segment_bytes, walg_env

SEG = "000000010000000000000001"
SYSID = 7000000000000000001


@pytest.fixture
def dropin(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A storage folder named only in a config file, a data directory with one segment, and
    an environment without walg settings."""
    store = tmp_path / "store"
    store.mkdir()
    config = tmp_path / "walg.json"
    config.write_text(json.dumps({"WALG_FILE_PREFIX": str(store)}))
    pg_wal = tmp_path / "pgdata" / "pg_wal"
    (pg_wal / "archive_status").mkdir(parents=True)
    (pg_wal / SEG).write_bytes(segment_bytes(SEG, SYSID))
    home = tmp_path / "home"
    home.mkdir()
    env = walg_env(store, home)
    del env["WALG_FILE_PREFIX"]
    return store, config, env


@pytest.mark.parametrize(
    "placement",
    [
        ["wal-push", "pg_wal/" + SEG, "--config", "{config}"],
        ["wal-push", "--config={config}", "pg_wal/" + SEG],
        ["--turbo", "wal-push", "pg_wal/" + SEG, "--config", "{config}"],
        ["wal-push", "pg_wal/" + SEG, "--config", "{config}", "--turbo"],
    ],
)
def test_config_and_turbo_after_the_command_name(
    walg_bin: str, dropin: tuple[Path, Path, dict[str, str]], placement: list[str]
) -> None:
    """WAL-G's --config and --turbo are flags of its root command, which cobra takes anywhere
    on the line: ``archive_command = 'wal-g wal-push %p --config /etc/wal-g.json'`` works
    there. walg refused it as a usage error (exit 2), so archiving stopped on every call.
    --turbo lifts WAL-G's throttling; walg has none to lift."""
    store, config, env = dropin
    argv = [walg_bin, *(a.format(config=config) for a in placement)]
    done = run_walg(argv, env, cwd=config.parent / "pgdata")
    assert done.returncode == 0, done.stderr
    assert (store / "wal_005" / f"{SEG}.lz4").is_file()
    listed = run_walg([walg_bin, "backup-list", "--json", "--config", str(config)], env)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout or "[]") == []


def test_config_after_the_command_name_in_archive_recovery_reaches_the_file(
    walg_bin: str, dropin: tuple[Path, Path, dict[str, str]]
) -> None:
    """``restore_command = 'wal-g wal-fetch %f %p --config FILE'``: fetched, not a usage error
    (which walg turned into 128, stopping recovery)."""
    store, config, env = dropin
    pgdata = config.parent / "pgdata"
    pushed = run_walg([walg_bin, "--config", str(config), "wal-push", "pg_wal/" + SEG], env, pgdata)
    assert pushed.returncode == 0, pushed.stderr
    (pgdata / "recovery.signal").touch()
    argv = [walg_bin, "wal-fetch", SEG, "pg_wal/RECOVERYXLOG", "--config", str(config)]
    done = run_walg([*argv, "--turbo"], {**env, "WALG_DOWNLOAD_CONCURRENCY": "1"}, pgdata)
    assert done.returncode == 0, done.stderr
    wal = pgdata / "pg_wal"
    assert (wal / "RECOVERYXLOG").read_bytes() == (wal / SEG).read_bytes()
    assert os.path.isfile(store / "wal_005" / f"{SEG}.lz4")
