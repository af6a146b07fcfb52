"""Storage keys and backup names, exactly as WAL-G lays them out.

``basebackups_005/<name>_backup_stop_sentinel.json`` sits beside the folder
``basebackups_005/<name>/`` that holds ``metadata.json``, ``files_metadata.json`` and
``tar_partitions/``. WAL lives in ``wal_005/<file name>.<ext>``.
"""

from __future__ import annotations

from walg.core.pattern import LazyPattern
from walg.errors import FormatError

BASEBACKUPS = "basebackups_005/"
WAL = "wal_005/"
SENTINEL_SUFFIX = "_backup_stop_sentinel.json"
METADATA = "metadata.json"
FILES_METADATA = "files_metadata.json"
TAR_PARTITIONS = "tar_partitions/"
# walg's own: who is taking the backup of this name (WAL-G ignores objects it does not know).
CLAIM = "walg_claim.json"
# Held by the one run that removes a dead run's claim (see walg.ops.backup_push._take_over).
CLAIM_TAKEOVER = "walg_claim_takeover.json"

BACKUP_NAME_RE = LazyPattern(r"base_[0-9A-F]{24}(_D_[0-9A-F]{24})?(_[0-9A-F]{8})?")
_WAL_TOKEN_RE = LazyPattern(r"[0-9A-F]{24}")
PG_CONTROL_TAR_RE = LazyPattern(r"pg_control\.tar(\.[a-z0-9]*)?")
BACKUP_LABEL_TAR_RE = LazyPattern(r"backup_label\.tar(\.[a-z0-9]*)?")

PG_CONTROL_MEMBER = "/global/pg_control"
BACKUP_LABEL_MEMBER = "backup_label"
TABLESPACE_MAP_MEMBER = "tablespace_map"


def check_backup_name(name: str) -> str:
    if not BACKUP_NAME_RE.fullmatch(name):
        raise FormatError(f"{name!r} is not a backup name (base_ followed by 24 hex digits)")
    return name


def backup_name(start_segment_name: str, delta_base: str | None = None) -> str:
    name = f"base_{start_segment_name}"
    if delta_base is not None:
        token = first_wal_token(delta_base)
        if token is None:
            raise FormatError(f"delta base {delta_base!r} has no WAL segment in its name")
        name += f"_D_{token}"
    return name


def first_wal_token(name: str) -> str | None:
    match = _WAL_TOKEN_RE.search(name)
    return match.group(0) if match else None


def sentinel_key(name: str) -> str:
    return f"{BASEBACKUPS}{name}{SENTINEL_SUFFIX}"


def backup_folder(name: str) -> str:
    return f"{BASEBACKUPS}{name}/"


def claim_key(name: str) -> str:
    return f"{backup_folder(name)}{CLAIM}"


def claim_takeover_key(name: str) -> str:
    return f"{backup_folder(name)}{CLAIM_TAKEOVER}"


def claim_takeover_removal_key(name: str, digest: str) -> str:
    """Held by the one run that removes a takeover object left by a killed run, named by a
    digest of that object's content (see walg.ops.backup_push._remove_dead_takeover)."""
    return f"{backup_folder(name)}walg_claim_takeover_{digest}.json"


def metadata_key(name: str) -> str:
    return f"{backup_folder(name)}{METADATA}"


def files_metadata_key(name: str) -> str:
    return f"{backup_folder(name)}{FILES_METADATA}"


def partitions_prefix(name: str) -> str:
    return f"{backup_folder(name)}{TAR_PARTITIONS}"


def with_ext(base: str, ext: str) -> str:
    """WAL-G v3.0.9+: no extension at all for ``none`` compression."""
    return f"{base}.{ext}" if ext else base


def part_object_name(number: int, ext: str) -> str:
    return with_ext(f"part_{number:03d}.tar", ext)


def wal_key(file_name: str, ext: str) -> str:
    return WAL + with_ext(file_name, ext)


def backup_name_from_sentinel_key(key: str) -> str | None:
    """``basebackups_005/X_backup_stop_sentinel.json`` → ``X`` (None for deeper keys)."""
    if not key.startswith(BASEBACKUPS) or not key.endswith(SENTINEL_SUFFIX):
        return None
    name = key[len(BASEBACKUPS) : -len(SENTINEL_SUFFIX)]
    if not name or "/" in name:
        return None
    return name


def tar_object_extension(object_name: str) -> str:
    """The compression extension of a tar object: ``part_001.tar.lz4`` → ``lz4``.

    ``part_001.tar`` and the legacy trailing-dot ``part_001.tar.`` both mean no compression.
    """
    _, sep, ext = object_name.rpartition(".tar")
    if not sep:
        raise FormatError(f"{object_name!r} is not a tar object name")
    return ext.lstrip(".")
