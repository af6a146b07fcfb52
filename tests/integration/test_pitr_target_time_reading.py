"""The instant a restored server itself recovers to is the one walg chose the backup by.

walg reads a --target-time to choose the backup (time_bounds); the server reads
recovery_target_time only in its startup process, when it logs "starting point-in-time
recovery to ...". Those two readings must agree, and the SQL reading the other tests compare
with is not the same code path: abbreviations such as CET are not loaded while the
configuration is read, so a zone named like one could be read as the zone there. Checked on
the restored server's own log, in UTC.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pgcluster import Cluster, PgInstall
from walg.ops.target_backup import time_bounds
from walgcli import WalgSetup, archive_now, archiving_primary, restore_to_target, start_recovery


def _logged_target(cluster: Cluster) -> str:
    """Start a restored server whose target lies past the archive (it stops with FATAL at
    the end); the target its startup process logged last."""
    start_recovery(cluster, "stopped", timeout=120)
    found = re.findall(r"starting point-in-time recovery to (.+)", cluster.logfile.read_text())
    assert found, cluster.log_tail()
    return str(found[-1]).strip()


@pytest.mark.majors(13, 16)
def test_the_server_recovers_to_the_instant_walg_read(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    walg = WalgSetup.create(walg_bin, pg_workdir)
    src = archiving_primary(walg, pg_install, pg_workdir / "src")
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    archive_now(src)
    src.stop()

    forms = [
        "2027-07-01 12:00:00 CET",  # the abbreviation's fixed +01, not the zone's summer +02
        "2027-07-01 12:00:00 Europe/Paris",
        "2027-10-31 02:30:00 Europe/Paris",  # passed twice: the later reading, +01
        "2027-03-28 02:30:00 Europe/Paris",  # skipped: read with the offset before, +01
        "2027-07-01 12:00:00+05:30",
        "2027-07-01 12:00:00 EST",
    ]
    dest = pg_workdir / "restored"
    restored = restore_to_target(
        pg_install, walg, dest, "--target-time", forms[0], conf={"log_timezone": "UTC"}, until=None
    )
    auto = dest / "postgresql.auto.conf"
    written = auto.read_text()
    for form in forms:
        auto.write_text(written.replace(f"'{forms[0]}'", f"'{form}'"))
        logged = datetime.fromisoformat(_logged_target(restored) + ":00")  # +00 in UTC
        low, high = time_bounds(form)
        assert low == high, form
        walg_reads = datetime.fromtimestamp(low // 10**9, UTC)
        assert walg_reads == logged, (form, walg_reads, logged)
