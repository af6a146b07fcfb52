"""backup-list: the backups in storage, oldest first, optionally with their metadata."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from walg.core.metadata import BackupMetadata
from walg.errors import BackupNotFound, UsageError, WalgError
from walg.ops import catalog
from walg.ops.pipeline import map_on_threads
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
    metas = map_on_threads(lambda r: catalog.read_metadata(storage, r.name), refs, concurrency)
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


def backup_with_user_data(storage: Storage, wanted: Any, concurrency: int = 10) -> str:
    """The name of the one backup whose metadata's user data is ``wanted`` (WAL-G's
    ``--target-user-data``); BackupNotFound for none, UsageError naming them for several."""
    refs = catalog.list_backups(storage)
    metas = map_on_threads(lambda r: catalog.read_metadata(storage, r.name), refs, concurrency)
    # A backup without metadata.json (WAL-E's, WAL-G's oldest) has no user data to match.
    found = [
        ref.name
        for ref, meta in zip(refs, metas, strict=True)
        if meta is not None and same_json(meta.user_data, wanted)
    ]
    if not found:
        raise BackupNotFound("no backup has the user data asked for")
    if len(found) > 1:
        raise UsageError(
            f"{len(found)} backups have the user data asked for ({' '.join(found)}): name one"
        )
    return found[0]


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values are to WAL-G (Go's reflect.DeepEqual of decoded JSON): every
    number a float64, so 1 is 1.0, but true is not 1, as Python's ``==`` has it."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return float(a) == float(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b
