"""PostgreSQL itself reads the recovery settings backup-fetch writes as they were meant:
backslashes and quotes survive its parser, and the block of an earlier restore (still in a
data directory that was restored, promoted and backed up) no longer applies."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgcluster import Cluster, PgInstall
from walg.errors import UsageError
from walg.ops.recovery import (
    RecoveryTarget,
    datadir_conf_files,
    disable_inherited_targets,
    write_recovery_config,
)


def _setting(cluster: Cluster, name: str) -> str:
    got = cluster.run(["postgres", "-C", name, "-D", str(cluster.datadir)])
    return got.stdout.rstrip("\n")


def test_postgres_reads_the_settings_backup_fetch_writes(
    pg_install: PgInstall, pg_workdir: Path
) -> None:
    cluster = Cluster.create(pg_install, pg_workdir / "data")
    auto = cluster.datadir / "postgresql.auto.conf"
    owner = auto.stat().st_uid
    with auto.open("a") as handle:
        handle.write(
            "restore_command = 'old %f %p'\n"
            "recovery_target_time = '2024-01-01 00:00:00+00'\n"
            "recovery_target_action = 'pause'\n"
        )
    command = r"""printf 'a\tb' >/dev/null && test "it's" && walg wal-fetch %f %p"""
    target = RecoveryTarget(command, lsn="0/3000000")
    write_recovery_config(cluster.datadir, pg_install.major * 10000, target)
    # Written as root, the file still belongs to the server's user, or it could not start.
    assert auto.stat().st_uid == owner
    assert _setting(cluster, "restore_command") == command
    assert _setting(cluster, "recovery_target_lsn") == "0/3000000"
    assert _setting(cluster, "recovery_target_time") == ""
    assert _setting(cluster, "recovery_target_action") == "promote"


def test_targets_left_in_postgresql_conf_do_not_apply(
    pg_install: PgInstall, pg_workdir: Path
) -> None:
    """A target in postgresql.conf or a file it includes (where WAL-G's recovery instructions
    put them; ignored outside recovery) must not stop a restore that asked for another target,
    or for none: replay would end at the old target and promote, short of the archive."""
    cluster = Cluster.create(pg_install, pg_workdir / "data")
    conf = cluster.datadir / "postgresql.conf"
    included = cluster.datadir / "recovery_old.conf"
    included.write_text("recovery_target_name = 'before-upgrade'\nrecovery_target = 'immediate'\n")
    with conf.open("a") as handle:
        handle.write(
            "recovery_target_time = '2020-01-01 00:00:00+00'\n"
            "recovery_target_action = 'shutdown'\n"
            "recovery_target_timeline = '1'\n"
            "recovery_target_inclusive = off\n"
            f"include '{included.name}'\n"
        )
    write_recovery_config(
        cluster.datadir, pg_install.major * 10000, RecoveryTarget("walg wal-fetch %f %p")
    )
    for name in (
        "recovery_target",
        "recovery_target_time",
        "recovery_target_name",
        "recovery_target_lsn",
        "recovery_target_xid",
    ):
        assert _setting(cluster, name) == "", name
    assert _setting(cluster, "recovery_target_timeline") == "latest"
    assert _setting(cluster, "recovery_target_inclusive") == "on"
    # Another kind of target: the only one PostgreSQL sees (two would refuse to start).
    write_recovery_config(
        cluster.datadir,
        pg_install.major * 10000,
        RecoveryTarget("walg wal-fetch %f %p", xid="1234", action="promote"),
    )
    assert _setting(cluster, "recovery_target_xid") == "1234"
    assert _setting(cluster, "recovery_target_time") == ""
    assert _setting(cluster, "recovery_target_name") == ""
    assert _setting(cluster, "recovery_target_action") == "promote"


def test_targets_in_files_the_data_directory_includes_are_commented_out_there(
    pg_install: PgInstall, pg_workdir: Path
) -> None:
    """A restore without recovery settings comments out the targets an earlier restore left
    in the data directory's configuration: in files postgresql.conf includes too, or the
    server stops at the old target. A file included from outside the data directory is the
    restoring machine's own, maybe the operator's target for this restore: left as it is."""
    cluster = Cluster.create(pg_install, pg_workdir / "data")
    nested = cluster.datadir / "conf.d" / "old"
    nested.mkdir(parents=True)
    (cluster.datadir / "conf.d" / "recovery.conf").write_text(
        "recovery_target_time = '2020-01-01 00:00:00+00'\ninclude 'old/more.conf'\n"
    )
    (nested / "more.conf").write_text("recovery_target_inclusive = off\n")
    operator = pg_workdir / "operator.conf"
    operator.write_text("recovery_target_action = 'shutdown'\n")
    with (cluster.datadir / "postgresql.conf").open("a") as handle:
        handle.write(f"include_dir 'conf.d'\ninclude '{operator}'\n")
    assert _setting(cluster, "recovery_target_time") != ""
    found = [
        (conf, setting)
        for conf in datadir_conf_files(cluster.datadir)
        for setting in disable_inherited_targets(cluster.datadir, pg_install.major * 10000, conf)
    ]
    assert found == [("conf.d/recovery.conf", "recovery_target_time = '2020-01-01 00:00:00+00'")]
    assert _setting(cluster, "recovery_target_time") == ""
    assert _setting(cluster, "recovery_target_inclusive") == "on"
    assert _setting(cluster, "recovery_target_action") == "shutdown"
    assert "work_mem" in (cluster.datadir / "postgresql.conf").read_text()


def test_postgres_reads_every_target_time_walg_accepts(
    pg_install: PgInstall, pg_workdir: Path
) -> None:
    """backup-fetch refuses a --target-time it cannot check before restoring anything; what
    it accepts, the server must read (else it would refuse to start after the restore)."""
    cluster = Cluster.create(pg_install, pg_workdir / "data")
    for time in (
        "2026-11-25 12:00:00+00",
        "2026-11-25 12:00:00.123456+05:30",
        "2026-11-25T12:00:00+00",
        "2026-11-25 12:00:00 europe/paris",
        "2026-11-25 12:00:00 EST",
        "2026-11-25 12:00:00 +0530",
        "2026-11-25 12:00:00 Europe/Paris",
        "2026-11-25 12:00 UTC",
        "2026-11-25",
        "2026-11-25 24:00:00",
        "2026-12-31 23:59:60+00",
        "2026-12-31 23:59:60.000+00",
        "2026-11-25 12:00:00+05:30:15",
        "2026-11-25 12:00:00 -15:59:59",
        "2026-11-25 12:00:00.1234567+00",
        "2026-11-25 12:00:00+5",
        "2026-11-26 -05",
        "2026-11-26+05",
    ):
        target = RecoveryTarget("walg wal-fetch %f %p", time=time)
        target.check()
        write_recovery_config(cluster.datadir, pg_install.major * 10000, target)
        assert _setting(cluster, "recovery_target_time") == time


def test_walg_reads_a_target_time_as_the_server_does(
    pg_install: PgInstall, pg_workdir: Path
) -> None:
    """walg chooses the backup for a --target-time by the instant it means: the server's
    reading, names that are also abbreviations included (CET is a fixed +01 to PostgreSQL,
    summer or not; the zone CET keeps summer time). A time without a zone is a window that
    holds the server's reading whatever its time zone."""
    from walg.ops.target_backup import time_bounds

    cluster = Cluster.create(pg_install, pg_workdir / "data")
    cluster.set_conf({"timezone": "UTC"})
    cluster.start()
    zones = ["CET", "cet", "MET", "EET", "WET", "EST", "MST", "HST", "GMT", "Zulu"]
    zones += ["Europe/Paris", "europe/lisbon", "EST5EDT", "+05:30", "-03"]
    zoned = [f"2026-{month} 12:00:00 {zone}" for month in ("01-15", "07-01") for zone in zones]
    zoned += ["2026-10-25 02:30:00 Europe/Paris", "2026-03-29 02:30:00 Europe/Paris"]
    for text in zoned:
        (epoch,) = cluster.query(f"SELECT extract(epoch FROM '{text}'::timestamptz)::bigint")[0]
        assert time_bounds(text) == (int(epoch) * 10**9,) * 2, text
    for zone in ("Pacific/Kiritimati", "Etc/GMT+12", "Europe/Paris"):
        got = cluster.query(
            f"SET timezone = '{zone}'; "
            "SELECT extract(epoch FROM '2026-07-01 12:00:00'::timestamptz)::bigint"
        )
        low, high = time_bounds("2026-07-01 12:00:00")
        assert low <= int(got[-1][0]) * 10**9 <= high, zone


def test_postgres_refuses_the_target_times_walg_refuses(
    pg_install: PgInstall, pg_workdir: Path
) -> None:
    """The forms walg refuses near PostgreSQL's limits are ones the server refuses too: walg
    is not stricter than it needs to be there, and not looser."""
    cluster = Cluster.create(pg_install, pg_workdir / "data")
    auto = cluster.datadir / "postgresql.auto.conf"
    base = auto.read_text()
    for time in (
        "2026-11-25 12:00:00+16",
        "2026-11-25 12:00:00+05:60",
        "2026-11-25 12:00:00-05:30:60",
        "2026-11-25 24:00:00.5+00",
        "2026-12-31 23:59:60.5+00",
        "2026-11-26-05",
        # Digits and spaces that are such to Python only (walg took these, and the server
        # then refused to start after the whole restore): full-width digits, a no-break
        # space, an em space, a control character Python strips as whitespace.
        "\uff12\uff10\uff12\uff16-11-25 12:00:00+00",
        "2026-11-25 12:00:00+00\u00a0",
        "2026-11-25 12:00:00\u2003+00",
        "2026-11-25 12:00:00+00\x1f",
    ):
        with pytest.raises(UsageError):
            RecoveryTarget("walg wal-fetch %f %p", time=time).check()
        auto.write_text(base + f"recovery_target_time = '{time}'\n")
        got = cluster.run(
            ["postgres", "-C", "recovery_target_time", "-D", str(cluster.datadir)], check=False
        )
        assert got.returncode != 0, time
        assert "invalid value" in got.stderr, (time, got.stderr)


# The oldest and the newest major: every installed major is 12 or later, so walg takes the
# same path for each (PG_VERSION read, recovery.signal and postgresql.auto.conf written), and
# the server's reading of those settings is checked on every major above.
@pytest.mark.majors(13, 18)
def test_a_sentinel_without_the_version_gets_the_settings_of_the_restored_server(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    """WAL-E's sentinels (and WAL-G's that lack ``PgVersion``) do not say which PostgreSQL
    made the backup. The restored ``PG_VERSION`` does: a 12+ server given ``recovery.conf``
    refuses to start ("using recovery command file is not supported")."""
    import json

    from walgcli import (
        WalgSetup,
        archive_now,
        archiving_primary,
        fetch_for_recovery,
        start_recovery,
    )

    walg = WalgSetup.create(walg_bin, pg_workdir)
    src = archiving_primary(walg, pg_install, pg_workdir / "src")
    src.psql("CREATE TABLE marks (phase text PRIMARY KEY)")
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    src.psql("INSERT INTO marks VALUES ('after the backup')")
    archive_now(src)
    src.stop()
    (sentinel,) = walg.store.glob("basebackups_005/*_backup_stop_sentinel.json")
    doc = json.loads(sentinel.read_text())
    del doc["PgVersion"]
    sentinel.write_text(json.dumps(doc))

    dest = pg_workdir / "restored"
    fetch_for_recovery(walg, dest)
    assert not (dest / "recovery.conf").exists()
    assert (dest / "recovery.signal").exists()
    restored = Cluster.from_existing(pg_install, dest, conf={"archive_mode": "off"})
    start_recovery(restored)
    assert restored.psql("SELECT phase FROM marks") == "after the backup"
    restored.stop()


def test_a_target_name_the_server_would_refuse_is_refused(
    pg_install: PgInstall, pg_workdir: Path
) -> None:
    """A restore point name has at most 63 bytes (pg_create_restore_point makes no longer
    one), and the server refuses to start with a longer recovery_target_name: backup-fetch
    refuses it before restoring anything, not after."""
    cluster = Cluster.create(pg_install, pg_workdir / "data")
    auto = cluster.datadir / "postgresql.auto.conf"
    base = auto.read_text()
    for name in ("n" * 63, "é" * 31 + "n"):
        target = RecoveryTarget("walg wal-fetch %f %p", name=name)
        target.check()
        write_recovery_config(cluster.datadir, pg_install.major * 10000, target)
        assert _setting(cluster, "recovery_target_name") == name
    for name in ("n" * 64, "é" * 32):
        auto.write_text(base + f"recovery_target_name = '{name}'\n")
        got = cluster.run(
            ["postgres", "-C", "recovery_target_name", "-D", str(cluster.datadir)], check=False
        )
        assert got.returncode != 0, name
        assert "invalid value" in got.stderr, (name, got.stderr)
        with pytest.raises(UsageError, match="--target-name"):
            RecoveryTarget("walg wal-fetch %f %p", name=name).check()


def test_a_standby_keeps_an_inherited_apply_delay(pg_install: PgInstall, pg_workdir: Path) -> None:
    """A restore into archive recovery sets recovery_min_apply_delay back to 0 (a delayed
    standby's backup would otherwise hold its recovery back); one restored as a standby
    (--standby) keeps the delay it inherited, which may be what it is for."""
    cluster = Cluster.create(pg_install, pg_workdir / "data")
    auto = cluster.datadir / "postgresql.auto.conf"
    with auto.open("a") as handle:
        handle.write("recovery_min_apply_delay = '1h'\n")
    base = auto.read_text()
    write_recovery_config(
        cluster.datadir, pg_install.major * 10000, RecoveryTarget("walg wal-fetch %f %p")
    )
    assert _setting(cluster, "recovery_min_apply_delay") == "0"
    auto.write_text(base)
    write_recovery_config(
        cluster.datadir,
        pg_install.major * 10000,
        RecoveryTarget("walg wal-fetch %f %p", standby=True),
    )
    assert _setting(cluster, "recovery_min_apply_delay") == "3600000"  # ms
