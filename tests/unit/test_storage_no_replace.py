"""``open_write(key, overwrite=False)``: a write that must not replace an object (the storage
contract in walg.storage.base), on every backend that needs no server."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from walg.errors import StorageError
from walg.storage.base import Storage
from walg.storage.file import FileStorage


def test_a_write_that_must_not_replace_commits_when_the_key_is_free(storage: Storage) -> None:
    with storage.open_write("wal_005/a", overwrite=False) as sink:
        sink.write(b"first")
    assert storage.get_bytes("wal_005/a") == b"first"
    assert [o.key for o in storage.list("")] == ["wal_005/a"]


def test_a_write_that_must_not_replace_keeps_the_stored_object(storage: Storage) -> None:
    storage.put_bytes("wal_005/a", b"first")
    with (
        pytest.raises(StorageError, match="exists already"),
        storage.open_write("wal_005/a", overwrite=False) as sink,
    ):
        sink.write(b"second")
    assert storage.get_bytes("wal_005/a") == b"first"
    assert [o.key for o in storage.list("")] == ["wal_005/a"]


def test_an_object_stored_during_the_write_is_kept(storage: Storage) -> None:
    """The check is made when the write commits, not when it starts."""
    with pytest.raises(StorageError), storage.open_write("k", overwrite=False) as sink:
        sink.write(b"ours")
        storage.put_bytes("k", b"theirs")  # another writer, while ours is under way
        sink.write(b" still ours")
    assert storage.get_bytes("k") == b"theirs"


def test_file_storage_leaves_no_temporary_and_one_link(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    store = FileStorage(tmp_path / "store")
    store.put_bytes("wal_005/a", b"first")
    with pytest.raises(StorageError), store.open_write("wal_005/a", overwrite=False) as sink:
        sink.write(b"second")
    with store.open_write("wal_005/b", overwrite=False) as sink:
        sink.write(b"b")
    folder = tmp_path / "store" / "wal_005"
    assert sorted(os.listdir(folder)) == ["a", "b"]
    assert (folder / "b").stat().st_nlink == 1, "the temporary name is gone"


def test_racing_writes_that_must_not_replace_commit_exactly_one(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    store = FileStorage(tmp_path / "store")
    barrier = threading.Barrier(8)
    outcomes: list[bytes | None] = []
    lock = threading.Lock()

    def write(i: int) -> None:
        data = f"writer {i}".encode()
        try:
            with store.open_write("k", overwrite=False) as sink:
                sink.write(data)
                barrier.wait(timeout=30)
        except StorageError:
            data = b""
        with lock:
            outcomes.append(data or None)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    winners = [o for o in outcomes if o is not None]
    assert len(outcomes) == 8 and len(winners) == 1
    assert store.get_bytes("k") == winners[0]
