"""``walg backup-push [PGDATA]``."""

from __future__ import annotations

import argparse
import json

from walg.cli.context import Context


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "backup-push",
        help="take a base backup of a running cluster",
        description="Take a non-exclusive base backup of the running cluster whose data "
        "directory is PGDATA, and upload it in WAL-G's format.",
    )
    p.add_argument("pgdata", nargs="?", metavar="PGDATA", help="data directory (default: $PGDATA)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from walg.ops.backup_push import backup_push

    storage = ctx.storage()
    result = backup_push(ctx.settings, storage, args.pgdata)
    if args.json:
        ctx.stdout.write(json.dumps(result.__dict__) + "\n")
    return 0
