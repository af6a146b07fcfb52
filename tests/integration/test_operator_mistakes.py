"""Operator mistakes on the WAL path, staged on a real PostgreSQL 16 cluster: what the server's
``archive_command`` does after them.

One cluster for the module; each test gives it a storage folder of its own.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgcluster import (
    Cluster,
    PgInstall,
    make_shared_dir,
    pg_tmpdir,
    run_as_pg,
    stop_clusters_under,
)
from walgcli import WalgSetup

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="stages walg run by hand as root")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    workdir = pg_tmpdir(prefix="operator-mistakes-")
    conf = {"archive_mode": "on", "archive_command": "false"}
    made = Cluster.create(
        PgInstall.load(16), workdir / "data", initdb_args=("--wal-segsize=1",), conf=conf
    )
    made.start()
    yield made
    stop_clusters_under(workdir, mode="immediate")
    subprocess.run(["rm", "-rf", str(workdir)], check=False)


def _archive_into(cluster: Cluster, walg: WalgSetup) -> None:
    cluster.set_conf({"archive_command": walg.command("wal-push", "%p")})
    cluster.reload()


def _wait_archived(cluster: Cluster, name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while cluster.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < name:
        assert time.monotonic() < deadline, f"{name} not archived\n{cluster.log_tail(30)}"
        time.sleep(0.2)


def _switch(cluster: Cluster) -> str:
    cluster.psql("CREATE TABLE IF NOT EXISTS filler (x text)")
    cluster.psql("INSERT INTO filler SELECT repeat('x', 100) FROM generate_series(1, 500)")
    return cluster.psql("SELECT pg_walfile_name(pg_switch_wal())")


def test_a_wal_push_run_by_hand_as_root_leaves_the_archive_writable_by_the_server(
    cluster: Cluster, walg_bin: str, tmp_path: Path
) -> None:
    """A DBA pushed a segment by hand as root into a new storage folder (the server's own).
    walg made ``wal_005/`` there as root, mode 0755, and every ``archive_command`` of the
    server after it failed ("cannot create a file in .../wal_005: Permission denied") until
    someone chowned the folder. Folders and objects root makes are given the owner of the
    folder they are made in."""
    workdir = pg_tmpdir(prefix="root-push-")
    walg = WalgSetup.create(walg_bin, workdir)
    first = _switch(cluster)
    copy = tmp_path / first
    copy.write_bytes((cluster.datadir / "pg_wal" / first).read_bytes())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "WALG_", "WALE_"))}
    pushed = subprocess.run(
        [walg_bin, "--config", str(walg.config), "wal-push", str(copy)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert pushed.returncode == 0, pushed.stderr
    store = walg.store.stat()
    for path in (walg.store / "wal_005", walg.store / "wal_005" / f"{first}.lz4"):
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (store.st_uid, store.st_gid), path

    _archive_into(cluster, walg)
    _wait_archived(cluster, _switch(cluster))
    assert "Permission denied" not in cluster.log_tail(30)
    subprocess.run(["rm", "-rf", str(workdir)], check=False)


def test_a_daemon_started_as_root_for_another_user_s_data_directory_is_refused(
    cluster: Cluster, walg_bin: str
) -> None:
    """``walg daemon`` started as root (a unit file without ``User=``) for a data directory
    the server runs as pgtest: its socket is root's, mode 0600, and every call of the server
    failed with "Permission denied" while the daemon logged nothing; what it would write into
    pg_wal (fetched segments, look-ahead records) would be root's. It is refused at start,
    naming the data directory's owner, and leaves no socket."""
    workdir = pg_tmpdir(prefix="root-daemon-")
    walg = WalgSetup.create(walg_bin, workdir)
    socket = workdir / "walg.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "WALG_", "WALE_"))}
    started = subprocess.run(
        [walg_bin, "--config", str(walg.config), "daemon", str(socket), str(cluster.datadir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert started.returncode == 78, started.stderr
    owner = pwd.getpwuid(cluster.datadir.stat().st_uid).pw_name
    assert f"owned by {owner}" in started.stderr, started.stderr
    assert not socket.exists()
    subprocess.run(["rm", "-rf", str(workdir)], check=False)


def test_an_archive_inside_the_data_directory_is_refused_until_it_is_moved_out(
    cluster: Cluster, walg_bin: str
) -> None:
    """``WALG_FILE_PREFIX=backups`` (relative: the server runs its commands in the data
    directory) or a folder someone made in the data directory. walg archived into it: an
    archive lost with the data directory (and emptied with it before a ``backup-fetch``,
    which needs an empty destination), and every ``backup-push`` copied the archive and
    earlier backups into the new one. ``wal-push`` and ``backup-push`` refuse it, saying so,
    and archiving goes on from the refused segment once the prefix is moved out."""
    workdir = pg_tmpdir(prefix="inside-")
    good = WalgSetup.create(walg_bin, workdir)
    inside = cluster.datadir / "backups"
    run_as_pg(["mkdir", str(inside)])
    config = workdir / "inside.json"
    config.write_text(json.dumps({"WALG_FILE_PREFIX": "backups"}))
    config.chmod(0o644)
    cluster.set_conf({"archive_command": f"{walg_bin} --config {config} wal-push %p"})
    cluster.reload()
    refused = _switch(cluster)
    deadline = time.monotonic() + 30
    while "lies inside the data directory" not in cluster.log_tail(40):
        assert time.monotonic() < deadline, cluster.log_tail(40)
        time.sleep(0.2)
    assert list(inside.iterdir()) == []
    pushed = run_as_pg(
        [walg_bin, "--config", str(config), "backup-push", str(cluster.datadir)],
        env=good.env(cluster),
        check=False,
        cwd=str(cluster.datadir),
    )
    assert pushed.returncode == 78, pushed.stderr
    assert "lies inside the data directory" in pushed.stderr, pushed.stderr
    assert list(inside.iterdir()) == []

    _archive_into(cluster, good)
    _wait_archived(cluster, _switch(cluster))
    assert (good.store / "wal_005" / f"{refused}.lz4").exists()
    run_as_pg(["rmdir", str(inside)])
    subprocess.run(["rm", "-rf", str(workdir)], check=False)


def test_wal_verify_fails_where_another_system_archived_this_cluster_s_next_segment(
    cluster: Cluster, walg_bin: str
) -> None:
    """Two primaries given one prefix by mistake: the other one, further on, archived a
    segment under a name this cluster reached later. This cluster's archiver is refused on it
    for ever (naming both system identifiers), and a restore stops before it; but
    ``wal-verify integrity`` said OK, counting the other system's segment as FOUND. It is a
    FAILURE, naming the segment and both identifiers; ``wal-show`` warns that the timeline
    holds two systems' segments."""
    workdir = pg_tmpdir(prefix="two-primaries-")
    walg = WalgSetup.create(walg_bin, workdir, WALG_PG_WAL_SIZE="1")
    other = Cluster.create(
        PgInstall.load(16), workdir / "other", initdb_args=("--wal-segsize=1",), use_template=False
    )
    scratch = WalgSetup.create(walg_bin, make_shared_dir(workdir / "scratch", 0o755))
    first = min(p for p in (other.datadir / "pg_wal").iterdir() if len(p.name) == 24)
    scratch.run(["wal-push", str(first)])
    _archive_into(cluster, walg)
    _wait_archived(cluster, _switch(cluster))
    # Written into first: at a segment's start pg_walfile_name names the one before.
    cluster.psql("INSERT INTO filler VALUES ('x')")
    taken = cluster.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
    foreign = walg.store / "wal_005" / f"{taken}.lz4"
    foreign.write_bytes((scratch.store / "wal_005" / f"{first.name}.lz4").read_bytes())
    st = foreign.parent.stat()
    os.chown(foreign, st.st_uid, st.st_gid)
    _switch(cluster)
    cluster.psql("INSERT INTO filler VALUES ('x')")  # wal-verify's position: past the switch
    deadline = time.monotonic() + 30
    while "another database system's WAL" not in cluster.log_tail(40):
        assert time.monotonic() < deadline, cluster.log_tail(40)
        time.sleep(0.2)

    verified = walg.run(["wal-verify", "integrity"], cluster=cluster, check=False)
    assert "integrity check status: FAILURE" in verified.stdout, verified.stdout + verified.stderr
    assert taken in verified.stderr, verified.stderr
    ours = cluster.control_data()["Database system identifier"]
    assert ours in verified.stderr, verified.stderr
    # wal-show, which knows no cluster, showed one timeline of segments, silently.
    shown = walg.run(["wal-show", "--without-backups"])
    theirs = other.control_data()["Database system identifier"]
    assert ours in shown.stderr and theirs in shown.stderr, shown.stderr
    foreign.unlink()  # the module's cluster archives on into the next test's storage
    subprocess.run(["rm", "-rf", str(workdir)], check=False)


def test_a_wal_fetch_run_by_hand_as_root_leaves_pg_wal_to_the_server(
    cluster: Cluster, walg_bin: str
) -> None:
    """A DBA fetched a segment by hand as root into a data directory's pg_wal (the server's
    user owns it). The file was root's, and so were the ``.wal-g/prefetch/`` folders and the
    segments prefetched beside it: the server's ``restore_command`` could use none of them
    (its prefetches failed silently from then on), and a root-owned segment in pg_wal is one
    PostgreSQL cannot open for writing once it recycles it. What root makes there gets the
    owner of the folder it is made in."""
    workdir = pg_tmpdir(prefix="root-fetch-")
    walg = WalgSetup.create(walg_bin, workdir, WALG_PG_WAL_SIZE="1", WALG_DOWNLOAD_CONCURRENCY="2")
    _archive_into(cluster, walg)
    names = [_switch(cluster) for _ in range(3)]
    _wait_archived(cluster, names[-1])
    pg_wal = make_shared_dir(workdir / "restore" / "pg_wal", 0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "WALG_", "WALE_"))}
    fetched = subprocess.run(
        [
            walg_bin,
            "--config",
            str(walg.config),
            "wal-fetch",
            names[0],
            str(pg_wal / "RECOVERYXLOG"),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert fetched.returncode == 0, fetched.stderr
    owner = pg_wal.stat().st_uid
    deadline = time.monotonic() + 30
    while not all(list(pg_wal.glob(f".wal-g/prefetch/*/{n}")) for n in names[1:]) or list(
        pg_wal.glob(".wal-g/prefetch/*/running/*")
    ):
        assert time.monotonic() < deadline, "nothing prefetched"
        time.sleep(0.1)
    made = [pg_wal / "RECOVERYXLOG", *pg_wal.glob(".wal-g/**/*"), pg_wal / ".wal-g"]
    assert {p: p.stat().st_uid for p in made} == {p: owner for p in made}
    subprocess.run(["rm", "-rf", str(workdir)], check=False)


def test_a_wal_push_run_by_hand_as_root_leaves_walg_data_to_the_server(
    cluster: Cluster, walg_bin: str
) -> None:
    """The same push by hand as root, of a segment in the server's pg_wal: walg made
    ``pg_wal/walg_data/`` (its look-ahead records and locks) as root, and every later
    ``archive_command`` of the server warned that it could not use it and archived without
    look-ahead, for good. What root makes there gets pg_wal's owner."""
    workdir = pg_tmpdir(prefix="root-status-")
    walg = WalgSetup.create(walg_bin, workdir, WALG_PG_WAL_SIZE="1")
    _archive_into(cluster, walg)
    name = _switch(cluster)
    _wait_archived(cluster, name)
    pg_wal = cluster.datadir / "pg_wal"
    subprocess.run(["rm", "-rf", str(pg_wal / "walg_data")], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "WALG_", "WALE_"))}
    pushed = subprocess.run(
        [walg_bin, "--config", str(walg.config), "wal-push", str(pg_wal / name)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert pushed.returncode == 0, pushed.stderr
    owner = pg_wal.stat().st_uid
    made = [pg_wal / "walg_data", *(pg_wal / "walg_data").glob("**/*")]
    assert {p: p.stat().st_uid for p in made} == {p: owner for p in made}
    _wait_archived(cluster, _switch(cluster))
    assert "cannot use walg's status folder" not in cluster.log_tail(30)
    subprocess.run(["rm", "-rf", str(workdir)], check=False)


def test_a_relative_storage_folder_missing_for_the_server_is_named_as_the_server_reads_it(
    cluster: Cluster, walg_bin: str
) -> None:
    """``WALG_FILE_PREFIX=backups``, a folder that exists in the DBA's working folder: the
    server runs ``archive_command`` in the data directory, where there is none, and its log
    said "storage folder backups does not exist", which ``ls backups`` in the DBA's shell
    contradicts. The error names the folder the server looked for."""
    workdir = pg_tmpdir(prefix="relative-")
    config = workdir / "relative.json"
    config.write_text(json.dumps({"WALG_FILE_PREFIX": "backups"}))
    config.chmod(0o644)
    refused = run_as_pg(
        [walg_bin, "--config", str(config), "wal-push", "pg_wal/000000010000000000000001"],
        check=False,
        cwd=str(cluster.datadir),
    )
    assert refused.returncode == 1, refused.stderr
    assert f"{cluster.datadir}/backups" in refused.stderr, refused.stderr
    subprocess.run(["rm", "-rf", str(workdir)], check=False)


def test_wal_push_given_the_file_s_name_instead_of_its_path(
    cluster: Cluster, walg_bin: str
) -> None:
    """``archive_command = 'walg wal-push %f'``: the server runs it in the data directory,
    where no file has that name. The call failed with "WAL file ... does not exist" (it must
    fail: nothing was archived), but first made ``walg_data/`` in the data directory itself,
    which every base backup then copied. It now fails before touching anything, and says to
    pass ``%p``."""
    workdir = pg_tmpdir(prefix="percent-f-")
    walg = WalgSetup.create(walg_bin, workdir, WALG_PG_WAL_SIZE="1")
    name = _switch(cluster)
    refused = run_as_pg(
        [walg_bin, "--config", str(walg.config), "wal-push", name],
        check=False,
        cwd=str(cluster.datadir),
    )
    assert refused.returncode == 2, refused.stderr
    assert "%p" in refused.stderr, refused.stderr
    assert not (cluster.datadir / "walg_data").exists()
    assert not list(walg.store.iterdir())
    subprocess.run(["rm", "-rf", str(workdir)], check=False)


def test_a_misspelt_storage_key_is_named(cluster: Cluster, walg_bin: str) -> None:
    """A config file with ``WALG_FILE_PREFX``: every ``archive_command`` failed with "no
    storage configured: set WALG_FILE_PREFIX", as if the file had none, and the DBA looking
    at the file sees it "set". The error names the key it found and the one it resembles."""
    workdir = pg_tmpdir(prefix="typo-")
    config = workdir / "typo.json"
    config.write_text(json.dumps({"walg_file_prefx": str(workdir)}))
    config.chmod(0o644)
    name = _switch(cluster)
    refused = run_as_pg(
        [walg_bin, "--config", str(config), "wal-push", f"pg_wal/{name}"],
        check=False,
        cwd=str(cluster.datadir),
    )
    assert refused.returncode == 78, refused.stderr
    assert "WALG_FILE_PREFX" in refused.stderr and str(config) in refused.stderr, refused.stderr
    subprocess.run(["rm", "-rf", str(workdir)], check=False)
