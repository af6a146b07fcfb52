"""Locating WAL objects: WAL-G's probe by extension (``wal_005/<name>.<ext>``)."""

from __future__ import annotations

from walg.core.naming import wal_key
from walg.errors import ObjectNotFound
from walg.storage.base import Storage
from walg.streams.compression import Codec, codec_for_extension, known_extensions


def find_wal_object(storage: Storage, file_name: str) -> tuple[str, Codec] | None:
    """The stored key of a WAL file and the codec to read it, or None if it is not archived."""
    for ext in known_extensions():
        keys = [wal_key(file_name, ext)]
        if ext == "":
            # Older WAL-G wrote uncompressed objects with a trailing dot.
            keys.append(wal_key(file_name, "") + ".")
        for key in keys:
            try:
                storage.stat(key)
            except ObjectNotFound:
                continue
            return key, codec_for_extension(ext)
    return None
