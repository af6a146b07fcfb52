"""What walg's walk of a data directory archives, holds back, empties and skips.

A directory tree shaped like PGDATA, walked by the real walk: the rules are about names and
file types, which a real cluster would exercise only in part (it has no symlinked
postgresql.conf, no FIFO, and an empty pg_replslot).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from walg.errors import UsageError
from walg.postgres.datadir import walk


def _pgdata(root: Path) -> Path:
    pgdata = root / "pgdata"
    for folder in ("global", "base/1", "pg_xact", "pg_multixact/offsets", "pg_logical"):
        (pgdata / folder).mkdir(parents=True)
    (pgdata / "PG_VERSION").write_text("16\n")
    (pgdata / "global/pg_control").write_bytes(b"\0" * 8192)
    (pgdata / "global/1262").write_bytes(b"g" * 10)
    (pgdata / "base/1/1259").write_bytes(b"r" * 20)
    (pgdata / "pg_xact/0000").write_bytes(b"x" * 30)
    (pgdata / "pg_multixact/offsets/0000").write_bytes(b"m")
    (pgdata / "postgresql.conf").write_text("port = 1\n")
    (pgdata / "pg_filenode.map").write_bytes(b"f")
    # Excluded directories keep their entry, not their contents; excluded files go.
    (pgdata / "pg_replslot/slot").mkdir(parents=True)
    (pgdata / "pg_replslot/slot/state").write_bytes(b"s")
    (pgdata / "pg_stat_tmp").mkdir()
    (pgdata / "pg_stat_tmp/global.stat").write_bytes(b"t")
    (pgdata / "base/pgsql_tmp").mkdir()
    (pgdata / "base/pgsql_tmp/pgsql_tmp1.0").write_bytes(b"t")
    (pgdata / "postmaster.pid").write_text("1\n")
    (pgdata / "standby.signal").write_text("")
    return pgdata


def _members(pgdata: Path) -> dict[str, str]:
    return {entry.member: entry.kind for entry in walk(str(pgdata)).entries}


def test_the_files_recovery_needs_are_archived(tmp_path: Path) -> None:
    pgdata = _pgdata(tmp_path)
    members = _members(pgdata)
    for file in (
        "/PG_VERSION",
        "/global/1262",
        "/base/1/1259",
        "/pg_xact/0000",
        "/pg_multixact/offsets/0000",
        "/postgresql.conf",
        "/pg_filenode.map",
    ):
        assert members.get(file) == "file", file
    for folder in ("/", "/global", "/base", "/base/1", "/pg_logical", "/pg_xact"):
        assert members.get(folder) == "dir", folder


def test_excluded_directories_are_kept_empty_and_excluded_files_dropped(tmp_path: Path) -> None:
    pgdata = _pgdata(tmp_path)
    members = _members(pgdata)
    # PostgreSQL needs these directories to start, not what was in them.
    for folder in ("/pg_replslot", "/pg_stat_tmp", "/base/pgsql_tmp"):
        assert members.get(folder) == "dir", folder
    for gone in (
        "/pg_replslot/slot",
        "/pg_replslot/slot/state",
        "/pg_stat_tmp/global.stat",
        "/base/pgsql_tmp/pgsql_tmp1.0",
        # A restored postmaster.pid stops the server from starting; a restored standby.signal
        # makes a restore meant as a primary come up as a standby.
        "/postmaster.pid",
        "/standby.signal",
    ):
        assert gone not in members, gone


def test_pg_control_is_held_back_for_last(tmp_path: Path) -> None:
    pgdata = _pgdata(tmp_path)
    result = walk(str(pgdata))
    assert result.pg_control is not None
    assert result.pg_control.member == "/global/pg_control"
    assert result.pg_control.size == 8192
    assert "/global/pg_control" not in [entry.member for entry in result.entries]


def test_sizes_modes_and_walk_order(tmp_path: Path) -> None:
    pgdata = _pgdata(tmp_path)
    (pgdata / "postgresql.conf").chmod(0o640)
    location = tmp_path / "space"
    (location / "PG_16_1").mkdir(parents=True)
    (pgdata / "pg_tblspc").mkdir()
    (pgdata / "pg_tblspc/16400").symlink_to(location)
    entries = walk(str(pgdata)).entries
    by_member = {entry.member: entry for entry in entries}
    assert by_member["/base/1/1259"].size == 20
    assert by_member["/base"].size == 0  # directories have no size in a tar
    assert by_member["/postgresql.conf"].mode == 0o640
    members = [entry.member for entry in entries]
    # The root, then pg_tblspc and its tablespaces, then the rest by name.
    assert members[:4] == ["/", "/pg_tblspc", "/pg_tblspc/16400", "/pg_tblspc/16400/PG_16_1"]
    rest = [m for m in members[4:] if m.count("/") == 1]
    assert rest == sorted(rest)


def test_tablespace_links_are_followed_and_recorded(tmp_path: Path) -> None:
    pgdata = _pgdata(tmp_path)
    location = tmp_path / "space"
    (location / "PG_16_1/5").mkdir(parents=True)
    (location / "PG_16_1/5/16401").write_bytes(b"t" * 7)
    (pgdata / "pg_tblspc").mkdir()
    (pgdata / "pg_tblspc/16400").symlink_to(location)
    result = walk(str(pgdata))
    members = {entry.member: entry for entry in result.entries}
    assert members["/pg_tblspc/16400/PG_16_1/5/16401"].size == 7
    assert members["/pg_tblspc/16400"].kind == "dir"
    spec = result.spec("/pgdata/")
    assert spec is not None
    assert spec.base_prefix == "/pgdata"
    [space] = spec.tablespaces
    assert (space.name, space.location, space.link) == ("16400", str(location), "pg_tblspc/16400")


def test_a_dangling_tablespace_link_is_refused(tmp_path: Path) -> None:
    pgdata = _pgdata(tmp_path)
    (pgdata / "pg_tblspc").mkdir()
    (pgdata / "pg_tblspc/16400").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="missing"):
        walk(str(pgdata))


def test_a_symlinked_pg_wal_is_an_empty_0700_directory(tmp_path: Path) -> None:
    pgdata = _pgdata(tmp_path)
    waldir = tmp_path / "wal"
    waldir.mkdir(mode=0o755)
    (waldir / "000000010000000000000001").write_bytes(b"w")
    (pgdata / "pg_wal").symlink_to(waldir)
    entries = {entry.member: entry for entry in walk(str(pgdata)).entries}
    assert entries["/pg_wal"].kind == "dir"
    assert entries["/pg_wal"].mode == 0o700
    assert "/pg_wal/000000010000000000000001" not in entries


def test_other_links_and_fifos_are_skipped_and_reported(tmp_path: Path) -> None:
    pgdata = _pgdata(tmp_path)
    conf = tmp_path / "elsewhere.conf"
    conf.write_text("")
    (pgdata / "postgresql.conf").unlink()
    (pgdata / "postgresql.conf").symlink_to(conf)
    os.mkfifo(pgdata / "a_fifo")
    result = walk(str(pgdata))
    members = {entry.member for entry in result.entries}
    assert "/postgresql.conf" not in members and "/a_fifo" not in members
    skipped = {item.member: item.what for item in result.skipped}
    assert skipped == {"/postgresql.conf": f"symbolic link to {conf}", "/a_fifo": "FIFO"}


def test_pgdata_given_as_a_link_has_the_directory_mode(tmp_path: Path) -> None:
    pgdata = _pgdata(tmp_path)
    pgdata.chmod(0o700)
    link = tmp_path / "link"
    link.symlink_to(pgdata)
    root = walk(str(link)).entries[0]
    assert root.member == "/"
    assert stat.S_IMODE(root.mode) == 0o700


@pytest.mark.parametrize("missing", ["PG_VERSION", "global/pg_control"])
def test_a_directory_without_pg_version_or_pg_control_is_refused(
    tmp_path: Path, missing: str
) -> None:
    pgdata = _pgdata(tmp_path)
    (pgdata / missing).unlink()
    with pytest.raises(UsageError, match="not a PostgreSQL data directory"):
        walk(str(pgdata))


def test_files_and_folders_dropped_during_the_walk_are_left_out(tmp_path: Path) -> None:
    """Relations and databases dropped while the walk runs (listed, then gone before their
    lstat, or a folder gone before its listing) are no error: the WAL replayed at restore
    drops them again. Threads delete and recreate them while walks run: a file gone before
    its lstat is caught in every run; a folder gone between its lstat and its listing, a far
    narrower window, in about a third of them."""
    import threading
    import time

    pgdata = _pgdata(tmp_path)
    churn = pgdata / "base/5"
    stop = threading.Event()
    rounds, toggles = [0], [0]

    def drop_and_create() -> None:
        while not stop.is_set():
            churn.mkdir(exist_ok=True)
            for n in range(200):
                (churn / str(16384 + n)).write_bytes(b"")
            for n in range(200):
                os.unlink(churn / str(16384 + n))
            churn.rmdir()
            rounds[0] += 1

    def drop_database() -> None:
        # A folder listed by its parent and gone before its own listing.
        while not stop.is_set():
            (pgdata / "base/6").mkdir()
            (pgdata / "base/6").rmdir()
            toggles[0] += 1

    droppers = [threading.Thread(target=drop_and_create), threading.Thread(target=drop_database)]
    for dropper in droppers:
        dropper.start()
    try:
        walks = 0
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            members = {entry.member for entry in walk(str(pgdata)).entries}
            assert "/base/1/1259" in members
            churned = {m for m in members if m.startswith("/base/5/")}
            assert churned <= {f"/base/5/{16384 + n}" for n in range(200)}, churned
            walks += 1
    finally:
        stop.set()
        for dropper in droppers:
            dropper.join()
    # The walks ran while both droppers did.
    assert walks > 10 and rounds[0] >= 3 and toggles[0] >= 3, (walks, rounds, toggles)
