"""Timeline histories and the prefetcher's choice of the next segment names."""

from __future__ import annotations

import io
from pathlib import Path

import lz4.frame
import pytest

from walg.core.lsn import Segment, parse_lsn
from walg.core.timeline import History, Switch, history_file_name
from walg.errors import FormatError
from walg.ops.wal_prefetch import Prefetcher, prefetch_root, take_prefetched, valid_segment_file
from walg.settings import load
from walg.storage.memory import MemoryStorage

SEG = 16 * 1024 * 1024


def test_history_parse_and_timeline_of_segment() -> None:
    text = "1\t0/5000000\tno recovery target specified\n\n2\t0/9000100\tbefore 2026\n"
    history = History.parse(3, text)
    assert history.timelines() == [1, 2, 3]
    assert history.begin_lsn(1) == 0
    assert history.begin_lsn(2) == parse_lsn("0/5000000")
    assert history.begin_lsn(3) == parse_lsn("0/9000100")
    assert history.timeline_of(4) == 1
    assert history.timeline_of(5) == 2  # the switch segment is read from the new timeline
    assert history.timeline_of(8) == 2
    assert history.timeline_of(9) == 3
    assert history.segment(10).name() == "00000003000000000000000A"


@pytest.mark.parametrize(
    "text",
    [
        "1\n",
        "x\t0/1\treason\n",
        "1\tnot-an-lsn\n",
        "2\t0/5\n1\t0/9\n",
        "3\t0/5\n",
        # The same parent twice: PostgreSQL's readTimeLineHistory refuses it (timeline IDs
        # must be in increasing sequence), so recovery would too.
        "1\t0/5\n1\t0/9\n",
    ],
)
def test_history_parse_rejects_garbage(text: str) -> None:
    with pytest.raises(FormatError):
        History.parse(3, text)


def test_history_parse_skips_comments_and_blank_lines_as_postgresql_does() -> None:
    # PostgreSQL writes no comments, but its reader skips lines starting with '#' (after
    # leading space); a history edited by hand keeps working in recovery, so it must here.
    text = "# written by hand\n  # indented\n1\t0/5000000\tpromoted\n\n# after\n"
    history = History.parse(2, text)
    assert history.switches == (Switch(1, parse_lsn("0/5000000")),)


def _storage_with(names: list[str], histories: dict[int, str]) -> MemoryStorage:
    storage = MemoryStorage()
    for name in names:
        storage.put_bytes(f"wal_005/{name}.lz4", lz4.frame.compress(b"x"))
    for tli, text in histories.items():
        storage.put_bytes(
            f"wal_005/{history_file_name(tli)}.lz4", lz4.frame.compress(text.encode())
        )
    return storage


def _prefetcher(storage: MemoryStorage, root: Path) -> Prefetcher:
    return Prefetcher(load(environ={"WALG_FILE_PREFIX": "/x"}), storage, str(root))


def test_upcoming_follows_the_newest_history(tmp_path: Path) -> None:
    storage = _storage_with([], {2: "1\t0/6000000\tpromoted\n"})
    names = _prefetcher(storage, tmp_path).upcoming("000000010000000000000003", 5)
    assert names == [
        "000000010000000000000004",
        "000000010000000000000005",
        "000000020000000000000006",
        "000000020000000000000007",
        "000000020000000000000008",
    ]


def test_upcoming_follows_the_branch_recovery_reads(tmp_path: Path) -> None:
    """Timelines 2 and 3 both branch from 1 (two promotions of one backup's restores). With
    ``recovery_target_timeline = 2`` PostgreSQL asks for timeline 2's segments past the point
    where 3 began: the prefetcher follows 2 there, not the newest timeline."""
    storage = _storage_with(
        [], {2: "1\t0/6000000\tpromoted\n", 3: "1\t0/4000000\tpromoted again\n"}
    )
    prefetcher = _prefetcher(storage, tmp_path)
    # Before either switch, the newest branch is the best guess (recovery_target_timeline
    # latest, the default, follows it).
    assert prefetcher.upcoming("000000010000000000000002", 3) == [
        "000000010000000000000003",
        "000000030000000000000004",
        "000000030000000000000005",
    ]
    # A request on timeline 1 past 3's start: recovery does not follow 3; it follows 2.
    assert prefetcher.upcoming("000000010000000000000004", 3) == [
        "000000010000000000000005",
        "000000020000000000000006",
        "000000020000000000000007",
    ]
    # On timeline 2 itself: 3 does not lead through 2, so 2 it is.
    assert prefetcher.upcoming("000000020000000000000006", 2) == [
        "000000020000000000000007",
        "000000020000000000000008",
    ]


def test_upcoming_stays_on_an_older_target_timeline(tmp_path: Path) -> None:
    """``recovery_target_timeline = 1`` with a child timeline 2 archived: past the switch,
    PostgreSQL still asks for timeline 1's segments, and those are what gets prefetched."""
    storage = _storage_with([], {2: "1\t0/6000000\tpromoted\n"})
    assert _prefetcher(storage, tmp_path).upcoming("000000010000000000000007", 2) == [
        "000000010000000000000008",
        "000000010000000000000009",
    ]


def test_upcoming_stays_on_the_timeline_without_history(tmp_path: Path) -> None:
    storage = _storage_with([], {})
    names = _prefetcher(storage, tmp_path).upcoming("0000000100000000000000FE", 3)
    assert names == [Segment(1, 0xFF + i).name() for i in range(3)]


def _segment_bytes(name: str) -> bytes:
    segno = Segment.parse(name).segno
    header = (0xD110).to_bytes(2, "little") + (2).to_bytes(2, "little") + (1).to_bytes(4, "little")
    header += (segno * SEG).to_bytes(8, "little") + bytes(4) + bytes(4)
    header += (7).to_bytes(8, "little") + SEG.to_bytes(4, "little") + (8192).to_bytes(4, "little")
    return header + bytes(SEG - len(header))


def test_prefetch_downloads_validates_and_serves(tmp_path: Path) -> None:
    names = [Segment(1, n).name() for n in range(1, 5)]
    storage = MemoryStorage()
    for name in names:
        buf = io.BytesIO(lz4.frame.compress(_segment_bytes(name)))
        storage.put_bytes(f"wal_005/{name}.lz4", buf.getvalue())
    settings = load(environ={"WALG_FILE_PREFIX": "/x", "WALG_DOWNLOAD_CONCURRENCY": "3"})
    root = Path(prefetch_root(settings, str(tmp_path / "RECOVERYXLOG")))
    got = Prefetcher(settings, storage, str(root)).run(names[0], 5)
    assert sorted(got) == names[1:]
    assert all(valid_segment_file(str(root / n), n, SEG) for n in names[1:])
    assert not list((root / "running").iterdir())
    dest = tmp_path / "RECOVERYXLOG"
    assert take_prefetched(str(root), names[1], str(dest), SEG)
    assert dest.read_bytes() == _segment_bytes(names[1])
    # A file of the right size but another segment's content is refused and removed.
    (root / names[2]).write_bytes(_segment_bytes(names[3]))
    assert not take_prefetched(str(root), names[2], str(dest), SEG)
    assert not (root / names[2]).exists()
    # Prefetching again from a later segment drops the files PostgreSQL has moved past (the
    # refused one above is gone already: one is put back), and keeps the one asked for now.
    (root / names[2]).write_bytes(_segment_bytes(names[2]))
    Prefetcher(settings, storage, str(root)).run(names[3], 2)
    assert not (root / names[2]).exists()
    assert (root / names[3]).read_bytes() == _segment_bytes(names[3])


def test_a_download_abandoned_in_running_is_removed_once_stale(tmp_path: Path) -> None:
    """A prefetcher killed mid-download (an immediate shutdown, the OOM killer) leaves its
    file in ``running/``: up to a segment of pg_wal's disk, and a name every later prefetch
    takes for a download under way (never downloaded again, and waited for by wal-fetch).
    The next prefetcher removes it once untouched for ten minutes, and leaves one being
    written now."""
    import os
    import time

    from walg.ops.wal_prefetch import STALE_RUNNING_SECONDS

    settings = load(environ={"WALG_FILE_PREFIX": "/x", "WALG_DOWNLOAD_CONCURRENCY": "2"})
    root = tmp_path / "prefetch"
    (root / "running").mkdir(parents=True)
    current = Segment(1, 3).name()
    stale, fresh = Segment(1, 5).name(), Segment(1, 6).name()
    for name in (stale, fresh):
        (root / "running" / name).write_bytes(b"x" * 4096)
    old = time.time() - STALE_RUNNING_SECONDS - 60
    os.utime(root / "running" / stale, (old, old))
    Prefetcher(settings, MemoryStorage(), str(root)).cleanup(current)
    assert sorted(os.listdir(root / "running")) == [fresh]


def test_a_file_whose_first_page_states_another_segment_size_is_not_that_segment(
    tmp_path: Path,
) -> None:
    """A whole 16 MiB file under a segment's name, whose first page has that segment's WAL
    address but states 64 MiB segments (the start of segment 1 of a cluster made with
    ``initdb --wal-segsize=64``, cut to 16 MiB): PostgreSQL refuses it ("WAL file has
    incorrect segment size"), so the prefetch must not serve it for the 16 MiB segment."""
    name = Segment(1, 4).name()
    data = bytearray(_segment_bytes(name))
    assert data[32:36] == SEG.to_bytes(4, "little")  # xlp_seg_size in the long header
    data[32:36] = (64 << 20).to_bytes(4, "little")
    path = tmp_path / name
    path.write_bytes(bytes(data))
    assert not valid_segment_file(str(path), name, SEG)
    path.write_bytes(_segment_bytes(name))
    assert valid_segment_file(str(path), name, SEG)


def test_a_prefetched_file_cut_short_is_never_served(tmp_path: Path) -> None:
    """A prefetched file with the right first page but short of a whole segment (a disk that
    filled, a copy cut off): PostgreSQL would read its end as the end of the WAL. It is
    discarded and not put in place; whole, the same file is served."""
    name = Segment(1, 4).name()
    root = tmp_path / "prefetch"
    root.mkdir()
    dest = tmp_path / "RECOVERYXLOG"
    (root / name).write_bytes(_segment_bytes(name)[: SEG // 2])
    assert not take_prefetched(str(root), name, str(dest), SEG)
    assert not dest.exists() and not (root / name).exists()
    (root / name).write_bytes(_segment_bytes(name))
    assert take_prefetched(str(root), name, str(dest), SEG)
    assert dest.read_bytes() == _segment_bytes(name)
