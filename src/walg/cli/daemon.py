"""``walg daemon SOCKET``: serve archive_command / restore_command over a UNIX socket."""

from __future__ import annotations

import signal
import threading

from walg.core.log import get_logger

TYPE_CHECKING = False  # not typing's: see walg.settings
if TYPE_CHECKING:
    import argparse

    from walg.cli.context import Context

log = get_logger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "daemon",
        help="serve wal-push / wal-fetch to walg-daemon-client over a UNIX socket",
        description="Run resident, keeping storage open, archiving .ready WAL files ahead of "
        "time and prefetching during recovery. PostgreSQL calls the tiny "
        "walg-daemon-client: archive_command = 'walg-daemon-client SOCKET wal-push %%p', "
        "restore_command = 'walg-daemon-client SOCKET wal-fetch %%f %%p'. Needs PGDATA.",
    )
    p.add_argument("socket", metavar="SOCKET")
    p.add_argument("pgdata", nargs="?", metavar="PGDATA", help="data directory (default $PGDATA)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from walg.ops.daemon import Daemon, serve
    from walg.settings import parse_duration

    settings = ctx.settings
    pgdata = settings.require_pgdata(args.pgdata)
    raw_timeout = settings.values.get("WALG_DAEMON_WAL_UPLOAD_TIMEOUT", "").strip() or "60s"
    timeout = parse_duration("WALG_DAEMON_WAL_UPLOAD_TIMEOUT", raw_timeout)
    daemon = Daemon(settings, ctx.storage(), pgdata, timeout)
    server = serve(daemon, args.socket)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: shutting down", signum)
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("walg daemon listening on %s for %s", args.socket, pgdata)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        daemon.close()
        import os

        if os.path.exists(args.socket):
            os.unlink(args.socket)
    return 0
