"""How long ``walg daemon`` takes to stop (SIGTERM) while look-ahead uploads are held by
slow storage, with and without PostgreSQL's call for the same file waiting on them, and that
what the stop abandons leaves nothing half stored. The real daemon process, its real look-ahead
and file storage slowed by WALG_FAULT_INJECTION."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from test_daemon_clients import _request

from daemonenv import SEG, Env

BIG = 16 << 20


def _ready_segment(env: Env) -> tuple[Path, bytes]:
    wal = env.pgdata / "pg_wal"
    (wal / "archive_status").mkdir()
    data = os.urandom(BIG)
    (wal / SEG).write_bytes(data)
    (wal / "archive_status" / f"{SEG}.ready").touch()
    return wal / SEG, data


def _stored(env: Env) -> list[str]:
    folder = env.store / "wal_005"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("waiting", [False, True], ids=["no-client", "client-waiting"])
def test_a_stop_with_a_lookahead_upload_held_by_storage_ends_promptly(
    env: Env, waiting: bool
) -> None:
    """SIGTERM while the look-ahead upload of a segment is held by storage (here 600 s per
    write) and, in one case, PostgreSQL's push of that segment waits for that upload. The
    daemon must end within a bounded time, well inside systemd's 90 s stop timeout, never
    answer success for the segment, and leave nothing of it in storage; walg run afterwards
    (the client's fallback) then archives it whole."""
    segment, data = _ready_segment(env)
    env.env.update(
        {
            "WALG_UPLOAD_CONCURRENCY": "2",
            "WALG_FAULT_INJECTION": '[{"op": "write", "key": "wal_005", "delay": 600}]',
        }
    )
    env.start()
    assert env.daemon is not None
    time.sleep(2)  # the look-ahead has taken the .ready file and is held by storage
    replies: list[bytes] = []
    if waiting:

        def ask() -> None:
            try:
                replies.append(_request(env.socket, b"F", str(segment).encode()))
            except OSError as exc:
                replies.append(repr(exc).encode())

        asker = threading.Thread(target=ask)
        asker.start()
        time.sleep(1)
    started = time.monotonic()
    env.daemon.send_signal(signal.SIGTERM)
    try:
        _, log = env.daemon.communicate(timeout=150)
    finally:
        elapsed = time.monotonic() - started
    env.daemon = None
    if waiting:
        asker.join(timeout=60)
        # Closed unanswered: the client runs walg itself (never O for what is not stored).
        assert replies == [b""], (replies, log)
        assert "closed unanswered" in log, log
    # Measured before the fix: 60 s alone (the upload time limit), 119 s with the call
    # waiting (past systemd's 90 s); now the requests' grace and the background grace.
    assert elapsed < 45, (elapsed, log)
    assert _stored(env) == [], _stored(env)
    env.env.pop("WALG_FAULT_INJECTION")
    pushed = subprocess.run(
        [env.walg_bin, "wal-push", str(segment)],
        env=env.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert pushed.returncode == 0, pushed.stderr
    assert _stored(env) == [f"{SEG}.lz4"], _stored(env)
    out = env.root / "fetched"
    fetched = subprocess.run(
        [env.walg_bin, "wal-fetch", SEG, str(out)],
        env=env.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert fetched.returncode == 0, fetched.stderr
    assert out.read_bytes() == data


def _marker_key(env: Env, cwd: Path) -> str:
    """The destination key walg computes for ``env`` run in ``cwd``."""
    out = subprocess.run(
        [
            str(Path(env.walg_bin).with_name("python")),
            "-c",
            "from walg.settings import load; print(load().destination_key)",
        ],
        env=env.env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_a_fifo_under_a_look_ahead_marker_s_name_hangs_no_cold_push(env: Env) -> None:
    """A FIFO under the name of the look-ahead marker of the file being pushed (in
    pg_wal/walg_data/walg_archive_status/): the cold wal-push's launcher (it reads markers)
    opened it blocking and waited for a writer for ever, so archive_command hung with nothing
    in any log. It vouches for nothing: the file is archived the ordinary way."""
    wal = env.pgdata / "pg_wal"
    status = wal / "walg_data" / "walg_archive_status"
    status.mkdir(parents=True)
    (wal / SEG).write_bytes(os.urandom(1 << 20))
    # The key as the pusher computes it, from its own working directory and environment.
    fifo = status / f"{SEG}.{_marker_key(env, env.pgdata)}"
    os.mkfifo(fifo)
    try:
        pushed = subprocess.run(
            [env.walg_bin, "wal-push", f"pg_wal/{SEG}"],
            env=env.env,
            cwd=env.pgdata,
            capture_output=True,
            text=True,
            timeout=60,  # a hang, not a timing: the push takes well under a second
            check=False,
        )
    finally:
        # Whatever still waits on the FIFO (the old code) gets a writer and goes on.
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert pushed.returncode == 0, pushed.stderr
    assert _stored(env) == [f"{SEG}.lz4"]
