"""Both walg-daemon-clients (the Python script and the compiled one) against a real walg daemon.

Every behaviour PostgreSQL relies on is checked for each: exit codes, overwrite refusal,
"not in the archive", a daemon that is down (push fails, fetch falls back to walg wal-fetch),
one that closes a connection unanswered (both run walg directly), a daemon that never answers
(timeout), usage errors, requests for another data directory (refused), a listener of another
user (not trusted), a full listen queue (waited for), and the exit code of a failed fetch in
archive recovery (128, so that PostgreSQL stops instead of promoting).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from daemonenv import SEG, Client, Env, client_in_venv, run_in
from fakewal import run_walg

MISSING = "0000000100000000000000F0"


@pytest.fixture(scope="module")
def clients(walg_bin: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Client]:
    native = tmp_path_factory.mktemp("native") / "walg-daemon-client-native"
    built = subprocess.run(
        [walg_bin, "build-daemon-client", str(native)], capture_output=True, text=True, check=False
    )
    assert built.returncode == 0, built.stderr
    assert built.stdout.strip() == str(native)
    script = str(Path(walg_bin).with_name("walg-daemon-client"))
    return {
        # The installed script runs the compiled client beside it when there is one (setup.sh
        # builds it); this variable makes it run the Python client instead.
        "python": Client(script, {"WALG_DAEMON_CLIENT_PYTHON": "1"}),
        "native": Client(str(native), {}),
    }


@pytest.fixture(params=["python", "native"])
def client(request: pytest.FixtureRequest, clients: dict[str, Client]) -> Client:
    return clients[request.param]


def test_check_push_fetch_and_missing(env: Env, client: Client) -> None:
    data = os.urandom(4096) * 64
    (env.pgdata / "pg_wal" / SEG).write_bytes(data)
    env.start()
    sock = str(env.socket)
    assert env.run(client, sock, "check").returncode == 0
    # %p as PostgreSQL passes it: relative to the data directory, the command's cwd.
    pushed = env.run(client, sock, "wal-push", f"pg_wal/{SEG}", cwd=env.pgdata)
    assert pushed.returncode == 0, pushed.stderr
    assert (env.store / "wal_005" / f"{SEG}.lz4").is_file()
    # The same content again succeeds without rewriting.
    assert env.run(client, sock, "wal-push", f"pg_wal/{SEG}", cwd=env.pgdata).returncode == 0

    fetched = env.run(client, sock, "wal-fetch", SEG, "pg_wal/RECOVERYXLOG", cwd=env.pgdata)
    assert fetched.returncode == 0, fetched.stderr
    assert (env.pgdata / "pg_wal" / "RECOVERYXLOG").read_bytes() == data

    other = env.pgdata / "pg_wal" / "other"
    missing = env.run(client, sock, "wal-fetch", MISSING, str(other))
    assert missing.returncode == 74
    assert not other.exists()
    env.stop()


def test_different_content_under_an_archived_name_fails(env: Env, client: Client) -> None:
    path = env.pgdata / "pg_wal" / SEG
    path.write_bytes(b"first" * 1000)
    env.start()
    assert env.run(client, str(env.socket), "wal-push", str(path)).returncode == 0
    stored = (env.store / "wal_005" / f"{SEG}.lz4").read_bytes()
    path.write_bytes(b"second" * 1000)
    again = env.run(client, str(env.socket), "wal-push", str(path))
    assert again.returncode == 1
    assert "failed" in again.stderr and "error" in again.stderr
    assert (env.store / "wal_005" / f"{SEG}.lz4").read_bytes() == stored
    log = env.stop()
    assert SEG in log


def test_daemon_down_push_fails_and_fetch_runs_walg_directly(env: Env, client: Client) -> None:
    path = env.pgdata / "pg_wal" / SEG
    data = os.urandom(1 << 16)
    path.write_bytes(data)
    down = env.run(client, str(env.socket), "wal-push", str(path))
    assert down.returncode == 1
    assert "not running" in down.stderr and "nothing was done" in down.stderr
    assert not (env.store / "wal_005").exists()

    # Archive it with walg itself, then fetch with no daemon listening.
    pushed = subprocess.run(
        [env.walg_bin, "wal-push", str(path)],
        env=env.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert pushed.returncode == 0, pushed.stderr
    dest = env.root / "RECOVERYXLOG"
    fetched = env.run(client, str(env.socket), "wal-fetch", SEG, str(dest))
    assert fetched.returncode == 0, fetched.stderr
    assert "fetching directly" in fetched.stderr
    assert dest.read_bytes() == data
    missing = env.run(client, str(env.socket), "wal-fetch", MISSING, str(env.root / "x"))
    assert missing.returncode == 74


def _silent_server(
    path: Path, close_at_once: bool, reply: bytes | None = None
) -> tuple[socket.socket, threading.Thread]:
    """A listener that closes each connection at once, holds it unanswered, or (``reply``)
    reads one request and answers ``reply``."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)
    held: list[socket.socket] = []

    def answer(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                header = conn.recv(3, socket.MSG_WAITALL)
                if len(header) == 3:
                    length = int.from_bytes(header[1:], "big")
                    if length > 3:
                        conn.recv(length - 3, socket.MSG_WAITALL)
                    assert reply is not None
                    conn.sendall(reply)
            except OSError:
                pass

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            if reply is not None:
                threading.Thread(target=answer, args=(conn,), daemon=True).start()
            elif close_at_once:
                conn.close()
            else:
                held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return srv, thread


def test_a_daemon_that_never_answers_times_out(env: Env, client: Client) -> None:
    srv, thread = _silent_server(env.socket, close_at_once=False)
    try:
        start = time.monotonic()
        res = env.run(
            client,
            str(env.socket),
            "wal-push",
            f"pg_wal/{SEG}",
            extra={"WALG_DAEMON_CLIENT_TIMEOUT": "0.3"},
        )
        elapsed = time.monotonic() - start
    finally:
        srv.close()
        thread.join(5)
    assert res.returncode == 1
    assert "timed out" in res.stderr and "nothing is known to be done" in res.stderr
    assert elapsed < 10


def test_a_daemon_that_closes_without_a_reply_is_bypassed(env: Env, client: Client) -> None:
    """A daemon that accepted the connection and closed it unanswered (stopped by a restart,
    or died): the client gets a reset, a broken pipe or the end of the stream, and runs walg
    itself, as with no daemon at all. A fetch failing instead (128) stopped a recovering
    PostgreSQL; walg's push never replaces an archived object, so a push is run too."""
    data = os.urandom(1 << 16)
    _archive_with_walg(env, SEG, data)
    (env.pgdata / "recovery.signal").touch()
    new = "000000010000000000000004"
    (env.pgdata / "pg_wal" / new).write_bytes(os.urandom(1 << 16))
    srv, thread = _silent_server(env.socket, close_at_once=True)
    try:
        fetched = env.run(
            client, str(env.socket), "wal-fetch", SEG, "pg_wal/RECOVERYXLOG", cwd=env.pgdata
        )
        missing = env.run(
            client, str(env.socket), "wal-fetch", MISSING, "pg_wal/RECOVERYXLOG2", cwd=env.pgdata
        )
        pushed = env.run(client, str(env.socket), "wal-push", f"pg_wal/{new}", cwd=env.pgdata)
        again = env.run(client, str(env.socket), "wal-push", f"pg_wal/{SEG}", cwd=env.root / "src")
        checked = env.run(client, str(env.socket), "check")
    finally:
        _stop_server(srv, thread)
    assert fetched.returncode == 0, fetched.stderr
    assert "stopped before answering" in fetched.stderr and "directly" in fetched.stderr
    assert (env.pgdata / "pg_wal" / "RECOVERYXLOG").read_bytes() == data
    assert missing.returncode == 74, missing.stderr
    assert pushed.returncode == 0, pushed.stderr
    assert (env.store / "wal_005" / f"{new}.lz4").is_file()
    assert again.returncode == 0, again.stderr  # the same content again: success
    assert checked.returncode == 1, checked.stderr


def _archive_with_walg(env: Env, name: str, data: bytes) -> None:
    """Store ``data`` as ``name`` with walg itself (no daemon), from ``env.root/src/pg_wal``."""
    source = env.root / "src" / "pg_wal"
    source.mkdir(parents=True, exist_ok=True)
    (source / name).write_bytes(data)
    done = subprocess.run(
        [env.walg_bin, "wal-push", str(source / name)],
        env=env.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["SOCK"],
        ["SOCK", "wal-push"],
        ["SOCK", "wal-fetch", SEG],
        ["SOCK", "check", "extra"],
        ["SOCK", "backup-push", "x"],
    ],
)
def test_usage_errors_exit_2(env: Env, client: Client, args: list[str]) -> None:
    res = env.run(client, *args)
    assert res.returncode == 2
    assert res.stderr.startswith("usage: walg-daemon-client SOCKET")


@pytest.mark.parametrize(
    # Refused by both clients alike: C's strtod reads hexadecimal, Python's float underscores.
    "value",
    ["abc", "0", "-1", "", "0x10", "1_0", "inf", "nan", "1e", "5s", "1e10"],
)
def test_a_bad_timeout_is_refused_before_anything_is_done(
    env: Env, client: Client, value: str
) -> None:
    res = env.run(client, str(env.socket), "check", extra={"WALG_DAEMON_CLIENT_TIMEOUT": value})
    assert res.returncode == 1
    assert "WALG_DAEMON_CLIENT_TIMEOUT" in res.stderr


@pytest.mark.parametrize("value", ["5 ", " 5", "\t5\n", "2.5", ".5", "5.", "1e2", "+5"])
def test_both_clients_take_the_same_timeouts(env: Env, client: Client, value: str) -> None:
    """The compiled client has the same command line as the Python one: a timeout one takes
    and the other refuses would make every push fail (and a recovery's fetch stop) after
    WALG_DAEMON_CLIENT_PYTHON or a rebuild switched clients. The native one refused
    surrounding white space, which Python's float takes."""
    env.start()
    res = env.run(client, str(env.socket), "check", extra={"WALG_DAEMON_CLIENT_TIMEOUT": value})
    assert res.returncode == 0, res.stderr


def test_a_socket_path_too_long_for_unix_sockets_fails(env: Env, client: Client) -> None:
    """Refused as too long: a path cut to what sun_path holds would name another socket
    (here none, which reads as "the daemon is not running")."""
    res = env.run(client, "/tmp/" + "s" * 200, "check")
    assert res.returncode == 1
    assert "too long" in res.stderr and "nothing" in res.stderr, res.stderr
    assert "not running" not in res.stderr, res.stderr


def _build(
    walg_bin: str, *args: str, before: Sequence[str] = (), **extra: str
) -> subprocess.CompletedProcess[str]:
    """``walg build-daemon-client ARGS`` (run by ``before``, a tracer, if given) in an
    environment with none of walg's settings but ``extra``."""
    env = {"PATH": os.environ.get("PATH", ""), **extra}
    return run_walg([*before, walg_bin, "build-daemon-client", *args], env, timeout=120)


def test_build_reports_a_compiler_failure(walg_bin: str, tmp_path: Path) -> None:
    res = _build(
        walg_bin, str(tmp_path / "c"), "--cc", "/bin/false", WALG_FILE_PREFIX=str(tmp_path / "s")
    )
    assert res.returncode == 1
    assert "/bin/false failed" in res.stderr
    assert not (tmp_path / "c").exists()
    assert os.listdir(tmp_path) == [], "no temporary directory is left"


def test_build_prints_the_client_it_made_runnable_by_every_user(
    walg_bin: str, tmp_path: Path
) -> None:
    """Built by root for a server that runs as postgres: the client must be executable by
    that user too, and a build says on stdout what it made (an install script records it).
    The walg it falls back on is compiled in as a C string, so a folder named with a quote
    or a backslash must still give a client that runs that walg."""
    folder = tmp_path / 'odd "name" \\ here'
    folder.mkdir()
    (folder / "walg").symlink_to(walg_bin)
    out = tmp_path / "client"
    built = _build(walg_bin, str(out), "--walg", str(folder / "walg"))
    assert built.returncode == 0, built.stderr
    assert built.stdout == f"{out}\n"
    assert out.stat().st_mode & 0o777 == 0o755
    # No daemon at the socket: the client runs the walg compiled in, which finds no file.
    store = tmp_path / "store"
    store.mkdir()
    fetched = subprocess.run(
        [str(out), str(tmp_path / "no.sock"), "wal-fetch", SEG, str(tmp_path / "dest")],
        env={"PATH": os.environ.get("PATH", ""), "WALG_FILE_PREFIX": str(store)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert fetched.returncode == 74, fetched.stderr


def test_build_refuses_a_walg_that_is_not_executable(walg_bin: str, tmp_path: Path) -> None:
    """The client runs that walg for every fetch no daemon answers: one that cannot run
    would fail each of them, so the build refuses it up front, naming it."""
    missing = tmp_path / "not" / "walg"
    out = tmp_path / "client"
    res = _build(walg_bin, str(out), "--walg", str(missing))
    assert res.returncode == 1
    assert f"{missing} is not an executable walg" in res.stderr, res.stderr
    assert not out.exists()


def test_the_script_prefers_the_compiled_client_beside_it(walg_bin: str, tmp_path: Path) -> None:
    """bin/walg-daemon-client as PostgreSQL runs it (through /bin/sh), with stand-ins for the
    programs it may exec: the compiled client when present, else python3 on itself."""
    script = tmp_path / "walg-daemon-client"
    script.write_bytes(Path(walg_bin).with_name("walg-daemon-client").read_bytes())
    for name in ("python3", "walg-daemon-client-native"):
        stub = tmp_path / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*"\n')
    script.chmod(0o755)
    (tmp_path / "python3").chmod(0o755)

    def run(extra: dict[str, str]) -> str:
        env = {"PATH": os.environ.get("PATH", ""), **extra}
        out = subprocess.run(
            [str(script), "SOCK", "check"], env=env, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()

    # Not executable: not used.
    assert run({}) == f"python3 -S -E {script} SOCK check"
    (tmp_path / "walg-daemon-client-native").chmod(0o755)
    assert run({}) == "walg-daemon-client-native SOCK check"
    assert run({"WALG_DAEMON_CLIENT_PYTHON": "1"}) == f"python3 -S -E {script} SOCK check"


def test_the_python_client_loads_nothing_of_walg_but_itself(walg_bin: str, tmp_path: Path) -> None:
    """The installed script as its shell part runs it (python3 -S -E), with an import log: the
    client module, and neither walg's __init__ (dataclasses, the compiled-methods table) nor
    anything else of walg or the heavy standard modules."""
    script = Path(walg_bin).with_name("walg-daemon-client")
    python = Path(walg_bin).with_name("python3")
    out = subprocess.run(
        [str(python), "-S", "-E", "-X", "importtime", str(script), str(tmp_path / "s"), "check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 1 and "nothing" in out.stderr  # no daemon there: an honest failure
    imported = {
        line.split("|")[-1].strip()
        for line in out.stderr.splitlines()
        if line.startswith("import time:") and not line.rstrip().endswith("package")
    }
    assert "walg.daemon_client" in imported
    walg_modules = {name for name in imported if name.startswith("walg")}
    assert walg_modules == {"walg.daemon_client"}, walg_modules
    heavy = {"dataclasses", "socket", "enum", "re", "functools", "typing", "atexit"} & imported
    assert heavy == set(), heavy


def test_build_into_a_missing_directory_says_so(walg_bin: str, tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "dir" / "client"
    res = _build(walg_bin, str(target))
    assert res.returncode == 1
    assert "is not a directory" in res.stderr
    assert "unexpected" not in res.stderr


def fetch_body(name: str, dest: str) -> bytes:
    """The body of a wal-fetch (``f``) message: two length-prefixed arguments."""
    body = bytes([2])
    for arg in (name, dest):
        body += len(arg.encode()).to_bytes(2, "big") + arg.encode()
    return body


def _request(sock: Path, kind: bytes, body: bytes) -> bytes:
    """One request in WAL-G's framing, as WAL-G's own client writes it; the one-byte reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(60)
        conn.connect(str(sock))
        conn.sendall(kind + (len(body) + 3).to_bytes(2, "big") + body)
        return conn.recv(1)


def test_push_requests_as_wal_g_client_sends_them(env: Env) -> None:
    """WAL-G's client sends its argument unchanged: ``%f`` as WAL-G documents, or ``%p``."""
    wal = env.pgdata / "pg_wal"
    names = [f"0000000100000000000000{n:02X}" for n in range(0x10, 0x14)]
    for name in names:
        (wal / name).write_bytes(os.urandom(8192))
    env.start()
    bodies = [names[0], f"pg_wal/{names[1]}", str(wal / names[2]), f"./pg_wal/../pg_wal/{names[3]}"]
    for body in bodies:
        assert _request(env.socket, b"F", body.encode()) == b"O", body
    stored = sorted(p.name for p in (env.store / "wal_005").iterdir())
    assert stored == [f"{name}.lz4" for name in names]
    # A path outside the pg_wal the daemon serves is refused, never archived from its pg_wal.
    elsewhere = env.root / "elsewhere"
    elsewhere.mkdir()
    other = "000000010000000000000020"
    (elsewhere / other).write_bytes(b"x" * 8192)
    (wal / other).write_bytes(b"y" * 8192)
    for body in (str(elsewhere / other), f"elsewhere/{other}", f"../elsewhere/{other}"):
        assert _request(env.socket, b"F", body.encode()) == b"E", body
    assert not (env.store / "wal_005" / f"{other}.lz4").exists()
    log = env.stop()
    assert "is not in" in log and "the pg_wal this daemon serves" in log, log


def _stop_server(srv: socket.socket, thread: threading.Thread) -> None:
    # shutdown, not close alone: close does not wake an accept() blocked in another thread.
    with contextlib.suppress(OSError):
        srv.shutdown(socket.SHUT_RDWR)
    srv.close()
    thread.join(5)


def test_requests_for_another_data_directory_are_refused(env: Env, client: Client) -> None:
    """Cluster B's postgresql.conf names cluster A's daemon (a copied configuration): B's
    push must not archive A's file of the same name, B's fetch must not write into A's pg_wal;
    both fail, and nothing is archived or written. A's own requests are served."""
    a_wal = env.pgdata / "pg_wal"
    b_data = env.root / "other-cluster"
    b_wal = b_data / "pg_wal"
    b_wal.mkdir(parents=True)
    a_bytes, b_bytes = os.urandom(8192), os.urandom(8192)
    (a_wal / SEG).write_bytes(a_bytes)
    (b_wal / SEG).write_bytes(b_bytes)
    env.start()
    sock = str(env.socket)
    refused = env.run(client, sock, "wal-push", f"pg_wal/{SEG}", cwd=b_data)
    assert refused.returncode == 1, refused.stderr
    assert not (env.store / "wal_005").exists() or not list((env.store / "wal_005").iterdir())

    pushed = env.run(client, sock, "wal-push", f"pg_wal/{SEG}", cwd=env.pgdata)
    assert pushed.returncode == 0, pushed.stderr
    refused = env.run(client, sock, "wal-fetch", SEG, "pg_wal/RECOVERYXLOG", cwd=b_data)
    assert refused.returncode == 1, refused.stderr
    assert not (b_wal / "RECOVERYXLOG").exists()
    assert not (a_wal / "RECOVERYXLOG").exists()
    assert sorted(p.name for p in a_wal.iterdir()) == [SEG], "nothing written into A's pg_wal"

    fetched = env.run(client, sock, "wal-fetch", SEG, "pg_wal/RECOVERYXLOG", cwd=env.pgdata)
    assert fetched.returncode == 0, fetched.stderr
    assert (a_wal / "RECOVERYXLOG").read_bytes() == a_bytes

    # WAL-G's client sends DEST as PostgreSQL gives it, relative to PGDATA: still served; any
    # destination outside the daemon's pg_wal is refused.
    def fetch_request(dest: str) -> bytes:
        return _request(env.socket, b"f", fetch_body(SEG, dest))

    assert fetch_request("pg_wal/RECOVERYXLOG2") == b"O"
    assert (a_wal / "RECOVERYXLOG2").read_bytes() == a_bytes
    for dest in ("RECOVERYXLOG", "../other-cluster/pg_wal/X", str(b_wal / "X"), "pg_wal/"):
        assert fetch_request(dest) == b"E", dest
    assert sorted(p.name for p in b_wal.iterdir()) == [SEG]
    assert not (env.pgdata / "RECOVERYXLOG").exists()
    log = env.stop()
    assert "is not in" in log and "the pg_wal this daemon serves" in log, log


def _server_user(what: str) -> pwd.struct_passwd:
    """The server's user (pgtest), as which the test will ``what``; skipped unless root."""
    if os.geteuid() != 0:
        pytest.skip(f"needs root to {what} as another user (pgtest)")
    import pgcluster

    try:
        return pwd.getpwnam(pgcluster.PG_USER)
    except KeyError:
        pytest.skip(f"no user {pgcluster.PG_USER} (scripts/setup.sh creates it)")


def test_a_listener_of_another_user_is_not_trusted(env: Env, client: Client) -> None:
    """A socket in a directory others can write may be anyone's: a listener running as
    another user (not root) is refused before a byte is sent."""
    other = _server_user("run a listener")
    import pgcluster

    shared = pgcluster.pg_tmpdir(prefix="squat-")
    sock = shared / "d.sock"
    squatter = (
        "import socket, sys\n"
        "srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        f"srv.bind({str(sock)!r}); srv.listen(4)\n"
        "print('ready', flush=True)\n"
        "srv.settimeout(30)\n"
        "for _ in range(2):\n"
        "    conn, _ = srv.accept(); conn.settimeout(2)\n"
        "    try:\n"
        "        got = conn.recv(65536)\n"
        "    except OSError:\n"
        "        got = b''\n"
        "    print(len(got), flush=True)\n"
        "    try:\n"
        "        conn.sendall(b'O')\n"
        "    except OSError:\n"
        "        pass\n"
        "    conn.close()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-S", "-c", squatter],
        user=other.pw_uid,
        group=other.pw_gid,
        extra_groups=[],
        cwd="/",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", proc.stderr
        pushed = env.run(client, str(sock), "wal-push", str(env.pgdata / "pg_wal" / SEG))
        checked = env.run(client, str(sock), "check")
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
        import shutil

        shutil.rmtree(shared, ignore_errors=True)
    for res in (pushed, checked):
        assert res.returncode == 1, res.stderr
        assert f"uid {other.pw_uid}" in res.stderr and "nothing was sent" in res.stderr
    assert out.split() == ["0", "0"], (out, err)  # the squatter received nothing


@pytest.mark.parametrize("python", [False, True], ids=["native", "python"])
def test_a_socket_this_user_may_not_connect_to_is_named_and_nothing_is_done(
    env: Env, python: bool
) -> None:
    """A daemon run as another user than PostgreSQL (here root, for a data directory of
    root's) has a socket of mode 0600: the server's calls get EACCES. The push fails (exit 1),
    never reported done, and the message says that nothing was sent and what to fix; it said
    "nothing is known to be done", as for a connection lost after the request went out."""
    other = _server_user("connect")
    import pgcluster

    shared = pgcluster.pg_tmpdir(prefix="eacces-")
    env.socket = shared / "d.sock"
    try:
        env.start()
        assert env.socket.stat().st_mode & 0o777 == 0o600
        # The installed script, which the server's user may run (the test's own compiled
        # client is in root's temporary folder); it runs the compiled client beside it.
        script = str(Path(env.walg_bin).with_name("walg-daemon-client"))
        assert os.access(f"{script}-native", os.X_OK)
        pushed = subprocess.run(
            [script, str(env.socket), "wal-push", str(env.pgdata / "pg_wal" / SEG)],
            env=dict(env.env, WALG_DAEMON_CLIENT_PYTHON="1") if python else env.env,
            user=other.pw_uid,
            group=other.pw_gid,
            extra_groups=[],
            cwd="/",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        log = env.stop()
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    assert pushed.returncode == 1, pushed.stderr
    assert "Permission denied" in pushed.stderr and "nothing was sent" in pushed.stderr
    assert "run the daemon as the user PostgreSQL runs as" in pushed.stderr, pushed.stderr
    assert "wal-push" not in log, log  # the daemon heard of no request
    assert not (env.store / "wal_005").exists()


def _full_listen_queue(path: Path) -> tuple[socket.socket, list[socket.socket]]:
    """A listener that accepts nothing, and the connections that fill its queue."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(0)
    queued: list[socket.socket] = []
    for _ in range(64):
        filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        filler.setblocking(False)
        try:
            filler.connect(str(path))
        except BlockingIOError:
            filler.close()
            break
        queued.append(filler)
    else:
        pytest.fail("the listen queue never filled")
    return srv, queued


def _check_in_a_full_listen_queue(
    env: Env,
    client: Client,
    timeout: str,
    listener: Callable[[socket.socket, threading.Event], None],
) -> tuple[subprocess.CompletedProcess[str], float, int]:
    """``client SOCKET check`` (WALG_DAEMON_CLIENT_TIMEOUT ``timeout``) at a socket whose
    listen queue is full, while ``listener(srv, stop)`` runs in a thread until ``stop`` is
    set: the call's result, how long it took, and how many connections filled the queue."""
    srv, queued = _full_listen_queue(env.socket)
    stop = threading.Event()
    thread = threading.Thread(target=listener, args=(srv, stop), daemon=True)
    thread.start()
    try:
        start = time.monotonic()
        res = env.run(
            client, str(env.socket), "check", extra={"WALG_DAEMON_CLIENT_TIMEOUT": timeout}
        )
        return res, time.monotonic() - start, len(queued)
    finally:
        stop.set()
        thread.join(5)
        srv.close()
        for filler in queued:
            filler.close()


def test_a_full_listen_queue_is_waited_for(env: Env, client: Client) -> None:
    """A busy daemon whose listen queue is full: the client waits for room (within its
    timeout) instead of failing at once."""

    def serve_later(srv: socket.socket, stop: threading.Event) -> None:
        time.sleep(0.5)
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            conn.settimeout(0.5)
            try:
                if len(conn.recv(3, socket.MSG_WAITALL)) == 3:
                    conn.sendall(b"O")
            except OSError:
                pass
            conn.close()

    res, elapsed, queued = _check_in_a_full_listen_queue(env, client, "20", serve_later)
    assert queued, "at least one connection is queued"
    assert res.returncode == 0, res.stderr
    assert elapsed >= 0.4, "the answer can only have come once the listener accepted"


def test_the_timeout_bounds_the_whole_call(env: Env, client: Client) -> None:
    """WALG_DAEMON_CLIENT_TIMEOUT is one deadline: time spent waiting in a full listen queue
    is not given again to the wait for the answer (each step had the whole timeout, so a
    call could last two or three times it)."""
    held: list[socket.socket] = []

    def accept_late_and_never_answer(srv: socket.socket, stop: threading.Event) -> None:
        time.sleep(2.0)
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    res, elapsed, queued = _check_in_a_full_listen_queue(
        env, client, "2.5", accept_late_and_never_answer
    )
    for sock in held:
        sock.close()
    assert res.returncode == 1
    assert "timed out" in res.stderr
    assert len(held) > queued, "the client's connection was accepted, then not answered"
    # A wait for the answer given the whole timeout again would end at 2.0 + 2.5 s; the margin
    # below that is for the client's own start on a loaded machine.
    assert 2.4 <= elapsed < 4.3, elapsed


@pytest.mark.parametrize("failure", ["error", "silent"])
@pytest.mark.parametrize(
    ("signals", "expected"),
    [(("recovery.signal",), 128), (("recovery.signal", "standby.signal"), 1), ((), 1)],
    ids=["archive-recovery", "standby", "no-recovery"],
)
def test_a_failed_fetch_in_archive_recovery_exits_128(
    env: Env, client: Client, failure: str, signals: tuple[str, ...], expected: int
) -> None:
    """PostgreSQL takes 1..125 from restore_command for "not in the archive": in archive
    recovery it would promote without the WAL it could not read. Above 125 it stops. A
    standby (or no recovery at all) gets 1: it retries and streams."""
    for name in signals:
        (env.pgdata / name).touch()
    reply = b"E" if failure == "error" else None
    srv, thread = _silent_server(env.socket, close_at_once=False, reply=reply)
    timeout = {"WALG_DAEMON_CLIENT_TIMEOUT": "0.3"}
    try:
        fetched = env.run(
            client,
            str(env.socket),
            "wal-fetch",
            SEG,
            "pg_wal/RECOVERYXLOG",
            extra=timeout,
            cwd=env.pgdata,
        )
        # archive_command must stay below 126 whatever the data directory's state.
        pushed = env.run(
            client, str(env.socket), "wal-push", f"pg_wal/{SEG}", extra=timeout, cwd=env.pgdata
        )
    finally:
        _stop_server(srv, thread)
    assert fetched.returncode == expected, fetched.stderr
    assert "failed" in fetched.stderr
    assert pushed.returncode == 1, pushed.stderr
    assert not (env.pgdata / "pg_wal" / "RECOVERYXLOG").exists()


def test_a_daemon_error_in_archive_recovery_stops_recovery(env: Env, client: Client) -> None:
    """A real daemon's E (here: a corrupt archived object) in archive recovery: 128; the
    same file missing altogether is still 74 (the end of the archive)."""
    (env.pgdata / "recovery.signal").touch()
    wal = env.store / "wal_005"
    wal.mkdir(parents=True)
    (wal / f"{SEG}.lz4").write_bytes(b"not an lz4 frame at all" * 100)
    env.start()
    broken = env.run(
        client, str(env.socket), "wal-fetch", SEG, "pg_wal/RECOVERYXLOG", cwd=env.pgdata
    )
    missing = env.run(
        client, str(env.socket), "wal-fetch", MISSING, "pg_wal/RECOVERYXLOG", cwd=env.pgdata
    )
    env.stop()
    assert broken.returncode == 128, broken.stderr
    assert "answered an error" in broken.stderr
    assert missing.returncode == 74, missing.stderr
    assert not (env.pgdata / "pg_wal" / "RECOVERYXLOG").exists()


@pytest.mark.parametrize("python", [False, True], ids=["native-if-built", "python"])
def test_the_client_works_through_a_link(walg_bin: str, tmp_path: Path, python: bool) -> None:
    """Linked into another folder (pipx, ``ln -s`` into a bin folder), the client still finds
    its venv: no "python3: not found" (127) nor an import error (1, which a recovering server
    takes for "not in the archive")."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    link = bin_dir / "walg-daemon-client"
    link.symlink_to(Path(walg_bin).with_name("walg-daemon-client"))
    pgdata = tmp_path / "data"
    (pgdata / "pg_wal").mkdir(parents=True)
    (pgdata / "recovery.signal").touch()
    env = {"PATH": "/usr/bin:/bin", "WALG_DAEMON_CLIENT_TIMEOUT": "5"}
    if python:
        env["WALG_DAEMON_CLIENT_PYTHON"] = "1"
    sock = str(tmp_path / "none.sock")
    check = subprocess.run(
        [str(link), sock, "check"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert check.returncode == 1 and "nothing" in check.stderr, check.stderr
    assert "Traceback" not in check.stderr
    # A push with no daemon fails honestly (PostgreSQL keeps the file and retries).
    push = subprocess.run(
        [str(link), sock, "wal-push", str(pgdata / "pg_wal" / SEG)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert push.returncode == 1 and "Traceback" not in push.stderr, push.stderr


def test_a_destination_the_daemon_cannot_write_is_answered_and_named(
    env: Env, client: Client
) -> None:
    """The daemon answers E for a destination it cannot write (here a folder in the way), and
    its log names that path: a local file system error is an error of the request, not of
    the connection (which would be closed without a reply)."""
    (env.pgdata / "recovery.signal").touch()
    data = os.urandom(4096) * 64
    (env.pgdata / "pg_wal" / SEG).write_bytes(data)
    in_the_way = env.pgdata / "pg_wal" / "RECOVERYXLOG"
    (in_the_way / "sub").mkdir(parents=True)
    env.start()
    sock = str(env.socket)
    assert env.run(client, sock, "wal-push", f"pg_wal/{SEG}", cwd=env.pgdata).returncode == 0
    fetched = env.run(client, sock, "wal-fetch", SEG, "pg_wal/RECOVERYXLOG", cwd=env.pgdata)
    log = env.stop()
    assert fetched.returncode == 128, fetched.stderr
    assert "answered an error" in fetched.stderr
    assert f"cannot write {in_the_way}" in log, log
    assert (in_the_way / "sub").is_dir()
    assert not [p for p in (env.pgdata / "pg_wal").iterdir() if ".walg-" in p.name]


@pytest.mark.parametrize(
    ("signals", "conf", "expected"),
    [
        (("recovery.signal",), None, 128),
        (("recovery.signal", "standby.signal"), None, 1),
        ((), None, 1),
        ((), "restore_command = 'x'\n", 128),
        ((), "standby_mode = 'on'\n", 1),
        ((), "standby_mode = on\nstandby_mode = off # not a standby after all\n", 128),
    ],
    ids=[
        "archive-recovery",
        "standby",
        "no-recovery",
        "recovery.conf",
        "recovery.conf-standby",
        "recovery.conf-last-setting",
    ],
)
def test_a_client_that_cannot_load_walg_exits_by_the_same_rule(
    walg_bin: str, tmp_path: Path, signals: tuple[str, ...], conf: str | None, expected: int
) -> None:
    """The installed script in a venv whose walg is gone (a broken upgrade): a fetch fails
    with 128 in archive recovery only. A standby given 128 stops (PostgreSQL takes it for a
    fatal signal) where 1 lets it retry and stream on. Before PostgreSQL 12 archive
    recovery is a recovery.conf without standby_mode on: the script exited 1 there."""
    script = client_in_venv(tmp_path / "venv", walg_bin)
    pgdata = tmp_path / "pgdata"
    (pgdata / "pg_wal").mkdir(parents=True)
    for name in signals:
        (pgdata / name).touch()
    if conf is not None:
        (pgdata / "recovery.conf").write_text(conf)
    env = {"PATH": os.environ.get("PATH", ""), "WALG_DAEMON_CLIENT_PYTHON": "1"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_in(pgdata, env, [str(script), str(tmp_path / "sock"), *args])

    fetched = run("wal-fetch", SEG, "pg_wal/RECOVERYXLOG")
    assert "cannot load walg" in fetched.stderr
    assert fetched.returncode == expected, fetched.stderr
    swapped = run("wal-fetch", "pg_wal/RECOVERYXLOG", SEG)  # 'wal-fetch %p %f'
    assert swapped.returncode == expected, swapped.stderr
    pushed = run("wal-push", f"pg_wal/{SEG}")
    assert "cannot load walg" in pushed.stderr
    assert pushed.returncode == 1, pushed.stderr


@pytest.mark.parametrize(
    ("signals", "expected"),
    [(("recovery.signal",), 128), (("recovery.signal", "standby.signal"), 2), ((), 2)],
    ids=["archive-recovery", "standby", "no-recovery"],
)
@pytest.mark.parametrize(
    "args",
    [["wal-fetch", SEG], ["wal-fetch", SEG, "pg_wal/RECOVERYXLOG", "extra"]],
    ids=["missing-dest", "extra-argument"],
)
def test_a_restore_command_with_wrong_arguments_stops_archive_recovery(
    env: Env, client: Client, signals: tuple[str, ...], expected: int, args: list[str]
) -> None:
    """restore_command = 'walg-daemon-client SOCK wal-fetch %f' (no %p), run by PostgreSQL
    in its data directory: 2 would read as "not in the archive", and recovery would end at
    once and promote without the archived WAL."""
    for name in signals:
        (env.pgdata / name).touch()
    res = env.run(client, str(env.socket), *args, cwd=env.pgdata)
    assert res.returncode == expected, res.stderr
    assert res.stderr.startswith("usage: walg-daemon-client SOCKET")


@pytest.mark.parametrize(
    ("signals", "expected"),
    [(("recovery.signal",), 128), (("recovery.signal", "standby.signal"), 1), ((), 1)],
    ids=["archive-recovery", "standby", "no-recovery"],
)
@pytest.mark.parametrize("daemon", [True, False], ids=["daemon", "no-daemon"])
def test_swapped_restore_command_arguments_stop_archive_recovery(
    env: Env, client: Client, signals: tuple[str, ...], expected: int, daemon: bool
) -> None:
    """restore_command = 'walg-daemon-client SOCK wal-fetch %p %f': DEST is a segment name in
    the data directory, whose folder's folder is not the data directory, and the refused
    NAME exited 1: "not in the archive" to a recovering PostgreSQL, which ended recovery at
    once. Through the daemon and through walg run directly, the data directory is also the
    working directory PostgreSQL runs the command in."""
    for name in signals:
        (env.pgdata / name).touch()
    if daemon:
        env.start()
    try:
        res = env.run(
            client, str(env.socket), "wal-fetch", "pg_wal/RECOVERYXLOG", SEG, cwd=env.pgdata
        )
    finally:
        log = env.stop() if daemon else ""
    assert res.returncode == expected, res.stderr
    if daemon:  # it refuses DEST first: not in the pg_wal it serves
        assert "wal-fetch of pg_wal/RECOVERYXLOG failed: destination" in log, log
    else:
        assert "is not a WAL file name" in res.stderr, res.stderr
    assert not (env.pgdata / SEG).exists()


def test_a_data_directory_named_in_another_encoding_is_served(env: Env, client: Client) -> None:
    """A data directory whose path is not UTF-8 (named in Latin-1): the arguments go to the
    daemon, or to walg directly, as the bytes they are. The Python client died on encoding
    them (a traceback, exit 1): in archive recovery PostgreSQL took 1 for "not in the
    archive" and promoted without WAL that was archived."""
    data = os.urandom(1 << 16)
    _archive_with_walg(env, SEG, data)
    pgdata = env.root / os.fsdecode(b"donn\xe9es")
    (pgdata / "pg_wal").mkdir(parents=True)
    (pgdata / "recovery.signal").touch()
    (pgdata / "pg_wal" / SEG).write_bytes(data)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [client.path, str(env.socket), *args],
            env=dict(env.env, **client.env),
            capture_output=True,
            text=True,
            errors="backslashreplace",
            timeout=60,
            check=False,
            cwd=pgdata,
        )

    # No daemon: the fetch runs walg directly and gets the archived segment.
    fetched = run("wal-fetch", SEG, "pg_wal/RECOVERYXLOG")
    assert fetched.returncode == 0, fetched.stderr
    assert "fetching directly" in fetched.stderr
    assert (pgdata / "pg_wal" / "RECOVERYXLOG").read_bytes() == data
    pushed = run("wal-push", f"pg_wal/{SEG}")
    assert pushed.returncode == 1, pushed.stderr
    assert "not running" in pushed.stderr and "Traceback" not in pushed.stderr


def test_arguments_too_long_for_a_message_fail_by_the_rule(env: Env, client: Client) -> None:
    """Arguments that do not fit in one message (64 KiB) fail saying so, by the exit code
    rule: 128 for a wal-fetch in archive recovery. The Python client raised OverflowError
    instead (a traceback, exit 1: "not in the archive" to a recovering PostgreSQL)."""
    (env.pgdata / "recovery.signal").touch()
    env.start()
    try:
        fetched = env.run(
            client, str(env.socket), "wal-fetch", "A" * 70000, "pg_wal/RECOVERYXLOG", cwd=env.pgdata
        )
        pushed = env.run(client, str(env.socket), "wal-push", "p" * 65534, cwd=env.pgdata)
    finally:
        env.stop()
    assert fetched.returncode == 128, fetched.stderr
    assert pushed.returncode == 1, pushed.stderr
    for res in (fetched, pushed):
        assert "Traceback" not in res.stderr
        assert "nothing was done" in res.stderr


def test_the_daemon_serves_a_data_directory_named_in_another_encoding(
    env: Env, client: Client
) -> None:
    """The daemon takes a request's paths as file-system bytes: it refused every request
    for a data directory whose name is not UTF-8 ("not UTF-8", E), so no WAL could be
    archived through it, and a restore stopped at its first segment."""
    env.pgdata = env.root / os.fsdecode(b"donn\xe9es")
    (env.pgdata / "pg_wal").mkdir(parents=True)
    data = os.urandom(1 << 16)
    (env.pgdata / "pg_wal" / SEG).write_bytes(data)
    env.start()
    try:
        pushed = env.run(client, str(env.socket), "wal-push", f"pg_wal/{SEG}", cwd=env.pgdata)
        fetched = env.run(
            client, str(env.socket), "wal-fetch", SEG, "pg_wal/RECOVERYXLOG", cwd=env.pgdata
        )
    finally:
        env.stop()
    assert pushed.returncode == 0, pushed.stderr
    assert (env.store / "wal_005" / f"{SEG}.lz4").is_file()
    assert fetched.returncode == 0, fetched.stderr
    assert (env.pgdata / "pg_wal" / "RECOVERYXLOG").read_bytes() == data


@pytest.mark.parametrize(
    ("signals", "expected"),
    [(("recovery.signal",), 128), (("recovery.signal", "standby.signal"), 2), ((), 2)],
    ids=["archive-recovery", "standby", "no-recovery"],
)
def test_an_empty_socket_path_is_a_usage_error(
    env: Env, client: Client, signals: tuple[str, ...], expected: int
) -> None:
    """``walg-daemon-client "$WALG_SOCKET" ...`` with the variable unset in the server's
    environment: a usage error for both clients, by the usage rule (128 for a wal-fetch in
    archive recovery). The compiled client connected to the abstract address of 107 NUL
    bytes and, refused, fetched directly; the Python one failed with EINVAL (exit 128)."""
    for name in signals:
        (env.pgdata / name).touch()
    fetched = env.run(client, "", "wal-fetch", SEG, "pg_wal/RECOVERYXLOG", cwd=env.pgdata)
    pushed = env.run(client, "", "wal-push", f"pg_wal/{SEG}", cwd=env.pgdata)
    assert fetched.returncode == expected, fetched.stderr
    assert pushed.returncode == 2, pushed.stderr
    for res in (fetched, pushed):
        assert res.stderr.startswith("usage: walg-daemon-client SOCKET"), res.stderr


@pytest.mark.parametrize(
    ("conf", "expected"),
    [
        ("restore_command = 'walg wal-fetch %f %p'\n", 128),
        ("restore_command = 'x'\nstandby_mode = 'on'\n", 1),
        ("  standby_mode=true\t# a standby\n", 1),
        ("standby_mode = on\nstandby_mode = off\n", 128),
        ("# standby_mode = on\nstandby_modes = on\n", 128),
        (None, 128),
    ],
    ids=[
        "archive-recovery",
        "standby",
        "standby-unquoted",
        "last-setting-counts",
        "not-set",
        "fifo",
    ],
)
def test_a_failed_fetch_in_archive_recovery_before_postgresql_12_exits_128(
    env: Env, client: Client, conf: str | None, expected: int
) -> None:
    """PostgreSQL 9.6 to 11 recovers from the archive when its data directory holds a
    recovery.conf (backup-fetch --restore-command writes one for them), and is a standby when
    that file turns standby_mode on. Only recovery.signal was looked for: a failed fetch exited
    1, which such a server takes for "not in the archive", and it ended recovery and promoted
    without the WAL it could not read. It stops now (128); a standby still gets 1. A FIFO
    there (None) is read without blocking and turns nothing on: it hung the call."""
    if conf is None:
        os.mkfifo(env.pgdata / "recovery.conf")
    else:
        (env.pgdata / "recovery.conf").write_text(conf)
    wal = env.store / "wal_005"
    wal.mkdir(parents=True)
    (wal / f"{SEG}.lz4").write_bytes(b"not an lz4 frame at all" * 100)
    srv, thread = _silent_server(env.socket, close_at_once=False, reply=b"E")
    try:
        answered = env.run(
            client, str(env.socket), "wal-fetch", SEG, "pg_wal/RECOVERYXLOG", cwd=env.pgdata
        )
    finally:
        _stop_server(srv, thread)
    # No daemon: walg wal-fetch itself, which fails on the corrupt object, by the same rule.
    direct = env.run(
        client, str(env.socket), "wal-fetch", SEG, "pg_wal/RECOVERYXLOG", cwd=env.pgdata
    )
    usage = env.run(client, str(env.socket), "wal-fetch", SEG, cwd=env.pgdata)
    assert answered.returncode == expected, answered.stderr
    assert "answered an error" in answered.stderr
    assert direct.returncode == expected, direct.stderr
    assert "fetching directly" in direct.stderr
    assert usage.returncode == (128 if expected == 128 else 2), usage.stderr
    assert not (env.pgdata / "pg_wal" / "RECOVERYXLOG").exists()


def test_the_built_client_is_on_disk_before_it_is_put_in_place(
    walg_bin: str, tmp_path: Path
) -> None:
    """PostgreSQL's /bin/sh runs an executable it cannot exec (ENOEXEC) as a shell script, and
    an empty one exits 0. A client renamed into place before its bytes were on disk (XFS, or
    ext4 without auto_da_alloc, after a power loss) was empty: every archive_command then
    "succeeded" with nothing archived (and PostgreSQL recycled the WAL), every restore_command
    "restored" nothing. The build fsyncs the file before the rename and its folder after:
    watched with strace, as a crash cannot be staged here."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (scripts/setup.sh installs it)")
    out = tmp_path / "bin" / "walg-daemon-client-native"
    out.parent.mkdir()
    trace = tmp_path / "trace"
    watch = [strace, "-f", "-qq", "-y", "-e", "trace=fsync,fdatasync,rename,renameat,renameat2"]
    built = _build(walg_bin, str(out), before=[*watch, "-o", str(trace)])
    assert built.returncode == 0, built.stderr
    events: list[tuple[str, str]] = []
    for line in trace.read_text().splitlines():
        synced = re.search(r"f(?:data)?sync\(\d+<([^>]+)>\) = 0", line)
        if synced:
            events.append(("sync", synced.group(1)))
        renamed = re.search(r'rename(?:at2?)?\([^"]*"([^"]+)",[^"]*"([^"]+)"[^)]*\) = 0', line)
        if renamed and renamed.group(2) == str(out):
            events.append(("rename", renamed.group(1)))
    renames = [i for i, (kind, _) in enumerate(events) if kind == "rename"]
    assert len(renames) == 1, events
    source = events[renames[0]][1]
    assert ("sync", source) in events[: renames[0]], events
    assert ("sync", str(out.parent)) in events[renames[0] :], events
    # And an empty executable is what the paragraph above says it is to PostgreSQL.
    empty = tmp_path / "empty"
    empty.touch(mode=0o755)
    assert (
        subprocess.run(["/bin/sh", "-c", f"{empty} SOCK wal-push x"], check=False).returncode == 0
    )


def test_build_into_a_folder_it_cannot_write_or_onto_a_folder_says_so(
    walg_bin: str, tmp_path: Path
) -> None:
    """OUTPUT in a folder the user cannot write (an install folder of root's), or naming a
    folder: an error that names the path, nothing left behind. Both ended in "unexpected
    PermissionError" / "unexpected IsADirectoryError" with a temporary name in it."""
    folder = tmp_path / "bin"
    folder.mkdir()
    onto = _build(walg_bin, str(folder))
    assert onto.returncode == 1
    assert "unexpected" not in onto.stderr, onto.stderr
    assert f"cannot build {folder}: it is a directory" in onto.stderr, onto.stderr
    assert os.listdir(tmp_path) == ["bin"] and os.listdir(folder) == []
    other = _server_user("run the build")
    import pgcluster

    shared = pgcluster.pg_tmpdir(prefix="build-")  # pgtest's, readable by all
    try:
        install = shared / "bin"
        install.mkdir(mode=0o755)  # root's: pgtest cannot write it
        target = install / "walg-daemon-client-native"
        denied = subprocess.run(
            [walg_bin, "build-daemon-client", str(target)],
            capture_output=True,
            text=True,
            check=False,
            env={"PATH": os.environ.get("PATH", "")},
            user=other.pw_uid,
            group=other.pw_gid,
            extra_groups=[],
            cwd="/",
        )
        left = os.listdir(install)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    assert denied.returncode == 1
    assert "unexpected" not in denied.stderr, denied.stderr
    assert f"cannot build {target}: Permission denied" in denied.stderr, denied.stderr
    assert left == []


def test_a_stopped_and_continued_client_keeps_its_deadline(env: Env, client: Client) -> None:
    """A blocking socket call with a timeout fails with EINTR once the process is stopped
    (SIGSTOP, SIGTSTP) and continued, signal(7). The compiled client called it again with the
    timeout the socket had, so a stop while it waited for the answer gave it the whole wait
    once more: WALG_DAEMON_CLIENT_TIMEOUT=3 ended after more than 4 s."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(env.socket))
    srv.listen(4)
    asked = threading.Event()
    held: list[socket.socket] = []
    asked_at: list[float] = []

    def hold() -> None:
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        held.append(conn)
        conn.settimeout(10)
        with contextlib.suppress(OSError):
            conn.recv(3, socket.MSG_WAITALL)
        asked_at.append(time.monotonic())
        asked.set()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    proc = subprocess.Popen(
        [client.path, str(env.socket), "check"],
        env=dict(env.env, **client.env, WALG_DAEMON_CLIENT_TIMEOUT="3"),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert asked.wait(10), "the client sent its request"
        time.sleep(2.0)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.3)
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - asked_at[0]
    finally:
        proc.kill()
        proc.wait()
        _stop_server(srv, thread)
        for conn in held:
            conn.close()
    assert proc.returncode == 1, err
    assert "timed out" in err, err
    # Its deadline is 3 s from its start; given the wait again after the stop, it ended
    # 2.3 + 3 s after its request.
    assert elapsed < 4.3, elapsed


def _recording_server(path: Path) -> tuple[socket.socket, threading.Thread, list[bytes]]:
    """A listener that never answers and records all each connection sends until it ends."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)
    received: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            data = b""
            with conn:
                conn.settimeout(10)
                with contextlib.suppress(OSError):
                    while chunk := conn.recv(65536):
                        data += chunk
            received.append(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return srv, thread, received


def test_a_closed_stderr_sends_the_daemon_nothing_but_the_request(env: Env, client: Client) -> None:
    """PostgreSQL's children may run with a standard descriptor closed. The compiled
    client's socket then took descriptor 2, and what it wrote to stderr went to the daemon:
    here its "timed out" message, after the request. With a listener of another user (refused
    as untrusted), the report that nothing was sent was itself sent to that listener."""
    srv, thread, received = _recording_server(env.socket)
    try:
        res = subprocess.run(
            ["/bin/sh", "-c", 'exec "$@" 2>&-', "sh", client.path, str(env.socket), "check"],
            env=dict(env.env, **client.env, WALG_DAEMON_CLIENT_TIMEOUT="0.5"),
            capture_output=True,
            timeout=60,
            check=False,
        )
    finally:
        _stop_server(srv, thread)
    assert res.returncode == 1
    assert received == [b"C\x00\x03"]


def test_a_client_stopped_while_it_waits_in_a_full_listen_queue_keeps_its_deadline(
    env: Env, client: Client
) -> None:
    """The same for the connect that waits for room in a full listen queue: retried after
    EINTR with the whole timeout it was given at the start."""
    srv, queued = _full_listen_queue(env.socket)
    start = time.monotonic()
    proc = subprocess.Popen(
        [client.path, str(env.socket), "check"],
        env=dict(env.env, **client.env, WALG_DAEMON_CLIENT_TIMEOUT="3"),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2.0)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.3)
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - start
    finally:
        proc.kill()
        proc.wait()
        srv.close()
        for filler in queued:
            filler.close()
    assert proc.returncode == 1, err
    assert "timed out" in err, err
    # 3 s and the client's start; given the wait again after the stop, 2.3 + 3 s.
    assert elapsed < 4.6, elapsed


def test_a_working_directory_that_was_removed_is_reported_not_a_traceback(
    env: Env, client: Client
) -> None:
    """The data directory removed under a running server (its children's working directory
    is gone): a relative %p cannot be made absolute. The Python client died with a
    FileNotFoundError traceback; both now say so and fail by the rule (1: nothing tells
    archive recovery, as the compiled client already answered)."""
    gone = env.root / "gone"
    remove_cwd = 'cd "$1" && rmdir "$1" && shift && exec "$@"'
    results = {}
    for args in (["wal-push", f"pg_wal/{SEG}"], ["wal-fetch", SEG, "pg_wal/RECOVERYXLOG"]):
        gone.mkdir()
        results[args[0]] = subprocess.run(
            ["/bin/sh", "-c", remove_cwd, "sh", str(gone), client.path, str(env.socket), *args],
            env=dict(env.env, **client.env),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    for res in results.values():
        assert res.returncode == 1, res.stderr
        assert "Traceback" not in res.stderr, res.stderr
        assert "nothing was done" in res.stderr, res.stderr


def test_a_data_directory_before_postgresql_10_is_served(env: Env, client: Client) -> None:
    """PostgreSQL 9.6 keeps its WAL in pg_xlog, and %p is pg_xlog/...: the daemon took only
    pg_wal for its WAL directory and refused every push ("is not in .../pg_wal, the pg_wal
    this daemon serves") and every fetch, so nothing was archived through it."""
    (env.pgdata / "pg_wal").rmdir()
    xlog = env.pgdata / "pg_xlog"
    (xlog / "archive_status").mkdir(parents=True)
    data = os.urandom(4096) * 64
    (xlog / SEG).write_bytes(data)
    env.start()
    try:
        pushed = env.run(client, str(env.socket), "wal-push", f"pg_xlog/{SEG}", cwd=env.pgdata)
        fetched = env.run(
            client, str(env.socket), "wal-fetch", SEG, "pg_xlog/RECOVERYXLOG", cwd=env.pgdata
        )
    finally:
        log = env.stop()
    assert pushed.returncode == 0, (pushed.stderr, log)
    assert (env.store / "wal_005" / f"{SEG}.lz4").is_file()
    assert fetched.returncode == 0, (fetched.stderr, log)
    assert (xlog / "RECOVERYXLOG").read_bytes() == data
    assert not (env.pgdata / "pg_wal").exists()


def test_wal_push_of_a_bare_file_name_as_wal_g_documents_it(env: Env, client: Client) -> None:
    """WAL-G's documentation (docs/PostgreSQL.md, walg-daemon-client) writes
    ``archive_command = 'walg-daemon-client SOCKET wal-push %f'``: a bare name, which its
    client sends as it is. walg's clients sent the data directory's own path of that name,
    which the daemon refuses (not in its pg_wal): every call failed. A bare name with nothing
    by that name in the working directory (PostgreSQL's data directory) is now the file in its
    pg_wal, so a second cluster's call is still refused (another pg_wal)."""
    data = os.urandom(4096) * 64
    (env.pgdata / "pg_wal" / SEG).write_bytes(data)
    other = env.root / "other"
    (other / "pg_wal").mkdir(parents=True)
    (other / "pg_wal" / MISSING).write_bytes(data)
    env.start()
    sock = str(env.socket)
    pushed = env.run(client, sock, "wal-push", SEG, cwd=env.pgdata)
    assert pushed.returncode == 0, pushed.stderr
    assert (env.store / "wal_005" / f"{SEG}.lz4").is_file()
    refused = env.run(client, sock, "wal-push", MISSING, cwd=other)
    assert refused.returncode == 1, refused.stderr
    assert not (env.store / "wal_005" / f"{MISSING}.lz4").exists()
    # A name that is there in the working directory is that file, as before (a call by hand
    # from inside pg_wal).
    pushed = env.run(client, sock, "wal-push", SEG, cwd=env.pgdata / "pg_wal")
    assert pushed.returncode == 0, pushed.stderr
    env.stop()


def test_wal_g_client_flags_after_the_command(env: Env, client: Client) -> None:
    """WAL-G's client takes ``-timeout DURATION`` and ``-connection-timeout DURATION`` after the
    command's arguments (cmd/daemonclient/main.go; Go's flag package: one or two dashes,
    ``=VALUE`` or the next argument, Go durations). walg's clients refused them as usage
    errors, so such an archive_command failed every call. Now -timeout bounds the whole call
    (instead of WALG_DAEMON_CLIENT_TIMEOUT); -connection-timeout is checked and changes nothing
    (the one deadline covers the connect too). A bad flag or value is a usage error."""
    data = os.urandom(4096) * 64
    (env.pgdata / "pg_wal" / SEG).write_bytes(data)
    env.start()
    sock = str(env.socket)
    for flags in (
        ["-timeout", "30s"],
        ["--timeout=1m30s", "-connection-timeout", "5s"],
        ["-connection-timeout=500ms"],
    ):
        pushed = env.run(client, sock, "wal-push", f"pg_wal/{SEG}", *flags, cwd=env.pgdata)
        assert pushed.returncode == 0, (flags, pushed.stderr)
    fetched = env.run(
        client, sock, "wal-fetch", SEG, "pg_wal/RECOVERYXLOG", "-timeout", "1h", cwd=env.pgdata
    )
    assert fetched.returncode == 0, fetched.stderr
    assert (env.pgdata / "pg_wal" / "RECOVERYXLOG").read_bytes() == data
    for flags in (
        ["-timeout"],
        ["-timeout", "30"],
        ["-timeout=abc"],
        ["-timeout", "0s"],
        ["-timeout", "-5s"],
        ["-verbose"],
        ["-connection-timeout", "5x"],
    ):
        refused = env.run(client, sock, "wal-push", f"pg_wal/{SEG}", *flags, cwd=env.pgdata)
        assert refused.returncode == 2, (flags, refused.stderr)
        assert refused.stderr.startswith("walg-daemon-client: "), refused.stderr
    env.stop()
    # -timeout wins over the variable: a silent daemon is given up on after it, not after
    # the variable's hour (env.run's own limit is 60 s).
    srv, thread = _silent_server(env.socket, close_at_once=False)
    try:
        res = env.run(
            client,
            str(env.socket),
            "wal-push",
            f"pg_wal/{SEG}",
            "-timeout=300ms",
            extra={"WALG_DAEMON_CLIENT_TIMEOUT": "3600"},
            cwd=env.pgdata,
        )
    finally:
        srv.close()
        thread.join(5)
    assert res.returncode == 1
    assert "timed out" in res.stderr, res.stderr


@pytest.mark.parametrize(
    ("value", "taken"),
    [
        ("+1m", True),
        ("1h2m3.5s", True),
        (".5h", True),
        ("90.s", True),
        ("2\u00b5s1m", True),
        ("s", False),
        (".s", False),
        ("1sec", False),
        ("1e3s", False),
        ("0x10s", False),
        ("1_0s", False),
        ("0", False),
        ("", False),
    ],
)
def test_both_clients_read_go_durations_alike(
    env: Env, client: Client, value: str, taken: bool
) -> None:
    """-timeout's value as Go's time.ParseDuration reads it, the same in both clients."""
    env.start()
    res = env.run(client, str(env.socket), "check", f"-timeout={value}")
    assert res.returncode == (0 if taken else 2), res.stderr
    env.stop()


def test_a_socket_and_data_directory_under_odd_names(
    tmp_path: Path, walg_bin: str, client: Client
) -> None:
    """Spaces, quotes, '%', non-ASCII letters and bytes that are not UTF-8 in the socket's
    and the data directory's paths: the clients pass them as bytes, and the daemon serves them."""
    root = tmp_path / os.fsdecode(b"s 'q' \"d\" 50% \xc3\xa9 \xff")
    root.mkdir()
    odd = Env(root, walg_bin)
    data = os.urandom(4096) * 64
    (odd.pgdata / "pg_wal" / SEG).write_bytes(data)
    odd.start()
    try:
        sock = str(odd.socket)
        assert odd.run(client, sock, "check").returncode == 0
        pushed = odd.run(client, sock, "wal-push", f"pg_wal/{SEG}", cwd=odd.pgdata)
        assert pushed.returncode == 0, pushed.stderr
        assert (odd.store / "wal_005" / f"{SEG}.lz4").is_file()
        fetched = odd.run(client, sock, "wal-fetch", SEG, "pg_wal/RECOVERYXLOG", cwd=odd.pgdata)
        assert fetched.returncode == 0, fetched.stderr
        assert (odd.pgdata / "pg_wal" / "RECOVERYXLOG").read_bytes() == data
    finally:
        log = odd.stop()
    assert "Error" not in log, log
