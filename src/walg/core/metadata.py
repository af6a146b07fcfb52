"""The JSON documents of a backup: sentinel, ``metadata.json`` and ``files_metadata.json``.

Keys, types and optionality follow WAL-G (see the project's format notes). Reading follows Go's
encoding/json v1: keys match case-insensitively and unknown keys are ignored, so documents from
old WAL-G releases and WAL-E parse too. walg's own additions (per-file and per-object checksums,
its version) live under keys that start with ``Walg``; WAL-G ignores them, and walg never changes
the meaning of a key WAL-G writes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from walg.core.checksum import Checksum, StoredObject, ci_keys
from walg.core.gotime import GO_ZERO_TEXT, GoTime
from walg.errors import FormatError

DATE_FMT = "%Y-%m-%dT%H:%M:%S.%fZ"
SENTINEL_VERSION = 2


_ci = ci_keys


def _opt_int(doc: Mapping[str, Any], key: str) -> int | None:
    value = doc.get(key.lower())
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise FormatError(f"{key} must be an integer, got {value!r}")
    return value


def _opt_lsn(doc: Mapping[str, Any], key: str) -> int | None:
    """An LSN field: Go reads it into a uint64 and refuses anything outside."""
    value = _opt_int(doc, key)
    if value is not None and not 0 <= value < 1 << 64:
        raise FormatError(f"{key} must be an LSN between 0 and 2^64-1, got {value}")
    return value


def _int(doc: Mapping[str, Any], key: str) -> int:
    value = _opt_int(doc, key)
    return 0 if value is None else value


def _opt_str(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key.lower())
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise FormatError(f"{key} must be a string, got {value!r}")
    return value


def _opt_time(doc: Mapping[str, Any], key: str) -> GoTime | None:
    """A time field; None when absent, null, empty or Go's zero time (all one value to Go)."""
    value = doc.get(key.lower())
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise FormatError(f"{key} must be a time string, got {value!r}")
    parsed = GoTime.parse(value)
    return None if parsed.is_zero else parsed


def _time_json(value: GoTime | None) -> str:
    # WAL-G's time fields are time.Time, never pointers: a time it does not know is written
    # as Go's zero time, not null.
    return value.format() if value is not None else GO_ZERO_TEXT


def _load(text: str | bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise FormatError(f"{what} must be a JSON object")
    return doc


def _encoder() -> json.JSONEncoder:
    # allow_nan=False: NaN and Infinity are not JSON; no reader (WAL-G's least) would load them.
    return json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_json_text(text: str) -> bytes:
    """UTF-8 of JSON text, lone surrogates written as ``\\udcXX`` escapes.

    File names that are not UTF-8 reach walg as str with lone surrogates (Python's
    surrogateescape); UTF-8 has no bytes for them. They only occur inside string literals,
    where ``backslashreplace`` writes exactly JSON's escape, so ``json.loads`` gives back the
    same str and the restored name the same bytes. (Go's decoder reads such an escape as
    U+FFFD: WAL-G restores these names changed.)
    """
    return text.encode("utf-8", "backslashreplace")


def dumps(doc: Mapping[str, Any]) -> bytes:
    return encode_json_text(_encoder().encode(doc))


@dataclass(frozen=True)
class Tablespace:
    """One tablespace of a backup: its OID name, location and pg_tblspc link."""

    name: str
    location: str
    link: str


@dataclass(frozen=True)
class TablespaceSpec:
    """WAL-G's (and WAL-E's) tablespace spec: where each ``pg_tblspc/<oid>`` link pointed."""

    base_prefix: str
    tablespaces: tuple[Tablespace, ...]

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "base_prefix": self.base_prefix,
            "tablespaces": [t.name for t in self.tablespaces],
        }
        for t in self.tablespaces:
            doc[t.name] = {"loc": t.location, "link": t.link}
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> TablespaceSpec:
        if not isinstance(doc, dict):
            raise FormatError("tablespace spec must be a JSON object")
        names = doc.get("tablespaces")
        base = doc.get("base_prefix")
        if not isinstance(names, list) or not isinstance(base, str):
            raise FormatError("tablespace spec needs base_prefix and tablespaces")
        items = []
        for name in names:
            entry = doc.get(name)
            if not isinstance(name, str) or not isinstance(entry, dict):
                raise FormatError(f"tablespace spec has no entry for {name!r}")
            loc, link = entry.get("loc"), entry.get("link")
            if not isinstance(loc, str) or not isinstance(link, str):
                raise FormatError(f"tablespace spec entry {name!r} needs loc and link")
            items.append(Tablespace(name, loc, link))
        return cls(base, tuple(items))


@dataclass(frozen=True)
class Sentinel:
    """``<name>_backup_stop_sentinel.json``: the object whose existence makes a backup exist."""

    lsn: int | None
    finish_lsn: int | None
    pg_version: int
    start_time: GoTime | None = None
    finish_time: GoTime | None = None
    hostname: str = ""
    data_dir: str = ""
    system_identifier: int | None = None
    uncompressed_size: int = 0
    compressed_size: int = 0
    data_catalog_size: int = 0
    spec: TablespaceSpec | None = None
    user_data: Any = None
    files_metadata_disabled: bool = False
    is_permanent: bool = False
    delta_lsn: int | None = None
    delta_from: str | None = None
    delta_full_name: str | None = None
    delta_count: int = 0
    version: int = SENTINEL_VERSION
    walg_version: str | None = None
    # walg's checksum of files_metadata.json: the list of every other checksum, vouched for by
    # the object written last.
    files_metadata_checksum: Checksum | None = None
    # walg's: the timeline FinishLSN is on, where it is not the one the backup's name starts
    # on (a standby that followed its promoted upstream during the backup).
    finish_timeline: int | None = None
    # Files metadata carried inside the sentinel by WAL-G < 2.0 and WAL-E-era documents.
    legacy_files: Mapping[str, Any] | None = field(default=None, compare=False)

    @property
    def is_delta(self) -> bool:
        return self.delta_from is not None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"LSN": self.lsn}
        if self.delta_lsn:
            doc["DeltaLSN"] = self.delta_lsn
        if self.delta_from:
            doc["DeltaFrom"] = self.delta_from
        if self.delta_full_name:
            doc["DeltaFullName"] = self.delta_full_name
        if self.delta_count:
            doc["DeltaCount"] = self.delta_count
        doc["PgVersion"] = self.pg_version
        doc["FinishLSN"] = self.finish_lsn
        if self.system_identifier:
            doc["SystemIdentifier"] = self.system_identifier
        doc["UncompressedSize"] = self.uncompressed_size
        doc["CompressedSize"] = self.compressed_size
        if self.data_catalog_size:
            doc["DataCatalogSize"] = self.data_catalog_size
        if self.spec is not None:
            doc["Spec"] = self.spec.to_json()
        if self.user_data is not None:
            doc["UserData"] = self.user_data
        if self.files_metadata_disabled:
            doc["FilesMetadataDisabled"] = True
        doc["ChkpNum"] = None
        doc["Version"] = self.version
        doc["StartTime"] = _time_json(self.start_time)
        doc["FinishTime"] = _time_json(self.finish_time)
        doc["DateFmt"] = DATE_FMT
        doc["Hostname"] = self.hostname
        doc["DataDir"] = self.data_dir
        doc["IsPermanent"] = self.is_permanent
        if self.walg_version:
            doc["WalgVersion"] = self.walg_version
        if self.files_metadata_checksum is not None:
            doc["WalgFilesMetadata"] = self.files_metadata_checksum.to_json()
        if self.finish_timeline is not None:
            doc["WalgFinishTimeline"] = self.finish_timeline
        return doc

    def dumps(self) -> bytes:
        return dumps(self.to_json())

    @classmethod
    def loads(cls, text: str | bytes, what: str = "sentinel") -> Sentinel:
        return cls.from_json(_load(text, what))

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Sentinel:
        doc = _ci(raw)
        spec_doc = doc.get("spec")
        delta_lsn = _opt_lsn(doc, "DeltaLSN")
        if delta_lsn is None:
            delta_lsn = _opt_lsn(doc, "DeltaFromLSN")
        delta_from = _opt_str(doc, "DeltaFrom")
        delta_full = _opt_str(doc, "DeltaFullName")
        delta_count = _int(doc, "DeltaCount")
        if delta_from and (delta_lsn is None or not delta_full or not delta_count):
            raise FormatError(
                "sentinel of a delta backup lacks DeltaLSN, DeltaFullName or DeltaCount"
            )
        legacy = doc.get("files")
        version = _opt_int(doc, "Version")
        return cls(
            lsn=_opt_lsn(doc, "LSN"),
            finish_lsn=_opt_lsn(doc, "FinishLSN"),
            pg_version=_int(doc, "PgVersion"),
            start_time=_opt_time(doc, "StartTime"),
            finish_time=_opt_time(doc, "FinishTime"),
            hostname=_opt_str(doc, "Hostname") or "",
            data_dir=_opt_str(doc, "DataDir") or "",
            system_identifier=_opt_int(doc, "SystemIdentifier"),
            uncompressed_size=_int(doc, "UncompressedSize"),
            compressed_size=_int(doc, "CompressedSize"),
            data_catalog_size=_int(doc, "DataCatalogSize"),
            spec=TablespaceSpec.from_json(spec_doc) if spec_doc else None,
            user_data=doc.get("userdata"),
            files_metadata_disabled=bool(doc.get("filesmetadatadisabled")),
            is_permanent=bool(doc.get("ispermanent")),
            delta_lsn=delta_lsn,
            delta_from=delta_from,
            delta_full_name=delta_full,
            delta_count=delta_count,
            version=version if version is not None else 0,
            walg_version=_opt_str(doc, "WalgVersion"),
            files_metadata_checksum=_files_metadata_checksum(doc),
            finish_timeline=_finish_timeline(doc),
            legacy_files=legacy if isinstance(legacy, dict) else None,
        )


# What walg reads whole as files_metadata.json at most (about 200 bytes a file: some 80
# million files); a sentinel recording more is not one walg wrote.
FILES_METADATA_LIMIT = 16 << 30


def _finish_timeline(doc: Mapping[str, Any]) -> int | None:
    """WalgFinishTimeline, checked as PostgreSQL's TimeLineID (1 to 2^32-1): a value walg did
    not write makes the sentinel unreadable rather than steer a restore's choice of backup."""
    raw = doc.get("walgfinishtimeline")
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 0xFFFFFFFF:
        raise FormatError(f"WalgFinishTimeline is {raw!r}, not a timeline")
    return raw


def _files_metadata_checksum(doc: Mapping[str, Any]) -> Checksum | None:
    """WalgFilesMetadata, checked: once present, a value walg did not write makes the
    sentinel unreadable rather than turning off the check of the document it vouches for."""
    raw = doc.get("walgfilesmetadata")
    if raw is None:
        return None
    checksum = Checksum.from_json(raw)
    if (
        checksum is None
        or isinstance(checksum.size, bool)
        or not 0 <= checksum.size <= FILES_METADATA_LIMIT
        or re.fullmatch(r"[0-9a-f]{64}", checksum.digest) is None
    ):
        raise FormatError(
            f"WalgFilesMetadata must be {{Size, Blake3}} as walg writes it, got {raw!r}"
        )
    return checksum


@dataclass(frozen=True)
class BackupMetadata:
    """``<name>/metadata.json`` (WAL-G's ExtendedMetadataDto)."""

    start_time: GoTime | None
    finish_time: GoTime | None
    hostname: str
    data_dir: str
    pg_version: int
    start_lsn: int
    finish_lsn: int
    is_permanent: bool
    system_identifier: int | None
    uncompressed_size: int
    compressed_size: int
    user_data: Any = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "start_time": _time_json(self.start_time),
            "finish_time": _time_json(self.finish_time),
            "date_fmt": DATE_FMT,
            "hostname": self.hostname,
            "data_dir": self.data_dir,
            "pg_version": self.pg_version,
            "start_lsn": self.start_lsn,
            "finish_lsn": self.finish_lsn,
            "is_permanent": self.is_permanent,
            "system_identifier": self.system_identifier,
            "uncompressed_size": self.uncompressed_size,
            "compressed_size": self.compressed_size,
        }
        if self.user_data is not None:
            doc["user_data"] = self.user_data
        return doc

    def dumps(self) -> bytes:
        return dumps(self.to_json())

    @classmethod
    def loads(cls, text: str | bytes) -> BackupMetadata:
        doc = _ci(_load(text, "metadata.json"))
        return cls(
            start_time=_opt_time(doc, "start_time"),
            finish_time=_opt_time(doc, "finish_time"),
            hostname=_opt_str(doc, "hostname") or "",
            data_dir=_opt_str(doc, "data_dir") or "",
            pg_version=_int(doc, "pg_version"),
            start_lsn=_opt_lsn(doc, "start_lsn") or 0,
            finish_lsn=_opt_lsn(doc, "finish_lsn") or 0,
            is_permanent=bool(doc.get("is_permanent")),
            system_identifier=_opt_int(doc, "system_identifier"),
            uncompressed_size=_int(doc, "uncompressed_size"),
            compressed_size=_int(doc, "compressed_size"),
            user_data=doc.get("user_data"),
        )


@dataclass(frozen=True, slots=True)
class FileDescription:
    """One entry of ``Files``: a tar member as WAL-G describes it, plus walg's checksum."""

    mtime: GoTime | None = None
    is_incremented: bool = False
    is_skipped: bool = False
    checksum: Checksum | None = None
    updates_count: int = 0

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        if self.is_incremented:
            doc["IsIncremented"] = True
        if self.is_skipped:
            doc["IsSkipped"] = True
        doc["MTime"] = _time_json(self.mtime)
        doc["UpdatesCount"] = self.updates_count
        if self.checksum is not None:
            doc["WalgSize"] = self.checksum.size
            doc["WalgBlake3"] = self.checksum.digest
        return doc

    @classmethod
    def from_json(cls, raw: Any) -> FileDescription:
        if not isinstance(raw, dict):
            raise FormatError("file description must be a JSON object")
        doc = _ci(raw)
        mtime_raw = doc.get("mtime")
        mtime = None
        if isinstance(mtime_raw, str) and not mtime_raw.startswith("0001-01-01"):
            mtime = GoTime.parse(mtime_raw)
        size, digest = doc.get("walgsize"), doc.get("walgblake3")
        checksum = (
            Checksum(size, digest) if isinstance(size, int) and isinstance(digest, str) else None
        )
        return cls(
            mtime=mtime,
            is_incremented=bool(doc.get("isincremented")),
            is_skipped=bool(doc.get("isskipped")),
            checksum=checksum,
            updates_count=_int(doc, "UpdatesCount"),
        )


def _comma_joined(items: Iterable[Iterable[str]]) -> Iterator[str]:
    """The pieces of each item, a comma between two items, as JSON joins them."""
    for number, item in enumerate(items):
        if number:
            yield ","
        yield from item


def _object(key: str, entries: Iterable[Iterable[str]]) -> Iterator[str]:
    """``"key":{...}`` in pieces, each entry given as the pieces of its text."""
    yield f'"{key}":{{'
    yield from _comma_joined(entries)
    yield "}"


def _tar_set(name: str, members: Iterable[str]) -> Iterator[str]:
    """One ``TarFileSets`` entry, name and members already encoded."""
    yield name
    yield ":["
    yield from _comma_joined((member,) for member in members)
    yield "]"


@dataclass(frozen=True)
class FilesMetadata:
    """``<name>/files_metadata.json``: the member list of a backup and where each member is."""

    files: Mapping[str, FileDescription]
    tar_file_sets: Mapping[str, tuple[str, ...]]
    # walg additions: checksums of members that are not in Files (pg_control, label files)
    # and of every stored tar object.
    utility_files: Mapping[str, Checksum] = field(default_factory=dict)
    objects: Mapping[str, StoredObject] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        if self.files:
            doc["Files"] = {name: d.to_json() for name, d in self.files.items()}
        if self.tar_file_sets:
            doc["TarFileSets"] = {name: list(m) for name, m in self.tar_file_sets.items()}
        if self.utility_files:
            doc["WalgUtilityFiles"] = {k: c.to_json() for k, c in self.utility_files.items()}
        if self.objects:
            doc["WalgObjects"] = {k: o.to_json() for k, o in self.objects.items()}
        return doc

    def dumps(self) -> bytes:
        return encode_json_text("".join(self.iter_json()))

    def iter_json(self) -> Iterator[str]:
        """The text of :meth:`to_json` as :func:`dumps` writes it, in pieces of about one
        member each: a backup of a million files never holds its whole document (hundreds of
        MB as Python objects) at once."""
        enc = _encoder().encode
        sections: list[Iterator[str]] = []
        if self.files:
            sections.append(
                _object(
                    "Files", ((enc(name), ":", enc(d.to_json())) for name, d in self.files.items())
                )
            )
        if self.tar_file_sets:
            sections.append(
                _object(
                    "TarFileSets",
                    (
                        _tar_set(enc(name), (enc(member) for member in members))
                        for name, members in self.tar_file_sets.items()
                    ),
                )
            )
        if self.utility_files:
            doc = {k: c.to_json() for k, c in self.utility_files.items()}
            sections.append(iter(['"WalgUtilityFiles":', enc(doc)]))
        if self.objects:
            doc = {k: o.to_json() for k, o in self.objects.items()}
            sections.append(iter(['"WalgObjects":', enc(doc)]))
        yield "{"
        yield from _comma_joined(sections)
        yield "}"

    def checksum_of(self, member: str) -> Checksum | None:
        description = self.files.get(member)
        if description is not None:
            return description.checksum
        return self.utility_files.get(member)

    @classmethod
    def empty(cls) -> FilesMetadata:
        return cls({}, {})

    @classmethod
    def loads(cls, text: str | bytes) -> FilesMetadata:
        return cls.from_json(_load(text, "files_metadata.json"))

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> FilesMetadata:
        doc = _ci(raw)
        files_doc = doc.get("files") or {}
        sets_doc = doc.get("tarfilesets") or {}
        if not isinstance(files_doc, dict) or not isinstance(sets_doc, dict):
            raise FormatError("files metadata: Files and TarFileSets must be JSON objects")
        files = {name: FileDescription.from_json(d) for name, d in files_doc.items()}
        sets = {
            name: tuple(str(m) for m in members)
            for name, members in sets_doc.items()
            if isinstance(members, list)
        }
        utility: dict[str, Checksum] = {}
        for name, value in (doc.get("walgutilityfiles") or {}).items():
            checksum = Checksum.from_json(value)
            if checksum is not None:
                utility[name] = checksum
        objects: dict[str, StoredObject] = {}
        for name, value in (doc.get("walgobjects") or {}).items():
            stored = StoredObject.from_json(value)
            if stored is not None:
                objects[name] = stored
        return cls(files, sets, utility, objects)
