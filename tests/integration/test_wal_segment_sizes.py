"""wal-show and wal-verify on a cluster made with ``initdb --wal-segsize=64``.

Segment names depend on the segment size: at 64 MiB the segment after ``...0000003F`` is
``...000000010000000100000000`` (64 per 4 GiB of WAL), at 16 MiB it would be ``...00000040``.
The cluster is set by ``pg_resetwal -l`` just below such a boundary, so that a wrong size
shows as phantom gaps and wrong current segments, at the cost of three segments.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pgcluster import Cluster, PgInstall, make_shared_dir, pg_tmpdir, stop_clusters_under
from walgcli import WalgSetup, archive_now, archiving_primary, start_daemon, stop_daemon


@dataclass
class Archived:
    walg: WalgSetup
    cluster: Cluster
    names: list[str]


@pytest.fixture(scope="module")
def archived(walg_bin: str) -> Iterator[Archived]:
    workdir = pg_tmpdir("segsizes-")
    walg = WalgSetup.create(walg_bin, workdir)  # WALG_PG_WAL_SIZE not set
    cluster = archiving_primary(
        walg, PgInstall.load(16), workdir / "src", initdb_args=("--wal-segsize=64",), start=False
    )
    cluster.run(["pg_resetwal", "-l", "00000001000000000000003E", str(cluster.datadir)])
    cluster.start()
    names = [archive_now(cluster) for _ in range(3)]
    assert names[-1] == "000000010000000100000000", names
    yield Archived(walg, cluster, names)
    stop_clusters_under(workdir)
    shutil.rmtree(workdir, ignore_errors=True)


def test_wal_show_finds_no_gap_without_the_segment_size_set(archived: Archived) -> None:
    """WALG_PG_WAL_SIZE unset: walg reads the size from a stored segment. It used to take 16
    MiB and call ...40 to ...FF (192 segments that cannot exist) lost."""
    out = archived.walg.run(["wal-show", "--detailed-json"]).stdout
    (timeline,) = json.loads(out)
    assert timeline["missing_segments"] == [], timeline["missing_segments"][:3]
    assert timeline["status"] == "OK"
    assert timeline["segment_range_size"] == 3
    assert (timeline["start_segment"], timeline["end_segment"]) == (
        archived.names[0],
        archived.names[-1],
    )


def test_wal_verify_takes_the_server_s_segment_size_when_none_is_set(
    archived: Archived,
) -> None:
    """WALG_PG_WAL_SIZE unset: the server's wal_segment_size is used (it used to fail with
    'WALG_PG_WAL_SIZE says 16 MiB', a setting nobody made)."""
    current = archived.cluster.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
    assert current.startswith("0000000100000001"), current
    done = archived.walg.run(
        ["wal-verify", "integrity", "timeline"], cluster=archived.cluster, check=False
    )
    assert done.returncode == 0, done.stderr
    assert f"Current WAL segment: {current}" in done.stderr, done.stderr
    assert "0000000100000000000000FF" not in done.stdout, done.stdout
    assert "timeline check status: OK" in done.stdout


def test_wal_verify_at_a_given_lsn_reads_the_archive_s_segment_size(archived: Archived) -> None:
    """--timeline/--lsn (no server asked), WALG_PG_WAL_SIZE unset: 1/4000000 is in segment
    1/00 at 64 MiB, not 1/03 (16 MiB) with ...40 to ...FF called lost."""
    done = archived.walg.run(
        ["wal-verify", "integrity", "--timeline", "1", "--lsn", "1/4000000"], check=False
    )
    assert done.returncode == 0, done.stderr
    assert "Current WAL segment: 000000010000000100000000" in done.stderr, done.stderr
    assert "000000010000000000000040" not in done.stdout, done.stdout


def test_a_wrong_segment_size_set_is_refused_by_wal_verify(archived: Archived) -> None:
    """WALG_PG_WAL_SIZE set, and wrong: refused, naming both sizes, rather than guessed."""
    done = archived.walg.run(
        ["wal-verify", "integrity"],
        cluster=archived.cluster,
        env={"WALG_PG_WAL_SIZE": "16"},
        check=False,
    )
    assert done.returncode != 0
    assert "67108864" in done.stderr and "WALG_PG_WAL_SIZE" in done.stderr, done.stderr


def test_the_daemon_follows_64_mib_segments_without_the_segment_size_set(
    pg_workdir: Path, walg_bin: str
) -> None:
    """WALG_PG_WAL_SIZE unset: the daemon's WAL follower takes the size the cluster's segment
    files state. It took 16 MiB, found no segment valid at that size and silently never
    followed one (every segment was read whole at its .ready instead)."""
    walg = WalgSetup.create(walg_bin, pg_workdir)
    socket = make_shared_dir(pg_workdir / "sock", 0o755) / "push.sock"
    cluster = archiving_primary(
        walg,
        PgInstall.load(16),
        pg_workdir / "src",
        daemon_socket=socket,
        initdb_args=("--wal-segsize=64",),
        start=False,
    )
    daemon = start_daemon(walg, socket, cluster.datadir, env={"WALG_LOG_LEVEL": "DEVEL"})
    try:
        cluster.start()
        cluster.psql("CREATE TABLE t AS SELECT generate_series(1, 20000) AS i")
        names = [archive_now(cluster) for _ in range(2)]
        written = {n: (cluster.datadir / "pg_wal" / n).read_bytes() for n in names}
        cluster.stop()
    finally:
        log = stop_daemon(daemon)
    assert f"WAL follower archived {names[0]}" in log, log[-3000:]
    assert "WARNING" not in log and "ERROR" not in log, log[-3000:]
    # What the follower stored is the segment: pushed again, it is found equal (a wal-fetch
    # would leave a prefetch running past the test).
    check = make_shared_dir(pg_workdir / "check", 0o755)
    for name in names:
        assert len(written[name]) == 64 << 20
        copy = check / name
        copy.write_bytes(written[name])
        shutil.chown(copy, "pgtest", "pgtest")
        again = walg.run(["wal-push", str(copy)])
        assert "already archived with equal content" in again.stderr, again.stderr


def test_wal_show_warns_when_the_segment_size_set_is_not_the_archive_s(
    archived: Archived,
) -> None:
    """WALG_PG_WAL_SIZE=16 on this 64 MiB archive: the setting is followed (as WAL-G does) but
    the phantom gaps it makes are explained. It used to say nothing."""
    done = archived.walg.run(["wal-show"], env={"WALG_PG_WAL_SIZE": "16"})
    assert "LOST_SEGMENTS" in done.stdout, done.stdout
    assert "WALG_PG_WAL_SIZE" in done.stderr and "64 MiB" in done.stderr, done.stderr
    quiet = archived.walg.run(["wal-show"], env={"WALG_PG_WAL_SIZE": "64"})
    assert "WALG_PG_WAL_SIZE" not in quiet.stderr, quiet.stderr


def test_wal_verify_at_a_given_lsn_warns_of_a_wrong_segment_size_set(archived: Archived) -> None:
    """--timeline/--lsn with WALG_PG_WAL_SIZE=16 on this 64 MiB archive: no server to refuse
    by, so the setting is followed, but the ranges it makes up are explained."""
    done = archived.walg.run(
        ["wal-verify", "integrity", "--timeline", "1", "--lsn", "1/4000000"],
        env={"WALG_PG_WAL_SIZE": "16"},
    )
    assert "WALG_PG_WAL_SIZE" in done.stderr and "64 MiB" in done.stderr, done.stderr
