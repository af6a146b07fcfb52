"""``walg wal-verify [integrity] [timeline] [--json] [--fail-on-problem]``.

Output as WAL-G prints it: for each check ``[wal-verify] <check> check status: <STATUS>``, then
``[wal-verify] <check> check details:`` and a go-pretty table (integrity) or two lines
(timeline); with ``--json`` one compact JSON object keyed by check name. Like WAL-G, the exit
status is 0 whatever the checks found, unless ``--fail-on-problem`` asks for 1 on FAILURE.

The cluster position comes from PostgreSQL (PG* settings) unless ``--timeline`` and ``--lsn``
give it; ``WALG_INTEGRITY_MAX_DELAYED_WALS`` and ``WALG_UPLOAD_CONCURRENCY`` size the
"delayed" and "uploading" windows.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from walg.cli.context import Context
from walg.cli.render import Cell, Number, go_json, pretty_table
from walg.core.log import get_logger
from walg.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from walg.ops.wal_verify import IntegrityResult, TimelineResult

log = get_logger(__name__)

EXIT_PROBLEM = 1
MAX_DELAYED_SETTING = "WALG_INTEGRITY_MAX_DELAYED_WALS"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "wal-verify",
        help="verify the WAL archive (checks: integrity, timeline)",
        description="Check that WAL storage is healthy. 'integrity': every segment from the "
        "oldest backup's start to the cluster's current segment is archived (statuses FOUND, "
        "MISSING_DELAYED, MISSING_UPLOADING, MISSING_LOST; result OK, WARNING or FAILURE). "
        "'timeline': the cluster's timeline is the highest one in storage. Without a check "
        "named, both run. The cluster's timeline and LSN are queried from PostgreSQL (PG* "
        "settings) unless --timeline and --lsn are given. "
        f"{MAX_DELAYED_SETTING} (default 0) and WALG_UPLOAD_CONCURRENCY (default 16) size "
        "the delayed and uploading windows. Exits 0 whatever the result, as WAL-G does, "
        "unless --fail-on-problem is given.",
    )
    p.add_argument(
        "checks",
        nargs="*",
        metavar="CHECK",
        help="integrity and/or timeline (default: both)",
    )
    p.add_argument("--json", action="store_true", help="output as JSON")
    p.add_argument(
        "--fail-on-problem",
        action="store_true",
        help="exit with status 1 when a check reports FAILURE (WARNING still exits 0); "
        "for monitoring",
    )
    p.add_argument(
        "--timeline",
        dest="position_timeline",
        type=int,
        metavar="TLI",
        help="verify for this timeline instead of asking PostgreSQL (needs --lsn)",
    )
    p.add_argument(
        "--lsn",
        dest="position_lsn",
        metavar="LSN",
        help="verify up to this LSN (like 0/16B3748) instead of asking PostgreSQL "
        "(needs --timeline)",
    )
    p.add_argument(
        "--backup-name",
        metavar="NAME",
        help="check integrity from this backup's start instead of the oldest backup's",
    )
    p.set_defaults(run=run)


def _max_delayed(ctx: Context) -> int:
    raw = (ctx.settings.values.get(MAX_DELAYED_SETTING) or "").strip()
    if not raw:
        return 0
    from walg.settings import go_int

    value = go_int(raw)  # as WAL-G reads it, as every integer setting
    if value is None:
        raise ConfigError(f"{MAX_DELAYED_SETTING}={raw!r} is not an integer")
    if value < 0:
        raise ConfigError(f"{MAX_DELAYED_SETTING}={value} must not be negative")
    return value


def integrity_doc(result: IntegrityResult) -> dict[str, Any]:
    return {
        "status": result.status.value,
        "details": [
            {
                "timeline_id": run.timeline,
                "start_segment": run.start_segment,
                "end_segment": run.end_segment,
                "segments_count": run.segments_count,
                "status": run.status.value,
            }
            for run in result.runs
        ],
    }


def timeline_doc(result: TimelineResult) -> dict[str, Any]:
    return {
        "status": result.status.value,
        "details": {
            "current_timeline_id": result.current_timeline,
            "highest_storage_timeline_id": result.highest_storage_timeline,
        },
    }


def integrity_text(result: IntegrityResult) -> str:
    rows: list[list[Cell]] = [
        [
            run.timeline,
            run.start_segment,
            run.end_segment,
            run.segments_count,
            Number(run.status.value),
        ]
        for run in result.runs
    ]
    return pretty_table(["TLI", "Start", "End", "Segments count", "Status"], rows)


def timeline_text(result: TimelineResult) -> str:
    return (
        f"Highest timeline found in storage: {result.highest_storage_timeline}\n"
        f"Current cluster timeline: {result.current_timeline}\n"
    )


def run(args: argparse.Namespace, ctx: Context) -> int:
    from walg.ops.wal_verify import (
        CHECKS,
        ClusterPosition,
        position_from_args,
        query_cluster_position,
        wal_verify,
    )

    unknown = [c for c in args.checks if c not in CHECKS]
    if unknown:
        raise UsageError(f"invalid check specified: {unknown[0]} (available: {', '.join(CHECKS)})")
    if (args.position_timeline is None) != (args.position_lsn is None):
        raise UsageError("--timeline and --lsn work only together")
    max_delayed = _max_delayed(ctx)
    segment_size = ctx.settings.wal_segment_size
    given = ctx.settings.wal_segment_size_set

    # WALG_PG_WAL_SIZE not given: the size of the server's segments, or of the archive's where
    # no server is asked; taken as 16 MiB, a cluster made with initdb --wal-segsize=64 got
    # a wrong current segment and hundreds of segments called lost that cannot exist.
    position: ClusterPosition
    # The listing the segment size is read from is the one checked: a second costs a busy
    # archive as much again (a request per 1,000 objects on object storage).
    names: list[str] | None = None
    if args.position_timeline is not None:
        position = position_from_args(args.position_timeline, args.position_lsn)
        from walg.ops.wal_show import (
            archived_segment_size,
            list_wal_object_names,
            warn_of_another_segment_size,
        )

        storage = ctx.storage()
        names = list_wal_object_names(storage)
        if given:
            # No server to refuse a wrong one by, as without --lsn.
            warn_of_another_segment_size(storage, names, segment_size)
        else:
            segment_size = archived_segment_size(storage, names) or segment_size
    else:
        position = query_cluster_position(ctx.settings.pg, segment_size if given else None)
        segment_size = position.segment_size or segment_size
        if position.archive_failure is not None:
            # WAL-G's output has no place for it either: stderr, beside the checks' result.
            log.warning("%s", position.archive_failure)
    log.info("Current WAL segment: %s", position.current_segment(segment_size).name(segment_size))

    result = wal_verify(
        ctx.storage(),
        args.checks,
        position,
        max_delayed=max_delayed,
        upload_concurrency=ctx.settings.upload_concurrency,
        segment_size=segment_size,
        backup_name=args.backup_name,
        concurrency=ctx.settings.download_concurrency,
        wal_names=names,
    )
    if result.integrity is not None and result.integrity.earliest_backup is not None:
        log.info("Detected earliest available backup: %s", result.integrity.earliest_backup)
    if result.integrity is not None:
        # WAL-G's output has no place for these; the status says FAILURE, stderr says why.
        for problem in result.integrity.problems:
            log.error("integrity: %s", problem)

    if args.json:
        doc: dict[str, Any] = {}
        if result.integrity is not None:
            doc["integrity"] = integrity_doc(result.integrity)
        if result.timeline is not None:
            doc["timeline"] = timeline_doc(result.timeline)
        ctx.stdout.write(go_json(doc) + "\n")
    else:
        out = []
        if result.integrity is not None:
            out.append(_section("integrity", result.integrity.status.value))
            out.append(integrity_text(result.integrity))
        if result.timeline is not None:
            out.append(_section("timeline", result.timeline.status.value))
            out.append(timeline_text(result.timeline))
        ctx.stdout.write("".join(out))
    if args.fail_on_problem and result.failed:
        return EXIT_PROBLEM
    return 0


def _section(check: str, status: str) -> str:
    return f"[wal-verify] {check} check status: {status}\n[wal-verify] {check} check details:\n"
