"""Archiving that is stuck, as the operator's commands see it on a real PostgreSQL 16 primary
(13 too where the server's side differs): the archiver refused on a segment that storage
holds with other content, and a storage volume full or read-only.

Two copies of one cluster (same system identifier) given one prefix, the split brain of two
servers promoted from one backup: the one that archived first wins each name, and the other's
archiver retries its oldest segment for ever while pg_wal grows.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from fakewal import small_tmpfs
from pgcluster import Cluster, PgInstall, make_shared_dir
from walgcli import WalgSetup, archive_now, archiving_primary, start_daemon, stop_daemon


def _wait_for_archive_failure(cluster: Cluster, timeout: float = 60) -> str:
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


@pytest.mark.parametrize("major", [16, 13])
def test_backup_push_behind_a_split_brain_fails_at_once_naming_it(
    pg_workdir: Path, walg_bin: str, major: int
) -> None:
    """The other copy archived this cluster's next segment first, with its own WAL of the same
    system. wal-push refuses this cluster's copy for ever (same system, different content);
    backup-push waited the whole WALG_STOP_BACKUP_TIMEOUT (30 minutes by default) for its WAL
    and then said only 'check archive_command'. It now fails at the first look at
    pg_stat_archiver with wal-push's own reason, and leaves no backup."""
    install = PgInstall.load(major)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    # Both copies of one template: one database system, the same segment names.
    ours = archiving_primary(walg, install, pg_workdir / "ours", start=False)
    theirs = archiving_primary(walg, install, pg_workdir / "theirs", start=False)
    assert (
        ours.control_data()["Database system identifier"]
        == theirs.control_data()["Database system identifier"]
    )
    theirs.start()
    theirs.psql("CREATE TABLE theirs AS SELECT generate_series(1, 5000) AS g")
    taken = archive_now(theirs)
    theirs.stop()

    ours.start()
    ours.psql("CREATE TABLE ours AS SELECT generate_series(1, 100) AS g")
    ours.psql("SELECT pg_switch_wal()")
    assert _wait_for_archive_failure(ours) == taken

    # wal-verify said MISSING for the segments after the stored one, and nothing of why.
    verified = walg.run(["wal-verify", "integrity", "timeline"], cluster=ours, check=False)
    warning = [line for line in verified.stderr.splitlines() if "archiving is failing" in line]
    assert len(warning) == 1, verified.stderr
    assert taken in warning[0] and "archive_command" in warning[0], warning
    assert json.loads(
        walg.run(["wal-verify", "integrity", "--json"], cluster=ours, check=False).stdout
    ).keys() == {"integrity"}

    backup = walg.run(
        ["backup-push", str(ours.datadir)],
        cluster=ours,
        env={"WALG_STOP_BACKUP_TIMEOUT": "90"},
        check=False,
    )
    assert backup.returncode == 1, backup.stderr
    assert "within the stop timeout" not in backup.stderr, backup.stderr
    assert taken in backup.stderr, backup.stderr
    assert "same database system" in backup.stderr, backup.stderr
    assert json.loads(walg.run(["backup-list", "--json"]).stdout or "[]") == []


def test_the_daemon_logs_a_split_brain_refusal_whole_once_and_its_retries_short(
    pg_workdir: Path, walg_bin: str
) -> None:
    """The same split brain, archive_command through the daemon's client: PostgreSQL retries
    the refused segment three times a second apart, then every minute. The daemon's log gave
    the refusal in full for each call, cut at 400 characters (its advice lost); it now gives
    it whole once, and each retry in a short line referring to it. The client's line in the
    server's log sends the operator to the daemon's log (the protocol carries no reason)."""
    install = PgInstall.load(16)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    theirs = archiving_primary(walg, install, pg_workdir / "theirs", start=False)
    socket = make_shared_dir(pg_workdir / "sock", 0o755) / "walg.sock"
    ours = archiving_primary(walg, install, pg_workdir / "ours", daemon_socket=socket, start=False)
    theirs.start()
    theirs.psql("CREATE TABLE theirs AS SELECT generate_series(1, 5000) AS g")
    taken = archive_now(theirs)
    theirs.stop()

    daemon = start_daemon(walg, socket, ours.datadir)
    ours.start()
    ours.psql("CREATE TABLE ours AS SELECT generate_series(1, 100) AS g")
    ours.psql("SELECT pg_switch_wal()")
    deadline = time.monotonic() + 30
    while int(ours.psql("SELECT failed_count FROM pg_stat_archiver")) < 3:
        assert time.monotonic() < deadline, ours.log_tail()
        time.sleep(0.2)
    time.sleep(2)
    server_log = ours.log_tail(80)
    ours.stop()
    log = stop_daemon(daemon)
    assert "see the daemon's log" in server_log, server_log
    lines = [line for line in log.splitlines() if f"wal-push of {taken} failed" in line]
    assert len(lines) >= 3, log
    whole = [line for line in lines if "same database system" in line]
    assert len(whole) == 1, log
    assert whole[0].endswith("(walg wal-show)"), whole[0]
    assert all("failed again" in line for line in lines if line not in whole), log


def test_a_full_storage_volume_stops_archiving_cleanly_and_it_resumes_once_there_is_room(
    pg_workdir: Path, walg_bin: str
) -> None:
    """The storage folder is a small volume (a 4 MiB tmpfs) that a segment of random rows
    does not fit into: each wal-push names the folder and 'No space left on device' in the
    server's log, nothing of the segment is left in storage (no object a wal-fetch would
    serve, no temporary file), wal-fetch of it exits 74, and once the volume has room
    (remounted larger) PostgreSQL's own retries archive it and the segments after it. The
    same volume remounted read-only: named, and archiving goes on once it is writable."""
    install = PgInstall.load(16)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    owner = walg.store.stat()
    options = f"size=4m,mode=0755,uid={owner.st_uid},gid={owner.st_gid}"
    cluster = archiving_primary(walg, install, pg_workdir / "data", start=False)
    with small_tmpfs(walg.store, options):
        cluster.start()
        archive_now(cluster)  # segment 1 (initdb's, compressible) fits
        cluster.psql(
            "CREATE TABLE noise AS SELECT string_agg(md5(random()::text) || "
            "md5(random()::text), '') AS x FROM generate_series(1, 60000) g GROUP BY g % 100"
        )
        cluster.psql("SELECT pg_switch_wal()")
        failed = _wait_for_archive_failure(cluster)
        # Looked at during the archiver's pause after its three tries: a try under way has
        # its temporary file (never served: not under the object's name).
        deadline = time.monotonic() + 30
        while int(cluster.psql("SELECT failed_count FROM pg_stat_archiver")) < 3:
            assert time.monotonic() < deadline, cluster.log_tail()
            time.sleep(0.2)
        time.sleep(0.5)
        server_log = cluster.log_tail(60)
        assert "No space left on device" in server_log, server_log
        assert str(walg.store) in server_log, server_log
        left = sorted(p.name for p in walg.store.rglob("*") if p.is_file())
        assert not [name for name in left if name.startswith(failed)], left
        fetched = walg.run(["wal-fetch", failed, str(pg_workdir / "fetched")], check=False)
        assert fetched.returncode == 74, fetched.stderr
        assert not (pg_workdir / "fetched").exists()

        subprocess.run(["mount", "-o", "remount,size=256m", str(walg.store)], check=True)
        last = archive_now(cluster, timeout=120)  # the archiver's pause is a minute
        assert last > failed
        stored = sorted(p.name for p in (walg.store / "wal_005").iterdir())
        assert any(name.startswith(failed) for name in stored), stored
        assert not [name for name in stored if ".tmp." in name], stored

        # Read-only (a volume the kernel turned read-only after errors): named likewise, and
        # archiving goes on once it is writable again.
        subprocess.run(["mount", "-o", "remount,ro", str(walg.store)], check=True)
        cluster.psql("SELECT txid_current()")
        cluster.psql("SELECT pg_switch_wal()")
        deadline = time.monotonic() + 30
        while "Read-only file system" not in cluster.log_tail(20):
            assert time.monotonic() < deadline, cluster.log_tail()
            time.sleep(0.2)
        assert f"cannot create a file in {walg.store / 'wal_005'}" in cluster.log_tail(20)
        subprocess.run(["mount", "-o", "remount,rw", str(walg.store)], check=True)
        assert archive_now(cluster, timeout=120) > last
        cluster.stop()
