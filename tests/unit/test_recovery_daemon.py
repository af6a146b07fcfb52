"""Recovery settings written by backup-fetch, the daemon's protocol, and import hygiene."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from walg.errors import UsageError
from walg.ops.daemon import parse_args
from walg.ops.recovery import RecoveryTarget, write_recovery_config
from walg.ops.wal import file_identity, write_marker


def test_recovery_settings_for_pg12_and_later(tmp_path: Path) -> None:
    (tmp_path / "postgresql.auto.conf").write_text("port = 5999\n")
    target = RecoveryTarget("walg wal-fetch %f %p", time="2026-11-25 12:00:00+00", action=None)
    written = write_recovery_config(tmp_path, 150004, target)
    auto = (tmp_path / "postgresql.auto.conf").read_text()
    assert auto.startswith("port = 5999\n")
    assert "restore_command = 'walg wal-fetch %f %p'" in auto
    assert "recovery_target_time = '2026-11-25 12:00:00+00'" in auto
    assert "recovery_target_action = 'promote'" in auto
    assert (tmp_path / "recovery.signal").exists()
    assert str(tmp_path / "recovery.signal") in written


def test_a_standby_restore_gets_standby_signal_and_no_recovery_signal(tmp_path: Path) -> None:
    """With recovery.signal alone the server would end recovery at the end of the archive
    and promote: a second primary where a standby was asked for."""
    target = RecoveryTarget("walg wal-fetch %f %p", standby=True)
    written = write_recovery_config(tmp_path, 160000, target)
    assert (tmp_path / "standby.signal").is_file()
    assert not (tmp_path / "recovery.signal").exists()
    assert str(tmp_path / "standby.signal") in written
    assert (tmp_path / "standby.signal").stat().st_mode & 0o777 == 0o600


def test_recovery_conf_before_pg12_and_quoting(tmp_path: Path) -> None:
    target = RecoveryTarget("cmd 'quoted' %f %p", name="rp", inclusive=False, standby=True)
    write_recovery_config(tmp_path, 110010, target)
    conf = (tmp_path / "recovery.conf").read_text()
    assert "restore_command = 'cmd ''quoted'' %f %p'" in conf
    assert "recovery_target_name = 'rp'" in conf
    assert "recovery_target_inclusive = 'off'" in conf
    assert "standby_mode = 'on'" in conf
    assert not (tmp_path / "recovery.signal").exists()


def test_an_earlier_recovery_block_is_disabled(tmp_path: Path) -> None:
    # A cluster restored with a target, promoted and backed up still has that block.
    earlier = (
        "port = 5999\n"
        "# recovery settings written by walg backup-fetch\n"
        "restore_command = 'old %f %p'\n"
        "recovery_target_time = '2024-01-01 00:00:00+00'\n"
        "  Recovery_Target_Action='pause'\n"
        "recovery_target_timeline 'latest'"  # no "=" and no final newline: both legal
    )
    auto = tmp_path / "postgresql.auto.conf"
    auto.write_text(earlier)
    write_recovery_config(tmp_path, 160000, RecoveryTarget("new %f %p", lsn="0/3000000"))
    lines = auto.read_text().splitlines()
    active = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    assert active == [
        "port = 5999",
        "restore_command = 'new %f %p'",
        # The other targets emptied before the one asked for (see complete_settings).
        "recovery_target = ''",
        "recovery_target_time = ''",
        "recovery_target_name = ''",
        "recovery_target_xid = ''",
        "recovery_target_timeline = 'latest'",
        "recovery_target_inclusive = 'on'",
        "recovery_min_apply_delay = '0'",
        "recovery_target_lsn = '0/3000000'",
        "recovery_target_action = 'promote'",
    ]
    assert "# disabled by walg backup-fetch: recovery_target_time = '2024-01-01 00:00:00+00'" in (
        lines
    )
    assert "# disabled by walg backup-fetch:   Recovery_Target_Action='pause'" in lines


def test_backslashes_are_escaped_and_line_breaks_refused(tmp_path: Path) -> None:
    write_recovery_config(tmp_path, 150000, RecoveryTarget(r"echo 'no\tfile' %f %p"))
    auto = (tmp_path / "postgresql.auto.conf").read_text()
    assert r"restore_command = 'echo ''no\\tfile'' %f %p'" in auto
    (tmp_path / "recovery.signal").unlink()
    for bad in ("a\nrecovery_target_time = 'x'", "a\rb", "a\0b"):
        with pytest.raises(UsageError, match="line break or NUL"):
            RecoveryTarget(bad).check()
        with pytest.raises(UsageError):
            write_recovery_config(tmp_path, 150000, RecoveryTarget("c", name=bad))
    assert not (tmp_path / "recovery.signal").exists()


@pytest.mark.parametrize(
    "target",
    [
        RecoveryTarget("c", time="t", lsn="0/1"),
        RecoveryTarget("c", lsn="nope"),
        RecoveryTarget("c", xid="12a"),
        RecoveryTarget("c", timeline="newest"),
        RecoveryTarget("c", action="explode"),
        # Read by PostgreSQL only when the restored server starts, and then it will not.
        RecoveryTarget("c", time="garbage"),
        RecoveryTarget("c", time="2026-13-45 99:00"),
        RecoveryTarget("c", time="2026-11-25 12:61:00+00"),
        RecoveryTarget("c", time="2026-02-30"),
        # Offsets beyond PostgreSQL's 15:59:59, and moments past 24:00:00 or a leap second.
        RecoveryTarget("c", time="2026-11-25 12:00:00+16"),
        RecoveryTarget("c", time="2026-11-25 12:00:00+05:60"),
        RecoveryTarget("c", time="2026-11-25 12:00:00-05:30:60"),
        RecoveryTarget("c", time="2026-11-25 24:00:00.5+00"),
        RecoveryTarget("c", time="2026-12-31 23:59:60.5+00"),
        RecoveryTarget("c", time="2026-11-26-05"),  # no date and offset to PostgreSQL
        # Abbreviations: PostgreSQL refuses them in recovery_target_time.
        RecoveryTarget("c", time="2026-11-25T12:00:00Z"),
        RecoveryTarget("c", time="2026-11-25 12:00:00 CEST"),
        # Empty (an unset shell variable): no target would replay everything and promote.
        RecoveryTarget("c", name=""),
        RecoveryTarget("c", time=" "),
        RecoveryTarget("c", xid=""),
        RecoveryTarget("c", lsn=""),
        RecoveryTarget("c", timeline=""),
        RecoveryTarget("", name="p"),
        # An action or exclusivity without a target, which PostgreSQL would ignore.
        RecoveryTarget("c", action="shutdown"),
        RecoveryTarget("c", inclusive=False),
        # PostgreSQL reads a leading 0 as octal: 010 would be timeline or xid 8.
        RecoveryTarget("c", timeline="010"),
        RecoveryTarget("c", timeline="0"),
        RecoveryTarget("c", timeline=str(1 << 32)),
        RecoveryTarget("c", xid="0755"),
        RecoveryTarget("c", xid=str(1 << 64)),
        RecoveryTarget("c", xid="١٢"),  # digits, but not ASCII ones
        # PostgreSQL keeps the low 32 bits: 0 (invalid), 1 and 2 (bootstrap, frozen) end no
        # transaction, so recovery would replay the whole archive and fail short of them.
        RecoveryTarget("c", xid="1"),
        RecoveryTarget("c", xid="2"),
        RecoveryTarget("c", xid=str(1 << 32)),
        RecoveryTarget("c", xid=str((5 << 32) + 2)),
        # Refused by the server only when it starts.
        RecoveryTarget("c", lsn=" 0/3000028"),
        RecoveryTarget("c", lsn="0/3000028\n"),
        # Not UTF-8 (bytes Python could not decode): found only after the whole download.
        RecoveryTarget("walg wal-fetch \udcff %f %p"),
    ],
)
def test_bad_recovery_targets_are_refused(target: RecoveryTarget, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        target.check()  # what backup-fetch asks before it downloads anything
    with pytest.raises(UsageError):
        write_recovery_config(tmp_path, 150000, target)
    assert not (tmp_path / "recovery.signal").exists()


def test_daemon_argument_framing() -> None:
    body = bytes([2]) + (3).to_bytes(2, "big") + b"abc" + (2).to_bytes(2, "big") + b"de"
    assert parse_args(body) == ["abc", "de"]
    for broken in (b"", bytes([1]), bytes([1, 0, 5]) + b"ab", body + b"x"):
        with pytest.raises(UsageError):
            parse_args(broken)


def test_wal_push_path_imports_no_database_or_cloud_library(tmp_path: Path) -> None:
    wal = tmp_path / "pg_wal"
    wal.mkdir()
    (wal / "000000010000000000000001").write_bytes(b"\1" * 8192)
    code = (
        "import sys\n"
        "from walg.cli.main import main\n"
        f"rc = main(['wal-push', '{wal / '000000010000000000000001'}'])\n"
        f"rc += main(['wal-fetch', '000000010000000000000001', '{tmp_path / 'fetched'}'])\n"
        # Beyond database and cloud libraries: modules that cost an archive_command call
        # milliseconds each (typing, logging, pathlib, json, datetime, concurrent.futures,
        # re with enum, blake3: WAL objects carry no BLAKE3, their codec's checksum guards them;
        # nor the stages and records of that checksum; copy with weakref, for asdict alone).
        "heavy = [m for m in ('psycopg', 'boto3', 'yaml', 'argparse', 'walg.core.metadata',"
        " 'concurrent.futures', 'typing', 'logging', 'pathlib', 'json', 'datetime', 'blake3',"
        " 'inspect', 're', 'enum', 'walg.core.checksum', 'walg.streams.hashing', 'copy',"
        " 'weakref')"
        " if m in sys.modules]\n"
        # Again: the overwrite check reads the archived copy back (and logs that it did).
        f"rc += main(['wal-push', '{wal / '000000010000000000000001'}'])\n"
        "heavy += [m for m in ('blake3',) if m in sys.modules]\n"
        "print(rc, heavy)\n"
    )
    (tmp_path / "store").mkdir()
    env = {
        "WALG_DOWNLOAD_CONCURRENCY": "1",
        "WALG_FILE_PREFIX": str(tmp_path / "store"),
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert out.stdout.strip() == "0 []", out.stderr
    assert (tmp_path / "fetched").read_bytes() == b"\1" * 8192


def _key(env: dict[str, str], *config: str) -> str:
    """The destination key (walg_destination) of a walg process started with ``env`` in this
    folder (``--config`` FILE when given), computed by a process started the same way."""
    code = (
        "import os, sys, walg_destination as d;"
        "print(d.destination_key(os.environ, sys.argv[1] if len(sys.argv) > 1 else None))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *config], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_wal_push_ends_on_a_look_ahead_marker_before_walg_is_imported(
    tmp_path: Path, walg_bin: str
) -> None:
    wal = tmp_path / "pg_wal"
    status = wal / "walg_data" / "walg_archive_status"
    status.mkdir(parents=True)
    name = "000000010000000000000007"
    (wal / name).write_bytes(b"\0" * 8192)
    # No storage configured at all: the marker alone must answer the call.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    def push(*args: str) -> subprocess.CompletedProcess[str]:
        # -X importtime lists every module the call imported.
        command = [sys.executable, "-X", "importtime", walg_bin, *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, check=False)

    key = _key(env)
    marker = status / f"{name}.{key}"
    for config, args in (
        ((), ["wal-push", str(wal / name)]),
        (("/nowhere",), ["--config", "/nowhere", "wal-push", str(wal / name)]),
    ):
        mine = status / f"{name}.{_key(env, *config)}"
        write_marker(str(mine), file_identity(str(wal / name)))
        out = push(*args)
        assert out.returncode == 0, out.stderr
        # Only the key's module beside the package, none of walg itself.
        imported = re.findall(r"\|\s+(\S+)$", out.stderr, re.MULTILINE)
        assert not [m for m in imported if m == "walg" or m.startswith(("walg.", "lz4"))]
        assert "walg_destination" in imported, out.stderr
        assert not mine.exists()
    # Without a marker of its own destination the same call needs storage, and says so: a
    # marker for another one (another key, or none as WAL-G and walg before keys wrote) is
    # left for that destination.
    for other in (status / f"{name}.{'0' * 32}", status / name):
        write_marker(str(other), file_identity(str(wal / name)))
    again = push("wal-push", str(wal / name))
    assert again.returncode == 78, again.stderr
    assert "| walg.settings" in again.stderr
    assert (status / name).exists() and (status / f"{name}.{'0' * 32}").exists()
    # A marker that vouches for another file (the segment rewritten under its name since, as
    # after pg_rewind) or for none (empty, as walg wrote before) is no short cut.
    for recorded in (file_identity(str(wal / name)), b""):
        marker.write_bytes(recorded)
        if recorded:
            (wal / name).unlink()
            (wal / name).write_bytes(b"\1" * 8192)
        stale = push("wal-push", str(wal / name))
        assert stale.returncode == 78, stale.stderr
    # A marker under a name that is not a WAL segment's is not a short cut.
    (wal / "not-a-segment").write_bytes(b"x")
    (status / "not-a-segment").touch()
    odd = push("wal-push", str(wal / "not-a-segment"))
    assert odd.returncode != 0
    assert (status / "not-a-segment").exists()


def test_wal_push_in_process_honours_the_marker_too(tmp_path: Path) -> None:
    """walg.cli.main without the launcher: the look-ahead marker is still taken (by wal_push)."""
    wal = tmp_path / "pg_wal"
    status = wal / "walg_data" / "walg_archive_status"
    status.mkdir(parents=True)
    name = "000000010000000000000007"
    # Not zeros: wal-push refuses a segment whose first page header is zeros.
    (wal / name).write_bytes(b"\1" * 8192)
    store = tmp_path / "store"
    store.mkdir()
    code = f"from walg.cli.main import main; print(main(['wal-push', {str(wal / name)!r}]))"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "WALG_FILE_PREFIX": str(store)}
    marker = status / f"{name}.{_key(env)}"
    write_marker(str(marker), file_identity(str(wal / name)))

    def push() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
        )

    out = push()
    assert out.stdout.split() == ["0"], out.stderr
    assert not marker.exists()
    assert not any(p.is_file() for p in store.rglob("*")), "nothing may be uploaded"
    # A marker for a file that is no longer the one at the path: archived the ordinary way.
    marker.write_bytes(b"0:0:8192:0\n")
    out = push()
    assert out.stdout.split() == ["0"], out.stderr
    assert [p.name for p in store.rglob("*") if p.is_file()] == [f"{name}.lz4"]
    assert not marker.exists()
