"""walg.core.naming: WAL-G's storage keys, object names and backup names."""

from __future__ import annotations

import pytest

from walg.core import naming
from walg.errors import FormatError

FULL = "base_000000010000000000000004"
DELTA = "base_000000010000000000000009_D_000000010000000000000004"


def test_top_level_folders() -> None:
    assert naming.BASEBACKUPS == "basebackups_005/"
    assert naming.WAL == "wal_005/"


def test_sentinel_sits_beside_the_backup_folder() -> None:
    assert naming.sentinel_key(FULL) == f"basebackups_005/{FULL}_backup_stop_sentinel.json"
    assert naming.backup_folder(FULL) == f"basebackups_005/{FULL}/"
    assert not naming.sentinel_key(FULL).startswith(naming.backup_folder(FULL))


def test_metadata_keys() -> None:
    assert naming.metadata_key(FULL) == f"basebackups_005/{FULL}/metadata.json"
    assert naming.files_metadata_key(DELTA) == f"basebackups_005/{DELTA}/files_metadata.json"
    assert naming.partitions_prefix(FULL) == f"basebackups_005/{FULL}/tar_partitions/"


@pytest.mark.parametrize(
    ("number", "ext", "name"),
    [
        (1, "lz4", "part_001.tar.lz4"),
        (12, "zst", "part_012.tar.zst"),
        (999, "br", "part_999.tar.br"),
        (1000, "lz4", "part_1000.tar.lz4"),
        (1, "", "part_001.tar"),  # 'none' compression: no extension (WAL-G v3.0.9+)
    ],
)
def test_part_object_names(number: int, ext: str, name: str) -> None:
    assert naming.part_object_name(number, ext) == name


def test_wal_keys() -> None:
    assert (
        naming.wal_key("000000010000000A000000FE", "lz4") == "wal_005/000000010000000A000000FE.lz4"
    )
    assert naming.wal_key("00000002.history", "lz4") == "wal_005/00000002.history.lz4"
    assert naming.wal_key("000000010000000000000001", "") == "wal_005/000000010000000000000001"
    assert naming.with_ext("x", "") == "x"
    assert naming.with_ext("x", "br") == "x.br"


@pytest.mark.parametrize(
    ("object_name", "ext"),
    [
        ("part_001.tar.lz4", "lz4"),
        ("part_001.tar.zst", "zst"),
        ("part_001.tar", ""),
        ("part_001.tar.", ""),  # WAL-G < 3.0.9 with compression 'none'
        ("pg_control.tar.lz4", "lz4"),
        ("pg_control.tar.", ""),
        ("backup_label.tar.br", "br"),
        ("copy_3.tar.lzma", "lzma"),
        ("part_1.tar.lzo", "lzo"),  # WAL-E
    ],
)
def test_tar_object_extension(object_name: str, ext: str) -> None:
    assert naming.tar_object_extension(object_name) == ext


@pytest.mark.parametrize("object_name", ["metadata.json", "part_001", "part_001.lz4", ""])
def test_tar_object_extension_rejects_non_tar_names(object_name: str) -> None:
    with pytest.raises(FormatError):
        naming.tar_object_extension(object_name)


@pytest.mark.parametrize(
    ("name", "matches"),
    [
        ("pg_control.tar.lz4", True),
        ("pg_control.tar", True),
        ("pg_control.tar.zst", True),
        ("part_001.tar.lz4", False),
        ("backup_label.tar.lz4", False),
    ],
)
def test_pg_control_tar_regex(name: str, matches: bool) -> None:
    assert bool(naming.PG_CONTROL_TAR_RE.fullmatch(name)) is matches


def test_backup_label_tar_regex() -> None:
    assert naming.BACKUP_LABEL_TAR_RE.fullmatch("backup_label.tar.zst")
    assert naming.BACKUP_LABEL_TAR_RE.fullmatch("backup_label.tar")
    assert not naming.BACKUP_LABEL_TAR_RE.fullmatch("backup_label")
    assert not naming.BACKUP_LABEL_TAR_RE.fullmatch("pg_control.tar.lz4")


@pytest.mark.parametrize(
    ("regex", "name"),
    [("PG_CONTROL_TAR_RE", "pg_control.tar."), ("BACKUP_LABEL_TAR_RE", "backup_label.tar.")],
)
def test_special_tar_regexes_accept_legacy_trailing_dot(regex: str, name: str) -> None:
    assert getattr(naming, regex).match(name)


@pytest.mark.parametrize(
    "name",
    [
        FULL,
        DELTA,
        "base_000000010000000000000004_00000028",  # WAL-E offset suffix
        "base_00000001000000A1000000FF",
    ],
)
def test_backup_name_regex_accepts(name: str) -> None:
    assert naming.BACKUP_NAME_RE.fullmatch(name)
    assert naming.check_backup_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "base_00000001000000000000000",  # 23 hex
        "base_000000010000000000000004x",
        "base_000000010000000a00000004",  # lower case
        "000000010000000000000004",
        "base_000000010000000000000009_D_",
        "base_000000010000000000000004_0028",
        "LATEST",
        "../base_000000010000000000000004",
        "",
    ],
)
def test_backup_name_regex_rejects(name: str) -> None:
    assert not naming.BACKUP_NAME_RE.fullmatch(name)
    with pytest.raises(FormatError):
        naming.check_backup_name(name)


def test_backup_name_of_full_and_delta() -> None:
    assert naming.backup_name("000000010000000000000004") == FULL
    assert naming.backup_name("000000010000000000000009", FULL) == DELTA
    # A delta of a delta names the base's *start* segment (first 24-hex token), not its full name.
    assert (
        naming.backup_name("00000001000000000000000C", DELTA)
        == "base_00000001000000000000000C_D_000000010000000000000009"
    )
    with pytest.raises(FormatError):
        naming.backup_name("00000001000000000000000C", "not-a-backup")


def test_first_wal_token() -> None:
    assert naming.first_wal_token(DELTA) == "000000010000000000000009"
    assert naming.first_wal_token("base_") is None


@pytest.mark.parametrize(
    ("key", "name"),
    [
        (f"basebackups_005/{FULL}_backup_stop_sentinel.json", FULL),
        (f"basebackups_005/{DELTA}_backup_stop_sentinel.json", DELTA),
        ("basebackups_005/anything_backup_stop_sentinel.json", "anything"),
        (f"basebackups_005/{FULL}/x_backup_stop_sentinel.json", None),  # deeper: not a sentinel
        (f"basebackups_005/{FULL}/metadata.json", None),
        (f"wal_005/{FULL}_backup_stop_sentinel.json", None),
        ("basebackups_005/_backup_stop_sentinel.json", None),
        (f"{FULL}_backup_stop_sentinel.json", None),
    ],
)
def test_backup_name_from_sentinel_key(key: str, name: str | None) -> None:
    assert naming.backup_name_from_sentinel_key(key) == name


def test_sentinel_key_round_trip() -> None:
    for name in (FULL, DELTA):
        assert naming.backup_name_from_sentinel_key(naming.sentinel_key(name)) == name


def test_special_member_names() -> None:
    assert naming.PG_CONTROL_MEMBER == "/global/pg_control"
    assert naming.BACKUP_LABEL_MEMBER == "backup_label"
    assert naming.TABLESPACE_MAP_MEMBER == "tablespace_map"
