"""WAL-G's ``--target-storage NAME`` and ``WALG_TARGET_STORAGE``: which of its failover
storages a command uses, ``default`` being the primary one (its internal/multistorage).

walg has the primary storage only (failover storages are refused), so ``default``, or no
name, is what walg does anyway. Another name is refused: WAL-G would store to or read from
that storage (or fail without it), and walg using the primary instead would archive to, or
restore from, another place than the one asked for.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: see walg.settings
if TYPE_CHECKING:
    import argparse

PRIMARY = ("", "default")


def add_target_storage(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target-storage",
        metavar="NAME",
        default=None,
        help="WAL-G's failover storage to use; walg has the primary one only: 'default'",
    )


def refused_target_storage(flag: str | None) -> str | None:
    """Why ``--target-storage FLAG`` cannot be honoured, or None when it can."""
    if flag is None or flag.strip() in PRIMARY:
        return None
    return (
        f"--target-storage {flag}: walg has no failover storages, only the primary storage "
        "('default'); nothing was done"
    )
