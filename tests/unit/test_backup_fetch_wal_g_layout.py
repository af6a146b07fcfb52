"""ops.backup_fetch on backups laid out by hand exactly as WAL-G writes them (no walg extras).

No PostgreSQL is needed to restore: the storage holds the sentinel, metadata, files metadata and
tar objects, and the restore is checked file by file.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pgcluster import make_shared_dir, pg_user_env
from walg.core import naming
from walg.core.metadata import TablespaceSpec
from walg.errors import BackupNotFound, IntegrityError, UsageError, WalgError
from walg.ops.backup_fetch import backup_fetch
from walg.settings import Settings, load
from walg.storage.base import Storage
from walg.storage.memory import MemoryStorage
from walg.streams.compression import codec_for_method

GOLDEN = Path(__file__).parent / "golden"
NAME = "base_000000010000000000000003"
MTIME = "2024-05-01T12:00:00.123456789+02:00"

DIRS = ["/", "/base", "/base/1", "/global", "/pg_wal", "/pg_replslot"]
FILES = {
    "/PG_VERSION": b"16\n",
    "/base/1/1259": bytes(range(256)) * 64,
    "/base/1/1259_fsm": b"\7" * 100,
    "/postgresql.conf": b"shared_buffers = 128MB\n",
}
PG_CONTROL = b"\1\2\3\4" * 2048
LABEL = b"START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\n"


def tar_bytes(members: list[tuple[str, bytes | None]]) -> bytes:
    sink = io.BytesIO()
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_714_557_600
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o700
                tf.addfile(info)
            else:
                info.mode = 0o600
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return sink.getvalue()


def compressed(data: bytes, method: str) -> bytes:
    sink = io.BytesIO()
    writer = codec_for_method(method).writer(sink)
    writer.write(data)
    writer.close()
    return sink.getvalue()


def put_wal_g_backup(
    storage: Storage, method: str = "lz4", ext: str | None = None, conf: bytes | None = None
) -> None:
    """A full backup as WAL-G writes it; ``ext`` overrides the object extension ('.': legacy),
    ``conf`` the content of postgresql.conf."""
    suffix = naming.with_ext("", codec_for_method(method).extension) if ext is None else ext
    prefix = naming.partitions_prefix(NAME)
    parts: dict[str, list[tuple[str, bytes | None]]] = {
        f"part_001.tar{suffix}": [(d, None) for d in DIRS[:3]]
        + [("/PG_VERSION", FILES["/PG_VERSION"]), ("/base/1/1259", FILES["/base/1/1259"])],
        # Part numbers can have gaps (WAL-G numbers pre-created tarballs too).
        f"part_003.tar{suffix}": [(d, None) for d in DIRS[3:]]
        + [
            ("/base/1/1259_fsm", FILES["/base/1/1259_fsm"]),
            ("/postgresql.conf", FILES["/postgresql.conf"] if conf is None else conf),
        ],
        f"pg_control.tar{suffix}": [("/global/pg_control", PG_CONTROL)],
        f"backup_label.tar{suffix}": [("backup_label", LABEL), ("tablespace_map", b"")],
    }
    for object_name, members in parts.items():
        storage.put_bytes(prefix + object_name, compressed(tar_bytes(members), method))
    files = {
        name: {"IsIncremented": False, "IsSkipped": False, "MTime": MTIME, "UpdatesCount": 0}
        for name in [*DIRS, *FILES]
    }
    tar_sets = {
        name: [m for m, _ in members]
        for name, members in parts.items()
        if not name.startswith("pg_control")
    }
    storage.put_bytes(
        naming.files_metadata_key(NAME),
        json.dumps({"Files": files, "TarFileSets": tar_sets}).encode(),
    )
    storage.put_bytes(naming.metadata_key(NAME), (GOLDEN / "metadata.json").read_bytes())
    storage.put_bytes(naming.sentinel_key(NAME), (GOLDEN / "sentinel_v2_full.json").read_bytes())


def settings_for(tmp_path: Path) -> Settings:
    return load(
        environ={
            "HOME": str(tmp_path),
            "WALG_FILE_PREFIX": str(tmp_path / "unused"),
            "WALG_TAR_DISABLE_FSYNC": "true",
        }
    )


def assert_restored(dest: Path) -> None:
    for name, data in FILES.items():
        path = dest / name.lstrip("/")
        assert path.read_bytes() == data, name
        assert stat.S_IMODE(path.stat().st_mode) & ~0o640 == 0
    assert (dest / "global/pg_control").read_bytes() == PG_CONTROL
    assert (dest / "backup_label").read_bytes() == LABEL
    assert (dest / "tablespace_map").read_bytes() == b""
    for name in DIRS[1:]:
        assert (dest / name.lstrip("/")).is_dir(), name
    assert list((dest / "pg_wal").iterdir()) == []
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700


def test_restore_wal_g_lz4_backup(tmp_path: Path) -> None:
    storage = MemoryStorage()
    put_wal_g_backup(storage)
    dest = tmp_path / "restore"
    result = backup_fetch(settings_for(tmp_path), storage, str(dest), "LATEST")
    assert result.name == NAME
    assert result.objects == 4
    assert result.files == len(FILES) + 3  # + pg_control, backup_label, tablespace_map
    assert result.verified_files == 0  # WAL-G records no checksums
    assert_restored(dest)


def test_restore_wal_g_3_0_9_uncompressed_backup(tmp_path: Path) -> None:
    storage = MemoryStorage()
    put_wal_g_backup(storage, method="none")
    assert storage.exists(naming.partitions_prefix(NAME) + "pg_control.tar")
    dest = tmp_path / "restore"
    backup_fetch(settings_for(tmp_path), storage, str(dest), NAME)
    assert_restored(dest)


def test_restore_old_wal_g_uncompressed_backup_with_trailing_dots(tmp_path: Path) -> None:
    storage = MemoryStorage()
    put_wal_g_backup(storage, method="none", ext=".")
    assert storage.exists(naming.partitions_prefix(NAME) + "pg_control.tar.")
    dest = tmp_path / "restore"
    backup_fetch(settings_for(tmp_path), storage, str(dest), NAME)
    assert_restored(dest)


def test_restore_refuses_a_non_empty_destination(tmp_path: Path) -> None:
    storage = MemoryStorage()
    put_wal_g_backup(storage)
    dest = tmp_path / "restore"
    dest.mkdir()
    (dest / "leftover").write_bytes(b"x")
    with pytest.raises(UsageError):
        backup_fetch(settings_for(tmp_path), storage, str(dest), NAME)
    assert (dest / "leftover").read_bytes() == b"x"


def test_restore_of_unknown_backup(tmp_path: Path) -> None:
    storage = MemoryStorage()
    put_wal_g_backup(storage)
    with pytest.raises(BackupNotFound):
        backup_fetch(settings_for(tmp_path), storage, str(tmp_path / "r"), "base_" + "0" * 24)


# ---------------------------------------------------------------- completeness and repairs


def _edit_files_metadata(storage: Storage, edit: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads(storage.get_bytes(naming.files_metadata_key(NAME)))
    edit(doc)
    storage.put_bytes(naming.files_metadata_key(NAME), json.dumps(doc).encode())


def _put_part(storage: Storage, object_name: str, members: list[tuple[str, bytes | None]]) -> None:
    data = compressed(tar_bytes(members), "lz4")
    storage.put_bytes(naming.partitions_prefix(NAME) + object_name, data)


def test_a_missing_partition_named_in_tar_file_sets_is_refused_before_extracting(
    tmp_path: Path,
) -> None:
    storage = MemoryStorage()
    put_wal_g_backup(storage)
    storage.delete([naming.partitions_prefix(NAME) + "part_003.tar.lz4"])
    dest = tmp_path / "restore"
    with pytest.raises(IntegrityError, match=r"part_003\.tar\.lz4 missing from storage"):
        backup_fetch(settings_for(tmp_path), storage, str(dest), NAME)
    assert not dest.exists()  # nothing written: the same command can run again once repaired


def test_a_file_in_no_partition_fails_the_restore_naming_it(tmp_path: Path) -> None:
    # The partition is there but lacks a member Files lists (a lost partition that
    # TarFileSets does not name either, or a truncated one): no checksum to miss, yet the
    # restore must not exit 0.
    storage = MemoryStorage()
    put_wal_g_backup(storage)
    _put_part(
        storage,
        "part_003.tar.lz4",
        [(d, None) for d in DIRS[3:]] + [("/postgresql.conf", FILES["/postgresql.conf"])],
    )
    with pytest.raises(IntegrityError, match=r"not restored: /base/1/1259_fsm$"):
        backup_fetch(settings_for(tmp_path), storage, str(tmp_path / "restore"), NAME)


def test_files_entries_that_are_skipped_or_implicit_directories_are_not_missing(
    tmp_path: Path,
) -> None:
    storage = MemoryStorage()
    put_wal_g_backup(storage)

    def edit(doc: dict[str, Any]) -> None:
        # A delta's unchanged file has no member; a directory entry whose header is not in
        # any tar still exists once its files are restored.
        doc["Files"]["/base/1/9999"] = {"IsSkipped": True, "MTime": MTIME, "UpdatesCount": 0}
        doc["Files"]["/base"] = {"MTime": MTIME, "UpdatesCount": 0}

    _edit_files_metadata(storage, edit)
    _put_part(
        storage,
        "part_001.tar.lz4",
        [
            ("/", None),
            ("/base/1", None),
            ("/PG_VERSION", FILES["/PG_VERSION"]),
            ("/base/1/1259", FILES["/base/1/1259"]),
        ],
    )
    dest = tmp_path / "restore"
    backup_fetch(settings_for(tmp_path), storage, str(dest), NAME)
    assert_restored(dest)


def test_a_backup_without_pg_wal_gets_an_empty_one(tmp_path: Path) -> None:
    # WAL-G archives nothing for a pg_wal that is a symbolic link (initdb --waldir).
    storage = MemoryStorage()
    put_wal_g_backup(storage)
    _put_part(
        storage,
        "part_003.tar.lz4",
        [("/global", None), ("/pg_replslot", None)]
        + [(n, FILES[n]) for n in ("/base/1/1259_fsm", "/postgresql.conf")],
    )
    _edit_files_metadata(storage, lambda doc: doc["Files"].pop("/pg_wal"))
    dest = tmp_path / "restore"
    backup_fetch(settings_for(tmp_path), storage, str(dest), NAME)
    assert_restored(dest)
    assert stat.S_IMODE((dest / "pg_wal").stat().st_mode) == 0o700
    assert not (dest / "pg_wal").is_symlink()


OID = "16385"
TS_MEMBERS: list[tuple[str, bytes | None]] = [
    (f"/pg_tblspc/{OID}", None),
    (f"/pg_tblspc/{OID}/PG_16_202307071", None),
    (f"/pg_tblspc/{OID}/PG_16_202307071/5", None),
    (f"/pg_tblspc/{OID}/PG_16_202307071/5/16386", b"\5" * 8192),
]


def _put_tablespace_backup(storage: Storage, location: Path, map_path: str) -> None:
    """The backup with one tablespace whose spec says ``location`` and whose tablespace_map
    names ``map_path`` (the unresolved path the server saw, when it was a symbolic link)."""
    put_wal_g_backup(storage)
    _put_part(storage, "part_004.tar.lz4", TS_MEMBERS)
    _put_part(
        storage,
        "backup_label.tar.lz4",
        [("backup_label", LABEL), ("tablespace_map", f"{OID} {map_path}\n".encode())],
    )

    def edit(doc: dict[str, Any]) -> None:
        for name, _ in TS_MEMBERS:
            doc["Files"][name] = {"MTime": MTIME, "UpdatesCount": 0}
        doc["TarFileSets"]["part_004.tar.lz4"] = [name for name, _ in TS_MEMBERS]

    _edit_files_metadata(storage, edit)
    sentinel = json.loads((GOLDEN / "sentinel_v2_full.json").read_text())
    sentinel["Spec"] = {
        "base_prefix": "/var/lib/postgresql/16/main",
        "tablespaces": [OID],
        OID: {"loc": str(location), "link": f"pg_tblspc/{OID}"},
    }
    storage.put_bytes(naming.sentinel_key(NAME), json.dumps(sentinel).encode())


def test_links_made_from_the_spec_are_not_overridden_by_tablespace_map(tmp_path: Path) -> None:
    # PostgreSQL would relink pg_tblspc/<oid> to the map's path at start-up: a path that may
    # not exist here, while the files are where the spec said.
    storage = MemoryStorage()
    location = tmp_path / "mnt" / "real"
    _put_tablespace_backup(storage, location, str(tmp_path / "link-that-is-gone"))
    dest = tmp_path / "restore"
    backup_fetch(settings_for(tmp_path), storage, str(dest), NAME)
    link = dest / "pg_tblspc" / OID
    assert link.is_symlink() and Path(os.readlink(link)) == location
    assert (location / "PG_16_202307071/5/16386").read_bytes() == b"\5" * 8192
    assert not (dest / "tablespace_map").exists()
    assert (dest / "backup_label").read_bytes() == LABEL


def test_a_refused_tablespace_location_leaves_the_destination_untouched(tmp_path: Path) -> None:
    storage = MemoryStorage()
    location = tmp_path / "busy"
    location.mkdir()
    (location / "PG_16_202307071").mkdir()
    _put_tablespace_backup(storage, location, str(location))
    dest = tmp_path / "restore"
    dest.mkdir()
    with pytest.raises(UsageError, match="is not an empty directory"):
        backup_fetch(settings_for(tmp_path), storage, str(dest), NAME)
    assert list(dest.iterdir()) == []
    # Once the DBA has made room, the very same command succeeds.
    (location / "PG_16_202307071").rmdir()
    backup_fetch(settings_for(tmp_path), storage, str(dest), NAME)
    assert (location / "PG_16_202307071/5/16386").is_file()


def test_a_tablespace_location_inside_the_destination_is_refused(tmp_path: Path) -> None:
    """The tablespace's files would be restored into the data directory, beside the link to
    them; the DBA relocates it with --restore-spec."""
    storage = MemoryStorage()
    dest = tmp_path / "restore"
    _put_tablespace_backup(storage, dest / "ts", str(dest / "ts"))
    with pytest.raises(UsageError, match="is inside the destination"):
        backup_fetch(settings_for(tmp_path), storage, str(dest), NAME)
    assert not dest.exists()


def test_all_tablespace_locations_are_checked_before_any_is_created(tmp_path: Path) -> None:
    storage = MemoryStorage()
    _put_tablespace_backup(storage, tmp_path / "ts-a", str(tmp_path / "ts-a"))
    spec = {
        "base_prefix": "/var/lib/postgresql/16/main",
        "tablespaces": [OID, "16390"],
        OID: {"loc": str(tmp_path / "new" / "ts-a"), "link": f"pg_tblspc/{OID}"},
        "16390": {"loc": "relative/ts-b", "link": "pg_tblspc/16390"},
    }
    with pytest.raises(UsageError, match="not an absolute path"):
        backup_fetch(
            settings_for(tmp_path),
            storage,
            str(tmp_path / "restore"),
            NAME,
            TablespaceSpec.from_json(spec),
        )
    assert not (tmp_path / "restore").exists()
    assert not (tmp_path / "new").exists()


def test_an_object_of_another_size_than_recorded_is_refused_before_downloading(
    tmp_path: Path,
) -> None:
    storage = MemoryStorage()
    put_wal_g_backup(storage)
    stored = len(storage.get_bytes(naming.partitions_prefix(NAME) + "part_001.tar.lz4"))

    def record(doc: dict[str, Any]) -> None:
        doc["WalgObjects"] = {
            "part_001.tar.lz4": {"StoredSize": stored + 1, "Blake3": "0" * 64, "RawSize": 1}
        }

    _edit_files_metadata(storage, record)
    dest = tmp_path / "restore"
    with pytest.raises(IntegrityError) as info:
        backup_fetch(settings_for(tmp_path), storage, str(dest), NAME)
    message = str(info.value)
    assert "part_001.tar.lz4" in message and "before downloading" in message
    assert f"{stored} bytes" in message and str(stored + 1) in message
    assert not (dest / "PG_VERSION").exists(), "nothing of the object may be extracted"


def test_a_tablespace_location_that_cannot_be_created_leaves_the_destination_untouched(
    tmp_path: Path,
) -> None:
    storage = MemoryStorage()
    blocker = tmp_path / "mnt"
    blocker.write_bytes(b"a file where a folder should be")
    location = blocker / "ts"
    _put_tablespace_backup(storage, location, str(location))
    dest = tmp_path / "restore"
    with pytest.raises(WalgError) as info:
        backup_fetch(settings_for(tmp_path), storage, str(dest), NAME)
    assert str(location) in str(info.value)
    assert not dest.exists()
    # Once the DBA has made room, the very same command succeeds.
    blocker.unlink()
    backup_fetch(settings_for(tmp_path), storage, str(dest), NAME)
    assert (location / "PG_16_202307071/5/16386").is_file()


# --- run as root into a folder another user can change ---------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@needs_root
@pytest.mark.parametrize("where", ["dest", "parent"])
def test_root_never_restores_into_a_folder_another_user_can_change(
    tmp_path: Path, where: str
) -> None:
    """``sudo walg backup-fetch /var/lib/postgresql/16/main LATEST``: DEST (or the folder DEST
    is made in) is the server user's. The restore succeeded with every file root's, mode 0600,
    which the server cannot read; and while root wrote, that user could put a symbolic link
    where root was about to make a folder (``base``) and have root write the backup's files
    wherever it led. It is refused now, naming the folder and its owner, before anything is
    written."""
    storage = MemoryStorage()
    put_wal_g_backup(storage)
    user = pg_user_env()["USER"]
    if where == "dest":
        dest = make_shared_dir(tmp_path / "main")
        folder = dest
    else:
        folder = make_shared_dir(tmp_path / "16", mode=0o755)
        dest = folder / "main"
    with pytest.raises(UsageError, match=f"{folder} is owned by {user}.*as {user}"):
        backup_fetch(settings_for(tmp_path), storage, str(dest), NAME)
    assert not dest.exists() or list(dest.iterdir()) == []


@needs_root
def test_root_never_restores_through_a_folder_others_may_write_in(tmp_path: Path) -> None:
    """A folder every user may write in, without the sticky bit: anyone could rename DEST
    away and put a link in its place while root restores."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    storage = MemoryStorage()
    put_wal_g_backup(storage)
    with pytest.raises(UsageError, match=f"{shared} is writable by other users"):
        backup_fetch(settings_for(tmp_path), storage, str(shared / "restore"), NAME)
    assert list(shared.iterdir()) == []
    # The sticky bit (as /tmp has) keeps others from renaming what root makes there.
    shared.chmod(0o1777)
    backup_fetch(settings_for(tmp_path), storage, str(shared / "restore"), NAME)
    assert_restored(shared / "restore")


@needs_root
def test_root_never_restores_a_tablespace_into_a_folder_another_user_can_change(
    tmp_path: Path,
) -> None:
    storage = MemoryStorage()
    folder = make_shared_dir(tmp_path / "ts", mode=0o755)
    _put_tablespace_backup(storage, folder / "place", str(folder / "place"))
    dest = tmp_path / "restore"
    user = pg_user_env()["USER"]
    with pytest.raises(UsageError, match=f"{folder} is owned by {user}"):
        backup_fetch(settings_for(tmp_path), storage, str(dest), NAME)
    assert not dest.exists()
    assert list(folder.iterdir()) == []


@needs_root
def test_root_follows_a_link_only_where_it_leads_to_a_safe_folder(tmp_path: Path) -> None:
    """A link in DEST's path is followed and what it leads to checked the same way."""
    storage = MemoryStorage()
    put_wal_g_backup(storage)
    theirs = make_shared_dir(tmp_path / "theirs", mode=0o755)
    (tmp_path / "link").symlink_to(theirs)
    with pytest.raises(UsageError, match=f"{theirs} is owned by"):
        backup_fetch(settings_for(tmp_path), storage, str(tmp_path / "link" / "main"), NAME)
    assert list(theirs.iterdir()) == []
    ours = tmp_path / "ours"
    ours.mkdir()
    (tmp_path / "good").symlink_to(ours)
    backup_fetch(settings_for(tmp_path), storage, str(tmp_path / "good" / "main"), NAME)
    assert_restored(ours / "main")
