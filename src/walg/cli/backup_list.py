"""``walg backup-list [--pretty] [--json] [--detail]`` in WAL-G's output formats."""

from __future__ import annotations

import argparse

from walg.cli.context import Context
from walg.cli.render import backup_doc, box_table, go_json, rfc850, rfc3339, tabwriter
from walg.core.log import get_logger

log = get_logger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from walg.cli.target_storage import add_target_storage

    p = sub.add_parser(
        "backup-list",
        help="list backups, oldest first",
        description="List the backups in storage, oldest first (by sentinel time).",
    )
    p.add_argument("--pretty", action="store_true", help="box table / indented JSON")
    p.add_argument("--json", action="store_true", help="JSON array")
    p.add_argument("--detail", action="store_true", help="add each backup's metadata")
    add_target_storage(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from walg.core.lsn import format_lsn
    from walg.ops.backup_list import backup_list

    items = backup_list(ctx.storage(), args.detail, ctx.settings.download_concurrency)
    if not items:
        log.info("No backups found")
        if args.json:
            ctx.stdout.write("[]\n")
        return 0
    if args.json:
        # WAL-G's json.Encoder: compact, or indented by four spaces with --pretty.
        docs = [backup_doc(item) for item in items]
        ctx.stdout.write(go_json(docs, indent=4 if args.pretty else None) + "\n")
        return 0
    headers = ["backup_name", "modified", "wal_file_name", "storage_name"]
    if args.detail:
        headers += [
            "start_time",
            "finish_time",
            "hostname",
            "data_dir",
            "pg_version",
            "start_lsn",
            "finish_lsn",
            "is_permanent",
        ]
    rows = []
    for item in items:
        when = rfc850(item.ref.modified) if args.pretty else item.ref.modified.format_seconds()
        row = [item.ref.name, when, item.ref.wal_file_name, "default"]
        meta = item.metadata
        if meta is not None:
            fmt = rfc850 if args.pretty else rfc3339
            row += [
                fmt(meta.start_time),
                fmt(meta.finish_time),
                meta.hostname,
                meta.data_dir,
                str(meta.pg_version),
                format_lsn(meta.start_lsn),
                format_lsn(meta.finish_lsn),
                str(meta.is_permanent).lower(),
            ]
        rows.append(row)
    if args.pretty:
        pretty = [h.replace("_", " ").replace("data dir", "datadir") for h in headers]
        pretty = [("permanent" if h == "is permanent" else h) for h in pretty]
        ctx.stdout.write(box_table(pretty, rows))
    else:
        ctx.stdout.write(tabwriter([headers, *rows]))
    return 0
