"""``walg backup-fetch DEST NAME|LATEST``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from walg.cli.context import Context
from walg.core.log import get_logger
from walg.errors import UsageError

if TYPE_CHECKING:
    from walg.ops.recovery import RecoveryTarget

log = get_logger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from walg.cli.target_storage import add_target_storage

    p = sub.add_parser(
        "backup-fetch",
        help="restore a base backup into an empty directory",
        description="Download, check and extract a backup into DEST, which must be empty or "
        "missing. LATEST is the backup whose sentinel was written last; with --restore-command, "
        "the newest that recovery can start from on the timeline it will follow, and with "
        "--target-time or --target-lsn the newest of those that ended at or before the target.",
    )
    p.add_argument("destination", metavar="DEST")
    p.add_argument("name", metavar="NAME|LATEST", nargs="?")
    p.add_argument(
        "--target-user-data",
        metavar="DATA",
        default="",
        help="restore the one backup whose user data is DATA (JSON, else text) instead of "
        "NAME (default: $WALG_FETCH_TARGET_USER_DATA)",
    )
    # WAL-G's ways of applying delta backups: a full backup, the only kind walg restores,
    # is restored the same either way.
    p.add_argument("--reverse-unpack", action="store_true", help="no effect (as in WAL-G)")
    p.add_argument("--skip-redundant-tars", action="store_true", help="no effect (as in WAL-G)")
    p.add_argument(
        "--restore-spec",
        metavar="FILE",
        help="JSON tablespace spec (as in the sentinel) giving new tablespace locations",
    )
    p.add_argument(
        "--archive-mode",
        choices=("off", "preserve"),
        default="preserve",
        help="off: write archive_mode = 'off' into postgresql.auto.conf, so that a copy (a "
        "test restore, a clone) never archives into the original's storage; preserve "
        "(default): archive as the backed-up server's configuration says",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    r = p.add_argument_group(
        "recovery settings",
        "With --restore-command, the restored directory is made ready for archive recovery "
        "(recovery.signal and postgresql.auto.conf on PostgreSQL 12+, recovery.conf before).",
    )
    r.add_argument("--restore-command", metavar="CMD", help="e.g. 'walg wal-fetch %%f %%p'")
    r.add_argument("--target-time", metavar="TIMESTAMP", help="recovery_target_time")
    r.add_argument("--target-lsn", metavar="LSN", help="recovery_target_lsn")
    r.add_argument("--target-name", metavar="NAME", help="recovery_target_name (a restore point)")
    r.add_argument("--target-xid", metavar="XID", help="recovery_target_xid")
    r.add_argument("--target-timeline", metavar="TLI", help="recovery_target_timeline")
    r.add_argument(
        "--target-action", choices=("pause", "promote", "shutdown"), help="default: promote"
    )
    r.add_argument(
        "--target-exclusive",
        action="store_true",
        help="stop just before the target (recovery_target_inclusive = off)",
    )
    r.add_argument("--standby", action="store_true", help="standby.signal instead")
    add_target_storage(p)
    p.set_defaults(run=run)


def _recovery_target(args: argparse.Namespace) -> RecoveryTarget | None:
    from walg.ops.recovery import RecoveryTarget, refuse_empty

    wanted = (
        args.target_time,
        args.target_lsn,
        args.target_name,
        args.target_xid,
        args.target_timeline,
        args.target_action,
        args.standby,
    )
    # Also without --restore-command, where no RecoveryTarget is made to check them.
    refuse_empty(
        {
            "--restore-command": args.restore_command,
            "--target-time": args.target_time,
            "--target-lsn": args.target_lsn,
            "--target-name": args.target_name,
            "--target-xid": args.target_xid,
            "--target-timeline": args.target_timeline,
        }
    )
    if not args.restore_command:
        if any(wanted) or args.target_exclusive:
            raise UsageError("recovery targets need --restore-command")
        return None
    return RecoveryTarget(
        restore_command=args.restore_command,
        time=args.target_time,
        lsn=args.target_lsn,
        name=args.target_name,
        xid=args.target_xid,
        timeline=args.target_timeline,
        action=args.target_action,
        inclusive=False if args.target_exclusive else None,
        standby=args.standby,
    )


def _named_backup(args: argparse.Namespace, ctx: Context) -> str:
    """NAME, or the backup ``--target-user-data`` (else WALG_FETCH_TARGET_USER_DATA) names;
    never both, as in WAL-G."""
    wanted = args.target_user_data or ctx.settings.fetch_target_user_data
    if args.name is not None and wanted:
        raise UsageError(
            "give the backup's NAME (or LATEST) or --target-user-data "
            "(WALG_FETCH_TARGET_USER_DATA), not both"
        )
    if args.name is not None:
        name: str = args.name
        return name
    if not wanted:
        raise UsageError("which backup? give NAME, LATEST or --target-user-data")
    from walg.ops.backup_list import backup_with_user_data
    from walg.settings import parse_user_data

    return backup_with_user_data(
        ctx.storage(), parse_user_data(wanted), ctx.settings.download_concurrency
    )


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
    from walg.ops import catalog
    from walg.ops.recovery import (
        datadir_conf_files,
        disable_archiving,
        disable_inherited_targets,
        inherited_apply_delay,
        inherited_archiving,
        restored_version,
        write_recovery_config,
    )
    from walg.ops.target_backup import backup_for_target

    target = _recovery_target(args)
    if target is not None:
        target.check()
    name = backup_for_target(ctx.storage(), _named_backup(args, ctx), target)
    result = backup_fetch(ctx.settings, ctx.storage(), args.destination, name, spec)
    sentinel = catalog.read_sentinel(ctx.storage(), result.name)
    dest = Path(result.destination)
    pg_version = restored_version(dest, sentinel.pg_version)
    if target is not None:
        write_recovery_config(dest, pg_version, target)
        if any((target.time, target.lsn, target.name, target.xid)):
            log.warning(
                "after recovery, remove the target: ALTER SYSTEM RESET recovery_target_%s; "
                "PostgreSQL keeps it in postgresql.auto.conf, and a standby cloned from this "
                "server (pg_basebackup) would stop replicating at it and promote",
                "time" if target.time else "lsn" if target.lsn else "name" if target.name
                else "xid",
            )  # fmt: skip
    else:
        from walg.ops.target_backup import default_timeline_problem

        problem = default_timeline_problem(ctx.storage(), result.name)
        if problem is not None:
            log.warning("%s", problem)
        for conf in datadir_conf_files(dest):
            for setting in disable_inherited_targets(dest, pg_version, conf):
                log.warning(
                    "%s of backup %s sets %s, left by an earlier point-in-time restore; "
                    "commented out so that it cannot stop this restore's recovery",
                    conf,
                    result.name,
                    setting,
                )
        delay = inherited_apply_delay(dest, pg_version)
        if delay is not None:
            log.warning(
                "the configuration restored with backup %s sets %s (a delayed standby's): "
                "an archive recovery of it (recovery.signal) applies each commit only once "
                "it is that old, and reaches its end or target that much late; remove it "
                "unless this is to be a delayed standby (backup-fetch --restore-command "
                "does so itself)",
                result.name,
                delay,
            )
    if args.archive_mode == "off":
        log.info("archive_mode = 'off' written into %s", disable_archiving(dest))
    elif not args.standby and (archiving := inherited_archiving(dest)) is not None:
        log.warning(
            "the configuration restored with backup %s sets %s: promoted, this server "
            "archives its new timeline with the backed-up server's archive_command, into that "
            "server's storage if it is this one, where later restores that follow the latest "
            "timeline would follow this server's; for a copy that is not to replace the "
            "original (a test restore), restore with --archive-mode off",
            result.name,
            archiving,
        )
    if args.json:
        ctx.stdout.write(json.dumps(result.__dict__) + "\n")
    return 0
