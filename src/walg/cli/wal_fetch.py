"""``walg wal-fetch NAME DEST`` (for ``restore_command = 'walg wal-fetch %f %p'``).

After a segment is restored, a detached ``walg wal-prefetch`` child downloads the next
``WALG_DOWNLOAD_CONCURRENCY`` segments (at most 64), so the following calls are served from
local disk.

Exit codes: 0 restored, 74 not in the archive; any other failure exits 1, or
``EXIT_ABORT_RECOVERY`` (128) when DEST is in a data directory in archive recovery, where
PostgreSQL would take a code up to 125 for "end of the archive" and promote without the rest
of the WAL (:func:`failure_exit_code`).
"""

from __future__ import annotations

import os

from walg.errors import WalGap, WalgError, WalNotFound

TYPE_CHECKING = False  # not typing's: see walg.settings
if TYPE_CHECKING:
    import argparse

    from walg.cli.context import Context


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from walg.cli.target_storage import add_target_storage

    p = sub.add_parser(
        "wal-fetch",
        help="restore one archived WAL file (restore_command)",
        description="Download one archived WAL file to DEST. Exits 74 when the file is not in "
        "the archive. Use as restore_command = 'walg wal-fetch %f %p'.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("destination", metavar="DEST")
    p.add_argument("--no-prefetch", action="store_true", help="do not prefetch what follows")
    add_target_storage(p)
    p.set_defaults(run=run)

    q = sub.add_parser(
        "wal-prefetch",
        help="download the WAL segments after NAME into the prefetch folder",
        description="Used by wal-fetch: download the segments after NAME into "
        "<DEST dir>/.wal-g/prefetch/<archive key> (or under $WALG_PREFETCH_DIR).",
    )
    q.add_argument("name", metavar="NAME")
    q.add_argument("destination", metavar="DEST")
    q.add_argument(
        "--root",
        default=None,
        help="the prefetch folder (default: that of DEST and this process's destination key)",
    )
    q.add_argument(
        "--segment-size",
        type=int,
        default=None,
        help="bytes per segment (default: WALG_PG_WAL_SIZE, which is in MiB)",
    )
    q.set_defaults(run=run_prefetch)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from walg.core.lsn import is_segment_name
    from walg.ops.wal import fetched_for_pg_rewind
    from walg.ops.wal_fetch import wal_fetch

    # pg_rewind --restore-target-wal: it rewrites that pg_wal by a listing taken before this
    # call, and fails on anything changed there since but DEST (see fetched_for_pg_rewind).
    rewinding = fetched_for_pg_rewind(args.name, args.destination)
    try:
        wal_fetch(ctx.settings, ctx.storage(), args.name, args.destination, not rewinding)
    except WalNotFound as exc:
        raise _with_gap(ctx, args.name, args.destination, exc) from None
    if rewinding:
        return 0
    if args.no_prefetch or ctx.settings.download_concurrency < 2 or not is_segment_name(args.name):
        # No prefetcher to remove what calls killed outright left beside DEST (up to a
        # segment each, in pg_wal): this call does, once the file is in place.
        import contextlib

        from walg.ops.wal import forget_stale_temporaries

        with contextlib.suppress(OSError):
            forget_stale_temporaries(args.destination)
    else:
        # The file is in place: from here on nothing may turn this call into a failure, which
        # PostgreSQL would take for the end of the archive.
        try:
            from walg.ops.wal_prefetch import prefetch_root

            size = _segment_size(ctx, args.destination)
            root = prefetch_root(ctx.settings, args.destination)
            if not _already_prefetched(ctx, args.name, root, size):
                # The folder is this call's: the child's own arguments differ (--config is
                # explicit), and so may the key it would compute (walg_destination).
                ctx.spawn_detached(
                    "wal-prefetch",
                    args.name,
                    os.path.abspath(args.destination),
                    f"--segment-size={size}",
                    f"--root={root}",
                )
        except (OSError, WalgError) as exc:
            from walg.core.log import get_logger

            get_logger(__name__).warning("not prefetching after %s: %s", args.name, exc)
    return 0


def _with_gap(ctx: Context, name: str, destination: str, exc: WalNotFound) -> WalNotFound:
    """``exc``, saying so where the segment after ``name`` is stored: a gap in the archive.

    Its end and a gap both exit 74, and PostgreSQL takes either for the end of the archive;
    only the line in its log can tell the operator which. A standby asks for the next segment
    every 5 s and is told nothing (see walg.cli.main): no lookup there either.
    """
    from walg.core.lsn import is_segment_name
    from walg.daemon_client import fetch_data_directories, is_standby

    if not is_segment_name(name) or any(
        is_standby(pgdata) for pgdata in fetch_data_directories(destination)
    ):
        return exc
    from walg.ops.wal_fetch import stored_after

    try:
        later = stored_after(ctx.storage(), name, ctx.settings.wal_segment_size)
    except (OSError, WalgError):
        return exc  # a segment size that names no such segment, storage gone: no hint
    if later is None:
        return exc
    return WalGap(
        f"{exc}, but {later} after it is: a gap in the archive, not its end. Recovery cannot "
        f"replay past it (without a target, PostgreSQL ends recovery and promotes here); put "
        f"{name} back into storage to go on"
    )


def failure_exit_code(destination: str, code: int) -> int:
    """The exit code of a wal-fetch to ``destination`` that failed with ``code``.

    PostgreSQL runs restore_command in its data directory with ``%p`` = ``pg_wal/…``. When that
    directory is in archive recovery (``recovery.signal`` without ``standby.signal``, before
    PostgreSQL 12 a ``recovery.conf`` without ``standby_mode`` on), any code
    up to 125 ends recovery as if the archive ended here, so a failure exits
    ``EXIT_ABORT_RECOVERY`` and recovery stops with an error the DBA sees. A standby keeps the
    ordinary code: it goes on streaming and asks again later.
    """
    # walg-daemon-client's rule: it runs this command when no daemon answers.
    from walg.daemon_client import fetch_data_directories, in_archive_recovery
    from walg.errors import EXIT_ABORT_RECOVERY, EXIT_NOT_FOUND

    if code in (0, EXIT_NOT_FOUND):
        return code
    if any(in_archive_recovery(pgdata) for pgdata in fetch_data_directories(destination)):
        return EXIT_ABORT_RECOVERY
    return code


def _segment_size(ctx: Context, destination: str) -> int:
    """The size of the segment just put at ``destination``, as its first page states (a
    cluster made with ``initdb --wal-segsize`` names its segments by that size, whatever
    ``WALG_PG_WAL_SIZE`` says), else the settings'."""
    from walg.core.walpage import file_segment_size

    return file_segment_size(destination) or ctx.settings.wal_segment_size


def _already_prefetched(ctx: Context, name: str, root: str, size: int) -> bool:
    """Are the next segments (same timeline) all downloaded or downloading already?

    Then a prefetch process would only start Python to find nothing to do; during a replay
    that is most calls.
    """
    from walg.core.lsn import Segment
    from walg.ops.wal_prefetch import prefetch_depth

    segment = Segment.parse(name, size)
    for _ in range(prefetch_depth(ctx.settings)):
        segment = segment.next()
        following = segment.name(size)
        if not (
            os.path.exists(os.path.join(root, following))
            or os.path.exists(os.path.join(root, "running", following))
        ):
            return False
    return True


def run_prefetch(args: argparse.Namespace, ctx: Context) -> int:
    from walg.ops.wal import forget_stale_temporaries
    from walg.ops.wal_prefetch import Prefetcher, prefetch_depth, prefetch_root

    forget_stale_temporaries(args.destination)

    root = args.root or prefetch_root(ctx.settings, args.destination)
    Prefetcher(ctx.settings, ctx.storage(), root, args.segment_size, args.destination).run(
        args.name, prefetch_depth(ctx.settings)
    )
    return 0
