"""``walg backup-fetch DEST NAME|LATEST``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from walg.cli.context import Context
from walg.errors import UsageError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "backup-fetch",
        help="restore a base backup into an empty directory",
        description="Download, check and extract a backup into DEST, which must be empty or "
        "missing. LATEST is the backup whose sentinel was written last.",
    )
    p.add_argument("destination", metavar="DEST")
    p.add_argument("name", metavar="NAME|LATEST")
    p.add_argument(
        "--restore-spec",
        metavar="FILE",
        help="JSON tablespace spec (as in the sentinel) giving new tablespace locations",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from walg.core.metadata import TablespaceSpec
    from walg.errors import FormatError
    from walg.ops.backup_fetch import backup_fetch

    spec = None
    if args.restore_spec:
        try:
            spec = TablespaceSpec.from_json(json.loads(Path(args.restore_spec).read_text()))
        except (OSError, ValueError, FormatError) as exc:
            raise UsageError(f"--restore-spec {args.restore_spec}: {exc}") from None
    result = backup_fetch(ctx.settings, ctx.storage(), args.destination, args.name, spec)
    if args.json:
        ctx.stdout.write(json.dumps(result.__dict__) + "\n")
    return 0
