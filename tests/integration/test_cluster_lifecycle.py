"""A cluster's life beyond one database system, with one archive prefix throughout: a
``pg_upgrade`` to a new major (whose WAL names continue from the old system's, on timeline 1
whatever timeline the old one was on), and a cluster rebuilt by ``initdb`` pointed at the
prefix of the one it replaces. Each system has its own system identifier (``pg_control``,
every WAL page header, the sentinel's ``SystemIdentifier``); walg must not hand one system's
backup to a restore of the other, nor vouch for one system's WAL with the other's.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pgcluster import Cluster, PgInstall, make_shared_dir, run_as_pg
from walgcli import (
    WalgSetup,
    archive_now,
    archiving_primary,
    fetch_for_recovery,
    restore_to_target,
    start_daemon,
    stop_daemon,
)

OLD_MAJOR, NEW_MAJOR = 14, 17


@dataclass
class Upgraded:
    walg: WalgSetup
    old_install: PgInstall
    new_install: PgInstall
    new: Cluster  # the upgraded cluster, running and archiving
    old_backup: str  # the old system's backup on timeline 2
    new_backup: str  # the upgraded cluster's first backup


def _pg_upgrade(old: Cluster, new: Cluster, workdir: Path, mode: str = "copy") -> None:
    """pg_upgrade ``old`` into ``new`` (initdb'd, stopped), copying the files or, with
    ``mode`` ``link`` or ``clone``, linking or cloning them."""
    run_as_pg(
        [
            new.install.tool("pg_upgrade"),
            *([f"--{mode}"] if mode != "copy" else []),
            "--old-bindir",
            str(old.install.bindir),
            "--new-bindir",
            str(new.install.bindir),
            "--old-datadir",
            str(old.datadir),
            "--new-datadir",
            str(new.datadir),
            "--old-port",
            str(old.port),
            "--new-port",
            str(new.port),
            "--socketdir",
            str(workdir),
        ],
        env=new.install.env(),
        cwd=workdir,  # pg_upgrade writes its logs there
        timeout=300,
    )


def _upgrade_from_timeline_2(workdir: Path, walg_bin: str) -> Upgraded:
    """A PostgreSQL 14 system restored from its backup (so on timeline 2, whose history it
    archives), backed up there, then upgraded to 17 with the same archive prefix; the
    upgraded cluster writes on timeline 1 and takes its first backup."""
    walg = WalgSetup.create(walg_bin, workdir)
    old_install, new_install = PgInstall.load(OLD_MAJOR), PgInstall.load(NEW_MAJOR)
    first = archiving_primary(walg, old_install, workdir / "first")
    first.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS g")
    walg.run(["backup-push", str(first.datadir)], cluster=first)
    archive_now(first)
    first.stop()

    walg.run(["backup-fetch", str(workdir / "old"), "LATEST"])
    old = Cluster.from_existing(
        old_install,
        workdir / "old",
        conf={
            "archive_mode": "on",
            "archive_command": walg.command("wal-push", "%p"),
            "restore_command": walg.command("wal-fetch", "%f", "%p"),
        },
    )
    old.touch("recovery.signal")
    old.start(wait_ready=False)
    old.wait_ready()
    old.wait_for_recovery_end()
    old.psql("CREATE TABLE on_timeline_2 AS SELECT generate_series(1, 10) AS g")
    walg.run(["backup-push", str(old.datadir)], cluster=old)
    archive_now(old)
    old.stop()

    new = archiving_primary(walg, new_install, workdir / "new", use_template=False, start=False)
    _pg_upgrade(old, new, workdir)
    new.start()
    new.psql("CREATE TABLE after_upgrade AS SELECT generate_series(1, 10) AS g")
    archive_now(new)
    walg.run(["backup-push", str(new.datadir)], cluster=new)
    new.psql("CREATE TABLE after_new_backup AS SELECT generate_series(1, 10) AS g")
    archive_now(new)
    names = [b["backup_name"] for b in json.loads(walg.run(["backup-list", "--json"]).stdout)]
    assert (workdir / "store" / "wal_005" / "00000002.history.lz4").exists()
    assert names[1].startswith("base_00000002") and names[2].startswith("base_00000001")
    return Upgraded(walg, old_install, new_install, new, names[1], names[2])


def test_latest_after_pg_upgrade_is_never_the_old_system_s_backup(
    pg_workdir: Path, walg_bin: str
) -> None:
    """pg_upgrade starts the new cluster's WAL on timeline 1, so after upgrading a cluster
    that was on timeline 2 the archive's 00000002.history (the old system's) says timeline 2
    branched off timeline 1 long before the new system's WAL. Recovery with
    recovery_target_timeline = latest would follow it and cannot start from the new
    system's backup; walg's LATEST then took the newest backup that fits timeline 2: the old
    system's PostgreSQL 14 backup, from before the upgrade, restored with exit 0 into a
    directory the new binaries cannot start (and the old ones start without anything written
    since the upgrade). LATEST stays with the newest backup's system: refused, naming that
    backup and --target-timeline current, which restores it."""
    up = _upgrade_from_timeline_2(pg_workdir, walg_bin)
    walg = up.walg

    dest = pg_workdir / "latest"
    fetch = fetch_for_recovery(walg, dest, check=False)
    assert fetch.returncode == 74, fetch.stderr
    assert up.new_backup in fetch.stderr and "--target-timeline current" in fetch.stderr
    assert "another database system" in fetch.stderr
    assert not dest.exists() or not any(dest.iterdir())
    # A time target after the new system's backup, likewise.
    now = up.new.psql("SELECT now()")
    timed = fetch_for_recovery(walg, dest, "--target-time", now, check=False)
    assert timed.returncode == 74, timed.stderr
    assert up.new_backup in timed.stderr and "--target-timeline current" in timed.stderr
    assert not dest.exists() or not any(dest.iterdir())

    restored = restore_to_target(
        up.new_install, walg, dest, "--target-timeline", "current", timeout=120
    )
    assert restored.psql("SELECT count(*) FROM after_new_backup") == "10"
    assert restored.psql("SHOW server_version_num").startswith(str(NEW_MAJOR))

    # Without recovery settings walg writes none, and says what the operator's must hold.
    plain = walg.run(["backup-fetch", str(pg_workdir / "plain"), "LATEST"])
    assert up.new_backup in plain.stderr
    assert "recovery_target_timeline = 'current'" in plain.stderr, plain.stderr

    # The old system's backup is still there to be asked for by name.
    old = fetch_for_recovery(walg, pg_workdir / "old_again", name=up.old_backup)
    assert up.old_backup in old.stderr


def _wait_for_archive_failure(cluster: Cluster, timeout: float = 30) -> str:
    """The segment PostgreSQL's archiver failed on, once it has failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        failed = cluster.psql(
            "SELECT coalesce(last_failed_wal, '') FROM pg_stat_archiver WHERE failed_count > 0"
        )
        if failed:
            return failed
        time.sleep(0.2)
    raise TimeoutError("the archiver has not failed\n" + cluster.log_tail())


def test_a_cluster_rebuilt_by_initdb_into_a_used_prefix_is_not_vouched_for(
    pg_workdir: Path, walg_bin: str
) -> None:
    """A cluster made anew by initdb and pointed at the prefix of the one it replaces writes
    the same first segment names: its archiver is refused on the first one and archives
    nothing. wal-verify on it walked from the old system's backup through the old system's
    segments and said integrity OK, exit 0, while not one segment of the cluster it was asked
    about was archived. Another system's backups no longer start the walk; with none of this
    system's, the check is FAILURE and says why."""
    install = PgInstall.load(15)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    old = archiving_primary(walg, install, pg_workdir / "old")
    old.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS g")
    walg.run(["backup-push", str(old.datadir)], cluster=old)
    archive_now(old)
    archive_now(old)
    old.stop()

    # Not a copy of the test template: that would be the same system.
    new = archiving_primary(walg, install, pg_workdir / "new", use_template=False)
    system = new.control_data()["Database system identifier"]
    assert system != old.control_data()["Database system identifier"]
    new.psql("CREATE TABLE n AS SELECT generate_series(1, 1000) AS g")
    for _ in range(2):  # into segment 3: the walk covers segment 2, the old system's
        new.psql("SELECT txid_current()")
        new.psql("SELECT pg_switch_wal()")
    new.psql("SELECT txid_current()")
    assert _wait_for_archive_failure(new) == "000000010000000000000001"

    # The archiver's refusal says whose the stored segment is, and what to do.
    push = walg.run(
        ["wal-push", str(new.datadir / "pg_wal" / "000000010000000000000001")], check=False
    )
    assert push.returncode == 1, push.stderr
    assert "another database system" in push.stderr, push.stderr
    assert system in push.stderr and old.control_data()["Database system identifier"] in (
        push.stderr
    )
    assert "WALG_FILE_PREFIX" in push.stderr

    # Its backup can never have its WAL archived here: said at once, not after
    # WALG_STOP_BACKUP_TIMEOUT (30 minutes by default) with "check archive_command".
    started = time.monotonic()
    backup = walg.run(
        ["backup-push", str(new.datadir)],
        cluster=new,
        env={"WALG_STOP_BACKUP_TIMEOUT": "40"},
        check=False,
    )
    assert backup.returncode == 1, backup.stderr
    assert time.monotonic() - started < 30, backup.stderr
    assert "another database system" in backup.stderr, backup.stderr
    assert "000000010000000000000001" in backup.stderr
    assert len(json.loads(walg.run(["backup-list", "--json"]).stdout)) == 1

    verify = walg.run(["wal-verify", "integrity", "--fail-on-problem"], cluster=new, check=False)
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert "integrity check status: FAILURE" in verify.stdout
    assert "another database system" in verify.stderr
    assert system in verify.stderr


def test_pg_resetwal_below_the_archive_s_last_segment_is_explained(
    pg_workdir: Path, walg_bin: str
) -> None:
    """After losing pg_wal, pg_resetwal without -l starts the WAL just after the last
    checkpoint: at names the archive already holds, with other content, from the same
    database system. The archiver was refused for ever with only 'different content'. The
    refusal now names the likely causes (pg_resetwal to a position the archive had passed,
    or a copy of this cluster writing the same timeline) and pg_resetwal -l; done so, with a
    segment name past the archive's last, archiving goes on."""
    install = PgInstall.load(15)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    cluster = archiving_primary(walg, install, pg_workdir / "data")
    walg.run(["backup-push", str(cluster.datadir)], cluster=cluster)
    archive_now(cluster)
    last = archive_now(cluster)
    cluster.stop(mode="immediate")
    for segment in (cluster.datadir / "pg_wal").glob("0000*"):
        segment.unlink()  # the disaster
    resetwal = install.tool("pg_resetwal")
    run_as_pg([resetwal, "-f", str(cluster.datadir)], env=install.env())
    cluster.start()
    cluster.psql("SELECT txid_current()")
    cluster.psql("SELECT pg_switch_wal()")
    refused = _wait_for_archive_failure(cluster)
    assert refused <= last  # a name the archive holds

    push = walg.run(["wal-push", str(cluster.datadir / "pg_wal" / refused)], check=False)
    assert push.returncode == 1, push.stderr
    assert "same database system" in push.stderr, push.stderr
    assert "pg_resetwal -l" in push.stderr and "another database system" not in push.stderr

    cluster.stop()
    run_as_pg([resetwal, "-l", "000000010000000000000010", str(cluster.datadir)], env=install.env())
    cluster.start()
    assert archive_now(cluster) >= "000000010000000000000010"


@pytest.mark.parametrize("mode", ["copy", "link"])
def test_after_pg_upgrade_the_archive_serves_both_systems_apart(
    mode: str, pg_workdir: Path, walg_bin: str
) -> None:
    """pg_upgrade 14 -> 17 (copying or linking the files) keeping the prefix. The new
    system's WAL names continue after the old one's, so nothing collides; until its first
    backup wal-verify cannot vouch for it (the old system's backups never restore it: on the
    old code it walked from them and said WARNING, calling the gap between the systems
    'uploading'); after it, OK. The sentinel
    carries the new system's identifier and version. The old system's backup still restores
    with the old binaries, to the end of the old system's WAL."""
    walg = WalgSetup.create(walg_bin, pg_workdir)
    old_install, new_install = PgInstall.load(OLD_MAJOR), PgInstall.load(NEW_MAJOR)
    old = archiving_primary(walg, old_install, pg_workdir / "old")
    walg.run(["backup-push", str(old.datadir)], cluster=old)
    old.psql("CREATE TABLE before_upgrade AS SELECT generate_series(1, 10) AS g")
    archive_now(old)
    old.stop()
    archived_by_old = {p.name for p in (walg.store / "wal_005").iterdir()}

    new = archiving_primary(walg, new_install, pg_workdir / "new", use_template=False, start=False)
    _pg_upgrade(old, new, pg_workdir, mode)
    new.start()
    new.psql("CREATE TABLE after_upgrade AS SELECT generate_series(1, 10) AS g")
    first_new = archive_now(new)
    assert f"{first_new}.lz4" not in archived_by_old
    assert first_new > max(archived_by_old)[:24]

    before = walg.run(["wal-verify", "integrity", "--fail-on-problem"], cluster=new, check=False)
    assert before.returncode == 1, before.stdout + before.stderr
    assert "another database system" in before.stderr

    walg.run(["backup-push", str(new.datadir)], cluster=new)
    archive_now(new)
    after = walg.run(["wal-verify", "integrity", "--fail-on-problem"], cluster=new)
    assert "integrity check status: OK" in after.stdout, after.stdout + after.stderr

    backups = json.loads(walg.run(["backup-list", "--json", "--detail"]).stdout)
    system = int(new.control_data()["Database system identifier"])
    assert backups[-1]["system_identifier"] == system
    assert backups[-1]["pg_version"] // 10000 == NEW_MAJOR
    assert backups[0]["system_identifier"] != system

    restored = restore_to_target(
        old_install,
        walg,
        pg_workdir / "old_restored",
        name=backups[0]["backup_name"],
        timeout=120,
    )
    assert restored.psql("SELECT count(*) FROM before_upgrade") == "10"
    assert restored.psql("SELECT to_regclass('after_upgrade') IS NULL") == "t"


@pytest.mark.parametrize("via", ["wal-push", "daemon"])
def test_a_rebuilt_cluster_adds_nothing_after_the_old_system_s_wal(
    pg_workdir: Path, walg_bin: str, via: str
) -> None:
    """While PostgreSQL's call for the rebuilt cluster's first segment was refused (the old
    system's is stored under that name), the look-ahead uploader that call started stored
    the rebuilt cluster's later segments, which collide with nothing, after the old system's
    last one. A restore of the old system's backup to the end then met the first of them,
    wal-fetch refused it as another system's (exit 128), and PostgreSQL stopped on every
    start, where it had ended recovery cleanly before. No look-ahead starts from a call whose
    file is stored as another system's; the daemon's look-ahead and WAL follower, which run
    on their own, hold off once PostgreSQL's call through it is refused so (they stored
    segments 4 and 5 there)."""
    install = PgInstall.load(15)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    old = archiving_primary(walg, install, pg_workdir / "old")
    walg.run(["backup-push", str(old.datadir)], cluster=old)
    old.psql("CREATE TABLE before_rebuild AS SELECT generate_series(1, 10) AS g")
    archive_now(old)
    old.stop()
    archived_by_old = sorted(p.name for p in (walg.store / "wal_005").iterdir())

    socket = None
    if via == "daemon":
        socket = make_shared_dir(pg_workdir / "sock", 0o755) / "walg.sock"
    new = archiving_primary(
        walg, install, pg_workdir / "new", daemon_socket=socket, use_template=False, start=False
    )
    daemon = start_daemon(walg, socket, new.datadir) if socket is not None else None
    new.start()
    for _ in range(5):  # segment 1, refused, and a backlog behind it
        new.psql("SELECT txid_current()")
        new.psql("SELECT pg_switch_wal()")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # PostgreSQL's three tries before it pauses a minute
        if int(new.psql("SELECT failed_count FROM pg_stat_archiver")) >= 3:
            break
        time.sleep(0.2)
    assert _wait_for_archive_failure(new) == "000000010000000000000001"
    time.sleep(3)  # what an uploader started by those calls would store meanwhile
    new.stop()
    if daemon is not None:
        stop_daemon(daemon)
    assert sorted(p.name for p in (walg.store / "wal_005").iterdir()) == archived_by_old

    restored = restore_to_target(install, walg, pg_workdir / "old_restored", timeout=120)
    assert restored.psql("SELECT count(*) FROM before_rebuild") == "10"


def test_a_daemon_started_over_a_rebuilt_cluster_s_backlog_adds_nothing(
    pg_workdir: Path, walg_bin: str
) -> None:
    """The daemon holds its background archiving once PostgreSQL's call through it is
    refused as another system's WAL; but started over a backlog (PostgreSQL failing its calls
    while no daemon listened, then waiting a minute before the next), its look-ahead met the
    stored segments first, passed them by, and stored the rebuilt cluster's later segments,
    which collide with nothing, after the old system's last one. The look-ahead holds itself
    on meeting another system's segment, and an upload in flight then commits nothing."""
    install = PgInstall.load(15)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    old = archiving_primary(walg, install, pg_workdir / "old")
    walg.run(["backup-push", str(old.datadir)], cluster=old)
    archive_now(old)
    old.stop()
    archived_by_old = sorted(p.name for p in (walg.store / "wal_005").iterdir())

    socket = make_shared_dir(pg_workdir / "sock", 0o755) / "walg.sock"
    new = archiving_primary(
        walg, install, pg_workdir / "new", daemon_socket=socket, use_template=False
    )
    for _ in range(6):  # no daemon yet: every segment stays .ready
        new.psql("SELECT txid_current()")
        new.psql("SELECT pg_switch_wal()")
    _wait_for_archive_failure(new)
    status = new.datadir / "pg_wal" / "archive_status"
    ready = sorted(p.name for p in status.iterdir() if p.name.endswith(".ready"))
    assert len(ready) >= 6, ready
    newest = ready[-1].removesuffix(".ready")
    assert all(newest > name for name in archived_by_old if len(name.split(".")[0]) == 24)

    daemon = start_daemon(walg, socket, new.datadir)
    time.sleep(4)  # the look-ahead's first scan and its uploads
    new.stop()
    log = stop_daemon(daemon)
    assert sorted(p.name for p in (walg.store / "wal_005").iterdir()) == archived_by_old
    assert "another database system's WAL" in log, log
