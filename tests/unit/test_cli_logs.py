"""What the walg command logs on stderr: WAL-G's line shape and WALG_LOG_LEVEL's thresholds."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

# A backup laid out as WAL-G writes it, to restore without PostgreSQL.
from test_backup_fetch_wal_g_layout import put_wal_g_backup

from loglines import STAMP
from walg.cli.main import main
from walg.storage.file import FileStorage


@pytest.fixture
def store(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = clean_env / "store"
    root.mkdir()
    monkeypatch.setenv("WALG_FILE_PREFIX", str(root))
    monkeypatch.setenv("WALG_DOWNLOAD_CONCURRENCY", "1")
    return root


def test_info_lines_in_wal_g_shape_on_stderr(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["backup-list"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert re.fullmatch(rf"INFO: {STAMP} No backups found\n", captured.err), captured.err


@pytest.mark.parametrize("level", ["ERROR", "QUIET"])
def test_error_and_quiet_leave_out_info(
    store: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, level: str
) -> None:
    monkeypatch.setenv("WALG_LOG_LEVEL", level)
    assert main(["backup-list"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("level", ["DEVEL", "DEBUG"])
def test_devel_and_debug_show_debug_lines(store: Path, walg_bin: str, level: str) -> None:
    """Run as a command of its own: in-process, a wal-push or wal-fetch call of an earlier
    test leaves walg.core.log's fast-path threshold behind."""
    storage = FileStorage(store)
    put_wal_g_backup(storage)
    storage.close()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(store.parent / "home"),
        "WALG_FILE_PREFIX": str(store),
        "WALG_TAR_DISABLE_FSYNC": "true",
    }

    def restore(dest: str, **extra: str) -> str:
        done = subprocess.run(
            [walg_bin, "backup-fetch", str(store.parent / dest), "LATEST"],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stderr

    assert "DEBUG:" not in restore("quiet")
    err = restore("restore", WALG_LOG_LEVEL=level)
    assert re.search(rf"^DEBUG: {STAMP} extracted \S*part_001\.tar\.lz4$", err, re.M), err


def test_error_level_shows_errors_only(store: Path, walg_bin: str) -> None:
    """WALG_LOG_LEVEL=ERROR: WAL-G (tracelog.Setup) sends its INFO and WARNING loggers to
    nowhere and keeps ERROR; walg still showed warnings. Errors stay: a command's failure line
    and the daemon's logged errors. The configuration's own warnings (a key in the config file
    that nothing reads) come before WAL-G's level is set up, and so are shown at every level
    in walg too."""
    (store / "wal_005").mkdir()
    (store / "wal_005" / "000000010000000000000001.lz4").write_bytes(b"")
    config = store.parent / "walg.json"
    config.write_text(json.dumps({"WALG_FILE_PREFX_TYPO": "x"}))
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(store.parent / "home"),
        "WALG_FILE_PREFIX": str(store),
    }

    def walg(*argv: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [walg_bin, *argv],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    shown = walg("wal-show")
    assert shown.returncode == 0, shown.stderr
    assert re.search(rf"^WARNING: {STAMP} wal_005/\S+ is empty", shown.stderr, re.M)
    for level in ("ERROR", "QUIET"):
        quiet = walg("wal-show", WALG_LOG_LEVEL=level)
        assert quiet.returncode == 0, quiet.stderr
        assert quiet.stderr == ""
        failed = walg("backup-fetch", str(store.parent / "dest"), "base_x", WALG_LOG_LEVEL=level)
        assert failed.returncode != 0
        assert failed.stderr.startswith("ERROR: "), failed.stderr
        configured = walg("--config", str(config), "wal-show", WALG_LOG_LEVEL=level)
        assert configured.returncode == 0, configured.stderr
        assert re.fullmatch(
            rf"WARNING: {STAMP} WALG_FILE_PREFX_TYPO in the config file \S+ is unknown[^\n]*\n",
            configured.stderr,
        ), configured.stderr


def test_a_command_s_failure_line_is_dated_as_wal_g_dates_it(store: Path, walg_bin: str) -> None:
    """WAL-G writes a command's failure through its ERROR logger, dated as every other line;
    walg's failure line had no date, so a log file (WALG_LOG_DESTINATION) could not say when
    a command failed. The level still comes first, and the line shows at every level."""
    log_file = store.parent / "walg.log"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(store.parent / "home"),
        "WALG_FILE_PREFIX": str(store),
    }
    for extra in ({}, {"WALG_LOG_LEVEL": "ERROR"}, {"WALG_LOG_DESTINATION": str(log_file)}):
        failed = subprocess.run(
            [walg_bin, "backup-fetch", str(store.parent / "dest"), "base_x"],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert failed.returncode == 74, failed.stderr
        said = log_file.read_text() if extra.get("WALG_LOG_DESTINATION") else failed.stderr
        assert re.fullmatch(
            rf"ERROR: {STAMP} backup base_x does not exist in {re.escape(str(store))}\n", said
        ), said
    # And an error that stops the command before its settings are read.
    refused = subprocess.run(
        [walg_bin, "backup-list", "--walg-file-prefix="],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2, refused.stderr
    assert re.fullmatch(rf"ERROR: {STAMP} [^\n]*--walg-file-prefix[^\n]*\n", refused.stderr), (
        refused.stderr
    )
