"""Opens the storage named by the settings, importing only that backend's module."""

from __future__ import annotations

from walg.errors import ConfigError
from walg.settings import Settings
from walg.storage.base import Storage


def open_storage(settings: Settings) -> Storage:
    storage = _open_backend(settings)
    faults = settings.values.get("WALG_FAULT_INJECTION", "").strip()
    if faults:
        from walg.storage.faults import FaultyStorage, parse_rules

        storage = FaultyStorage(storage, parse_rules(faults))
    return storage


def _open_backend(settings: Settings) -> Storage:
    kind, prefix = settings.require_storage()
    if kind == "file":
        from walg.storage.file import FileStorage

        top = prefix.rstrip("/") or "/"
        root = f"{top}/{settings.storage_subfolder}" if settings.storage_subfolder else top
        storage = FileStorage(root, direct_io=settings.file_direct_io, top=top)
        # As WAL-G does, every command refuses a WALG_FILE_PREFIX folder that is not there: a
        # volume not mounted (yet) would otherwise read as an empty archive, and take WAL and
        # backups onto the file system beneath it.
        storage.check_available()
        return storage
    raise ConfigError(
        f"{settings.storage_prefix_key}: {kind} storage is not supported by this walg yet "
        "(use WALG_FILE_PREFIX)"
    )
