"""What a restore leaves in the restored server's data directory for walg to tidy."""

from __future__ import annotations

from pathlib import Path

from pgcluster import Cluster, PgInstall, make_shared_dir, run_as_pg
from walgcli import WalgSetup


def test_backup_push_removes_what_a_finished_recovery_prefetched(
    pg_workdir: Path, walg_bin: str
) -> None:
    """A restore stopped at its target leaves the segments wal-fetch prefetched past it in
    pg_wal/.wal-g/prefetch (one of 16 MiB after a restore to a restore point on PostgreSQL
    16; up to WALG_DOWNLOAD_CONCURRENCY of them). Only archiving the new timeline's .history
    removed them, which a restored server with archive_mode = off never does, and no other
    walg command looked there: pg_wal kept them for good. backup-push, run on a server out
    of recovery, removes them."""
    walg = WalgSetup.create(walg_bin, pg_workdir)
    cluster = Cluster.create(PgInstall.load(15), pg_workdir / "data", conf={"archive_mode": "off"})
    cluster.start()
    # As wal-fetch leaves them: a folder per archive key, a segment in it.
    folder = make_shared_dir(
        cluster.datadir / "pg_wal" / ".wal-g" / "prefetch" / ("0123456789abcdef" * 2), 0o700
    )
    prefetched = folder / "000000010000000000000063"
    run_as_pg(["dd", "if=/dev/zero", f"of={prefetched}", "bs=1M", "count=16", "status=none"])
    other = folder / "not-a-segment"  # never walg's: left alone
    run_as_pg(["touch", str(other)])
    pushed = walg.run(["backup-push", str(cluster.datadir)], cluster=cluster)
    cluster.stop()
    assert not prefetched.exists(), pushed.stderr
    assert other.exists()
    assert "removed 1 prefetched segments left by the recovery" in pushed.stderr, pushed.stderr
