"""``walg wal-fetch NAME DEST`` (for ``restore_command = 'walg wal-fetch %f %p'``)."""

from __future__ import annotations

import argparse

from walg.cli.context import Context


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "wal-fetch",
        help="restore one archived WAL file (restore_command)",
        description="Download one archived WAL file to DEST. Exits 74 when the file is not in "
        "the archive. Use as restore_command = 'walg wal-fetch %%f %%p'.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("destination", metavar="DEST")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from walg.ops.wal_fetch import wal_fetch

    wal_fetch(ctx.storage(), args.name, args.destination)
    return 0
