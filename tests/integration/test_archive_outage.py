"""An archive outage on a real cluster: what storage holds when it comes back, and the drain.

Clusters are made with ``initdb --wal-segsize=1`` so that a backlog costs little disk.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from pgcluster import Cluster, PgInstall, make_shared_dir
from walgcli import WalgSetup, archiving_primary, start_daemon, stop_daemon


def _backlog(cluster: Cluster, count: int) -> list[str]:
    """Fill ``count`` segments, switching after each; their names (PostgreSQL marks each
    ``.ready``)."""
    cluster.psql("CREATE TABLE IF NOT EXISTS filler (x text)")
    names = []
    for _ in range(count):
        cluster.psql("INSERT INTO filler SELECT repeat('x', 100) FROM generate_series(1, 2000)")
        names.append(cluster.psql("SELECT pg_walfile_name(pg_switch_wal())"))
    return names


def _wait_archived(cluster: Cluster, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while cluster.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < name:
        assert time.monotonic() < deadline, f"{name} not archived\n{cluster.log_tail(30)}"
        time.sleep(0.2)


def _owned_by_pg(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    st = path.parent.stat()
    os.chown(path, st.st_uid, st.st_gid)
    path.chmod(0o600)


def _cut_frame(data: bytes) -> bytes:
    """``data`` as another writer compresses it (LZ4 frames of 64 KiB blocks, as WAL-G's LZ4
    library can write them), cut in the middle, where its write failed."""
    import lz4.frame

    whole = lz4.frame.compress(data, block_size=lz4.frame.BLOCKSIZE_MAX64KB)
    return whole[: len(whole) // 2]


def test_a_half_written_object_left_in_storage_by_an_outage_is_replaced_by_the_good_copy(
    pg_workdir: Path, walg_bin: str
) -> None:
    """Storage failed while an object was written under its final name (WAL-G's local-folder
    storage writes there directly, and a full disk leaves the first part of it; an empty
    file is what some filesystems keep of a write cut short). Every ``wal-push`` of that
    segment failed for good ("LZ4 stream is truncated"), PostgreSQL retried its oldest file
    for ever and nothing after it was archived, although the stored object held nothing the
    file in pg_wal does not hold. A stored object that ends early and whose readable part is
    the start of this very file (or that is empty) is a broken copy of it: it is replaced.
    One whose bytes differ, or whose readable part is too short to tell, is still refused."""
    install = PgInstall.load(15)
    walg = WalgSetup.create(walg_bin, pg_workdir, WALG_PG_WAL_SIZE="1")
    cluster = archiving_primary(
        walg, install, pg_workdir / "src", archive_command="false", initdb_args=("--wal-segsize=1",)
    )
    names = _backlog(cluster, 5)
    copies = make_shared_dir(pg_workdir / "copies", 0o755)
    for name in names:
        shutil.copyfile(cluster.datadir / "pg_wal" / name, copies / name)
        (copies / name).chmod(0o644)
    wal_005 = make_shared_dir(walg.store / "wal_005", 0o700)
    # What the outage left: half of the first segment's object, nothing of the second's.
    _owned_by_pg(wal_005 / f"{names[0]}.lz4", _cut_frame((copies / names[0]).read_bytes()))
    _owned_by_pg(wal_005 / f"{names[1]}.lz4", b"")

    cluster.set_conf({"archive_command": walg.command("wal-push", "%p")})
    cluster.reload()
    _wait_archived(cluster, names[-1], timeout=30)
    for name in names:
        fetched = pg_workdir / f"fetched-{name}"
        walg.run(["wal-fetch", name, str(fetched)])
        assert fetched.read_bytes() == (copies / name).read_bytes(), name
    log = cluster.log_tail(200)
    assert f"wal_005/{names[0]}.lz4 is a copy of it cut short" in log, log
    assert f"wal_005/{names[1]}.lz4 is a copy of it cut short" in log, log

    # Another segment's broken object is no copy of this file.
    foreign = wal_005 / f"{names[3]}.lz4"
    _owned_by_pg(foreign, _cut_frame((copies / names[2]).read_bytes()))
    refused = walg.run(["wal-push", str(copies / names[3])], check=False)
    assert refused.returncode == 1, refused.stderr
    assert "with different content" in refused.stderr
    assert foreign.read_bytes() == _cut_frame((copies / names[2]).read_bytes())
    # Cut inside its first block (walg's objects of 1 MiB segments are one block): nothing of
    # it can be read to tell whose it is.
    first_block = wal_005 / f"{names[4]}.lz4"
    half = first_block.read_bytes()[: first_block.stat().st_size // 2]
    _owned_by_pg(first_block, half)
    refused = walg.run(["wal-push", str(copies / names[4])], check=False)
    assert refused.returncode == 1, refused.stderr
    assert "remove it if it is what a failed write left" in refused.stderr
    assert first_block.read_bytes() == half
    cluster.stop()


def test_a_daemon_never_answers_for_an_object_storage_lost_while_postgresql_waited(
    pg_workdir: Path, walg_bin: str
) -> None:
    """The daemon's look-ahead and follower archive a backlog while PostgreSQL's own calls
    still fail; then storage comes back without those objects (an archive volume rolled
    back to a snapshot, a replica that had not caught up taking over). PostgreSQL's calls
    for them were answered "done" from the daemon's memory of its uploads, nothing was stored
    again, and PostgreSQL recycled the only copies: the archive had a hole. A cold
    ``wal-push`` checks that a look-ahead marker's object is still there; so must the daemon."""
    install = PgInstall.load(15)
    walg = WalgSetup.create(walg_bin, pg_workdir, WALG_PG_WAL_SIZE="1", WALG_UPLOAD_CONCURRENCY="3")
    native = str(Path(walg_bin).with_name("walg-daemon-client-native"))
    socket = make_shared_dir(pg_workdir / "sock", 0o755) / "push.sock"
    cluster = archiving_primary(
        walg,
        install,
        pg_workdir / "src",
        archive_command="false",
        initdb_args=("--wal-segsize=1",),
        start=False,
    )
    daemon = start_daemon(walg, socket, cluster.datadir)
    try:
        cluster.start()
        names = _backlog(cluster, 12)
        wal_005 = walg.store / "wal_005"
        deadline = time.monotonic() + 30
        while not all((wal_005 / f"{name}.lz4").exists() for name in names):
            assert time.monotonic() < deadline, "the daemon did not archive the backlog ahead"
            time.sleep(0.1)
        # The storage that comes back has none of them.
        for name in names:
            (wal_005 / f"{name}.lz4").unlink()
        cluster.set_conf({"archive_command": f"{native} {socket} wal-push %p"})
        cluster.reload()
        _wait_archived(cluster, names[-1], timeout=60)
        missing = [name for name in names if not (wal_005 / f"{name}.lz4").exists()]
        assert not missing, f"answered as archived, not stored: {missing}"
        cluster.stop()
    finally:
        stop_daemon(daemon)


def test_a_daemon_names_the_request_and_segment_that_failed(
    pg_workdir: Path, walg_bin: str
) -> None:
    """In an outage the daemon logs an error for every call PostgreSQL makes. It said
    "b'F' request failed: ...", a byte of its socket protocol, and for a request past its time
    limit not even which segment: the line an operator reads at 3 am must say a wal-push of
    which file failed."""
    install = PgInstall.load(15)
    walg = WalgSetup.create(walg_bin, pg_workdir, WALG_PG_WAL_SIZE="1", WALG_UPLOAD_CONCURRENCY="1")
    socket = make_shared_dir(pg_workdir / "sock", 0o755) / "push.sock"
    cluster = archiving_primary(
        walg,
        install,
        pg_workdir / "src",
        daemon_socket=socket,
        initdb_args=("--wal-segsize=1",),
        start=False,
    )
    full = json.dumps([{"op": "write", "key": "^wal_005/", "fail": "No space left on device"}])
    daemon = start_daemon(walg, socket, cluster.datadir, env={"WALG_FAULT_INJECTION": full})
    try:
        cluster.start()
        name = _backlog(cluster, 1)[0]
        deadline = time.monotonic() + 30
        while int(cluster.psql("SELECT failed_count FROM pg_stat_archiver")) < 1:
            assert time.monotonic() < deadline, cluster.log_tail(30)
            time.sleep(0.1)
        cluster.stop()
    finally:
        log = stop_daemon(daemon)
    assert f"wal-push of {name} failed: " in log, log
    assert "b'F'" not in log, log
