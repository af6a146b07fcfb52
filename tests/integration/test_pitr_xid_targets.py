"""--target-xid at its edges, on real clusters: the id of a transaction that aborted, of one
numbered past the 32-bit wraparound (txid_current() counts epochs, the server's setting reads
the id within one), and of a subtransaction.

PostgreSQL stops at a transaction's end record, commit or abort, and compares only the id
that record is written under: a top-level transaction's, or a savepoint's rolled back on its
own. A subtransaction that committed with its parent ends in the parent's record, so its id
(a row's xmin, where the row was written in a savepoint or a PL/pgSQL exception block) is
never met: recovery replays the whole archive and PostgreSQL 13+ stops with FATAL. walg cannot
tell such an id from another before the restore; the README says which id to give.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pgcluster import Cluster, PgInstall
from walgcli import WalgSetup, archive_now, archiving_primary, restore_to_target, start_recovery


def _recover(install: PgInstall, walg: WalgSetup, dest: Path, xid: str, *more: str) -> Cluster:
    return restore_to_target(install, walg, dest, "--target-xid", xid, *more, until=None)


def _promoted(cluster: Cluster) -> list[str]:
    start_recovery(cluster)
    phases = cluster.psql("SELECT phase FROM marks ORDER BY phase").splitlines()
    cluster.stop()
    return phases


@pytest.mark.majors(13, 16)
def test_xid_targets_of_an_abort_past_wraparound_and_of_a_subtransaction(
    pg_install: PgInstall, pg_workdir: Path, walg_bin: str
) -> None:
    walg = WalgSetup.create(walg_bin, pg_workdir)
    src = archiving_primary(walg, pg_install, pg_workdir / "src", start=False)
    # Epoch 1: every txid_current() is past 2^32, as on a server that wrapped around once.
    src.run([src.install.tool("pg_resetwal"), "-e", "1", "-D", str(src.datadir)])
    src.start()
    src.psql("CREATE TABLE marks (phase text PRIMARY KEY)")
    walg.run(["backup-push", str(src.datadir)], cluster=src)
    src.psql("INSERT INTO marks VALUES ('a')")
    aborted = src.psql("BEGIN; INSERT INTO marks VALUES ('x'); SELECT txid_current(); ROLLBACK;")
    committed = src.psql(
        "WITH b AS (INSERT INTO marks VALUES ('b') RETURNING 1) SELECT txid_current() FROM b"
    )
    assert int(aborted) > 1 << 32 and int(committed) > 1 << 32
    sub = src.psql(
        "BEGIN; SELECT txid_current(); SAVEPOINT s; INSERT INTO marks VALUES ('c'); "
        "RELEASE SAVEPOINT s; SELECT xmin FROM marks WHERE phase = 'c'; COMMIT;"
    ).splitlines()
    top, subxact = int(sub[0]) & 0xFFFFFFFF, sub[1]
    assert int(subxact) != top
    src.psql("INSERT INTO marks VALUES ('d')")
    archive_now(src)
    src.stop()

    # An aborted transaction's end is its abort record: recovery stops there, so what it
    # wrote is gone (as it was) and what committed after it is not replayed.
    by_abort = _recover(pg_install, walg, pg_workdir / "abort", aborted)
    assert _promoted(by_abort) == ["a"]
    assert "recovery stopping after abort of transaction" in by_abort.logfile.read_text()
    # Past the wraparound: the server reads the id within its epoch, the transaction meant.
    assert _promoted(_recover(pg_install, walg, pg_workdir / "epoch", committed)) == ["a", "b"]
    # --target-exclusive (recovery_target_inclusive off): just before that commit instead.
    before = _recover(pg_install, walg, pg_workdir / "exclusive", committed, "--target-exclusive")
    assert _promoted(before) == ["a"]
    assert "recovery stopping before commit of transaction" in before.logfile.read_text()

    stuck = _recover(pg_install, walg, pg_workdir / "subxact", subxact)
    start_recovery(stuck, "stopped")
    log = stuck.logfile.read_text(errors="replace")
    assert "recovery ended before configured recovery target was reached" in log, log
