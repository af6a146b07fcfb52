"""A standby fed only from the archive (``backup-fetch --standby``, a ``restore_command``
through the daemon's compiled client, no ``primary_conninfo``), as a DBA runs one for
disaster recovery: it keeps up with its primary, survives its daemon being killed mid-replay,
and follows a promoted server onto its new timeline through the archived history file while
the old timeline's last segment is archived as ``.partial``."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from pgcluster import Cluster, PgInstall, make_shared_dir
from walgcli import WalgSetup, archive_now, restore_to_target, start_daemon, stop_daemon

CHECK = "SELECT count(*), sum(i), md5(string_agg(x, ',' ORDER BY i, x)) FROM t"


def _write(cluster: Cluster, batch: int, rows: int = 20000) -> None:
    cluster.psql(f"INSERT INTO t SELECT {batch}, md5(g::text) FROM generate_series(1, {rows}) g")


def _caught_up(standby: Cluster, expected: str, timeout: float = 90) -> None:
    """Wait until the hot standby answers CHECK as ``expected``."""
    deadline = time.monotonic() + timeout
    got = ""
    while time.monotonic() < deadline:
        try:
            got = standby.psql(CHECK)
        except Exception as exc:  # not yet consistent, or t not replayed yet
            got = str(exc).splitlines()[-1]
        if got == expected:
            return
        time.sleep(0.3)
    raise AssertionError(f"standby at {got!r}, primary at {expected!r}\n{standby.log_tail(40)}")


def test_an_archive_only_standby_keeps_up_survives_its_daemon_and_follows_a_promotion(
    pg_workdir: Path, walg_bin: str
) -> None:
    install = PgInstall.load(16)
    walg = WalgSetup.create(walg_bin, pg_workdir)
    archiving = {"archive_mode": "on", "archive_command": walg.command("wal-push", "%p")}
    primary = Cluster.create(install, pg_workdir / "primary", conf=archiving)
    primary.start()
    primary.psql("CREATE TABLE t (i int, x text)")
    walg.run(["backup-push", str(primary.datadir)], cluster=primary)
    # The failover target streams from the primary; the standby under test only reads the
    # archive.
    replica = primary.make_standby(
        pg_workdir / "replica",
        conf={**archiving, "restore_command": walg.command("wal-fetch", "%f", "%p")},
    )
    native = str(Path(walg_bin).with_name("walg-daemon-client-native"))
    socket = make_shared_dir(pg_workdir / "sock", 0o755) / "standby.sock"
    # The configuration reaches the client's direct fetch while the daemon is down (README).
    command = f"WALG_CONFIG_PATH={walg.config} {native} {socket} wal-fetch %f %p"
    dest = pg_workdir / "standby"
    # At the archive's end the standby asks again every wal_retrieve_retry_interval (5 s by
    # default); 1 s lets it see each new segment sooner, and the quiet wait below spans
    # several of its calls.
    standby = restore_to_target(
        install,
        walg,
        dest,
        "--standby",
        restore_command=command,
        conf={"wal_retrieve_retry_interval": "1s"},
        until=None,
    )
    daemon = start_daemon(walg, socket, dest)
    try:
        standby.start(wait_ready=False)
        for batch in range(3):
            _write(primary, batch)
            archive_now(primary)
        _caught_up(standby, primary.psql(CHECK))

        # SIGKILL: no answer, no SIGTERM clean-up. The clients run walg directly; replay
        # goes on with no gap.
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait()
        for batch in range(3, 5):
            _write(primary, batch)
            archive_now(primary)
        _caught_up(standby, primary.psql(CHECK))
        daemon = start_daemon(walg, socket, dest)

        # Failover: the primary crashes mid-segment (that WAL reached only the replica),
        # the replica is promoted onto timeline 2 and archives its history, the old
        # timeline's segment as .partial and its own WAL.
        _write(primary, 5)
        primary.wait_for_replay(replica)
        last = primary.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
        primary.stop(mode="immediate")
        replica.promote()
        _write(replica, 6)
        archive_now(replica)
        assert (walg.store / "wal_005" / f"{last}.partial.lz4").exists()
        assert (walg.store / "wal_005" / "00000002.history.lz4").exists()
        expected = replica.psql(CHECK)
        _caught_up(standby, expected)
        # It waits at the end of the archive: the daemon answers "not there" quietly.
        time.sleep(3)
        log = standby.logfile.read_text()
        assert "new target timeline is 2" in log, log[-3000:]
        assert standby.psql(CHECK) == expected
        standby.stop()
    finally:
        daemon_log = stop_daemon(daemon)
    assert "FATAL" not in log and "exit code 128" not in log, log[-3000:]
    # Only the fallback during the kill speaks in the server's log: nothing while it waits.
    tail = log[log.index("new target timeline is 2") :]
    assert "walg" not in tail, tail
    assert "ERROR" not in daemon_log, daemon_log
