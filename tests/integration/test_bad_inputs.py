"""Bad input gets a clear error and loses nothing: configuration, PostgreSQL, storage objects.

One real PostgreSQL 15 backup is made per module; each test works on its own copy of the
storage folder, damages it in one way, and checks that ``backup-fetch`` fails naming what is
wrong, with nothing written outside the destination.
"""

from __future__ import annotations

import io
import json
import os
import pwd
import shutil
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import blake3
import lz4.frame
import pytest

from loglines import undated
from pgcluster import (
    Cluster,
    PgInstall,
    make_shared_dir,
    pg_tmpdir,
    run_as_pg,
    stop_clusters_under,
)
from walgcli import WalgSetup


@dataclass
class Backup:
    walg: WalgSetup
    name: str
    workdir: Path


@pytest.fixture(scope="module")
def backup(walg_bin: str) -> Iterator[Backup]:
    install = PgInstall.load(15)
    workdir = pg_tmpdir("bad-inputs-")
    walg = WalgSetup.create(walg_bin, workdir, WALG_TAR_SIZE_THRESHOLD="2000000")
    cluster = Cluster.create(install, workdir / "src", conf={"archive_mode": "off"})
    cluster.start()
    cluster.pgbench(["-i", "-s", "1", "-q"])
    walg.run(["backup-push", str(cluster.datadir)], cluster=cluster)
    cluster.stop()
    name = json.loads(walg.run(["backup-list", "--json"]).stdout)[0]["backup_name"]
    yield Backup(walg, name, workdir)
    stop_clusters_under(workdir)
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def damaged(backup: Backup, pg_workdir: Path) -> WalgSetup:
    """A private copy of the module's storage folder, for one test to damage."""
    walg = WalgSetup.create(backup.walg.walg_bin, pg_workdir)
    shutil.rmtree(walg.store)
    shutil.copytree(backup.walg.store, walg.store)
    return walg


def _parts(walg: WalgSetup, name: str) -> list[Path]:
    folder = walg.store / "basebackups_005" / name / "tar_partitions"
    return sorted(folder.glob("part_*.tar.lz4"))


def _fetch_fails(walg: WalgSetup, dest: Path, name: str = "LATEST") -> str:
    result = walg.run(["backup-fetch", str(dest), name], check=False)
    assert result.returncode != 0, result.stderr
    assert result.returncode < 126
    return result.stderr


def test_missing_storage_prefix_is_a_one_line_error(walg_bin: str, pg_workdir: Path) -> None:
    walg = WalgSetup(walg_bin, pg_workdir, pg_workdir / "empty.json")
    walg.config.write_text("{}")
    walg.config.chmod(0o644)
    result = walg.run(["backup-list"], check=False)
    assert result.returncode == 78
    assert "WALG_FILE_PREFIX" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_contradictory_storage_prefixes_are_refused(walg_bin: str, pg_workdir: Path) -> None:
    walg = WalgSetup.create(walg_bin, pg_workdir, WALE_S3_PREFIX="s3://bucket/x")
    result = walg.run(["backup-list"], check=False)
    assert result.returncode == 78
    assert "WALG_FILE_PREFIX" in result.stderr and "WALE_S3_PREFIX" in result.stderr


def test_unreachable_postgres_fails_cleanly(backup: Backup, pg_workdir: Path) -> None:
    install = PgInstall.load(15)
    cluster = Cluster.create(install, pg_workdir / "stopped")  # never started
    walg = WalgSetup.create(backup.walg.walg_bin, pg_workdir)
    result = walg.run(["backup-push", str(cluster.datadir)], cluster=cluster, check=False)
    assert result.returncode == 1
    assert "cannot connect to PostgreSQL" in result.stderr
    assert not any(walg.store.rglob("*")), "nothing may be written to storage"


def test_fetch_refuses_non_empty_destination(backup: Backup, pg_workdir: Path) -> None:
    dest = make_shared_dir(pg_workdir / "dest", 0o700)
    keep = dest / "precious.txt"
    keep.write_text("keep me")
    stderr = _fetch_fails(backup.walg, dest)
    assert "not empty" in stderr
    assert sorted(p.name for p in dest.iterdir()) == ["precious.txt"]
    assert keep.read_text() == "keep me"


def test_fetch_of_unknown_backup_name(backup: Backup, pg_workdir: Path) -> None:
    dest = pg_workdir / "dest"
    stderr = _fetch_fails(backup.walg, dest, "base_000000010000000000000099")
    assert "base_000000010000000000000099 does not exist" in stderr
    assert not dest.exists()


def test_truncated_part_is_detected_and_named(damaged: WalgSetup, backup: Backup) -> None:
    # Without walg's record of the object's size (as WAL-G writes it): found while reading.
    _as_wal_g_wrote_it(damaged, backup.name)
    part = _parts(damaged, backup.name)[0]
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])
    stderr = _fetch_fails(damaged, damaged.store.parent / "dest")
    assert part.name in stderr
    assert "truncated" in stderr or "ends inside" in stderr


def test_part_of_another_size_than_recorded_is_refused_before_downloading(
    damaged: WalgSetup, backup: Backup
) -> None:
    part = _parts(damaged, backup.name)[0]
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])
    stderr = _fetch_fails(damaged, damaged.store.parent / "dest")
    assert f"object {part.name} is {len(data) // 2} bytes in storage" in stderr
    assert f"records {len(data)}" in stderr and "before downloading" in stderr


def test_member_larger_than_recorded_is_refused_before_it_is_written(
    damaged: WalgSetup, backup: Backup
) -> None:
    # The object recorded anew (so it is read at all), the file's record kept: the member's
    # header claims 16 MiB more than recorded, and not a byte of it may reach DEST's disk.
    part = _parts(damaged, backup.name)[0]
    victim: list[tuple[str, int]] = []

    def inflate(members: list) -> list:  # type: ignore[type-arg]
        out = []
        for info, payload in members:
            data = payload
            if data and not victim and info.size > 100:
                victim.append((info.name, info.size))
                data += bytes(16 << 20)
                info.size = len(data)
            out.append((info, data))
        return out

    _rewrite_part(damaged, backup.name, part, inflate)
    dest = damaged.store.parent / "dest"
    stderr = _fetch_fails(damaged, dest)
    name, size = victim[0]
    assert f"{name.lstrip('/')} holds {size + (16 << 20)} bytes" in stderr
    assert f"records {size}" in stderr and part.name in stderr
    assert not (dest / name.lstrip("/")).exists()


@pytest.mark.parametrize("shape", ["under a file", "in a read-only folder"])
def test_fetch_into_an_unusable_destination_names_it(
    backup: Backup, pg_workdir: Path, shape: str
) -> None:
    if shape == "under a file":
        (pg_workdir / "afile").write_bytes(b"")
        dest, reason = pg_workdir / "afile" / "dest", "Not a directory"
    else:
        make_shared_dir(pg_workdir / "ro", 0o555)
        dest, reason = pg_workdir / "ro" / "dest", "Permission denied"
    stderr = _fetch_fails(backup.walg, dest)
    assert undated(stderr).strip().splitlines()[-1] == (
        f"ERROR: cannot create the destination {dest}: {reason}"
    ), stderr
    assert "unexpected" not in stderr


def test_tablespace_location_that_cannot_be_created_leaves_dest_as_it_was(
    backup: Backup, pg_workdir: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to make a folder the restoring user cannot write in")
    locked = pg_workdir / "locked"
    locked.mkdir(mode=0o755)  # root's: the restoring user (pgtest) may not write in it
    location = locked / "ts"
    spec_file = pg_workdir / "restore-spec.json"
    spec_file.write_text(
        json.dumps(
            {
                "base_prefix": "/unused",
                "tablespaces": ["16500"],
                "16500": {"loc": str(location), "link": "pg_tblspc/16500"},
            }
        )
    )
    spec_file.chmod(0o644)
    dest = pg_workdir / "dest"
    command = ["backup-fetch", str(dest), "LATEST", "--restore-spec", str(spec_file)]
    result = backup.walg.run(command, check=False)
    assert result.returncode not in (0, 126, 127), result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert str(location) in last and "permission denied" in last.lower(), result.stderr
    assert "unexpected" not in result.stderr
    assert not dest.exists() or not any(dest.iterdir())
    # The DBA fixes the permission; the very same command then restores.
    pw = pwd.getpwnam("pgtest")
    os.chown(locked, pw.pw_uid, pw.pw_gid)
    backup.walg.run(command)
    assert os.readlink(dest / "pg_tblspc" / "16500") == str(location)
    assert (dest / "PG_VERSION").is_file()


def test_corrupted_part_is_detected_and_named(damaged: WalgSetup, backup: Backup) -> None:
    part = _parts(damaged, backup.name)[0]
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    stderr = _fetch_fails(damaged, damaged.store.parent / "dest")
    assert part.name in stderr


def _edit_files_metadata(walg: WalgSetup, name: str, edit: Callable[[dict], None]) -> None:  # type: ignore[type-arg]
    """Let ``edit`` change files_metadata.json; the sentinel's record of the document
    (WalgFilesMetadata) is dropped, as in a sentinel WAL-G wrote, so the edit is read."""
    backups = walg.store / "basebackups_005"
    path = backups / name / "files_metadata.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    sentinel_path = backups / f"{name}_backup_stop_sentinel.json"
    sentinel = json.loads(sentinel_path.read_text())
    sentinel.pop("WalgFilesMetadata", None)
    sentinel_path.write_text(json.dumps(sentinel))


def _rewrite_part(walg: WalgSetup, name: str, part: Path, change: Callable[[list], list]) -> None:  # type: ignore[type-arg]
    """Decompress a part, let ``change`` edit its tar, recompress it as valid LZ4, and record
    the new object in the metadata (WalgObjects), as a consistent forgery would: what is
    tested is then the check of the members themselves."""
    members = []
    with tarfile.open(fileobj=io.BytesIO(lz4.frame.decompress(part.read_bytes()))) as tar:
        for info in tar.getmembers():
            payload = tar.extractfile(info).read() if info.isfile() else None  # type: ignore[union-attr]
            members.append((info, payload))
    members = change(members)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, payload in members:
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    stored = lz4.frame.compress(out.getvalue())
    part.write_bytes(stored)

    def record(doc: dict) -> None:  # type: ignore[type-arg]
        doc["WalgObjects"][part.name] = {
            "StoredSize": len(stored),
            "Blake3": blake3.blake3(stored).hexdigest(),
            "RawSize": len(out.getvalue()),
        }

    _edit_files_metadata(walg, name, record)


def test_file_content_mismatch_names_the_file(damaged: WalgSetup, backup: Backup) -> None:
    part = _parts(damaged, backup.name)[0]
    victim: list[str] = []

    def flip(members: list) -> list:  # type: ignore[type-arg]
        out = []
        for info, payload in members:
            data = payload
            if data and not victim and info.size > 100:
                victim.append(info.name)
                data = bytes([data[0] ^ 1]) + data[1:]
            out.append((info, data))
        return out

    _rewrite_part(damaged, backup.name, part, flip)
    stderr = _fetch_fails(damaged, damaged.store.parent / "dest")
    assert victim and victim[0].lstrip("/") in stderr
    assert "checksum" in stderr


def test_an_object_that_is_not_the_one_recorded_is_refused_though_its_files_match(
    damaged: WalgSetup, backup: Backup
) -> None:
    """Every file's checksum holds, but the object is not the one the backup stored (a tar
    header's mtime changed, the recorded size kept true): its recorded digest refuses it."""
    part = _parts(damaged, backup.name)[0]
    files_metadata = damaged.store / "basebackups_005" / backup.name / "files_metadata.json"
    recorded = json.loads(files_metadata.read_text())["WalgObjects"][part.name]["Blake3"]

    def touch(members: list) -> list:  # type: ignore[type-arg]
        (first, payload), *rest = members
        first.mtime += 1
        return [(first, payload), *rest]

    _rewrite_part(damaged, backup.name, part, touch)
    assert blake3.blake3(part.read_bytes()).hexdigest() != recorded

    def keep_digest(doc: dict) -> None:  # type: ignore[type-arg]
        doc["WalgObjects"][part.name]["Blake3"] = recorded

    _edit_files_metadata(damaged, backup.name, keep_digest)
    stderr = _fetch_fails(damaged, damaged.store.parent / "dest")
    assert f"object {part.name} does not match its checksum in the backup metadata" in stderr


def test_a_label_object_without_backup_label_fails_the_restore(
    damaged: WalgSetup, backup: Backup
) -> None:
    """Restored without backup_label, the server would start recovery from pg_control's
    checkpoint, later than the backup's start, and replay too little: a directory that starts
    with torn pages. The object is forged consistently (recorded anew), so only the check that
    every file walg recorded outside Files was restored is left to notice."""
    folder = damaged.store / "basebackups_005" / backup.name / "tar_partitions"
    label = folder / "backup_label.tar.lz4"

    def drop_label(members: list) -> list:  # type: ignore[type-arg]
        kept = [(info, payload) for info, payload in members if info.name != "backup_label"]
        assert len(kept) == len(members) - 1
        return kept

    _rewrite_part(damaged, backup.name, label, drop_label)
    dest = damaged.store.parent / "dest"
    stderr = _fetch_fails(damaged, dest)
    assert "files listed in the backup metadata were not restored: backup_label" in stderr
    # Nor is the failed restore left startable: pg_control was written before the label.
    assert (dest / "PG_VERSION").exists() and not (dest / "global" / "pg_control").exists()


@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_a_label_object_that_cannot_be_read_leaves_no_pg_control(
    damaged: WalgSetup, backup: Backup, damage: str
) -> None:
    """pg_control was restored before backup_label: a label object that failed its checks
    failed the restore (exit 1) after pg_control was in place, and left a directory that,
    given recovery settings, starts recovery from pg_control's checkpoint, later than the
    backup's start, replays too little and comes up with torn pages. pg_control comes last
    now, once the label is restored and durable."""
    label = damaged.store / "basebackups_005" / backup.name / "tar_partitions"
    label /= "backup_label.tar.lz4"
    data = bytearray(label.read_bytes())
    if damage == "corrupt":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[len(data) // 2 :]
    label.write_bytes(bytes(data))
    dest = damaged.store.parent / "dest"
    stderr = _fetch_fails(damaged, dest)
    assert "backup_label.tar.lz4" in stderr, stderr
    if damage == "corrupt":  # a truncated object is refused by its size before any download
        assert (dest / "PG_VERSION").exists(), "the data partitions were restored first"
    assert not (dest / "global" / "pg_control").exists()


def test_hostile_member_name_is_refused(damaged: WalgSetup, backup: Backup) -> None:
    part = _parts(damaged, backup.name)[0]
    escape = damaged.store.parent / "escaped.txt"

    def add_hostile(members: list) -> list:  # type: ignore[type-arg]
        info = tarfile.TarInfo("/../../escaped.txt")
        info.size = 5
        return [(info, b"owned"), *members]

    _rewrite_part(damaged, backup.name, part, add_hostile)
    stderr = _fetch_fails(damaged, damaged.store.parent / "a" / "b" / "dest")
    assert "outside the destination" in stderr
    assert not escape.exists()
    assert not (damaged.store.parent / "a" / "escaped.txt").exists()


def test_missing_part_is_detected(damaged: WalgSetup, backup: Backup) -> None:
    part = _parts(damaged, backup.name)[-1]
    part.unlink()
    stderr = _fetch_fails(damaged, damaged.store.parent / "dest")
    assert part.name in stderr and "missing" in stderr


def _as_wal_g_wrote_it(walg: WalgSetup, name: str) -> dict:  # type: ignore[type-arg]
    """Strip walg's completeness keys (object and file checksums) from files_metadata.json,
    leaving what WAL-G writes; returns the document."""
    kept: list[dict] = []  # type: ignore[type-arg]

    def strip(doc: dict) -> None:  # type: ignore[type-arg]
        doc.pop("WalgObjects", None)
        doc.pop("WalgUtilityFiles", None)
        for description in doc["Files"].values():
            description.pop("WalgSize", None)
            description.pop("WalgBlake3", None)
        kept.append(doc)

    _edit_files_metadata(walg, name, strip)
    return kept[0]


def _fetch_fails_leaving_nothing(walg: WalgSetup) -> str:
    dest = walg.store.parent / "dest"
    stderr = _fetch_fails(walg, dest)
    assert not dest.exists() or not any(dest.iterdir()), "nothing may be extracted"
    return stderr


def test_missing_part_of_a_backup_in_wal_g_layout_is_refused(
    damaged: WalgSetup, backup: Backup
) -> None:
    doc = _as_wal_g_wrote_it(damaged, backup.name)
    part = _parts(damaged, backup.name)[0]
    assert part.name in doc["TarFileSets"]
    part.unlink()
    stderr = _fetch_fails_leaving_nothing(damaged)
    assert part.name in stderr and "missing from storage" in stderr


def test_files_in_no_part_fail_the_restore_by_name(damaged: WalgSetup, backup: Backup) -> None:
    # Neither walg's keys nor TarFileSets name the lost part: only Files can tell.
    doc = _as_wal_g_wrote_it(damaged, backup.name)
    part = _parts(damaged, backup.name)[0]
    lost = [m for m in doc["TarFileSets"].pop(part.name) if m in doc["Files"]]
    _edit_files_metadata(damaged, backup.name, lambda d: d["TarFileSets"].pop(part.name))
    part.unlink()
    dest = damaged.store.parent / "dest"
    stderr = _fetch_fails(damaged, dest)
    assert "were not restored" in stderr
    assert any(m in stderr for m in lost), stderr
    assert not (dest / "global" / "pg_control").exists(), "a partial restore must not start"


def test_wal_fetch_of_missing_segment_exits_74_quietly(backup: Backup, pg_workdir: Path) -> None:
    result = backup.walg.run(
        ["wal-fetch", "0000000100000000000000FE", str(pg_workdir / "x")], check=False
    )
    assert result.returncode == 74
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (pg_workdir / "x").exists()


def test_wal_push_of_a_name_that_is_not_wal(backup: Backup, pg_workdir: Path) -> None:
    bogus = pg_workdir / "not-a-wal-file"
    bogus.write_bytes(b"x" * 100)
    bogus.chmod(0o644)
    result = backup.walg.run(["wal-push", str(bogus)], check=False)
    assert result.returncode != 0
    assert "not a WAL file name" in result.stderr


def test_a_storage_folder_that_is_not_there_is_refused_and_never_made(
    walg_bin: str, pg_workdir: Path
) -> None:
    """WALG_FILE_PREFIX on a volume not mounted: every command fails naming the folder (as
    WAL-G's do), wal-push builds nothing on the file system beneath the mount point (where
    the WAL would be hidden once the volume is mounted), and backup-list does not say "No
    backups found"."""
    mount = make_shared_dir(pg_workdir / "mnt", 0o755)
    store = mount / "backupvol" / "pgarchive"
    walg = WalgSetup(walg_bin, store, pg_workdir / "walg.json")
    walg.config.write_text(json.dumps({"WALG_FILE_PREFIX": str(store)}))
    walg.config.chmod(0o644)
    pg_wal = make_shared_dir(make_shared_dir(pg_workdir / "pgdata", 0o700) / "pg_wal", 0o700)
    segment = pg_wal / "000000010000000000000001"
    segment.write_bytes(bytes(16 << 20))
    shutil.chown(segment, "pgtest")
    for args in (
        ["wal-push", str(segment)],
        ["wal-fetch", "--no-prefetch", "000000010000000000000001", str(pg_wal / "RECOVERYXLOG")],
        ["backup-list"],
        ["backup-fetch", str(pg_workdir / "restore"), "LATEST"],
        ["wal-show"],
    ):
        result = walg.run(args, check=False)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert f"storage folder {store} does not exist" in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        assert "No backups found" not in result.stdout
    assert list(mount.iterdir()) == []
    assert not (pg_workdir / "restore").exists()


@pytest.mark.parametrize(
    ("file_name", "text"),
    [
        ("mapping.json", '{"WALG_FILE_PREFIX": {"path": "/var/backups/pg"}}'),
        ("list.yaml", "WALG_FILE_PREFIX:\n  - /var/backups/pg\n"),
        ("alias.yaml", "WALG_FILE_PREFIX: &a [*a]\n"),
        ("fifo.json", None),
    ],
)
def test_a_config_file_walg_cannot_use_is_a_config_error(
    walg_bin: str, pg_workdir: Path, file_name: str, text: str | None
) -> None:
    """A mapping or list was used as its JSON text (WALG_FILE_PREFIX a folder named so in
    PGDATA, wal-push exit 0), a recursive alias ended in "unexpected ValueError" (exit 1), and
    a FIFO hung every call. Each is exit 78, one line, and nothing is archived anywhere."""
    import os

    config = pg_workdir / file_name
    if text is None:
        os.mkfifo(config)
    else:
        config.write_text(text)
    config.chmod(0o644)
    walg = WalgSetup(walg_bin, pg_workdir / "store", config)
    pgdata = make_shared_dir(pg_workdir / "pgdata", 0o700)
    segment = make_shared_dir(pgdata / "pg_wal", 0o700) / "000000010000000000000001"
    segment.write_bytes(bytes(16 << 20))
    shutil.chown(segment, "pgtest")
    for args in (["wal-push", "pg_wal/000000010000000000000001"], ["backup-list"]):
        # In the data directory, as archive_command runs: a relative prefix lands there.
        argv = [walg_bin, "--config", str(config), *args]
        result = run_as_pg(argv, env=walg.env(), check=False, timeout=30, cwd=pgdata)
        assert result.returncode == 78, (args, result.stderr)
        assert str(config) in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert [p.name for p in pg_workdir.rglob("*.lz4")] == []
