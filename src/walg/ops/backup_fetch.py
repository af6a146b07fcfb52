"""backup-fetch: download, decompress, check and extract a backup into an empty directory.

Regular partitions are extracted in parallel (``WALG_DOWNLOAD_CONCURRENCY``); ``pg_control.tar``
and then ``backup_label.tar`` only after all of them, so a half-restored directory is never
startable. Every file with a recorded checksum is verified while written, every stored object
against its recorded size and hash, and a file listed in the metadata but found in no partition
fails the restore, naming it.
"""

from __future__ import annotations

import os
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from walg.core.log import get_logger
from walg.core.metadata import FilesMetadata, TablespaceSpec
from walg.core.naming import (
    BACKUP_LABEL_MEMBER,
    BACKUP_LABEL_TAR_RE,
    PG_CONTROL_MEMBER,
    PG_CONTROL_TAR_RE,
    TABLESPACE_MAP_MEMBER,
    partitions_prefix,
    tar_object_extension,
)
from walg.errors import IntegrityError, UsageError, WalgError
from walg.ops import catalog
from walg.ops.pipeline import download
from walg.settings import Settings
from walg.storage.base import ObjectInfo, Storage
from walg.streams.compression import codec_for_extension
from walg.tarball.extract import Extractor, fsync_tree

log = get_logger(__name__)


@dataclass(frozen=True)
class BackupFetchResult:
    """What a backup-fetch restored and how much of it was checked."""

    name: str
    destination: str
    objects: int
    files: int
    bytes: int
    verified_files: int


def prepare_destination(dest: Path) -> None:
    if dest.exists():
        if not dest.is_dir():
            raise UsageError(f"destination {dest} exists and is not a directory")
        if any(dest.iterdir()):
            raise UsageError(f"destination {dest} is not empty; refusing to restore into it")
    else:
        dest.mkdir(parents=True, mode=0o700)
    os.chmod(dest, 0o700)


def _prepare_tablespaces(dest: Path, spec: TablespaceSpec) -> list[Path]:
    """Create each tablespace location (empty or new) and its ``pg_tblspc/<oid>`` link."""
    locations = []
    tblspc = dest / "pg_tblspc"
    tblspc.mkdir(mode=0o700, exist_ok=True)
    for ts in spec.tablespaces:
        if not ts.name.isdigit():
            raise IntegrityError(f"tablespace spec names {ts.name!r}, which is not an OID")
        location = Path(ts.location)
        if not location.is_absolute():
            raise UsageError(f"tablespace location {ts.location} is not an absolute path")
        if location.exists():
            if not location.is_dir() or any(location.iterdir()):
                raise UsageError(
                    f"tablespace location {location} exists and is not an empty directory; "
                    "relocate it with --restore-spec"
                )
        else:
            location.mkdir(parents=True, mode=0o700)
        os.chmod(location, 0o700)
        (tblspc / ts.name).symlink_to(location)
        locations.append(location)
    return locations


def backup_fetch(
    settings: Settings,
    storage: Storage,
    destination: str,
    name_or_latest: str,
    restore_spec: TablespaceSpec | None = None,
) -> BackupFetchResult:
    dest = Path(destination).absolute()
    name = catalog.resolve(storage, name_or_latest)
    sentinel = catalog.read_sentinel(storage, name)
    if sentinel.is_delta:
        raise UsageError(
            f"backup {name} is a delta backup; restoring delta backups is not supported yet"
        )
    files_meta = catalog.read_files_metadata(storage, name, sentinel)
    objects = storage.list(partitions_prefix(name))
    regular, control, label = _classify(objects, name)
    _check_objects_present(files_meta, objects, name)

    prepare_destination(dest)
    spec = restore_spec or sentinel.spec
    locations = _prepare_tablespaces(dest, spec) if spec else []
    wanted = _wanted_members(files_meta, dropping_map=restore_spec is not None)
    extractor = Extractor(
        dest, files_meta.checksum_of, wanted, fsync=not settings.tar_disable_fsync
    )
    log.info("restoring backup %s into %s (%d objects)", name, dest, len(objects))

    try:
        _extract_all(storage, extractor, files_meta, regular, control, label, settings)
    except BaseException:
        extractor.abandon()
        raise
    extractor.finish()

    _check_all_restored(files_meta, extractor, restore_spec is not None)
    if not settings.tar_disable_fsync:
        fsync_tree(dest)
        for location in locations:
            fsync_tree(location)
    log.info(
        "restored %s: %d files, %d bytes, %d checked against their checksums",
        name,
        extractor.files,
        extractor.bytes,
        len(extractor.verified),
    )
    return BackupFetchResult(
        name=name,
        destination=str(dest),
        objects=len(objects),
        files=extractor.files,
        bytes=extractor.bytes,
        verified_files=len(extractor.verified),
    )


def _extract_all(
    storage: Storage,
    extractor: Extractor,
    files_meta: FilesMetadata,
    regular: list[ObjectInfo],
    control: ObjectInfo | None,
    label: ObjectInfo | None,
    settings: Settings,
) -> None:
    workers = max(1, min(settings.download_concurrency, len(regular) or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch") as pool:
        futures = [pool.submit(_extract_object, storage, extractor, files_meta, o) for o in regular]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failure = next((f.exception() for f in done if f.exception() is not None), None)
        if failure is not None:
            extractor.cancelled.set()
            for f in futures:
                f.cancel()
    if failure is not None:
        raise failure
    # Everything else is durable before pg_control lands: a restore interrupted by a crash
    # never leaves a startable directory with missing data.
    extractor.barrier()
    for special in (control, label):
        if special is not None:
            _extract_object(storage, extractor, files_meta, special)


def _classify(
    objects: list[ObjectInfo], name: str
) -> tuple[list[ObjectInfo], ObjectInfo | None, ObjectInfo | None]:
    regular: list[ObjectInfo] = []
    control = label = None
    for info in objects:
        base = info.key.rsplit("/", 1)[-1]
        if PG_CONTROL_TAR_RE.fullmatch(base):
            control = info
        elif BACKUP_LABEL_TAR_RE.fullmatch(base):
            label = info
        else:
            regular.append(info)
    # Biggest first keeps the parallel workers evenly loaded until the end.
    regular.sort(key=lambda o: o.size, reverse=True)
    if control is None and _pg_control_required(name):
        raise IntegrityError(f"backup {name}: expected a pg_control archive, but it is missing")
    return regular, control, label


def _pg_control_required(name: str) -> bool:
    # WAL-G's heuristic: WAL-E style names (base_<seg>_<offset>) carry pg_control in a part.
    return "_D_" in name or name.count("_") < 2


def _check_objects_present(files_meta: FilesMetadata, objects: list[ObjectInfo], name: str) -> None:
    present = {o.key.rsplit("/", 1)[-1] for o in objects}
    for object_name in files_meta.objects:
        if object_name not in present:
            raise IntegrityError(f"backup {name}: object {object_name} is missing from storage")


def _wanted_members(files_meta: FilesMetadata, dropping_map: bool) -> set[str] | None:
    if not files_meta.files:
        return None
    wanted = set(files_meta.files)
    wanted.update({PG_CONTROL_MEMBER, BACKUP_LABEL_MEMBER})
    if not dropping_map:
        wanted.add(TABLESPACE_MAP_MEMBER)
    return wanted


def _extract_object(
    storage: Storage, extractor: Extractor, files_meta: FilesMetadata, info: ObjectInfo
) -> None:
    object_name = info.key.rsplit("/", 1)[-1]
    codec = codec_for_extension(tar_object_extension(object_name))
    what = f"object {object_name}"
    try:
        with download(storage, info.key, codec, what) as dl:
            extractor.extract(dl.reader, what)
            stored = dl.stored_checksum()
    except WalgError:
        raise
    except OSError as exc:
        raise IntegrityError(f"{what}: extraction failed: {exc}") from None
    recorded = files_meta.objects.get(object_name)
    if recorded is not None and recorded.stored != stored:
        raise IntegrityError(
            f"{what} does not match its checksum in the backup metadata "
            f"({stored.size} bytes stored, {recorded.stored.size} recorded)"
        )
    log.debug("extracted %s", object_name)


def _check_all_restored(
    files_meta: FilesMetadata, extractor: Extractor, dropping_map: bool
) -> None:
    expected = {name for name, d in files_meta.files.items() if d.checksum is not None}
    expected.update(files_meta.utility_files)
    if dropping_map:
        expected.discard(TABLESPACE_MAP_MEMBER)
    missing = sorted(expected - extractor.verified)
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise IntegrityError(
            f"files listed in the backup metadata were not restored: {', '.join(missing[:5])}{more}"
        )
