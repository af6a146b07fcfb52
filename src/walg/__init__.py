"""walg: continuous archiving and point-in-time recovery for PostgreSQL.

Reads and writes WAL-G's storage layout. The package root imports nothing heavy so that
short-lived commands (``wal-push`` from ``archive_command``) start fast.
"""

from walg._lean_imports import import_dataclasses_lean

import_dataclasses_lean()

__version__ = "0.1.0"
