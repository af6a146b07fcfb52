"""``walg daemon SOCKET``: a resident process that serves archive and restore commands.

It speaks WAL-G's daemon protocol on a UNIX socket (see :mod:`walg.daemon_client`), so WAL-G's
own client and ``walg_archive`` library work with it too. Storage stays open, a look-ahead
uploader keeps archiving ``.ready`` files as PostgreSQL produces them, and a prefetcher keeps
the next segments on local disk during recovery. Every request has a timeout; a reply of ``O``
is sent only after the work is durable in storage.
"""

from __future__ import annotations

import os
import socket
import socketserver
import stat
import struct
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from walg.core.log import get_logger
from walg.core.lsn import check_wal_file_name, is_segment_name
from walg.errors import UsageError, WalgError, WalNotFound
from walg.ops.wal import remove, take_marker
from walg.ops.wal_fetch import wal_fetch
from walg.ops.wal_follow import WalFollower
from walg.ops.wal_prefetch import Prefetcher, prefetch_root
from walg.ops.wal_push import (
    LookaheadUploader,
    lookahead_workers,
    push_one,
    solo_threads,
    status_dir,
)
from walg.settings import Settings
from walg.storage.base import Storage

log = get_logger(__name__)

OK, ERROR, NOT_FOUND = b"O", b"E", b"N"
MAX_MESSAGE = 65535
READ_TIMEOUT = 30.0


class Daemon:
    """The request handlers, independent of the socket plumbing (testable directly)."""

    def __init__(self, settings: Settings, storage: Storage, pgdata: str, timeout: float) -> None:
        self.settings = settings
        self.storage = storage
        self.pgdata = pgdata
        self.timeout = timeout
        self.wal_dir = os.path.join(pgdata, "pg_wal")
        self._work = ThreadPoolExecutor(
            max_workers=max(2, settings.upload_concurrency), thread_name_prefix="request"
        )
        self._prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self._prefetch_pending: Future[Any] | None = None
        self._lock = threading.Lock()
        self.lookahead: LookaheadUploader | None = None
        self.follower: WalFollower | None = None
        workers = lookahead_workers(settings)
        if workers > 0 and os.path.isdir(os.path.join(self.wal_dir, "archive_status")):
            self.lookahead = LookaheadUploader(
                settings, storage, self.wal_dir, workers, budget=None
            )
            if settings.daemon_follow_wal and settings.compression == "lz4":
                self.follower = WalFollower(
                    settings, storage, self.wal_dir, claim=self.lookahead.claim
                )
                self.lookahead.skip = self.follower.following

    def start(self) -> None:
        if self.lookahead is not None:
            self.lookahead.start()
        if self.follower is not None:
            self.follower.start()

    def close(self) -> None:
        if self.follower is not None:
            self.follower.stop()
        if self.lookahead is not None:
            self.lookahead.stop()
        self._prefetch.shutdown(wait=True, cancel_futures=True)
        self._work.shutdown(wait=True, cancel_futures=True)

    def _run(self, fn: Any, *args: Any) -> Any:
        future = self._work.submit(fn, *args)
        try:
            return future.result(timeout=self.timeout)
        except FutureTimeout:
            raise WalgError(f"request did not finish within {self.timeout:.0f} s") from None

    def push(self, name: str) -> bytes:
        check_wal_file_name(name)
        marker = os.path.join(status_dir(self.wal_dir), name)
        if self.follower is not None and self.follower.wait_for(name, self.timeout):
            remove(marker)
            return OK
        if self.lookahead is not None and self.lookahead.wait_for(name, self.timeout):
            remove(marker)
            return OK
        path = os.path.join(self.wal_dir, name)
        if take_marker(marker, path):
            return OK
        self._run(push_one, self.settings, self.storage, path, solo_threads())
        return OK

    def _pushed_name(self, given: str) -> str:
        """The WAL file name in a push request.

        walg's clients send the name. WAL-G's client sends its argument as it is: ``%f`` in
        WAL-G's documented ``archive_command``, but ``%p`` (``pg_wal/NAME``, relative to
        PGDATA) is as likely. A path is accepted only if it is in the pg_wal this daemon
        serves: archiving a same-named file from there for a request about another directory
        would archive the wrong file.
        """
        directory, name = os.path.split(given)
        if directory and os.path.realpath(os.path.join(self.pgdata, directory)) != (
            os.path.realpath(self.wal_dir)
        ):
            raise UsageError(f"{given} is not in {self.wal_dir}, the pg_wal this daemon serves")
        return name

    def fetch(self, name: str, destination: str) -> bytes:
        dest = destination if os.path.isabs(destination) else os.path.join(self.pgdata, destination)
        try:
            self._run(wal_fetch, self.settings, self.storage, name, dest)
        except WalNotFound:
            return NOT_FOUND
        if self.settings.download_concurrency > 1 and is_segment_name(name):
            self._schedule_prefetch(name, dest)
        return OK

    def _schedule_prefetch(self, name: str, dest: str) -> None:
        with self._lock:
            if self._prefetch_pending is not None and not self._prefetch_pending.done():
                return
            prefetcher = Prefetcher(self.settings, self.storage, prefetch_root(self.settings, dest))
            self._prefetch_pending = self._prefetch.submit(
                prefetcher.run, name, self.settings.download_concurrency
            )

    def handle(self, kind: bytes, body: bytes) -> bytes:
        if kind == b"C":
            return OK
        if kind == b"F":
            return self.push(self._pushed_name(body.decode()))
        if kind == b"f":
            args = parse_args(body)
            if len(args) != 2:
                raise UsageError("wal-fetch needs 2 arguments")
            return self.fetch(args[0], args[1])
        raise UsageError(f"unknown message type {kind!r}")


def parse_args(body: bytes) -> list[str]:
    if not body:
        raise UsageError("corrupt message body")
    count, pos, out = body[0], 1, []
    for _ in range(count):
        if pos + 2 > len(body):
            raise UsageError("corrupt message body")
        (size,) = struct.unpack_from(">H", body, pos)
        pos += 2
        if pos + size > len(body):
            raise UsageError("corrupt message body")
        out.append(body[pos : pos + size].decode())
        pos += size
    if pos != len(body):
        raise UsageError("corrupt message body")
    return out


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("client closed the connection")
        data += chunk
    return data


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        conn: socket.socket = self.request
        conn.settimeout(READ_TIMEOUT)
        daemon = self.server.daemon
        while True:
            try:
                header = _read_exactly(conn, 3)
            except (ConnectionError, TimeoutError, OSError):
                return
            kind = header[:1]
            (length,) = struct.unpack(">H", header[1:])
            try:
                if length < 3:
                    raise UsageError("corrupt message length")
                body = _read_exactly(conn, length - 3)
                reply = daemon.handle(kind, body)
            except WalgError as exc:
                log.error("%s request failed: %s", kind.decode(errors="replace"), exc)
                reply = ERROR
            except (ConnectionError, TimeoutError, OSError) as exc:
                log.error("connection failed: %s", exc)
                return
            except Exception as exc:
                log.exception("unexpected error handling a request: %s", exc)
                reply = ERROR
            try:
                conn.sendall(reply)
            except OSError:
                return
            if kind in (b"F", b"f") or reply == ERROR:
                return


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    daemon: Daemon


def prepare_socket_path(path: str) -> None:
    """Remove a stale socket; refuse if another daemon answers on it or it is not a socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise UsageError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(2)
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise UsageError(f"another daemon is already listening on {path}")


def serve(daemon: Daemon, socket_path: str, ready: threading.Event | None = None) -> _Server:
    """Bind the socket and return the server (call ``serve_forever`` on it)."""
    prepare_socket_path(socket_path)
    old = os.umask(0o177)
    try:
        server = _Server(socket_path, _Handler)
    finally:
        os.umask(old)
    server.daemon = daemon
    daemon.start()
    if ready is not None:
        ready.set()
    return server
