"""Locating WAL objects: WAL-G's probe by extension (``wal_005/<name>.<ext>``).

Every extension WAL-G may have written is probed, including those this build cannot decode yet:
a segment that exists but cannot be read must be an error, never "not in the archive" (which
would make PostgreSQL end recovery early) and never a reason to upload a second copy.
"""

from __future__ import annotations

from walg.core.naming import wal_key
from walg.errors import ObjectNotFound
from walg.storage.base import Storage
from walg.streams.compression import FETCH_PROBE_ORDER


def find_wal_object(storage: Storage, file_name: str) -> tuple[str, str] | None:
    """The stored key of a WAL file and its compression extension, or None if not archived."""
    for ext in FETCH_PROBE_ORDER:
        keys = [wal_key(file_name, ext)]
        if ext == "":
            # Older WAL-G wrote uncompressed objects with a trailing dot.
            keys.append(wal_key(file_name, "") + ".")
        for key in keys:
            try:
                storage.stat(key)
            except ObjectNotFound:
                continue
            return key, ext
    return None
