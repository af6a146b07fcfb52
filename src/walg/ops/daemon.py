"""``walg daemon SOCKET``: a resident process that serves archive and restore commands.

It speaks WAL-G's daemon protocol on a UNIX socket (see :mod:`walg.daemon_client`), so WAL-G's
own client and ``walg_archive`` library work with it too. Storage stays open, a look-ahead
uploader keeps archiving ``.ready`` files as PostgreSQL produces them, and a prefetcher keeps
the next segments on local disk during recovery. Every request has a timeout; a reply of ``O``
is sent only after the work is durable in storage.

A request is served only for the data directory the daemon was started for: a push whose file
is not in its pg_wal, or a fetch whose destination is not there, is refused (``E``). Several
clusters can share a ``postgresql.conf`` and so a socket; answering one cluster's request with
another's files would archive the wrong WAL or feed recovery the wrong segment.

A fetch either puts its file in place before the reply or never: once a request was answered
(with an error after its time limit) or its client went away, a download still running is
discarded instead of being renamed over a file PostgreSQL may since have been given.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import socketserver
import stat
import struct
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, suppress
from typing import Any

from walg.core.log import get_logger
from walg.core.lsn import check_wal_file_name, is_segment_name
from walg.core.walpage import file_segment_size
from walg.errors import ForeignWalError, UsageError, WalgError, WalNotFound, WalOverwriteError
from walg.ops.wal import (
    fetched_for_pg_rewind,
    forget_stale_temporaries,
    marker_path,
    remove,
    take_marker,
)
from walg.ops.wal_fetch import wal_fetch
from walg.ops.wal_follow import WalFollower
from walg.ops.wal_prefetch import Prefetcher, prefetch_depth, prefetch_root
from walg.ops.wal_push import (
    STALE_TEMPORARY,
    WAIT_POLL,
    LookaheadUploader,
    future_finished,
    lookahead_workers,
    push_one,
    solo_threads,
    status_dir,
    sweep_leftovers,
)
from walg.settings import Settings
from walg.storage.base import Storage

log = get_logger(__name__)

OK, ERROR, NOT_FOUND = b"O", b"E", b"N"
MAX_MESSAGE = 65535
READ_TIMEOUT = 30.0
# WAL-G bounds only pushes (WALG_DAEMON_WAL_UPLOAD_TIMEOUT); fetches have their own limit.
DEFAULT_FETCH_TIMEOUT = 300.0
# How often the resident look-ahead removes markers of files PostgreSQL has finished with,
# and temporary objects in wal_005/ that unfinished writes left (a process killed mid-upload).
MARKER_SWEEP = 60.0
# Request names come from whoever can reach the socket: up to 64 KiB, any bytes.
SHOWN_CHARS = 200
# Connections served at once. PostgreSQL makes one archive_command and one restore_command call
# at a time for the one data directory a daemon serves; each connection holds a thread and a
# descriptor, for up to READ_TIMEOUT before it sends anything. Beyond this a new connection is
# closed unanswered, and its client runs walg itself (see walg.daemon_client): unbounded, idle
# connections used up the daemon's descriptors, it could accept nothing more (spinning on its
# listening socket), and PostgreSQL's calls waited in the listen queue until they timed out.
MAX_CONNECTIONS = 64
TURNED_AWAY_REPORT = 60.0  # seconds between warnings about connections closed unanswered
# How often the daemon checks that its socket path still leads to it (see _Server.service_actions).
SOCKET_CHECK = 1.0
# How often, at most, a fetch answered "not in the archive" makes the daemon look whether its
# storage can be this server's archive at all (walg.ops.archive_check): a standby asks every
# 5 s, and a wrong prefix must be said again now and then, not on every call.
ARCHIVE_CHECK = 600.0
# A request still being worked on this long into a stop, with nothing of it committed, is
# abandoned and its connection closed unanswered: its client runs walg itself (see
# walg.daemon_client). Answered at its own limit instead (300 s for a fetch), it kept a
# stopping daemon alive past a service manager's stop timeout, and its error made a
# restore_command in archive recovery exit 128: PostgreSQL stopped recovery.
STOP_GRACE = 5.0
# Background uploads (look-ahead, follower) still running this long into a stop, after the
# requests, are abandoned: their .ready files stay, so PostgreSQL archives them again. Given
# as long as an upload may take (WALG_DAEMON_WAL_UPLOAD_TIMEOUT, 60 s), with a request
# waiting on one of them a stop took twice that, past systemd's 90 s stop timeout.
BACKGROUND_GRACE = 15.0
REPEAT_IN_FULL = 600.0  # seconds before the daemon's log repeats a failure's whole reason


class Unanswered(WalgError):
    """A request abandoned because the daemon stops: close its connection without a reply."""


def shown(text: str) -> str:
    """A request's argument fit for a message: escaped as ``%r`` does, cut to SHOWN_CHARS."""
    if len(text) <= SHOWN_CHARS:
        return repr(text)
    return f"{text[:SHOWN_CHARS]!r}... ({len(text)} characters)"


def loggable(message: str) -> str:
    """An error message fit for one log line: it may quote a request's bytes unescaped."""
    cut = message[: SHOWN_CHARS * 2]
    if not cut.isprintable():
        cut = repr(cut)[1:-1]
    if len(message) > len(cut) or len(cut) > SHOWN_CHARS * 2:
        cut = f"{cut[: SHOWN_CHARS * 2]}... ({len(message)} characters)"
    return cut


def _text(data: bytes) -> str:
    """A request argument as the file system's bytes, decoded as Python decodes file names.

    The clients send paths as the bytes of their command line: a data directory whose name is
    not UTF-8 (Latin-1, say) is as valid a place as any, and refusing it left PostgreSQL
    unable to archive or restore anything through the daemon. Names that are no WAL file are
    refused later (check_wal_file_name), and messages show arguments escaped (shown).
    """
    return os.fsdecode(data)


class RequestGate:
    """Decides, once, whether a fetch may still put its file in place, or a push store its
    object.

    The work runs in a worker; the request handler may give up on it (time limit) while it
    runs. ``commit`` (called by wal_fetch just before its rename, by push_one just before the
    object is committed) and ``abandon`` (called by the handler) take the same lock, so
    exactly one of them wins: after ``commit`` answered True the handler waits for the commit
    and replies by its outcome; after ``abandon`` every ``commit`` answers False and the work
    is discarded.
    """

    def __init__(self, client_open: Callable[[], bool] | None = None) -> None:
        self._lock = threading.Lock()
        self._state = "pending"
        self._client_open = client_open

    def commit(self) -> bool:
        with self._lock:
            if self._state == "pending":
                # A client that gave up (its own timeout) gets no file it no longer expects:
                # PostgreSQL may have moved on to another segment at the same path.
                if self._client_open is not None and not self._client_open():
                    self._state = "abandoned"
                else:
                    self._state = "committed"
            return self._state == "committed"

    def abandon(self) -> bool:
        """Give up; False if too late because the file is already being put in place."""
        with self._lock:
            if self._state == "pending":
                self._state = "abandoned"
            return self._state == "abandoned"


def client_open(conn: socket.socket) -> bool:
    """Whether the peer of ``conn`` still has its end open (without waiting or reading)."""
    try:
        events = select.poll()
        events.register(conn.fileno(), select.POLLIN | select.POLLRDHUP)
        ready = events.poll(0)
    except (OSError, ValueError):
        return False
    if not ready:
        return True
    flags = ready[0][1]
    if flags & (select.POLLHUP | select.POLLERR | select.POLLNVAL | select.POLLRDHUP):
        return False
    try:
        # Readable: either more bytes (still there) or the end of the stream.
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


class Daemon:
    """The request handlers, independent of the socket plumbing (testable directly)."""

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        pgdata: str,
        timeout: float,
        fetch_timeout: float = DEFAULT_FETCH_TIMEOUT,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.pgdata = pgdata
        self.timeout = timeout
        self.fetch_timeout = fetch_timeout
        self.wal_dir = os.path.join(pgdata, "pg_wal")
        xlog = os.path.join(pgdata, "pg_xlog")
        if not os.path.isdir(self.wal_dir) and os.path.isdir(xlog):
            self.wal_dir = xlog  # before PostgreSQL 10 (%p is pg_xlog/...)
        self._work = ThreadPoolExecutor(
            max_workers=max(2, settings.upload_concurrency), thread_name_prefix="request"
        )
        self._prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self._prefetch_pending: Future[Any] | None = None
        self._swept_beside: dict[str, float] = {}  # destination: when its leftovers were swept
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._stale_temporaries = max(STALE_TEMPORARY, 2 * timeout)
        self.lookahead: LookaheadUploader | None = None
        self.follower: WalFollower | None = None
        self._background_held = False  # see _hold_background
        self._archive_checked_at: float | None = None  # see _not_in_archive
        self._failures: dict[tuple[str, str], tuple[str, float, int]] = {}  # see failure_line
        self._give_up_at: float | None = None  # see give_up_requests
        # Requests' work still running, and those of them given up on (they commit nothing):
        # a stop waits for the others only.
        self._running: set[Future[object]] = set()
        self._abandoned: set[Future[object]] = set()
        self._not_found = 0  # fetches answered "not in the archive" since that check
        workers = lookahead_workers(settings)
        # Whether or not pg_wal/archive_status exists yet: backup-fetch restores pg_wal empty
        # and PostgreSQL makes archive_status when it starts, after a daemon started for its
        # restore_command; a data directory may also be restored anew under a running daemon.
        # The look-ahead waits for the folder (see LookaheadUploader.scan_once).
        if workers > 0:
            self.lookahead = LookaheadUploader(
                settings,
                storage,
                self.wal_dir,
                workers,
                budget=None,
                sweep_interval=MARKER_SWEEP,
                stale_temporaries=self._stale_temporaries,
                on_foreign=self._hold_background,
            )
            if settings.daemon_follow_wal and settings.compression == "lz4":
                self.follower = WalFollower(
                    settings, storage, self.wal_dir, claim=self.lookahead.claim
                )
                self.lookahead.skip = self.follower.following

    def start(self) -> None:
        if self.lookahead is not None:
            self.lookahead.start()
        else:
            # The look-ahead sweeps as it scans; without one (WALG_UPLOAD_CONCURRENCY=1)
            # leftovers of killed uploads would stay for the daemon's whole life.
            threading.Thread(target=self._sweep_loop, name="sweep", daemon=True).start()
        if self.follower is not None:
            self.follower.start()

    def _sweep_loop(self) -> None:
        while True:
            sweep_leftovers(self.storage, self.wal_dir, self._stale_temporaries)
            if self._closing.wait(MARKER_SWEEP):
                return

    def give_up_requests(self, grace: float = STOP_GRACE) -> None:
        """The daemon stops: requests not committed within ``grace`` seconds from now are
        abandoned, and :class:`Unanswered` raised for them (see :meth:`_gated`)."""
        self._give_up_at = time.monotonic() + grace

    def close(self, grace: float | None = None) -> bool:
        """Stop background work and the worker pools. With ``grace``, wait that many seconds
        at most: work stuck on storage that does not answer (a hung mount) is abandoned, and
        False returned; it committed nothing, and its temporary objects are swept by the next
        daemon. A request's work given up on (its limit, a stop) commits nothing and is waited
        for STOP_GRACE seconds at most, to remove its temporary file: only storage that
        holds it keeps it running longer; False then too."""
        self._closing.set()
        if grace is None:
            self._close()
            return True
        finished = threading.Event()

        def close_all() -> None:
            self._close()
            finished.set()

        threading.Thread(target=close_all, name="close", daemon=True).start()
        if not finished.wait(grace):
            return False
        with self._lock:
            return not any(not f.done() for f in self._abandoned)

    def _close(self) -> None:
        if self.follower is not None:
            self.follower.stop()
        if self.lookahead is not None:
            self.lookahead.stop()
        self._prefetch.shutdown(wait=True, cancel_futures=True)
        self._work.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            owed = self._running - self._abandoned
            abandoned = set(self._abandoned)
        wait(owed)
        # A download or upload given up on but still moving removes its temporary file
        # when it ends; one held by storage would only keep the stop waiting.
        wait(abandoned, timeout=STOP_GRACE)

    def _track(self, future: Future[object]) -> None:
        with self._lock:
            self._running.add(future)

        def done(f: Future[object]) -> None:
            with self._lock:
                self._running.discard(f)
                self._abandoned.discard(f)

        future.add_done_callback(done)

    def _give_up(self, gate: RequestGate, future: Future[object]) -> bool:
        """Abandon the request; False if its work has begun to commit (it must be waited
        for, and its outcome answered)."""
        if not gate.abandon():
            return False
        future.cancel()
        with self._lock:
            if not future.done():
                self._abandoned.add(future)
        return True

    def _given_up_at(self, started: float) -> float | None:
        """When a request begun at ``started`` is given up on, the daemon stopping; None
        while it is not. A request drained at a stop gets the grace too."""
        give_up = self._give_up_at
        return None if give_up is None else max(give_up, started + STOP_GRACE)

    def _gated(
        self,
        work: Callable[[Callable[[], bool]], object],
        timeout: float,
        abandoned: str,
        client_open: Callable[[], bool] | None,
        commit_timeout: float | None,
    ) -> None:
        """Run ``work(commit)`` in a worker; it asks ``commit()`` just before it commits.

        Past ``timeout`` the request is given up on unless the work has asked already: then
        ``abandoned`` is raised and nothing is committed afterwards (the reply tells PostgreSQL
        it failed). Once the work has asked, only the commit is left and the reply must say
        how it went: it is waited for (``commit_timeout``, None for as long as it takes).
        """
        gate = RequestGate(client_open)
        try:
            future = self._work.submit(work, gate.commit)
        except RuntimeError:  # the pool is shut down: the daemon is stopping
            raise WalgError("the daemon is shutting down") from None
        self._track(future)
        started = time.monotonic()
        deadline = started + timeout
        try:
            while True:
                give_up = self._given_up_at(started)
                until = deadline if give_up is None else min(deadline, give_up)
                left = until - time.monotonic()
                if future_finished(future, max(0.0, min(left, WAIT_POLL))):
                    return
                now = time.monotonic()
                if now >= deadline:
                    if self._give_up(gate, future):
                        raise WalgError(abandoned)
                    break
                if give_up is not None and now >= give_up:
                    # Nothing of it is committed, nor will be: walg run by the client does
                    # it again (a push never replaces an archived object).
                    if self._give_up(gate, future):
                        raise Unanswered(
                            "the daemon is stopping; closed unanswered (its client runs walg "
                            "itself), nothing of it was committed or put in place"
                        )
                    break
            if not future_finished(future, commit_timeout):
                total = timeout + (commit_timeout or 0)
                raise WalgError(f"request did not finish within {total:.0f} s")
        except CancelledError:
            raise WalgError("the daemon is shutting down") from None

    def _push(
        self, path: str, client_open: Callable[[], bool] | None, timeout: float | None = None
    ) -> None:
        """Archive ``path`` in a worker, within ``timeout`` (default: the upload time limit).

        A push given up on (its limit, or a client gone) commits nothing afterwards: the
        reply told PostgreSQL it failed, and PostgreSQL may then archive the file by another
        call and recycle it, while this upload still reads it (a later segment's bytes,
        stored under this name: with WALG_PREVENT_WAL_OVERWRITE=false over the good copy).
        """
        self._gated(
            lambda commit: push_one(
                self.settings, self.storage, path, solo_threads(), commit=commit
            ),
            self.timeout if timeout is None else timeout,
            f"request did not finish within {self.timeout:.0f} s; nothing of it will be committed",
            client_open,
            self.timeout,
        )

    def push(self, name: str, client_open: Callable[[], bool] | None = None) -> bytes:
        check_wal_file_name(name)
        marker = marker_path(status_dir(self.wal_dir), name, self.settings.destination_key)
        path = os.path.join(self.wal_dir, name)
        # One limit for the whole request, as WAL-G's: time spent waiting for a background
        # upload of this file is not given again to the call's own upload.
        started = time.monotonic()
        deadline = started + self.timeout

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        def stopping() -> bool:
            # The upload this call waits for may be held by storage for as long as an upload
            # may take; a stop gives it the grace every request gets, as _gated does.
            give_up = self._given_up_at(started)
            return give_up is not None and time.monotonic() >= give_up

        if (self.follower is not None and self.follower.wait_for(name, left(), stopping)) or (
            self.lookahead is not None and self.lookahead.wait_for(name, left(), stopping)
        ):
            self._forget_marker(marker)
            return OK
        if stopping():
            # The background upload was not done: nothing of this call was committed, and
            # walg run by the client archives the file (never replacing an archived object).
            raise Unanswered(
                "the daemon is stopping; closed unanswered (its client runs walg itself), "
                "the look-ahead upload it waited for was not done"
            )
        try:
            taken = take_marker(marker, path)
        except OSError as exc:
            # walg's status folder is only an optimisation: archive the file the ordinary way.
            log.warning("cannot use the look-ahead marker %s (%s); archiving %s", marker, exc, name)
            taken = False
        if taken:
            return OK
        try:
            self._push(path, client_open, left())
        except ForeignWalError:
            self._hold_background(name)
            raise
        self._resume_background()
        return OK

    def _hold_background(self, name: str) -> None:
        """Another database system's WAL is stored under ``name``, so PostgreSQL's calls for
        it are refused for ever: the look-ahead and the WAL follower, which archive on their
        own, stop until a call succeeds; their uploads of this system's later segments would
        land after that system's last one, and a restore of it to the end stop there. Called
        for PostgreSQL's refused call, and by the look-ahead when it meets such a segment
        itself (a daemon started over a backlog, before PostgreSQL's next call)."""
        background = [b for b in (self.lookahead, self.follower) if b is not None]
        if background and not self._background_held:
            log.warning(
                "%s is stored as another database system's WAL: archiving ahead is held "
                "until a wal-push succeeds",
                name,
            )
        self._background_held = True
        for b in background:
            b.hold()

    def _resume_background(self) -> None:
        if self.lookahead is not None:
            self.lookahead.resume()
        if self._background_held:
            self._background_held = False
            if self.follower is not None:
                self.follower.resume()

    @staticmethod
    def _forget_marker(marker: str) -> None:
        try:
            remove(marker)
        except OSError as exc:
            log.warning("cannot remove the look-ahead marker %s: %s", marker, exc)

    def _in_wal_dir(self, directory: str) -> bool:
        """Whether ``directory`` (absolute, or relative to PGDATA) is the pg_wal served here."""
        here = os.path.realpath(os.path.join(self.pgdata, directory))
        return here == os.path.realpath(self.wal_dir)

    def _pushed_name(self, given: str) -> str:
        """The WAL file name in a push request.

        walg's clients send the absolute path of ``%p``. WAL-G's client sends its argument as
        it is: ``%f`` in WAL-G's documented ``archive_command``, but ``%p`` (``pg_wal/NAME``,
        relative to PGDATA) is as likely. A path is accepted only if it is in the pg_wal this
        daemon serves: archiving a same-named file from there for a request about another
        directory would archive the wrong file.
        """
        directory, name = os.path.split(given)
        if directory and not self._in_wal_dir(directory):
            raise UsageError(
                f"{shown(given)} is not in {self.wal_dir}, the pg_wal this daemon serves"
            )
        return name

    def _fetch_destination(self, given: str) -> str:
        """The absolute destination of a fetch request, if it is in the pg_wal served here.

        walg's clients send the absolute path of ``%p``; WAL-G's sends ``%p`` as it is,
        relative to PGDATA. Writing into this daemon's pg_wal for another cluster's request
        (a copied postgresql.conf naming the same socket) would hand that cluster nothing and
        put a stray file here, so anything else is refused.
        """
        dest = os.path.join(self.pgdata, given)  # join keeps an absolute ``given`` as it is
        directory, base = os.path.split(dest)
        if not base or not self._in_wal_dir(directory):
            raise UsageError(
                f"destination {shown(given)} is not in {self.wal_dir}, the pg_wal this daemon "
                "serves"
            )
        return dest

    def fetch(
        self, name: str, destination: str, client_open: Callable[[], bool] | None = None
    ) -> bytes:
        """Fetch ``name`` into ``destination``; ``client_open`` tells whether the asker waits."""
        dest = self._fetch_destination(destination)
        # pg_rewind --restore-target-wal is asking, and fails on anything changed in that
        # pg_wal behind its back (see fetched_for_pg_rewind).
        rewinding = fetched_for_pg_rewind(name, dest)
        if not rewinding:
            self._sweep_beside(dest)
        try:
            # Committed, the rename is under way and the reply must say so: no second limit.
            self._gated(
                lambda commit: wal_fetch(
                    self.settings, self.storage, name, dest, not rewinding, commit=commit
                ),
                self.fetch_timeout,
                f"fetch of {shown(name)} did not finish within {self.fetch_timeout:g} s; it "
                "will not be put in place",
                client_open,
                None,
            )
        except WalNotFound:
            self._not_in_archive(name)
            return NOT_FOUND
        if self.settings.download_concurrency > 1 and is_segment_name(name) and not rewinding:
            self._schedule_prefetch(name, dest)
        return OK

    def _not_in_archive(self, name: str) -> None:
        """After the first fetch answered "not in the archive", and then at most every
        ARCHIVE_CHECK seconds, look off the request path whether storage can be this
        server's archive at all, and warn if not: a daemon started with a wrong or empty
        prefix answers a standby's or a restore's every fetch so, and PostgreSQL waits on
        without a word in any log (the clients print nothing for it)."""
        now = time.monotonic()
        with self._lock:
            self._not_found += 1
            checked = self._archive_checked_at
            if checked is not None and now - checked < ARCHIVE_CHECK:
                return
            self._archive_checked_at = now
            count, self._not_found = self._not_found, 0
        threading.Thread(
            target=self._check_archive, args=(name, count), name="archive-check", daemon=True
        ).start()

    def _check_archive(self, name: str, count: int) -> None:
        from walg.ops.archive_check import archive_problem

        try:
            problem = archive_problem(self.storage, name)
        except (WalgError, OSError) as exc:
            log.warning("cannot look whether %s is this server's archive: %s", name, exc)
            return
        if problem is None:
            log.debug("%s is not in the archive, which may be this server's: its end", name)
            return
        log.warning(
            "%d fetch(es) answered 'not in the archive' (the last of %s), and %s: PostgreSQL "
            "waits for WAL this storage does not have. Check the storage settings this daemon "
            "was started with (WALG_FILE_PREFIX, WALG_STORAGE_PREFIX, its --config file)",
            count,
            name,
            problem,
        )

    def _sweep_beside(self, dest: str) -> None:
        """Now and then (every MARKER_SWEEP seconds for a destination), off the request path:
        remove the temporary files beside ``dest`` of fetches killed outright (a daemon or a
        walg wal-fetch killed mid-download leaves up to a segment in pg_wal), once untouched
        for ten minutes, as walg wal-fetch's prefetch does. Nothing else removes them."""
        now = time.monotonic()
        with self._lock:
            last = self._swept_beside.get(dest)
            if last is not None and now - last < MARKER_SWEEP:
                return
            if len(self._swept_beside) >= 64:  # destinations come from clients: bounded
                self._swept_beside.clear()
            self._swept_beside[dest] = now
        with suppress(RuntimeError):  # shutting down: the next daemon sweeps
            self._prefetch.submit(self._forget_beside, dest)

    @staticmethod
    def _forget_beside(dest: str) -> None:
        removed = forget_stale_temporaries(dest)
        if removed:
            log.info(
                "removed %d temporary file(s) beside %s left by fetches killed outright",
                len(removed),
                dest,
            )

    def _schedule_prefetch(self, name: str, dest: str) -> None:
        with self._lock:
            if self._prefetch_pending is not None and not self._prefetch_pending.done():
                return
            prefetcher = Prefetcher(
                self.settings,
                self.storage,
                prefetch_root(self.settings, dest),
                file_segment_size(dest),  # initdb --wal-segsize names segments by it
                dest,
            )
            # RuntimeError: shutting down. The file is in place and the reply must say so; the
            # prefetch is only an optimisation.
            with suppress(RuntimeError):
                self._prefetch_pending = self._prefetch.submit(
                    prefetcher.run, name, prefetch_depth(self.settings)
                )

    def failure_line(self, request: str, exc: WalgError | OSError) -> str:
        """What the log says of ``request`` (as :func:`_request` names it) failing with
        ``exc``: the whole reason the first time, and for the same failure again only that it
        is, when and how often, with the whole reason again after REPEAT_IN_FULL seconds.

        PostgreSQL's archiver retries a refused file three times a second apart and again
        every minute, for ever: the log repeated the same long reason for each call, cut
        short at that (its advice lost). A refusal's text is walg's own about a checked WAL
        name, so it is kept whole; other errors may quote a request's bytes and are cut.
        """
        text = str(exc) if isinstance(exc, WalOverwriteError) else loggable(str(exc))
        key = (request, text)
        now = time.monotonic()
        with self._lock:
            seen = self._failures.get(key)
            if seen is None or now - seen[1] >= REPEAT_IN_FULL:
                if len(self._failures) >= 64:  # bounded: the oldest reasons are logged again
                    self._failures.clear()
                self._failures[key] = (time.strftime("%H:%M:%S"), now, 1)
                return f"{request} failed: {text}"
            when, logged, count = seen
            self._failures[key] = (when, logged, count + 1)
        return f"{request} failed again ({count + 1} times), for the reason logged at {when}"

    def handle(
        self, kind: bytes, body: bytes, client_open: Callable[[], bool] | None = None
    ) -> bytes:
        if kind == b"C":
            return OK
        if kind == b"F":
            return self.push(self._pushed_name(_text(body)), client_open)
        if kind == b"f":
            args = parse_args(body)
            if len(args) != 2:
                raise UsageError("wal-fetch needs 2 arguments")
            return self.fetch(args[0], args[1], client_open)
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
        out.append(_text(body[pos : pos + size]))
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


class _Once:
    """A callable that calls ``fn`` the first time only."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn: Callable[[], None] | None = fn

    def __call__(self) -> None:
        fn, self._fn = self._fn, None
        if fn is not None:
            fn()


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        # process_request counted the connection as busy: its client sent a request with its
        # connect and waits for the reply, also when a stopping daemon accepts it late. Once
        # that request is being served (or the connection is over), busy() counts instead.
        arrived = _Once(self.server.leave)
        try:
            self._serve(arrived)
        finally:
            arrived()

    def _serve(self, arrived: Callable[[], None]) -> None:
        conn: socket.socket = self.request
        conn.settimeout(READ_TIMEOUT)
        daemon = self.server.daemon
        while True:
            try:
                header = _read_exactly(conn, 3)
            except (ConnectionError, TimeoutError, OSError):
                return
            kind = header[:1]
            body: bytes | None = None
            (length,) = struct.unpack(">H", header[1:])
            with self.server.busy():
                arrived()
                try:
                    if length < 3:
                        raise UsageError("corrupt message length")
                    try:
                        body = _read_exactly(conn, length - 3)
                    except OSError as exc:
                        log.error("connection failed: %s", loggable(str(exc)))
                        return
                    reply = daemon.handle(kind, body, lambda: client_open(conn))
                except Unanswered as exc:
                    log.warning("%s: %s", _request(kind, body), exc)
                    return
                except (WalgError, OSError) as exc:
                    # An OSError here is the work's (a file, storage's socket), not this
                    # connection's: the client must hear that the request failed, not take
                    # a closed connection for a daemon that stopped.
                    log.error("%s", daemon.failure_line(_request(kind, body), exc))
                    reply = ERROR
                except Exception as exc:
                    # The frames, not the message: it may quote the request's bytes.
                    frames = "".join(traceback.format_tb(exc.__traceback__))
                    log.error(
                        "unexpected error handling %s: %s: %s\n%s",
                        _request(kind, body),
                        type(exc).__name__,
                        loggable(str(exc)),
                        frames,
                    )
                    reply = ERROR
                try:
                    conn.sendall(reply)
                except OSError:
                    return
            if kind in (b"F", b"f") or reply == ERROR:
                return


def _request(kind: bytes, body: bytes | None) -> str:
    """A request as a log line names it: ``wal-push of NAME``, ``wal-fetch of NAME``; the
    protocol's byte (``%r``) only for a request that is none of walg's."""
    what = {b"C": "check", b"F": "wal-push", b"f": "wal-fetch"}.get(kind)
    if what is None:
        return f"{kind!r} request"
    try:
        if kind == b"F" and body is not None:
            return f"{what} of {loggable(os.path.basename(_text(body)))}"
        if kind == b"f" and body is not None:
            return f"{what} of {loggable(parse_args(body)[0])}"
    except WalgError:  # a corrupt body: its own error says so
        pass
    return f"{what} request"


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    # Idle connections must not keep the process alive; requests being answered, and
    # connections whose first request is not yet answered, are waited for by wait_idle.
    daemon_threads = True
    daemon: Daemon
    socket_path: str
    socket_identity: tuple[int, int] = (-1, -1)
    released = False  # the daemon is stopping and has let go of its socket path
    lost = False  # the socket path stopped leading to this daemon while it served
    _path_checked_at = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._busy = 0
        self._idle = threading.Condition()
        self._connections = 0  # handler threads running (MAX_CONNECTIONS at most)
        self._turned_away = 0  # since the last warning
        self._warned_at = -TURNED_AWAY_REPORT

    def _enter(self) -> None:
        with self._idle:
            self._busy += 1

    def leave(self) -> None:
        with self._idle:
            self._busy -= 1
            self._idle.notify_all()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._idle:
            full = self._connections >= MAX_CONNECTIONS
            if not full:
                self._connections += 1
        if full:
            self._turn_away(request)
            return
        self._enter()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.leave()
            self._connection_over()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connection_over()

    def _connection_over(self) -> None:
        with self._idle:
            self._connections -= 1

    def _turn_away(self, request: Any) -> None:
        """Close a connection beyond MAX_CONNECTIONS unanswered: its client runs walg itself."""
        self._turned_away += 1
        now = time.monotonic()
        if now - self._warned_at >= TURNED_AWAY_REPORT:
            log.warning(
                "%d connections are open, the most served at once; closing %d new one(s) "
                "unanswered (their clients run walg themselves)",
                MAX_CONNECTIONS,
                self._turned_away,
            )
            self._warned_at, self._turned_away = now, 0
        self.shutdown_request(request)

    def service_actions(self) -> None:
        """Called by serve_forever at least every poll interval: stop if the socket path is
        gone (the file or its folder removed) or is another socket. No client can reach this
        daemon any more; running on unseen, its look-ahead and follower would go on beside
        the daemon started next on that path."""
        now = time.monotonic()
        if self.released or self.lost or now - self._path_checked_at < SOCKET_CHECK:
            return
        self._path_checked_at = now
        try:
            st = os.lstat(self.socket_path)
        except FileNotFoundError:
            pass
        except OSError:
            return  # cannot tell (a folder made unreadable): go on serving
        else:
            if (st.st_dev, st.st_ino) == self.socket_identity:
                return
        self.lost = True
        log.error(
            "%s is gone or is no longer this daemon's socket: no client can reach this "
            "daemon; stopping",
            self.socket_path,
        )
        threading.Thread(target=self.shutdown, name="lost-socket", daemon=True).start()

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Around the work and the reply of one request."""
        self._enter()
        try:
            yield
        finally:
            self.leave()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no connection waits for its first reply and no request is between
        being read and being answered; False on time."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def drain(self) -> int:
        """Accept the connections still in the listen queue and serve them; how many.

        Call once serve_forever has returned and the socket path is gone, so that no
        connection can join the queue any more. Closing the listening socket would reset
        them, and their clients would report a failure: a recovering PostgreSQL stops on it.
        """
        self.socket.setblocking(False)
        served = 0
        while True:
            try:
                request, address = self.get_request()
            except (BlockingIOError, InterruptedError):
                return served
            except OSError as exc:
                log.warning("accepting a queued connection failed: %s", exc)
                return served
            self.process_request(request, address)
            served += 1


def prepare_socket_path(path: str) -> None:
    """Remove a stale socket; refuse if another daemon answers on it or it is not a socket.

    Only a refused connection (or none at the path) proves the socket stale. Anything else
    (a full listen backlog answers EAGAIN, another user's socket EACCES) may be a live daemon,
    and unlinking its socket would cut PostgreSQL off from it.
    """
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
    except (ConnectionRefusedError, FileNotFoundError):
        remove(path)
        return
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            reason = "its listen queue is full: a daemon may be busy there"
        raise UsageError(
            f"cannot tell whether a daemon is listening on {path} ({reason}); "
            "remove it if it is stale"
        ) from None
    finally:
        probe.close()
    raise UsageError(f"another daemon is already listening on {path}")


def release_socket_path(server: _Server) -> None:
    """Unlink the server's socket, unless the path is now another daemon's socket."""
    server.released = True
    try:
        st = os.lstat(server.socket_path)
    except FileNotFoundError:
        return
    if (st.st_dev, st.st_ino) != server.socket_identity:
        log.info("%s is no longer this daemon's socket; left in place", server.socket_path)
        return
    remove(server.socket_path)


# The longest path a UNIX socket address holds (sun_path, less its terminating NUL).
SOCKET_PATH_MAX = 107


def _listening_at(socket_path: str) -> _Server:
    """A server listening on a socket at ``socket_path``.

    Bound and listening under a temporary name first, then hard-linked into place: the path
    appears only once connections are taken. Bound at the path itself, it existed for a moment
    before ``listen``, and a client that came then was refused: its push failed (PostgreSQL
    tries again later) and its fetch went around the daemon. A link, unlike a rename, never
    replaces a socket another daemon put there meanwhile. Where the temporary name would be
    too long for a socket address, or the file system has no hard links, the socket is bound
    at the path as before.
    """
    folder, name = os.path.split(socket_path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}")
    if len(os.fsencode(tmp)) > SOCKET_PATH_MAX:
        return _bound(socket_path, socket_path)
    _forget_dead_temporaries(folder, name)
    server = _bound(tmp, socket_path)
    try:
        os.link(tmp, socket_path)
    except FileExistsError:
        server.server_close()
        raise UsageError(f"another daemon is already listening on {socket_path}") from None
    except OSError as exc:
        server.server_close()
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        return _bound(socket_path, socket_path)
    finally:
        remove(tmp)
    return server


def _forget_dead_temporaries(folder: str, name: str) -> None:
    """Remove the temporary sockets ``.NAME.PID`` of daemons killed between bind and link.

    Each start uses its own pid's name, so without this they would stay for good. A socket
    whose pid still runs may be another daemon starting now, and is left alone.
    """
    prefix = f".{name}."
    try:
        entries = os.listdir(folder or ".")
    except OSError:
        return
    for entry in entries:
        pid = entry[len(prefix) :]
        if not entry.startswith(prefix) or not pid.isdigit() or pid.startswith("0"):
            continue
        path = os.path.join(folder, entry)
        try:
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                continue
            if int(pid) != os.getpid():
                os.kill(int(pid), 0)
                continue
        except ProcessLookupError:
            pass
        except (OSError, OverflowError):
            continue  # gone already, or a pid no process can have, or another user's
        remove(path)


def _bound(address: str, socket_path: str) -> _Server:
    """A server listening at ``address`` (``socket_path`` or its temporary name).

    A folder that is missing or not writable is the operator's to fix, and the message must
    say which path: bind's own error names none ("unexpected FileNotFoundError").
    """
    try:
        return _Server(address, _Handler)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise UsageError(f"cannot listen on {socket_path}: {reason}") from None


def check_socket_path(socket_path: str) -> None:
    """Refuse a path too long for a UNIX socket address before anything is done with it:
    bind and connect report only "AF_UNIX path too long", naming no path."""
    size = len(os.fsencode(socket_path))
    if size > SOCKET_PATH_MAX:
        raise UsageError(
            f"socket path {socket_path} is too long for a UNIX socket ({size} bytes; at most "
            f"{SOCKET_PATH_MAX})"
        )


def serve(daemon: Daemon, socket_path: str, ready: threading.Event | None = None) -> _Server:
    """Bind the socket and return the server (call ``serve_forever`` on it)."""
    check_socket_path(socket_path)
    prepare_socket_path(socket_path)
    old = os.umask(0o177)
    try:
        server = _listening_at(socket_path)
    finally:
        os.umask(old)
    server.daemon = daemon
    server.socket_path = socket_path
    st = os.lstat(socket_path)
    server.socket_identity = (st.st_dev, st.st_ino)
    daemon.start()
    if ready is not None:
        ready.set()
    return server
