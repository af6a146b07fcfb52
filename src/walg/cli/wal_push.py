"""``walg wal-push PATH`` (for ``archive_command = 'walg wal-push %p'``) and the detached
uploader it starts for a backlog, ``walg wal-push-ahead PG_WAL``."""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not typing's: see walg.settings
if TYPE_CHECKING:
    import argparse

    from walg.cli.context import Context


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from walg.cli.target_storage import add_target_storage

    p = sub.add_parser(
        "wal-push",
        help="archive one WAL file (archive_command)",
        description="Compress and upload one WAL file. "
        "Use as archive_command = 'walg wal-push %p'.",
    )
    p.add_argument("path", metavar="PATH")
    add_target_storage(p)
    p.set_defaults(run=run)
    q = sub.add_parser(
        "wal-push-ahead",
        help="the detached uploader wal-push starts for a backlog",
        description="Upload the .ready WAL files of PG_WAL ahead of PostgreSQL's calls and "
        "leave a marker for each; exits when there is nothing left to do for a second.",
    )
    q.add_argument("wal_dir", metavar="PG_WAL")
    q.add_argument("--exclude", action="append", default=[], metavar="NAME")
    q.add_argument(
        "--destination-key-on-stdin",
        action="store_true",
        help="read the key to name markers with (that of the wal-push which starts the "
        "uploader) from standard input",
    )
    q.set_defaults(run=run_ahead)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from walg.ops.wal_push import wal_push

    def spawn(wal_dir: str, name: str) -> None:
        # stderr stays PostgreSQL's: a failed look-ahead upload is logged where operators look.
        # The key is this call's: the uploader's own arguments differ (--config is explicit).
        ctx.spawn_detached(
            "wal-push-ahead",
            os.path.abspath(wal_dir),
            "--exclude",
            name,
            "--destination-key-on-stdin",
            keep_stderr=True,
            stdin=f"{ctx.settings.destination_key}\n".encode(),
        )

    wal_push(ctx.settings, ctx.storage(), args.path, spawn_uploader=spawn)
    return 0


def run_ahead(args: argparse.Namespace, ctx: Context) -> int:
    from walg.errors import UsageError
    from walg.ops.wal_push import IDLE_EXIT, archive_ahead
    from walg_destination import is_key

    key = None
    if args.destination_key_on_stdin:
        import sys

        key = sys.stdin.readline(64).strip()
        if not is_key(key):
            raise UsageError("standard input holds no destination key")
    archive_ahead(ctx.settings, ctx.storage(), args.wal_dir, set(args.exclude), IDLE_EXIT, key)
    return 0
