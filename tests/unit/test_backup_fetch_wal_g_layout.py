"""ops.backup_fetch on backups laid out by hand exactly as WAL-G writes them (no walg extras).

No PostgreSQL is needed to restore: the storage holds the sentinel, metadata, files metadata and
tar objects, and the restore is checked file by file.
"""

from __future__ import annotations

import io
import json
import stat
import tarfile
from pathlib import Path

import pytest

from walg.core import naming
from walg.errors import BackupNotFound, UsageError
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


def put_wal_g_backup(storage: Storage, method: str = "lz4", ext: str | None = None) -> None:
    """A full backup as WAL-G writes it; ``ext`` overrides the object extension ('.': legacy)."""
    suffix = naming.with_ext("", codec_for_method(method).extension) if ext is None else ext
    prefix = naming.partitions_prefix(NAME)
    parts: dict[str, list[tuple[str, bytes | None]]] = {
        f"part_001.tar{suffix}": [(d, None) for d in DIRS[:3]]
        + [("/PG_VERSION", FILES["/PG_VERSION"]), ("/base/1/1259", FILES["/base/1/1259"])],
        # Part numbers can have gaps (WAL-G numbers pre-created tarballs too).
        f"part_003.tar{suffix}": [(d, None) for d in DIRS[3:]]
        + [
            ("/base/1/1259_fsm", FILES["/base/1/1259_fsm"]),
            ("/postgresql.conf", FILES["/postgresql.conf"]),
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
