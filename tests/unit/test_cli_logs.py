"""What the walg command logs on stderr: WAL-G's line shape and WALG_LOG_LEVEL's thresholds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

# A backup laid out as WAL-G writes it, to restore without PostgreSQL.
from test_backup_fetch_wal_g_layout import put_wal_g_backup

from walg.cli.main import main
from walg.storage.file import FileStorage

# WAL-G's logger: "LEVEL: 2006/01/02 15:04:05.000000 message".
STAMP = r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{6}"


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
def test_devel_and_debug_show_debug_lines(
    store: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, level: str
) -> None:
    storage = FileStorage(store)
    put_wal_g_backup(storage)
    storage.close()
    monkeypatch.setenv("WALG_TAR_DISABLE_FSYNC", "true")
    assert main(["backup-fetch", str(store.parent / "quiet"), "LATEST"]) == 0
    assert "DEBUG:" not in capsys.readouterr().err

    monkeypatch.setenv("WALG_LOG_LEVEL", level)
    assert main(["backup-fetch", str(store.parent / "restore"), "LATEST"]) == 0
    err = capsys.readouterr().err
    assert re.search(rf"^DEBUG: {STAMP} extracted \S*part_001\.tar\.lz4$", err, re.M), err
