"""A --target-name no restore point in the archive has, on real clusters.

walg cannot tell before the restore whether the archive holds that restore point (only a WAL
record says), so it restores and says what happens if the target is not met; PostgreSQL 13+
replays the whole archive, then stops with FATAL and does not promote. The README's way on,
the target line taken out of postgresql.auto.conf, recovers to the end of the archive.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from pgcluster import Cluster, CommandError, PgInstall
from walgcli import WalgSetup, archive_now, archiving_primary


@pytest.mark.majors(13, 16)
def test_a_restore_point_that_was_never_made_stops_recovery_at_the_end_of_the_archive(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    walg = WalgSetup.create(walg_bin, pg_workdir)
    src = archiving_primary(walg, pg_install, pg_workdir / "src")
    src.psql("CREATE TABLE marks (phase text PRIMARY KEY)")
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    src.psql("INSERT INTO marks VALUES ('a')")
    src.psql("SELECT pg_create_restore_point('before_b')")
    src.psql("INSERT INTO marks VALUES ('b')")
    archive_now(src)
    src.stop()

    dest = pg_workdir / "restored"
    fetched = walg.run(
        [
            "backup-fetch",
            str(dest),
            "LATEST",
            "--restore-command",
            walg.command("wal-fetch", "%f", "%p"),
            "--target-name",
            "before-b",  # a typo: the point is before_b
        ]
    )
    assert "recovery ended before configured recovery target was reached" in fetched.stderr
    restored = Cluster.from_existing(pg_install, dest, conf={"archive_mode": "off"})
    with contextlib.suppress(CommandError):  # pg_ctl may report the failed start
        restored.start(wait_ready=False)
    deadline = time.monotonic() + 300
    while restored.is_running() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not restored.is_running(), restored.log_tail()
    log = restored.logfile.read_text(errors="replace")
    assert "FATAL:  recovery ended before configured recovery target was reached" in log, log
    assert "selected new timeline ID" not in log, log

    auto = dest / "postgresql.auto.conf"
    auto.write_text(
        "".join(
            line
            for line in auto.read_text().splitlines(keepends=True)
            if not line.startswith("recovery_target_name")
        )
    )
    restored.start(wait_ready=False)
    restored.wait_ready(timeout=300)
    restored.wait_for_recovery_end(timeout=300)
    assert restored.psql("SELECT phase FROM marks ORDER BY phase").splitlines() == ["a", "b"]
    restored.stop()
