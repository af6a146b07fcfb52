"""``walg backup-fetch``'s options as the command line hands them on, restoring a backup laid
out as WAL-G writes it (no PostgreSQL needed): what each recovery option writes into the
restored directory, and what ``--json`` prints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# The WAL-G layout backup and its name, as the restore tests of that layout build them.
from test_backup_fetch_wal_g_layout import NAME, put_wal_g_backup

from walg.cli.main import main
from walg.storage.file import FileStorage


@pytest.fixture
def store(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = clean_env / "store"
    root.mkdir()
    storage = FileStorage(root)
    put_wal_g_backup(storage)
    storage.close()
    monkeypatch.setenv("WALG_FILE_PREFIX", str(root))
    monkeypatch.setenv("WALG_TAR_DISABLE_FSYNC", "true")
    monkeypatch.setenv("WALG_DOWNLOAD_CONCURRENCY", "1")
    return root


def auto_conf_settings(dest: Path) -> dict[str, str]:
    """The settings of walg's block in postgresql.auto.conf, last value of each winning."""
    settings = {}
    for line in (dest / "postgresql.auto.conf").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip().strip("'")
    return settings


def test_target_exclusive_and_standby_reach_the_restored_directory(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = store.parent / "restore"
    options = ["--restore-command", "walg wal-fetch %f %p", "--target-name", "before_drop"]
    assert main(["backup-fetch", str(dest), "LATEST", *options, "--target-exclusive"]) == 0
    settings = auto_conf_settings(dest)
    assert settings["recovery_target_name"] == "before_drop"
    assert settings["recovery_target_inclusive"] == "off"
    assert (dest / "recovery.signal").is_file()
    assert not (dest / "standby.signal").exists()

    standby = store.parent / "standby"
    assert main(["backup-fetch", str(standby), "LATEST", *options, "--standby"]) == 0
    assert auto_conf_settings(standby)["recovery_target_inclusive"] == "on"
    assert (standby / "standby.signal").is_file()
    assert not (standby / "recovery.signal").exists()
    capsys.readouterr()


def test_json_prints_what_was_restored_on_stdout_and_nothing_without_it(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    quiet = store.parent / "quiet"
    assert main(["backup-fetch", str(quiet), "LATEST"]) == 0
    assert capsys.readouterr().out == ""

    dest = store.parent / "restore"
    assert main(["backup-fetch", str(dest), "LATEST", "--json"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("}\n") and out.count("\n") == 1
    doc = json.loads(out)
    assert doc["name"] == NAME
    assert doc["destination"] == str(dest)
    assert doc["objects"] == 4
    assert doc["files"] == len(list(p for p in dest.rglob("*") if p.is_file()))
