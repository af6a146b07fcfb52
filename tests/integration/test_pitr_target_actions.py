"""--target-action pause and shutdown land on the target too, and the documented way on works.

With pause the restored server stays in recovery at the target, readable, until
pg_wal_replay_resume() promotes it there. With shutdown it stops at the target, and keeps
recovery.signal and the target: started again as it is, it would stop again, and without the
target it would replay past it, so the way on is the action set to promote in the restored
postgresql.auto.conf, the target kept.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pgcluster import Cluster, PgInstall
from walgcli import (
    Outcome,
    WalgSetup,
    archive_now,
    archiving_primary,
    restore_to_target,
    start_recovery,
)


def _phases(cluster: Cluster) -> list[str]:
    return cluster.psql("SELECT phase FROM marks ORDER BY phase").splitlines()


@pytest.mark.majors(13, 16)
def test_pause_and_shutdown_stop_at_the_target(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    walg = WalgSetup.create(walg_bin, pg_workdir)
    src = archiving_primary(walg, pg_install, pg_workdir / "src")
    src.psql("CREATE TABLE marks (phase text PRIMARY KEY)")
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    src.psql("INSERT INTO marks VALUES ('a')")
    target = src.psql("SELECT clock_timestamp()")
    time.sleep(0.2)
    src.psql("INSERT INTO marks VALUES ('b')")
    archive_now(src)
    src.stop()

    def restore(action: str, until: Outcome) -> Cluster:
        flags = ("--target-time", target, "--target-action", action)
        return restore_to_target(pg_install, walg, pg_workdir / action, *flags, until=until)

    paused = restore("pause", "paused")
    assert paused.psql("SELECT pg_is_in_recovery()") == "t"
    assert _phases(paused) == ["a"]
    paused.psql("SELECT pg_wal_replay_resume()")
    paused.wait_for_recovery_end(timeout=300)
    assert _phases(paused) == ["a"]
    paused.stop()

    stopped = restore("shutdown", "stopped")
    assert "recovery stopping before commit" in stopped.logfile.read_text(errors="replace")
    assert (stopped.datadir / "recovery.signal").exists()
    auto = stopped.datadir / "postgresql.auto.conf"
    text = auto.read_text()
    assert "recovery_target_action = 'shutdown'" in text
    auto.write_text(
        text.replace("recovery_target_action = 'shutdown'", "recovery_target_action = 'promote'")
    )
    start_recovery(stopped)
    assert _phases(stopped) == ["a"]
    stopped.stop()
