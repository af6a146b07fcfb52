"""``walg backup-fetch``'s options as the command line hands them on, restoring a backup laid
out as WAL-G writes it (no PostgreSQL needed): what each recovery option writes into the
restored directory, and what ``--json`` prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


def test_a_huge_restored_configuration_file_is_refused_in_bounded_memory(
    tmp_path: Path, walg_bin: str
) -> None:
    """A backup whose postgresql.conf is 128 MiB (damaged or forged storage; 0.5 MB stored):
    backup-fetch read the restored file whole to comment out recovery targets, and its
    decoded copy too, peaking at over twice the file's size (549 MB of RSS for 256 MiB here;
    a larger file is an out-of-memory kill). It is refused now, named, read no further than
    the limit; the restored files stay for the operator to look at."""
    huge = b"# padding\n" * ((128 << 20) // 10)
    store = tmp_path / "store"
    store.mkdir()
    storage = FileStorage(store)
    put_wal_g_backup(storage, conf=huge)
    storage.close()
    dest = tmp_path / "restore"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "WALG_FILE_PREFIX": str(store),
        "WALG_TAR_DISABLE_FSYNC": "true",
    }
    # A fresh interpreter whose one child is walg: its children's peak RSS is walg's.
    measure = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
    )
    fetched = subprocess.run(
        [sys.executable, "-c", measure, walg_bin, "backup-fetch", str(dest), "LATEST"],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    peak_mb = int(fetched.stdout.split()[-1]) // 1024
    assert fetched.returncode == 1, fetched.stderr
    assert f"{dest}/postgresql.conf" in fetched.stderr
    assert "more than" in fetched.stderr
    assert peak_mb < 100, f"backup-fetch peaked at {peak_mb} MB"


@pytest.mark.parametrize("target", [["--target-name", "before_drop"], ["--target-xid", "1234"]])
def test_latest_with_a_name_or_xid_target_says_which_backup_and_what_if_the_target_is_older(
    store: Path, capsys: pytest.CaptureFixture[str], target: list[str]
) -> None:
    # walg cannot tell when a restore point was made or a transaction committed: LATEST is
    # the newest backup, and a target older than its end stops recovery only after the whole
    # download and replay ("recovery ended before configured recovery target was reached").
    dest = store.parent / "restore"
    options = ["--restore-command", "walg wal-fetch %f %p", *target]
    assert main(["backup-fetch", str(dest), "LATEST", *options]) == 0
    err = capsys.readouterr().err
    assert f"LATEST for {target[0]} is backup {NAME}" in err, err
    assert "recovery ended before configured recovery target was reached" in err, err
    assert "name an older backup" in err, err

    named = store.parent / "named"
    assert main(["backup-fetch", str(named), NAME, *options]) == 0
    assert "name an older backup" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [
        "walg --config '/srv/50% full/walg.json' wal-fetch %f %p",
        "walg --config /srv/walg%.json wal-fetch %f %p",
        "walg wal-fetch %f %p 100%",
        "walg wal-fetch %F %p",
    ],
)
def test_a_percent_sign_postgresql_would_refuse_is_refused_before_anything_is_restored(
    store: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """PostgreSQL 16 and later refuse to start recovery on a restore_command with a '%' that
    is no placeholder (FATAL: String contains unexpected placeholder); 13 to 15 pass it on.
    backup-fetch wrote such a command and exited 0, and the restored server would not start."""
    dest = store.parent / "restore"
    assert main(["backup-fetch", str(dest), "LATEST", "--restore-command", command]) == 2
    err = capsys.readouterr().err
    assert "%%" in err and "--restore-command" in err
    assert not dest.exists()


def test_doubled_percent_signs_and_every_placeholder_are_written_as_given(store: Path) -> None:
    dest = store.parent / "restore"
    command = "walg --config /srv/50%%full/walg.json wal-fetch %f %p # %r"
    assert main(["backup-fetch", str(dest), "LATEST", "--restore-command", command]) == 0
    assert auto_conf_settings(dest)["restore_command"] == command


def test_an_odd_entry_named_like_a_later_timeline_s_segment_does_not_stop_a_restore(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A restore following the latest timeline looks for WAL of the timeline after the
    newest history it finds (stored without its history, recovery would land on the wrong
    branch). An entry there that is no object is no WAL: it failed the whole restore."""
    (store / "wal_005").mkdir(exist_ok=True)
    os.mkfifo(store / "wal_005" / "00000002000000000000000A.lz4")
    dest = store.parent / "restore"
    assert (
        main(["backup-fetch", str(dest), "LATEST", "--restore-command", "walg wal-fetch %f %p"])
        == 0
    )
    _, err = capsys.readouterr()
    assert "00000002000000000000000A.lz4" in err and "FIFO" in err, err


def test_an_odd_entry_among_the_wal_objects_does_not_stop_a_restore_to_a_target(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """backup-fetch with a time or LSN target lists the WAL stored on the timeline recovery
    follows, to warn of a target past its end. That look is advice: an entry there that is
    no object (a FIFO, as wal-show skips it) must not stop the restore, which wal-fetch
    would serve segment by segment."""
    timeline = NAME.split("_")[1][:8]
    (store / "wal_005").mkdir(exist_ok=True)
    os.mkfifo(store / "wal_005" / f"{timeline}0000000000000009.lz4")
    dest = store.parent / "restore"
    options = ["--restore-command", "walg wal-fetch %f %p", "--target-time", "2100-01-01 00:00+00"]
    assert main(["backup-fetch", str(dest), "LATEST", *options]) == 0
    assert auto_conf_settings(dest)["recovery_target_time"] == "2100-01-01 00:00+00"
    _, err = capsys.readouterr()
    assert "000000010000000000000009.lz4" in err and "FIFO" in err, err
