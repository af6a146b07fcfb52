"""Which backups exist and what they are made of, read from storage as WAL-G reads it.

A backup exists iff its sentinel exists. LATEST is the backup whose sentinel was modified last.
Files metadata comes from ``files_metadata.json``, from inside old sentinels, or is empty for
backups that predate it, following WAL-G's reader rules.
"""

from __future__ import annotations

from dataclasses import dataclass

from walg.core.checksum import Checksum
from walg.core.gotime import GoTime
from walg.core.log import get_logger
from walg.core.metadata import BackupMetadata, FilesMetadata, Sentinel, encode_json_text
from walg.core.naming import (
    BASEBACKUPS,
    backup_name_from_sentinel_key,
    files_metadata_key,
    first_wal_token,
    metadata_key,
    sentinel_key,
)
from walg.errors import (
    BackupNotFound,
    FormatError,
    IntegrityError,
    NotAnObject,
    ObjectNotFound,
    ObjectTooLarge,
)
from walg.storage.base import Storage

LATEST = "LATEST"

log = get_logger(__name__)


@dataclass(frozen=True)
class BackupRef:
    """A backup as its sentinel names it: name, sentinel mtime, start WAL file."""

    name: str
    modified: GoTime
    wal_file_name: str


def list_backups(storage: Storage) -> list[BackupRef]:
    """Backups oldest first by sentinel modification time.

    An entry of ``basebackups_005/`` that is not an object (a FIFO, a socket, a link to
    nothing where a sentinel would be, on local-folder storage) is skipped with a warning: it
    is no backup (one exists iff its sentinel object does), and every listing, LATEST
    included, goes on with the others; reading it could block, and failing would leave the
    DBA without the backups that are there.
    """
    refs = []
    unlisted: list[str] = []
    infos = storage.list(BASEBACKUPS, recursive=False, unlisted=unlisted)
    for problem in unlisted:
        log.warning("%s; skipped, not a backup", problem)
    for info in infos:
        name = backup_name_from_sentinel_key(info.key)
        if name is None:
            continue
        refs.append(BackupRef(name, info.modified, first_wal_token(name) or "Z" * 24))
    refs.sort(key=lambda r: (r.modified, r.name))
    return refs


def resolve(storage: Storage, name: str) -> str:
    """A backup name, or the newest one for LATEST; BackupNotFound otherwise."""
    if name == LATEST:
        refs = list_backups(storage)
        if not refs:
            raise BackupNotFound(f"no backups found in {storage.location}")
        return refs[-1].name
    if "/" in name or not name:
        raise BackupNotFound(f"{name!r} is not a backup name")
    if not storage.exists(sentinel_key(name)):
        raise BackupNotFound(f"backup {name} does not exist in {storage.location}")
    return name


def read_sentinel(storage: Storage, name: str) -> Sentinel:
    try:
        data = storage.get_bytes(sentinel_key(name))
    except ObjectNotFound:
        raise BackupNotFound(f"backup {name} does not exist in {storage.location}") from None
    try:
        return Sentinel.loads(data, f"sentinel of {name}")
    except FormatError as exc:
        raise IntegrityError(f"sentinel of backup {name} is unreadable: {exc}") from None


def read_metadata(storage: Storage, name: str) -> BackupMetadata | None:
    """The backup's metadata.json; None where there is none. One that cannot be read as such
    (not JSON, or no object's file: a FIFO on local-folder storage) is an IntegrityError,
    which the listings (wal-show, wal-verify) answer by leaving the backup out with a
    warning, and the commands that need it by failing, naming it."""
    try:
        data = storage.get_bytes(metadata_key(name))
    except ObjectNotFound:
        return None
    except NotAnObject as exc:
        raise IntegrityError(f"metadata.json of backup {name} is unreadable: {exc}") from None
    try:
        return BackupMetadata.loads(data)
    except FormatError as exc:
        raise IntegrityError(f"metadata.json of backup {name} is unreadable: {exc}") from None


# files_metadata.json of a backup whose sentinel does not give its size (WAL-G's, walg's before
# it did): about 190 bytes per data-directory file, so this is some 5 million files. A bound
# all the same: the document is held whole while it is read.
UNCHECKED_FILES_METADATA_LIMIT = 1 << 30


def read_files_metadata(storage: Storage, name: str, sentinel: Sentinel) -> FilesMetadata:
    if sentinel.files_metadata_disabled:
        return FilesMetadata.empty()
    expected = sentinel.files_metadata_checksum
    limit = expected.size if expected is not None else UNCHECKED_FILES_METADATA_LIMIT
    try:
        data = storage.get_bytes(files_metadata_key(name), limit=limit)
    except ObjectNotFound:
        if sentinel.version >= 2:
            raise IntegrityError(
                f"backup {name}: files_metadata.json is missing but the sentinel says it exists"
            ) from None
        if sentinel.legacy_files:
            return FilesMetadata.from_json({"Files": sentinel.legacy_files})
        return FilesMetadata.empty()
    except ObjectTooLarge:
        if expected is None:
            raise
        raise IntegrityError(
            f"files_metadata.json of backup {name} is larger than the {expected.size} "
            "bytes its sentinel records"
        ) from None
    if expected is not None:
        from walg.streams.hashing import new_hasher

        digest = new_hasher().update(data).hexdigest()
        if len(data) != expected.size or digest != expected.digest:
            raise IntegrityError(
                f"files_metadata.json of backup {name} does not match the checksum its "
                f"sentinel records ({len(data)} bytes, expected {expected.size})"
            )
    try:
        return FilesMetadata.loads(data)
    except FormatError as exc:
        raise IntegrityError(f"files_metadata.json of backup {name} is unreadable: {exc}") from None


def write_files_metadata(storage: Storage, name: str, files: FilesMetadata) -> Checksum:
    """Store ``files`` as the backup's files_metadata.json, encoded and written in pieces (see
    :meth:`FilesMetadata.iter_json`); returns the checksum the sentinel records."""
    from walg.streams.hashing import HashingWriter

    chunk = 1 << 20
    with storage.open_write(files_metadata_key(name)) as sink:
        out = HashingWriter(sink)
        pending: list[str] = []
        size = 0
        for piece in files.iter_json():
            pending.append(piece)
            size += len(piece)
            if size >= chunk:
                out.write(encode_json_text("".join(pending)))
                pending.clear()
                size = 0
        out.write(encode_json_text("".join(pending)))
    return out.checksum()
