"""A cluster made with ``initdb --wal-segsize=128``: archived and restored with bounded memory.

Segments above walg.ops.wal_push.WINDOWED_ABOVE (64 MiB) are compressed a window at a time,
by ``wal-push`` and by the daemon's WAL follower. Both mapped the whole segment before: with
1 GiB segments a cold ``wal-push`` peaked at about 1030 MB of RSS and the daemon at about
1021 MB. Here the cluster archives through ``walg wal-push %p`` (each call's peak RSS from
``/usr/bin/time``), then through the daemon (its ``VmHWM``), and is restored from that
archive through ``wal-fetch``: same data, and no process near the segment's size.
"""

from __future__ import annotations

from pathlib import Path

from pgcluster import Cluster, PgInstall, make_shared_dir
from walgcli import (
    WalgSetup,
    archive_now,
    archiving_primary,
    normalized_dump,
    restore_and_recover,
    start_daemon,
    stop_daemon,
)

SEGMENT_MB = 128
BOUND_MB = 96  # each process's peak RSS; mapped whole, a segment alone was 128 MB of it


def fill_a_segment(cluster: Cluster) -> None:
    """A segment's worth of WAL (1 MB logical messages), then a row for the dump to show."""
    cluster.psql(
        f"DO $$ BEGIN FOR i IN 1..{SEGMENT_MB} LOOP PERFORM pg_logical_emit_message(false, "
        "'fill', repeat(md5(i::text), 32768)); END LOOP; END $$;"
    )
    cluster.psql("INSERT INTO marks SELECT coalesce(max(i), 0) + 1 FROM marks")


def vm_hwm_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


def test_128_mib_segments_are_archived_and_restored_in_bounded_memory(
    pg_workdir: Path, walg_bin: str
) -> None:
    walg = WalgSetup.create(walg_bin, pg_workdir)
    peaks = make_shared_dir(pg_workdir / "peaks", 0o777) / "wal-push.kb"
    timed_push = f"/usr/bin/time -f %%M -a -o {peaks} {walg.command('wal-push', '%p')}"
    install = PgInstall.load(16)
    cluster = archiving_primary(
        walg,
        install,
        pg_workdir / "src",
        archive_command=timed_push,
        conf={"max_wal_size": "1GB"},
        initdb_args=(f"--wal-segsize={SEGMENT_MB}",),
        start=False,
    )
    socket = make_shared_dir(pg_workdir / "sock", 0o755) / "push.sock"
    cluster.start()
    cluster.pgbench(["-i", "-s", "1", "-q"])
    cluster.psql("CREATE TABLE marks (i int)")
    walg.run(["backup-push", str(cluster.datadir)], cluster=cluster)
    # Cold wal-push, one finished segment per call (no backlog: the parallel path).
    for _ in range(2):
        fill_a_segment(cluster)
        archive_now(cluster, timeout=180)
    # Then through the daemon, whose follower reads each segment as it is written.
    daemon = start_daemon(walg, socket, cluster.datadir, env={"WALG_LOG_LEVEL": "DEVEL"})
    try:
        native = str(Path(walg_bin).with_name("walg-daemon-client-native"))
        cluster.set_conf({"archive_command": f"{native} {socket} wal-push %p"})
        cluster.reload()
        for _ in range(2):
            fill_a_segment(cluster)
            archive_now(cluster, timeout=180)
        expected = normalized_dump(cluster.pg_dumpall())
        daemon_peak = vm_hwm_mb(daemon.pid)
        cluster.stop()
    finally:
        log = stop_daemon(daemon)
    assert "WAL follower archived" in log, log[-3000:]
    assert "WARNING" not in log and "ERROR" not in log, log[-3000:]
    push_peaks = [int(line) / 1024 for line in peaks.read_text().split() if line.isdigit()]
    assert len(push_peaks) >= 3, push_peaks  # the backup's segments, at least
    assert max(*push_peaks, daemon_peak) < BOUND_MB, (push_peaks, daemon_peak)

    restored = restore_and_recover(install, pg_workdir, walg)
    assert normalized_dump(restored.pg_dumpall()) == expected
    assert restored.psql("SELECT max(i) FROM marks") == "4"
    restored.stop()
