"""``walg warm-cache``: compile once, at installation, what walg's start-up compiles every call.

See walg._dataclass_code: the methods ``dataclasses`` generates for walg's classes, kept beside
walg's ``.pyc`` files, save a cold ``archive_command`` call about 3 ms. Run it as the user who
installed walg (the user PostgreSQL runs as usually cannot write there), after every upgrade.
"""

from __future__ import annotations

import argparse

from walg.cli.context import Context


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "warm-cache",
        help="cache the code walg's start-up compiles (run once after installing)",
        description="Compile the methods dataclasses generates for walg's classes and keep "
        "them beside walg's .pyc files, so that every later walg process skips compiling them. "
        "Run as the user who installed walg, after each installation or upgrade.",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from walg._dataclass_code import warm

    path, entries = warm()
    ctx.stdout.write(f"{entries} compiled dataclass methods cached in {path}\n")
    return 0
