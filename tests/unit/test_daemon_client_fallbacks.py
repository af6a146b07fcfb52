"""What ``walg-daemon-client`` does when the daemon does not do the work: it never exits 0
for work not done. A daemon that read the request and closed the connection without a word
(it stopped or died) is bypassed by running walg itself; a walg that cannot be run is a
failure, 128 for a fetch in archive recovery. A restore_command exiting 0 with no file in
place is read by PostgreSQL as "not in the archive" (stat fails with ENOENT), and recovery
ends there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_daemon_clients import _archive_with_walg, _silent_server, _stop_server

from daemonenv import SEG, Client, Env


@pytest.fixture(scope="module")
def native(walg_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Client:
    out = tmp_path_factory.mktemp("native") / "walg-daemon-client-native"
    built = subprocess.run(
        [walg_bin, "build-daemon-client", str(out)], capture_output=True, text=True, check=False
    )
    assert built.returncode == 0, built.stderr
    return Client(str(out), {})


@pytest.fixture(params=["python", "native"])
def client(request: pytest.FixtureRequest, walg_bin: str, native: Client) -> Client:
    if request.param == "native":
        return native
    script = str(Path(walg_bin).with_name("walg-daemon-client"))
    return Client(script, {"WALG_DAEMON_CLIENT_PYTHON": "1"})


def test_a_daemon_that_reads_the_request_and_closes_is_bypassed(env: Env, client: Client) -> None:
    """The daemon took the whole request, then closed the connection in order, unanswered:
    the client reads the end of the stream (no reset), and must run walg itself."""
    data = os.urandom(1 << 16)
    _archive_with_walg(env, SEG, data)
    (env.pgdata / "recovery.signal").touch()
    new = "000000010000000000000004"
    (env.pgdata / "pg_wal" / new).write_bytes(os.urandom(1 << 16))
    srv, thread = _silent_server(env.socket, close_at_once=False, reply=b"")
    try:
        fetched = env.run(
            client, str(env.socket), "wal-fetch", SEG, "pg_wal/RECOVERYXLOG", cwd=env.pgdata
        )
        pushed = env.run(client, str(env.socket), "wal-push", f"pg_wal/{new}", cwd=env.pgdata)
    finally:
        _stop_server(srv, thread)
    assert fetched.returncode == 0, fetched.stderr
    assert "closed without a reply" in fetched.stderr, fetched.stderr
    assert (env.pgdata / "pg_wal" / "RECOVERYXLOG").read_bytes() == data
    assert pushed.returncode == 0, pushed.stderr
    assert (env.store / "wal_005" / f"{new}.lz4").is_file()


@pytest.mark.parametrize(("signals", "expected"), [(("recovery.signal",), 128), ((), 1)])
@pytest.mark.parametrize("kind", ["python", "native"])
def test_a_walg_the_client_cannot_run_is_a_failure(
    env: Env, walg_bin: str, tmp_path: Path, kind: str, signals: tuple[str, ...], expected: int
) -> None:
    """No daemon, so the fetch is run as `walg wal-fetch` beside the client; that walg is
    not there (removed, a broken upgrade). The client must fail by its rule, not exit 0."""
    for name in signals:
        (env.pgdata / name).touch()
    folder = tmp_path / "bin"
    folder.mkdir()
    # The client runs the walg beside itself: the native one the walg that built it.
    shutil.copy(walg_bin, folder / "walg")
    command: list[str]
    if kind == "native":
        built = subprocess.run(
            [str(folder / "walg"), "build-daemon-client", str(folder / "client")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert built.returncode == 0, built.stderr
        command = [str(folder / "client")]
    else:
        code = (
            "import sys; sys.argv[0] = sys.argv.pop(1); import walg.daemon_client as c; c.entry()"
        )
        command = [sys.executable, "-c", code, str(folder / "walg-daemon-client")]
    (folder / "walg").unlink()
    fetched = subprocess.run(
        [*command, str(env.socket), "wal-fetch", SEG, "pg_wal/RECOVERYXLOG"],
        env=env.env,
        cwd=env.pgdata,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert fetched.returncode == expected, fetched.stderr
    assert "cannot run" in fetched.stderr, fetched.stderr
    assert not (env.pgdata / "pg_wal" / "RECOVERYXLOG").exists()


def test_the_native_client_is_linked_statically_unless_asked_not_to(
    walg_bin: str, tmp_path: Path
) -> None:
    """Static by default (no dynamic loader on each call) where the compiler can; --dynamic
    links the shared C library, and a compiler that cannot link statically gets it too."""

    def build(*extra: str, cc: str = "cc") -> str:
        out = tmp_path / f"client{len(list(tmp_path.iterdir()))}"
        done = subprocess.run(
            [walg_bin, "build-daemon-client", "--cc", cc, *extra, str(out)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return _interpreter(out)

    assert build() == ""
    assert build("--dynamic").startswith("/")
    # A compiler without a static C library: refuses -static, as cc does without libc.a.
    cc = tmp_path / "cc-without-libc.a"
    cc.write_text('#!/bin/sh\nfor a; do [ "$a" = -static ] && exit 1; done\nexec cc "$@"\n')
    cc.chmod(0o755)
    assert build(cc=str(cc)).startswith("/")


def _interpreter(path: Path) -> str:
    """The ELF program interpreter (the dynamic loader) ``path`` names; "" for none."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2, "a 64-bit ELF file"
    phoff = int.from_bytes(data[0x20:0x28], "little")
    size = int.from_bytes(data[0x36:0x38], "little")
    count = int.from_bytes(data[0x38:0x3A], "little")
    for i in range(count):
        header = data[phoff + i * size : phoff + (i + 1) * size]
        if int.from_bytes(header[:4], "little") == 3:  # PT_INTERP
            offset = int.from_bytes(header[8:16], "little")
            length = int.from_bytes(header[32:40], "little")
            return data[offset : offset + length].rstrip(b"\0").decode()
    return ""
