"""``walg daemon SOCKET``: serve archive_command / restore_command over a UNIX socket."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

from walg.core.log import get_logger

TYPE_CHECKING = False  # not typing's: see walg.settings
if TYPE_CHECKING:
    import argparse

    from walg.cli.context import Context
    from walg.ops.daemon import _Server
    from walg.settings import Settings

log = get_logger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "daemon",
        help="serve wal-push / wal-fetch to walg-daemon-client over a UNIX socket",
        description="Run resident, keeping storage open, archiving .ready WAL files ahead of "
        "time and prefetching during recovery. PostgreSQL calls the tiny "
        "walg-daemon-client: archive_command = 'walg-daemon-client SOCKET wal-push %p', "
        "restore_command = 'walg-daemon-client SOCKET wal-fetch %f %p'. Needs PGDATA.",
    )
    p.add_argument("socket", metavar="SOCKET")
    p.add_argument("pgdata", nargs="?", metavar="PGDATA", help="data directory (default $PGDATA)")
    p.set_defaults(run=run)


def _duration(ctx: Context, name: str, default: str) -> float:
    """A request's time limit. Zero is refused: no request finishes within it, so every push
    would fail and every fetch stop an archive recovery (128), "0" read as "no limit"."""
    from walg.errors import ConfigError
    from walg.settings import parse_duration

    text = ctx.settings.values.get(name, "").strip() or default
    seconds = parse_duration(name, text)
    if seconds <= 0:
        raise ConfigError(
            f"{name}={text!r}: a request's time limit must be more than zero (within zero "
            "seconds no request could be answered with success)"
        )
    return seconds


def _refuse_root_for_another_user(pgdata: str) -> None:
    """Refuse to serve, as root, a data directory another user owns (the server's user).

    Its socket would be root's, mode 0600: every call of the server would fail with
    "Permission denied" while the daemon logs nothing. And what it writes into pg_wal (fetched
    segments PostgreSQL later recycles and writes, look-ahead records) would be root's too. A
    unit file without ``User=`` does this; the fix is to run the daemon as that user.
    """
    if os.geteuid() != 0:
        return
    from walg.errors import ConfigError

    try:
        owner = os.stat(pgdata).st_uid
    except OSError:
        return  # the daemon's own check names a data directory that is not there
    if owner == 0:
        return
    import pwd

    try:
        name = pwd.getpwuid(owner).pw_name
    except KeyError:
        name = str(owner)
    raise ConfigError(
        f"walg daemon runs as root, but the data directory {pgdata} is owned by {name}: "
        f"PostgreSQL could not connect to a socket of root's, and files the daemon writes into "
        f"pg_wal would be root's; run the daemon as {name} (User= in its systemd unit)"
    )


def _refuse_relative_prefix_elsewhere(settings: Settings, pgdata: str) -> None:
    """Refuse a relative storage folder unless the daemon runs in the data directory.

    PostgreSQL runs archive_command and restore_command there, so walg run by the client
    while the daemon is down resolves the path there too; a daemon started elsewhere
    (systemd starts services in /) would archive into another folder, and each storage
    would miss what the other holds.
    """
    from walg.errors import ConfigError

    prefix = settings.storage_prefix
    if settings.storage_kind != "file" or prefix is None or os.path.isabs(prefix):
        return
    try:
        here = os.getcwd()
        same = os.path.samefile(here, pgdata)
    except OSError:
        here, same = "(a folder that no longer exists)", False
    if not same:
        raise ConfigError(
            f"{settings.storage_prefix_key}={prefix!r} is relative, so the daemon would "
            f"resolve it from {here}, while walg run by its client when the daemon is down "
            f"resolves it from the data directory {pgdata}, as PostgreSQL runs its commands "
            "there: WAL would go into two storages. Give an absolute path, or start the daemon "
            "in the data directory"
        )


def run(args: argparse.Namespace, ctx: Context) -> int:
    from walg.ops.daemon import BACKGROUND_GRACE, READ_TIMEOUT, Daemon, release_socket_path, serve

    settings = ctx.settings
    pgdata = settings.require_pgdata(args.pgdata)
    _refuse_root_for_another_user(pgdata)
    _refuse_relative_prefix_elsewhere(settings, pgdata)
    # Keyed as PostgreSQL's own calls are (they run in the data directory), whatever folder
    # the daemon was started in (systemd's is /): markers and prefetched files are shared
    # with walg run by the client while the daemon is down.
    settings = settings.keyed_as_run_in(pgdata, args.config)
    from walg.core.naming import wal_key
    from walg.ops.wal import refuse_archive_in_data_directory

    refuse_archive_in_data_directory(
        ctx.storage(), wal_key("000000010000000000000001", "lz4"), pgdata
    )
    # WAL-G applies its upload timeout to pushes only; fetches get a limit of their own.
    timeout = _duration(ctx, "WALG_DAEMON_WAL_UPLOAD_TIMEOUT", "60s")
    fetch_timeout = _duration(ctx, "WALG_DAEMON_WAL_FETCH_TIMEOUT", "300s")
    daemon = Daemon(settings, ctx.storage(), pgdata, timeout, fetch_timeout)
    stop = threading.Event()
    servers: list[_Server] = []  # the server, once its socket is bound

    def stop_serving() -> None:
        # The path first: from then on a client finds no daemon and runs walg directly,
        # instead of queueing on a socket about to close.
        release_socket_path(servers[0])
        servers[0].shutdown()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: shutting down", signum)
        stop.set()
        if servers:
            threading.Thread(target=stop_serving, daemon=True).start()

    def reopen_log(signame: str, what: str) -> None:
        # logrotate moves WALG_LOG_DESTINATION's file away and signals: WAL-G reopens its log
        # on SIGUSR1, and postrotate scripts as often send SIGHUP. Without a reopen the daemon
        # wrote on into the moved file, and its log went with it when logrotate deleted it.
        import logging

        from walg.cli import logs
        from walg.errors import WalgError

        path = settings.log_destination
        if path is None:
            for handler in logging.getLogger().handlers:
                handler.flush()
            log.info("%s: %s; the log goes to stderr, no log file to reopen", signame, what)
            return
        try:
            logs.log_to(path)
        except WalgError as exc:
            log.warning("%s: %s; still logging to the file opened before", signame, exc)
            return
        log.info("%s: %s; log file %s opened again", signame, what, path)

    def on_usr1(_signum: int, _frame: object) -> None:
        reopen_log("SIGUSR1", "the daemon goes on")

    def on_hup(_signum: int, _frame: object) -> None:
        # Not a stop (systemctl reload must not end it), and no configuration is reread:
        # settings changed under a running archiver would be half applied.
        reopen_log("SIGHUP", "the daemon rereads no configuration (restart it for that)")

    # Before the socket exists: whoever sees it may signal at once (a service manager's
    # restart, a test), and the default action would end the process with its socket left
    # behind and its first uploads cut off.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGUSR1, on_usr1)
    signal.signal(signal.SIGHUP, on_hup)
    server = serve(daemon, args.socket)
    servers.append(server)
    if stop.is_set():  # signalled while the socket was being set up
        threading.Thread(target=stop_serving, daemon=True).start()
    log.info("walg daemon listening on %s for %s", args.socket, pgdata)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        release_socket_path(server)
        daemon.give_up_requests()
        # Connections queued before the path went carry requests their clients wait for:
        # closing the listening socket would reset them, and a recovering PostgreSQL whose
        # fetch fails stops. They are served before anything is closed.
        queued = server.drain()
        if queued:
            log.info("answering %d connection(s) queued at shutdown", queued)
        # Handler threads are daemon threads (an idle connection must not keep the process
        # alive), so a request still being answered would lose its reply if the process
        # ended now: the client would report a failure for WAL that is archived or in place.
        if not server.wait_idle(max(timeout, fetch_timeout, 1.0) + READ_TIMEOUT):
            log.warning("some requests were still unanswered at exit")
        server.server_close()
        # Every request is answered; background work (look-ahead uploads, the follower) gets
        # BACKGROUND_GRACE at most (their .ready files stay for what is abandoned). Storage
        # that does not answer must not keep a stopped daemon alive (systemctl restart would
        # wait for its SIGKILL).
        if not daemon.close(grace=min(max(timeout, 1.0), BACKGROUND_GRACE)):
            # Uploads (look-ahead, follower) or downloads (prefetches, fetches past their
            # limit): the pools do not tell which, and a DBA must not be sent to the archive
            # command for a restore's stalled read.
            log.warning(
                "uploads or downloads still waiting on storage at exit; abandoned (nothing "
                "of them was committed or put in place)"
            )
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            # The pools' threads would be joined at interpreter exit, waiting on storage.
            os._exit(1)
    # Stopped because no client could reach it: 1, so that a service manager restarts it
    # (unless it was told to stop meanwhile).
    return 1 if server.lost and not stop.is_set() else 0
