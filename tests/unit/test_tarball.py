"""walg.tarball.writer / reader: WAL-G-shaped tar members (leading '/') on io.BytesIO."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import blake3
import pytest

from walg.core.checksum import Checksum
from walg.errors import IntegrityError, WalgError
from walg.postgres import datadir
from walg.postgres.datadir import KIND_DIR, KIND_FILE, Entry
from walg.tarball.reader import TarReader
from walg.tarball.writer import TarWriter, header

MTIME_NS = 1_598_018_992_966_149_937
LONG_DIR = "/pg_tblspc/16385/PG_16_202307071/" + "d" * 60
LONG_FILE = LONG_DIR + "/" + "f" * 120  # > 100 and > 255 characters: needs PAX


def dir_entry(member: str, mode: int = 0o700) -> Entry:
    return Entry(member, "", KIND_DIR, 0, mode, MTIME_NS, 1000, 1000)


def file_entry(member: str, path: Path, size: int | None = None, mode: int = 0o600) -> Entry:
    real = path.stat().st_size
    return Entry(
        member, str(path), KIND_FILE, real if size is None else size, mode, MTIME_NS, 26, 26
    )


def write_file(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def read_all(raw: bytes) -> list[tuple[str, bytes, int, bytes, str]]:
    out = []
    for member, payload in TarReader(io.BytesIO(raw), "test.tar").members():
        out.append((member.name, member.type, member.mode, payload.read(), member.linkname))
    return out


def raw_header_names(raw: bytes) -> list[tuple[str, bytes]]:
    """Member names exactly as stored in the headers (PAX path records honoured), no cleanup."""
    names: list[tuple[str, bytes]] = []
    pos = 0
    pax_path: str | None = None
    while pos + 512 <= len(raw):
        block = raw[pos : pos + 512]
        pos += 512
        if block == bytes(512):
            break
        kind = block[156:157]
        size = int(block[124:136].strip(b"\0 ") or b"0", 8)
        payload = raw[pos : pos + size]
        pos += (size + 511) // 512 * 512
        if kind == b"x":
            for record in payload.split(b"\n"):
                if b" path=" in record:
                    pax_path = record.split(b"=", 1)[1].decode()
            continue
        name = block[0:100].split(b"\0", 1)[0].decode()
        prefix = block[345:500].split(b"\0", 1)[0].decode()
        if prefix:
            name = prefix + "/" + name
        names.append((pax_path if pax_path is not None else name, kind))
        pax_path = None
    return names


@pytest.fixture
def sample(tmp_path: Path) -> tuple[bytes, dict[str, bytes], dict[str, Checksum]]:
    payloads = {
        "/PG_VERSION": b"16\n",
        "/base/1/1259": os.urandom(8192 * 3),
        "/global/empty": b"",
        LONG_FILE: b"long name payload",
    }
    sink = io.BytesIO()
    tar = TarWriter(sink)
    sums: dict[str, Checksum] = {}
    tar.add_entry(dir_entry("/base"))
    tar.add_entry(dir_entry("/base/1"))
    tar.add_entry(dir_entry("/global"))
    tar.add_entry(dir_entry(LONG_DIR))
    for i, (member, data) in enumerate(payloads.items()):
        path = write_file(tmp_path / f"src{i}", data)
        checksum = tar.add_entry(file_entry(member, path, mode=0o640))
        assert checksum is not None
        sums[member] = checksum
    sums["backup_label"] = tar.add_bytes("backup_label", b"START WAL LOCATION: 0/3000028\n")
    tar.finish()
    return sink.getvalue(), payloads, sums


def test_round_trip_names_types_modes_and_payloads(
    sample: tuple[bytes, dict[str, bytes], dict[str, Checksum]],
) -> None:
    raw, payloads, sums = sample
    got = read_all(raw)
    names = [g[0] for g in got]
    assert names == [
        "/base",
        "/base/1",
        "/global",
        LONG_DIR,
        "/PG_VERSION",
        "/base/1/1259",
        "/global/empty",
        LONG_FILE,
        "backup_label",  # label files have no leading slash
    ]
    by_name = {g[0]: g for g in got}
    for member, data in payloads.items():
        assert by_name[member][1] == tarfile.REGTYPE
        assert by_name[member][2] == 0o640
        assert by_name[member][3] == data
        assert sums[member] == Checksum(len(data), blake3.blake3(data).hexdigest())
    assert by_name["/base"][1] == tarfile.DIRTYPE
    assert by_name["/base"][3] == b""
    assert by_name["backup_label"][3] == b"START WAL LOCATION: 0/3000028\n"
    assert len(raw) % 512 == 0


def test_writer_bookkeeping(tmp_path: Path) -> None:
    sink = io.BytesIO()
    tar = TarWriter(sink)
    tar.add_entry(dir_entry("/"))
    path = write_file(tmp_path / "f", b"x" * 1000)
    tar.add_entry(file_entry("/f", path))
    tar.add_bytes("backup_label", b"abc")
    assert tar.members == ["/", "/f", "backup_label"]
    assert tar.payload_size == 1003  # payload bytes only, no headers or padding
    tar.finish()
    assert sink.getvalue().endswith(bytes(1024))


def test_python_tarfile_reads_walg_tars(
    sample: tuple[bytes, dict[str, bytes], dict[str, Checksum]],
) -> None:
    raw, payloads, _ = sample
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
        members = {m.name: m for m in tf.getmembers()}
        for member, data in payloads.items():
            handle = tf.extractfile(members[member])
            assert handle is not None
            assert handle.read() == data
        assert members["/base/1/1259"].mtime == MTIME_NS // 1_000_000_000
        assert members["/base/1/1259"].uid == 26


def test_file_member_header_names_keep_the_leading_slash(
    sample: tuple[bytes, dict[str, bytes], dict[str, Checksum]],
) -> None:
    raw, payloads, _ = sample
    stored = dict(raw_header_names(raw))
    for member in [*payloads, "backup_label"]:
        assert stored[member] == tarfile.REGTYPE


def test_root_directory_member_is_written_as_slash() -> None:
    sink = io.BytesIO()
    tar = TarWriter(sink)
    tar.add_entry(dir_entry("/"))
    tar.finish()
    assert raw_header_names(sink.getvalue()) == [("/", tarfile.DIRTYPE)]


def test_reader_returns_root_member_name_as_stored() -> None:
    sink = io.BytesIO()
    tar = TarWriter(sink)
    tar.add_entry(dir_entry("/"))
    tar.finish()
    assert [g[0] for g in read_all(sink.getvalue())] == ["/"]


def test_directory_header_names_equal_the_walked_member_names() -> None:
    sink = io.BytesIO()
    tar = TarWriter(sink)
    for member in ("/base", "/pg_wal", LONG_DIR):
        tar.add_entry(dir_entry(member))
    tar.finish()
    assert [n for n, _ in raw_header_names(sink.getvalue())] == ["/base", "/pg_wal", LONG_DIR]


def make_pgdata(root: Path) -> Path:
    pgdata = root / "pgdata"
    for rel, data in {
        "PG_VERSION": b"16\n",
        "global/pg_control": b"\1" * 8192,
        "global/1262": b"\2" * 8192,
        "base/1/1259": b"\3" * 16384,
        "base/1/1259_fsm": b"\4" * 100,
        "pg_wal/000000010000000000000001": b"wal",
        "pg_stat_tmp/global.stat": b"tmp",
        "postmaster.pid": b"123",
        "postgresql.conf": b"# conf",
        "a/" + "b" * 110 + "/file": b"deep",
    }.items():
        write_file(pgdata / rel, data)
    (pgdata / "pg_replslot").mkdir()
    return pgdata


def test_walked_data_directory_members_match_tar_headers(tmp_path: Path) -> None:
    """What backup-push records in Files (entry.member) equals what the tar stores for files."""
    pgdata = make_pgdata(tmp_path)
    walk = datadir.walk(str(pgdata))
    members = [e.member for e in walk.entries]
    assert members[0] == "/"
    assert "/global/pg_control" not in members  # held back for pg_control.tar
    assert walk.pg_control is not None and walk.pg_control.member == "/global/pg_control"
    assert "/postmaster.pid" not in members
    assert "/pg_wal" in members and "/pg_wal/000000010000000000000001" not in members
    assert "/pg_replslot" in members
    assert all(m.startswith("/") for m in members)
    sink = io.BytesIO()
    tar = TarWriter(sink)
    files: dict[str, Checksum | None] = {}
    for entry in walk.entries:
        files[entry.member] = tar.add_entry(entry)
    tar.finish()
    raw = sink.getvalue()
    assert tar.members == members
    stored_files = [n for n, kind in raw_header_names(raw) if kind == tarfile.REGTYPE]
    assert stored_files == [e.member for e in walk.entries if e.kind == KIND_FILE]
    restored = {g[0]: g[3] for g in read_all(raw)}
    for entry in walk.entries:
        if entry.kind == KIND_FILE:
            data = Path(entry.path).read_bytes()
            assert restored[entry.member] == data
            assert files[entry.member] == Checksum(len(data), blake3.blake3(data).hexdigest())


# WAL-G's list (and pg_basebackup's, less its own additions): what a server rebuilds at start,
# runtime state, and what would make a restored directory start as something else (a standby,
# an old-style recovery). Spelled out here, not taken from walg.postgres.datadir, so that a
# name dropped from walg's list fails this test.
EXCLUDED_DIRS = [
    "log", "pg_log", "pg_xlog", "pg_wal", "pgsql_tmp", "pg_dynshmem", "pg_notify",
    "pg_replslot", "pg_serial", "pg_stat_tmp", "pg_snapshots", "pg_subtrans",
]  # fmt: skip
EXCLUDED_FILES = [
    "postgresql.auto.conf.tmp", "postmaster.pid", "postmaster.opts", "recovery.conf",
    "standby.signal",
]  # fmt: skip
# What recovery needs and must find in the backup: never excluded.
KEPT_FILES = [
    "PG_VERSION", "postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf",
    "pg_xact/0000", "pg_multixact/offsets/0000", "pg_multixact/members/0000",
    "pg_commit_ts/0000", "pg_twophase/00000301", "pg_logical/replorigin_checkpoint",
    "pg_logical/snapshots/0-1.snap", "pg_stat/pgstat.stat", "base/1/1259", "global/1262",
    "pg_filenode.map", "current_logfiles", "tablespace_map.old",
]  # fmt: skip


def test_excluded_names_are_dropped_where_the_server_keeps_them_and_nothing_else_is(
    tmp_path: Path,
) -> None:
    """An excluded folder stays as an empty folder (PostgreSQL needs pg_wal, pg_notify... to
    exist), at the top and deeper (pgsql_tmp in a tablespace's database folder); an excluded
    file is dropped at the top only, where the server keeps it: deeper, a file of that name
    is the operator's (conf.d/recovery.conf, included from postgresql.conf), and WAL-G's
    dropping it there lost it from the restore. Every other file is archived."""
    pgdata = make_pgdata(tmp_path)
    for parent in ("", "base/1/"):
        for name in EXCLUDED_DIRS:
            write_file(pgdata / f"{parent}{name}/inside", b"runtime state")
        for name in EXCLUDED_FILES:
            write_file(pgdata / f"{parent}{name}", b"runtime state")
    for rel in KEPT_FILES:
        write_file(pgdata / rel, b"needed")
    walk = datadir.walk(str(pgdata))
    files = {e.member for e in walk.entries if e.kind == KIND_FILE}
    dirs = {e.member for e in walk.entries if e.kind == KIND_DIR}
    for parent in ("/", "/base/1/"):
        for name in EXCLUDED_DIRS:
            assert f"{parent}{name}" in dirs, name
            assert f"{parent}{name}/inside" not in files, name
    for name in EXCLUDED_FILES:
        assert f"/{name}" not in files | dirs, name
        assert f"/base/1/{name}" in files, name
    for rel in KEPT_FILES:
        assert f"/{rel}" in files, rel
    assert not walk.skipped


def test_file_that_shrinks_is_zero_padded_to_walked_size(tmp_path: Path) -> None:
    path = write_file(tmp_path / "rel", b"A" * 10_000)
    entry = file_entry("/base/1/16384", path)
    path.write_bytes(b"B" * 3000)  # truncated after the walk
    sink = io.BytesIO()
    tar = TarWriter(sink)
    checksum = tar.add_entry(entry)
    tar.add_bytes("/after", b"next member still aligned")
    tar.finish()
    expected = b"B" * 3000 + bytes(7000)
    assert checksum == Checksum(10_000, blake3.blake3(expected).hexdigest())
    got = dict((g[0], g[3]) for g in read_all(sink.getvalue()))
    assert got["/base/1/16384"] == expected
    assert got["/after"] == b"next member still aligned"
    assert tar.payload_size == 10_000 + 25


def test_file_that_shrinks_to_nothing_over_a_megabyte(tmp_path: Path) -> None:
    path = write_file(tmp_path / "rel", b"A" * 10)
    entry = file_entry("/big", path, size=(1 << 20) * 2 + 7)
    path.write_bytes(b"")
    sink = io.BytesIO()
    tar = TarWriter(sink)
    checksum = tar.add_entry(entry)
    tar.finish()
    assert checksum is not None and checksum.size == entry.size
    assert read_all(sink.getvalue())[0][3] == bytes(entry.size)


def test_file_that_grows_is_cut_at_walked_size(tmp_path: Path) -> None:
    path = write_file(tmp_path / "rel", b"A" * 100)
    entry = file_entry("/base/1/16384", path)
    path.write_bytes(b"A" * 100 + b"B" * 5000)  # grew after the walk
    sink = io.BytesIO()
    tar = TarWriter(sink)
    checksum = tar.add_entry(entry)
    tar.add_bytes("/after", b"ok")
    tar.finish()
    got = dict((g[0], g[3]) for g in read_all(sink.getvalue()))
    assert got["/base/1/16384"] == b"A" * 100
    assert got["/after"] == b"ok"
    assert checksum == Checksum(100, blake3.blake3(b"A" * 100).hexdigest())


def test_vanished_file_is_skipped(tmp_path: Path) -> None:
    path = write_file(tmp_path / "rel", b"A" * 100)
    entry = file_entry("/base/1/16384", path)
    path.unlink()
    sink = io.BytesIO()
    tar = TarWriter(sink)
    assert tar.add_entry(entry) is None
    assert tar.members == []
    assert sink.getvalue() == b""


def test_unreadable_file_fails_naming_the_data_directory_file(tmp_path: Path) -> None:
    # Root reads any file, so "unreadable" is a directory where the walk saw a file; the
    # integration test (test_backup_push_refusals.py) has the real EACCES as pgtest.
    path = write_file(tmp_path / "rel", b"A" * 100)
    entry = file_entry("/base/1/16384", path)
    path.unlink()
    path.mkdir()
    tar = TarWriter(io.BytesIO())
    with pytest.raises(WalgError, match=rf"cannot read {path} \(member /base/1/16384 "):
        tar.add_entry(entry)


def test_symlinked_pg_wal_is_archived_as_an_empty_0700_directory(tmp_path: Path) -> None:
    pgdata = make_pgdata(tmp_path)
    wal = pgdata / "pg_wal"
    elsewhere = tmp_path / "waldir"
    wal.rename(elsewhere)
    wal.symlink_to(elsewhere)
    walk = datadir.walk(str(pgdata))
    entries = {e.member: e for e in walk.entries}
    assert entries["/pg_wal"].kind == KIND_DIR
    assert entries["/pg_wal"].mode == 0o700
    assert not any(m.startswith("/pg_wal/") for m in entries)
    # Other excluded names that are links are still dropped, as WAL-G drops them.
    (pgdata / "base" / "pg_wal").symlink_to(elsewhere)
    assert "/base/pg_wal" not in {e.member for e in datadir.walk(str(pgdata)).entries}


def test_tablespaces_are_walked_before_the_rest_of_pgdata(tmp_path: Path) -> None:
    """pg_basebackup's order: ALTER DATABASE SET TABLESPACE pg_default while a backup runs
    is rebuilt by recovery from the old (tablespace) directory, so that must be read first."""
    pgdata = make_pgdata(tmp_path)
    location = tmp_path / "ts"
    write_file(location / "PG_16_202307071" / "16390" / "16391", b"\5" * 8192)
    (pgdata / "pg_tblspc").mkdir()
    (pgdata / "pg_tblspc" / "16389").symlink_to(location)
    members = [e.member for e in datadir.walk(str(pgdata)).entries]
    assert members[:5] == [
        "/",
        "/pg_tblspc",
        "/pg_tblspc/16389",
        "/pg_tblspc/16389/PG_16_202307071",
        "/pg_tblspc/16389/PG_16_202307071/16390",
    ]
    assert members.index("/pg_tblspc/16389/PG_16_202307071/16390/16391") < members.index("/base")
    rest = [m for m in members[1:] if not m.startswith("/pg_tblspc")]
    assert rest == sorted(rest)


def test_links_and_fifos_are_not_archived_but_listed_as_skipped(tmp_path: Path) -> None:
    pgdata = make_pgdata(tmp_path)
    conf = write_file(tmp_path / "etc" / "postgresql.conf", b"# conf")
    (pgdata / "postgresql.conf").unlink()
    (pgdata / "postgresql.conf").symlink_to(conf)
    os.mkfifo(pgdata / "base" / "a_fifo")
    walk = datadir.walk(str(pgdata))
    members = {e.member for e in walk.entries}
    assert "/postgresql.conf" not in members and "/base/a_fifo" not in members
    assert walk.skipped == [
        datadir.Skipped("/base/a_fifo", "FIFO"),
        datadir.Skipped("/postgresql.conf", f"symbolic link to {conf}"),
    ]


def test_pgdata_given_as_a_link_is_archived_with_the_directorys_mode(tmp_path: Path) -> None:
    pgdata = make_pgdata(tmp_path)
    pgdata.chmod(0o700)
    link = tmp_path / "pgdata-link"
    link.symlink_to(pgdata)
    root = datadir.walk(str(link)).entries[0]
    assert (root.member, root.mode) == ("/", 0o700)  # not the link's 0777


def test_big_uid_and_mtime_survive_via_pax() -> None:
    raw = header("/f", size=0, uid=3_000_000, gid=4_000_000, mtime=2**34) + bytes(1024)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        member = tf.getmembers()[0]
    assert (member.uid, member.gid, member.mtime) == (3_000_000, 4_000_000, 2**34)
    assert [g[0] for g in read_all(raw)] == ["/f"]


# --- the reader on hand-made and damaged archives ---------------------------------------------


def gnu_tar(names: list[str]) -> bytes:
    sink = io.BytesIO()
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name in names:
            info = tarfile.TarInfo(name)
            data = name.encode()
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return sink.getvalue()


def test_reader_handles_gnu_long_names() -> None:
    names = ["/" + "x" * 150, "/short", "/" + "y/" * 80 + "z"]
    got = read_all(gnu_tar(names))
    assert [g[0] for g in got] == names
    assert [g[3] for g in got] == [n.encode() for n in names]


def test_reader_handles_links_and_partial_payload_reads() -> None:
    sink = io.BytesIO()
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT) as tf:
        link = tarfile.TarInfo("/link")
        link.type = tarfile.SYMTYPE
        link.linkname = "/target/" + "t" * 150
        tf.addfile(link)
        for name, size in (("/a", 1000), ("/b", 10)):
            info = tarfile.TarInfo(name)
            info.size = size
            tf.addfile(info, io.BytesIO(name[-1:].encode() * size))
    got = []
    for member, payload in TarReader(io.BytesIO(sink.getvalue()), "t").members():
        got.append((member.name, member.linkname, payload.read(3)))  # read only part of it
    assert got == [("/link", "/target/" + "t" * 150, b""), ("/a", "", b"aaa"), ("/b", "", b"bbb")]


def simple_tar() -> bytes:
    sink = io.BytesIO()
    tar = TarWriter(sink)
    tar.add_bytes("/one", b"1" * 700)
    tar.add_bytes("/two", b"2" * 100)
    tar.finish()
    return sink.getvalue()


def test_truncated_stream_is_rejected_at_every_cut() -> None:
    raw = simple_tar()
    end_marker = len(raw) - 1024
    for cut in [*range(0, end_marker + 1, 64), end_marker, end_marker - 1, 1, 511, 513]:
        with pytest.raises(IntegrityError) as info:
            read_all(raw[:cut])
        assert "test.tar" in str(info.value)


def test_one_zero_block_ends_the_archive_like_go() -> None:
    raw = simple_tar()
    assert [g[0] for g in read_all(raw[:-512])] == ["/one", "/two"]


def test_corrupted_header_checksum_is_rejected() -> None:
    raw = bytearray(simple_tar())
    raw[1] ^= 0x01  # a byte of the first member's name
    with pytest.raises(IntegrityError) as info:
        read_all(bytes(raw))
    assert "test.tar" in str(info.value)
    raw = bytearray(simple_tar())
    second_header = 512 + 1024
    raw[second_header + 130] ^= 0x02  # size field of the second member
    with pytest.raises(IntegrityError):
        read_all(bytes(raw))


def test_zero_padding_after_end_is_accepted() -> None:
    raw = simple_tar() + bytes(10_240)
    assert [g[0] for g in read_all(raw)] == ["/one", "/two"]


@pytest.mark.parametrize("garbage", [b"\x01", bytes(5000) + b"x", b"PK\x03\x04"])
def test_non_zero_bytes_after_end_are_rejected(garbage: bytes) -> None:
    with pytest.raises(IntegrityError) as info:
        read_all(simple_tar() + garbage)
    assert "after the end" in str(info.value)


def test_oversized_extended_header_is_refused() -> None:
    # Well-formed records, so that only the bound refuses them (zeros would be refused as a
    # corrupt header even with no bound, after being read into memory).
    body = b"comment=" + b"c" * (2 << 20) + b"\n"
    length = len(body) + 1 + 7  # "<length> " with a 7-digit length
    record = b"%d " % length + body
    assert len(record) == length
    raw = header("././@PaxHeader", kind=tarfile.XHDTYPE, size=len(record))
    raw += record + bytes(-len(record) % 512) + header("/x") + bytes(1024)
    with pytest.raises(IntegrityError) as info:
        read_all(raw)
    assert f"tar extended header of {len(record)} bytes refused" in str(info.value)


@pytest.mark.parametrize(
    "records",
    [b"garbage", b"999 path=/x\n", b"0 path=/x\n", b"12 pathx/x\n", b"xx path=/x\n"],
)
def test_corrupt_pax_records_are_rejected(records: bytes) -> None:
    raw = header("././@PaxHeader", kind=tarfile.XHDTYPE, size=len(records))
    raw += records + bytes(-len(records) % 512)
    raw += header("/x") + bytes(1024)
    with pytest.raises(IntegrityError):
        read_all(raw)


def test_bad_pax_size_is_rejected() -> None:
    record = b"14 size=abcde\n"
    raw = header("././@PaxHeader", kind=tarfile.XHDTYPE, size=len(record))
    raw += record + bytes(512 - len(record)) + header("/x") + bytes(1024)
    with pytest.raises(IntegrityError):
        read_all(raw)
