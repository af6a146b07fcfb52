"""WAL archiving and restore paths on real clusters: overwrite protection, prefetch safety,
the look-ahead uploader draining a backlog, and the resident daemon with its tiny client."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pgcluster import Cluster, PgInstall, make_shared_dir, run_as_pg
from walg.ops.wal import marker_name
from walg.ops.wal_push import uploader_running
from walgcli import (
    WalgSetup,
    archive_now,
    archiving_primary,
    fetch_for_recovery,
    normalized_dump,
    restore_and_recover,
    restore_to_target,
    start_daemon,
    start_recovery,
    stop_daemon,
)


@pytest.fixture
def install() -> PgInstall:
    return PgInstall.load(15)


def _segments(cluster: Cluster, count: int) -> list[str]:
    """Write enough to fill ``count`` segments, switching after each; their names."""
    names = []
    cluster.psql("CREATE TABLE IF NOT EXISTS filler (x text)")
    for _ in range(count):
        cluster.psql("INSERT INTO filler SELECT repeat('x', 100) FROM generate_series(1, 1000)")
        names.append(cluster.psql("SELECT pg_walfile_name(pg_switch_wal())"))
    return names


def test_pushing_a_segment_twice_and_a_different_one_under_its_name(
    install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    walg = WalgSetup.create(walg_bin, pg_workdir)
    cluster = Cluster.create(install, pg_workdir / "data", conf={"archive_mode": "off"})
    cluster.start()
    name = _segments(cluster, 1)[0]
    copy_dir = make_shared_dir(pg_workdir / "copies", 0o755)
    segment = copy_dir / name
    shutil.copyfile(cluster.datadir / "pg_wal" / name, segment)
    segment.chmod(0o644)
    cluster.stop()

    walg.run(["wal-push", str(segment)])
    stored = walg.store / "wal_005" / f"{name}.lz4"
    first = stored.read_bytes()
    first_mtime = stored.stat().st_mtime_ns

    again = walg.run(["wal-push", str(segment)])
    assert "already archived with equal content" in again.stderr
    assert stored.stat().st_mtime_ns == first_mtime

    data = bytearray(segment.read_bytes())
    data[5000] ^= 0xFF
    segment.write_bytes(bytes(data))
    different = walg.run(["wal-push", str(segment)], check=False)
    assert different.returncode == 1
    assert "different content" in different.stderr
    assert stored.read_bytes() == first
    assert stored.stat().st_mtime_ns == first_mtime


@pytest.fixture
def archived(
    install: PgInstall, pg_workdir: Path, walg_bin: str
) -> Iterator[tuple[WalgSetup, list[str]]]:
    walg = WalgSetup.create(walg_bin, pg_workdir)
    cluster = archiving_primary(walg, install, pg_workdir / "src")
    names = _segments(cluster, 5)
    archive_now(cluster)
    cluster.stop()
    yield walg, names


def _fetch(walg: WalgSetup, name: str, dest: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return walg.run(["wal-fetch", *extra, name, str(dest)], env={"WALG_DOWNLOAD_CONCURRENCY": "4"})


def test_prefetch_serves_next_segments_but_never_a_truncated_one(
    archived: tuple[WalgSetup, list[str]], pg_workdir: Path
) -> None:
    walg, names = archived
    pg_wal = make_shared_dir(pg_workdir / "restore" / "pg_wal", 0o700)
    reference = make_shared_dir(pg_workdir / "reference", 0o755)
    for name in names[:4]:
        walg.run(["wal-fetch", "--no-prefetch", name, str(reference / name)])

    _fetch(walg, names[0], pg_wal / "RECOVERYXLOG")
    # One folder per archive under .wal-g/prefetch (named by the destination key).
    folders = pg_wal / ".wal-g" / "prefetch"
    deadline = time.monotonic() + 30
    while not any(
        all((folder / n).exists() for n in names[1:4])
        for folder in (folders.iterdir() if folders.exists() else ())
    ):
        assert time.monotonic() < deadline, list(folders.rglob("*"))
        time.sleep(0.05)
    (prefetch,) = folders.iterdir()

    # A prefetched file served as is.
    _fetch(walg, names[1], pg_wal / "RECOVERYXLOG", "--no-prefetch")
    assert (pg_wal / "RECOVERYXLOG").read_bytes() == (reference / names[1]).read_bytes()
    assert not (prefetch / names[1]).exists(), "served by moving the prefetched file"

    # A prefetched file truncated on disk is discarded and the segment downloaded again.
    victim = prefetch / names[2]
    with open(victim, "r+b") as handle:
        handle.truncate(1 << 20)
    result = _fetch(walg, names[2], pg_wal / "RECOVERYXLOG", "--no-prefetch")
    assert "discarding invalid or foreign prefetched WAL file" in result.stderr
    assert (pg_wal / "RECOVERYXLOG").read_bytes() == (reference / names[2]).read_bytes()

    # A prefetched file holding another segment's bytes (stale) is not served either.
    shutil.copyfile(reference / names[1], prefetch / names[3])
    result = _fetch(walg, names[3], pg_wal / "RECOVERYXLOG", "--no-prefetch")
    assert "discarding invalid or foreign prefetched WAL file" in result.stderr
    assert (pg_wal / "RECOVERYXLOG").read_bytes() == (reference / names[3]).read_bytes()


def test_lookahead_drains_a_backlog_without_touching_ready_files(
    install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    walg = WalgSetup.create(walg_bin, pg_workdir, WALG_UPLOAD_CONCURRENCY="4")
    cluster = archiving_primary(walg, install, pg_workdir / "src", archive_command="false")
    names = _segments(cluster, 8)
    ready = sorted(p.name for p in (cluster.datadir / "pg_wal" / "archive_status").glob("*.ready"))
    assert len(ready) >= 8
    cluster.set_conf({"archive_command": walg.command("wal-push", "%p")})
    cluster.reload()
    deadline = time.monotonic() + 60
    while cluster.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < names[-1]:
        assert time.monotonic() < deadline, cluster.log_tail()
        time.sleep(0.1)
    for name in names:
        assert (walg.store / "wal_005" / f"{name}.lz4").exists()
    # PostgreSQL's archiver, not walg, turned every .ready file into .done: its count of
    # archive_command calls that succeeded covers each one. A .ready file renamed by the
    # uploader would be skipped by the archiver (it checks the file before each call) and
    # missing from this count, though its segment is stored.
    archived = int(cluster.psql("SELECT archived_count FROM pg_stat_archiver"))
    assert archived >= len(ready), (archived, ready)
    # The detached uploader (walg wal-push-ahead) archived ahead; it says so in the server
    # log when it exits, a second after it runs out of work.
    status = cluster.datadir / "pg_wal" / "walg_data" / "walg_archive_status"
    while uploader_running(str(status)):
        assert time.monotonic() < deadline + 30, "the detached uploader did not exit"
        time.sleep(0.1)
    log = cluster.log_tail(400)
    assert "WAL files ahead of time" in log
    assert status.is_dir()
    # Markers are removed by a wal-push of that name (or, once PostgreSQL is done with the
    # file, by the next uploader): none left means PostgreSQL's own calls ended on them.
    # A marker is named <segment>.<destination key>: match it by the segment it stands for.
    marked = {p.name: marker_name(p.name) for p in status.iterdir()}
    left = [entry for entry, name in marked.items() if name is not None and name <= names[-1]]
    assert not left, "markers are consumed"
    assert not list(status.glob("0*.lock")), "no per-file lock is left behind"
    cluster.stop()


SEG99 = "pg_wal/000000010000000000000099"


@dataclass(frozen=True)
class Restored:
    """What a restore through the daemon left to check: the dump and the server log's tail."""

    dump: str
    tail: str


def _restore_through_daemon(
    walg: WalgSetup,
    install: PgInstall,
    pg_workdir: Path,
    socket: Path,
    client: str,
    before_start: Callable[[], None] | None = None,
) -> tuple[Restored, str]:
    """backup-fetch LATEST, then recovery with ``client SOCKET wal-fetch %f %p`` against a
    daemon serving the restored PGDATA; the recovered server's dump, and the daemon's log."""
    dest = pg_workdir / "restored"
    command = f"{client} {socket} wal-fetch %f %p"
    restored = restore_to_target(install, walg, dest, restore_command=command, until=None)
    daemon = start_daemon(walg, socket, dest)
    try:
        if before_start is not None:
            before_start()
        start_recovery(restored)
        result = Restored(restored.pg_dumpall(), restored.log_tail(400))
        assert "restored log file" in result.tail
        restored.stop()
    finally:
        log = stop_daemon(daemon)
    return result, log


def test_a_standby_whose_daemon_has_a_wrong_prefix_is_told_in_the_daemon_s_log(
    install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    """A standby restored from a backup, its daemon restarted with a wrong, empty prefix (a
    configuration mistake): every fetch is answered "not in the archive", the standby waits
    for ever, and nothing said so anywhere. The daemon's log now does; with the right prefix
    the same standby goes on."""
    walg = WalgSetup.create(walg_bin, pg_workdir)
    cluster = archiving_primary(walg, install, pg_workdir / "src")
    cluster.psql("CREATE TABLE marks AS SELECT 1 AS i")
    walg.run(["backup-push", str(pg_workdir / "src")], cluster=cluster)
    archive_now(cluster)
    cluster.stop()

    shared = make_shared_dir(pg_workdir / "sock", 0o755)
    socket = shared / "fetch.sock"
    wrong = make_shared_dir(pg_workdir / "wrong-store", 0o755)
    log_file = shared / "daemon.log"
    dest = pg_workdir / "standby"
    client = str(Path(walg_bin).with_name("walg-daemon-client"))
    command = f"{client} {socket} wal-fetch %f %p"
    walg.run(["backup-fetch", str(dest), "LATEST", "--standby", "--restore-command", command])
    standby = Cluster.from_existing(install, dest, conf={"archive_mode": "off"})
    env = {"WALG_FILE_PREFIX": str(wrong), "WALG_LOG_DESTINATION": str(log_file)}
    daemon = start_daemon(walg, socket, dest, env=env)
    # pg_ctl -w returns once the standby is consistent: only after the daemon is mended.
    failed: list[BaseException] = []

    def start() -> None:
        try:
            standby.start(timeout=300, wait_ready=False)
        except BaseException as exc:
            failed.append(exc)

    starting = threading.Thread(target=start, daemon=True)
    try:
        starting.start()
        deadline = time.monotonic() + 120
        while "holds no backups and no WAL at all" not in (
            log := log_file.read_text() if log_file.exists() else ""
        ):
            assert time.monotonic() < deadline, (log, standby.log_tail())
            time.sleep(0.2)
        assert "WALG_FILE_PREFIX" in log and str(wrong) in log, log
    finally:
        stop_daemon(daemon)
    daemon = start_daemon(walg, socket, dest)
    try:
        starting.join(300)
        assert not starting.is_alive() and not failed, (failed, standby.log_tail())
        standby.wait_ready(timeout=300)
        assert standby.psql("SELECT i FROM marks") == "1"
        standby.stop()
    finally:
        stop_daemon(daemon)


def test_daemon_archives_and_restores_through_the_tiny_client(
    install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    walg = WalgSetup.create(walg_bin, pg_workdir)
    # PostgreSQL archives through the compiled client (scripts/setup.sh builds it) and
    # restores through the Python one (the script would run the compiled one beside it
    # unless told not to): both are proven against a real server.
    native = str(Path(walg_bin).with_name("walg-daemon-client-native"))
    client = str(Path(walg_bin).with_name("walg-daemon-client"))
    sockets = make_shared_dir(pg_workdir / "sock", 0o755)
    src_dir = pg_workdir / "src"
    push_socket = sockets / "push.sock"
    cluster = archiving_primary(walg, install, src_dir, daemon_socket=push_socket, start=False)
    daemon = start_daemon(walg, push_socket, src_dir, env={"WALG_LOG_LEVEL": "DEVEL"})
    try:
        cluster.start()
        cluster.pgbench(["-i", "-s", "3", "-q"])
        walg.run(["backup-push", str(src_dir)], cluster=cluster)
        cluster.pgbench(["-n", "-t", "3000", "-c", "2"])
        archive_now(cluster)
        expected = normalized_dump(cluster.pg_dumpall())
        cluster.stop()
    finally:
        push_log = stop_daemon(daemon)
    # The follower read segments while PostgreSQL wrote them, and every one it committed was
    # checked against the finished file (the restore below proves their content).
    assert "WAL follower archived" in push_log, push_log[-3000:]
    assert "changed after it was read" not in push_log

    # Daemon down: the client says so and fails, so PostgreSQL keeps the WAL and retries.
    for either in (native, client):
        down = run_as_pg(
            ["env", "WALG_DAEMON_CLIENT_PYTHON=1", either, str(push_socket), "wal-push", SEG99],
            check=False,
        )
        assert down.returncode == 1
        assert "not running" in down.stderr

    server_log, log = _restore_through_daemon(
        walg, install, pg_workdir, sockets / "fetch.sock", f"WALG_DAEMON_CLIENT_PYTHON=1 {client}"
    )
    assert normalized_dump(server_log.dump) == expected
    assert "fetching directly" not in server_log.tail, "served by the daemon"
    # The daemon's line for a request that failed (walg.ops.daemon._request names it).
    assert not re.search(r"(wal-fetch|wal-push|check)( of \S+| request) failed: ", log), log
    listing = json.loads(walg.run(["backup-list", "--json"]).stdout)
    assert len(listing) == 1


WAL_G_CLIENT_ENV = "WALG_TEST_WAL_G_DAEMON_CLIENT"


@pytest.mark.skipif(
    not os.environ.get(WAL_G_CLIENT_ENV),
    reason=f"{WAL_G_CLIENT_ENV} names no WAL-G walg-daemon-client (built from WAL-G's "
    "cmd/daemonclient; its sources are not part of this repository)",
)
def test_wal_g_own_daemon_client_archives_and_restores(
    install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    """A WAL-G user keeps WAL-G's compiled client in archive_command and restore_command."""
    wal_g_client = os.environ[WAL_G_CLIENT_ENV]
    walg = WalgSetup.create(walg_bin, pg_workdir)
    sockets = make_shared_dir(pg_workdir / "sock", 0o755)
    src_dir = pg_workdir / "src"
    push_socket = sockets / "push.sock"
    cluster = archiving_primary(
        walg,
        install,
        src_dir,
        # %f, as WAL-G documents it (the daemon takes %p as well; the refusal below uses it).
        archive_command=f"{wal_g_client} {push_socket} wal-push %f",
        start=False,
    )
    daemon = start_daemon(walg, push_socket, src_dir)
    try:
        cluster.start()
        cluster.pgbench(["-i", "-s", "2", "-q"])
        walg.run(["backup-push", str(src_dir)], cluster=cluster)
        cluster.pgbench(["-n", "-t", "2000", "-c", "2"])
        last = archive_now(cluster)
        expected = normalized_dump(cluster.pg_dumpall())
        cluster.stop()
        # Different content under an archived name (the server is down, and this copy of it
        # is never started again): WAL-G's client reports the daemon's refusal.
        run_as_pg(["sh", "-c", f"head -c 16777216 /dev/zero > {src_dir}/pg_wal/{last}"])
        refused = run_as_pg(
            [wal_g_client, str(push_socket), "wal-push", f"pg_wal/{last}"], check=False
        )
        assert refused.returncode == 1, refused
    finally:
        stop_daemon(daemon)

    fetch_socket = sockets / "fetch.sock"

    def past_the_end() -> None:
        # Past the end of the archive: WAL-G's client exits 74, as PostgreSQL expects. DEST is
        # relative to PGDATA, as %p; the daemon refuses destinations outside its pg_wal.
        missing = run_as_pg(
            [wal_g_client, str(fetch_socket), "wal-fetch", "0000000100000000000000FE", "pg_wal/x"],
            check=False,
        )
        assert missing.returncode == 74, missing

    restored, _ = _restore_through_daemon(
        walg, install, pg_workdir, fetch_socket, wal_g_client, before_start=past_the_end
    )
    assert normalized_dump(restored.dump) == expected


def test_a_cluster_with_64_mib_segments_is_restored_with_no_segment_size_set(
    install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    """initdb --wal-segsize=64 and WALG_PG_WAL_SIZE not set (WAL-G needs it only for its
    prefetch): archived, restored through wal-fetch with prefetch, and the same data."""
    walg = WalgSetup.create(walg_bin, pg_workdir, WALG_DOWNLOAD_CONCURRENCY="3")
    src = archiving_primary(walg, install, pg_workdir / "src", initdb_args=("--wal-segsize=64",))
    src.pgbench(["-i", "-s", "1", "-q"])
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    names = []
    for _ in range(3):
        src.pgbench(["-n", "-t", "300", "-c", "2"])
        names.append(archive_now(src))
    # 64 MiB segments are named by that size: 64 of them per 4 GiB, not 256.
    assert all(int(n[16:], 16) < 0x40 for n in names), names
    expected = normalized_dump(src.pg_dumpall())
    src.stop()

    restored = restore_and_recover(install, pg_workdir, walg)
    assert normalized_dump(restored.pg_dumpall()) == expected
    log = restored.log_tail()
    assert "more than" not in log and "FATAL" not in log, log
    restored.stop()


@pytest.mark.parametrize("python", [False, True], ids=["native", "python"])
def test_daemon_restarts_do_not_stop_a_recovery(
    install: PgInstall, pg_workdir: Path, walg_bin: str, python: bool
) -> None:
    """The daemon is restarted (SIGTERM, a new one half a second later; systemctl restart)
    three times while a server recovers through it. Fetches queued at the SIGTERM are still
    answered, and those made while no daemon listens run walg directly. The server's
    environment has no walg settings and the daemon reads a config file, so restore_command
    names that file for the direct fetch (WALG_CONFIG_PATH), as the README says. Recovery
    replays every segment; a fetch failing with 128 used to stop the server instead."""
    walg = WalgSetup.create(walg_bin, pg_workdir)
    src_dir = pg_workdir / "src"
    cluster = archiving_primary(walg, install, src_dir)
    cluster.psql("CREATE TABLE marks (i int PRIMARY KEY)")
    walg.run(["backup-push", str(src_dir)], cluster=cluster)
    rows = 30
    for i in range(rows):
        cluster.psql(f"INSERT INTO marks VALUES ({i}); SELECT pg_switch_wal();")
    archive_now(cluster)
    cluster.stop()

    client = str(Path(walg_bin).with_name("walg-daemon-client"))
    prefix = "WALG_DAEMON_CLIENT_PYTHON=1 " if python else ""
    socket = make_shared_dir(pg_workdir / "sock", 0o755) / "fetch.sock"
    dest = pg_workdir / "restored"
    # The pause makes recovery outlast the restarts.
    command = f"sleep 0.2; {prefix}WALG_CONFIG_PATH={walg.config} {client} {socket} wal-fetch %f %p"
    restored = restore_to_target(install, walg, dest, restore_command=command, until=None)
    daemon = start_daemon(walg, socket, dest)
    try:
        restored.start(wait_ready=False)
        for _ in range(3):
            time.sleep(1.5)
            stop_daemon(daemon)
            time.sleep(0.5)
            daemon = start_daemon(walg, socket, dest)
        restored.wait_ready(timeout=300)
        restored.wait_for_recovery_end(timeout=300)
        counted = restored.psql("SELECT count(*), max(i) FROM marks")
        tail = restored.log_tail(400)
        restored.stop()
    finally:
        stop_daemon(daemon)
    assert counted == f"{rows}|{rows - 1}", tail
    assert "exit code 128" not in tail and "FATAL" not in tail, tail
    # The restarts fell within the recovery: some fetches found no daemon and ran walg with
    # the configuration named in restore_command.
    assert "fetching directly" in tail, tail


def test_a_daemon_on_failing_storage_backs_off_and_still_answers_postgresql(
    install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    """Storage refuses every write (a full disk): the daemon's look-ahead and follower must
    not retry each segment many times a second, logging each failure; PostgreSQL's own calls
    are still tried and fail. Once storage works again everything is archived."""
    walg = WalgSetup.create(walg_bin, pg_workdir, WALG_UPLOAD_CONCURRENCY="3")
    socket = make_shared_dir(pg_workdir / "sock", 0o755) / "push.sock"
    src_dir = pg_workdir / "src"
    cluster = archiving_primary(walg, install, src_dir, daemon_socket=socket, start=False)
    full = json.dumps([{"op": "write", "key": "^wal_005/", "fail": "No space left on device"}])
    daemon = start_daemon(walg, socket, src_dir, env={"WALG_FAULT_INJECTION": full})
    try:
        cluster.start()
        names = _segments(cluster, 3)
        cluster.psql("INSERT INTO filler SELECT repeat('y', 100) FROM generate_series(1, 20000)")
        time.sleep(8)
        assert int(cluster.psql("SELECT failed_count FROM pg_stat_archiver")) >= 1
        assert cluster.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") == ""
    finally:
        log = stop_daemon(daemon)
    background = [
        line for line in log.splitlines() if "look-ahead upload of" in line or "follower" in line
    ]
    # One warning each, perhaps one more after a minute's worth of retries on a slow machine
    # (before: about 80 a second).
    assert 1 <= len(background) <= 4, log[-3000:]
    assert f"wal-push of {names[0]} failed: " in log and "No space left on device" in log
    daemon = start_daemon(walg, socket, src_dir)
    try:
        names += _segments(cluster, 1)
        deadline = time.monotonic() + 120
        while (
            cluster.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < names[-1]
        ):
            assert time.monotonic() < deadline, cluster.log_tail()
            time.sleep(0.2)
        for name in names:
            assert (walg.store / "wal_005" / f"{name}.lz4").exists()
        cluster.stop()
    finally:
        stop_daemon(daemon)


@pytest.fixture
def mount_small_pg_wal(pg_workdir: Path) -> Iterator[Callable[[Path], None]]:
    """Mounts a 112 MiB tmpfs on an (empty) pg_wal; unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    import pwd

    pw = pwd.getpwnam("pgtest")
    mounted: list[Path] = []

    def mount(pg_wal: Path) -> None:
        options = f"size=112m,mode=0700,uid={pw.pw_uid},gid={pw.pw_gid}"
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(pg_wal)], check=True)
        mounted.append(pg_wal)

    try:
        yield mount
    finally:
        from pgcluster import stop_clusters_under

        stop_clusters_under(pg_workdir, mode="immediate")
        for pg_wal in mounted:
            subprocess.run(["umount", str(pg_wal)], check=True)


def test_prefetch_leaves_room_for_the_segment_recovery_asks_for(
    install: PgInstall,
    pg_workdir: Path,
    walg_bin: str,
    mount_small_pg_wal: Callable[[Path], None],
) -> None:
    """A restore whose pg_wal has room for what PostgreSQL keeps (112 MiB, restartpoints
    every 32 MB) but not for ten more prefetched segments. The prefetch filled it, wal-fetch of
    the segment recovery asked for failed for want of space (exit 128: recovery stops), and
    every restart prefetched again and failed the same way: the restore could not finish,
    while it does with WALG_DOWNLOAD_CONCURRENCY=1."""
    walg = WalgSetup.create(walg_bin, pg_workdir, WALG_DOWNLOAD_CONCURRENCY="10")
    src = archiving_primary(walg, install, pg_workdir / "src")
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    src.psql("CREATE TABLE filler (x text)")
    for _ in range(14):
        src.psql("INSERT INTO filler SELECT md5(random()::text) FROM generate_series(1, 40000)")
        src.psql("SELECT pg_switch_wal()")
        src.psql("CHECKPOINT")  # a restartpoint for the restore: it keeps few segments
    archive_now(src)
    expected = normalized_dump(src.pg_dumpall())
    src.stop()

    dest = pg_workdir / "restored"
    fetch_for_recovery(walg, dest)
    assert not list((dest / "pg_wal").iterdir())
    mount_small_pg_wal(dest / "pg_wal")
    restored = Cluster.from_existing(
        install,
        dest,
        conf={"archive_mode": "off", "max_wal_size": "32MB", "min_wal_size": "32MB"},
    )
    start_recovery(restored, timeout=120)
    assert normalized_dump(restored.pg_dumpall()) == expected
    assert "No space left" not in restored.log_tail(400)
    assert "from archive" in restored.log_tail(400)
    restored.stop()


def test_a_daemon_started_after_backup_fetch_archives_ahead_once_promoted(
    install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    """backup-fetch restores pg_wal empty (PostgreSQL makes archive_status when it starts), so
    a daemon started for the restore's restore_command, as the README runs it, found no
    archive_status: its look-ahead never started, and once the server was promoted every
    segment waited for PostgreSQL's own archive_command, for the daemon's whole life. Here
    archive_command fails, so that the .ready files stay: the daemon's look-ahead archives the
    new timeline's segments all the same."""
    walg = WalgSetup.create(walg_bin, pg_workdir)
    src_dir = pg_workdir / "src"
    cluster = archiving_primary(walg, install, src_dir)
    walg.run(["backup-push", str(src_dir)], cluster=cluster)
    archive_now(cluster)
    cluster.stop()

    client = str(Path(walg_bin).with_name("walg-daemon-client"))
    socket = make_shared_dir(pg_workdir / "sock", 0o755) / "walg.sock"
    dest = pg_workdir / "restored"
    command = f"WALG_CONFIG_PATH={walg.config} {client} {socket} wal-fetch %f %p"
    fetch_for_recovery(walg, dest, restore_command=command)
    assert not (dest / "pg_wal" / "archive_status").exists()
    daemon = start_daemon(
        walg, socket, dest, env={"WALG_UPLOAD_CONCURRENCY": "3", "WALG_DAEMON_FOLLOW_WAL": "false"}
    )
    try:
        restored = Cluster.from_existing(
            install, dest, conf={"archive_mode": "on", "archive_command": "false"}
        )
        restored.start()
        restored.wait_for_recovery_end(timeout=120)
        names = _segments(restored, 3)
        wanted = [walg.store / "wal_005" / f"{name}.lz4" for name in names]
        deadline = time.monotonic() + 30
        while not all(path.exists() for path in wanted) and time.monotonic() < deadline:
            time.sleep(0.1)
        archived = [path.name for path in wanted if path.exists()]
        tail = restored.log_tail()
        restored.stop()
    finally:
        log = stop_daemon(daemon)
    assert archived == [path.name for path in wanted], (log, tail)
