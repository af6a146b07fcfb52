"""The one exception tree of walg.

Every error a command can raise derives from :class:`WalgError` and carries the process exit
code the CLI should use. Codes stay below 126 because PostgreSQL treats higher exit codes from
``archive_command``/``restore_command`` as fatal signals; the one exception is chosen by the
CLI, not raised: :data:`EXIT_ABORT_RECOVERY`. Messages never contain secrets.
"""

from __future__ import annotations

# sysexits.h values; WAL-G uses 74 (EX_IOERR) for "WAL file not in the archive".
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 74
EXIT_CONFIG = 78
# A restore_command that exits 1-125 tells PostgreSQL "not in the archive": in archive recovery
# it then ends recovery and promotes, without the rest of the WAL. A failed wal-fetch (a corrupt
# object, unreachable storage) therefore exits above 125 there, which makes recovery stop with
# an error instead; see walg.cli.wal_fetch.failure_exit_code.
EXIT_ABORT_RECOVERY = 128


class WalgError(Exception):
    """Base of every error walg raises on purpose."""

    exit_code: int = EXIT_FAILURE


class ConfigError(WalgError):
    """A setting is missing, malformed or contradicts another one."""

    exit_code = EXIT_CONFIG


class UsageError(WalgError):
    """The command line is wrong (bad arguments, refused destination...)."""

    exit_code = EXIT_USAGE


class StorageError(WalgError):
    """Storage could not complete an operation.

    ``transient`` tells the retry wrapper whether trying again may help.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class ObjectNotFound(StorageError):
    """The object does not exist in storage."""

    def __init__(self, key: str) -> None:
        super().__init__(f"object not found in storage: {key}")
        self.key = key


class NotAnObject(StorageError):
    """Something that is no object stands at an object's key (on local-folder storage: a
    folder, a FIFO, a socket, a link to nothing). Neither "not found" nor worth a retry; a
    listing that meets one where a document would be may leave that entry out."""


class ObjectTooLarge(StorageError):
    """An object read whole is larger than the caller allows."""


class BackupNotFound(WalgError):
    """The named backup (or LATEST) does not exist."""

    exit_code = EXIT_NOT_FOUND


class WalNotFound(WalgError):
    """The WAL file asked for is not in the archive (wal-fetch exits 74, as WAL-G)."""

    exit_code = EXIT_NOT_FOUND


class WalGap(WalNotFound):
    """The WAL file asked for is not in the archive but a later segment is: a gap, not the
    archive's end. The same exit code (PostgreSQL cannot be told apart), a louder line."""


class RequestAbandoned(WalgError):
    """The daemon gave up on a request (or its caller did) before its work was committed: a
    wal-fetch's file put in place, a wal-push's object stored."""

    def __init__(
        self, message: str = "the request was abandoned before the file was in place"
    ) -> None:
        super().__init__(message)


class WalOverwriteError(WalgError):
    """A different file is already archived under the same WAL name."""


class ForeignWalError(WalOverwriteError):
    """The file archived under the same WAL name is another database system's (its first page
    states another system identifier): this storage holds another cluster's archive."""


class BackupInProgress(WalgError):
    """Another backup-push holds the name this one would write (its claim is in storage)."""


class IntegrityError(WalgError):
    """Stored or restored data does not match its recorded checksum, size or format."""


class DestinationError(WalgError):
    """A restore's local destination cannot be written: a missing or read-only folder, a file
    where a folder must be, a full disk. The message names the path the user gave (or the file
    being restored), never a temporary name."""


class TruncatedObject(IntegrityError):
    """A stored object ends before its format says it does (empty, or cut short): what a write
    that failed midway leaves where it wrote under the final name (WAL-G's local-folder
    storage on a full disk)."""


class UnsafeArchiveError(IntegrityError):
    """A tar member would be written outside the destination or is of a forbidden type."""


class FormatError(WalgError):
    """A stored JSON document or name does not follow the expected format."""


class OutputError(WalgError):
    """Standard output is closed or cannot be written (a full disk behind a redirection)."""


class PostgresError(WalgError):
    """PostgreSQL could not be reached or refused an operation needed by walg."""
