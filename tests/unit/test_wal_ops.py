"""walg.ops.wal_push / wal_fetch end to end on MemoryStorage and FileStorage (no PostgreSQL)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import lz4.frame
import pytest

import fakewal
from lz4frames import check_trailer_object
from walg.errors import (
    FormatError,
    IntegrityError,
    StorageError,
    UsageError,
    WalNotFound,
    WalOverwriteError,
)
from walg.ops.wal import find_wal_object
from walg.ops.wal_fetch import wal_fetch
from walg.ops.wal_push import push_one, stored_refusal, wal_push
from walg.settings import Settings, load
from walg.storage.base import Storage
from walg.storage.faults import FaultRule, FaultyStorage

SEG = "000000010000000000000003"
SEG_SIZE = 16 * 1024 * 1024


def make_settings(tmp_path: Path, **values: str) -> Settings:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return load(environ={"HOME": str(home), "WALG_FILE_PREFIX": str(tmp_path / "store"), **values})


def segment_bytes(seed: int) -> bytes:
    """16 MiB that look like WAL: a page header-ish start, mostly compressible, some noise."""
    noise = os.urandom(64 * 1024)
    page = (seed.to_bytes(4, "little") + bytes(8188))[:8192]
    body = page * (SEG_SIZE // 8192 // 2)
    return (noise + body + noise * 100)[:SEG_SIZE].ljust(SEG_SIZE, b"\0")


def write_wal(directory: Path, name: str, data: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(data)
    return path


def stored(storage: Storage, key: str) -> bytes:
    return storage.get_bytes(key, limit=64 << 20)


@pytest.fixture(scope="module")
def wal_a() -> bytes:
    return segment_bytes(1)


@pytest.fixture(scope="module")
def wal_b() -> bytes:
    return segment_bytes(2)


def test_push_stores_lz4_object_under_wal_005(
    storage: Storage, tmp_path: Path, wal_a: bytes
) -> None:
    path = write_wal(tmp_path / "pg_wal", SEG, wal_a)
    result = wal_push(make_settings(tmp_path), storage, str(path))
    key = f"wal_005/{SEG}.lz4"
    assert result.key == key
    assert result.uploaded is True
    assert result.raw_size == SEG_SIZE
    assert [i.key for i in storage.list("wal_005/")] == [key]
    raw = stored(storage, key)
    assert result.stored_size == len(raw) < SEG_SIZE
    assert raw[:4] == bytes.fromhex("04224D18")
    assert lz4.frame.decompress(raw) == wal_a  # what WAL-G's lz4 reader will see
    # No content checksum in the frame: walg's digest trailer follows it.
    assert check_trailer_object(raw) == wal_a


def test_push_with_none_compression_has_no_extension(
    storage: Storage, tmp_path: Path, wal_a: bytes
) -> None:
    path = write_wal(tmp_path / "pg_wal", SEG, wal_a)
    result = wal_push(make_settings(tmp_path, WALG_COMPRESSION_METHOD="none"), storage, str(path))
    assert result.key == f"wal_005/{SEG}"
    assert stored(storage, f"wal_005/{SEG}") == wal_a


@pytest.mark.parametrize(
    "name",
    ["00000002.history", "000000010000000000000004.00000028.backup", f"{SEG}.partial"],
)
def test_push_other_wal_file_kinds(storage: Storage, tmp_path: Path, name: str) -> None:
    data = b"1\t0/3000000\tno recovery target specified\n"
    path = write_wal(tmp_path / "pg_wal", name, data)
    result = wal_push(make_settings(tmp_path), storage, str(path))
    assert result.key == f"wal_005/{name}.lz4"
    assert lz4.frame.decompress(stored(storage, result.key)) == data


def test_push_again_identical_succeeds_without_rewriting(
    storage: Storage, tmp_path: Path, wal_a: bytes
) -> None:
    path = write_wal(tmp_path / "pg_wal", SEG, wal_a)
    settings = make_settings(tmp_path)
    wal_push(settings, storage, str(path))
    key = f"wal_005/{SEG}.lz4"
    before = storage.stat(key)
    raw_before = stored(storage, key)
    time.sleep(0.02)
    again = wal_push(settings, storage, str(path))
    assert again.uploaded is False
    assert again.key == key
    after = storage.stat(key)
    assert after.modified == before.modified
    assert stored(storage, key) == raw_before
    assert [i.key for i in storage.list("")] == [key]


def test_push_different_content_is_refused_and_archive_unchanged(
    storage: Storage, tmp_path: Path, wal_a: bytes, wal_b: bytes
) -> None:
    settings = make_settings(tmp_path)
    wal_push(settings, storage, str(write_wal(tmp_path / "one", SEG, wal_a)))
    key = f"wal_005/{SEG}.lz4"
    before = storage.stat(key)
    raw_before = stored(storage, key)
    with pytest.raises(WalOverwriteError) as info:
        wal_push(settings, storage, str(write_wal(tmp_path / "two", SEG, wal_b)))
    assert SEG in str(info.value)
    assert info.value.exit_code not in (0, 74) and info.value.exit_code < 126
    assert stored(storage, key) == raw_before
    assert storage.stat(key).modified == before.modified
    assert [i.key for i in storage.list("")] == [key]


def test_a_refusal_says_whose_the_archived_segment_is(storage: Storage, tmp_path: Path) -> None:
    """The first segment of a cluster initdb made anew, where the one it replaced archived
    the same name: the refusal says whose the stored one is and what to do."""
    settings = make_settings(tmp_path)
    name = "000000010000000000000001"
    old, new = 7000000000000000001, 7000000000000000002
    first = write_wal(tmp_path / "old", name, fakewal.segment_bytes(name, old))
    wal_push(settings, storage, str(first))
    with pytest.raises(WalOverwriteError) as info:
        wal_push(
            settings,
            storage,
            str(write_wal(tmp_path / "new", name, fakewal.segment_bytes(name, new))),
        )
    message = str(info.value)
    assert "another database system" in message and f"{old}" in message and f"{new}" in message
    # Same system, other content (pg_resetwal without -l): said so.
    with pytest.raises(WalOverwriteError) as info:
        wal_push(
            settings,
            storage,
            str(write_wal(tmp_path / "again", name, fakewal.segment_bytes(name, old, fill=b"x"))),
        )
    assert "another database system" not in str(info.value)
    assert "same database system" in str(info.value) and "pg_resetwal -l" in str(info.value)


@pytest.mark.parametrize("cut", ["shorter", "longer"])
def test_push_prefix_or_extension_of_archived_content_is_different(
    storage: Storage, tmp_path: Path, wal_a: bytes, cut: str
) -> None:
    settings = make_settings(tmp_path)
    wal_push(settings, storage, str(write_wal(tmp_path / "one", SEG, wal_a)))
    other = wal_a[:-1] if cut == "shorter" else wal_a + b"\0"
    with pytest.raises(WalOverwriteError):
        wal_push(settings, storage, str(write_wal(tmp_path / "two", SEG, other)))


def test_history_files_always_checked_even_with_overwrite_allowed(
    storage: Storage, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, WALG_PREVENT_WAL_OVERWRITE="false")
    name = "00000002.history"
    wal_push(settings, storage, str(write_wal(tmp_path / "one", name, b"1\t0/3000000\treason\n")))
    # Same content again: fine.
    same = wal_push(
        settings, storage, str(write_wal(tmp_path / "two", name, b"1\t0/3000000\treason\n"))
    )
    assert same.uploaded is False
    with pytest.raises(WalOverwriteError):
        wal_push(settings, storage, str(write_wal(tmp_path / "three", name, b"1\t0/5000000\tx\n")))
    out = tmp_path / "restored"
    wal_fetch(make_settings(tmp_path), storage, name, str(out))
    assert out.read_bytes() == b"1\t0/3000000\treason\n"


def test_segments_may_be_overwritten_when_prevention_is_off(
    storage: Storage, tmp_path: Path, wal_a: bytes, wal_b: bytes
) -> None:
    settings = make_settings(tmp_path, WALG_PREVENT_WAL_OVERWRITE="false")
    wal_push(settings, storage, str(write_wal(tmp_path / "one", SEG, wal_a)))
    result = wal_push(settings, storage, str(write_wal(tmp_path / "two", SEG, wal_b)))
    assert result.uploaded is True
    assert lz4.frame.decompress(stored(storage, f"wal_005/{SEG}.lz4")) == wal_b


def test_overwrite_check_sees_objects_stored_without_extension(
    storage: Storage, tmp_path: Path
) -> None:
    storage.put_bytes(f"wal_005/{SEG}", b"archived by WAL-G with compression none")
    settings = make_settings(tmp_path)
    with pytest.raises(WalOverwriteError):
        wal_push(settings, storage, str(write_wal(tmp_path, SEG, b"something else")))
    same = wal_push(
        settings,
        storage,
        str(write_wal(tmp_path / "b", SEG, b"archived by WAL-G with compression none")),
    )
    assert same.uploaded is False
    assert [i.key for i in storage.list("")] == [f"wal_005/{SEG}"]


@pytest.mark.parametrize(
    "name",
    [
        "000000010000000000000003.tmp",
        "00000001000000000000000",
        "000000010000000a00000003",
        "archive_status",
        "RECOVERYHISTORY",
    ],
)
def test_push_bad_wal_name_is_a_format_error(storage: Storage, tmp_path: Path, name: str) -> None:
    path = write_wal(tmp_path / "pg_wal", name, b"data")
    with pytest.raises(FormatError):
        wal_push(make_settings(tmp_path), storage, str(path))
    assert storage.list("") == []


def test_push_missing_file_is_a_usage_error(storage: Storage, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        wal_push(make_settings(tmp_path), storage, str(tmp_path / SEG))


# --- wal-fetch --------------------------------------------------------------------------------


def test_fetch_writes_exact_bytes_and_no_temp_file(
    storage: Storage, tmp_path: Path, wal_a: bytes
) -> None:
    wal_push(make_settings(tmp_path), storage, str(write_wal(tmp_path / "pg_wal", SEG, wal_a)))
    restore_dir = tmp_path / "restore" / "pg_wal"
    restore_dir.mkdir(parents=True)
    dest = restore_dir / "RECOVERYXLOG"
    result = wal_fetch(make_settings(tmp_path), storage, SEG, str(dest))
    assert result.key == f"wal_005/{SEG}.lz4"
    assert result.size == SEG_SIZE
    assert dest.read_bytes() == wal_a
    assert os.listdir(restore_dir) == ["RECOVERYXLOG"]


def test_fetch_replaces_an_existing_destination(
    storage: Storage, tmp_path: Path, wal_a: bytes
) -> None:
    wal_push(make_settings(tmp_path), storage, str(write_wal(tmp_path / "pg_wal", SEG, wal_a)))
    dest = tmp_path / "RECOVERYXLOG"
    dest.write_bytes(b"stale")
    wal_fetch(make_settings(tmp_path), storage, SEG, str(dest))
    assert dest.read_bytes() == wal_a


def test_fetch_missing_is_wal_not_found_and_writes_nothing(
    storage: Storage, tmp_path: Path
) -> None:
    out_dir = tmp_path / "restore"
    out_dir.mkdir()
    with pytest.raises(WalNotFound) as info:
        wal_fetch(make_settings(tmp_path), storage, SEG, str(out_dir / "RECOVERYXLOG"))
    assert info.value.exit_code == 74
    assert SEG in str(info.value)
    assert os.listdir(out_dir) == []


def test_fetch_bad_name_is_a_format_error(storage: Storage, tmp_path: Path) -> None:
    with pytest.raises(FormatError):
        wal_fetch(make_settings(tmp_path), storage, "../../etc/passwd", str(tmp_path / "x"))


@pytest.mark.parametrize("key_suffix", ["", "."])
def test_fetch_objects_written_by_old_wal_g_without_compression(
    storage: Storage, tmp_path: Path, wal_a: bytes, key_suffix: str
) -> None:
    """WAL-G v3.0.9+ stores 'none' as the bare name; older releases added a trailing dot."""
    storage.put_bytes(f"wal_005/{SEG}{key_suffix}", wal_a)
    out_dir = tmp_path / "restore"
    out_dir.mkdir()
    result = wal_fetch(make_settings(tmp_path), storage, SEG, str(out_dir / "out"))
    assert result.key == f"wal_005/{SEG}{key_suffix}"
    assert (out_dir / "out").read_bytes() == wal_a
    assert os.listdir(out_dir) == ["out"]


def test_fetch_prefers_lz4_in_wal_g_probe_order(storage: Storage, tmp_path: Path) -> None:
    storage.put_bytes(f"wal_005/{SEG}", b"bare")
    storage.put_bytes(f"wal_005/{SEG}.lz4", lz4.frame.compress(b"lz4 wins"))
    dest = tmp_path / "out"
    wal_fetch(make_settings(tmp_path), storage, SEG, str(dest))
    assert dest.read_bytes() == b"lz4 wins"
    found = find_wal_object(storage, SEG)
    assert found is not None
    assert found == (f"wal_005/{SEG}.lz4", "lz4")


def test_fetch_corrupt_object_fails_and_leaves_no_file(
    storage: Storage, tmp_path: Path, wal_a: bytes
) -> None:
    wal_push(make_settings(tmp_path), storage, str(write_wal(tmp_path / "pg_wal", SEG, wal_a)))
    key = f"wal_005/{SEG}.lz4"
    raw = bytearray(stored(storage, key))
    raw[len(raw) // 2] ^= 0xFF
    raw[-2] ^= 0xFF  # and the frame's content checksum, so the damage can never go unnoticed
    storage.delete([key])
    storage.put_bytes(key, bytes(raw))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(IntegrityError):
        wal_fetch(make_settings(tmp_path), storage, SEG, str(out_dir / "RECOVERYXLOG"))
    assert os.listdir(out_dir) == []


def test_fetch_truncated_object_fails(storage: Storage, tmp_path: Path, wal_a: bytes) -> None:
    wal_push(make_settings(tmp_path), storage, str(write_wal(tmp_path / "pg_wal", SEG, wal_a)))
    key = f"wal_005/{SEG}.lz4"
    raw = stored(storage, key)
    storage.put_bytes(key, raw[: len(raw) - 100])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(IntegrityError):
        wal_fetch(make_settings(tmp_path), storage, SEG, str(out_dir / "RECOVERYXLOG"))
    assert os.listdir(out_dir) == []


def test_fetch_of_an_intact_object_holding_part_of_the_segment_fails(
    storage: Storage, tmp_path: Path
) -> None:
    """An object stored whole (its checksum holds) whose content is the segment's first
    half: its first page is the segment's, so only the size tells. PostgreSQL stops on a
    restored file of the wrong size only where it checks; wal-fetch refuses it, naming why,
    and puts nothing in place."""
    from walg.core.lsn import Segment

    segno = Segment.parse(SEG).segno
    header = (0xD110).to_bytes(2, "little") + (2).to_bytes(2, "little") + (1).to_bytes(4, "little")
    header += (segno * SEG_SIZE).to_bytes(8, "little") + bytes(8)
    header += (7).to_bytes(8, "little") + SEG_SIZE.to_bytes(4, "little")
    header += (8192).to_bytes(4, "little")
    storage.put_bytes(f"wal_005/{SEG}.lz4", lz4.frame.compress(header + bytes(SEG_SIZE // 2)))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(IntegrityError, match="not a whole segment"):
        wal_fetch(make_settings(tmp_path), storage, SEG, str(out_dir / "RECOVERYXLOG"))
    assert os.listdir(out_dir) == []


def test_fetch_zero_byte_lz4_object_fails(storage: Storage, tmp_path: Path) -> None:
    storage.put_bytes(f"wal_005/{SEG}.lz4", b"")
    with pytest.raises(IntegrityError):
        wal_fetch(make_settings(tmp_path), storage, SEG, str(tmp_path / "RECOVERYXLOG"))


@pytest.mark.parametrize("key_suffix", ["", ".lz4"])
def test_fetch_refuses_a_segment_of_zeros(
    storage: Storage, tmp_path: Path, key_suffix: str
) -> None:
    """Storage that does not sync can leave a whole object of zeros after a crash, and an
    uncompressed one carries no checksum. PostgreSQL reads such a segment as the end of the
    WAL ("invalid magic number 0000") and, in archive recovery, promotes without the rest."""
    zeros = bytes(SEG_SIZE)
    storage.put_bytes(
        f"wal_005/{SEG}{key_suffix}", lz4.frame.compress(zeros) if key_suffix else zeros
    )
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(IntegrityError, match=f"is not WAL segment {SEG}: it starts with zeros"):
        wal_fetch(make_settings(tmp_path), storage, SEG, str(out_dir / "RECOVERYXLOG"))
    assert os.listdir(out_dir) == []
    # Only segments are WAL pages: other WAL files are handed over as stored.
    storage.put_bytes("wal_005/00000002.history", zeros[:100])
    wal_fetch(make_settings(tmp_path), storage, "00000002.history", str(out_dir / "h"))
    assert (out_dir / "h").read_bytes() == zeros[:100]


@pytest.mark.parametrize("ext", ["zst", "br", "lzma"])
def test_fetch_archived_with_unsupported_compression_is_not_not_found(
    storage: Storage, tmp_path: Path, ext: str
) -> None:
    storage.put_bytes(f"wal_005/{SEG}.{ext}", b"compressed by WAL-G")
    # An error that says why (not "not found", which ends archive recovery; nor a crash).
    with pytest.raises(IntegrityError, match=rf"compressed as \.{ext} cannot be read") as info:
        wal_fetch(make_settings(tmp_path), storage, SEG, str(tmp_path / "RECOVERYXLOG"))
    assert not isinstance(info.value, WalNotFound)
    assert info.value.exit_code != 74
    assert not (tmp_path / "RECOVERYXLOG").exists()


def test_push_does_not_add_a_second_object_beside_unsupported_compression(
    storage: Storage, tmp_path: Path
) -> None:
    storage.put_bytes(f"wal_005/{SEG}.zst", b"compressed by WAL-G")
    with pytest.raises(IntegrityError, match=r"compressed as \.zst cannot be read"):
        wal_push(make_settings(tmp_path), storage, str(write_wal(tmp_path, SEG, b"other")))
    assert [i.key for i in storage.list("")] == [f"wal_005/{SEG}.zst"]


@pytest.mark.parametrize(
    "size", [0, 1, 4095, 4 << 20, (4 << 20) + 1, (9 << 20) + 4097], ids=lambda n: f"{n}B"
)
@pytest.mark.parametrize("threads", [1, 2])
def test_push_one_stores_every_byte_whatever_the_size(
    storage: Storage, tmp_path: Path, size: int, threads: int
) -> None:
    """One thread maps the file a 4 MiB block at a time, several map it whole: both store
    exactly the file, with the digest trailer, for sizes on and off block boundaries. (An
    empty file goes under a .partial name: an empty segment is refused, as no segment is.)"""
    data = (os.urandom(1 << 16) * ((size >> 16) + 1))[:size]
    name = SEG if size else f"{SEG}.partial"
    path = write_wal(tmp_path / "pg_wal", name, data)
    result = push_one(make_settings(tmp_path), storage, str(path), threads)
    assert result.uploaded and (result.raw_size, result.key) == (size, f"wal_005/{name}.lz4")
    assert check_trailer_object(stored(storage, result.key)) == data


# --- the segment a timeline ended in, archived by more than one node -------------------------

FORK_SEG = "000000010000000000000005"
FORK_START = 5 * SEG_SIZE
FORK_END = FORK_START + 3 * 8192 + 100  # timeline 1 ends mid-page in FORK_SEG


def _pages(segno: int, seed: int) -> bytes:
    """A whole segment of pages that name segment ``segno`` (long header first), bodies from
    ``seed``."""
    out = bytearray()
    for offset in range(0, SEG_SIZE, 8192):
        info = 2 if offset == 0 else 0
        head = (0xD110).to_bytes(2, "little") + info.to_bytes(2, "little")
        head += (1).to_bytes(4, "little") + (segno * SEG_SIZE + offset).to_bytes(8, "little")
        head += bytes(8)
        if offset == 0:
            head += (7).to_bytes(8, "little") + SEG_SIZE.to_bytes(4, "little")
            head += (8192).to_bytes(4, "little")
        body = ((seed * 7919 + offset).to_bytes(8, "little") * 1024)[: 8192 - len(head)]
        out += head + body
    return bytes(out)


def _history(storage: Storage, end: int) -> None:
    text = f"1\t{end >> 32:X}/{end & 0xFFFFFFFF:X}\tno recovery target specified\n"
    storage.put_bytes("wal_005/00000002.history.lz4", lz4.frame.compress(text.encode()))


@pytest.mark.parametrize("tail", ["preallocated", "recycled"])
def test_a_copy_that_ends_where_its_timeline_ends_is_taken_as_archived(
    storage: Storage, tmp_path: Path, tail: str
) -> None:
    """A standby with archive_mode = always archives the segment its timeline ended in under
    the full name: the timeline's WAL up to the switch point, then a preallocated file's
    zeros or a recycled file's older pages. The old primary archived that name first, in full
    (it wrote on). Refused, the standby's archiver retried it for ever."""
    settings = make_settings(tmp_path)
    old_primary = _pages(5, seed=1)
    rest = bytes(SEG_SIZE) if tail == "preallocated" else _pages(2, seed=9)
    cut = FORK_END - FORK_START
    standby = old_primary[:cut] + rest[cut:]
    storage.put_bytes(f"wal_005/{FORK_SEG}.lz4", lz4.frame.compress(old_primary))
    path = write_wal(tmp_path / "standby" / "pg_wal", FORK_SEG, standby)
    # Without the history that puts the end of timeline 1 there, a different copy.
    with pytest.raises(WalOverwriteError):
        push_one(settings, storage, str(path))
    _history(storage, FORK_END + 8192)  # timeline 1 ends later than this copy does
    with pytest.raises(WalOverwriteError):
        push_one(settings, storage, str(path))
    _history(storage, FORK_END)
    result = push_one(settings, storage, str(path))
    assert not result.uploaded
    assert lz4.frame.decompress(stored(storage, f"wal_005/{FORK_SEG}.lz4")) == old_primary


def test_the_old_primary_s_diverged_copy_of_that_segment_is_still_refused(
    storage: Storage, tmp_path: Path
) -> None:
    """The other way round: the standby's copy is archived, and the old primary (started
    again before pg_rewind) archives its own, with WAL of the segment after the switch point.
    Both also differ where a copy's WAL before the switch point is not the archived one's."""
    settings = make_settings(tmp_path)
    cut = FORK_END - FORK_START
    old_primary = _pages(5, seed=1)
    standby = old_primary[:cut] + bytes(SEG_SIZE - cut)
    storage.put_bytes(f"wal_005/{FORK_SEG}.lz4", lz4.frame.compress(standby))
    _history(storage, FORK_END)
    path = write_wal(tmp_path / "old" / "pg_wal", FORK_SEG, old_primary)
    with pytest.raises(WalOverwriteError):
        push_one(settings, storage, str(path))
    other = _pages(5, seed=2)[:cut] + bytes(SEG_SIZE - cut)
    path = write_wal(tmp_path / "other" / "pg_wal", FORK_SEG, other)
    with pytest.raises(WalOverwriteError):
        push_one(settings, storage, str(path))
    assert lz4.frame.decompress(stored(storage, f"wal_005/{FORK_SEG}.lz4")) == standby


def test_a_copy_whose_timeline_ends_in_the_segment_s_last_page_is_still_refused(
    storage: Storage, tmp_path: Path
) -> None:
    """No page follows the switch point's: a copy differing from the archived one only past
    the switch point may hold WAL written on there (the old primary's, with the standby's
    copy archived first), and is not taken as archived."""
    settings = make_settings(tmp_path)
    end = FORK_START + SEG_SIZE - 8192 + 100
    cut = end - FORK_START
    old_primary = _pages(5, seed=1)
    standby = old_primary[:cut] + bytes(SEG_SIZE - cut)
    storage.put_bytes(f"wal_005/{FORK_SEG}.lz4", lz4.frame.compress(standby))
    _history(storage, end)
    path = write_wal(tmp_path / "old" / "pg_wal", FORK_SEG, old_primary)
    with pytest.raises(WalOverwriteError):
        push_one(settings, storage, str(path))
    assert lz4.frame.decompress(stored(storage, f"wal_005/{FORK_SEG}.lz4")) == standby


def test_stored_refusal_is_wal_push_s_verdict_and_none_where_it_may_pass(
    storage: Storage, tmp_path: Path, wal_a: bytes, wal_b: bytes
) -> None:
    """backup-push fails at once on what stored_refusal calls a refusal, so it must be
    wal-push's own, and no verdict where storage could not be read (a failure that may pass,
    to be waited for), where the object is equal, absent, or overwriting is allowed."""
    settings = make_settings(tmp_path)
    ours = write_wal(tmp_path / "ours", SEG, wal_b)
    assert stored_refusal(settings, storage, str(ours)) is None  # nothing stored yet
    wal_push(settings, storage, str(write_wal(tmp_path / "theirs", SEG, wal_a)))
    refused = stored_refusal(settings, storage, str(ours))
    assert isinstance(refused, WalOverwriteError) and SEG in str(refused)
    with pytest.raises(WalOverwriteError) as pushed:
        wal_push(settings, storage, str(ours))
    assert str(pushed.value) == str(refused)
    same = write_wal(tmp_path / "same", SEG, wal_a)
    assert stored_refusal(settings, storage, str(same)) is None
    allowed = make_settings(tmp_path, WALG_PREVENT_WAL_OVERWRITE="false")
    assert stored_refusal(allowed, storage, str(ours)) is None
    rule = FaultRule(op="read", key=re.compile("wal_005/"), fail="503 SlowDown", transient=True)
    outage = FaultyStorage(storage, [rule])
    assert stored_refusal(settings, outage, str(ours)) is None
    with pytest.raises(StorageError):
        wal_push(settings, outage, str(ours))


def test_stored_refusal_names_a_damaged_archived_copy_that_every_push_fails_on(
    storage: Storage, tmp_path: Path, wal_a: bytes
) -> None:
    """An object under the segment's name whose LZ4 data is corrupt (not cut short: that one
    is replaced) fails every wal-push of the name until someone removes it: backup-push must
    hear so at once, not wait out WALG_STOP_BACKUP_TIMEOUT."""
    settings = make_settings(tmp_path)
    ours = write_wal(tmp_path / "ours", SEG, wal_a)
    damaged = bytearray(lz4.frame.compress(wal_a))
    damaged[4] ^= 0xFF  # the frame descriptor: its header checksum no longer matches
    storage.put_bytes(f"wal_005/{SEG}.lz4", bytes(damaged))
    with pytest.raises(IntegrityError) as pushed:
        wal_push(settings, storage, str(ours))
    refused = stored_refusal(settings, storage, str(ours))
    assert isinstance(refused, WalOverwriteError), refused
    assert f"wal_005/{SEG}.lz4" in str(refused) and str(pushed.value) in str(refused)
