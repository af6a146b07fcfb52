"""walg.tarball.extract: never write outside the destination, PostgreSQL modes, checksums."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import blake3
import pytest

from walg.core.checksum import Checksum
from walg.errors import DestinationError, IntegrityError, UnsafeArchiveError
from walg.tarball.extract import Extractor, safe_relative
from walg.tarball.writer import header


def no_checksums(_name: str) -> Checksum | None:
    return None


def hostile_tar(members: list[tarfile.TarInfo], payloads: dict[str, bytes] | None = None) -> bytes:
    """A tar whose names and types are set by hand (tarfile.addfile does not sanitise them)."""
    payloads = payloads or {}
    sink = io.BytesIO()
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info in members:
            data = payloads.get(info.name)
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return sink.getvalue()


def member(
    name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o600, link: str = ""
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = link
    return info


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    d = tmp_path / "restore"
    d.mkdir(mode=0o700)
    return d


# --- safe_relative ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rel"),
    [
        ("/base/1/1259", "base/1/1259"),
        ("base/1/1259", "base/1/1259"),
        ("/", ""),
        ("", ""),
        ("./PG_VERSION", "PG_VERSION"),
        ("//global///pg_control", "global/pg_control"),
        (
            "/pg_tblspc/16385/PG_16_202307071/16386/16390",
            "pg_tblspc/16385/PG_16_202307071/16386/16390",
        ),
        ("backup_label", "backup_label"),
        ("/a/..b/c..", "a/..b/c.."),
    ],
)
def test_safe_relative_accepts(name: str, rel: str) -> None:
    assert safe_relative(name) == rel


@pytest.mark.parametrize(
    "name",
    ["../etc/passwd", "/../x", "a/../../b", "a/..", "..", "/base/\0/x", "x\0", "a/b/../c"],
)
def test_safe_relative_rejects(name: str) -> None:
    with pytest.raises(UnsafeArchiveError):
        safe_relative(name)


# --- Extractor on hostile archives ------------------------------------------------------------


@pytest.mark.parametrize("name", ["../evil", "/../evil", "base/../../evil", "a/b/../../../evil"])
def test_dot_dot_members_are_refused(tmp_path: Path, dest: Path, name: str) -> None:
    raw = hostile_tar([member(name)], {name: b"pwned"})
    with pytest.raises(UnsafeArchiveError):
        Extractor(dest, no_checksums).extract(io.BytesIO(raw), "evil.tar")
    assert not (tmp_path / "evil").exists()
    assert tree(dest) == []


def test_hard_links_are_refused(tmp_path: Path, dest: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"do not link me")
    raw = hostile_tar([member("/pwn", tarfile.LNKTYPE, link=str(secret))])
    with pytest.raises(UnsafeArchiveError) as info:
        Extractor(dest, no_checksums).extract(io.BytesIO(raw), "evil.tar")
    assert "evil.tar" in str(info.value)
    assert tree(dest) == []
    assert secret.stat().st_nlink == 1


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_device_nodes_and_fifos_are_refused(dest: Path, kind: bytes) -> None:
    info = member("/dev_node", kind)
    info.devmajor, info.devminor = 1, 3
    raw = hostile_tar([info])
    with pytest.raises(UnsafeArchiveError):
        Extractor(dest, no_checksums).extract(io.BytesIO(raw), "evil.tar")
    assert tree(dest) == []


def test_symlink_members_are_not_created(tmp_path: Path, dest: Path) -> None:
    raw = hostile_tar(
        [member("/escape", tarfile.SYMTYPE, link=str(tmp_path)), member("/escape/owned")],
        {"/escape/owned": b"through the link"},
    )
    extractor = Extractor(dest, no_checksums)
    written = extractor.extract(io.BytesIO(raw), "evil.tar")
    assert not (dest / "escape").is_symlink()
    assert "/escape" not in written
    # The file is written inside the destination, never through a link.
    assert (dest / "escape" / "owned").read_bytes() == b"through the link"
    assert not (tmp_path / "owned").exists()


def test_existing_symlink_at_file_path_is_not_followed(tmp_path: Path, dest: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"original")
    (dest / "PG_VERSION").symlink_to(target)
    raw = hostile_tar([member("/PG_VERSION")], {"/PG_VERSION": b"16\n"})
    with pytest.raises(UnsafeArchiveError):
        Extractor(dest, no_checksums).extract(io.BytesIO(raw), "evil.tar")
    assert target.read_bytes() == b"original"


def test_member_naming_the_root_as_a_file_is_refused(dest: Path) -> None:
    raw = hostile_tar([member("/")], {"/": b"x"})
    with pytest.raises(UnsafeArchiveError):
        Extractor(dest, no_checksums).extract(io.BytesIO(raw), "evil.tar")


def test_nul_in_pax_path_is_refused(dest: Path) -> None:
    record = b"path=/a\0b"
    record = str(len(record) + 4).encode() + b" " + record + b"\n"
    raw = header("././@PaxHeader", kind=tarfile.XHDTYPE, size=len(record))
    raw += record + bytes(-len(record) % 512) + header("/x") + bytes(1024)
    with pytest.raises(UnsafeArchiveError):
        Extractor(dest, no_checksums).extract(io.BytesIO(raw), "evil.tar")


# --- modes, checksums, filtering --------------------------------------------------------------


def test_modes_are_capped_like_postgres(dest: Path) -> None:
    raw = hostile_tar(
        [
            member("/", tarfile.DIRTYPE, 0o777),
            member("/base", tarfile.DIRTYPE, 0o777),
            member("/base/1", tarfile.DIRTYPE, 0o2755),
            member("/base/1/1259", tarfile.REGTYPE, 0o777),
            member("/PG_VERSION", tarfile.REGTYPE, 0o4755),
            member("/postgresql.conf", tarfile.REGTYPE, 0o400),
        ],
        {"/base/1/1259": b"p" * 8192, "/PG_VERSION": b"16\n", "/postgresql.conf": b"#"},
    )
    old_umask = os.umask(0)
    try:
        Extractor(dest, no_checksums, fsync=False).extract(io.BytesIO(raw), "t.tar")
    finally:
        os.umask(old_umask)
    for rel in ("base", "base/1"):
        mode = stat.S_IMODE((dest / rel).stat().st_mode)
        assert mode & ~0o750 == 0, f"{rel}: {mode:o}"
        assert mode & 0o700 == 0o700
    for rel in ("base/1/1259", "PG_VERSION", "postgresql.conf"):
        mode = stat.S_IMODE((dest / rel).stat().st_mode)
        assert mode & ~0o640 == 0, f"{rel}: {mode:o}"
        assert mode & 0o600 == 0o600
    assert (dest / "base/1/1259").read_bytes() == b"p" * 8192


def test_directory_member_after_its_files_fixes_the_mode(dest: Path) -> None:
    raw = hostile_tar(
        [member("/base/1/1259"), member("/base/1", tarfile.DIRTYPE, 0o755)],
        {"/base/1/1259": b"x"},
    )
    old_umask = os.umask(0o022)
    try:
        Extractor(dest, no_checksums, fsync=False).extract(io.BytesIO(raw), "t.tar")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((dest / "base/1").stat().st_mode) == 0o750
    assert (dest / "base/1/1259").read_bytes() == b"x"


def test_files_in_missing_directories_get_private_parents(dest: Path) -> None:
    raw = hostile_tar([member("/deep/er/file")], {"/deep/er/file": b"x"})
    old_umask = os.umask(0o022)
    try:
        Extractor(dest, no_checksums, fsync=False).extract(io.BytesIO(raw), "t.tar")
    finally:
        os.umask(old_umask)
    assert (dest / "deep/er/file").read_bytes() == b"x"
    for rel in ("deep", "deep/er"):
        mode = stat.S_IMODE((dest / rel).stat().st_mode)
        assert mode & ~0o750 == 0, f"{rel}: {mode:o}"


def checksums_for(files: dict[str, bytes]) -> dict[str, Checksum]:
    return {n: Checksum(len(d), blake3.blake3(d).hexdigest()) for n, d in files.items()}


def test_checksums_verified(dest: Path) -> None:
    files = {"/base/1/1259": os.urandom(20_000), "/PG_VERSION": b"16\n"}
    sums = checksums_for(files)
    raw = hostile_tar([member(n) for n in files], files)
    extractor = Extractor(dest, sums.get)
    written = extractor.extract(io.BytesIO(raw), "part_001.tar.lz4")
    assert written == list(files)
    assert extractor.verified == set(files)
    assert extractor.files == 2
    assert extractor.bytes == sum(len(d) for d in files.values())


@pytest.mark.parametrize("damage", ["content", "size"])
def test_checksum_mismatch_names_the_file(dest: Path, damage: str) -> None:
    good = b"a" * 5000
    sums = checksums_for({"/base/1/1259": good})
    bad = good[:-1] + b"b" if damage == "content" else good + b"!"
    raw = hostile_tar([member("/base/1/1259")], {"/base/1/1259": bad})
    extractor = Extractor(dest, sums.get)
    with pytest.raises(IntegrityError) as info:
        extractor.extract(io.BytesIO(raw), "part_007.tar.lz4")
    message = str(info.value)
    assert "base/1/1259" in message
    assert "part_007.tar.lz4" in message
    assert "/base/1/1259" not in extractor.verified


def test_wanted_filter_skips_other_members(dest: Path) -> None:
    files = {"/keep": b"1", "/drop": b"2", "/base/keep2": b"3"}
    raw = hostile_tar([member(n) for n in files], files)
    extractor = Extractor(dest, no_checksums, wanted={"/keep", "/base/keep2"})
    written = extractor.extract(io.BytesIO(raw), "t.tar")
    assert written == ["/keep", "/base/keep2"]
    assert tree(dest) == ["base", "base/keep2", "keep"]


def test_wanted_filter_still_refuses_unsafe_names(tmp_path: Path, dest: Path) -> None:
    raw = hostile_tar([member("/../outside")], {"/../outside": b"x"})
    with pytest.raises(UnsafeArchiveError):
        Extractor(dest, no_checksums, wanted={"/keep"}).extract(io.BytesIO(raw), "t.tar")
    assert not (tmp_path / "outside").exists()


def test_cancelled_extractor_stops(dest: Path) -> None:
    raw = hostile_tar([member("/a")], {"/a": b"1"})
    extractor = Extractor(dest, no_checksums)
    extractor.cancelled.set()
    with pytest.raises(IntegrityError):
        extractor.extract(io.BytesIO(raw), "t.tar")
    assert tree(dest) == []


def test_wal_g_style_members_land_under_destination(dest: Path) -> None:
    """Leading-slash names (WAL-G) and label files without one both go under dest."""
    files = {"/global/1262": b"g", "backup_label": b"START", "tablespace_map": b""}
    raw = hostile_tar(
        [member("/global", tarfile.DIRTYPE, 0o700), *(member(n) for n in files)], files
    )
    Extractor(dest, no_checksums, fsync=False).extract(io.BytesIO(raw), "t.tar")
    assert (dest / "global/1262").read_bytes() == b"g"
    assert (dest / "backup_label").read_bytes() == b"START"
    assert (dest / "tablespace_map").read_bytes() == b""


def test_member_larger_than_recorded_is_refused_before_writing(dest: Path) -> None:
    # A forged or corrupt object: the metadata says 8 KiB, the header 8 MiB of (LZ4-cheap)
    # zeros. Nothing may reach the disk before the refusal.
    sums = checksums_for({"/base/1/bomb": bytes(8192)})
    raw = hostile_tar([member("/base/1/bomb")], {"/base/1/bomb": bytes(8 << 20)})
    extractor = Extractor(dest, sums.get, fsync=False)
    with pytest.raises(IntegrityError) as info:
        extractor.extract(io.BytesIO(raw), "part_003.tar.lz4")
    message = str(info.value)
    assert "base/1/bomb" in message and "part_003.tar.lz4" in message
    assert "8388608" in message and "8192" in message
    assert tree(dest) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_a_full_disk_names_the_file_being_written(dest: Path) -> None:
    # The kernel's full device (1, 7) answers every write with ENOSPC, as a full disk does.
    (dest / "base").mkdir()
    os.mknod(dest / "base" / "16384", stat.S_IFCHR | 0o600, os.makedev(1, 7))
    raw = hostile_tar([member("/base/16384")], {"/base/16384": b"x" * 8192})
    with pytest.raises(DestinationError) as info:
        Extractor(dest, no_checksums, fsync=False).extract(io.BytesIO(raw), "part_002.tar.lz4")
    message = str(info.value)
    assert str(dest / "base" / "16384") in message
    assert "No space left on device" in message and "part_002.tar.lz4" in message
