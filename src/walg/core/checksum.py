"""walg's content checksums: what every stored object and restored file is checked against.

Kept apart from :mod:`walg.core.metadata` so that the WAL path (``wal-push`` from
``archive_command``) does not pay for importing the backup documents.
"""

from __future__ import annotations

from dataclasses import dataclass

TYPE_CHECKING = False  # not typing's: see walg.settings
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


def ci_keys(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Go v1 decoding: the first key that matches case-insensitively wins."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        out.setdefault(key.lower(), value)
    return out


@dataclass(frozen=True, slots=True)
class Checksum:
    """walg's record of a byte stream: its length and BLAKE3 digest (hex)."""

    size: int
    digest: str

    def to_json(self) -> dict[str, Any]:
        return {"Size": self.size, "Blake3": self.digest}

    @classmethod
    def from_json(cls, raw: Any) -> Checksum | None:
        if not isinstance(raw, dict):
            return None
        doc = ci_keys(raw)
        size, digest = doc.get("size"), doc.get("blake3")
        if isinstance(size, int) and isinstance(digest, str):
            return cls(size, digest)
        return None


@dataclass(frozen=True)
class StoredObject:
    """walg's record of one tar object: bytes as stored and the tar stream before compression."""

    stored: Checksum
    raw_size: int

    def to_json(self) -> dict[str, Any]:
        return {
            "StoredSize": self.stored.size,
            "Blake3": self.stored.digest,
            "RawSize": self.raw_size,
        }

    @classmethod
    def from_json(cls, raw: Any) -> StoredObject | None:
        if not isinstance(raw, dict):
            return None
        doc = ci_keys(raw)
        size, digest, raw_size = doc.get("storedsize"), doc.get("blake3"), doc.get("rawsize")
        if isinstance(size, int) and isinstance(digest, str) and isinstance(raw_size, int):
            return cls(Checksum(size, digest), raw_size)
        return None
