"""wal-push of a file that is not the segment its name says: the real ``walg`` command.

An operator pushing by hand (``for f in pg_wal/0*; do walg wal-push $f; done``, or one
segment named wrongly) reaches the files PostgreSQL has recycled for later use: an old
segment's bytes under a name PostgreSQL has not written yet. Stored, that object is refused
by every wal-fetch (its first page names the old segment: exit 128 in archive recovery) and
PostgreSQL's own call for the name, once it writes the real segment, is refused for ever as
different content: archiving stops and pg_wal grows.
"""

from __future__ import annotations

from pathlib import Path

from fakewal import run_walg, segment_bytes, walg_env

SYSID = 7311234567890123456
OLD = "000000010000000000000003"
LATER = "000000010000000000000009"


def _data_directory(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A data directory's ``pg_wal`` (with ``archive_status``), an empty storage folder, and
    the environment of a walg that archives there."""
    pgdata = tmp_path / "data"
    wal = pgdata / "pg_wal"
    (wal / "archive_status").mkdir(parents=True)
    (pgdata / "PG_VERSION").write_text("16\n")
    store = tmp_path / "store"
    store.mkdir()
    return wal, store, walg_env(store, tmp_path)


def test_a_recycled_file_under_a_later_name_is_refused_and_stores_nothing(
    tmp_path: Path, walg_bin: str
) -> None:
    wal, store, env = _data_directory(tmp_path)
    (wal / LATER).write_bytes(segment_bytes(OLD, SYSID))

    refused = run_walg([walg_bin, "wal-push", str(wal / LATER)], env)
    assert refused.returncode == 1, refused.stderr
    assert f"its first page is that of segment {OLD}" in refused.stderr, refused.stderr
    assert "not archived" in refused.stderr, refused.stderr
    assert not [p for p in store.rglob("*") if p.is_file()], "nothing stored"

    # Once PostgreSQL has written the segment, its own call archives it.
    (wal / LATER).write_bytes(segment_bytes(LATER, SYSID))
    pushed = run_walg([walg_bin, "wal-push", str(wal / LATER)], env)
    assert pushed.returncode == 0, pushed.stderr
    assert (store / "wal_005" / f"{LATER}.lz4").is_file()


PAGE = 8192
SIZE = 16 << 20


def _segment(name: str, seed: bytes) -> bytes:
    """A whole segment ``name``: each page's header names its own position, then noise."""
    import hashlib

    from walg.core.lsn import Segment

    start = Segment.parse(name, SIZE).segno * SIZE
    data = bytearray(segment_bytes(name, SYSID, SIZE, hashlib.sha256(seed).digest()))
    for offset in range(PAGE, SIZE, PAGE):
        header = (0xD110).to_bytes(2, "little") + bytes(2) + (1).to_bytes(4, "little")
        data[offset : offset + 16] = header + (start + offset).to_bytes(8, "little")
    return bytes(data)


def _store(store: Path, name: str, data: bytes) -> Path:
    import lz4.frame

    (store / "wal_005").mkdir(parents=True, exist_ok=True)
    path = store / "wal_005" / f"{name}.lz4"
    path.write_bytes(lz4.frame.compress(data))
    return path


def _pushed_while_written(segment: bytes, written: int, tail: bytes) -> bytes:
    """What a push of ``segment`` read while PostgreSQL had written ``written`` bytes of it:
    those, the rest of that page as zeros, then ``tail`` (a recycled file's old pages)."""
    page_end = -(-written // PAGE) * PAGE
    return segment[:written] + bytes(page_end - written) + tail[page_end:]


def test_a_copy_pushed_while_postgresql_wrote_the_segment_is_replaced_by_the_whole_one(
    tmp_path: Path, walg_bin: str
) -> None:
    """An operator's ``walg wal-push pg_wal/<the segment being written>`` stored it half
    written (seen on PostgreSQL 16); PostgreSQL's own call for it, once written, was refused
    for ever as different content, blaming another server or pg_resetwal, and archiving
    stopped. What is stored holds nothing the whole file does not: the file's start, then
    pages not yet written (zeros, or a recycled file's pages of another segment)."""
    wal, store, env = _data_directory(tmp_path)
    whole = _segment(LATER, b"whole")
    recycled = _segment(OLD, b"old")
    (wal / LATER).write_bytes(whole)
    stored = _store(store, LATER, _pushed_while_written(whole, 5 * PAGE + 3000, recycled))

    pushed = run_walg([walg_bin, "wal-push", str(wal / LATER)], env)
    assert pushed.returncode == 0, pushed.stderr
    assert "taken while PostgreSQL was still writing it" in pushed.stderr, pushed.stderr
    import lz4.frame

    assert lz4.frame.decompress(stored.read_bytes()) == whole

    # A copy with WAL of this segment after the point they part (another server writing
    # the same timeline) is still refused, and left as it was.
    other = _pushed_while_written(whole, 5 * PAGE + 3000, _segment(LATER, b"diverged"))
    _store(store, LATER, other)
    refused = run_walg([walg_bin, "wal-push", str(wal / LATER)], env)
    assert refused.returncode == 1, refused.stderr
    assert "with different content" in refused.stderr, refused.stderr
    assert lz4.frame.decompress(stored.read_bytes()) == other


def test_a_segment_file_shorter_or_longer_than_its_header_states_is_refused(
    tmp_path: Path, walg_bin: str
) -> None:
    # PostgreSQL hands archive_command only whole segments; a file cut short (a copy that
    # failed midway, a file system after a crash) is refused by PostgreSQL when restored
    # ("archive file has wrong size"), which stops a point-in-time recovery.
    wal, store, env = _data_directory(tmp_path)
    whole = segment_bytes(LATER, SYSID)
    for data in (whole[: 1 << 20], whole + bytes(8192)):
        (wal / LATER).write_bytes(data)
        refused = run_walg([walg_bin, "wal-push", str(wal / LATER)], env)
        assert refused.returncode == 1, refused.stderr
        assert f"{len(data)} bytes" in refused.stderr, refused.stderr
        assert f"a segment of {len(whole)} bytes" in refused.stderr, refused.stderr
        assert "not archived" in refused.stderr, refused.stderr
        assert not [p for p in store.rglob("*") if p.is_file()], "nothing stored"

    (wal / LATER).write_bytes(whole)
    pushed = run_walg([walg_bin, "wal-push", str(wal / LATER)], env)
    assert pushed.returncode == 0, pushed.stderr
    assert (store / "wal_005" / f"{LATER}.lz4").is_file()


def test_an_empty_file_under_a_segment_name_is_refused(tmp_path: Path, walg_bin: str) -> None:
    # No segment is empty. Stored, the empty object fails every wal-fetch of the name
    # (wal-show already warns of one), and a restore stops there.
    wal, store, env = _data_directory(tmp_path)
    (wal / LATER).write_bytes(b"")
    refused = run_walg([walg_bin, "wal-push", str(wal / LATER)], env)
    assert refused.returncode == 1, refused.stderr
    assert "is empty" in refused.stderr and "not archived" in refused.stderr, refused.stderr
    assert not [p for p in store.rglob("*") if p.is_file()], "nothing stored"


def test_a_segment_file_postgresql_made_ahead_and_has_not_written_is_refused(
    tmp_path: Path, walg_bin: str
) -> None:
    # PostgreSQL makes future segments ahead of use filled with zeros (wal_init_zero, on by
    # default), and writes a segment's first page header before anything else in it. A push
    # by hand that reaches such a file stored 16 MiB of zeros under the name, and PostgreSQL's
    # own call for it, once written, was refused for ever as different content. pgBackRest
    # refuses such a file too (its archive-push checks the first page header).
    wal, store, env = _data_directory(tmp_path)
    (wal / LATER).write_bytes(bytes(16 << 20))
    refused = run_walg([walg_bin, "wal-push", str(wal / LATER)], env)
    assert refused.returncode == 1, refused.stderr
    assert "first page header is zeros" in refused.stderr, refused.stderr
    assert "not archived" in refused.stderr, refused.stderr
    assert not [p for p in store.rglob("*") if p.is_file()], "nothing stored"

    (wal / LATER).write_bytes(segment_bytes(LATER, SYSID))
    pushed = run_walg([walg_bin, "wal-push", str(wal / LATER)], env)
    assert pushed.returncode == 0, pushed.stderr
    # Not a segment's first page: zeros at the start of a .partial or .history file are
    # not judged here.
    partial = wal / f"{OLD}.partial"
    partial.write_bytes(bytes(1 << 20))
    assert run_walg([walg_bin, "wal-push", str(partial)], env).returncode == 0
