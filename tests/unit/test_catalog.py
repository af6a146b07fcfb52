"""walg.ops.catalog: which backups exist, LATEST, and WAL-G's rules for reading their documents."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest

from walg.core import naming
from walg.core.checksum import Checksum
from walg.core.metadata import FilesMetadata, Sentinel
from walg.errors import BackupNotFound, IntegrityError, ObjectTooLarge
from walg.ops import catalog
from walg.storage.base import Storage
from walg.storage.file import FileStorage

GOLDEN = Path(__file__).parent / "golden"
OLD = "base_000000010000000000000002"
NEW = "base_000000010000000000000009"  # larger name
MID = "base_000000010000000000000005_D_000000010000000000000002"


def put_sentinel(storage: Storage, name: str, golden: str = "sentinel_v2_full.json") -> None:
    storage.put_bytes(naming.sentinel_key(name), (GOLDEN / golden).read_bytes())


def set_mtime(storage: Storage, name: str, seconds: int) -> None:
    if isinstance(storage, FileStorage):
        path = Path(storage.root) / naming.sentinel_key(name)
        os.utime(path, ns=(seconds * 10**9, seconds * 10**9))


def test_empty_storage_lists_nothing_and_latest_is_not_found(storage: Storage) -> None:
    assert catalog.list_backups(storage) == []
    with pytest.raises(BackupNotFound) as info:
        catalog.resolve(storage, catalog.LATEST)
    assert info.value.exit_code == 74


def test_list_orders_by_sentinel_modified_time_not_by_name(storage: Storage) -> None:
    # Written newest-name first, so the lexicographically largest name is the oldest backup.
    put_sentinel(storage, NEW)
    set_mtime(storage, NEW, 1_700_000_000)
    put_sentinel(storage, MID, "sentinel_v2_delta.json")
    set_mtime(storage, MID, 1_700_000_100)
    put_sentinel(storage, OLD)
    set_mtime(storage, OLD, 1_700_000_200)
    refs = catalog.list_backups(storage)
    assert [r.name for r in refs] == [NEW, MID, OLD]
    assert refs[0].modified < refs[1].modified < refs[2].modified
    assert [r.wal_file_name for r in refs] == [
        "000000010000000000000009",
        "000000010000000000000005",
        "000000010000000000000002",
    ]
    assert catalog.resolve(storage, "LATEST") == OLD


def test_latest_follows_a_rewritten_sentinel(storage: Storage) -> None:
    put_sentinel(storage, OLD)
    set_mtime(storage, OLD, 1_700_000_000)
    put_sentinel(storage, NEW)
    set_mtime(storage, NEW, 1_700_000_100)
    assert catalog.resolve(storage, "LATEST") == NEW
    put_sentinel(storage, OLD)  # re-uploaded (e.g. copied): now the newest sentinel
    set_mtime(storage, OLD, 1_700_000_200)
    assert catalog.resolve(storage, "LATEST") == OLD


def test_only_sentinels_directly_in_basebackups_count(storage: Storage) -> None:
    put_sentinel(storage, OLD)
    # A folder without sentinel is garbage from an unfinished backup.
    storage.put_bytes(naming.metadata_key(NEW), b"{}")
    storage.put_bytes(naming.partitions_prefix(NEW) + "part_001.tar.lz4", b"x")
    storage.put_bytes(f"basebackups_005/{NEW}/nested_backup_stop_sentinel.json", b"{}")
    storage.put_bytes(f"wal_005/{NEW}_backup_stop_sentinel.json", b"{}")
    storage.put_bytes("basebackups_005/README", b"not a backup")
    assert [r.name for r in catalog.list_backups(storage)] == [OLD]
    with pytest.raises(BackupNotFound):
        catalog.resolve(storage, NEW)


def test_backup_without_wal_token_gets_wal_g_placeholder(storage: Storage) -> None:
    put_sentinel(storage, "custom_name")
    assert catalog.list_backups(storage)[0].wal_file_name == "Z" * 24


def test_resolve_by_name(storage: Storage) -> None:
    put_sentinel(storage, OLD)
    assert catalog.resolve(storage, OLD) == OLD


@pytest.mark.parametrize(
    "name",
    [NEW, "", "base_000000010000000000000002/", "../base_000000010000000000000002", "latest"],
)
def test_resolve_missing_backup_is_backup_not_found(storage: Storage, name: str) -> None:
    put_sentinel(storage, OLD)
    with pytest.raises(BackupNotFound) as info:
        catalog.resolve(storage, name)
    assert info.value.exit_code == 74


def test_read_sentinel(storage: Storage) -> None:
    put_sentinel(storage, OLD)
    sentinel = catalog.read_sentinel(storage, OLD)
    assert sentinel.lsn == 50331688
    with pytest.raises(BackupNotFound):
        catalog.read_sentinel(storage, NEW)


def test_unreadable_sentinel_is_an_integrity_error_naming_the_backup(storage: Storage) -> None:
    storage.put_bytes(naming.sentinel_key(OLD), b'{"LSN": "not a number"')
    with pytest.raises(IntegrityError) as info:
        catalog.read_sentinel(storage, OLD)
    assert OLD in str(info.value)


def test_read_metadata(storage: Storage) -> None:
    assert catalog.read_metadata(storage, OLD) is None
    storage.put_bytes(naming.metadata_key(OLD), (GOLDEN / "metadata.json").read_bytes())
    meta = catalog.read_metadata(storage, OLD)
    assert meta is not None and meta.start_lsn == 50331688
    storage.put_bytes(naming.metadata_key(NEW), b"[]")
    with pytest.raises(IntegrityError):
        catalog.read_metadata(storage, NEW)


def test_files_metadata_present(storage: Storage) -> None:
    put_sentinel(storage, OLD)
    storage.put_bytes(naming.files_metadata_key(OLD), (GOLDEN / "files_metadata.json").read_bytes())
    sentinel = catalog.read_sentinel(storage, OLD)
    files = catalog.read_files_metadata(storage, OLD, sentinel)
    assert "/base/16384/2619" in files.files
    assert files.files["/base/16384/2619"].is_incremented


def test_files_metadata_missing_for_v2_sentinel_is_an_error(storage: Storage) -> None:
    put_sentinel(storage, OLD)
    sentinel = catalog.read_sentinel(storage, OLD)
    with pytest.raises(IntegrityError) as info:
        catalog.read_files_metadata(storage, OLD, sentinel)
    assert OLD in str(info.value)


def test_files_metadata_disabled_means_empty(storage: Storage) -> None:
    storage.put_bytes(
        naming.sentinel_key(OLD),
        b'{"LSN":1,"FinishLSN":2,"PgVersion":160000,"FilesMetadataDisabled":true,"Version":2}',
    )
    sentinel = catalog.read_sentinel(storage, OLD)
    assert catalog.read_files_metadata(storage, OLD, sentinel) == FilesMetadata.empty()


def test_old_walg_sentinel_carries_files_itself(storage: Storage) -> None:
    put_sentinel(storage, MID, "sentinel_walg_1x.json")
    sentinel = catalog.read_sentinel(storage, MID)
    files = catalog.read_files_metadata(storage, MID, sentinel)
    assert set(files.files) == {"/", "/PG_VERSION", "/base/1/1259"}
    assert files.files["/base/1/1259"].is_incremented


def test_wale_sentinel_without_files_means_unwrap_everything(storage: Storage) -> None:
    name = "base_000000010000000000000004_00000028"
    put_sentinel(storage, name, "sentinel_wale.json")
    sentinel = catalog.read_sentinel(storage, name)
    assert catalog.read_files_metadata(storage, name, sentinel) == FilesMetadata.empty()
    assert [r.name for r in catalog.list_backups(storage)] == [name]


def test_unreadable_files_metadata_is_an_integrity_error(storage: Storage) -> None:
    put_sentinel(storage, OLD)
    storage.put_bytes(naming.files_metadata_key(OLD), b'{"Files": [1, 2]}')
    sentinel = catalog.read_sentinel(storage, OLD)
    with pytest.raises(IntegrityError):
        catalog.read_files_metadata(storage, OLD, sentinel)


def _written_backup(storage: Storage) -> tuple[Sentinel, bytes]:
    """A files_metadata.json written as backup-push writes it, and a sentinel recording it."""
    files = FilesMetadata.loads((GOLDEN / "files_metadata.json").read_bytes())
    checksum = catalog.write_files_metadata(storage, OLD, files)
    put_sentinel(storage, OLD)
    sentinel = dataclasses.replace(
        catalog.read_sentinel(storage, OLD), files_metadata_checksum=checksum
    )
    storage.put_bytes(naming.sentinel_key(OLD), sentinel.dumps())
    return catalog.read_sentinel(storage, OLD), files.dumps()


def test_names_that_are_not_utf8_round_trip_through_the_documents(storage: Storage) -> None:
    """A file named with bytes that are not UTF-8 (str with lone surrogates, as os.listdir
    gives it) made every backup-push fail at the end with UnicodeEncodeError."""
    odd = os.fsdecode(b"/stray\xff\xfe.txt")
    golden = FilesMetadata.loads((GOLDEN / "files_metadata.json").read_bytes())
    files = dataclasses.replace(
        golden,
        files={**golden.files, odd: golden.files["/base/16384/2619"]},
        tar_file_sets={"part_001.tar.lz4": (odd,)},
    )
    document = files.dumps()
    assert b'"/stray\\udcff\\udcfe.txt"' in document
    assert FilesMetadata.loads(document) == files
    checksum = catalog.write_files_metadata(storage, OLD, files)
    assert storage.get_bytes(naming.files_metadata_key(OLD)) == document
    assert checksum == Checksum(len(document), blake3.blake3(document).hexdigest())
    sentinel = dataclasses.replace(
        Sentinel.loads((GOLDEN / "sentinel_v2_full.json").read_bytes()),
        data_dir=os.fsdecode(b"/srv/caf\xe9"),
    )
    assert Sentinel.loads(sentinel.dumps()) == sentinel


def test_written_files_metadata_is_checked_against_the_sentinel(storage: Storage) -> None:
    sentinel, document = _written_backup(storage)
    assert storage.get_bytes(naming.files_metadata_key(OLD)) == document
    assert sentinel.files_metadata_checksum == Checksum(
        len(document), blake3.blake3(document).hexdigest()
    )
    files = catalog.read_files_metadata(storage, OLD, sentinel)
    assert files.files["/base/16384/2619"].is_incremented


@pytest.mark.parametrize(
    ("damage", "refusal"),
    [
        (lambda doc: doc[:-1] + b" ", "does not match the checksum"),  # same size
        # Same size and still a valid document: only the digest tells it from the original.
        (lambda doc: doc.replace(b"/base/16384/2619", b"/base/16384/2618"), "does not match"),
        (lambda doc: doc[:-1], "does not match the checksum"),  # truncated
        (lambda doc: doc + b" ", "is larger than"),  # longer than recorded
        (
            lambda doc: doc.replace(b'"IsIncremented":true', b'"IsIncremented":false'),
            "is larger than",
        ),
    ],
)
def test_files_metadata_unlike_the_sentinels_record_is_refused(
    storage: Storage, damage: Callable[[bytes], bytes], refusal: str
) -> None:
    sentinel, document = _written_backup(storage)
    damaged = damage(document)
    assert damaged != document
    storage.put_bytes(naming.files_metadata_key(OLD), damaged)
    with pytest.raises(IntegrityError) as info:
        catalog.read_files_metadata(storage, OLD, sentinel)
    assert "files_metadata.json" in str(info.value) and OLD in str(info.value)
    assert refusal in str(info.value)


def test_large_files_metadata_without_a_recorded_size_is_read(storage: Storage) -> None:
    """WAL-G's sentinels record no size: a document over the 64 MiB that other small
    documents are held to (a backup of ~350,000 files) is still read."""
    put_sentinel(storage, OLD)
    files = {f"/base/1/{n:06d}" + "x" * 1000: {"UpdatesCount": 0} for n in range(70_000)}
    document = json.dumps({"Files": files}).encode()
    assert len(document) > 64 << 20
    storage.put_bytes(naming.files_metadata_key(OLD), document)
    sentinel = catalog.read_sentinel(storage, OLD)
    assert sentinel.files_metadata_checksum is None
    assert len(catalog.read_files_metadata(storage, OLD, sentinel).files) == 70_000


def test_a_large_limit_allocates_nothing_up_front(storage: Storage) -> None:
    """get_bytes read ``limit + 1`` bytes in one call, which allocated the limit (a sentinel
    recording 1 TiB made backup-fetch fail with MemoryError)."""
    storage.put_bytes("small", b"abc" * 1000)
    assert storage.get_bytes("small", limit=1 << 40) == b"abc" * 1000
    assert storage.get_bytes("small", limit=3000) == b"abc" * 1000
    with pytest.raises(ObjectTooLarge):
        storage.get_bytes("small", limit=2999)
