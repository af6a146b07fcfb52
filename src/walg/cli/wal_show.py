"""``walg wal-show [--detailed-json] [--without-backups]`` in WAL-G's output formats.

The table is go-pretty's default style as WAL-G renders it (no row-number column; a column
whose every cell is a number, the switch point LSN included, is right-aligned, header too);
the JSON is one compact line, an array of timelines sorted by id. Unlike WAL-G, the JSON names
at most :data:`MISSING_NAMES_LIMIT` missing segments of a timeline (the highest), with a
warning saying how many were left out.
"""

from __future__ import annotations

import argparse
import itertools
from typing import TYPE_CHECKING, Any

from walg.cli.context import Context
from walg.cli.render import Cell, Number, backup_doc, go_json, pretty_table
from walg.core.log import get_logger

if TYPE_CHECKING:
    from walg.ops.wal_show import TimelineInfo

log = get_logger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "wal-show",
        help="show WAL segments in storage grouped by timeline",
        description="Show the WAL segments in storage grouped by timeline: range, count, "
        "missing segments (status LOST_SEGMENTS), parent timeline and switch point from the "
        ".history file, and the backups taken on each timeline.",
    )
    p.add_argument(
        "--detailed-json",
        "--json",
        dest="detailed_json",
        action="store_true",
        help="output detailed information (missing segments, backups) as JSON",
    )
    p.add_argument(
        "--without-backups",
        action="store_true",
        help="do not look up the backups of each timeline",
    )
    p.set_defaults(run=run)


#: --detailed-json names at most this many missing segments of a timeline: a stray far-off
#: segment name leaves a gap of up to 2^40 segments, which no output could hold
MISSING_NAMES_LIMIT = 100_000


def timeline_doc(
    info: TimelineInfo, segment_size: int, limit: int = MISSING_NAMES_LIMIT
) -> dict[str, Any]:
    missing = list(itertools.islice(info.missing_segments(segment_size), limit))
    left_out = info.missing_count - len(missing)
    if left_out:
        log.warning(
            "timeline %d: %d missing segments; only the highest %d are listed (%d left out)",
            info.id,
            info.missing_count,
            len(missing),
            left_out,
        )
    doc: dict[str, Any] = {
        "id": info.id,
        "parent_id": info.parent_id,
        "switch_point_lsn": info.switch_point_lsn,
        "start_segment": info.start_segment,
        "end_segment": info.end_segment,
        "segments_count": info.segments_count,
        "missing_segments": missing,
    }
    if info.backups:
        doc["backups"] = [backup_doc(b) for b in info.backups]
    doc["segment_range_size"] = info.segment_range_size
    doc["status"] = info.status
    return doc


def run(args: argparse.Namespace, ctx: Context) -> int:
    from walg.core.lsn import format_lsn
    from walg.ops.wal_show import wal_show

    with_backups = not args.without_backups
    result = wal_show(
        ctx.storage(),
        with_backups=with_backups,
        segment_size=ctx.settings.wal_segment_size if ctx.settings.wal_segment_size_set else None,
        concurrency=ctx.settings.download_concurrency,
        check_size=True,
    )
    for name in result.skipped_backups:
        log.warning("backup %s has no readable metadata.json; not shown", name)
    for problem in result.history_errors:
        log.warning("%s; shown without parent timeline and switch point", problem)
    if args.detailed_json:
        docs = [timeline_doc(t, result.segment_size) for t in result.timelines]
        ctx.stdout.write(go_json(docs) + "\n")
        return 0
    headers = [
        "TLI",
        "Parent TLI",
        "Switchpoint LSN",
        "Start segment",
        "End segment",
        "Segment range",
        "Segments count",
        "Status",
    ]
    if with_backups:
        headers.append("Backups count")
    rows: list[list[Cell]] = []
    for info in result.timelines:
        row: list[Cell] = [
            info.id,
            info.parent_id,
            Number(format_lsn(info.switch_point_lsn)),
            info.start_segment,
            info.end_segment,
            info.segment_range_size,
            info.segments_count,
            info.status,
        ]
        if with_backups:
            row.append(len(info.backups))
        rows.append(row)
    ctx.stdout.write(pretty_table(headers, rows))
    return 0
