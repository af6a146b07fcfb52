"""The storage contract (src/walg/storage/base.py, DESIGN.md §4), run against every backend
that needs no server: MemoryStorage and FileStorage on a temporary directory."""

from __future__ import annotations

import fcntl
import io
import mmap
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from walg.errors import ObjectNotFound, StorageError
from walg.settings import load
from walg.storage.base import ObjectInfo, Storage, check_key
from walg.storage.file import (
    DIRECT_CHUNK,
    WRITEBACK_EVERY,
    FileStorage,
    _UploadFile,
    temporary_stamp,
)
from walg.storage.memory import MemoryStorage
from walg.storage.registry import open_storage

# What a temporary object's name ends with (see docs/FORMAT.md), as a pattern: the oracle
# for walg.storage.file.temporary_stamp, which matches it without re.
TEMP_SUFFIX_RE = re.compile(r"\.tmp\.\d{8}T\d{6}Z-[0-9a-f]{16}$")


class Boom(Exception):
    pass


def keys(storage: Storage, prefix: str, recursive: bool = True) -> list[str]:
    return sorted(info.key for info in storage.list(prefix, recursive))


def files_under(root: Path) -> list[str]:
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def new_store(tmp_path: Path) -> FileStorage:
    (tmp_path / "store").mkdir()  # walg makes no storage folder
    return FileStorage(tmp_path / "store")


def populate(storage: Storage) -> None:
    for key in (
        "basebackups_005/base_A_backup_stop_sentinel.json",
        "basebackups_005/base_A/metadata.json",
        "basebackups_005/base_A/tar_partitions/part_001.tar.lz4",
        "basebackups_005/base_AB_backup_stop_sentinel.json",
        "basebackups_005/base_B/metadata.json",
        "wal_005/000000010000000000000001.lz4",
        "top.txt",
    ):
        storage.put_bytes(key, key.encode())


class TestStorageContract:
    """One contract, every backend (the ``storage`` fixture is parametrized in conftest.py)."""

    def test_write_then_read(self, storage: Storage) -> None:
        with storage.open_write("a/b/c.bin") as sink:
            sink.write(b"hello ")
            sink.write(memoryview(b"world"))
        with storage.open_read("a/b/c.bin") as source:
            assert source.read() == b"hello world"
        info = storage.stat("a/b/c.bin")
        assert info.key == "a/b/c.bin"
        assert info.size == 11
        assert storage.exists("a/b/c.bin")
        assert storage.get_bytes("a/b/c.bin") == b"hello world"

    def test_empty_object(self, storage: Storage) -> None:
        storage.put_bytes("empty", b"")
        assert storage.stat("empty").size == 0
        assert storage.get_bytes("empty") == b""

    def test_large_object_streams(self, storage: Storage) -> None:
        chunk = os.urandom(1 << 20)
        with storage.open_write("big") as sink:
            for _ in range(5):
                sink.write(chunk)
        assert storage.stat("big").size == 5 << 20
        with storage.open_read("big") as source:
            first = source.read(1 << 20)
            assert first == chunk

    def test_list_with_a_limit_gives_at_most_that_many_of_the_listing(
        self, storage: Storage
    ) -> None:
        populate(storage)
        everything = keys(storage, "basebackups_005/")
        for limit in (1, 2, len(everything), len(everything) + 5):
            listed = [info.key for info in storage.list("basebackups_005/", limit=limit)]
            assert len(listed) == min(limit, len(everything)), limit
            assert len(set(listed)) == len(listed)
            assert set(listed) <= set(everything)
        assert storage.list("basebackups_005/", limit=0) == []
        sentinels = storage.list("basebackups_005/", recursive=False, limit=1)
        assert len(sentinels) == 1 and sentinels[0].key.endswith("_sentinel.json")
        assert storage.list("nothing/", limit=1) == []

    def test_write_visible_only_after_clean_exit(self, storage: Storage) -> None:
        with storage.open_write("x/obj") as sink:
            sink.write(b"partial")
            assert not storage.exists("x/obj")
            assert keys(storage, "x/") == []
            with pytest.raises(ObjectNotFound):
                storage.open_read("x/obj").__enter__()
        assert storage.get_bytes("x/obj") == b"partial"

    def test_exception_inside_write_leaves_nothing(self, storage: Storage) -> None:
        with pytest.raises(Boom), storage.open_write("x/obj") as sink:
            sink.write(b"half of it")
            raise Boom
        assert not storage.exists("x/obj")
        assert keys(storage, "") == []
        if isinstance(storage, FileStorage):
            assert files_under(Path(storage.root)) == []  # no temp file left behind

    def test_exception_inside_replacing_write_keeps_old_object(self, storage: Storage) -> None:
        storage.put_bytes("k", b"old")
        with pytest.raises(Boom), storage.open_write("k") as sink:
            sink.write(b"new new new")
            raise Boom
        assert storage.get_bytes("k") == b"old"
        if isinstance(storage, FileStorage):
            assert files_under(Path(storage.root)) == ["k"]

    def test_replace_existing_atomically(self, storage: Storage) -> None:
        storage.put_bytes("k", b"old content")
        with storage.open_write("k") as sink:
            sink.write(b"new")
            # Until the block exits, readers still see the complete old object.
            assert storage.get_bytes("k") == b"old content"
            assert storage.stat("k").size == 11
        assert storage.get_bytes("k") == b"new"
        assert keys(storage, "") == ["k"]

    def test_modified_time_advances_on_replace(self, storage: Storage) -> None:
        storage.put_bytes("k", b"1")
        first = storage.stat("k").modified
        time.sleep(0.01)
        storage.put_bytes("k", b"2")
        assert storage.stat("k").modified > first
        assert [i.modified for i in storage.list("k")] == [storage.stat("k").modified]

    @pytest.mark.parametrize(
        ("offset", "length", "expected"),
        [
            (0, None, b"0123456789"),
            (3, None, b"3456789"),
            (3, 4, b"3456"),
            (0, 0, b""),
            (8, 10, b"89"),
            (10, None, b""),
            (12, 5, b""),
        ],
    )
    def test_open_read_offset_and_length(
        self, storage: Storage, offset: int, length: int | None, expected: bytes
    ) -> None:
        storage.put_bytes("r", b"0123456789")
        with storage.open_read("r", offset, length) as source:
            got = b""
            while chunk := source.read(3):
                got += chunk
        assert got == expected

    def test_not_found_at_open_and_at_stat(self, storage: Storage) -> None:
        reader = storage.open_read("missing/key")
        with pytest.raises(ObjectNotFound) as info:
            reader.__enter__()
        assert info.value.key == "missing/key"
        with pytest.raises(ObjectNotFound):
            storage.stat("missing/key")
        assert not storage.exists("missing/key")
        with pytest.raises(ObjectNotFound):
            storage.get_bytes("missing/key")

    def test_not_found_is_a_storage_error_not_transient(self, storage: Storage) -> None:
        with pytest.raises(StorageError) as info:
            storage.stat("nope")
        assert info.value.transient is False

    def test_list_recursive(self, storage: Storage) -> None:
        populate(storage)
        assert keys(storage, "basebackups_005/") == sorted(
            [
                "basebackups_005/base_AB_backup_stop_sentinel.json",
                "basebackups_005/base_A_backup_stop_sentinel.json",
                "basebackups_005/base_A/metadata.json",
                "basebackups_005/base_A/tar_partitions/part_001.tar.lz4",
                "basebackups_005/base_B/metadata.json",
            ]
        )
        assert len(keys(storage, "")) == 7
        for info in storage.list(""):
            assert info.size == len(info.key)

    def test_list_non_recursive(self, storage: Storage) -> None:
        populate(storage)
        assert keys(storage, "basebackups_005/", recursive=False) == [
            "basebackups_005/base_AB_backup_stop_sentinel.json",
            "basebackups_005/base_A_backup_stop_sentinel.json",
        ]
        assert keys(storage, "", recursive=False) == ["top.txt"]

    def test_list_prefix_that_is_a_partial_name(self, storage: Storage) -> None:
        populate(storage)
        assert keys(storage, "basebackups_005/base_A") == sorted(
            [
                "basebackups_005/base_AB_backup_stop_sentinel.json",
                "basebackups_005/base_A_backup_stop_sentinel.json",
                "basebackups_005/base_A/metadata.json",
                "basebackups_005/base_A/tar_partitions/part_001.tar.lz4",
            ]
        )
        assert keys(storage, "basebackups_005/base_A/") == [
            "basebackups_005/base_A/metadata.json",
            "basebackups_005/base_A/tar_partitions/part_001.tar.lz4",
        ]
        assert keys(storage, "basebackups_005/base_A", recursive=False) == [
            "basebackups_005/base_AB_backup_stop_sentinel.json",
            "basebackups_005/base_A_backup_stop_sentinel.json",
        ]
        assert keys(storage, "wal_005/0000000100") == ["wal_005/000000010000000000000001.lz4"]
        assert keys(storage, "to") == ["top.txt"]

    def test_list_missing_prefix_is_empty(self, storage: Storage) -> None:
        assert keys(storage, "nothing/here/") == []
        populate(storage)
        assert keys(storage, "nothing/here/") == []
        assert keys(storage, "basebackups_005/base_C") == []
        assert keys(storage, "top.txt/") == []  # a prefix through an object

    def test_delete_is_idempotent(self, storage: Storage) -> None:
        populate(storage)
        storage.delete(["top.txt", "never/existed", "wal_005/000000010000000000000001.lz4"])
        assert not storage.exists("top.txt")
        storage.delete(["top.txt"])
        storage.delete([])
        assert len(keys(storage, "")) == 5

    def test_delete_batch_accepts_a_generator(self, storage: Storage) -> None:
        populate(storage)
        storage.delete(info.key for info in storage.list("basebackups_005/base_A/"))
        assert keys(storage, "basebackups_005/base_A/") == []
        assert storage.exists("basebackups_005/base_A_backup_stop_sentinel.json")

    @pytest.mark.parametrize(
        "key", ["../x", "/abs", "a//b", "a/../b", "./a", "a/./b", "..", "", "a\\b", "a\0b"]
    )
    def test_invalid_keys_rejected_on_write(self, storage: Storage, key: str) -> None:
        with pytest.raises(StorageError) as info, storage.open_write(key) as sink:
            sink.write(b"x")
        assert not isinstance(info.value, ObjectNotFound)
        assert keys(storage, "") == []
        if isinstance(storage, FileStorage):
            assert files_under(Path(storage.root).parent) == []

    @pytest.mark.parametrize("key", ["../x", "/abs", "a//b"])
    def test_invalid_keys_never_read(self, storage: Storage, key: str) -> None:
        with pytest.raises(StorageError):
            storage.stat(key)
        with pytest.raises(StorageError), storage.open_read(key):
            pass

    def test_get_bytes_limit(self, storage: Storage) -> None:
        storage.put_bytes("k", b"x" * 100)
        assert storage.get_bytes("k", limit=100) == b"x" * 100
        with pytest.raises(StorageError):
            storage.get_bytes("k", limit=99)


def test_check_key_accepts_normal_keys() -> None:
    for key in ("a", "a/b", "wal_005/000000010000000000000001.", "basebackups_005/x/y.json"):
        assert check_key(key) == key


def test_check_key_rejects_trailing_slash() -> None:
    with pytest.raises(StorageError):
        check_key("a/")


# --- FileStorage specifics --------------------------------------------------------------------


def test_file_temp_name_follows_wal_g_pattern_and_is_hidden(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    with storage.open_write("wal_005/seg.lz4") as sink:
        sink.write(b"data")
        names = os.listdir(tmp_path / "wal_005")
        assert len(names) == 1
        assert re.fullmatch(r"seg\.lz4\.tmp\.\d{8}T\d{6}Z-[0-9a-f]{16}", names[0]), names
        assert TEMP_SUFFIX_RE.search(names[0])
        stamp = names[0].split(".tmp.")[1][:16]
        assert (
            abs(time.mktime(time.strptime(stamp, "%Y%m%dT%H%M%SZ")) - time.mktime(time.gmtime()))
            < 120
        )
        assert keys(storage, "") == []
        assert keys(storage, "wal_005/") == []
    assert os.listdir(tmp_path / "wal_005") == ["seg.lz4"]


def test_file_list_hides_leftover_temp_files(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    storage.put_bytes("d/obj", b"1")
    (tmp_path / "d" / "obj.tmp.20240501T100000Z-0123456789abcdef").write_bytes(b"crash leftover")
    (tmp_path / "d" / "obj.tmp.note").write_bytes(b"not a temp name")
    assert keys(storage, "d/") == ["d/obj", "d/obj.tmp.note"]


def test_file_prefix_url_forms(tmp_path: Path) -> None:
    for root in (f"file://localhost{tmp_path}", f"file://{tmp_path}", str(tmp_path)):
        storage = FileStorage(root)
        assert storage.root == str(tmp_path)
        storage.put_bytes("k", root.encode())
        assert (tmp_path / "k").read_bytes() == root.encode()


def test_file_delete_prunes_empty_directories_but_not_root(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    storage = FileStorage(root)
    storage.put_bytes("basebackups_005/b/tar_partitions/part_001.tar.lz4", b"1")
    storage.put_bytes("basebackups_005/b/metadata.json", b"2")
    storage.put_bytes("basebackups_005/s.json", b"3")
    storage.delete(["basebackups_005/b/tar_partitions/part_001.tar.lz4"])
    assert not (root / "basebackups_005/b/tar_partitions").exists()
    assert (root / "basebackups_005/b").is_dir()
    storage.delete(["basebackups_005/b/metadata.json"])
    assert not (root / "basebackups_005/b").exists()
    assert (root / "basebackups_005").is_dir()  # still holds s.json
    storage.delete(["basebackups_005/s.json"])
    assert not (root / "basebackups_005").exists()
    assert root.is_dir()


def test_file_list_and_stat_of_directories(tmp_path: Path) -> None:
    """A folder is listed into, but where an object is looked up it is no object and no
    absence either: the archive is not what walg wrote, and "not found" would be a guess."""
    storage = FileStorage(tmp_path)
    storage.put_bytes("dir/obj", b"1")
    with pytest.raises(StorageError, match="is a folder") as caught:
        storage.stat("dir")
    assert not isinstance(caught.value, ObjectNotFound)
    with pytest.raises(StorageError, match="is a folder"):
        storage.exists("dir")
    with pytest.raises(StorageError, match="is a folder"), storage.open_read("dir"):
        pass
    assert keys(storage, "dir") == ["dir/obj"]
    assert keys(storage, "", recursive=False) == []


def _unreadable_entries(root: Path) -> dict[str, str]:
    """Entries that are not an object's file, by key, with what the error says."""
    (root / "wal_005").mkdir()
    os.symlink("/nonexistent/volume/seg.lz4", root / "wal_005" / "dangling.lz4")
    os.mkfifo(root / "wal_005" / "fifo.lz4")
    os.symlink("/dev/null", root / "wal_005" / "device.lz4")
    os.symlink("/nonexistent/volume", root / "linked")
    return {
        "wal_005/dangling.lz4": "symbolic link to a missing file",
        "wal_005/fifo.lz4": "is a FIFO",
        "wal_005/device.lz4": "is a character device",
        "linked/seg.lz4": "not a folder",
    }


def test_file_an_entry_that_is_no_object_is_an_error_not_absent(tmp_path: Path) -> None:
    """A dangling link (an object moved to a volume not mounted), a FIFO, a device, a folder
    that is a link to nothing: stat, exists and open_read raise a StorageError that is not
    ObjectNotFound (wal-fetch answers "not in the archive" to that, and PostgreSQL promotes),
    and open_read never blocks on the FIFO."""
    storage = FileStorage(tmp_path)
    for key, message in _unreadable_entries(tmp_path).items():
        for look in (storage.stat, storage.exists):
            with pytest.raises(StorageError, match=message) as caught:
                look(key)
            assert not isinstance(caught.value, ObjectNotFound), key
        with pytest.raises(StorageError, match=message) as caught, storage.open_read(key):
            pass
        assert not isinstance(caught.value, ObjectNotFound), key
    # A name with nothing at it is absent, in a folder that exists or not.
    for key in ("wal_005/none.lz4", "basebackups_005/x/metadata.json"):
        assert not storage.exists(key)
        with pytest.raises(ObjectNotFound):
            storage.stat(key)
        with pytest.raises(ObjectNotFound), storage.open_read(key):
            pass
    # A link to an object's file is that object.
    (tmp_path / "elsewhere").write_bytes(b"moved")
    os.symlink(tmp_path / "elsewhere", tmp_path / "wal_005" / "linked.lz4")
    assert storage.stat("wal_005/linked.lz4").size == 5
    assert storage.get_bytes("wal_005/linked.lz4") == b"moved"


def test_file_an_object_stored_during_a_look_is_absent_or_present_never_an_error(
    tmp_path: Path,
) -> None:
    """backup-push polls for the segment it waits for while wal-push commits it: a look whose
    stat found nothing and then found the committed file called it "a symbolic link to a
    missing file", and the backup failed (seen in CI). Another process commits and removes
    the object as fast as it can; every look must say absent or present."""
    storage = FileStorage(tmp_path)
    storage.put_bytes("wal_005/source", b"seg")
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys\n"
            "src, dst = sys.argv[1:]\n"
            "while True:\n"
            "    try:\n"
            "        os.link(src, dst)\n"
            "    except FileExistsError:\n"
            "        pass\n"
            "    os.unlink(dst)\n",
            str(tmp_path / "wal_005" / "source"),
            str(tmp_path / "wal_005" / "seg.lz4"),
        ]
    )
    try:
        seen: set[bool] = set()
        errors: list[str] = []
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                seen.add(storage.exists("wal_005/seg.lz4"))
            except StorageError as exc:
                errors.append(str(exc))
    finally:
        writer.kill()
        writer.wait()
    assert not errors, (len(errors), errors[0])
    assert seen == {True, False}  # the race was run: both states were seen


@pytest.mark.parametrize("name", ["dangling", "fifo", "device"])
def test_file_listing_a_folder_with_an_entry_that_is_no_object_fails(
    tmp_path: Path, name: str
) -> None:
    """Skipping it would show a gap (or a missing backup) where the archive has something
    that cannot be read."""
    storage = FileStorage(tmp_path)
    _unreadable_entries(tmp_path)
    storage.put_bytes("wal_005/good.lz4", b"1")
    with pytest.raises(StorageError) as caught:
        storage.list(f"wal_005/{name}", recursive=False)
    assert not isinstance(caught.value, ObjectNotFound)
    with pytest.raises(StorageError, match="not a folder"):
        storage.list("linked/")
    assert keys(storage, "wal_005/good") == ["wal_005/good.lz4"]


def test_file_listing_follows_linked_folders_but_not_in_loops(tmp_path: Path) -> None:
    storage = new_store(tmp_path)
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "part_001.tar.lz4").write_bytes(b"1")
    storage.put_bytes("b/metadata.json", b"{}")
    os.symlink(tmp_path / "parts", tmp_path / "store" / "b" / "tar_partitions")
    assert keys(storage, "b/") == ["b/metadata.json", "b/tar_partitions/part_001.tar.lz4"]
    os.symlink(tmp_path / "store" / "b", tmp_path / "parts" / "loop")
    with pytest.raises(StorageError, match="links back"):
        storage.list("b/")


def test_file_missing_root_is_never_made_nor_listed_as_empty(tmp_path: Path) -> None:
    """WALG_FILE_PREFIX's folder on a volume not mounted: walg neither reads it as an empty
    archive nor builds it (and the archive with it) on the file system beneath, as WAL-G
    refuses it ("FS storage root directory doesn't exist")."""
    root = tmp_path / "mnt" / "volume" / "pgarchive"
    storage = FileStorage(root)
    for prefix in ("", "wal_005/", "basebackups_005/"):
        with pytest.raises(StorageError, match="does not exist") as caught:
            storage.list(prefix)
        assert not isinstance(caught.value, ObjectNotFound)
    for look in (storage.stat, storage.exists):
        with pytest.raises(StorageError, match="does not exist") as caught:
            look("wal_005/000000010000000000000001.lz4")
        assert not isinstance(caught.value, ObjectNotFound)
    with pytest.raises(StorageError, match="does not exist"):
        storage.put_bytes("wal_005/000000010000000000000001.lz4", b"1")
    assert not (tmp_path / "mnt").exists()
    # WALG_STORAGE_PREFIX names a folder inside it, which is made when first written.
    (tmp_path / "top").mkdir()
    sub = FileStorage(tmp_path / "top" / "a" / "b", top=tmp_path / "top")
    sub.check_available()
    assert keys(sub, "") == []
    sub.put_bytes("wal_005/x", b"1")
    assert (tmp_path / "top" / "a" / "b" / "wal_005" / "x").read_bytes() == b"1"


def test_file_missing_root_is_not_available(tmp_path: Path) -> None:
    FileStorage(tmp_path).check_available()
    with pytest.raises(StorageError, match="does not exist"):
        FileStorage(tmp_path / "unmounted").check_available()
    (tmp_path / "a-file").write_bytes(b"")
    with pytest.raises(StorageError, match="not a folder"):
        FileStorage(tmp_path / "a-file").check_available()


def test_file_make_durable_needs_the_object_and_changes_nothing(tmp_path: Path) -> None:
    """make_durable vouches for an object another writer stored: a missing one is absent, a
    FIFO or a link to nothing is an error (never opened: a FIFO would wait for a writer),
    and a real one is left as it is."""
    root = tmp_path / "store"
    root.mkdir()
    storage = FileStorage(root)
    with pytest.raises(ObjectNotFound):
        storage.make_durable("wal_005/000000010000000000000001.lz4")
    storage.put_bytes("wal_005/obj", b"x")
    before = os.stat(root / "wal_005" / "obj")
    storage.make_durable("wal_005/obj")
    after = os.stat(root / "wal_005" / "obj")
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino,
        before.st_mtime_ns,
        1,
    )
    os.mkfifo(root / "wal_005" / "fifo")
    os.symlink("/nonexistent/volume/seg", root / "wal_005" / "dangling")
    for key, why in (("wal_005/fifo", "FIFO"), ("wal_005/dangling", "symbolic link")):
        with pytest.raises(StorageError, match=why) as info:
            storage.make_durable(key)
        assert not isinstance(info.value, ObjectNotFound)
    MemoryStorage().make_durable("anything")  # acknowledged writes are durable: nothing to do


def test_file_stat_modified_time_is_the_file_mtime(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    storage.put_bytes("k", b"1")
    os.utime(tmp_path / "k", ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    assert storage.stat("k").modified.ns == 1_700_000_000_123_456_789
    assert storage.list("k")[0].modified.ns == 1_700_000_000_123_456_789


def test_file_list_never_leaves_the_root(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_bytes(b"x")
    (tmp_path / "root").mkdir()
    storage = FileStorage(tmp_path / "root")
    storage.put_bytes("inside", b"1")
    for hostile in ("../", "../outside/", "a/../../"):
        with pytest.raises(StorageError):
            storage.list(hostile)
    assert keys(storage, "") == ["inside"]


def test_memory_storage_helpers_for_corruption_tests() -> None:
    storage = MemoryStorage()
    storage.put_bytes("k", b"abc")
    before = storage.stat("k").modified
    storage.replace_raw("k", b"xyz!")
    assert storage.raw("k") == b"xyz!"
    assert storage.stat("k").size == 4
    assert storage.stat("k").modified == before


def test_memory_storage_modified_times_strictly_increase() -> None:
    storage = MemoryStorage()
    for i in range(50):
        storage.put_bytes(f"k{i}", b"")
    stamps = [storage.stat(f"k{i}").modified for i in range(50)]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == 50


class _ShortWrites(io.FileIO):
    """A real file whose writes stop after at most 1000 bytes, as a signal can make them."""

    def write(self, data: bytes | memoryview, /) -> int:  # type: ignore[override]
        return super().write(memoryview(data)[:1000])


def test_file_upload_writes_are_whole_even_when_the_system_writes_short(tmp_path: Path) -> None:
    path = tmp_path / "object"
    data = os.urandom(3 * WRITEBACK_EVERY + 12345)
    with _ShortWrites(path, "wb") as handle:
        sink = _UploadFile(handle)
        for start in range(0, len(data), 700_000):
            chunk = data[start : start + 700_000]
            assert sink.write(chunk) == len(chunk)
    assert path.read_bytes() == data


def test_file_upload_counts_bytes_not_items_of_a_wide_view(tmp_path: Path) -> None:
    storage = new_store(tmp_path)
    data = os.urandom(3 * WRITEBACK_EVERY)
    with storage.open_write("wide") as sink:
        assert sink.write(memoryview(data).cast("Q")) == len(data)
    assert storage.get_bytes("wide") == data


def test_file_upload_of_many_megabytes_round_trips(tmp_path: Path) -> None:
    storage = new_store(tmp_path)
    data = os.urandom(5 * WRITEBACK_EVERY + 7)
    with storage.open_write("big/object") as sink:
        for start in range(0, len(data), 300_000):
            sink.write(data[start : start + 300_000])
    assert storage.get_bytes("big/object") == data


def _is_direct(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


@pytest.mark.parametrize(
    "size",
    [0, 1, 4095, 4096, DIRECT_CHUNK - 1, DIRECT_CHUNK, DIRECT_CHUNK + 1, 3 * DIRECT_CHUNK + 12345],
)
def test_file_upload_writes_direct_and_round_trips(tmp_path: Path, size: int) -> None:
    storage = new_store(tmp_path)
    data = os.urandom(size)
    with storage.open_write("obj") as sink:
        assert isinstance(sink, _UploadFile)
        if not sink.direct:
            pytest.skip("this filesystem takes no O_DIRECT")
        assert _is_direct(sink.fileno())
        for start in range(0, size, 333_333):
            sink.write(data[start : start + 333_333])
        if not size:
            sink.write(b"")
    assert storage.get_bytes("obj") == data
    assert not [p for p in (tmp_path / "store").iterdir() if TEMP_SUFFIX_RE.search(p.name)]


def test_file_upload_staging_buffer_is_reused(tmp_path: Path) -> None:
    storage = new_store(tmp_path)
    for i in range(3):
        with storage.open_write(f"obj{i}") as sink:
            assert isinstance(sink, _UploadFile)
            if not sink.direct:
                pytest.skip("this filesystem takes no O_DIRECT")
            sink.write(b"x" * (DIRECT_CHUNK + i))
    assert len(storage._stages) == 1
    assert [storage.get_bytes(f"obj{i}") for i in range(3)] == [
        b"x" * (DIRECT_CHUNK + i) for i in range(3)
    ]


def test_file_upload_goes_on_buffered_when_a_direct_write_is_refused(tmp_path: Path) -> None:
    """A short write breaks O_DIRECT's alignment: the kernel refuses the next direct write
    (EINVAL) and the file goes on through the page cache from where it was."""
    path = tmp_path / "object"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o600)
    except OSError:
        pytest.skip("this filesystem takes no O_DIRECT")
    data = os.urandom(3 * DIRECT_CHUNK + 777)
    with _ShortWrites(fd, "wb") as handle:
        sink = _UploadFile(handle, mmap.mmap(-1, DIRECT_CHUNK))
        assert sink.direct
        for start in range(0, len(data), 700_000):
            chunk = data[start : start + 700_000]
            assert sink.write(chunk) == len(chunk)
        assert not sink.direct and not _is_direct(fd)
        assert sink.finish() is None
    assert path.read_bytes() == data


def test_file_upload_through_the_page_cache_when_direct_io_is_off(tmp_path: Path) -> None:
    """WALG_FILE_DIRECT_IO=false, through the settings to the storage walg opens."""
    (tmp_path / "home").mkdir()
    environ = {
        "HOME": str(tmp_path / "home"),
        "WALG_FILE_PREFIX": str(tmp_path / "store"),
        "WALG_FILE_DIRECT_IO": "false",
    }
    (tmp_path / "store").mkdir()
    storage = open_storage(load(environ=environ))
    data = os.urandom(2 * DIRECT_CHUNK + 5)
    with storage.open_write("obj") as sink:
        assert isinstance(sink, _UploadFile)
        assert not sink.direct and not _is_direct(sink.fileno())
        sink.write(data)
    assert storage.get_bytes("obj") == data


def test_file_new_folders_are_made_durable_in_their_parents(tmp_path: Path) -> None:
    """Each folder a write creates is fsynced in its parent (the object's own folder is
    fsynced after the rename): watched with strace, as a crash cannot be staged here."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (scripts/setup.sh installs it)")
    root = tmp_path / "store"
    root.mkdir()
    code = (
        "import sys; from walg.storage.file import FileStorage;"
        "s = FileStorage(sys.argv[1]); s.put_bytes('basebackups_005/b/tar_partitions/p', b'x');"
        "s.put_bytes('basebackups_005/b/tar_partitions/q', b'y')"
    )
    trace = tmp_path / "trace"
    watch = [strace, "-f", "-qq", "-y", "-e", "trace=mkdir,mkdirat,fsync", "-o", str(trace)]
    subprocess.run([*watch, sys.executable, "-c", code, str(root)], check=True, timeout=60)
    created: list[str] = []
    synced: list[str] = []
    for line in trace.read_text().splitlines():
        made = re.search(r'mkdir(?:at)?\((?:AT_FDCWD<[^>]*>, )?"([^"]+)", \d+\) = 0', line)
        if made:
            created.append(made.group(1))
        done = re.search(r"fsync\(\d+<([^>]+)>\) = 0", line)
        if done:
            synced.append(done.group(1))
    assert created == [
        str(root / "basebackups_005"),
        str(root / "basebackups_005" / "b"),
        str(root / "basebackups_005" / "b" / "tar_partitions"),
    ]
    for folder in created:
        assert os.path.dirname(folder) in synced, (folder, synced)
    # The second write creates nothing and syncs only its object and its folder.
    assert synced.count(str(root / "basebackups_005" / "b" / "tar_partitions")) == 2


def test_file_list_memory_is_the_result_not_the_folder_twice(tmp_path: Path) -> None:
    """A wal_005/ of many objects is read as it is listed: the peak is the result itself,
    not every directory entry held beside it (about 1.1 KB per object before)."""
    import tracemalloc

    wal = tmp_path / "wal_005"
    wal.mkdir()
    count = 20_000
    for n in range(count):
        (wal / f"{n:024X}.lz4").touch()
    storage = FileStorage(tmp_path)
    tracemalloc.start()
    try:
        listed = storage.list("wal_005/")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(listed) == count
    assert peak / count < 600, f"{peak / count:.0f} bytes per object"


def _many_wal_objects(root: Path, count: int) -> None:
    wal = root / "wal_005"
    wal.mkdir()
    for n in range(count):
        (wal / f"{n:024X}.lz4").touch()


def _peak_bytes(call: Callable[[], object]) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


def test_file_list_with_a_limit_stops_at_it(tmp_path: Path) -> None:
    """A limited listing of a big folder holds what it returns, not the folder: the whole
    listing of these 20,000 objects peaks at several MB."""
    _many_wal_objects(tmp_path, 20_000)
    storage = FileStorage(tmp_path)
    storage.list("wal_005/0", limit=1)  # the imports of a first call are not the listing's
    found: list[list[ObjectInfo]] = []
    peak = _peak_bytes(lambda: found.append(storage.list("wal_005/", limit=1)))
    assert len(found[0]) == 1
    assert peak < 64 << 10, peak


def test_the_archive_check_of_an_archive_without_backups_does_not_walk_its_wal(
    tmp_path: Path,
) -> None:
    """The daemon's check whether storage can be the server's archive at all, after a fetch
    found nothing, listed the whole WAL folder where there are no backups (73 MiB and 2.2 s at
    200,000 objects). It needs one object to know the archive is not empty."""
    from walg.ops.archive_check import archive_problem

    _many_wal_objects(tmp_path, 20_000)
    (tmp_path / "basebackups_005").mkdir()
    storage = FileStorage(tmp_path)
    assert archive_problem(storage, "0" * 23 + "9") is None  # the imports of a first call
    answers: list[str | None] = []
    peak = _peak_bytes(lambda: answers.append(archive_problem(storage, "0" * 23 + "9")))
    assert answers == [None]
    assert peak < 64 << 10, peak


def test_a_relative_storage_folder_is_written_in_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WALG_FILE_PREFIX=relstore (or a number in a JSON config): the first write into a fresh
    store makes relstore/wal_005/, durably, in the working folder; relstore/ must exist."""
    monkeypatch.chdir(tmp_path)
    storage = FileStorage("relstore")
    with pytest.raises(StorageError, match="does not exist"):
        storage.put_bytes("wal_005/000000010000000000000007.lz4", b"x")
    (tmp_path / "relstore").mkdir()
    storage.put_bytes("wal_005/000000010000000000000007.lz4", b"x")
    assert (tmp_path / "relstore" / "wal_005" / "000000010000000000000007.lz4").read_bytes() == b"x"


def test_remove_temporaries_takes_only_old_temporary_files_of_its_folder(
    storage: Storage, tmp_path: Path
) -> None:
    """Leftovers of killed writers go; a young temporary file (an upload in flight), objects,
    and other folders stay. Backends that leave nothing behind do nothing."""
    storage.put_bytes("wal_005/000000010000000000000001.lz4", b"archived")
    storage.put_bytes("basebackups_005/x/part_1.tar.lz4", b"part")
    if not isinstance(storage, FileStorage):
        assert storage.remove_temporaries("wal_005/", 0) == 0
        return
    wal = tmp_path / "store" / "wal_005"

    def temporary(folder: Path, age: float) -> Path:
        when = time.time() - age
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))
        path = folder / f"000000010000000000000002.lz4.tmp.{stamp}-{os.urandom(8).hex()}"
        path.write_bytes(b"partial")
        os.utime(path, (when, when))
        return path

    old, young = temporary(wal, 7200), temporary(wal, 10)
    # Stamped long ago but written just now (a copy of an old one, a clock put right).
    rewritten = temporary(wal, 7200)
    os.utime(rewritten)
    below = temporary(tmp_path / "store" / "basebackups_005" / "x", 7200)
    assert storage.remove_temporaries("wal_005/", 3600) == 1
    assert not old.exists()
    assert young.exists() and rewritten.exists() and below.exists()
    assert storage.get_bytes("wal_005/000000010000000000000001.lz4") == b"archived"
    assert storage.remove_temporaries("nothing_here/", 0) == 0

    # Dated ahead by a clock that was (an hour fast, or years off and set right): one that
    # far ahead was kept until the clock reached its date, for good at 2100. A write the
    # clock was stepped back under by less than the age is a live one.
    ahead, far_ahead = temporary(wal, -7200), temporary(wal, time.time() - 4102444800.0)
    stepped_back = temporary(wal, -600)
    assert storage.remove_temporaries("wal_005/", 3600) == 2
    assert not ahead.exists() and not far_ahead.exists()
    assert stepped_back.exists()


def test_a_temporary_file_that_could_not_be_removed_is_removed_later(tmp_path: Path) -> None:
    """A write fails, and its temporary file cannot be removed then (the folder was made
    unwritable): the write's own error is reported, and the next remove_temporaries removes
    the file whatever its age. Run as the server user: root may remove files anyway."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the writer as another user")
    import walg
    from pgcluster import pg_tmpdir, pg_user_env, run_as_pg

    root = pg_tmpdir(prefix="tmp-left-")
    script = """
import os, sys
from walg.storage.file import FileStorage
root = sys.argv[1]
storage = FileStorage(root, direct_io=False)
wal = os.path.join(root, "wal_005")
try:
    with storage.open_write("wal_005/000000010000000000000001.lz4") as sink:
        sink.write(b"x" * 1000)
        os.chmod(wal, 0o500)
        raise OSError(28, "No space left on device")
except Exception as exc:
    print("error:", type(exc).__name__, exc)
os.chmod(wal, 0o700)
print("left:", len(os.listdir(wal)))
print("removed:", storage.remove_temporaries("wal_005/", 3600))
print("left:", len(os.listdir(wal)))
"""
    try:
        source = str(Path(walg.__file__).parents[1])
        env = {**pg_user_env(), "PATH": os.environ.get("PATH", ""), "PYTHONPATH": source}
        out = run_as_pg([sys.executable, "-c", script, str(root)], env=env, check=False)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].startswith("error: StorageError cannot write"), lines
        assert lines[0].endswith("No space left on device"), lines
        assert lines[1:] == ["left: 1", "removed: 1", "left: 0"], lines
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_fstab_mount_points_are_read_as_the_system_reads_them() -> None:
    from walg.storage.mounts import fstab_mount_points

    text = (
        "# /etc/fstab\n"
        "UUID=1 / ext4 defaults 0 1\n"
        "UUID=2 /var/backups/pg ext4 defaults,nofail 0 2\n"
        "  UUID=3   /mnt/with\\040space//  xfs  noauto  0 0\n"
        "/dev/sdb2 none swap sw 0 0\n"
        "/swapfile swap swap defaults 0 0\n"
        "#UUID=4 /mnt/commented ext4 defaults 0 2\n"
        "proc proc proc defaults 0 0\n"
        "broken-line\n"
    )
    assert fstab_mount_points(text) == {"/var/backups/pg", "/mnt/with space"}


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_file_storage_on_a_listed_mount_point_that_is_not_mounted_is_unavailable(
    tmp_path: Path,
) -> None:
    """WALG_FILE_PREFIX names the mount point of a backup volume that is not mounted: the
    empty folder beneath is there, and walg used it as an empty archive (WAL written to the
    wrong disk, a restore told "not in the archive"). Also a folder made under it then."""
    volume = tmp_path / "volume"
    (volume / "made-while-unmounted").mkdir(parents=True)
    fstab = tmp_path / "fstab"
    fstab.write_text(f"tmpfs {volume} tmpfs defaults 0 0\n")
    for top in (volume, volume / "made-while-unmounted"):
        storage = FileStorage(top, fstab=str(fstab))
        with pytest.raises(StorageError, match=f"{volume}, a mount point .* not mounted"):
            storage.check_available()
        with pytest.raises(StorageError, match="not mounted"):
            storage.put_bytes("wal_005/000000010000000000000001.lz4", b"x")
        assert not (top / "wal_005").exists()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(volume)], check=True)
    try:
        storage = FileStorage(volume, fstab=str(fstab))
        storage.check_available()
        storage.put_bytes("wal_005/000000010000000000000001.lz4", b"x")
        assert storage.get_bytes("wal_005/000000010000000000000001.lz4") == b"x"
        # Not in the table: nothing is known about it.
        FileStorage(tmp_path, fstab=str(tmp_path / "no-such-fstab")).check_available()
    finally:
        subprocess.run(["umount", str(volume)], check=True)
    # Unmounted under a storage already open (a daemon's): its next write is refused.
    with pytest.raises(StorageError, match="not mounted"):
        storage.put_bytes("wal_005/000000010000000000000002.lz4", b"y")
    # A bind mount from the same file system is mounted too (os.path.ismount cannot tell).
    source = tmp_path / "bind-source"
    source.mkdir()
    subprocess.run(["mount", "--bind", str(source), str(volume)], check=True)
    try:
        assert not os.path.ismount(volume)
        FileStorage(volume, fstab=str(fstab)).put_bytes("wal_005/bound.lz4", b"z")
        assert (source / "wal_005" / "bound.lz4").read_bytes() == b"z"
    finally:
        subprocess.run(["umount", str(volume)], check=True)


@pytest.mark.parametrize(
    "name",
    [
        "000000010000000000000001.lz4.tmp.20261127T024153Z-c3ac1c7a8b3e80ee",
        ".tmp.20261127T024153Z-c3ac1c7a8b3e80ee",
        "x.tmp.20261127T024153Z-C3AC1C7A8B3E80EE",  # upper-case hex
        "x.tmp.20261127T024153Z-c3ac1c7a8b3e80e",  # 15 hex digits
        "x.tmp.20261127T024153Z-c3ac1c7a8b3e80eee",  # 17
        "x.tmp.2026112XT024153Z-c3ac1c7a8b3e80ee",
        "x.tmp.20261127X024153Z-c3ac1c7a8b3e80ee",
        "x.tmp.20261127T024153X-c3ac1c7a8b3e80ee",
        "x.tmp.20261127T024153Z_c3ac1c7a8b3e80ee",
        "x.tmq.20261127T024153Z-c3ac1c7a8b3e80ee",
        "x.tmp.20261127T024153Z-c3ac1c7a8b3e80ee.lz4",
        "000000010000000000000001.lz4",
        "",
    ],
)
def test_temporary_names_are_told_as_the_pattern_tells_them(name: str) -> None:
    """Listings leave out, and sweeps remove, exactly the names the pattern matches."""
    found = TEMP_SUFFIX_RE.search(name)
    assert temporary_stamp(name) == (found.group()[5:21] if found else None)
