"""walg: continuous archiving and point-in-time recovery for PostgreSQL.

Reads and writes WAL-G's storage layout. The package root imports nothing heavy so that
short-lived commands (``wal-push`` from ``archive_command``) start fast.
"""

from walg._lean_imports import import_dataclasses_lean

import_dataclasses_lean()

import dataclasses  # noqa: E402 - after the lean import, which it finds in sys.modules

from walg._dataclass_code import install  # noqa: E402

install(dataclasses)
del dataclasses, install, import_dataclasses_lean

__version__ = "0.1.0"
