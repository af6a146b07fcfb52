"""backup-list: the backups in storage, oldest first, optionally with their metadata."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from walg.core.metadata import BackupMetadata
from walg.errors import WalgError
from walg.ops import catalog
from walg.storage.base import Storage


@dataclass(frozen=True)
class BackupListing:
    """A backup in the catalog, with its metadata when details were asked for."""

    ref: catalog.BackupRef
    metadata: BackupMetadata | None


def backup_list(storage: Storage, detail: bool, concurrency: int = 10) -> list[BackupListing]:
    refs = catalog.list_backups(storage)
    if not detail:
        return [BackupListing(r, None) for r in refs]
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        metas = list(pool.map(lambda r: catalog.read_metadata(storage, r.name), refs))
    for ref, meta in zip(refs, metas, strict=True):
        if meta is None:
            raise WalgError(f"backup {ref.name} has no metadata.json; cannot show details")
    items = [BackupListing(r, m) for r, m in zip(refs, metas, strict=True)]
    sort_by_start_time(items)
    return items


def sort_by_start_time(items: list[BackupListing]) -> None:
    """WAL-G's ``SortBackupDetails``: by start time, or all by sentinel time if one lacks it.

    One ordering for all: mixing start times with sentinel times would interleave backups
    by two clocks, and WAL-G falls back to the sentinel time for every backup instead.
    """
    starts = [i.metadata.start_time if i.metadata is not None else None for i in items]
    if None in starts:
        items.sort(key=lambda i: i.ref.modified)
        return
    order = sorted(range(len(items)), key=lambda n: starts[n] or items[n].ref.modified)
    items[:] = [items[n] for n in order]
