"""walg.core.metadata against golden documents written the way WAL-G (and WAL-E) write them.

Two directions:

* reading: every golden file under ``golden/`` parses into the right values (Go v1 decoding:
  case-insensitive keys, unknown keys ignored, old layouts accepted);
* writing: what walg writes has every key WAL-G reads, with the JSON type WAL-G expects, and
  walg's own additions (``Walg*`` keys) survive a round trip.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from walg.core.gotime import GoTime
from walg.core.metadata import (
    DATE_FMT,
    BackupMetadata,
    Checksum,
    FileDescription,
    FilesMetadata,
    Sentinel,
    StoredObject,
    Tablespace,
    TablespaceSpec,
)
from walg.errors import FormatError

GOLDEN = Path(__file__).parent / "golden"
RFC3339NANO_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d*[1-9])?(Z|[+-]\d{2}:\d{2})$"
)
SHA_A = "a" * 64
SHA_B = "b" * 64
SHA_C = "c" * 64

# Every key WAL-G's BackupSentinelDto(V2) reads, and the JSON type it decodes into.
SENTINEL_KEYS_WALG_READS: dict[str, tuple[type, ...]] = {
    "LSN": (int,),
    "DeltaLSN": (int,),
    "DeltaFrom": (str,),
    "DeltaFullName": (str,),
    "DeltaCount": (int,),
    "PgVersion": (int,),
    "FinishLSN": (int,),
    "SystemIdentifier": (int,),
    "UncompressedSize": (int,),
    "CompressedSize": (int,),
    "DataCatalogSize": (int,),
    "Spec": (dict,),
    "UserData": (dict, list, str, int, float, bool),
    "ChkpNum": (type(None),),
    "Version": (int,),
    "StartTime": (str,),
    "FinishTime": (str,),
    "DateFmt": (str,),
    "Hostname": (str,),
    "DataDir": (str,),
    "IsPermanent": (bool,),
}
METADATA_KEYS_WALG_READS: dict[str, tuple[type, ...]] = {
    "start_time": (str,),
    "finish_time": (str,),
    "date_fmt": (str,),
    "hostname": (str,),
    "data_dir": (str,),
    "pg_version": (int,),
    "start_lsn": (int,),
    "finish_lsn": (int,),
    "is_permanent": (bool,),
    "system_identifier": (int, type(None)),
    "uncompressed_size": (int,),
    "compressed_size": (int,),
}


def golden(name: str) -> bytes:
    return (GOLDEN / name).read_bytes()


def golden_keys(name: str) -> list[str]:
    return list(json.loads(golden(name)))


def assert_json_types(doc: dict[str, Any], expected: dict[str, tuple[type, ...]]) -> None:
    for key, types in expected.items():
        assert key in doc, f"{key} missing"
        value = doc[key]
        assert isinstance(value, types), f"{key}={value!r} is not {types}"
        if int in types and bool not in types:
            assert not isinstance(value, bool), f"{key} must be a JSON integer, not a boolean"


def spec_one() -> TablespaceSpec:
    return TablespaceSpec(
        "/var/lib/postgresql/16/main", (Tablespace("16385", "/mnt/tbs1", "pg_tblspc/16385"),)
    )


def full_sentinel(**changes: Any) -> Sentinel:
    fields: dict[str, Any] = dict(
        lsn=0x3000028,
        finish_lsn=0x3000128,
        pg_version=160002,
        start_time=GoTime.parse("2024-05-01T10:00:00.123457Z"),
        finish_time=GoTime.parse("2024-05-01T10:00:07.000001Z"),
        hostname="db1",
        data_dir="/var/lib/postgresql/16/main",
        system_identifier=7352215480210000000,
        uncompressed_size=23561234,
        compressed_size=4391021,
        data_catalog_size=23800000,
        walg_version="0.1.0",
    )
    fields.update(changes)
    return Sentinel(**fields)


def delta_sentinel(**changes: Any) -> Sentinel:
    base: dict[str, Any] = dict(
        lsn=0x9000028,
        finish_lsn=0x9000100,
        delta_lsn=0x3000028,
        delta_from="base_000000010000000000000003",
        delta_full_name="base_000000010000000000000003",
        delta_count=1,
        spec=spec_one(),
        user_data={"env": "prod", "shard": 3},
        is_permanent=True,
    )
    base.update(changes)
    return full_sentinel(**base)


# ============================================================================================
# Reading WAL-G's documents
# ============================================================================================


def test_golden_v2_full_sentinel_values() -> None:
    s = Sentinel.loads(golden("sentinel_v2_full.json"))
    assert s.lsn == 50331688
    assert s.finish_lsn == 50331944
    assert s.pg_version == 160002
    assert s.system_identifier == 7352215480210000000  # > 2**53: must stay an exact integer
    assert s.uncompressed_size == 23561234
    assert s.compressed_size == 4391021
    assert s.data_catalog_size == 23800000
    assert s.version == 2
    assert s.start_time == GoTime.parse("2024-05-01T10:00:00.123457Z")
    assert s.finish_time is not None
    assert s.finish_time.ns == 1_714_557_607_000_001_000
    assert s.hostname == "db1"
    assert s.data_dir == "/var/lib/postgresql/16/main"
    assert s.is_permanent is False
    assert s.spec is None
    assert s.user_data is None
    assert not s.is_delta
    assert s.delta_lsn is None
    assert s.legacy_files is None
    assert s.walg_version is None


def test_golden_v2_full_sentinel_rewrites_byte_for_byte() -> None:
    """walg's writer emits WAL-G's keys in WAL-G's order, compact, as Go's encoding/json."""
    raw = golden("sentinel_v2_full.json")
    assert Sentinel.loads(raw).dumps() == raw


def test_golden_v2_delta_sentinel_values() -> None:
    s = Sentinel.loads(golden("sentinel_v2_delta.json"))
    assert s.is_delta
    assert s.lsn == 0x9000028
    assert s.delta_lsn == 0x3000028
    assert s.delta_from == "base_000000010000000000000003"
    assert s.delta_full_name == "base_000000010000000000000003"
    assert s.delta_count == 1
    assert s.user_data == {"env": "prod", "shard": 3}
    assert s.is_permanent is True
    assert s.start_time == GoTime(1_714_644_000_500_000_000)
    assert s.spec == spec_one()


def test_golden_v2_delta_sentinel_round_trips() -> None:
    raw = golden("sentinel_v2_delta.json")
    again = Sentinel.loads(raw).dumps()
    assert json.loads(again) == json.loads(raw)
    assert list(json.loads(again)) == golden_keys("sentinel_v2_delta.json")
    assert Sentinel.loads(again) == Sentinel.loads(raw)


def test_golden_old_walg_sentinel_with_files_inside() -> None:
    s = Sentinel.loads(golden("sentinel_walg_1x.json"))
    assert s.version == 0  # no Version key: older than V2
    assert s.delta_lsn == 16777256  # from the pre-2.0 name DeltaFromLSN
    assert s.is_delta
    assert s.delta_count == 1
    assert s.pg_version == 110005
    assert s.user_data == "nightly"
    assert s.start_time is None
    assert s.legacy_files is not None
    files = FilesMetadata.from_json({"Files": s.legacy_files})
    assert set(files.files) == {"/", "/PG_VERSION", "/base/1/1259"}
    assert files.files["/base/1/1259"].is_incremented
    assert files.files["/PG_VERSION"].is_skipped
    assert files.files["/"].mtime == GoTime.parse("2019-03-04T12:00:00.123456789+03:00")


def test_golden_wale_sentinel() -> None:
    s = Sentinel.loads(golden("sentinel_wale.json"))
    assert s.lsn is None  # no LSN: not usable as a delta base, but restorable
    assert s.finish_lsn is None
    assert s.version == 0
    assert not s.is_delta
    assert s.spec is not None
    assert s.spec.base_prefix == "/var/lib/postgresql/9.6/main"
    assert s.spec.tablespaces == (
        Tablespace("16385", "/mnt/tbs1", "pg_tblspc/16385"),
        Tablespace("16390", "/mnt/tbs2", "pg_tblspc/16390"),
    )
    # expanded_size_bytes is WAL-E's; WAL-G does not map it to UncompressedSize.
    assert s.uncompressed_size == 0


def test_golden_sentinel_with_spec_null() -> None:
    s = Sentinel.loads(golden("sentinel_spec_null.json"))
    assert s.spec is None
    assert s.version == 2
    assert s.pg_version == 150006
    assert "Spec" not in s.to_json()  # walg writes it with omitempty, as current WAL-G


def test_golden_metadata_json_values() -> None:
    m = BackupMetadata.loads(golden("metadata.json"))
    assert m.start_time == GoTime.parse("2024-05-01T10:00:00.123457Z")
    assert m.finish_time == GoTime.parse("2024-05-01T10:00:07.000001Z")
    assert m.hostname == "db1"
    assert m.data_dir == "/var/lib/postgresql/16/main"
    assert m.pg_version == 160002
    assert m.start_lsn == 50331688
    assert m.finish_lsn == 50331944
    assert m.is_permanent is True
    assert m.system_identifier == 7352215480210000000
    assert m.uncompressed_size == 23561234
    assert m.compressed_size == 4391021
    assert m.user_data == {"env": "prod", "tags": ["a", "b"]}


def test_golden_metadata_json_rewrites_byte_for_byte() -> None:
    raw = golden("metadata.json")
    assert BackupMetadata.loads(raw).dumps() == raw


def test_golden_files_metadata_values() -> None:
    fm = FilesMetadata.loads(golden("files_metadata.json"))
    assert set(fm.files) == {
        "/",
        "/PG_VERSION",
        "/base",
        "/base/16384/2619",
        "/pg_tblspc/16385/PG_16_202307071/16386/16390",
    }
    root = fm.files["/"]
    assert root.mtime == GoTime(1_598_018_992_966_149_937, 5 * 3600)
    assert not root.is_incremented
    assert not root.is_skipped
    assert fm.files["/PG_VERSION"].is_skipped
    rel = fm.files["/base/16384/2619"]
    assert rel.is_incremented
    assert rel.updates_count == 7
    assert rel.mtime == GoTime.parse("2020-08-21T19:09:52.000000001-07:30")
    assert rel.mtime is not None
    assert rel.mtime.offset == -(7 * 3600 + 30 * 60)
    assert rel.checksum is None  # written by WAL-G: no walg checksum
    assert fm.tar_file_sets == {
        "part_001.tar.lz4": ("/", "/base", "/base/16384/2619"),
        "part_003.tar.lz4": ("/pg_tblspc/16385/PG_16_202307071/16386/16390",),
        "backup_label.tar.lz4": ("tablespace_map", "backup_label"),
    }
    assert fm.checksum_of("/base/16384/2619") is None
    assert fm.utility_files == {}
    assert fm.objects == {}


def test_golden_files_metadata_round_trip_keeps_mtimes_and_sets() -> None:
    raw = golden("files_metadata.json")
    fm = FilesMetadata.loads(raw)
    out = json.loads(fm.dumps())
    original = json.loads(raw)
    assert set(out["Files"]) == set(original["Files"])
    for name, entry in original["Files"].items():
        assert out["Files"][name]["MTime"] == entry["MTime"]
        assert out["Files"][name].get("IsIncremented", False) == entry["IsIncremented"]
        assert out["Files"][name].get("IsSkipped", False) == entry["IsSkipped"]
        assert out["Files"][name]["UpdatesCount"] == entry["UpdatesCount"]
    assert out["TarFileSets"] == original["TarFileSets"]
    assert FilesMetadata.loads(fm.dumps()) == fm


# --- Go v1 decoding rules ----------------------------------------------------------------------


def test_sentinel_keys_match_case_insensitively() -> None:
    doc = {
        "lsn": 100,
        "FINISHLSN": 200,
        "pgversion": 140010,
        "deltalsn": 50,
        "deltafrom": "base_000000010000000000000001",
        "DELTAFULLNAME": "base_000000010000000000000001",
        "deltaCount": 2,
        "starttime": "2024-05-01T10:00:00Z",
        "hostName": "h",
        "isPermanent": True,
        "userdata": [1, 2],
        "SPEC": {"base_prefix": "/d", "tablespaces": []},
    }
    s = Sentinel.from_json(doc)
    assert (s.lsn, s.finish_lsn, s.pg_version) == (100, 200, 140010)
    assert (s.delta_lsn, s.delta_count) == (50, 2)
    assert s.delta_full_name == "base_000000010000000000000001"
    assert s.start_time == GoTime.parse("2024-05-01T10:00:00Z")
    assert s.hostname == "h"
    assert s.is_permanent is True
    assert s.user_data == [1, 2]
    assert s.spec == TablespaceSpec("/d", ())


def test_unknown_keys_are_ignored() -> None:
    doc = json.loads(golden("sentinel_v2_full.json"))
    doc.update({"Timeline": 1, "DeltaChkpNum": 7, "SomethingNew": {"x": [1]}})
    assert Sentinel.from_json(doc) == Sentinel.loads(golden("sentinel_v2_full.json"))
    meta = json.loads(golden("metadata.json"))
    meta["timeline"] = 1
    meta["future_key"] = "x"
    assert BackupMetadata.loads(json.dumps(meta)) == BackupMetadata.loads(golden("metadata.json"))
    files = json.loads(golden("files_metadata.json"))
    files["Files"]["/"]["FutureFlag"] = True
    files["FutureSection"] = {}
    assert FilesMetadata.from_json(files) == FilesMetadata.loads(golden("files_metadata.json"))


def test_files_metadata_keys_match_case_insensitively() -> None:
    fm = FilesMetadata.from_json(
        {
            "files": {"/a": {"isincremented": True, "mtime": "2024-01-01T00:00:00.5+01:00"}},
            "TARFILESETS": {"part_001.tar.lz4": ["/a"]},
        }
    )
    assert fm.files["/a"].is_incremented
    assert fm.files["/a"].mtime == GoTime.parse("2024-01-01T00:00:00.5+01:00")
    assert fm.tar_file_sets == {"part_001.tar.lz4": ("/a",)}


def test_go_zero_mtime_means_unknown() -> None:
    d = FileDescription.from_json({"MTime": "0001-01-01T00:00:00Z"})
    assert d.mtime is None
    assert d.to_json()["MTime"] == "0001-01-01T00:00:00Z"


@pytest.mark.parametrize(
    "doc",
    [
        {"LSN": "50331688"},  # LSNs are JSON integers
        {"LSN": True},
        {"LSN": 1, "PgVersion": 1.5},
        {"LSN": 1, "StartTime": 12},
        {"LSN": 1, "StartTime": "yesterday"},
        {"LSN": 1, "Hostname": 5},
        # WAL-G panics on an inconsistent delta sentinel; walg refuses it.
        {"LSN": 1, "DeltaFrom": "base_000000010000000000000001"},
        {"LSN": 1, "DeltaFrom": "base_000000010000000000000001", "DeltaLSN": 1, "DeltaCount": 1},
        {"LSN": 1, "Spec": {"tablespaces": ["1"]}},
        {"LSN": 1, "Spec": {"base_prefix": "/d", "tablespaces": ["1"]}},
        {"LSN": 1, "Spec": {"base_prefix": "/d", "tablespaces": ["1"], "1": {"loc": "/x"}}},
    ],
)
def test_malformed_sentinels_raise_format_error(doc: dict[str, Any]) -> None:
    with pytest.raises(FormatError):
        Sentinel.from_json(doc)


@pytest.mark.parametrize("text", [b"", b"not json", b"[1,2]", b"null", b"\xff\xfe"])
def test_sentinel_loads_rejects_non_objects(text: bytes) -> None:
    with pytest.raises(FormatError):
        Sentinel.loads(text)
    with pytest.raises(FormatError):
        BackupMetadata.loads(text)
    with pytest.raises(FormatError):
        FilesMetadata.loads(text)


@pytest.mark.parametrize("field", ["LSN", "FinishLSN", "DeltaLSN", "DeltaFromLSN"])
@pytest.mark.parametrize("value", [-1, -5, 1 << 64])
def test_sentinel_lsns_outside_uint64_are_refused(field: str, value: int) -> None:
    # WAL-G decodes LSNs into uint64; walg printed -5 as -1/FFFFFFFB.
    with pytest.raises(FormatError, match=field):
        Sentinel.from_json({"LSN": 1, field: value})
    assert Sentinel.from_json({"LSN": 1, field: (1 << 64) - 1}) is not None


@pytest.mark.parametrize("field", ["start_lsn", "finish_lsn"])
@pytest.mark.parametrize("value", [-1, -5, 1 << 64])
def test_metadata_lsns_outside_uint64_are_refused(field: str, value: int) -> None:
    doc = json.loads(golden("metadata.json"))
    doc[field] = value
    with pytest.raises(FormatError, match=field):
        BackupMetadata.loads(json.dumps(doc))
    doc[field] = (1 << 64) - 1
    assert getattr(BackupMetadata.loads(json.dumps(doc)), field) == (1 << 64) - 1


# ============================================================================================
# What walg writes
# ============================================================================================


def test_written_full_sentinel_has_every_key_walg_reads_with_go_types() -> None:
    doc = json.loads(full_sentinel(spec=spec_one(), user_data={"k": 1}).dumps())
    wanted = {
        k: v
        for k, v in SENTINEL_KEYS_WALG_READS.items()
        if k not in ("DeltaLSN", "DeltaFrom", "DeltaFullName", "DeltaCount")
    }
    assert_json_types(doc, wanted)
    assert doc["ChkpNum"] is None
    assert doc["Version"] == 2
    assert doc["DateFmt"] == "%Y-%m-%dT%H:%M:%S.%fZ" == DATE_FMT
    assert doc["LSN"] == 0x3000028
    assert doc["FinishLSN"] == 0x3000128
    for key in ("StartTime", "FinishTime"):
        assert RFC3339NANO_RE.match(doc[key]), doc[key]
        assert doc[key].endswith("Z")
    assert doc["Spec"] == {
        "base_prefix": "/var/lib/postgresql/16/main",
        "tablespaces": ["16385"],
        "16385": {"loc": "/mnt/tbs1", "link": "pg_tblspc/16385"},
    }
    assert not any(k.startswith("Delta") for k in doc)


def test_written_full_sentinel_key_order_is_walgs() -> None:
    doc = json.loads(full_sentinel().dumps())
    walg_order = golden_keys("sentinel_v2_full.json")
    assert list(doc)[: len(walg_order)] == walg_order
    assert list(doc)[len(walg_order) :] == ["WalgVersion"]


def test_written_delta_sentinel_has_delta_keys() -> None:
    doc = json.loads(delta_sentinel().dumps())
    assert_json_types(doc, SENTINEL_KEYS_WALG_READS)
    assert doc["DeltaLSN"] == 0x3000028
    assert doc["DeltaFrom"] == doc["DeltaFullName"] == "base_000000010000000000000003"
    assert doc["DeltaCount"] == 1
    assert doc["IsPermanent"] is True
    assert [k for k in doc if k != "WalgVersion"] == golden_keys("sentinel_v2_delta.json")


def test_written_sentinel_integers_are_exact() -> None:
    raw = full_sentinel(lsn=2**64 - 1, system_identifier=2**64 - 2).dumps()
    assert b'"LSN":18446744073709551615' in raw
    assert b'"SystemIdentifier":18446744073709551614' in raw
    assert b"e+" not in raw and b".0," not in raw


@pytest.mark.parametrize("factory", [full_sentinel, delta_sentinel])
def test_sentinel_round_trip_including_walg_version(factory: Any) -> None:
    s = factory()
    again = Sentinel.loads(s.dumps())
    assert again == s
    assert again.walg_version == "0.1.0"
    assert json.loads(s.dumps())["WalgVersion"] == "0.1.0"


def test_sentinel_optional_flags() -> None:
    doc = full_sentinel(files_metadata_disabled=True, user_data="text").to_json()
    assert doc["FilesMetadataDisabled"] is True
    assert doc["UserData"] == "text"
    plain = full_sentinel(system_identifier=None, data_catalog_size=0, walg_version=None).to_json()
    for key in ("FilesMetadataDisabled", "UserData", "SystemIdentifier", "DataCatalogSize"):
        assert key not in plain
    assert "WalgVersion" not in plain


def metadata(**changes: Any) -> BackupMetadata:
    fields: dict[str, Any] = dict(
        start_time=GoTime.parse("2024-05-01T10:00:00.123457Z"),
        finish_time=GoTime.parse("2024-05-01T10:00:07.000001Z"),
        hostname="db1",
        data_dir="/var/lib/postgresql/16/main",
        pg_version=160002,
        start_lsn=0x3000028,
        finish_lsn=0x3000128,
        is_permanent=False,
        system_identifier=7352215480210000000,
        uncompressed_size=10,
        compressed_size=5,
    )
    fields.update(changes)
    return BackupMetadata(**fields)


def test_written_metadata_has_every_key_walg_reads() -> None:
    doc = json.loads(metadata(user_data={"a": 1}).dumps())
    assert_json_types(doc, METADATA_KEYS_WALG_READS)
    assert list(doc) == golden_keys("metadata.json")
    assert doc["date_fmt"] == DATE_FMT
    assert RFC3339NANO_RE.match(doc["start_time"])
    assert doc["user_data"] == {"a": 1}


def test_written_metadata_system_identifier_null_is_kept() -> None:
    doc = json.loads(metadata(system_identifier=None).dumps())
    assert "system_identifier" in doc and doc["system_identifier"] is None  # no omitempty
    assert "user_data" not in doc  # omitempty
    assert BackupMetadata.loads(metadata(system_identifier=None).dumps()) == metadata(
        system_identifier=None
    )


def files_metadata() -> FilesMetadata:
    return FilesMetadata(
        files={
            "/": FileDescription(mtime=GoTime(1_598_018_992_966_149_937, 5 * 3600)),
            "/base/1/1259": FileDescription(
                mtime=GoTime(1_598_018_992_000_000_001, -3600),
                checksum=Checksum(8192, SHA_A),
            ),
            "/base/1/1249": FileDescription(
                mtime=GoTime(1_598_018_992_000_000_000),
                is_incremented=True,
                checksum=Checksum(20, SHA_B),
                updates_count=3,
            ),
            "/base/1/2608": FileDescription(
                mtime=GoTime(1_598_018_992_000_000_000), is_skipped=True
            ),
        },
        tar_file_sets={"part_001.tar.lz4": ("/", "/base/1/1259", "/base/1/1249")},
        utility_files={"/global/pg_control": Checksum(8192, SHA_C)},
        objects={"part_001.tar.lz4": StoredObject(Checksum(300, SHA_A), 20000)},
    )


def test_written_files_metadata_shape() -> None:
    doc = json.loads(files_metadata().dumps())
    assert set(doc) == {"Files", "TarFileSets", "WalgUtilityFiles", "WalgObjects"}
    root = doc["Files"]["/"]
    assert root["MTime"] == "2020-08-21T19:09:52.966149937+05:00"
    assert root["UpdatesCount"] == 0
    assert "WalgSize" not in root
    rel = doc["Files"]["/base/1/1259"]
    assert re.search(r"\.\d{9}[+-]\d{2}:\d{2}$", rel["MTime"]), rel["MTime"]
    assert rel["WalgSize"] == 8192
    assert rel["WalgBlake3"] == SHA_A
    assert isinstance(rel["UpdatesCount"], int)
    assert doc["Files"]["/base/1/1249"]["IsIncremented"] is True
    assert doc["Files"]["/base/1/2608"]["IsSkipped"] is True
    for entry in doc["Files"].values():
        assert RFC3339NANO_RE.match(entry["MTime"])
    assert doc["TarFileSets"] == {"part_001.tar.lz4": ["/", "/base/1/1259", "/base/1/1249"]}
    assert doc["WalgUtilityFiles"] == {"/global/pg_control": {"Size": 8192, "Blake3": SHA_C}}
    assert doc["WalgObjects"] == {
        "part_001.tar.lz4": {"StoredSize": 300, "Blake3": SHA_A, "RawSize": 20000}
    }


def test_files_metadata_round_trip_keeps_walg_extras() -> None:
    fm = files_metadata()
    again = FilesMetadata.loads(fm.dumps())
    assert again == fm
    assert again.checksum_of("/base/1/1259") == Checksum(8192, SHA_A)
    assert again.checksum_of("/global/pg_control") == Checksum(8192, SHA_C)
    assert again.checksum_of("/nope") is None
    assert again.objects["part_001.tar.lz4"].raw_size == 20000


def test_empty_files_metadata_writes_empty_object() -> None:
    assert FilesMetadata.empty().dumps() == b"{}"
    assert FilesMetadata.loads(b"{}") == FilesMetadata.empty()


def test_malformed_walg_extras_are_ignored_not_fatal() -> None:
    fm = FilesMetadata.from_json(
        {
            "Files": {"/a": {"MTime": "2024-01-01T00:00:00Z", "WalgSize": "x"}},
            "WalgUtilityFiles": {"/global/pg_control": {"Size": "big"}},
            "WalgObjects": {"part_001.tar.lz4": {"StoredSize": 1}},
        }
    )
    assert fm.files["/a"].checksum is None
    assert fm.utility_files == {}
    assert fm.objects == {}


def test_files_metadata_written_in_pieces_is_the_one_document() -> None:
    """iter_json (what backup-push streams into storage) writes exactly what the document
    encoded at once would be, odd member names and empty sections included."""
    fm = files_metadata()
    odd = FilesMetadata(
        files={'/é "quoted"\n': FileDescription(), "/\\": FileDescription(is_skipped=True)},
        tar_file_sets={"part_001.tar.lz4": ('/é "quoted"\n', "/\\"), "part_002.tar.lz4": ()},
    )
    for doc in (fm, odd, FilesMetadata.empty(), FilesMetadata({}, {"p": ("/a",)})):
        whole = json.dumps(doc.to_json(), separators=(",", ":"), ensure_ascii=False)
        assert "".join(doc.iter_json()) == whole
        assert doc.dumps() == whole.encode("utf-8")
        assert FilesMetadata.loads(doc.dumps()) == doc


def test_sentinel_records_the_files_metadata_checksum() -> None:
    checksum = Checksum(1234, SHA_A)
    written = full_sentinel(files_metadata_checksum=checksum)
    doc = json.loads(written.dumps())
    assert doc["WalgFilesMetadata"] == {"Size": 1234, "Blake3": SHA_A}
    assert Sentinel.loads(written.dumps()).files_metadata_checksum == checksum
    assert "WalgFilesMetadata" not in json.loads(full_sentinel().dumps())


def test_sentinel_records_a_finish_timeline_only_where_it_differs() -> None:
    written = full_sentinel(finish_timeline=3)
    assert json.loads(written.dumps())["WalgFinishTimeline"] == 3
    assert Sentinel.loads(written.dumps()).finish_timeline == 3
    assert "WalgFinishTimeline" not in json.loads(full_sentinel().dumps())
    assert Sentinel.loads(full_sentinel().dumps()).finish_timeline is None


@pytest.mark.parametrize("value", [0, -1, 1 << 32, "2", 2.0, True, [2]])
def test_a_finish_timeline_walg_did_not_write_makes_the_sentinel_unreadable(value: Any) -> None:
    doc = json.loads(full_sentinel().dumps())
    doc["WalgFinishTimeline"] = value
    with pytest.raises(FormatError, match="WalgFinishTimeline"):
        Sentinel.loads(json.dumps(doc))


@pytest.mark.parametrize(
    "value",
    [
        {"Size": "1234", "Blake3": SHA_A},  # a string: the check would be skipped
        {"Size": 1.5, "Blake3": SHA_A},
        {"Size": True, "Blake3": SHA_A},
        {"Size": -1, "Blake3": SHA_A},
        {"Size": 1 << 63, "Blake3": SHA_A},
        {"Size": 10, "Blake3": "xyz"},
        {"Size": 10},
        "yes",
        [],
    ],
)
def test_a_files_metadata_record_walg_did_not_write_makes_the_sentinel_unreadable(
    value: Any,
) -> None:
    doc = json.loads(full_sentinel().dumps())
    doc["WalgFilesMetadata"] = value
    with pytest.raises(FormatError):
        Sentinel.loads(json.dumps(doc))
