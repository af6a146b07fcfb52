"""``walg wal-push PATH`` (for ``archive_command = 'walg wal-push %p'``)."""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: see walg.settings
if TYPE_CHECKING:
    import argparse

    from walg.cli.context import Context


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "wal-push",
        help="archive one WAL file (archive_command)",
        description="Compress and upload one WAL file. "
        "Use as archive_command = 'walg wal-push %%p'.",
    )
    p.add_argument("path", metavar="PATH")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from walg.ops.wal_push import wal_push

    wal_push(ctx.settings, ctx.storage(), args.path)
    return 0
