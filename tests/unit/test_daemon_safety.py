"""``walg daemon`` itself, run as a real process: what it does with its socket path, signals,
a shutdown with requests in flight, hostile request names, and fetches that outlive their
request (time limit, or a client that went away): such a fetch must never put its file in
place, since PostgreSQL may by then have been given another file at the same path.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lz4.frame
import pytest
from test_daemon_clients import _request, fetch_body

from daemonenv import SEG, Env
from fakewal import segment_bytes, small_tmpfs

BIG = 16 << 20  # a segment takes a daemon more than a few milliseconds to store or fetch


def _queued(path: Path, pid: int) -> int:
    """How many connections wait in the listen queue of daemon ``pid``'s socket at ``path``
    (ss reads the kernel's count: a listening socket's Recv-Q). The socket keeps the address
    it was bound at: the temporary name it was linked into place from."""
    addresses = {str(path), str(path.with_name(f".{path.name}.{pid}"))}
    out = subprocess.run(["ss", "-xlnH"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] in addresses:
            return int(fields[2])
    raise AssertionError(f"no listening socket at {path}: {out}")


def _archive(env: Env, data: bytes) -> None:
    """Store ``data`` as SEG with walg itself (no daemon)."""
    source = env.root / "src" / "pg_wal"
    source.mkdir(parents=True)
    (source / SEG).write_bytes(data)
    done = subprocess.run(
        [env.walg_bin, "wal-push", str(source / SEG)],
        env=env.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def _full_queue(path: Path) -> tuple[socket.socket, list[socket.socket]]:
    """A listener at ``path`` that never accepts, its listen queue full."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(0)
    queued = []
    for _ in range(64):
        filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        filler.setblocking(False)
        try:
            filler.connect(str(path))
        except BlockingIOError:
            filler.close()
            return srv, queued
        queued.append(filler)
    raise AssertionError("the listen queue never filled")


def test_a_busy_live_socket_is_not_taken_over_and_a_stale_one_is(env: Env) -> None:
    """A connect that fails with anything but "refused" (here EAGAIN: a live daemon whose
    queue is full) does not prove the socket stale: the new daemon refuses to start and leaves
    it. A socket nobody listens on any more is replaced."""
    srv, queued = _full_queue(env.socket)
    try:
        identity = env.socket.stat().st_ino
        refused = env.run_daemon()
        assert refused.returncode == 2, refused.stderr
        assert "cannot tell whether a daemon is listening" in refused.stderr
        assert env.socket.stat().st_ino == identity, "the live socket is still there"
    finally:
        srv.close()
        for filler in queued:
            filler.close()
    # Closed without unlinking (a daemon that was killed): connect is refused, so it is stale.
    assert env.socket.exists()
    env.start()
    # The old path exists from the start (an inode number may even be reused): ask until the
    # daemon answers on its own socket.
    deadline = time.monotonic() + 30
    while True:
        try:
            assert _request(env.socket, b"C", b"") == b"O"
            break
        except (ConnectionRefusedError, FileNotFoundError):
            assert env.daemon is not None and env.daemon.poll() is None, env.daemon
            assert time.monotonic() < deadline, "the stale socket was not replaced"
            time.sleep(0.02)
    env.stop()
    assert not env.socket.exists(), "a daemon removes its own socket at exit"


def test_a_second_daemon_never_takes_a_live_socket_and_one_killed_is_replaced(
    env: Env,
) -> None:
    """systemd's view: a second start on a live daemon's socket is refused (exit 2) and the
    first goes on answering there; after SIGKILL (no clean-up), the socket file left behind
    does not stop the next start."""
    env.start()
    first = env.daemon
    assert first is not None
    identity = env.socket.stat().st_ino
    second = env.run_daemon()
    assert second.returncode == 2, second.stderr
    assert "another daemon is already listening" in second.stderr, second.stderr
    assert env.socket.stat().st_ino == identity
    assert _request(env.socket, b"C", b"") == b"O"
    assert first.poll() is None
    first.kill()
    first.wait()
    assert env.socket.exists(), "SIGKILL leaves the socket file"
    env.start()
    deadline = time.monotonic() + 30
    while True:  # the old path exists from the start: ask until the new daemon answers
        try:
            assert _request(env.socket, b"C", b"") == b"O"
            break
        except (ConnectionRefusedError, FileNotFoundError):
            assert env.daemon is not None and env.daemon.poll() is None
            assert time.monotonic() < deadline, "the stale socket was not replaced"
            time.sleep(0.02)
    env.stop()
    assert not env.socket.exists()


def test_an_exiting_daemon_leaves_a_newer_daemons_socket(env: Env) -> None:
    env.start()
    # What a newer daemon does once this one's socket is gone: its own socket at the path.
    env.socket.unlink()
    newer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    newer.bind(str(env.socket))
    newer.listen(1)
    try:
        identity = env.socket.stat().st_ino
        log = env.stop()
        assert env.socket.exists() and env.socket.stat().st_ino == identity, log
    finally:
        newer.close()


def test_sigterm_the_moment_the_socket_appears_is_a_clean_shutdown(env: Env) -> None:
    """Whoever sees the socket may stop the daemon at once (a service manager's restart).
    The handlers were installed only after the socket was bound and the look-ahead started:
    a SIGTERM in between ended the process by the default action, its socket left behind
    and its first uploads cut off. Now it is a shutdown like any other."""
    status = env.pgdata / "pg_wal" / "archive_status"
    status.mkdir()
    for n in range(4):  # a backlog, so that starting takes the look-ahead's first scan
        name = f"0000000100000000000000A{n}"
        (env.pgdata / "pg_wal" / name).write_bytes(os.urandom(1 << 20) * 16)
        (status / f"{name}.ready").touch()
    for attempt in range(8):
        env.start(poll=0)  # the signal follows the socket's appearance at once
        err = env.stop()  # exit 0, not the default action's -15
        assert not env.socket.exists(), (attempt, err)


def test_the_socket_takes_connections_from_the_moment_it_appears(env: Env) -> None:
    """Bound at its path, the socket existed for a moment before it listened, and a client
    that came then was refused (seen as ConnectionRefusedError in tests under load; a
    PostgreSQL call then fails its push or fetches around the daemon). It is now linked into
    place once listening, and no name of its own is left beside it."""
    for attempt in range(8):
        env.start(poll=0)
        assert _request(env.socket, b"C", b"") == b"O", attempt
        assert sorted(p.name for p in env.root.iterdir()) == ["d.sock", "pgdata", "store"]
        env.stop()
        assert not env.socket.exists()


def test_sigusr1_and_sighup_do_not_stop_the_daemon(env: Env) -> None:
    """logrotate sends SIGUSR1 (WAL-G reopens its log file then), systemctl reload SIGHUP:
    neither stops the daemon, which logs to stderr here and has no file to reopen."""
    env.start()
    assert env.daemon is not None
    for signum in (signal.SIGUSR1, signal.SIGHUP, signal.SIGUSR1):
        env.daemon.send_signal(signum)
        time.sleep(0.2)
        assert env.daemon.poll() is None, env.daemon.communicate()
        assert _request(env.socket, b"C", b"") == b"O"
    log = env.stop()
    assert "SIGUSR1" in log and "SIGHUP" in log, log
    assert "no log file to reopen" in log, log


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGHUP], ids=["usr1", "hup"])
def test_a_log_file_moved_by_logrotate_is_reopened(env: Env, signum: int) -> None:
    """WALG_LOG_DESTINATION names the daemon's log file. logrotate moves it and signals the
    daemon (WAL-G reopens its log on SIGUSR1; many postrotate scripts send SIGHUP): from then
    on the daemon must write to a new file at that path, not on into the moved one (which
    logrotate compresses and deletes later: the daemon's log went with it, unseen). The
    daemon keeps running and serving."""
    log_file = env.root / "walg.log"
    env.env["WALG_LOG_DESTINATION"] = str(log_file)
    env.start()
    assert env.daemon is not None
    assert _request(env.socket, b"F", b"/before-rotation/" + SEG.encode()) == b"E"
    assert "before-rotation" in log_file.read_text()  # logged before the reply
    rotated = env.root / "walg.log.1"
    log_file.rename(rotated)
    env.daemon.send_signal(signum)
    deadline = time.monotonic() + 30
    while not log_file.exists():
        assert env.daemon.poll() is None, env.daemon.communicate()
        assert time.monotonic() < deadline, rotated.read_text()
        time.sleep(0.02)
    assert _request(env.socket, b"F", b"/after-rotation/" + SEG.encode()) == b"E"
    assert _request(env.socket, b"C", b"") == b"O"
    env.stop()
    old, new = rotated.read_text(), log_file.read_text()
    assert "before-rotation" in old and "after-rotation" not in old, old
    assert "after-rotation" in new and "before-rotation" not in new, new
    assert "opened again" in new and "shutting down" in new, new


def _logged(path: Path, text: str) -> str:
    """The log file at ``path`` once it holds ``text`` (written by a daemon's thread)."""
    deadline = time.monotonic() + 30
    while text not in (log := path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, log
        time.sleep(0.02)
    return log


def test_a_daemon_started_with_an_empty_prefix_says_so(env: Env) -> None:
    """A daemon started again with a wrong, empty prefix answers every fetch of a standby
    "not in the archive"; the clients print nothing for that, and PostgreSQL waits on without
    a word anywhere. The daemon's log now says that storage holds nothing at all, naming the
    settings to check."""
    log_file = env.root / "walg.log"
    env.env["WALG_LOG_DESTINATION"] = str(log_file)
    (env.pgdata / "standby.signal").touch()
    env.start()
    dest = env.pgdata / "pg_wal" / "RECOVERYXLOG"
    assert _request(env.socket, b"f", fetch_body(SEG, str(dest))) == b"N"
    log = _logged(log_file, "holds no backups and no WAL at all")
    assert f"the last of {SEG}" in log and "WALG_FILE_PREFIX" in log, log
    assert _request(env.socket, b"f", fetch_body(SEG, str(dest))) == b"N"  # still served
    env.stop()


def test_a_daemon_whose_storage_lacks_the_servers_timeline_says_so(env: Env) -> None:
    """Storage that holds WAL, but no history file of the timeline the server asks WAL of, is
    not that server's archive (a wrong prefix): said in the daemon's log. Once the history
    file is there, a segment not found is the archive's end, and nothing is said."""
    log_file = env.root / "walg.log"
    env.env.update({"WALG_LOG_DESTINATION": str(log_file), "WALG_LOG_LEVEL": "DEVEL"})
    _archive(env, os.urandom(1 << 20))  # timeline 1's SEG
    dest = env.pgdata / "pg_wal" / "RECOVERYXLOG"
    wanted = "000000020000000000000004"
    env.start()
    assert _request(env.socket, b"f", fetch_body(wanted, str(dest))) == b"N"
    log = _logged(log_file, "holds no 00000002.history")
    env.stop()
    source = env.root / "src" / "pg_wal" / "00000002.history"
    source.write_text("1\t0/4000000\tno recovery target specified\n")
    pushed = subprocess.run(
        [env.walg_bin, "wal-push", str(source)],
        env=env.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert pushed.returncode == 0, pushed.stderr
    log_file.unlink()
    env.start()
    assert _request(env.socket, b"f", fetch_body(wanted, str(dest))) == b"N"
    log = _logged(log_file, "may be this server's")
    env.stop()
    assert "WARNING" not in log, log


def test_requests_in_flight_at_sigterm_are_answered(env: Env) -> None:
    """SIGTERM while a push is being stored: the push completes and its client gets O, not
    a closed connection (which PostgreSQL would take for a failure and retry)."""
    (env.pgdata / "pg_wal" / SEG).write_bytes(os.urandom(BIG) * 4)
    env.start()
    assert env.daemon is not None
    wal = env.store / "wal_005"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(60)
        conn.connect(str(env.socket))
        body = str(env.pgdata / "pg_wal" / SEG).encode()
        conn.sendall(b"F" + (len(body) + 3).to_bytes(2, "big") + body)
        # The object's temporary file appears as the upload begins.
        deadline = time.monotonic() + 30
        while not (wal.exists() and any(wal.iterdir())):
            assert time.monotonic() < deadline, "the push never started"
            time.sleep(0.001)
        env.daemon.send_signal(signal.SIGTERM)
        reply = conn.recv(1)
    log = env.stop()
    assert reply == b"O", log
    assert (wal / f"{SEG}.lz4").is_file()


@pytest.mark.parametrize("python", [False, True], ids=["native", "python"])
def test_connections_queued_at_sigterm_are_answered(env: Env, python: bool) -> None:
    """systemctl restart during recovery: clients that connected before SIGTERM but were not
    yet accepted (held in the listen queue; here the daemon is stopped with SIGSTOP while
    they connect) get their answers. Closing the socket with them queued reset them, and a
    recovering PostgreSQL stopped on the failed fetch (exit 128)."""
    data = os.urandom(1 << 20)
    _archive(env, data)
    (env.pgdata / "recovery.signal").touch()
    wal = env.pgdata / "pg_wal"
    pushed = [f"0000000100000000000000{n:02X}" for n in (0x30, 0x31)]
    for name in pushed:
        (wal / name).write_bytes(name.encode() * 4096)
    env.start()
    assert env.daemon is not None
    # The installed script runs the compiled client beside it (setup.sh builds it) unless
    # told to run the Python one.
    client = str(Path(env.walg_bin).with_name("walg-daemon-client"))
    client_env = dict(env.env, WALG_DAEMON_CLIENT_PYTHON="1") if python else env.env
    env.daemon.send_signal(signal.SIGSTOP)
    try:
        # The daemon's listen queue holds 5: the clients fit in it.
        argv = [[client, str(env.socket), "wal-fetch", SEG, f"pg_wal/X{i}"] for i in range(3)]
        argv += [[client, str(env.socket), "wal-push", f"pg_wal/{name}"] for name in pushed]
        procs = [
            subprocess.Popen(
                args,
                env=client_env,
                cwd=env.pgdata,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for args in argv
        ]
        # Each has connected (a slow machine may take seconds to start five Python clients)
        # and sends its request at once.
        deadline = time.monotonic() + 60
        while _queued(env.socket, env.daemon.pid) < len(procs):
            assert time.monotonic() < deadline, "the clients never all connected"
            assert all(proc.poll() is None for proc in procs)
            time.sleep(0.05)
        time.sleep(0.2)
        assert all(proc.poll() is None for proc in procs)
        env.daemon.send_signal(signal.SIGTERM)
    finally:
        env.daemon.send_signal(signal.SIGCONT)
    results = [(proc.wait(timeout=60), proc.communicate()[1]) for proc in procs]
    _, log = env.daemon.communicate(timeout=60)
    assert env.daemon.returncode == 0, log
    env.daemon = None
    assert [code for code, _ in results] == [0] * len(procs), (results, log)
    for i in range(3):
        assert (wal / f"X{i}").read_bytes() == data
    for name in pushed:
        assert (env.store / "wal_005" / f"{name}.lz4").is_file()
    # Answered by the daemon, not by the clients' fallback to walg itself.
    assert not any("directly" in err for _, err in results), results
    assert not env.socket.exists()


def test_hostile_names_are_logged_escaped_and_cut(env: Env) -> None:
    env.start()
    name = "\0\n" * 50 + "A" * 65000
    assert _request(env.socket, b"F", name.encode()) == b"E"
    assert _request(env.socket, b"f", fetch_body(name, "pg_wal/RECOVERYXLOG")) == b"E"
    log = env.stop()
    assert "\0" not in log
    assert "AAAA" * 100 not in log
    assert all(len(line) < 1000 for line in log.splitlines()), max(map(len, log.splitlines()))
    assert log.count("\\x00\\n") >= 20, log  # escaped once, readable


def test_a_fetch_past_its_limit_is_never_put_in_place(env: Env) -> None:
    """The fetch limit (not the upload one) ends the request with E, and the download still
    running is discarded: the file never appears at DEST later."""
    data = os.urandom(BIG)
    _archive(env, data)
    env.env["WALG_DAEMON_WAL_FETCH_TIMEOUT"] = "1ms"
    env.start()
    dest = env.pgdata / "pg_wal" / "RECOVERYXLOG"
    assert _request(env.socket, b"f", fetch_body(SEG, str(dest))) == b"E"
    log = env.stop()  # waits for the abandoned download
    assert not dest.exists()
    assert os.listdir(env.pgdata / "pg_wal") == [], "no temporary file is left either"
    assert "did not finish within" in log, log

    # The upload timeout does not apply to fetches.
    env.env.pop("WALG_DAEMON_WAL_FETCH_TIMEOUT")
    env.env["WALG_DAEMON_WAL_UPLOAD_TIMEOUT"] = "1ms"
    env.start()
    assert _request(env.socket, b"f", fetch_body(SEG, str(dest))) == b"O"
    env.stop()
    assert dest.read_bytes() == data


def test_a_client_that_went_away_gets_no_late_file(env: Env) -> None:
    """A client that gave up (its own timeout) before the download finished: nothing is put
    at DEST afterwards."""
    _archive(env, os.urandom(BIG))
    env.start()
    dest = env.pgdata / "pg_wal" / "RECOVERYXLOG"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(env.socket))
        body = fetch_body(SEG, str(dest))
        conn.sendall(b"f" + (len(body) + 3).to_bytes(2, "big") + body)
    time.sleep(1)
    log = env.stop()
    assert not dest.exists(), log
    assert os.listdir(env.pgdata / "pg_wal") == []
    assert "abandoned" in log, log


def test_bad_fetch_limit_is_a_configuration_error(env: Env) -> None:
    env.env["WALG_DAEMON_WAL_FETCH_TIMEOUT"] = "soon"
    res = env.run_daemon()
    assert res.returncode == 78, res.stderr
    assert "WALG_DAEMON_WAL_FETCH_TIMEOUT" in res.stderr
    with contextlib.suppress(FileNotFoundError):
        assert not env.socket.exists()


@pytest.mark.parametrize("concurrency", ["1", "4"], ids=["no-lookahead", "lookahead"])
def test_a_shutdown_does_not_wait_for_storage_that_hangs(env: Env, concurrency: str) -> None:
    """Storage stops answering (a hung mount): a push times out with an error, as before, and
    SIGTERM then ends the daemon within about the upload timeout. It waited for the stuck
    upload thread (with a hung NFS mount: forever), with the socket already gone."""
    wal = env.pgdata / "pg_wal"
    (wal / "archive_status").mkdir()
    for n in (1, 2):
        (wal / f"00000001000000000000000{n}").write_bytes(os.urandom(1 << 20))
    (wal / "archive_status" / "000000010000000000000002.ready").touch()
    env.env.update(
        {
            "WALG_UPLOAD_CONCURRENCY": concurrency,
            "WALG_DAEMON_WAL_UPLOAD_TIMEOUT": "2s",
            "WALG_FAULT_INJECTION": '[{"op": "write", "key": "wal_005", "delay": 120}]',
        }
    )
    env.start()
    assert env.daemon is not None
    reply = _request(env.socket, b"F", b"pg_wal/000000010000000000000001")
    assert reply == b"E"
    start = time.monotonic()
    env.daemon.send_signal(signal.SIGTERM)
    _, log = env.daemon.communicate(timeout=60)
    elapsed = time.monotonic() - start
    assert elapsed < 15, (elapsed, log)
    assert env.daemon.returncode == 1, log
    assert "abandoned" in log, log
    env.daemon = None
    assert not list((env.store / "wal_005").glob("*.lz4")), "nothing was committed"


def test_a_shutdown_after_a_fetch_storage_holds_says_what_it_left(env: Env) -> None:
    """A fetch whose download storage does not answer fails at its time limit, and SIGTERM
    ends the daemon within about the upload timeout, as for a push. Its log blamed
    "background uploads" for the wait, where nothing was being uploaded: a DBA looking for
    a failing archive was sent the wrong way. It must name what was left: a download."""
    _archive(env, os.urandom(1 << 20))
    env.env.update(
        {
            "WALG_DOWNLOAD_CONCURRENCY": "1",
            "WALG_DAEMON_WAL_FETCH_TIMEOUT": "2s",
            "WALG_DAEMON_WAL_UPLOAD_TIMEOUT": "2s",
            "WALG_FAULT_INJECTION": '[{"op": "read", "key": "wal_005", "delay": 120}]',
        }
    )
    env.start()
    assert env.daemon is not None
    dest = env.pgdata / "pg_wal" / "RECOVERYXLOG"
    assert _request(env.socket, b"f", fetch_body(SEG, str(dest))) == b"E"
    start = time.monotonic()
    env.daemon.send_signal(signal.SIGTERM)
    _, log = env.daemon.communicate(timeout=60)
    elapsed = time.monotonic() - start
    env.daemon = None
    assert elapsed < 15, (elapsed, log)
    assert "abandoned" in log, log
    assert "background uploads" not in log, log
    assert "downloads" in log, log
    assert not dest.exists()


@pytest.mark.parametrize("python", [False, True], ids=["native", "python"])
def test_a_stop_during_a_held_fetch_hands_it_to_walg_itself(env: Env, python: bool) -> None:
    """systemctl stop (or restart) while a fetch hangs on storage: the daemon answered that
    fetch with an error only once its time limit (WALG_DAEMON_WAL_FETCH_TIMEOUT, default
    300 s) was over, and a restore_command in archive recovery then exited 128: PostgreSQL
    stopped recovery because the daemon was stopped. Now a request that has put nothing in
    place a few seconds into the stop is abandoned (nothing of it will be) and its connection
    closed unanswered, so its client runs walg wal-fetch itself, as for a daemon that is gone:
    here with storage that answers, and the file is in place."""
    data = os.urandom(1 << 20)
    _archive(env, data)
    (env.pgdata / "recovery.signal").touch()
    env.env.update(
        {
            "WALG_DAEMON_WAL_FETCH_TIMEOUT": "40s",
            "WALG_FAULT_INJECTION": '[{"op": "read", "key": "wal_005", "delay": 600}]',
        }
    )
    env.start()
    assert env.daemon is not None
    client = str(Path(env.walg_bin).with_name("walg-daemon-client"))
    client_env = {k: v for k, v in env.env.items() if k != "WALG_FAULT_INJECTION"}
    if python:
        client_env["WALG_DAEMON_CLIENT_PYTHON"] = "1"
    fetch = subprocess.Popen(
        [client, str(env.socket), "wal-fetch", SEG, "pg_wal/RECOVERYXLOG"],
        env=client_env,
        cwd=env.pgdata,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1)  # the daemon's fetch is held by storage
    env.daemon.send_signal(signal.SIGTERM)
    _, err = fetch.communicate(timeout=120)
    _, log = env.daemon.communicate(timeout=120)
    env.daemon = None
    assert fetch.returncode == 0, (err, log)
    assert "running walg wal-fetch directly" in err, err
    assert (env.pgdata / "pg_wal" / "RECOVERYXLOG").read_bytes() == data
    assert "closed unanswered" in log, log


def test_without_lookahead_abandoned_temporaries_are_swept_too(env: Env) -> None:
    """The sweep of temporary objects left by killed uploads ran only with the look-ahead;
    with WALG_UPLOAD_CONCURRENCY=1 they stayed for the daemon's whole life."""
    folder = env.store / "wal_005"
    folder.mkdir(parents=True)
    stamp = int(time.time()) - 3 * 3600
    when = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(stamp))
    old = folder / f"{SEG}.lz4.tmp.{when}-0123456789abcdef"
    old.write_bytes(b"x" * 1000)
    os.utime(old, (stamp, stamp))
    env.env["WALG_UPLOAD_CONCURRENCY"] = "1"
    env.start()
    deadline = time.monotonic() + 10
    while old.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = env.stop()
    assert not old.exists(), log


def _walg(env: Env, variables: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """walg itself (no daemon) with ``variables`` as its environment."""
    return subprocess.run(
        [env.walg_bin, *args], env=variables, capture_output=True, text=True, check=False
    )


def test_a_push_past_its_limit_never_commits_what_it_reads_later(env: Env) -> None:
    """A push held up by storage gets E at its time limit; PostgreSQL then archives the
    segment by a later call and recycles the file (renamed, a later segment written into the
    same inode). The push the daemon gave up on must not go on to commit what it reads from
    the file then over the archived segment (WALG_PREVENT_WAL_OVERWRITE=false replaces)."""
    wal = env.pgdata / "pg_wal"
    (wal / "archive_status").mkdir()
    segment = wal / SEG
    original = os.urandom(BIG)
    segment.write_bytes(original)
    (wal / "archive_status" / f"{SEG}.ready").touch()
    plain = dict(env.env, WALG_PREVENT_WAL_OVERWRITE="false")
    env.env.update(
        {
            "WALG_PREVENT_WAL_OVERWRITE": "false",
            "WALG_UPLOAD_CONCURRENCY": "1",
            "WALG_DAEMON_WAL_UPLOAD_TIMEOUT": "1s",
            "WALG_FAULT_INJECTION": '[{"op": "write", "key": "wal_005", "delay": 4}]',
        }
    )
    env.start()
    started = time.monotonic()
    assert _request(env.socket, b"F", str(segment).encode()) == b"E"
    # PostgreSQL's next call archives the segment (here walg itself, storage answering again)...
    copy = env.root / "copy" / "pg_wal"
    copy.mkdir(parents=True)
    (copy / SEG).write_bytes(original)
    done = _walg(env, plain, "wal-push", str(copy / SEG))
    assert done.returncode == 0, done.stderr
    # ...and, told it is archived, recycles the file for a later segment.
    (wal / "archive_status" / f"{SEG}.ready").rename(wal / "archive_status" / f"{SEG}.done")
    later = wal / "000000010000000000000009"
    segment.rename(later)
    with later.open("r+b") as handle:
        handle.write(os.urandom(BIG))
    time.sleep(max(0.0, started + 6 - time.monotonic()))  # the held-up push has woken
    log = env.stop()
    fetched = env.root / "fetched"
    got = _walg(env, plain, "wal-fetch", SEG, str(fetched))
    assert got.returncode == 0, got.stderr
    assert fetched.read_bytes() == original, log
    assert [p.name for p in (env.store / "wal_005").iterdir()] == [f"{SEG}.lz4"]


def test_a_push_waiting_for_the_look_ahead_is_answered_within_its_limit(env: Env) -> None:
    """WALG_DAEMON_WAL_UPLOAD_TIMEOUT bounds a push request (WAL-G's is a deadline on the
    whole request). A push whose segment the look-ahead is uploading waits for that upload,
    within the limit; once the limit has passed, the push must not start a full limit of its
    own: on storage that hangs, PostgreSQL was answered only after twice the limit (four
    times with the follower's wait), beyond walg-daemon-client's own timeout for limits of
    more than 75 s, and meanwhile two uploads of the segment ran side by side."""
    wal = env.pgdata / "pg_wal"
    (wal / "archive_status").mkdir()
    segment = wal / SEG
    segment.write_bytes(os.urandom(BIG))
    (wal / "archive_status" / f"{SEG}.ready").touch()
    env.env.update(
        {
            "WALG_UPLOAD_CONCURRENCY": "2",
            "WALG_DAEMON_FOLLOW_WAL": "false",
            "WALG_DAEMON_WAL_UPLOAD_TIMEOUT": "2s",
            "WALG_FAULT_INJECTION": '[{"op": "write", "key": "wal_005", "delay": 6}]',
        }
    )
    env.start()
    started = time.monotonic()
    # The look-ahead has found the .ready file and is uploading it (its lock is held): a fixed
    # pause could end before its first scan on a loaded machine, and the push would then
    # upload alone, never waiting for the look-ahead.
    lock = wal / "walg_data" / "walg_archive_status" / f"{SEG}.lock"
    while not lock.exists():
        assert time.monotonic() < started + 5, "the look-ahead never began"
        time.sleep(0.01)
    asked = time.monotonic()
    assert _request(env.socket, b"F", str(segment).encode()) == b"E"
    answered = time.monotonic() - asked
    assert answered < 3.2, f"answered after {answered:.1f} s, the limit being 2 s"
    time.sleep(max(0.0, asked + 7 - time.monotonic()))  # the look-ahead's upload is over
    log = env.stop()
    assert "did not finish within" in log, log


def test_temporary_sockets_of_daemons_killed_at_start_are_removed(env: Env) -> None:
    """A daemon killed between binding its temporary name and linking it into place left
    ``.NAME.PID`` for good: each start uses its own pid's name. A start now removes those of
    processes that no longer run, and leaves that of a process that does (another daemon
    starting now) and anything that is not a socket."""
    dead = subprocess.Popen(["true"])
    dead.wait()

    def bound(path: Path) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        sock.close()

    stale = env.root / f".{env.socket.name}.{dead.pid}"
    alive = env.root / f".{env.socket.name}.{os.getpid()}"
    other = env.root / f".{env.socket.name}.{dead.pid + 1}x"
    not_a_socket = env.root / f".{env.socket.name}.{dead.pid}0"
    for path in (stale, alive, other):
        bound(path)
    not_a_socket.write_text("kept")
    env.start()
    assert _request(env.socket, b"C", b"") == b"O"
    env.stop()
    assert not stale.exists()
    assert alive.exists() and other.exists() and not_a_socket.read_text() == "kept"


def test_a_socket_path_it_cannot_listen_on_is_named(env: Env) -> None:
    """A socket in a folder that does not exist, or a path too long for a UNIX socket: the
    daemon refuses to start with a usage error naming the path. It said "unexpected
    FileNotFoundError: [Errno 2] No such file or directory" (or "unexpected OSError: AF_UNIX
    path too long"), naming nothing an operator could fix."""
    env.socket = env.root / "missing" / "d.sock"
    missing = env.run_daemon()
    env.socket = env.root / ("s" * 120)
    too_long = env.run_daemon()
    assert missing.returncode == 2, missing.stderr
    assert f"cannot listen on {env.root / 'missing' / 'd.sock'}" in missing.stderr
    assert "No such file or directory" in missing.stderr
    assert too_long.returncode == 2, too_long.stderr
    assert f"socket path {env.socket} is too long" in too_long.stderr
    for res in (missing, too_long):
        assert "unexpected" not in res.stderr


@pytest.mark.parametrize(
    "name", ["WALG_DAEMON_WAL_FETCH_TIMEOUT", "WALG_DAEMON_WAL_UPLOAD_TIMEOUT"]
)
def test_a_zero_time_limit_is_a_configuration_error(env: Env, name: str) -> None:
    """No request finishes within zero seconds: the daemon started, and every push failed
    (archiving stalled) and every fetch failed, which in archive recovery exits 128 and
    stops the restore at its first segment. It now refuses to start, naming the setting."""
    env.env[name] = "0"
    res = env.run_daemon()
    assert res.returncode == 78, res.stderr
    assert name in res.stderr and "more than zero" in res.stderr
    with contextlib.suppress(FileNotFoundError):
        assert not env.socket.exists()


def _archived_without_a_request(env: Env, name: str, seconds: float = 20) -> bool:
    """Whether ``name`` gets stored (by the daemon's look-ahead: nobody asks) within
    ``seconds``."""
    stored = env.store / "wal_005" / f"{name}.lz4"
    deadline = time.monotonic() + seconds
    while not stored.exists():
        assert env.daemon is not None and env.daemon.poll() is None, env.daemon
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def test_the_look_ahead_serves_a_data_directory_made_or_replaced_after_the_start(
    env: Env,
) -> None:
    """A daemon started for a restore (the restore_command of a point-in-time recovery), before
    backup-fetch or right after it (which restores pg_wal empty: PostgreSQL makes
    archive_status when it starts), then serving the promoted server's archive_command: its
    look-ahead was never started (pg_wal/archive_status did not exist when it started), so
    every segment waited for PostgreSQL's own call, for the daemon's whole life. A data
    directory replaced under a running daemon (a restore into the same path) left its
    look-ahead failing on the removed status folder, for good. It must still make nothing in a
    data directory that is not there yet: backup-fetch wants it empty."""
    shutil.rmtree(env.pgdata)
    env.env["WALG_UPLOAD_CONCURRENCY"] = "3"
    env.start()
    time.sleep(0.5)  # several scans of the look-ahead
    assert not env.pgdata.exists(), "the daemon made files in a data directory not restored yet"
    first, second = SEG, "000000010000000000000004"
    for name in (first, second):
        # Made (restored, then started by PostgreSQL), and later made again in its place.
        if env.pgdata.exists():
            shutil.rmtree(env.pgdata)
        wal = env.pgdata / "pg_wal"
        (wal / "archive_status").mkdir(parents=True)
        (wal / name).write_bytes(os.urandom(1 << 20))
        (wal / "archive_status" / f"{name}.ready").touch()
        archived = _archived_without_a_request(env, name)
        log = "" if archived else env.stop()
        assert archived, f"{name} was not archived ahead: {log}"
        # PostgreSQL's own call then finds it done.
        assert _request(env.socket, b"F", str(wal / name).encode()) == b"O"
        assert not any((wal / "walg_data" / "walg_archive_status").glob(f"{name}.*"))
    env.stop()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("python", [False, True], ids=["native", "python"])
def test_a_flood_of_idle_connections_leaves_postgresql_its_answers(env: Env, python: bool) -> None:
    """Connections that send nothing (a stuck or runaway script of the same user) each held a
    thread and a descriptor of the daemon for 30 s, with no limit: once its descriptors ran
    out it could accept nothing, spun on its listening socket at full CPU, and PostgreSQL's
    calls waited in the listen queue until their timeout (a push then failed with 1, a fetch
    in archive recovery exited 128 and recovery stopped). Past a bound the daemon now closes
    a new connection unanswered, and the clients run walg themselves."""
    data = os.urandom(1 << 20)
    _archive(env, data)
    (env.pgdata / "recovery.signal").touch()
    wal = env.pgdata / "pg_wal"
    pushed = "000000010000000000000031"
    (wal / pushed).write_bytes(os.urandom(1 << 16))
    env.start()
    assert env.daemon is not None
    pid = env.daemon.pid
    # 256 descriptors (the usual limit is 1024; a smaller one is cheaper to reach).
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (256, 256))
    idle: list[socket.socket] = []
    try:
        # More than it has descriptors for, unless it turns them away: a full listen queue is
        # waited on for a second before the flood is taken to have reached its end.
        full_since = None
        while len(idle) < 400:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.setblocking(False)
            try:
                conn.connect(str(env.socket))
            except BlockingIOError:  # the listen queue is full
                conn.close()
                full_since = full_since or time.monotonic()
                if time.monotonic() - full_since > 1:
                    break
                time.sleep(0.01)
                continue
            full_since = None
            idle.append(conn)
        time.sleep(0.5)
        cpu = _cpu_seconds(pid)
        time.sleep(2)
        spent = _cpu_seconds(pid) - cpu
        client = str(Path(env.walg_bin).with_name("walg-daemon-client"))
        client_env = dict(env.env, WALG_DAEMON_CLIENT_TIMEOUT="10")
        if python:
            client_env["WALG_DAEMON_CLIENT_PYTHON"] = "1"
        calls = {
            "fetch": [client, str(env.socket), "wal-fetch", SEG, "pg_wal/RECOVERYXLOG"],
            "push": [client, str(env.socket), "wal-push", f"pg_wal/{pushed}"],
        }
        results = {
            what: subprocess.run(
                argv,
                env=client_env,
                cwd=env.pgdata,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            for what, argv in calls.items()
        }
        assert env.daemon.poll() is None
        open_fds = len(os.listdir(f"/proc/{pid}/fd"))
    finally:
        for conn in idle:
            conn.close()
    # The daemon serves as before once they are gone: once its threads have seen them close
    # (until then a new connection may still be over the bound, and closed unanswered).
    deadline = time.monotonic() + 30
    while True:
        try:
            answer = _request(env.socket, b"C", b"")
        except OSError:  # closed unanswered: a broken pipe or a reset
            answer = b""
        if answer == b"O" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert answer == b"O", answer
    log = env.stop()
    for what, done in results.items():
        assert done.returncode == 0, (what, done.returncode, done.stderr, log[-2000:])
    assert spent < 1.0, f"the daemon spun: {spent:.1f} s of CPU in 2 s with idle connections"
    assert open_fds < 200, open_fds
    assert (wal / "RECOVERYXLOG").read_bytes() == data
    assert (env.store / "wal_005" / f"{pushed}.lz4").is_file()
    assert "closing" in log, log[-2000:]


@pytest.mark.parametrize("how", ["socket", "folder"])
def test_a_daemon_whose_socket_is_gone_stops(env: Env, how: str) -> None:
    """The socket file, or its folder, removed under a running daemon (a cleanup of /run, an
    operator's rm): no client can reach it any more (pushes fail "not running", fetches run
    walg themselves), yet it ran on for good, saying nothing, its look-ahead and follower
    still working beside whatever daemon is started next on that path. It now notices within
    seconds, says why, and exits 1 (a service manager restarts it)."""
    env.socket = env.root / "run" / "d.sock"
    env.socket.parent.mkdir()
    env.start()
    assert env.daemon is not None
    if how == "socket":
        env.socket.unlink()
    else:
        shutil.rmtree(env.socket.parent)
    with contextlib.suppress(subprocess.TimeoutExpired):
        env.daemon.wait(timeout=15)
    code = env.daemon.poll()
    if code is None:
        env.daemon.send_signal(signal.SIGTERM)
    _, log = env.daemon.communicate(timeout=30)
    env.daemon = None
    assert code == 1, log
    assert f"{env.socket}" in log and "no client can reach" in log, log


def test_a_fetch_killed_with_its_daemon_leaves_nothing_in_pg_wal_for_good(env: Env) -> None:
    """A daemon killed outright (SIGKILL, the OOM killer) while it downloads a segment leaves
    its temporary file beside DEST in pg_wal, up to a segment. The README promises such files
    are removed once untouched for 10 minutes, as walg wal-fetch's prefetch does; the daemon
    that serves the recovery next never removed them, and pg_wal kept them for good."""
    data = os.urandom(BIG)
    _archive(env, data)
    wal = env.pgdata / "pg_wal"
    dest = wal / "RECOVERYXLOG"
    env.env["WALG_FAULT_INJECTION"] = '[{"op": "read", "key": "wal_005", "delay": 60}]'
    env.start()
    assert env.daemon is not None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(env.socket))
        body = fetch_body(SEG, str(dest))
        conn.sendall(b"f" + (len(body) + 3).to_bytes(2, "big") + body)
        deadline = time.monotonic() + 30
        while not (left := list(wal.glob(".RECOVERYXLOG.walg-*"))):
            assert time.monotonic() < deadline, "the download never began"
            time.sleep(0.01)
        env.daemon.kill()
        env.daemon.wait()
    env.daemon = None
    assert [p.exists() for p in left] == [True]
    old = time.time() - 11 * 60  # untouched for 11 minutes
    os.utime(left[0], (old, old))
    env.env.pop("WALG_FAULT_INJECTION")
    env.socket.unlink()  # the dead daemon's (a stale socket is replaced: tested above)
    env.start()
    assert _request(env.socket, b"f", fetch_body(SEG, str(dest))) == b"O"
    assert dest.read_bytes() == data
    deadline = time.monotonic() + 10
    while left[0].exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = env.stop()
    assert not left[0].exists(), log


def test_a_segment_the_follower_archived_vouches_only_for_that_file(env: Env) -> None:
    """The WAL follower archives a segment before PostgreSQL asks for it; then the data
    directory is restored anew under the running daemon (a file system snapshot put back: the
    server recovers from its crash state and writes that segment again, on the same timeline,
    with other content). PostgreSQL's push of the new file was answered O from the follower's
    memory of the name alone, while the archive holds the old segment: WAL reported archived
    that is not. walg wal-push refuses it (different content), and so must the daemon."""
    from test_wal_follow import PAGE, SEG_SIZE, page_bytes

    name = "000000010000000000000005"
    env.env.update(
        {"WALG_PG_WAL_SIZE": "4", "WALG_DAEMON_FOLLOW_WAL": "true", "WALG_UPLOAD_CONCURRENCY": "2"}
    )

    def write(fill: int) -> Path:
        wal = env.pgdata / "pg_wal"
        (wal / "archive_status").mkdir(parents=True)
        pages = [page_bytes(name, p, fill) for p in range(SEG_SIZE // PAGE)]
        (wal / name).write_bytes(b"".join(pages))
        return wal

    wal = write(0)
    first = (wal / name).read_bytes()
    env.start()
    # The follower has picked the segment being written: its object is being prepared. (A
    # fixed pause could end before its first poll on a loaded machine; the look-ahead would
    # then archive the segment once .ready, and the follower's answer would go untested.)
    deadline = time.monotonic() + 30
    while not list((env.store / "wal_005").glob(f"{name}.lz4.tmp.*")):
        assert time.monotonic() < deadline, "the follower never picked the segment"
        time.sleep(0.01)
    (wal / "archive_status" / f"{name}.ready").touch()
    stored = env.store / "wal_005" / f"{name}.lz4"
    while not stored.exists():
        assert time.monotonic() < deadline, "the follower did not archive the segment"
        time.sleep(0.02)
    shutil.rmtree(env.pgdata)
    time.sleep(1.1)  # another modification time
    wal = write(1)
    (wal / "archive_status" / f"{name}.ready").touch()
    assert (wal / name).read_bytes() != first
    reply = _request(env.socket, b"F", str(wal / name).encode())
    log = env.stop()
    fetched = env.root / "fetched"
    got = _walg(env, env.env, "wal-fetch", name, str(fetched))
    assert got.returncode == 0, got.stderr
    assert fetched.read_bytes() == first, "the archived segment is the first one"
    assert reply == b"E", f"the new segment was reported archived: {log}"
    assert "different content" in log, log


def _usage(pid: int) -> tuple[int, int, int]:
    """Open descriptors, threads and resident KiB of process ``pid``."""
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return fds, int(status["Threads"]), int(status["VmRSS"].split()[0])


def test_thousands_of_requests_leave_the_daemon_and_pg_wal_as_they_were(env: Env) -> None:
    """A soak: about four thousand requests of every kind (pushes stored, refused and past
    their limit; fetches done, missing, refused and past their limit; garbage, a connection
    closed before, during and after its request; checks on one connection). The daemon's
    descriptors, threads and memory stay within bounds, and nothing is left in pg_wal (no
    temporary file, marker or lock) or in storage (no temporary object)."""
    wal = env.pgdata / "pg_wal"
    (wal / "archive_status").mkdir()
    served, slow = SEG, "0000000100000000000000FF"
    for name in (served, slow):
        (wal / name).write_bytes(os.urandom(1 << 16))
        done = _walg(env, env.env, "wal-push", str(wal / name))
        assert done.returncode == 0, done.stderr
        (wal / name).unlink()
    env.env.update(
        {
            "WALG_UPLOAD_CONCURRENCY": "3",
            "WALG_DOWNLOAD_CONCURRENCY": "2",
            "WALG_DAEMON_WAL_FETCH_TIMEOUT": "1s",
            "WALG_DAEMON_WAL_UPLOAD_TIMEOUT": "1s",
            "WALG_FAULT_INJECTION": json.dumps(
                [
                    {"op": "read", "key": slow, "delay": 1.5},
                    {"op": "write", "key": "wal_005/00000002", "delay": 1.5},
                ]
            ),
        }
    )
    # Its log to a file: thousands of failed requests are logged, more than a pipe holds.
    log_path = env.root / "daemon.log"
    with log_path.open("w") as log_file:
        env.daemon = subprocess.Popen(
            [env.walg_bin, "daemon", str(env.socket), str(env.pgdata)],
            env=env.env,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    deadline = time.monotonic() + 30
    while not env.socket.exists():
        assert env.daemon.poll() is None and time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.02)
    pid = env.daemon.pid
    dest = str(wal / "RECOVERYXLOG")

    def request(kind: bytes, body: bytes) -> bytes:
        return _request(env.socket, kind, body)

    def raw(data: bytes, answer: bool) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(30)
            conn.connect(str(env.socket))
            if data:
                conn.sendall(data)
            return conn.recv(1) if answer else b""

    replies: dict[str, set[bytes]] = {}

    def round_of_requests(i: int) -> None:
        name = f"00000001000000000000{0x1000 + i:04X}"
        segment = wal / name
        segment.write_bytes(os.urandom(1 << 14))
        if i % 3 == 0:  # the look-ahead races PostgreSQL's call for it
            (wal / "archive_status" / f"{name}.ready").touch()
        got = {
            "push": request(b"F", str(segment).encode()),
            "fetch": request(b"f", fetch_body(served, dest)),
            "missing": request(b"f", fetch_body(f"00000003000000000000{i:04X}", dest)),
            "elsewhere": request(b"f", fetch_body(served, str(env.root / "RECOVERYXLOG"))),
            "garbage": request(b"Z", b"xx"),
            "bad length": raw(b"F\x00\x01", True),
        }
        segment.write_bytes(os.urandom(1 << 14))
        got["other content"] = request(b"F", str(segment).encode())
        (wal / "archive_status" / f"{name}.ready").unlink(missing_ok=True)
        segment.unlink()
        for data in (b"", b"F", b"F\x00\x40abc"):
            raw(data, False)
        body = fetch_body(served, dest)
        raw(b"f" + (len(body) + 3).to_bytes(2, "big") + body, False)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(30)
            conn.connect(str(env.socket))
            for _ in range(3):
                conn.sendall(b"C\x00\x03")
                got.setdefault("check", b"")
                got["check"] = conn.recv(1)
        if i % 40 == 0:
            # Both at once: each waits out its 1 s limit, and one wait is enough for both.
            late = wal / f"00000002000000000000{i:04X}"
            late.write_bytes(os.urandom(1 << 14))
            with ThreadPoolExecutor(2) as pool:
                fetch = pool.submit(request, b"f", fetch_body(slow, dest))
                push = pool.submit(request, b"F", str(late).encode())
                got["fetch past its limit"] = fetch.result()
                got["push past its limit"] = push.result()
            late.unlink()
        for what, reply in got.items():
            replies.setdefault(what, set()).add(reply)

    for i in range(40):
        round_of_requests(i)
    time.sleep(1)
    before = _usage(pid)
    for i in range(40, 300):
        round_of_requests(i)
    deadline = time.monotonic() + 10
    while (after := _usage(pid))[:2] > before[:2] and time.monotonic() < deadline:
        time.sleep(0.2)  # connection threads ending, abandoned work finishing
    env.daemon.send_signal(signal.SIGTERM)
    assert env.daemon.wait(timeout=60) == 0, log_path.read_text()[-3000:]
    env.daemon = None
    log = log_path.read_text()
    assert replies == {
        "push": {b"O"},
        "fetch": {b"O"},
        "missing": {b"N"},
        "elsewhere": {b"E"},
        "garbage": {b"E"},
        "bad length": {b"E"},
        "other content": {b"E"},
        "check": {b"O"},
        "fetch past its limit": {b"E"},
        "push past its limit": {b"E"},
    }, log[-3000:]
    fds, threads, rss = after
    assert fds <= before[0] + 2, (before, after)
    assert threads <= before[1] + 2, (before, after)
    assert rss - before[2] < 24 << 10, (before, after)
    left = sorted(os.listdir(wal))
    assert left == [".wal-g", "RECOVERYXLOG", "archive_status", "walg_data"], left
    # Nothing but the stamp of the hourly sweep of temporary objects (one file, rewritten).
    status = wal / "walg_data" / "walg_archive_status"
    assert [p.name for p in status.iterdir() if p.name != ".swept"] == []
    assert not [p for p in (wal / ".wal-g").rglob("*") if p.is_file()]
    assert not [p for p in env.store.rglob("*") if ".tmp." in p.name]


def test_lock_files_of_uploads_killed_with_their_daemon_are_removed(env: Env) -> None:
    """A daemon killed outright (SIGKILL, the OOM killer) while its look-ahead uploads a segment
    leaves that upload's lock file in walg_data/walg_archive_status. PostgreSQL's call for the
    segment then goes through the next daemon, which archives it without that lock, and
    nothing ever removed the file: one more per upload in flight at every such kill. Once
    PostgreSQL has finished with the segment it goes, as markers do; a lock still held stays."""
    wal = env.pgdata / "pg_wal"
    status = wal / "walg_data" / "walg_archive_status"
    (wal / "archive_status").mkdir()
    (wal / SEG).write_bytes(os.urandom(1 << 20))
    (wal / "archive_status" / f"{SEG}.ready").touch()
    env.env["WALG_UPLOAD_CONCURRENCY"] = "2"
    env.env["WALG_FAULT_INJECTION"] = '[{"op": "write", "key": "wal_005", "delay": 60}]'
    env.start()
    assert env.daemon is not None
    lock = status / f"{SEG}.lock"
    deadline = time.monotonic() + 30
    while not lock.exists():
        assert time.monotonic() < deadline, "the look-ahead never began"
        time.sleep(0.01)
    env.daemon.kill()
    env.daemon.wait()
    env.daemon = None
    assert lock.exists()
    # PostgreSQL archives the segment by another call and finishes with it.
    (wal / "archive_status" / f"{SEG}.ready").rename(wal / "archive_status" / f"{SEG}.done")
    # Another segment's lock, held by a live upload (here this test): left alone.
    held_name = "000000010000000000000004"
    held = status / f"{held_name}.lock"
    fd = os.open(held, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        env.env.pop("WALG_FAULT_INJECTION")
        env.socket.unlink()  # the dead daemon's
        env.start()
        deadline = time.monotonic() + 10
        while lock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held.exists()
        log = env.stop()
    finally:
        os.close(fd)
    assert not lock.exists(), log


def test_a_push_whose_look_ahead_upload_failed_is_not_answered_done(env: Env) -> None:
    """PostgreSQL asks for a segment the look-ahead is uploading; the daemon waits for that
    upload, which fails (storage full). The answer must come from the daemon's own try (an
    error, storage still failing), never O: the look-ahead's upload ended, but stored nothing,
    and PostgreSQL would recycle a segment that is in no archive."""
    wal = env.pgdata / "pg_wal"
    (wal / "archive_status").mkdir()
    segment = wal / SEG
    segment.write_bytes(os.urandom(BIG))
    (wal / "archive_status" / f"{SEG}.ready").touch()
    env.env.update(
        {
            "WALG_UPLOAD_CONCURRENCY": "2",
            "WALG_DAEMON_FOLLOW_WAL": "false",
            "WALG_FAULT_INJECTION": json.dumps(
                [{"op": "write", "key": "wal_005", "delay": 1.5, "fail": "no space left"}]
            ),
        }
    )
    env.start()
    time.sleep(0.5)  # the look-ahead has found the .ready file and is uploading it
    assert _request(env.socket, b"F", str(segment).encode()) == b"E"
    log = env.stop()
    assert "no space left" in log, log
    assert not list(env.store.glob("wal_005/*.lz4")), "nothing was stored"


def test_a_request_that_fails_unexpectedly_is_answered_e(env: Env) -> None:
    """A request whose handling raises what walg does not expect (here a path with a NUL
    byte, which the file system calls refuse with ValueError) did no work: the answer is E,
    never O, and the daemon goes on serving."""
    env.start()
    wal = env.pgdata / "pg_wal"
    assert _request(env.socket, b"F", f"{wal}\0/{SEG}".encode()) == b"E"
    assert _request(env.socket, b"f", fetch_body(SEG, f"{wal}\0/RECOVERYXLOG")) == b"E"
    assert _request(env.socket, b"C", b"") == b"O"
    log = env.stop()
    assert log.count("unexpected error") == 2, log


def test_a_storage_folder_gone_while_the_daemon_runs_is_no_end_of_the_archive(
    env: Env,
) -> None:
    """The daemon runs for months; its storage volume may be unmounted under it (here the
    folder is removed). A fetch must then fail (E: the client exits 128 in archive recovery),
    never answer "not in the archive" (N), on which PostgreSQL ends recovery and promotes
    without the rest of the WAL."""
    _archive(env, os.urandom(1 << 16))
    env.start()
    dest = str(env.pgdata / "pg_wal" / "RECOVERYXLOG")
    assert _request(env.socket, b"f", fetch_body(SEG, dest)) == b"O"
    os.unlink(dest)
    shutil.rmtree(env.store)
    assert _request(env.socket, b"f", fetch_body(SEG, dest)) == b"E"
    assert _request(env.socket, b"f", fetch_body("000000010000000000000009", dest)) == b"E"
    log = env.stop()
    assert str(env.store) in log, log
    assert not os.path.exists(dest)


def test_a_push_whose_commit_outlives_its_limit_is_not_answered_done_before_it(
    env: Env,
) -> None:
    """The push's work has read and compressed the segment and was let commit; then the
    commit (fsync, link) takes longer than the request's limit (a slow disk: here every fsync
    of the daemon is delayed 2.5 s by strace). The answer must wait for the commit and tell
    how it went, within the extra time allowed: never O while the object is not stored."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (scripts/setup.sh installs it)")
    wal = env.pgdata / "pg_wal"
    (wal / "archive_status").mkdir()
    segment = wal / SEG
    segment.write_bytes(os.urandom(1 << 16))
    (wal / "archive_status" / f"{SEG}.ready").touch()
    env.env.update({"WALG_UPLOAD_CONCURRENCY": "1", "WALG_DAEMON_WAL_UPLOAD_TIMEOUT": "1s"})
    (env.store / "wal_005").mkdir()  # made now, the push's first fsync is its commit's
    slow = [strace, "-f", "-qq", "-o", "/dev/null", "--inject=fsync:delay_exit=2500000"]
    env.daemon = subprocess.Popen(
        [*slow, env.walg_bin, "daemon", str(env.socket), str(env.pgdata)],
        env=env.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not env.socket.exists():
        assert env.daemon.poll() is None, env.daemon.communicate()
        assert time.monotonic() < deadline, "daemon did not start"
        time.sleep(0.02)
    obj = env.store / "wal_005" / f"{SEG}.lz4"
    reply = _request(env.socket, b"F", str(segment).encode())
    stored_when_answered = obj.is_file()
    time.sleep(6)  # the delayed commit is over either way
    # The daemon itself, not strace (which would detach and leave it running).
    tracer = env.daemon.pid
    (child,) = Path(f"/proc/{tracer}/task/{tracer}/children").read_text().split()
    os.kill(int(child), signal.SIGTERM)
    _, log = env.daemon.communicate(timeout=60)
    env.daemon = None
    assert reply in (b"O", b"E"), reply
    assert reply == b"E" or stored_when_answered, f"O before the object was stored\n{log}"


def test_a_full_wal_volume_fails_each_fetch_and_the_next_one_succeeds_once_there_is_room(
    env: Env,
) -> None:
    """The daemon's fetch into a full pg_wal (a 4 MiB tmpfs: no room for a 16 MiB segment):
    each request is answered E, naming the cause in the daemon's log (once, then referred
    to), and leaves no partial file behind; once the volume has room (remounted larger) the
    same request delivers the whole segment: no failure is remembered, nothing truncated is
    served."""
    data = os.urandom(BIG)
    _archive(env, data)
    wal = env.pgdata / "pg_wal"
    with small_tmpfs(wal, "size=4m,mode=0700"):
        (env.pgdata / "standby.signal").touch()
        env.env["WALG_DOWNLOAD_CONCURRENCY"] = "4"  # a prefetch may not fill it either
        env.start()
        dest = wal / "RECOVERYXLOG"
        for _ in range(2):  # a standby asks again and again
            assert _request(env.socket, b"f", fetch_body(SEG, str(dest))) == b"E"
            assert not [p for p in wal.rglob("*") if p.is_file()], list(wal.rglob("*"))
        subprocess.run(["mount", "-o", "remount,size=64m", str(wal)], check=True)
        assert _request(env.socket, b"f", fetch_body(SEG, str(dest))) == b"O"
        assert dest.read_bytes() == data
        log = env.stop()
    # Named once; the standby's next ask refers to it (the log is not flooded with it).
    assert log.count("No space left on device") == 1, log
    assert f"wal-fetch of {SEG} failed again (2 times)" in log, log


@pytest.mark.parametrize("concurrency", ["4", "1"], ids=["look-ahead", "no-look-ahead"])
def test_what_a_finished_recovery_prefetched_is_removed_by_its_daemon(
    env: Env, concurrency: str
) -> None:
    """A restore through the daemon that stops at its target leaves the segments prefetched
    past it in pg_wal/.wal-g/prefetch (up to WALG_DOWNLOAD_CONCURRENCY of them). Only the
    archiving of the new timeline's .history removed them, so a restored server with
    archive_mode = off (a test or forensic restore) kept them for good: 7 segments, 112 MiB,
    after a restore through the daemon to a restore point on PostgreSQL 16. The daemon, which
    sweeps that data directory every minute anyway, removes them once recovery has ended,
    and leaves them while it goes on."""
    key = "0123456789abcdef0123456789abcdef"
    folder = env.pgdata / "pg_wal" / ".wal-g" / "prefetch" / key
    folder.mkdir(parents=True)
    prefetched = folder / SEG
    prefetched.write_bytes(b"\0" * 8192)
    (env.pgdata / "PG_VERSION").write_text("16\n")
    (env.pgdata / "recovery.signal").touch()
    env.env["WALG_UPLOAD_CONCURRENCY"] = concurrency
    env.start()
    time.sleep(1)
    assert prefetched.exists(), "removed while recovery went on"
    log = env.stop()
    (env.pgdata / "recovery.signal").unlink()  # promoted
    env.start()
    deadline = time.monotonic() + 10
    while prefetched.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    log += env.stop()
    assert not prefetched.exists(), log


def test_a_relative_storage_prefix_is_refused_unless_the_daemon_runs_in_the_data_directory(
    env: Env,
) -> None:
    """PostgreSQL runs archive_command and restore_command in its data directory, so walg run
    by the client while the daemon is down resolves a relative WALG_FILE_PREFIX there. A
    daemon started elsewhere (systemd starts services in /) resolved it in its own folder:
    with both folders present, WAL went into two storages, each missing what the other
    holds. Refused now (exit 78, naming both folders), unless the daemon runs in the data
    directory, where it means what it means to the client's fallback."""
    elsewhere = env.root / "elsewhere" / "cwd"
    elsewhere.mkdir(parents=True)
    (env.root / "elsewhere" / "store").mkdir()  # what ../store is from there
    env.env["WALG_FILE_PREFIX"] = "../store"
    argv = [env.walg_bin, "daemon", str(env.socket), str(env.pgdata)]
    refused = subprocess.run(
        argv, env=env.env, capture_output=True, text=True, timeout=60, check=False, cwd=elsewhere
    )
    assert refused.returncode == 78, refused.stderr
    assert "WALG_FILE_PREFIX" in refused.stderr and "relative" in refused.stderr
    assert str(env.pgdata) in refused.stderr, refused.stderr
    assert not env.socket.exists()
    # In the data directory, ../store is the store beside it, as for the client's fallback.
    daemon = subprocess.Popen(
        argv, env=env.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        cwd=env.pgdata,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not env.socket.exists():
            assert daemon.poll() is None, daemon.communicate()
            assert time.monotonic() < deadline, "daemon did not start"
            time.sleep(0.02)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err


def test_what_a_daemon_started_elsewhere_prefetched_serves_its_client_s_fallback(
    env: Env,
) -> None:
    """The daemon keyed its prefetch folder (and its look-ahead markers) with its own working
    directory, and PostgreSQL's calls run in the data directory: with the daemon stopped
    midway through a restore, walg run by the client found nothing the daemon had prefetched,
    downloaded each segment again and left the daemon's files behind. A daemon started
    elsewhere (systemd starts services in /) is keyed as PostgreSQL's calls are now. Shown
    by removing the prefetched segment's object before the fallback asks for it."""
    first, second = SEG, "000000010000000000000004"
    wal_dir = env.store / "wal_005"
    wal_dir.mkdir()
    for name in (first, second):
        (wal_dir / f"{name}.lz4").write_bytes(lz4.frame.compress(segment_bytes(name, 7)))
    env.env["WALG_DOWNLOAD_CONCURRENCY"] = "2"
    env.start()
    dest = env.pgdata / "pg_wal" / "RECOVERYXLOG"
    assert _request(env.socket, b"f", fetch_body(first, str(dest))) == b"O"
    deadline = time.monotonic() + 30
    while not list(env.pgdata.glob(f"pg_wal/.wal-g/prefetch/*/{second}")):
        assert time.monotonic() < deadline, "the daemon prefetched nothing"
        time.sleep(0.05)
    env.stop()
    (wal_dir / f"{second}.lz4").unlink()
    fallback = subprocess.run(
        [env.walg_bin, "wal-fetch", second, "pg_wal/RECOVERYXLOG"],
        env=env.env, capture_output=True, text=True, timeout=60, check=False, cwd=env.pgdata,
    )  # fmt: skip
    assert fallback.returncode == 0, fallback.stderr
    assert dest.read_bytes() == segment_bytes(second, 7)
    assert not list(env.pgdata.glob(f"pg_wal/.wal-g/prefetch/*/{second}"))
