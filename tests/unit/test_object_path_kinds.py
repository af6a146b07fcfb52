"""What is at an object's path in a local storage folder, as backup-fetch sees it.

README: "An object's file may be a symbolic link to a file; anything else at an object's path
(a link to nothing, a folder, a FIFO) is an error for every command that looks that object up
(wal-fetch, wal-push's overwrite check, backup-fetch), never 'not there'". backup-fetch finds
its objects by a listing, which descends into a folder: the error must still name what is
in the way, not call the object missing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from test_backup_fetch_wal_g_layout import NAME, assert_restored, put_wal_g_backup, settings_for

from walg.core import naming
from walg.errors import ObjectNotFound, StorageError
from walg.ops.backup_fetch import backup_fetch
from walg.storage.file import FileStorage

PART = "part_001.tar.lz4"


def _folder(path: Path, original: Path) -> None:
    path.mkdir()
    shutil.copy(original, path / "copy")


def _fifo(path: Path, original: Path) -> None:
    os.mkfifo(path)


def _dangling_link(path: Path, original: Path) -> None:
    path.symlink_to(path.parent / "nowhere")


def _link_to_the_file(path: Path, original: Path) -> None:
    path.symlink_to(original)


def _backup_with_its_part_replaced(
    tmp_path: Path, make: Callable[[Path, Path], None]
) -> tuple[FileStorage, Path]:
    """A WAL-G backup in a storage folder, its part's file moved away and ``make(part,
    moved)`` put in its place; the storage and the part's path."""
    store = tmp_path / "store"
    store.mkdir()
    storage = FileStorage(store)
    put_wal_g_backup(storage)
    part = store / naming.partitions_prefix(NAME) / PART
    original = tmp_path / "moved-away"
    part.rename(original)
    make(part, original)
    return storage, part


@pytest.mark.parametrize(
    ("make", "kind"),
    [(_folder, "a folder"), (_fifo, "a FIFO"), (_dangling_link, "a symbolic link to a missing")],
)
def test_backup_fetch_names_what_is_in_an_object_s_place(
    tmp_path: Path, make: Callable[[Path, Path], None], kind: str
) -> None:
    storage, part = _backup_with_its_part_replaced(tmp_path, make)
    dest = tmp_path / "restore"
    with pytest.raises(StorageError) as caught:
        backup_fetch(settings_for(tmp_path), storage, str(dest), NAME)
    assert not isinstance(caught.value, ObjectNotFound)
    assert f"{part} is {kind}" in str(caught.value)
    assert "missing from storage" not in str(caught.value)
    assert not dest.exists()


def test_backup_fetch_follows_a_link_to_an_object_s_file(tmp_path: Path) -> None:
    storage, _ = _backup_with_its_part_replaced(tmp_path, _link_to_the_file)
    dest = tmp_path / "restore"
    backup_fetch(settings_for(tmp_path), storage, str(dest), NAME)
    assert_restored(dest)
