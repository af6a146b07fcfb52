"""A --target-name no restore point in the archive has, on real clusters.

walg cannot tell before the restore whether the archive holds that restore point (only a WAL
record says), so it restores and says what happens if the target is not met; PostgreSQL 13+
replays the whole archive, then stops with FATAL and does not promote. The README's way on,
the target line taken out of postgresql.auto.conf, recovers to the end of the archive.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pgcluster import Cluster, PgInstall
from walgcli import WalgSetup, archive_now, archiving_primary, fetch_for_recovery, start_recovery


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
    # A typo: the point is before_b.
    fetched = fetch_for_recovery(walg, dest, "--target-name", "before-b")
    assert "recovery ended before configured recovery target was reached" in fetched.stderr
    restored = Cluster.from_existing(pg_install, dest, conf={"archive_mode": "off"})
    start_recovery(restored, "stopped")
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
    start_recovery(restored)
    assert restored.psql("SELECT phase FROM marks ORDER BY phase").splitlines() == ["a", "b"]
    restored.stop()
