"""``walg backup-push [PGDATA]``."""

from __future__ import annotations

import argparse
import json

from walg.cli.context import Context


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from walg.cli.target_storage import add_target_storage

    p = sub.add_parser(
        "backup-push",
        help="take a base backup of a running cluster",
        description="Take a non-exclusive base backup of the running cluster whose data "
        "directory is PGDATA, and upload it in WAL-G's format.",
    )
    p.add_argument("pgdata", nargs="?", metavar="PGDATA", help="data directory (default: $PGDATA)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    # WAL-G's flags, with WAL-G's meaning. Those asking for what walg cannot do (a delta,
    # page checksum verification, other tar composers) are left out: argparse refuses them,
    # naming the flag, before anything is done.
    p.add_argument(
        "-f",
        "--full",
        action="store_true",
        help="make a full backup (as in WAL-G; walg's backups are always full)",
    )
    p.add_argument(
        "-p",
        "--permanent",
        action="store_true",
        help="mark the backup permanent (IsPermanent: WAL-G's delete keeps it)",
    )
    p.add_argument(
        "--add-user-data",
        metavar="DATA",
        default="",
        help="user data (JSON, else text) for the sentinel and metadata, instead of "
        "WALG_SENTINEL_USER_DATA",
    )
    add_target_storage(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from walg.ops.backup_push import backup_push
    from walg.settings import parse_user_data

    # Read before the backup starts, as the setting is; empty means the setting, as in WAL-G.
    user_data = parse_user_data(args.add_user_data)
    storage = ctx.storage()
    result = backup_push(
        ctx.settings, storage, args.pgdata, permanent=args.permanent, user_data=user_data
    )
    if args.json:
        ctx.stdout.write(json.dumps(result.__dict__) + "\n")
    return 0
