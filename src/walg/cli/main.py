"""Entry point of the ``walg`` command: parse, load settings, run, map errors to exit codes.

Only this package prints or chooses exit codes. Imports of heavy modules happen inside each
command's ``run`` so that ``wal-push`` starts fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from walg import __version__
from walg.cli import (
    backup_fetch,
    backup_list,
    backup_push,
    daemon,
    wal_fetch,
    wal_push,
    wal_show,
    wal_verify,
)
from walg.cli.context import Context
from walg.errors import EXIT_FAILURE, EXIT_NOT_FOUND, WalgError, WalNotFound

log = logging.getLogger("walg")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="walg",
        description="Continuous archiving and point-in-time recovery for PostgreSQL, "
        "in WAL-G's storage format. Configured with WAL-G's environment variables "
        "(WALG_FILE_PREFIX, WALG_COMPRESSION_METHOD, PGHOST, ...) or a config file.",
    )
    parser.add_argument("--version", action="version", version=f"walg {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="config file (JSON, YAML or TOML; default $WALG_CONFIG_PATH or ~/.walg.json)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (
        backup_push,
        backup_fetch,
        backup_list,
        wal_push,
        wal_fetch,
        wal_show,
        wal_verify,
        daemon,
    ):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from walg import settings as settings_module

    ctx: Context | None = None
    try:
        settings = settings_module.load(config_path=args.config)
        from walg.cli import logs

        logs.setup(settings.log_level)
        ctx = Context(settings)
        code: int = args.run(args, ctx)
    except WalNotFound as exc:
        # PostgreSQL asks for files past the end of the archive all the time: one quiet line.
        sys.stderr.write(f"walg: {exc}\n")
        return EXIT_NOT_FOUND
    except WalgError as exc:
        sys.stderr.write(f"ERROR: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("ERROR: interrupted\n")
        return EXIT_FAILURE
    except Exception as exc:
        log.debug("unexpected error", exc_info=True)
        sys.stderr.write(f"ERROR: unexpected {type(exc).__name__}: {exc}\n")
        return EXIT_FAILURE
    finally:
        if ctx is not None:
            ctx.close()
    return code


def entry() -> None:
    sys.exit(main())
