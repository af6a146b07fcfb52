"""Backups made by a walg whose clock is wrong, on a real cluster.

walg runs under libfaketime (Debian's ``faketime``, which ``scripts/setup.sh`` installs), so
its wall clock is off by a chosen amount while the server's is right: what an NTP step back,
a VM resumed with a stale clock or backup-push run on another host than the server leaves.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pgcluster import PgInstall
from walgcli import WalgSetup, archiving_primary, fetch_for_recovery

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def _clock_behind(seconds: int) -> dict[str, str]:
    """The environment that puts walg's wall clock ``seconds`` behind. libfaketime 0.9.10
    shifts the monotonic clock too, consistently; with FAKETIME_DONT_FAKE_MONOTONIC it hands
    the kernel a negative deadline for every ``time.sleep`` (EINVAL), which no real clock
    step does."""
    if not LIBFAKETIME.exists():
        pytest.fail(f"{LIBFAKETIME} missing: run scripts/setup.sh", pytrace=False)
    return {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME": f"-{seconds}",
        "FAKETIME_DONT_RESET": "1",
    }


@pytest.mark.majors(16)
def test_a_backup_pushed_by_a_host_whose_clock_is_behind_is_not_chosen_for_an_earlier_target(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    """backup-push dated the backup's end by its own host's clock. Two hours behind the
    server's, FinishTime lay two hours before commits the backup holds, and backup-fetch
    LATEST --target-time chose it for a target between the two: the restore held rows
    committed after the target (PostgreSQL does not notice a target before the backup's
    end) and exited 0. The end is now dated by the server's clock where it is later, which
    backup-push warns of, and no backup can reach that target (74)."""
    walg = WalgSetup.create(walg_bin, pg_workdir)
    src = archiving_primary(walg, pg_install, pg_workdir / "src")
    src.psql("CREATE TABLE marks (phase text PRIMARY KEY)")
    target = src.psql("SELECT clock_timestamp()")
    time.sleep(0.1)  # 'after' commits strictly after the target
    src.psql("INSERT INTO marks VALUES ('after')")
    pushed = walg.run(["backup-push", str(src.datadir)], cluster=src, env=_clock_behind(7200))

    fetched = fetch_for_recovery(walg, pg_workdir / "restore", "--target-time", target, check=False)
    assert fetched.returncode == 74, fetched.stderr
    assert not (pg_workdir / "restore" / "PG_VERSION").exists()
    assert "behind the server's" in pushed.stderr, pushed.stderr
    listed = json.loads(walg.run(["backup-list", "--detail", "--json"]).stdout)
    assert len(listed) == 1
    finish = src.psql(f"SELECT '{listed[0]['finish_time']}'::timestamptz > '{target}'")
    assert finish == "t", (listed[0], target)
