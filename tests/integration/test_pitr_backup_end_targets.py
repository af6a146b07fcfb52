"""A target exactly at a backup's end, on real clusters.

backup-fetch LATEST takes a backup for a time or LSN target when it ended at or before the
target (its sentinel's FinishTime and FinishLSN): at equality too. PostgreSQL must then reach
the target after the backup is consistent, inclusive or not, and stop there: an LSN target at
the backup's end stops at the end-of-backup point, a time target at its finish time stops
before the first commit after it. One nanosecond or byte earlier, no backup can reach it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pgcluster import PgInstall
from walg.core.lsn import format_lsn
from walgcli import WalgSetup, archive_now, archiving_primary, fetch_for_recovery, restore_to_target


@pytest.mark.majors(13, 16)
def test_a_target_at_the_backup_s_end_lands_there_and_one_before_is_refused(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    walg = WalgSetup.create(walg_bin, pg_workdir)
    src = archiving_primary(walg, pg_install, pg_workdir / "src")
    src.psql("CREATE TABLE marks (phase text PRIMARY KEY)")
    src.psql("INSERT INTO marks VALUES ('before')")
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    src.psql("INSERT INTO marks VALUES ('after')")
    archive_now(src)
    src.stop()
    (sentinel,) = walg.store.glob("basebackups_005/*_backup_stop_sentinel.json")
    doc = json.loads(sentinel.read_text())
    end_lsn = format_lsn(doc["FinishLSN"])
    # FinishTime may carry nanoseconds (walg's host clock); PostgreSQL reads microseconds:
    # the first microsecond at or after it is the earliest target that backup can reach.
    whole, _, frac = doc["FinishTime"].rstrip("Z").partition(".")
    ns = int(frac.ljust(9, "0"))
    start = datetime.fromisoformat(whole).replace(tzinfo=UTC)
    finish = start + timedelta(microseconds=-(-ns // 1000))
    end_time = finish.strftime("%Y-%m-%d %H:%M:%S.%f+00")
    before_end = (finish - timedelta(microseconds=1)).strftime("%Y-%m-%d %H:%M:%S.%f+00")

    for name, target in {
        "lsn": ["--target-lsn", end_lsn],
        "lsn-exclusive": ["--target-lsn", end_lsn, "--target-exclusive"],
        "time": ["--target-time", end_time],
        "time-exclusive": ["--target-time", end_time, "--target-exclusive"],
    }.items():
        restored = restore_to_target(pg_install, walg, pg_workdir / name, *target)
        assert restored.psql("SELECT phase FROM marks ORDER BY phase") == "before", name
        restored.stop()
        log = restored.logfile.read_text(errors="replace")
        assert "consistent recovery state reached" in log, log
        assert "recovery stopping" in log, log

    earlier = format_lsn(doc["FinishLSN"] - 1)
    for target in (["--target-lsn", earlier], ["--target-time", before_end]):
        refused = fetch_for_recovery(walg, pg_workdir / "refused", *target, check=False)
        assert refused.returncode == 74, refused.stderr
        assert "every backup ended after it" in refused.stderr, refused.stderr
        assert not (pg_workdir / "refused").exists()
