"""A PostgreSQL or a storage that stops answering: the real ``walg`` must not wait for ever.

README "Promises": waiting for PostgreSQL has a timeout (``WALG_STOP_BACKUP_TIMEOUT``,
``PGCONNECT_TIMEOUT``). ``statement_timeout`` alone does not give one: a backend that is
stopped (SIGSTOP here; a frozen container, uninterruptible I/O) never acts on it, and libpq
waits for its answer forever. Storage that does not answer (a hung mount, staged with
``WALG_FAULT_INJECTION`` delays) holds a command, by design, but SIGTERM must still end it
promptly and cleanly. The stalls are staged on one PostgreSQL 16 cluster (the code does not
differ by major); every command run here has a time limit of its own, so a hang fails the
test instead of the suite.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from pgcluster import Cluster, PgInstall, pg_tmpdir
from walg.errors import PostgresError
from walg.postgres.connection import connect, query_one
from walg.settings import load
from walgcli import WalgSetup, archiving_primary

APP = "walg-stall-test"
STOP_TIMEOUT = 3  # WALG_STOP_BACKUP_TIMEOUT, seconds


@pytest.fixture(scope="module")
def setup(walg_bin: str) -> Iterator[tuple[WalgSetup, Cluster]]:
    workdir = pg_tmpdir(prefix="postgres-stalls-")
    walg = WalgSetup.create(walg_bin, workdir, WALG_STOP_BACKUP_TIMEOUT=f"{STOP_TIMEOUT}s")
    cluster = archiving_primary(walg, PgInstall.load(16), workdir / "data")
    try:
        yield walg, cluster
    finally:
        cluster.stop(mode="immediate")
        shutil.rmtree(workdir, ignore_errors=True)


def _backups(walg: WalgSetup) -> list[str]:
    folder = walg.store / "basebackups_005"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _backend_of(cluster: Cluster, proc: subprocess.Popen[str], timeout: float = 30) -> int:
    """The pid of the backend serving the ``backup-push`` run ``proc`` (by its
    application_name)."""
    deadline = time.monotonic() + timeout
    while True:
        pid = cluster.psql(f"SELECT pid FROM pg_stat_activity WHERE application_name = '{APP}'")
        if pid:
            return int(pid)
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "backup-push never connected"
        time.sleep(0.05)


def test_backup_push_ends_when_its_backend_stops_answering(
    setup: tuple[WalgSetup, Cluster],
) -> None:
    """The backend running the backup is stopped before ``pg_backup_stop``: before, the
    command waited for its answer for ever (seen on 16 with WALG_STOP_BACKUP_TIMEOUT=10s:
    still waiting after a minute). It must fail within the stop timeout, saying what did not
    answer, leave no backup and no claim, and the next run must work."""
    walg, cluster = setup
    before = _backups(walg)
    # pg_control is written just before pg_backup_stop: its delay is the moment to stop the
    # backend, with the backup started and all its data stored.
    slow = [{"op": "write", "key": "pg_control", "delay": 2}]
    proc = walg.popen(
        ["backup-push", str(cluster.datadir)],
        cluster=cluster,
        env={"PGAPPNAME": APP, "WALG_FAULT_INJECTION": json.dumps(slow)},
    )
    backend = _backend_of(cluster, proc)
    os.kill(backend, signal.SIGSTOP)
    try:
        started = time.monotonic()
        try:
            _, stderr = proc.communicate(timeout=STOP_TIMEOUT + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail("backup-push still waited for its stopped backend")
        took = time.monotonic() - started
    finally:
        os.kill(backend, signal.SIGCONT)
    assert proc.returncode == 1, stderr
    assert "did not answer" in stderr and "WALG_STOP_BACKUP_TIMEOUT" in stderr, stderr
    assert f"pid {backend}" in stderr, stderr
    assert took < STOP_TIMEOUT + 15, f"took {took:.1f} s"
    assert _backups(walg) == before  # no sentinel, no claim, no objects
    walg.run(["backup-push", str(cluster.datadir)], cluster=cluster, timeout=120)
    assert len(_backups(walg)) == len(before) + 2  # the backup's folder and its sentinel


def test_a_stopped_postmaster_fails_the_commands_that_connect_at_pgconnect_timeout(
    setup: tuple[WalgSetup, Cluster],
) -> None:
    """The postmaster stopped before the commands connect (a frozen server): the connection
    is accepted by the kernel and never answered. PGCONNECT_TIMEOUT bounds the wait (found
    working on 16; pinned here, since the promise had no test)."""
    walg, cluster = setup
    before = _backups(walg)
    postmaster = cluster.postmaster_pid()
    assert postmaster is not None
    os.kill(postmaster, signal.SIGSTOP)
    try:
        for command in (["backup-push", str(cluster.datadir)], ["wal-verify", "integrity"]):
            started = time.monotonic()
            done = walg.run(
                command, cluster=cluster, env={"PGCONNECT_TIMEOUT": "2"}, check=False, timeout=30
            )
            took = time.monotonic() - started
            assert done.returncode == 1, done.stderr
            assert "cannot connect to PostgreSQL" in done.stderr, done.stderr
            assert "timeout" in done.stderr, done.stderr
            assert took < 15, f"{command[0]} took {took:.1f} s"
    finally:
        os.kill(postmaster, signal.SIGCONT)
    assert _backups(walg) == before


def test_a_connection_waits_for_an_answer_no_longer_than_its_limit(
    setup: tuple[WalgSetup, Cluster],
) -> None:
    """The mechanism behind both commands that query PostgreSQL (wal-verify's position query
    is too quick to stop its backend in the middle of reliably): a query to a stopped backend
    fails at the connection's limit, naming the backend, instead of waiting for ever."""
    _, cluster = setup
    settings = load(environ=cluster.conninfo_env())
    conn = connect(settings.pg, 2, "the test's limit")
    outcome: list[BaseException | tuple[object, ...]] = []

    def ask() -> None:
        try:
            outcome.append(query_one(conn, "SELECT 1"))
        except BaseException as exc:
            outcome.append(exc)

    os.kill(conn.backend_pid, signal.SIGSTOP)
    try:
        asking = threading.Thread(target=ask, daemon=True)
        asking.start()
        asking.join(timeout=30)
    finally:
        os.kill(conn.backend_pid, signal.SIGCONT)
        conn.close()
    assert not asking.is_alive(), "the query still waited for the stopped backend"
    (error,) = outcome
    assert isinstance(error, PostgresError), error
    assert "did not answer 'SELECT 1' within 2 s (the test's limit)" in str(error)
    assert f"pid {conn.backend_pid}" in str(error)


def _terminated_within(proc: subprocess.Popen[str], what: str, limit: float = 20) -> str:
    """SIGTERM to ``proc``; it must end within ``limit`` seconds, exit 1 and say so. Its
    stderr."""
    proc.send_signal(signal.SIGTERM)
    try:
        _, stderr = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"{what} did not end within {limit} s of SIGTERM")
    assert proc.returncode == 1, stderr
    assert "interrupted (SIGTERM)" in stderr, stderr
    return stderr


def _wait_for(found: Callable[[], bool], proc: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + 30
    while not found():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_sigterm_ends_a_backup_push_held_by_storage(setup: tuple[WalgSetup, Cluster]) -> None:
    """A partition's upload that storage does not answer (a hung mount) held SIGTERM: the
    pool of uploads was joined, and backup-push waited for the stalled one (seen on 16: still
    running 30 s after SIGTERM). PostgreSQL's fast shutdown, systemd's stop, an operator's
    kill must end it; its objects and claim are removed, and the next run works."""
    walg, cluster = setup
    before = _backups(walg)
    held = [{"op": "write", "key": "part_001", "delay": 600}]
    proc = walg.popen(
        ["backup-push", str(cluster.datadir)],
        cluster=cluster,
        env={"WALG_FAULT_INJECTION": json.dumps(held)},
    )
    claims = walg.store / "basebackups_005"
    _wait_for(lambda: any(claims.glob("*/walg_claim.json")), proc, "the backup never started")
    time.sleep(0.5)
    _terminated_within(proc, "backup-push")
    assert _backups(walg) == before
    walg.run(["backup-push", str(cluster.datadir)], cluster=cluster, timeout=120)


def test_sigterm_ends_a_backup_fetch_held_by_storage(
    setup: tuple[WalgSetup, Cluster],
) -> None:
    """The same for a restore whose download storage does not answer: backup-fetch joined
    its download workers and waited for the stalled one."""
    walg, cluster = setup
    if not _backups(walg):
        walg.run(["backup-push", str(cluster.datadir)], cluster=cluster, timeout=120)
    dest = walg.store.parent / "restore-held"
    held = [{"op": "read", "key": "part_001", "delay": 600}]
    proc = walg.popen(
        ["backup-fetch", str(dest), "LATEST"], env={"WALG_FAULT_INJECTION": json.dumps(held)}
    )
    _wait_for(dest.exists, proc, "the restore never began")
    time.sleep(0.5)
    _terminated_within(proc, "backup-fetch")


def test_a_file_that_became_a_fifo_after_the_walk_does_not_hold_backup_push(
    setup: tuple[WalgSetup, Cluster],
) -> None:
    """backup-push walks the data directory first and reads the files later. A file made a
    FIFO in between (a program's stray pipe under a name a file had) was opened for reading,
    which waits for a writer for ever; the walk itself skips FIFOs with a warning. It must be
    skipped so when it is read too, and the backup must finish."""
    walg, cluster = setup
    stray = cluster.datadir / "stray_file"
    stray.write_bytes(b"a regular file at the walk")
    os.chown(stray, cluster.datadir.stat().st_uid, cluster.datadir.stat().st_gid)
    before = _backups(walg)
    held = [{"op": "write", "key": "part_", "delay": 3}]
    proc = walg.popen(
        ["backup-push", str(cluster.datadir)],
        cluster=cluster,
        env={"WALG_FAULT_INJECTION": json.dumps(held)},
    )
    try:
        claims = walg.store / "basebackups_005"
        _wait_for(lambda: any(claims.glob("*/walg_claim.json")), proc, "no backup started")
        stray.unlink()
        os.mkfifo(stray)
        try:
            _, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail("backup-push waited on the FIFO")
    finally:
        stray.unlink()
    assert proc.returncode == 0, stderr
    assert "/stray_file is a FIFO" in stderr, stderr
    assert len(_backups(walg)) == len(before) + 2


@pytest.mark.parametrize("command", ["wal-show", "backup-list --detail", "wal-verify integrity"])
def test_ctrl_c_ends_a_listing_held_by_storage(
    setup: tuple[WalgSetup, Cluster], command: str
) -> None:
    """A listing reads the backups' documents on a pool of threads. Ctrl-C (SIGINT) while
    one of those reads is held by storage that does not answer ended in the pool's join,
    which waited for the stalled read: the command went on running (seen on 16 for wal-show:
    still running 15 s after SIGINT). SIGTERM ends these commands at once (its default
    action); an operator's Ctrl-C must too."""
    walg, cluster = setup
    if not _backups(walg):
        walg.run(["backup-push", str(cluster.datadir)], cluster=cluster, timeout=120)
    held = [{"op": "read", "key": "basebackups_005/", "delay": 600}]
    proc = walg.popen(
        command.split(), cluster=cluster, env={"WALG_FAULT_INJECTION": json.dumps(held)}
    )
    time.sleep(2)  # the reads are under way
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    try:
        _, stderr = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"{command} did not end within 20 s of SIGINT")
    assert proc.returncode == 1, stderr
    assert "interrupted (SIGINT)" in stderr, stderr
