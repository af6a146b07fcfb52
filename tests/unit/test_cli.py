"""walg.cli.main.main in-process: exit codes and stderr, with the environment set per test."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from walg import __version__
from walg.cli.main import _fast_args, build_parser, main

SEG = "000000010000000000000007"
GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture
def clean_env(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """conftest's clean environment, and no detached wal-prefetch children outliving a test."""
    monkeypatch.setenv("WALG_DOWNLOAD_CONCURRENCY", "1")
    return clean_env


@pytest.fixture
def file_store(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    store = clean_env / "store"
    store.mkdir()  # an archive folder that is not there is a failure, not "not found"
    monkeypatch.setenv("WALG_FILE_PREFIX", str(store))
    return store


def stderr_lines(capsys: pytest.CaptureFixture[str]) -> tuple[str, list[str]]:
    captured = capsys.readouterr()
    return captured.out, [line for line in captured.err.splitlines() if line.strip()]


def test_missing_storage_prefix_exits_78(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["wal-fetch", SEG, str(clean_env / "out")])
    out, err = stderr_lines(capsys)
    assert code == 78
    assert out == ""
    assert len(err) == 1
    assert "WALG_FILE_PREFIX" in err[0]
    assert not (clean_env / "out").exists()


def test_no_storage_names_only_a_storage_this_walg_has(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The "no storage configured" error told the DBA to set WALG_S3_PREFIX, WALG_GS_PREFIX...,
    each of which the next run refuses as not supported yet (exit 78 again)."""
    assert main(["backup-list"]) == 78
    _, err = stderr_lines(capsys)
    assert "WALG_FILE_PREFIX" in err[0]
    for kind in ("S3", "GS", "AZ", "SSH"):
        assert f"_{kind}_PREFIX" not in err[0], err[0]


def test_wal_g_s_flags_for_what_walg_lacks_are_named_as_such(
    file_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """WAL-G's backup-push --delta-from-name was refused with a hint to use
    --walg-delta-from-name, a flag walg takes and ignores (a full backup, with a warning):
    the hint now says it is WAL-G's, for delta backups, which walg does not have."""
    for argv, what in (
        (["backup-push", str(file_store), "--delta-from-name", "base_1"], "delta backups"),
        (["backup-push", str(file_store), "--rating-composer"], "tar composers"),
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        _, err = stderr_lines(capsys)
        text = " ".join(err)
        assert f"{argv[2]}: WAL-G's, for {what}, not in walg yet" in text, text
        assert "misspelling" not in text, text
    assert not list(file_store.iterdir())


def test_wal_fetch_missing_exits_74_with_one_stderr_line(
    file_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = file_store.parent / "RECOVERYXLOG"
    code = main(["wal-fetch", SEG, str(dest)])
    out, err = stderr_lines(capsys)
    assert code == 74
    assert out == ""
    assert len(err) == 1, err
    assert SEG in err[0]
    assert not dest.exists()


def test_wal_push_then_fetch_round_trip(
    file_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pg_wal = file_store.parent / "pg_wal"
    pg_wal.mkdir()
    data = os.urandom(4096) * 64
    (pg_wal / SEG).write_bytes(data)
    assert main(["wal-push", str(pg_wal / SEG)]) == 0
    assert (file_store / "wal_005" / f"{SEG}.lz4").is_file()
    dest = file_store.parent / "RECOVERYXLOG"
    assert main(["wal-fetch", SEG, str(dest)]) == 0
    assert dest.read_bytes() == data
    out, err = stderr_lines(capsys)
    assert out == ""
    assert not any(line.startswith("ERROR") for line in err)


def test_wal_push_of_different_content_fails_below_126(
    file_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i, content in enumerate((b"first", b"second")):
        directory = file_store.parent / f"wal{i}"
        directory.mkdir()
        (directory / SEG).write_bytes(content)
        code = main(["wal-push", str(directory / SEG)])
    _, err = stderr_lines(capsys)
    assert code not in (0, 74)
    assert 0 < code < 126
    assert err[-1].startswith("ERROR:")
    assert SEG in err[-1]


def test_wal_push_bad_name_fails(file_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = file_store.parent / "not-a-wal-file"
    bad.write_bytes(b"x")
    code = main(["wal-push", str(bad)])
    _, err = stderr_lines(capsys)
    assert code not in (0, 74) and code < 126
    assert "not-a-wal-file" in err[-1]
    assert not (file_store / "wal_005").exists()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WALG_COMPRESSION_METHOD", "gzip"),
        ("WALG_UPLOAD_CONCURRENCY", "lots"),
        ("WALG_S3_PREFIX", "s3://bucket/path"),  # a second prefix beside WALG_FILE_PREFIX
    ],
)
def test_bad_configuration_exits_78_naming_the_variable(
    file_store: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
) -> None:
    monkeypatch.setenv(variable, value)
    code = main(["wal-fetch", SEG, str(file_store.parent / "out")])
    _, err = stderr_lines(capsys)
    assert code == 78
    assert len(err) == 1
    assert variable in err[0]


def test_missing_config_file_exits_78(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = clean_env / "nope.json"
    code = main(["--config", str(missing), "wal-fetch", SEG, str(clean_env / "out")])
    _, err = stderr_lines(capsys)
    assert code == 78
    assert str(missing) in err[0]


def test_config_file_supplies_the_prefix(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = clean_env / "walg.json"
    store = clean_env / "from-config"
    store.mkdir()
    config.write_text(json.dumps({"WALG_FILE_PREFIX": str(store)}))
    code = main(["--config", str(config), "wal-fetch", SEG, str(clean_env / "out")])
    assert code == 74  # storage configured (from the file), the file is just not archived
    _, err = stderr_lines(capsys)
    assert len(err) == 1


def fake_data_directory(root: Path) -> Path:
    """Enough of a data directory for backup-push to get as far as connecting."""
    pgdata = root / "pgdata"
    (pgdata / "global").mkdir(parents=True)
    (pgdata / "PG_VERSION").write_text("15\n")
    (pgdata / "global" / "pg_control").write_bytes(bytes(8192))
    return pgdata


def test_password_never_printed_on_errors(
    file_store: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PGPASSWORD", "hunter2-very-secret")
    monkeypatch.setenv("PGPORT", "not-a-port")
    code = main(["backup-push", str(fake_data_directory(file_store.parent))])
    captured = capsys.readouterr()
    assert code == 78
    assert "PGPORT" in captured.err
    assert "hunter2-very-secret" not in captured.err + captured.out


# Valid for libpq (a multi-host list, "wait forever"), or wrong for walg only when connecting:
# none of it may stop archiving or recovery, which never connect to PostgreSQL.
PG_ONLY_SETTINGS = [
    {"PGHOST": "h1,h2", "PGPORT": "5432,5433"},
    {"PGCONNECT_TIMEOUT": "0"},
    {"PGPORT": "not-a-port", "PGCONNECT_TIMEOUT": "soon"},
    {"WALG_STOP_BACKUP_TIMEOUT": "inf"},
    {"PGUNKNOWN": "x", "PGREQUIREAUTH": "scram-sha-256"},
    # Base backups' own settings, mistyped in the server's environment.
    {"WALG_TAR_SIZE_THRESHOLD": "1GB"},
    {"WALG_UPLOAD_DISK_CONCURRENCY": "all"},
    {"WALG_TAR_DISABLE_FSYNC": "maybe"},
]


@pytest.mark.parametrize("extra", PG_ONLY_SETTINGS)
def test_pg_settings_never_stop_wal_push_or_wal_fetch(
    file_store: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: dict[str, str],
) -> None:
    for name, value in extra.items():
        monkeypatch.setenv(name, value)
    pg_wal = file_store.parent / "pg_wal"
    pg_wal.mkdir()
    (pg_wal / SEG).write_bytes(b"wal" * 1000)
    assert main(["wal-push", str(pg_wal / SEG)]) == 0
    assert main(["wal-fetch", SEG, str(file_store.parent / "RECOVERYXLOG")]) == 0
    _, err = stderr_lines(capsys)
    assert not any(line.startswith(("ERROR", "WARNING")) for line in err), err


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PGPORT", "not-a-port"),
        ("PGCONNECT_TIMEOUT", "soon"),
        ("WALG_STOP_BACKUP_TIMEOUT", "inf"),
        ("WALG_STOP_BACKUP_TIMEOUT", "-1"),
        ("WALG_TAR_SIZE_THRESHOLD", "1GB"),
        ("WALG_UPLOAD_DISK_CONCURRENCY", "0"),
    ],
)
def test_backup_push_refuses_bad_pg_settings_before_connecting(
    file_store: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
    value: str,
) -> None:
    # A server that is not there: had walg tried to connect, the error would be exit 1.
    monkeypatch.setenv("PGHOST", str(file_store.parent / "no-server"))
    monkeypatch.setenv(name, value)
    code = main(["backup-push", str(fake_data_directory(file_store.parent))])
    _, err = stderr_lines(capsys)
    assert code == 78, err
    assert name in err[-1]
    assert not (file_store / "basebackups_005").exists()


def test_wal_verify_reports_bad_pg_settings(
    file_store: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PGPORT", "5432,abc")
    code = main(["wal-verify", "integrity"])
    _, err = stderr_lines(capsys)
    assert code == 78
    assert "PGPORT" in err[-1]


def test_daemon_serves_despite_pg_settings_it_does_not_use(file_store: Path) -> None:
    """The real command, run from this source tree: it listens instead of exiting 78."""
    import signal
    import subprocess
    import sys
    import time

    pgdata = file_store.parent / "pgdata"
    (pgdata / "pg_wal").mkdir(parents=True)
    sock = file_store.parent / "d.sock"
    environ = dict(os.environ, PGPORT="not-a-port", PGCONNECT_TIMEOUT="0")
    environ["WALG_STOP_BACKUP_TIMEOUT"] = "nan"
    environ["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "src")
    proc = subprocess.Popen(
        [sys.executable, "-m", "walg.cli", "daemon", str(sock), str(pgdata)],
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1]
        assert sock.exists()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert b"ERROR" not in err, err


def test_usage_errors_exit_2(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["no-such-command"], ["wal-fetch", SEG]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    assert "usage" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["backup-fetch", "DEST", "LATEST", "--restore-c", "walg wal-fetch %f %p"], "--restore-c"),
        (["backup-fetch", "DEST", "LATEST", "--restore-c=walg wal-fetch %f %p"], "--restore-c="),
        (["backup-fetch", "DEST", "LATEST", "--restore-command=x", "--target-x=7"], "--target-x"),
        (["backup-fetch", "DEST", "LATEST", "--arch", "off"], "--arch"),
        (["backup-list", "--det"], "--det"),
        (["wal-show", "--detailed"], "--detailed"),
        (["--vers"], "usage: "),
    ],
)
def test_abbreviated_flags_are_refused(
    file_store: Path, capsys: pytest.CaptureFixture[str], argv: list[str], named: str
) -> None:
    """WAL-G's flag library (pflag) takes a flag by its whole name only. argparse took any
    unambiguous prefix (--rest for --restore-command), which a flag added later can turn into
    another flag, or into an ambiguity, under an archive or restore command already written."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert named in captured.err
    assert captured.out == ""
    assert not (file_store.parent / "DEST").exists()


@pytest.mark.parametrize(
    ("command", "snippet"),
    [
        ("wal-push", "archive_command = 'walg wal-push %p'"),
        ("wal-fetch", "restore_command = 'walg wal-fetch %f %p'"),
        ("daemon", "archive_command = 'walg-daemon-client SOCKET wal-push %p'"),
        ("daemon", "restore_command = 'walg-daemon-client SOCKET wal-fetch %f %p'"),
        ("backup-fetch", "'walg wal-fetch %f %p'"),
    ],
)
def test_help_shows_the_commands_to_copy_as_postgresql_takes_them(
    clean_env: Path, capsys: pytest.CaptureFixture[str], command: str, snippet: str
) -> None:
    """A DBA copies these lines into postgresql.conf: '%%p' there is a literal '%p'."""
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert snippet in out
    assert "%%" not in out


def test_version(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"walg {__version__}"


def test_backup_list_empty_and_one(file_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backup-list"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["backup-list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    name = "base_000000010000000000000003"
    sentinel = file_store / "basebackups_005" / f"{name}_backup_stop_sentinel.json"
    sentinel.parent.mkdir(parents=True)
    sentinel.write_bytes((GOLDEN / "sentinel_v2_full.json").read_bytes())
    os.utime(sentinel, (1_766_196_019, 1_766_196_019))
    assert main(["backup-list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["backup_name", "modified", "wal_file_name", "storage_name"]
    assert lines[1].split() == [
        name,
        "2025-12-20T02:00:19Z",
        "000000010000000000000003",
        "default",
    ]
    assert main(["backup-list", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == [
        {
            "backup_name": name,
            "time": "2025-12-20T02:00:19Z",
            "wal_file_name": "000000010000000000000003",
            "storage_name": "default",
        }
    ]


def test_backup_fetch_of_missing_backup_exits_74(
    file_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["backup-fetch", str(file_store.parent / "restore"), "LATEST"])
    _, err = stderr_lines(capsys)
    assert code == 74
    assert err[-1].startswith("ERROR:")


def test_backup_fetch_refuses_a_bad_tar_disable_fsync_before_anything(
    file_store: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Read when first used, so that it never stops archiving; backup-fetch reads it first,
    before it looks for the backup (no backup here: that would be exit 74)."""
    monkeypatch.setenv("WALG_TAR_DISABLE_FSYNC", "maybe")
    dest = file_store.parent / "restore"
    code = main(["backup-fetch", str(dest), "LATEST"])
    _, err = stderr_lines(capsys)
    assert code == 78, err
    assert "WALG_TAR_DISABLE_FSYNC" in err[-1]
    assert not dest.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["wal-push", "pg_wal/" + SEG],
        ["--config", "/etc/walg.json", "wal-push", "pg_wal/" + SEG],
        ["wal-fetch", SEG, "pg_wal/RECOVERYXLOG"],
        ["daemon", "/run/walg.sock"],
        ["daemon", "/run/walg.sock", "/var/lib/postgresql/data"],
        ["--config", "/etc/walg.json", "daemon", "/run/walg.sock", "/srv/pg"],
    ],
)
def test_the_fast_path_parses_as_argparse_does(argv: list[str]) -> None:
    """The calls that skip argparse get the very arguments argparse would give them."""
    fast = vars(_fast_args(argv))
    full = vars(build_parser().parse_args(argv))
    assert fast == full


@pytest.mark.parametrize(
    "argv",
    [
        ["daemon"],
        ["daemon", "--help"],
        ["daemon", "a", "b", "c"],
        ["wal-push"],
        ["wal-push", "-x", "p"],
        # What argparse refuses (exit 2) or reads as an option: the fast path would push or
        # fetch a file named by the option, or drop the extra argument.
        ["wal-push", "-h"],
        ["wal-push", "a", "b"],
        ["--config", "f", "wal-push", "-"],
        ["wal-fetch", "n"],
        ["wal-fetch", "n", "d", "e"],
        ["wal-fetch", "-h", "d"],
        ["backup-list"],
    ],
)
def test_other_calls_go_to_argparse(argv: list[str]) -> None:
    assert _fast_args(argv) is None


@pytest.mark.parametrize(
    "options",
    [
        ["--restore-command", ""],
        ["--restore-command", "c", "--target-name", ""],
        ["--restore-command", "c", "--target-action", "shutdown"],
        ["--restore-command", "c", "--target-timeline", "010"],
        # PostgreSQL refuses to start with two targets ("multiple recovery targets"), after
        # the whole restore; and reads base prefixes (0x) in these numbers, an LSN of at most
        # 8 hex digits a side and no spaces, and no abbreviation (Z) after a time.
        ["--restore-command", "c", "--target-time", "2026-11-25 12:00+00", "--target-lsn", "0/1"],
        ["--restore-command", "c", "--target-name", "rp", "--target-xid", "1234"],
        ["--restore-command", "c", "--target-timeline", "0x2"],
        ["--restore-command", "c", "--target-xid", "0x10"],
        ["--restore-command", "c", "--target-xid", str(1 << 64)],
        ["--restore-command", "c", "--target-lsn", "000000000/1"],
        ["--restore-command", "c", "--target-lsn", "0/1 "],
        ["--restore-command", "c", "--target-lsn", "zz/1"],
        ["--restore-command", "c", "--target-time", "2026-11-25 12:00:00Z"],
        # Without --restore-command nothing would check these: a restore without the
        # recovery settings asked for, or with an empty target taken for none.
        ["--target-timeline", ""],
        ["--target-xid", ""],
        ["--target-action", "pause"],
        ["--target-exclusive"],
        ["--standby"],
        ["--restore-spec", "/nonexistent/spec.json"],
    ],
)
def test_backup_fetch_refuses_empty_or_pointless_recovery_options(
    file_store: Path, capsys: pytest.CaptureFixture[str], options: list[str]
) -> None:
    """Refused before anything is read or restored: DEST is not even created."""
    dest = file_store.parent / "restore"
    assert main(["backup-fetch", str(dest), "LATEST", *options]) == 2
    _, err = stderr_lines(capsys)
    assert err[-1].startswith("ERROR:")
    assert not dest.exists()
